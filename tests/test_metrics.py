"""The evaluation metrics: exact values on toy models, agreement with a per-image loop and with skimage,
and correct reduction of the states."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from infoflow.metrics import (
    BoundingBoxRatio,
    Degradation,
    SanitySSIM,
    SensitivityN,
    TileGrid,
    cascading_randomization,
    cascading_sanity_check,
    heatmap_ssim,
    normalize_heatmap,
    pearson,
    ssim,
)
from infoflow.metrics.degradation import degradation_curves
from infoflow.metrics.sensitivity import logit_drops, tile_set_masses
from infoflow.models import get_model

_spec = importlib.util.spec_from_file_location(
    "bench_metrics", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_metrics.py"
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def small_cnn(classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    ).eval()


class LinearModel(nn.Module):
    """logit_c = <w_c, x> + b_c: the target logit is a weighted sum of pixels."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)  # (classes, C, H, W)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.weight) + self.bias


class RegionModel(nn.Module):
    """Two classes; logit_0 = 4 * mean of channel 0 over the top-left 8x8 region, logit_1 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 4 * x[:, 0, :8, :8].mean(dim=(1, 2))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def region_images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, 32, 32) noise with a bright top-left 8x8 region."""
    g = torch.Generator().manual_seed(seed)
    x = 0.5 * torch.randn(n, 1, 32, 32, generator=g)
    x[:, 0, :8, :8] += 1.5
    return x


def region_mask(n: int) -> torch.Tensor:
    mask = torch.zeros(n, 32, 32)
    mask[:, :8, :8] = 1
    return mask


# --- tiles -------------------------------------------------------------------------------------------


def test_tile_grid_with_cut_edge_tiles() -> None:
    grid = TileGrid(10, 7, 4)  # 3 x 2 tiles, the last row and column cut
    assert (grid.rows, grid.cols, grid.num_tiles) == (3, 2, 6)
    maps = torch.randn(2, 10, 7)
    expected = torch.stack(
        [
            maps[:, r : r + 4, c : c + 4].double().sum(dim=(1, 2))
            for r in range(0, 10, 4)
            for c in range(0, 7, 4)
        ],
        dim=1,
    )
    torch.testing.assert_close(grid.tile_sums(maps), expected)
    torch.testing.assert_close(grid.tile_means(maps), expected / torch.tensor([16.0, 12, 16, 12, 8, 6]).double())
    ids = grid.pixel_tiles()
    assert ids[9, 6] == 5 and ids[0, 3] == 0 and ids[4, 4] == 3
    assert torch.bincount(ids.flatten()).tolist() == [16, 12, 16, 12, 8, 6]


# --- bounding box --------------------------------------------------------------------------------------


def test_bbox_ground_truth_scores_one_and_big_boxes_are_excluded() -> None:
    n, size = 6, 32
    boxes = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):  # small boxes of different shapes and places
        boxes[i, i : i + 5 + i, 2 * i : 2 * i + 7] = True
    big = torch.zeros(2, size, size, dtype=torch.bool)
    big[:, :20, :20] = True  # 39% of the image: excluded
    metric = BoundingBoxRatio()
    metric.update(boxes.float(), boxes)
    metric.update(torch.randn(2, size, size), big)  # a bad attribution on excluded images changes nothing
    assert metric.count == n
    assert metric.compute().item() == 1.0


def test_bbox_exact_ratio_and_deterministic_ties() -> None:
    box = torch.zeros(1, 4, 4, dtype=torch.bool)
    box[0, 1, 1:3] = True  # 2 box pixels (1 of them among the 2 highest scores below)
    attr = torch.zeros(1, 4, 4)
    attr[0, 1, 1], attr[0, 3, 3] = 5.0, 7.0
    metric = BoundingBoxRatio(max_box_fraction=0.5)
    metric.update(attr, box)
    assert metric.compute().item() == 0.5
    # all-equal scores: the first n pixels in row-major order win, so a box in the first row scores 1
    # and a box in the last row scores 0
    boxes = torch.zeros(2, 4, 4, dtype=torch.bool)
    boxes[0, 0, :2] = True
    boxes[1, 3, 2:] = True
    ties = BoundingBoxRatio(max_box_fraction=0.5)
    ties.update(torch.zeros(2, 4, 4), boxes)
    assert ties.count == 2 and ties.ratio_sum.item() == 1.0


def test_bbox_random_attribution_scores_the_box_fraction() -> None:
    torch.manual_seed(0)
    box = torch.zeros(400, 20, 20, dtype=torch.bool)
    box[:, 5:15, 5:15] = True  # 25% of the image
    metric = BoundingBoxRatio()
    metric.update(torch.randn(400, 20, 20), box)
    assert abs(metric.compute().item() - 0.25) < 0.02


# --- degradation -----------------------------------------------------------------------------------------


def test_degradation_steps_cover_start_and_end() -> None:
    metric = Degradation(RegionModel().eval(), (64, 64), tile_size=8)
    assert metric.steps.tolist() == list(range(65))  # 64 tiles: every count up to 101 points
    metric = Degradation(
        RegionModel().eval(), (224, 224), tile_size=8
    )  # 784 tiles: 101 points, 0 and 784 included
    steps = metric.steps
    assert len(steps) == 101 and steps[0] == 0 and steps[-1] == 784 and (steps.diff() > 0).all()
    assert Degradation(RegionModel().eval(), (64, 64), tile_size=14).steps.tolist() == list(range(26))


def test_degradation_matches_per_image_loop_on_a_small_cnn() -> None:
    model = small_cnn().double()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 30, 30, generator=g, dtype=torch.float64)
    attr = torch.randn(2, 30, 30, generator=g, dtype=torch.float64)
    attr[1] = attr[1].round()  # many equal tile sums: ties must break alike
    target = torch.tensor([0, 2])
    for tile, points in ((7, 101), (6, 10)):  # 5x5 tiles with cut edges; 25 tiles, 10 points
        metric = Degradation(model, (30, 30), tile_size=tile, num_points=points, batch_size=17)
        metric.update(images, target, attr)
        morf, lerf, top1 = bench.degradation_loop(model, images, target, attr, tile, metric.steps.tolist())
        curves, top1_batched = degradation_curves(
            model, images, target, attr, metric.grid, metric.steps, batch_size=17
        )
        torch.testing.assert_close(curves[0], morf, rtol=0, atol=1e-12)
        torch.testing.assert_close(curves[1], lerf, rtol=0, atol=1e-12)
        torch.testing.assert_close(top1_batched, top1, rtol=0, atol=1e-12)
        torch.testing.assert_close(metric.morf_sum, morf.sum(0), rtol=0, atol=1e-12)
        torch.testing.assert_close(metric.lerf_sum, lerf.sum(0), rtol=0, atol=1e-12)


def test_degradation_constant_map_with_cut_border_tiles_has_zero_area() -> None:
    """A constant map ranks every tile equally, also the smaller border tiles (64 = 4 * 14 + 8), so MoRF and
    LeRF remove tiles in the same order and the area is exactly 0 (ranking by sums would not)."""
    model = small_cnn()
    images = torch.randn(3, 3, 64, 64)
    metric = Degradation(model, (64, 64), tile_size=14)
    metric.update(images, model(images).argmax(1), torch.full((3, 64, 64), 0.5))
    result = metric.compute()
    assert torch.equal(result.morf, result.lerf) and result.score.item() == 0.0


def test_degradation_normalisation() -> None:
    """With the top-1 class as target, the normalised curves run from exactly 1 to exactly 0."""
    model = small_cnn()
    images = torch.randn(4, 3, 32, 32)
    target = model(images).argmax(1)
    metric = Degradation(model, (32, 32), tile_size=8)
    metric.update(images, target, torch.randn(4, 32, 32))
    result = metric.compute()
    for curve in (result.morf, result.lerf):
        assert curve[0].item() == pytest.approx(1.0, abs=1e-12) and curve[-1].item() == 0.0
    assert result.fractions[0] == 0 and result.fractions[-1] == 1
    area = torch.trapezoid(result.lerf, result.fractions) - torch.trapezoid(result.morf, result.fractions)
    assert result.score.item() == pytest.approx(area.item(), abs=1e-12)


def test_degradation_relevant_region_beats_random() -> None:
    n = 100
    images, target = region_images(n), torch.zeros(n, dtype=torch.long)
    scores = {}
    for name, attr in {
        "region": region_mask(n) + 0.01 * torch.rand(n, 32, 32),
        "random": torch.rand(n, 32, 32, generator=torch.Generator().manual_seed(1)),
    }.items():
        metric = Degradation(RegionModel().eval(), (32, 32), tile_size=4)
        metric.update(images, target, attr)
        scores[name] = metric.compute()
    region, random = scores["region"], scores["random"]
    # the relevant tiles are 4 of 64: MoRF collapses after them, LeRF holds until the last 4
    assert region.score > 0.85
    assert region.morf[5] < 0.05 and region.lerf[59] > 0.95
    assert abs(random.score.item()) < 0.1  # expected 0; this model's step-like curves make it noisy


class EnergyModel(nn.Module):
    """Two classes; logit_0 = 4 * mean(x^2) - 2, logit_1 = 0: every tile matters a little."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 4 * x.pow(2).mean(dim=(1, 2, 3)) - 2
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_degradation_random_attribution_curves_coincide() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(48, 1, 32, 32, generator=g)
    metric = Degradation(EnergyModel().eval(), (32, 32), tile_size=4)
    metric.update(images, 0, torch.rand(48, 32, 32, generator=g))
    random = metric.compute()
    assert abs(random.score.item()) < 0.01
    assert (random.morf - random.lerf).abs().max() < 0.02
    # attributing the energy itself is clearly better than random
    metric = Degradation(EnergyModel().eval(), (32, 32), tile_size=4)
    metric.update(images, 0, images[:, 0] ** 2)
    assert metric.compute().score > 0.1


def test_degradation_score_is_antisymmetric_in_the_attribution() -> None:
    """Negating a tie-free attribution swaps MoRF and LeRF exactly."""
    model = small_cnn()
    images, attr = torch.randn(3, 3, 32, 32), torch.randn(3, 32, 32)
    results = []
    for sign in (1, -1):
        metric = Degradation(model, (32, 32), tile_size=8)
        metric.update(images, 1, sign * attr)
        results.append(metric.compute())
    torch.testing.assert_close(results[0].morf, results[1].lerf, rtol=0, atol=1e-12)
    assert results[0].score.item() == pytest.approx(-results[1].score.item(), abs=1e-12)


# --- Sensitivity-n ------------------------------------------------------------------------------------


def test_sensitivity_n_values_and_tile_sets() -> None:
    metric = SensitivityN(RegionModel().eval(), (224, 224), tile_size=8)
    n = metric.n_values
    assert n[0] == 1 and n[-1] == round(0.8 * 784) and (n.diff() > 0).all() and 14 <= len(n) <= 16
    assert metric.subsets.shape == (len(n), 100, 784)
    assert (metric.subsets.sum(-1) == n[:, None]).all()
    again = SensitivityN(RegionModel().eval(), (224, 224), tile_size=8)
    assert torch.equal(again.subsets, metric.subsets)
    assert not torch.equal(
        SensitivityN(RegionModel().eval(), (224, 224), tile_size=8, seed=1).subsets, metric.subsets
    )
    pixels = SensitivityN(RegionModel().eval(), (32, 32), tile_size=1)
    assert pixels.n_values[0] == 1 and pixels.n_values[-1] == round(0.8 * 1024) and len(pixels.n_values) == 15


@pytest.mark.parametrize("tile_size", [1, 4])
def test_sensitivity_n_exact_on_a_linear_model(tile_size: int) -> None:
    """Target logit = <w, x> + b: with gradient x input the attribution mass of a set is exactly the logit
    drop, so the correlation is 1 for every n; affine maps of it keep 1 (the offset adds the same amount to
    every set of n equal tiles), negation gives -1, and a constant attribution has zero variance -> 0."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)
    weight[1] = 1.0  # class 1: the plain sum of pixels
    model = LinearModel(weight, torch.randn(3, dtype=torch.float64)).eval()
    images = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    grad_x_input = (weight[target] * images).sum(1)
    for attr, expected in ((grad_x_input, 1.0), (2 * grad_x_input + 3, 1.0), (-grad_x_input, -1.0)):
        metric = SensitivityN(model, (16, 16), tile_size=tile_size, num_subsets=20, batch_size=500)
        metric.update(images, target, attr)
        n, corr = metric.compute()
        torch.testing.assert_close(corr, torch.full_like(corr, expected), rtol=0, atol=1e-10)
    metric = SensitivityN(model, (16, 16), tile_size=tile_size, num_subsets=20, batch_size=500)
    metric.update(images, target, torch.full((3, 16, 16), 0.3, dtype=torch.float64))
    assert torch.equal(metric.compute().correlation, torch.zeros(len(metric.n_values), dtype=torch.float64))


def test_sensitivity_n_matches_per_image_loop_on_a_small_cnn() -> None:
    model = small_cnn().double()
    g = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 20, 20, generator=g, dtype=torch.float64)
    attr = torch.randn(2, 20, 20, generator=g, dtype=torch.float64)
    target = torch.tensor([1, 0])
    for tile in (1, 6):  # pixels; 4x4 tiles with cut edges
        metric = SensitivityN(model, (20, 20), tile_size=tile, num_n=8, num_subsets=6, batch_size=50)
        metric.update(images, target, attr)
        expected = bench.sensitivity_loop(model, images, target, attr, tile, metric.subsets)
        drops = logit_drops(model, images, target, metric.grid, metric.subsets, 50)
        batched = pearson(tile_set_masses(attr, metric.grid, metric.subsets), drops)
        torch.testing.assert_close(batched, expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(metric.compute().correlation, expected.mean(0), rtol=0, atol=1e-10)


def test_sensitivity_n_shared_drops_equal_recomputed_ones() -> None:
    """Drops computed once serve every method's metric: the results equal per-metric recomputation."""
    model = small_cnn().double()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 20, 20, generator=g, dtype=torch.float64)
    target = torch.tensor([1, 0, 1])
    maps = [torch.randn(3, 20, 20, generator=g, dtype=torch.float64) for _ in range(2)]
    shared = SensitivityN(model, (20, 20), tile_size=4, num_n=5, num_subsets=6, batch_size=7)
    drops = shared.drops(images, target)
    assert drops.shape == (3, len(shared.n_values), 6)
    for attr in maps:
        own, reused = (SensitivityN(model, (20, 20), tile_size=4, num_n=5, num_subsets=6) for _ in range(2))
        own.update(images, target, attr)
        reused.update(images, target, attr, drops=drops)
        assert torch.equal(own.compute().correlation, reused.compute().correlation)
    with pytest.raises(ValueError, match="drops of shape"):
        shared.update(images[:2], target[:2], maps[0][:2], drops=drops)


def test_pearson_matches_numpy_and_treats_constants_as_zero() -> None:
    x, y = torch.randn(5, 50), torch.randn(5, 50)
    expected = torch.tensor([np.corrcoef(a, b)[0, 1] for a, b in zip(x.double(), y.double(), strict=True)])
    torch.testing.assert_close(pearson(x, y), expected.double())
    assert pearson(torch.full((2, 10), 0.1), torch.randn(2, 10)).tolist() == [0.0, 0.0]
    rounding = 0.3 * 205 + 1e-14 * torch.randn(2, 10, dtype=torch.float64)  # constant up to rounding
    assert pearson(rounding, torch.randn(2, 10)).tolist() == [0.0, 0.0]
    mixed = torch.randn(2, 3, 40, dtype=torch.float64)  # (N, K, S) as Sensitivity-n correlates them
    mixed[1, 2] = 7.0
    other = mixed + torch.randn(2, 3, 40, dtype=torch.float64)
    corr = pearson(mixed, other)
    assert corr.shape == (2, 3) and corr[1, 2] == 0
    for i, j in [(0, 0), (0, 2), (1, 0), (1, 1)]:
        assert corr[i, j].item() == pytest.approx(scipy.stats.pearsonr(mixed[i, j], other[i, j]).statistic, abs=1e-14)
    assert pearson(torch.zeros(0, 3, 5), torch.zeros(0, 3, 5)).shape == (0, 3)


# --- SSIM and the sanity check ------------------------------------------------------------------------


def test_ssim_identical_maps_is_one_and_negation() -> None:
    h = torch.rand(3, 24, 24)
    torch.testing.assert_close(ssim(h, h), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(heatmap_ssim(h, 3 * h + 1), torch.ones(3, dtype=torch.float64))
    # normalize(-h) = 1 - normalize(h): anti-correlated structure, SSIM clearly negative unless signed
    assert (heatmap_ssim(h, -h) < -0.5).all()
    torch.testing.assert_close(heatmap_ssim(h, -h, signed=True), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(normalize_heatmap(-h), 1 - normalize_heatmap(h), rtol=0, atol=1e-12)


def test_normalize_heatmap_matches_numpy_percentiles() -> None:
    maps = torch.randn(4, 13, 11) ** 3
    lo, hi = np.percentile(maps.double().numpy().reshape(4, -1), [1, 99], axis=1)
    expected = (np.clip(maps.double().numpy(), lo[:, None, None], hi[:, None, None]) - lo[:, None, None]) / (
        hi - lo
    )[:, None, None]
    torch.testing.assert_close(normalize_heatmap(maps), torch.from_numpy(expected))
    out = normalize_heatmap(maps)
    assert out.min() == 0 and out.max() == 1
    assert torch.equal(normalize_heatmap(torch.ones(1, 8, 8)), torch.zeros(1, 8, 8, dtype=torch.float64))


def test_ssim_matches_skimage() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    torch.manual_seed(0)
    a = torch.rand(3, 17, 23)
    b = (a + 0.3 * torch.randn(3, 17, 23)).clamp(0, 1)
    for x, y in ((a, b), (a, torch.rand(3, 17, 23))):
        expected = [
            metrics.structural_similarity(p.double().numpy(), q.double().numpy(), win_size=5, data_range=1.0)
            for p, q in zip(x, y, strict=True)
        ]
        torch.testing.assert_close(
            ssim(x, y), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10
        )


def test_cascading_randomization_resets_from_the_last_layer_cumulatively() -> None:
    model = small_cnn()
    layers = ["0", "3", "7"]  # conv, conv, linear in forward order
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    seen = []
    for name, randomized in cascading_randomization(model, layers, seed=3):
        state = randomized.state_dict()
        changed = sorted({k.split(".")[0] for k in state if not torch.equal(state[k], before[k])})
        seen.append((name, changed))
    assert seen == [("7", ["7"]), ("3", ["3", "7"]), ("0", ["0", "3", "7"])]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # original untouched
    assert torch.equal(torch.get_rng_state(), rng)
    first = [
        {k: v.clone() for k, v in m.state_dict().items()}
        for _, m in cascading_randomization(model, layers, 3)
    ]
    second = [m.state_dict() for _, m in cascading_randomization(model, layers, 3)]
    assert all(torch.equal(first[-1][k], v) for k, v in second[-1].items())  # reproducible
    zoo = get_model("shapesnet")  # paper layer names of a zoo model
    name, randomized = next(cascading_randomization(zoo, [*zoo.conv_layers(), "fc"]))
    assert name == "fc" and not torch.equal(randomized.module.fc.weight, zoo.module.fc.weight)
    assert torch.equal(randomized.module.conv4[0].weight, zoo.module.conv4[0].weight)
    with pytest.raises(ValueError, match="reset_parameters"):
        next(cascading_randomization(model, ["1"]))  # a ReLU has nothing to re-initialise


class InputGradient:
    """gradient x input summed over channels, for the sanity-check tests."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = inputs.clone().requires_grad_(True)
        self.model(x).gather(1, target[:, None]).sum().backward()
        return (x.grad * x).sum(1)


class ModelBlind:
    """An 'attribution' that ignores the model: the image itself (an edge-detector-like failure)."""

    def __init__(self, model: nn.Module) -> None:
        pass

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return inputs.mean(1)


def test_cascading_sanity_check() -> None:
    model = small_cnn()
    batches = [{"image": torch.randn(3, 3, 16, 16), "label": torch.tensor([0, 1, 2])} for _ in range(2)]
    layers = ["0", "3", "7"]
    blind = cascading_sanity_check(model, layers, ModelBlind, batches)
    assert blind.layers == ["7", "3", "0"] and blind.count.tolist() == [6, 6, 6]
    torch.testing.assert_close(blind.compute(), torch.ones(3, dtype=torch.float64))
    grad = cascading_sanity_check(model, layers, InputGradient, batches).compute()
    assert (grad < 0.9).all() and (grad > -1).all()
    # the per-step values are the mean SSIM of the heatmaps, recomputed here by hand for the last step
    images = torch.cat([b["image"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    *_, (_, randomized) = cascading_randomization(model, layers)
    expected = heatmap_ssim(
        InputGradient(model).attribute(images, labels), InputGradient(randomized).attribute(images, labels)
    )
    assert grad[-1].item() == pytest.approx(expected.mean().item(), abs=1e-12)


# --- reduction --------------------------------------------------------------------------------------------


def _assert_results_close(actual: object, expected: object) -> None:
    """compute() results (a tensor or a NamedTuple of tensors) agree to 1e-12."""
    pairs = zip(actual, expected, strict=True) if isinstance(expected, tuple) else [(actual, expected)]
    for a, e in pairs:
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)


def _assert_same_states(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for name in a._defaults:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=1e-12)


def test_metrics_merge_like_one_pass_over_all_data() -> None:
    model = small_cnn().double()
    images = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    attr = torch.randn(6, 16, 16, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    box = torch.zeros(6, 16, 16, dtype=torch.bool)
    box[:, 2:8, 3:9] = True
    makers = {
        "degradation": (
            lambda: Degradation(model, (16, 16), tile_size=4),
            lambda m, s: m.update(images[s], target[s], attr[s]),
        ),
        "sensitivity": (
            lambda: SensitivityN(model, (16, 16), tile_size=4, num_subsets=10),
            lambda m, s: m.update(images[s], target[s], attr[s]),
        ),
        "bbox": (BoundingBoxRatio, lambda m, s: m.update(attr[s], box[s])),
        "sanity": (
            lambda: SanitySSIM(["b", "a"]),
            lambda m, s: [m.update(attr[s], attr[s].flip(1), k) for k in (0, 1)],
        ),
    }
    for make, update in makers.values():
        whole, first, second = make(), make(), make()
        update(whole, slice(None))
        update(first, slice(0, 4))
        update(second, slice(4, None))
        first.merge_state(second)
        _assert_same_states(whole, first)
        _assert_results_close(first.compute(), whole.compute())


def test_input_checks() -> None:
    model = small_cnn().train()
    with pytest.raises(ValueError, match="eval mode"):
        Degradation(model, (16, 16))
    metric = Degradation(model.eval(), (16, 16))
    with pytest.raises(ValueError, match="images"):
        metric.update(torch.randn(2, 3, 16, 15), 0, torch.randn(2, 16, 15))
    with pytest.raises(ValueError, match="attribution maps"):
        metric.update(torch.randn(2, 3, 16, 16), 0, torch.randn(2, 16, 15))
    with pytest.raises(ValueError, match="NaN"):
        metric.update(torch.randn(1, 3, 16, 16), 0, torch.full((1, 16, 16), float("nan")))


def _shard_metrics(shard: slice) -> dict[str, object]:
    """All four metrics updated on `shard` of a fixed data set."""
    model = small_cnn().double()
    g = torch.Generator().manual_seed(5)
    images = torch.randn(5, 3, 16, 16, generator=g, dtype=torch.float64)
    attr = torch.randn(5, 16, 16, generator=g, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0, 1])
    box = torch.zeros(5, 16, 16, dtype=torch.bool)
    box[:, 2:8, 3:9] = True
    metrics = {
        "degradation": Degradation(model, (16, 16), tile_size=4),
        "sensitivity": SensitivityN(model, (16, 16), tile_size=4, num_subsets=10),
        "bbox": BoundingBoxRatio(),
        "sanity": SanitySSIM(["b", "a"]),
    }
    metrics["degradation"].update(images[shard], target[shard], attr[shard])
    metrics["sensitivity"].update(images[shard], target[shard], attr[shard])
    metrics["bbox"].update(attr[shard], box[shard])
    for k in (0, 1):
        metrics["sanity"].update(attr[shard], attr[shard].flip(k + 1), k)
    return {name: m.compute() for name, m in metrics.items()}


def _ddp_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    results = _shard_metrics(slice(0, 2) if rank == 0 else slice(2, None))  # uneven shards
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_reduction_equals_one_process(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    ddp, single = torch.load(out, weights_only=False), _shard_metrics(slice(None))
    for name, expected in single.items():
        _assert_results_close(ddp[name], expected)
