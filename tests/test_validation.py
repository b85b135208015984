"""The one validation module and the error hierarchy: user mistakes in the Python API and in the data on disk
raise a `UserError` subclass whose one line names the setting, the file or the images, never NaN or a library
error."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import pytest
import torch
from fake_layouts import make_cifar10, make_cub, make_imagefolder, make_imagenet
from torchvision.transforms.v2 import functional as TF

from infoflow.data.base import ImageDataModule
from infoflow.data.cifar import CIFAR10DataModule
from infoflow.data.cub import CUB200DataModule
from infoflow.data.imagefolder import ImageFolderDataModule, ImageNetDataModule
from infoflow.data.shapes import ShapesDataModule
from infoflow.errors import ConfigError, DataError, InputError, UserError
from infoflow.iba.estimator import Estimator, NotEstimatedError, fit_estimator
from infoflow.iba.per_sample import PerSampleIBA
from infoflow.metrics import Degradation, Infidelity, MaxSensitivity, SensitivityN
from infoflow.models.zoo import ZooModel, get_model
from infoflow.utils.checkpoint import CheckpointError
from infoflow.utils.validation import (
    check_batch_size,
    check_beta,
    check_choice,
    check_count,
    check_maps,
    check_number,
)

SIZE = 32


@pytest.fixture(scope="module")
def model() -> ZooModel:
    torch.manual_seed(0)
    return get_model("shapesnet", "none", 4, (3, SIZE, SIZE))


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- one rule per setting


@pytest.mark.parametrize("value", ["10", True, None, math.nan, -0.5, math.inf])
def test_beta_strings_are_refused_everywhere(value: object, model: ZooModel) -> None:
    with pytest.raises(ConfigError, match=r"^beta must be a finite number >= 0"):
        check_beta(value)
    with pytest.raises(ConfigError, match=r"^beta must be a finite number >= 0"):
        PerSampleIBA(model, "conv3", beta=value)  # type: ignore[arg-type]


def test_the_checks_return_the_value_and_name_the_setting() -> None:
    assert check_beta(10) == 10.0 and isinstance(check_beta(10), float)
    assert check_count(3, "x") == 3 and check_number(0.5, "lr", strict=True) == 0.5
    assert check_batch_size("auto") == "auto" and check_batch_size(4) == 4
    for bad in (0, -1, 1.5, "8", True):
        with pytest.raises(ConfigError, match=r"^method\.batch_size must be an integer >= 1 or 'auto', got"):
            check_batch_size(bad, "method.batch_size")
    with pytest.raises(ConfigError, match=r"^lr must be a finite number > 0, got 0"):
        check_number(0, "lr", strict=True)
    with pytest.raises(ConfigError, match=r"^analysis\.split=foo: not a valid choice; choose one of: val \| test"):
        check_choice("foo", "analysis.split", ["val", "test"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, r"^steps must be an integer >= 1, got 0"),
        ({"steps": "10"}, r"^steps must be an integer >= 1, got '10'"),
        ({"batch_size": 0}, r"^batch_size must be an integer >= 1 or 'auto', got 0"),
        ({"copies": 0}, r"^copies must be an integer >= 1, got 0"),
        ({"lr": 0.0}, r"^lr must be a finite number > 0, got 0.0"),
        ({"sigma": -1.0}, r"^sigma must be a finite number >= 0, got -1.0"),
        ({"estimator_samples": 0}, r"^estimator_samples must be an integer >= 1, got 0"),
    ],
)
def test_per_sample_iba_refuses_bad_settings_at_construction(model: ZooModel, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PerSampleIBA(model, "conv3", **kwargs)


# ---------------------------------------------------------------- fit() checks its images as attribute() does


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float64])
def test_fit_refuses_the_images_attribute_refuses(model: ZooModel, dtype: torch.dtype) -> None:
    x = (images(4).clamp(0, 1) * 255).to(dtype)
    iba = PerSampleIBA(model, "conv3", steps=1, copies=2, estimator_samples=8)
    with pytest.raises(InputError) as attribute_error:
        iba.attribute(x, 0)
    with pytest.raises(InputError) as fit_error:
        iba.fit([{"image": x}])
    assert str(fit_error.value) == f"estimator data, batch 0: {attribute_error.value}"
    assert iba.bottleneck is None


def test_fit_refuses_nan_images_and_no_nan_estimator_reaches_the_cache(model: ZooModel, tmp_path: Path) -> None:
    good, bad = images(4), images(4, seed=1)
    bad[2, 0, 3, 3] = math.nan
    cache = tmp_path / "estimator.pt"
    iba = PerSampleIBA(model, "conv3", steps=1, copies=2, estimator_samples=8, estimator_cache=cache)
    with pytest.raises(InputError, match=r"^estimator data, batch 1: image 2 contains NaN"):
        iba.fit([{"image": good}, {"image": bad}])
    assert iba.bottleneck is None and not cache.exists()
    bad[2, 0, 3, 3] = math.inf
    with pytest.raises(InputError, match=r"batch 1: image 2 contains inf"):
        iba.fit([{"image": good}, {"image": bad}])


def test_the_estimator_refuses_non_finite_features_and_sums(tmp_path: Path) -> None:
    estimator = Estimator((2, 3))
    features = torch.randn(5, 2, 3)
    features[3, 1, 1] = math.nan
    with pytest.raises(InputError, match="features of 1 of 5 samples contain NaN or inf"):
        estimator.update(features)
    assert estimator.n == 0  # nothing was added
    with pytest.raises(InputError, match=r"^estimator data, batch 0: images 0, 1 contain NaN"):
        fit_estimator(lambda x: x, [{"image": torch.full((2, 3), math.nan)}], 4)
    estimator.update(torch.randn(5, 2, 3))
    estimator.s2[0, 0] = math.inf  # sums that went bad (e.g. an overflow)
    for read in (lambda: estimator.mean, lambda: estimator.std, estimator.compute, lambda: estimator.save(tmp_path / "e.pt")):
        with pytest.raises(NotEstimatedError, match="not finite"):
            read()
    assert not (tmp_path / "e.pt").exists()
    state = {"shape": torch.tensor([2, 3]), "n": torch.tensor(5.0), "s1": torch.zeros(2, 3),
             "s2": torch.full((2, 3), math.nan), "nonzero": torch.zeros(2, 3)}
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=rf"estimator file {re.escape(str(tmp_path / 'nan.pt'))} holds NaN"):
        Estimator((2, 3)).load(tmp_path / "nan.pt")
    assert issubclass(NotEstimatedError, UserError) and issubclass(CheckpointError, DataError)


# ---------------------------------------------------------------- normalisation of every datamodule


def _datamodules(root: Path) -> dict[str, ImageDataModule]:
    return {
        "shapes": ShapesDataModule(image_size=SIZE, num_train=2, num_val=2, num_test=2),
        "cifar10": CIFAR10DataModule(str(make_cifar10(root / "cifar"))),
        "cub": CUB200DataModule(str(make_cub(root / "cub", n_classes=1, n_per_class=2)), image_size=16),
        "imagefolder": ImageFolderDataModule(str(make_imagefolder(root / "f", ["a", "b"])), image_size=8, resize=8),
        "imagenet": ImageNetDataModule(str(make_imagenet(root / "in", n_train=1, n_val=1))),
    }


def test_every_datamodule_normalises_with_its_own_mean_and_std(tmp_path: Path) -> None:
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for name, dm in _datamodules(tmp_path).items():
        expected = TF.normalize(x, list(dm.mean), list(dm.std))  # torchvision's, as the data transforms use
        torch.testing.assert_close(dm.normalize(x), expected, msg=name)
        torch.testing.assert_close(dm.denormalize(dm.normalize(x)), x, msg=name)
        torch.testing.assert_close(type(dm).normalize(x), TF.normalize(x, list(type(dm).mean), list(type(dm).std)))
    assert CIFAR10DataModule.mean != _datamodules(tmp_path / "again")["cifar10"].mean  # the instance's own


def test_a_batch_denormalises_to_the_files_pixels(tmp_path: Path) -> None:
    dm = CIFAR10DataModule(str(make_cifar10(tmp_path)), batch_size=6)
    batch = next(iter(dm.test_dataloader()))
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as f:
        pixels = torch.from_numpy(pickle.load(f, encoding="bytes")[b"data"]).reshape(6, 3, 32, 32) / 255
    torch.testing.assert_close(dm.normalize(pixels), batch["image"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- data on disk


def test_cifar10_missing_or_empty_root_names_the_path_and_the_layout(tmp_path: Path) -> None:
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(DataError, match=rf"{re.escape(str(root))}.*cifar-10-batches-py/\{{data_batch_1, "
                                             r"\.\.\., data_batch_5, test_batch, batches\.meta\}"):
            CIFAR10DataModule(str(root))


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch", "batches.meta"])
def test_a_truncated_cifar10_pickle_is_a_data_error_naming_the_file(tmp_path: Path, name: str) -> None:
    path = make_cifar10(tmp_path) / "cifar-10-batches-py" / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"^cannot read CIFAR-10 file {re.escape(str(path))}: corrupt or truncated"):
        CIFAR10DataModule(str(tmp_path)).setup("fit")


def test_an_empty_image_folder_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / 'empty'))} has no class folders"):
        ImageFolderDataModule(str(tmp_path / "empty"))
    (tmp_path / "blank" / "cat").mkdir(parents=True)
    dm = ImageFolderDataModule(str(tmp_path / "blank"))
    with pytest.raises(DataError, match=r"^no images \(.*\) in the class folders of"):
        dm.setup("fit")


# ---------------------------------------------------------------- maps


def test_maps_are_checked_once_for_every_metric() -> None:
    check_maps(torch.zeros(2, 4, 4), (2, 4, 4))
    with pytest.raises(InputError, match=r"expected attribution maps of shape \(2, 4, 4\).*got \(2, 4\)"):
        check_maps(torch.zeros(2, 4), (2, 4, 4))
    with pytest.raises(InputError, match=r"contain NaN or infinite values \(1 of 2 maps\)"):
        check_maps(torch.tensor([[[0.0]], [[math.nan]]]), (2, 1, 1))
    with pytest.raises(InputError, match="attribution maps must be a torch.Tensor"):
        check_maps([[0.0]], (1, 1))


# ---------------------------------------------------------------- metric settings


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).eval()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Degradation(_net(), (8, 8), num_points=1), r"^num_points must be an integer >= 2"),
        (lambda: Degradation(_net(), (8, 8), batch_size=0), r"^batch_size must be an integer >= 1 or 'auto', got 0"),
        (lambda: SensitivityN(_net(), (8, 8), max_fraction=1.5), r"^max_fraction must be in \(0, 1\]"),
        (lambda: SensitivityN(_net(), (8, 8), num_subsets=1), r"^num_subsets must be an integer >= 2"),
        (lambda: SensitivityN(_net(), (8, 8), num_n="4"), r"^num_n must be an integer >= 1, got '4'"),
        (lambda: Infidelity(_net(), noise_std=0.0), r"^noise_std must be a finite number > 0, got 0.0"),
        (lambda: MaxSensitivity(lambda x, t: x.sum(1), n_perturb_samples=0), r"^n_perturb_samples must be an"),
        (lambda: Degradation(_net().train(), (8, 8)), r"^model is in training mode"),
        (lambda: Degradation(_net(), (8, 8), tile_size=0), r"^tile_size and the image size must be integers >= 1"),
    ],
)
def test_metric_settings_are_config_errors_naming_the_argument(build, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()
