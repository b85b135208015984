"""The Per-Sample Bottleneck: capacity, estimator, smoothing, heatmap units and the fast-path equivalences."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import explain_one_at_a_time
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence

from infoflow.iba.bottleneck import Bottleneck, GaussianBlur, capacity, capacity_to_heatmap
from infoflow.iba.estimator import Estimator, NotEstimatedError, fit_estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.reference import naive_per_sample
from infoflow.models import get_model


def test_capacity_equals_kl_from_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    r, mu = torch.randn(500, generator=g) * 3, torch.randn(500, generator=g)
    sigma, lam = torch.rand(500, generator=g) + 0.1, torch.rand(500, generator=g) * 0.98
    q = Normal(lam * r + (1 - lam) * mu, (1 - lam) * sigma)
    expected = kl_divergence(q, Normal(mu, sigma))
    assert torch.allclose(capacity((r - mu) / sigma, lam), expected, atol=1e-5, rtol=1e-4)


@settings(max_examples=200, deadline=None)
@given(st.floats(-50, 50), st.floats(0.0, 0.999))
def test_capacity_is_nonnegative(r_hat: float, lam: float) -> None:
    assert capacity(torch.tensor(r_hat), torch.tensor(lam)) >= -1e-6


def test_capacity_is_zero_where_nothing_passes() -> None:
    assert torch.equal(capacity(torch.randn(100) * 10, torch.zeros(100)), torch.zeros(100))


def test_estimator_matches_torch_mean_and_std(tmp_path) -> None:
    g = torch.Generator().manual_seed(1)
    data = torch.relu(torch.randn(300, 4, 5, 6, generator=g) * 2 + 1)
    data[:, 0] = 0  # a dead channel: inactive, std clamped
    est = Estimator((4, 5, 6))
    for chunk in data.split(37):
        est.update(chunk)
    assert torch.allclose(est.mean, data.mean(0), atol=1e-5)
    assert torch.allclose(est.std, data.std(0).clamp_min(0.01), atol=1e-5)
    assert torch.equal(est.active, (data != 0).float().mean(0) > 0.01)
    assert not est.active[0].any() and est.std[0].eq(0.01).all()
    # two halves merged (what DDP's sum-reduction does) equal one pass over everything
    a, b = Estimator((4, 5, 6)), Estimator((4, 5, 6))
    a.update(data[:100])
    b.update(data[100:])
    a.merge_state(b)
    assert torch.allclose(a.std, est.std) and torch.allclose(a.mean, est.mean)
    # save / load, with a shape check
    est.save(tmp_path / "est.pt")
    assert torch.equal(Estimator((4, 5, 6)).load(tmp_path / "est.pt").std, est.std)
    with pytest.raises(ValueError, match=r"shape \(4, 5, 6\)"):
        Estimator((4, 5, 7)).load(tmp_path / "est.pt")
    with pytest.raises(ValueError, match="shape"):
        est.update(torch.zeros(2, 4, 5, 7))
    with pytest.raises(NotEstimatedError):
        _ = Estimator((1,)).std


def test_fit_estimator_caches_on_disk(tmp_path) -> None:
    batches = [{"image": torch.randn(8, 3)} for _ in range(4)]
    est = fit_estimator(lambda x: x * 2, batches, max_samples=20, cache=tmp_path / "c.pt")
    assert est.n == 20 and (tmp_path / "c.pt").is_file()
    again = fit_estimator(lambda x: x * 0, batches, max_samples=20, cache=tmp_path / "c.pt")
    assert torch.equal(again.mean, est.mean)  # loaded, not recomputed


def test_blur_preserves_constants_and_mass() -> None:
    blur = GaussianBlur(1.0)
    assert blur.kernel.shape[-1] == 5 and math.isclose(float(blur.kernel.sum()), 1.0, rel_tol=1e-6)
    const = torch.full((2, 3, 9, 9), 0.7)
    assert torch.allclose(blur(const), const)
    spike = torch.zeros(1, 1, 11, 11)
    spike[..., 5, 5] = 1
    assert torch.allclose(blur(spike)[..., 3:8, 3:8], blur.kernel[0])


def test_heatmap_is_in_bits_with_the_image_total_preserved() -> None:
    cap = torch.rand(2, 8, 7, 7)
    heat = capacity_to_heatmap(cap, (28, 28))
    assert heat.shape == (2, 28, 28)
    assert torch.allclose(heat.sum((1, 2)), cap.sum((1, 2, 3)) / math.log(2), rtol=1e-5)


def test_inactive_elements_carry_nothing() -> None:
    mean, std = torch.zeros(2, 3, 3), torch.ones(2, 3, 3)
    active = torch.ones(2, 3, 3, dtype=torch.bool)
    active[1] = False
    bn = Bottleneck(mean, std, active)
    z, cap = bn(torch.randn(4, 2, 3, 3), torch.full((4, 2, 3, 3), 0.5))
    assert z[:, 1].eq(0).all() and cap[:, 1].eq(0).all() and cap[:, 0].gt(0).all()


def _fitted(model_name: str = "shapesnet", layer: str = "conv3", **kwargs) -> tuple[PerSampleIBA, torch.Tensor]:
    torch.manual_seed(0)
    model = get_model(model_name)
    images = torch.randn(48, *model.input_size)
    iba = PerSampleIBA(model, layer, seed=7, **kwargs)
    iba.fit([{"image": images[i : i + 16]} for i in range(0, 48, 16)])
    return iba, images[:4]


def test_attribution_before_estimation_is_an_error() -> None:
    iba = PerSampleIBA(get_model("shapesnet"), "conv3")
    with pytest.raises(NotEstimatedError, match="fit"):
        iba.attribute(torch.zeros(1, 3, 64, 64), 0)


def test_bad_inputs_name_the_expected_shape_and_classes() -> None:
    iba, x = _fitted()
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
        iba.attribute(torch.zeros(1, 3, 32, 32), 0)
    with pytest.raises(ValueError, match="4 classes"):
        iba.attribute(x, 4)


def test_batched_equals_one_at_a_time_and_units() -> None:
    iba, x = _fitted(batch_size=4)
    target = torch.tensor([0, 1, 2, 3])
    batched = iba.explain(x, target)
    assert batched.heatmap.shape == (4, 64, 64) and (batched.heatmap >= 0).all()
    # total bits = capacity summed over the feature map, in bits
    assert torch.allclose(batched.total_bits, batched.capacity.sum((1, 2, 3)) / math.log(2), rtol=1e-4)
    single = explain_one_at_a_time(iba, x, target, seed=7)
    assert torch.allclose(batched.heatmap, single, atol=1e-4 * float(single.max()))


def test_fast_path_equals_the_reference_loop_and_leaves_weights_alone() -> None:
    iba, x = _fitted(batch_size=2)
    params = {k: v.clone() for k, v in iba.model.module.named_parameters()}
    fast = iba.attribute(x[:2], [1, 3])
    assert all(torch.equal(v, params[k]) for k, v in iba.model.module.named_parameters())
    assert all(p.requires_grad and p.grad is None for p in iba.model.module.parameters())
    for i, t in enumerate((1, 3)):
        ref = naive_per_sample(iba.model.module, iba.layer, iba.bottleneck, x[i : i + 1], t,
                               generator=torch.Generator().manual_seed(7 + i))
        corr = torch.corrcoef(torch.stack([ref.flatten(), fast[i].flatten()]))[0, 1]
        assert corr >= 0.999
        assert (ref - fast[i]).abs().max() <= 1e-3 * float(ref.abs().max()) + 1e-6


def test_hook_fallback_gives_the_same_heatmaps() -> None:
    fx_iba, x = _fitted()
    hook_iba, _ = _fitted(use_fx=False)
    assert hook_iba.split.needs_input
    assert torch.allclose(fx_iba.attribute(x[:2], 0), hook_iba.attribute(x[:2], 0), atol=1e-4, rtol=1e-3)


def test_information_loss_weight_beta_shrinks_the_bits() -> None:
    low, x = _fitted(beta=1.0)
    high, _ = _fitted(beta=100.0)
    assert high.explain(x, 0).total_bits.mean() < low.explain(x, 0).total_bits.mean()
