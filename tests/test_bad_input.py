"""Bad input gives one clear `InputError` / `ConfigError` for every method, never NaN maps or a raw crash.

Every registered method is checked on a small random ShapesNet: non-finite or absurd pixels, empty batches,
wrong dtypes, float/bool targets, wrong target lengths (also through `explain()`), and IBA's `beta`.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.models import VisionTransformer

import infoflow.attribution as attribution
from infoflow.discarding.features import LayerFeatures, resolve_layers
from infoflow.discarding.sid import compute_sid, layerwise_sid
from infoflow.errors import ConfigError, InputError
from infoflow.iba.estimator import fit_estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.iba.readout import ReadoutBottleneck, ReadoutIBA, fit_statistics
from infoflow.interface import METHODS, Attribution, as_target
from infoflow.models.layers import vit_layers
from infoflow.models.split import SplitModel
from infoflow.models.vit import TokenViT
from infoflow.models.zoo import ZooModel, get_model
from infoflow.utils.validation import MAX_ABS_PIXEL, check_batch, check_images

SIZE = 32
#: how each registered method is built for these tests (cheap settings; fitted where the method needs it)
BUILD: dict[str, dict[str, Any]] = {
    "iba": {"layer": "conv3", "steps": 1, "copies": 2},
    "smoothgrad": {"samples": 2},
    "integrated-gradients": {"n_steps": 2},
}


@pytest.fixture(scope="module")
def model() -> ZooModel:
    torch.manual_seed(0)
    return get_model("shapesnet", "none", 4, (3, SIZE, SIZE))


@pytest.fixture(scope="module")
def batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randn(8, 3, SIZE, SIZE, generator=g)} for _ in range(3)]


@pytest.fixture(scope="module")
def methods(model: ZooModel, batches: list[dict[str, torch.Tensor]]) -> dict[str, Attribution]:
    """Every registered method, ready to run: IBA with an estimator and the readout with statistics fitted on
    a few random batches, PatternAttribution fitted."""
    out: dict[str, Attribution] = {}
    for name in METHODS.names():
        if name == "readout":  # the registry builds it from a checkpoint; here from a fresh readout
            torch.manual_seed(0)
            readout = ReadoutBottleneck(model, "conv3", ["conv2", "conv4", "fc"])
            readout.set_statistics(fit_statistics(readout, DataLoader([{"image": x} for b in batches for x in
                                                                        b["image"]], batch_size=8), 24))
            out[name] = ReadoutIBA(readout)
            continue
        if name == "attention-rollout":  # ViT-only: a tiny ViT on the same 32x32 images
            torch.manual_seed(0)
            vit = TokenViT(VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
                                             mlp_dim=32, num_classes=4)).eval()
            out[name] = METHODS.get(name)(ZooModel("tiny-vit", vit, 4, (3, SIZE, SIZE), "none", vit_layers(vit)))
            continue
        method = METHODS.get(name)(model, **BUILD.get(name, {}))
        if name == "iba":
            method.set_estimator(fit_estimator(SplitModel(model.module, model.layer_path("conv3")).head, batches, 24))
        elif name == "pattern-attribution":
            method.fit(batches)
        out[name] = method
    return out


ALL = sorted(METHODS.names())
EXPLAIN = ["iba", "readout"]


def images(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))


def test_every_registered_method_is_covered() -> None:
    assert len(ALL) >= 16 and {"iba", "readout", "ground-truth", "lrp-a1b0", "pattern-attribution"} <= set(ALL)
    assert attribution.METHODS is METHODS


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("name", ALL)
def test_nan_inf_and_absurd_pixels_are_refused_naming_the_images(name: str, methods: dict[str, Attribution]) -> None:
    x = images(6)
    x[0, 1, 2, 3] = math.nan
    x[3, :, 5] = math.nan
    x[2, 0, 0, 0] = math.inf
    x[5, 2, 1, 1] = -1e30
    with pytest.raises(InputError, match=r"^images 0, 3 contain NaN; image 2 contains inf; image 5 contains "
                                         r"values beyond ±10000: expected finite, normalised images"):
        methods[name].attribute(x, 1)
    for value, what in ((-math.inf, "image 4 contains inf"), (3e6, "image 4 contains values beyond")):
        y = images(6)
        y[4, 0, 7, 7] = value
        with pytest.raises(InputError, match=what):
            methods[name].attribute(y, 1)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.uint8, torch.int64])
def test_other_dtypes_are_refused_naming_float32(name: str, dtype: torch.dtype, methods: dict[str, Attribution]) -> None:
    x = images(2).clamp(0, 1).mul(255).to(dtype)
    with pytest.raises(InputError, match=rf"expects float32 images normalised as in training, got {str(dtype)[6:]}"):
        methods[name].attribute(x, 1)


def test_images_that_are_not_a_tensor_or_of_another_shape_are_refused(methods: dict[str, Attribution]) -> None:
    method = methods["gradient"]
    with pytest.raises(InputError, match="images must be a torch.Tensor"):
        method.attribute(images(2).numpy(), 1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"expects images of shape \(N, 3, 32, 32\), got \(3, 32, 32\)"):
        method.attribute(images(1)[0], 1)


def test_the_image_check_accepts_its_bound_and_a_model_converted_to_double() -> None:
    x = images(3)
    x[1, 0, 0, 0] = MAX_ABS_PIXEL
    check_images(x, (3, SIZE, SIZE), torch.float32)
    with pytest.raises(InputError, match="expects float32 images"):
        check_images(x.double(), (3, SIZE, SIZE), torch.float32)
    check_images(x.double(), (3, SIZE, SIZE), torch.float64)
    torch.manual_seed(0)
    double = get_model("shapesnet", "none", 4, (3, SIZE, SIZE))
    double.module.double()
    maps = METHODS.get("gradient")(double).attribute(x.double(), 1)
    assert maps.dtype == torch.float64 and maps.shape == (3, SIZE, SIZE)
    with pytest.raises(InputError, match="expects float64 images normalised as in training, got float32"):
        double.check_inputs(x)
    many = torch.full((12, 3, 2, 2), math.nan)
    with pytest.raises(InputError, match=r"images 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\. \(12 in all\) contain NaN"):
        check_images(many)


# ---------------------------------------------------------------- empty batches


@pytest.mark.parametrize("name", ALL)
def test_an_empty_batch_gives_empty_maps_without_running_the_model(name: str, model: ZooModel,
                                                                    methods: dict[str, Attribution]) -> None:
    calls = []
    hook = model.module.register_forward_hook(lambda *_: calls.append(1))
    try:
        for target in (1, [], torch.empty(0, dtype=torch.long)):
            maps = methods[name].attribute(torch.zeros(0, 3, SIZE, SIZE), target)
            assert maps.shape == (0, SIZE, SIZE) and maps.dtype == torch.float32
    finally:
        hook.remove()
    assert not calls
    with pytest.raises(InputError, match="target has 2 entries for 0 images"):
        methods[name].attribute(torch.zeros(0, 3, SIZE, SIZE), [1, 2])
    with pytest.raises(InputError, match="float32"):
        methods[name].attribute(torch.zeros(0, 3, SIZE, SIZE, dtype=torch.float64), 1)


@pytest.mark.parametrize("name", EXPLAIN)
def test_explain_of_an_empty_batch_is_an_empty_result(name: str, methods: dict[str, Attribution]) -> None:
    result = methods[name].explain(torch.zeros(0, 3, SIZE, SIZE), 1)  # type: ignore[attr-defined]
    full = methods[name].explain(images(1), 1)  # type: ignore[attr-defined]
    assert result.heatmap.shape == (0, SIZE, SIZE) and result.total_bits.shape == (0,)
    assert result.capacity.shape == (0, *full.capacity.shape[1:])
    assert result.prob_with.shape == result.prob_without.shape == (0,)


# ---------------------------------------------------------------- targets


BAD_TARGETS = [1.7, 1.0, True, [1, 0.5], torch.tensor([1.7, 0.2]), torch.tensor([1.0, 0.0]),
               torch.tensor([True, False]), torch.tensor(2.0, dtype=torch.float64), "cat"]


@pytest.mark.parametrize("name", ALL)
def test_float_and_bool_targets_are_refused_not_truncated(name: str, methods: dict[str, Attribution]) -> None:
    for target in BAD_TARGETS:
        with pytest.raises(InputError, match="targets are integer class indices"):
            methods[name].attribute(images(2), target)
    for target in (4, -1, [0, 9]):
        with pytest.raises(InputError, match=rf"target out of range: model '{methods[name].model.name}' has 4 classes \(0\.\.3\)"):
            methods[name].attribute(images(2), target)


@pytest.mark.parametrize("name", ALL)
def test_a_target_of_the_wrong_length_is_one_clear_error(name: str, methods: dict[str, Attribution]) -> None:
    for target in ([0, 1, 2], torch.tensor([1, 0, 3]), torch.zeros(2, 3, dtype=torch.long)):
        with pytest.raises(InputError, match=r"^target has \d entries for 2 images: give one class index per image"):
            methods[name].attribute(images(2), target)


@pytest.mark.parametrize("name", EXPLAIN)
def test_explain_checks_targets_as_attribute_does(name: str, methods: dict[str, Attribution]) -> None:
    explain = methods[name].explain  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="^target has 3 entries for 2 images"):
        explain(images(2), [0, 1, 2])
    with pytest.raises(InputError, match="targets are integer class indices"):
        explain(images(2), 1.7)
    with pytest.raises(InputError, match="^image 1 contains NaN"):
        explain(torch.stack([images(1)[0], torch.full((3, SIZE, SIZE), math.nan)]), 0)
    assert torch.isfinite(explain(images(2), torch.tensor([3, 0])).heatmap).all()


def test_the_target_normaliser_broadcasts_and_keeps_integer_types() -> None:
    import numpy as np

    assert as_target(2, 3).tolist() == [2, 2, 2]
    assert as_target(np.int64(1), 2).tolist() == [1, 1]
    assert as_target(torch.tensor([[1], [0]], dtype=torch.uint8), 2).tolist() == [1, 0]
    assert as_target(np.array([3, 0]), 2, num_classes=4).dtype == torch.long
    with pytest.raises(InputError, match="targets are integer class indices"):
        as_target(np.array([0.5]), 1)


def test_the_metrics_share_the_target_normaliser() -> None:
    with pytest.raises(InputError, match="targets are integer class indices"):
        check_batch(images(2), 1.7, None, (SIZE, SIZE))
    with pytest.raises(InputError, match="target has 3 entries for 2 images"):
        check_batch(images(2), [0, 1, 2], None, (SIZE, SIZE))


# ---------------------------------------------------------------- IBA's beta and SID


@pytest.mark.parametrize("beta", [math.nan, math.inf, -math.inf, -1.0, "ten", "10", None, True])
def test_beta_must_be_finite_and_nonnegative(beta: Any, model: ZooModel) -> None:
    with pytest.raises(ConfigError, match=r"beta must be a finite number >= 0 \(0: no information penalty\)"):
        PerSampleIBA(model, "conv3", beta=beta)


def test_beta_zero_is_valid_and_keeps_more_bits(model: ZooModel, methods: dict[str, Attribution]) -> None:
    estimator = fit_estimator(SplitModel(model.module, model.layer_path("conv3")).head, [{"image": images(16)}], 16)
    bits = {beta: PerSampleIBA(model, "conv3", beta=beta, steps=3, seed=0, estimator=estimator)
            .explain(images(2), 1).total_bits for beta in (0, 100.0)}
    assert torch.isfinite(bits[0]).all() and (bits[0] > bits[100.0]).all()


def test_sid_refuses_non_finite_images(model: ZooModel) -> None:
    x = torch.rand(3, 3, SIZE, SIZE)
    x[1, 0, 0, 0] = math.nan
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    with pytest.raises(InputError, match="^image 1 contains NaN"):
        layerwise_sid(model, x, mean, std, layers=["conv1"])
    features = LayerFeatures(model.module, resolve_layers(model, ["conv1"]), mean, std)
    with pytest.raises(InputError, match="^image 1 contains NaN"):
        compute_sid(features, x, {"conv1": 1.0})
    with pytest.raises(InputError, match="float32"):
        compute_sid(features, x.double(), {"conv1": 1.0})
