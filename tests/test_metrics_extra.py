"""The metrics users expect (insertion/deletion, pointing games, mask ratio, ROAD, sparseness, random-logit,
max-sensitivity, infidelity): closed forms on toy models, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infoflow.data.shapes import ShapesDataModule
from infoflow.errors import ConfigError, InputError
from infoflow.metrics import (
    ROAD,
    BoundingBoxRatio,
    EnergyPointingGame,
    Infidelity,
    InsertionDeletion,
    MaskRatio,
    MaxSensitivity,
    PointingGame,
    RandomLogit,
    Sparseness,
    gini,
    heatmap_ssim,
    linear_imputation,
    random_logit_check,
)
from infoflow.metrics.insertion_deletion import blurred
from infoflow.metrics.random_logit import random_other_class


class MeanProbability(nn.Module):
    """Two classes whose softmax gives exactly q = mean of channel 0 (clamped to (0, 1)) for class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x[:, 0].double().mean(dim=(1, 2)).clamp(1e-9, 1 - 1e-9)
        return torch.stack([q.log(), (1 - q).log()], dim=1)


class ChannelSharedLinear(nn.Module):
    """logit_k = sum_{c,h,w} v_k[h, w] x[c, h, w] + b_k: the same pixel weights on every channel."""

    def __init__(self, v: torch.Tensor) -> None:
        super().__init__()
        self.v = nn.Parameter(v)  # (classes, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,khw->nk", x, self.v)


# ---------------------------------------------------------------- sparseness


def test_gini_closed_forms() -> None:
    n = 16 * 16
    one_hot = torch.zeros(1, 16, 16)
    one_hot[0, 3, 5] = -2.0  # magnitudes count
    assert gini(one_hot).item() == pytest.approx(1 - 1 / n, abs=1e-12)
    assert gini(torch.full((1, 16, 16), 0.3)).item() == pytest.approx(0.0, abs=1e-12)
    assert gini(torch.zeros(1, 16, 16)).item() == 0.0
    # two values: half the pixels 0, half 1 -> G = 1/2 exactly
    half = torch.zeros(1, 16, 16)
    half[0, :8] = 1.0
    assert gini(half).item() == pytest.approx(0.5, abs=1e-12)
    # against the mean-absolute-difference definition: sum_ij |a_i - a_j| / (2 n sum a)
    a = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    flat = a.flatten(1).double()
    mad = (flat[:, :, None] - flat[:, None, :]).abs().sum((1, 2)) / (2 * 64 * flat.sum(1))
    torch.testing.assert_close(gini(a), mad)
    metric = Sparseness()
    metric.update(torch.cat([one_hot, half]))
    assert metric.compute().item() == pytest.approx((1 - 1 / n + 0.5) / 2)


# ---------------------------------------------------------------- pointing games


def _box(n: int, rows: slice, cols: slice, size: int = 16) -> torch.Tensor:
    m = torch.zeros(n, size, size, dtype=torch.bool)
    m[:, rows, cols] = True
    return m


def test_pointing_game_hits_at_the_known_maximum_with_tolerance() -> None:
    maps = torch.zeros(3, 16, 16)
    maps[0, 5, 5] = 1.0  # inside the box rows/cols 4..7
    maps[1, 5, 10] = 1.0  # 3 px right of the box's last column 7
    maps[2, 12, 12] = 1.0  # diagonal distance sqrt(5^2 + 5^2) from (7, 7)
    box = _box(3, slice(4, 8), slice(4, 8))
    for tolerance, expected in ((0, [1, 0, 0]), (3, [1, 1, 0]), (7.07, [1, 1, 0]), (7.08, [1, 1, 1])):
        metric = PointingGame(tolerance=tolerance)
        metric.update(maps, box)
        assert metric.hits.item() == sum(expected), tolerance
        assert metric.compute().item() == pytest.approx(sum(expected) / 3)
    # ties: the first maximum in row-major order decides
    tied = torch.zeros(1, 16, 16)
    tied[0, 0, 0] = tied[0, 5, 5] = 1.0
    metric = PointingGame()
    metric.update(tied, box[:1])
    assert metric.compute().item() == 0.0


def test_energy_pointing_game_share() -> None:
    maps = torch.zeros(2, 16, 16)
    maps[0, 4:8, 4:8] = 1.0  # 16 inside
    maps[0, 0, :8] = 1.0  # 8 outside
    maps[0, 15, :] = -5.0  # negative values carry no energy
    maps[1] = -1.0  # nothing positive: share 0
    metric = EnergyPointingGame()
    metric.update(maps, _box(2, slice(4, 8), slice(4, 8)))
    assert metric.compute().item() == pytest.approx((16 / 24 + 0) / 2)


def test_pointing_games_reject_empty_and_whole_image_regions_and_bad_maps() -> None:
    maps = torch.rand(2, 16, 16)
    for metric in (PointingGame(), EnergyPointingGame()):
        empty = _box(2, slice(4, 8), slice(4, 8))
        empty[1] = False
        with pytest.raises(InputError, match="empty region"):
            metric.update(maps, empty)
        with pytest.raises(InputError, match="whole"):
            metric.update(maps, torch.ones(2, 16, 16, dtype=torch.bool))
        with pytest.raises(InputError, match="shape"):
            metric.update(torch.rand(2, 8, 8), _box(2, slice(4, 8), slice(4, 8)))
        bad = maps.clone()
        bad[0, 0, 0] = float("nan")
        with pytest.raises(InputError, match="NaN"):
            metric.update(bad, _box(2, slice(4, 8), slice(4, 8)))


# ---------------------------------------------------------------- mask ratio


def test_mask_ratio_gives_the_ground_truth_mask_one_on_shapes() -> None:
    dm = ShapesDataModule(num_train=1, num_val=1, num_test=24, batch_size=24, augment=False)
    batch = next(iter(dm.test_dataloader()))
    mask, box = batch["mask"], batch["box_mask"]
    truth = mask.float()
    ratio = MaskRatio()
    ratio.update(truth, mask)
    assert ratio.count.item() == 24 and ratio.compute().item() == 1.0
    # the box version penalises the same oracle: ties fill the box pixels the object does not cover
    box_ratio = BoundingBoxRatio(max_box_fraction=1.0)
    box_ratio.update(truth, box)
    assert box_ratio.compute().item() < 0.99
    # an exact value: the mask shifted off the object by its own width scores its overlap / area
    shifted = torch.roll(mask, shifts=3, dims=2)
    ratio = MaskRatio()
    ratio.update(shifted.float() + 1e-3 * torch.rand(mask.shape), mask)  # noise breaks the ties outside
    overlap = (shifted & mask).flatten(1).sum(1).double() / mask.flatten(1).sum(1)
    assert ratio.compute().item() == pytest.approx(overlap.mean().item(), abs=1e-12)
    with pytest.raises(InputError, match="shape"):
        MaskRatio().update(truth[:, :32], mask)


# ---------------------------------------------------------------- insertion / deletion


def _reference_blur(x: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, written out."""
    t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    y = F.pad(x, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(y, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def test_insertion_baseline_is_a_gaussian_blur() -> None:
    x = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(blurred(x, 11, 5.0), _reference_blur(x, 11, 5.0), atol=1e-6, rtol=0)


def test_deletion_of_a_model_linear_in_the_pixel_count() -> None:
    """q = fraction of pixels not yet deleted: the deletion curve is 1 - f and its area exactly 1/2."""
    model = MeanProbability().eval()
    metric = InsertionDeletion(model, (16, 16), tile_size=2, num_points=9, batch_size=7)
    metric.update(torch.ones(3, 1, 16, 16), 0, torch.rand(3, 16, 16))
    result = metric.compute()
    torch.testing.assert_close(result.fractions, torch.linspace(0, 1, 9, dtype=torch.float64))
    torch.testing.assert_close(result.deletion, 1 - result.fractions, atol=1e-8, rtol=0)
    assert result.deletion_auc.item() == pytest.approx(0.5, abs=1e-8)


def test_insertion_curve_is_the_prefix_sum_of_the_ranked_pixels() -> None:
    """q linear in the pixels: inserting pixel p adds (x_p - blur_p) / n; the curve is a prefix sum in the
    map's order, most relevant first."""
    g = torch.Generator().manual_seed(0)
    x = 0.1 + 0.8 * torch.rand(2, 1, 12, 12, generator=g)
    maps = torch.randn(2, 12, 12, generator=g)
    model = MeanProbability().eval()
    metric = InsertionDeletion(model, (12, 12), tile_size=1, num_points=145)  # every pixel
    metric.update(x, torch.tensor([0, 0]), maps)
    start = blurred(x)
    gain = (x - start)[:, 0].double().flatten(1) / 144
    order = maps.flatten(1).argsort(dim=1, descending=True)
    expected = start[:, 0].double().mean((1, 2))[:, None] + torch.cat(
        [torch.zeros(2, 1, dtype=torch.float64), gain.gather(1, order).cumsum(1)], dim=1)
    result = metric.compute()
    torch.testing.assert_close(result.insertion, expected.mean(0), atol=1e-6, rtol=0)
    assert result.insertion_auc.item() == pytest.approx(torch.trapezoid(expected.mean(0), result.fractions).item())
    # the best order (by gain) beats the worst one
    areas = []
    for m in (gain.view(2, 12, 12), -gain.view(2, 12, 12)):
        best = InsertionDeletion(model, (12, 12), num_points=145)
        best.update(x, 0, m.float())
        areas.append(best.compute().insertion_auc.item())
    assert areas[0] > result.insertion_auc.item() > areas[1]


def test_insertion_deletion_states_add_over_batches() -> None:
    g = torch.Generator().manual_seed(2)
    x, maps = torch.rand(4, 1, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g)
    one, two = (InsertionDeletion(MeanProbability().eval(), (8, 8), num_points=5) for _ in range(2))
    one.update(x, 0, maps)
    two.update(x[:1], 0, maps[:1])
    two.update(x[1:], 0, maps[1:])
    for a, b in zip(one.compute(), two.compute(), strict=True):
        torch.testing.assert_close(a, b)


def test_insertion_deletion_bad_input() -> None:
    metric = InsertionDeletion(MeanProbability().eval(), (8, 8))
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(InputError, match="shape"):
        metric.update(x, 0, torch.rand(2, 8, 9))
    with pytest.raises(InputError, match="NaN"):
        metric.update(x, 0, torch.full((2, 8, 8), float("nan")))
    with pytest.raises(InputError, match="integer"):
        metric.update(x, torch.tensor([0.0, 1.0]), torch.rand(2, 8, 8))
    with pytest.raises(ConfigError):
        InsertionDeletion(MeanProbability().eval(), (8, 8), kernel_size=4)


# ---------------------------------------------------------------- ROAD


def test_linear_imputation_solves_the_sparse_system() -> None:
    """Against a direct sparse solve of: every removed pixel = weighted mean of its in-image neighbours."""
    scipy_sparse = pytest.importorskip("scipy.sparse")
    spsolve = pytest.importorskip("scipy.sparse.linalg").spsolve
    g = torch.Generator().manual_seed(3)
    h, w = 9, 11
    x = torch.rand(1, 2, h, w, generator=g, dtype=torch.float64)
    removed = torch.rand(1, h, w, generator=g) < 0.6
    out = linear_imputation(x, removed, tol=1e-12)
    weights = {(dr, dc): (1 / 12 if dr and dc else 1 / 6) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc}
    unknown = [(r, c) for r in range(h) for c in range(w) if removed[0, r, c]]
    index = {p: i for i, p in enumerate(unknown)}
    for ch in range(2):
        a = scipy_sparse.lil_matrix((len(unknown), len(unknown)))
        b = np.zeros(len(unknown))
        for i, (r, c) in enumerate(unknown):
            for (dr, dc), wt in weights.items():
                q = (r + dr, c + dc)
                if 0 <= q[0] < h and 0 <= q[1] < w:
                    a[i, i] += wt
                    if q in index:
                        a[i, index[q]] -= wt
                    else:
                        b[i] += wt * x[0, ch, q[0], q[1]].item()
        solution = spsolve(a.tocsr(), b)
        got = np.array([out[0, ch, r, c].item() for r, c in unknown])
        np.testing.assert_allclose(got, solution, atol=1e-9)
    assert torch.equal(out[0][:, ~removed[0]], x[0][:, ~removed[0]])  # kept pixels untouched
    with pytest.raises(ConfigError):
        linear_imputation(x, torch.ones(1, h, w, dtype=torch.bool))


def test_road_curves_follow_the_ranking() -> None:
    """Noise-free ROAD of a model linear in the pixels equals the model on the imputed images that remove the
    top (MoRF) or bottom (LeRF) ranked pixels."""
    g = torch.Generator().manual_seed(4)
    x = 0.1 + 0.8 * torch.rand(2, 1, 10, 10, generator=g)
    maps = torch.randn(2, 10, 10, generator=g)
    model = MeanProbability().eval()
    metric = ROAD(model, (10, 10), fractions=(0.0, 0.25, 0.5), noise_std=0.0, batch_size=4)
    metric.update(x, 0, maps)
    result = metric.compute()
    order = maps.flatten(1).argsort(dim=1, descending=True)
    for curve, ranked in ((result.morf, order), (result.lerf, order.flip(1))):
        expected = []
        for k in (0, 25, 50):
            removed = torch.zeros(2, 100, dtype=torch.bool).scatter_(1, ranked[:, :k], True).view(2, 10, 10)
            expected.append(model(linear_imputation(x, removed)).softmax(1)[:, 0].mean().item())
        torch.testing.assert_close(curve, torch.tensor(expected, dtype=torch.float64), atol=1e-7, rtol=0)
    assert result.morf_accuracy.shape == (3,) and result.score.item() == pytest.approx(
        (result.lerf - result.morf).mean().item())
    with pytest.raises(ConfigError, match="fractions"):
        ROAD(model, (10, 10), fractions=(0.5, 1.0))


def test_road_noise_is_seeded_and_only_on_removed_pixels() -> None:
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    maps = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(6))
    runs = []
    for _ in range(2):
        metric = ROAD(MeanProbability().eval(), (8, 8), fractions=(0.0, 0.5), noise_std=0.05, seed=1)
        metric.update(x, 0, maps)
        runs.append(metric.compute())
    torch.testing.assert_close(runs[0].morf, runs[1].morf)
    assert runs[0].morf[0].item() == pytest.approx(x[0, 0].double().mean().item())  # nothing removed


# ---------------------------------------------------------------- random logit


class _ClassMaps:
    """A 'method' whose map for class k is the model's pixel weights v_k (class-dependent)."""

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.v[target]


def test_random_logit() -> None:
    g = torch.Generator().manual_seed(7)
    target = torch.randint(0, 5, (200,), generator=g)
    other = random_other_class(target, 5, torch.Generator().manual_seed(0))
    assert (other != target).all() and set(((other - target) % 5).tolist()) == {1, 2, 3, 4}
    with pytest.raises(ConfigError):
        random_other_class(target, 1, g)
    v = torch.randn(5, 16, 16, generator=g)
    images, target = torch.zeros(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    metric = random_logit_check(_ClassMaps(v), [(images, target)], num_classes=5, seed=3)
    other = random_other_class(target, 5, torch.Generator().manual_seed(3))
    assert metric.compute().item() == pytest.approx(heatmap_ssim(v[target], v[other]).mean().item())
    blind = _ClassMaps(v[:1].expand(5, -1, -1))  # the same map for every class: SSIM 1
    assert random_logit_check(blind, [(images, target)], 5).compute().item() == pytest.approx(1.0)
    with pytest.raises(InputError, match="shape"):
        RandomLogit().update(v[:2], v[:3])


# ---------------------------------------------------------------- robustness (captum.metrics)


def test_max_sensitivity_closed_forms() -> None:
    x = torch.rand(3, 2, 8, 8, generator=torch.Generator().manual_seed(8)) + 1
    constant = MaxSensitivity(lambda images, target: torch.ones(images.shape[0], 8, 8), n_perturb_samples=4)
    constant.update(x, 0)
    assert constant.compute().item() == 0.0
    metric = MaxSensitivity(lambda images, target: images.sum(1), perturb_radius=0.02, n_perturb_samples=6)
    metric.update(x, torch.tensor([0, 1, 0]))
    bound = (0.02 * 2 * 8 / x.sum(1).flatten(1).norm(dim=1)).mean().item()  # |sum_c d|_F <= 2 r sqrt(64)
    assert 0 < metric.compute().item() <= bound


def test_infidelity_of_the_exact_linear_attribution_is_zero() -> None:
    g = torch.Generator().manual_seed(9)
    v = torch.randn(3, 8, 8, generator=g)
    model = ChannelSharedLinear(v).eval()
    x = torch.randn(4, 2, 8, 8, generator=g)
    target = torch.tensor([0, 1, 2, 0])
    exact = Infidelity(model, n_perturb_samples=8, normalize=False)
    exact.update(x, target, v[target])
    assert exact.compute().item() == pytest.approx(0.0, abs=1e-6)
    wrong = Infidelity(model, n_perturb_samples=8)
    wrong.update(x, target, torch.randn(4, 8, 8, generator=g))
    assert wrong.compute().item() > 1e-3
    with pytest.raises(InputError, match="shape"):
        wrong.update(x, target, v[:2])


def test_table1_style_signatures_are_uniform() -> None:
    """The perturbation metrics share Degradation's update(images, target, attributions); the localisation
    ones BoundingBoxRatio's update(attributions, region)."""
    import inspect

    for cls in (InsertionDeletion, ROAD, Infidelity):
        assert list(inspect.signature(cls.update).parameters)[1:4] == ["images", "target", "attributions"]
    for cls in (PointingGame, EnergyPointingGame, MaskRatio):
        assert list(inspect.signature(cls.update).parameters)[1] == "attributions"
