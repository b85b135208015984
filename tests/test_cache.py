"""Cache identity, broken and unwritable cache files, the one cache-dir setting, the test session's cache."""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from infoflow.discarding import LayerDecoder, MissingDecoderError, decoder_path, load_decoders
from infoflow.discarding.delta_f import delta_f2_for_model
from infoflow.discarding.features import LayerFeatures
from infoflow.errors import DataError
from infoflow.iba.estimator import Estimator, fit_estimator
from infoflow.models import pretrained
from infoflow.models.shapesnet import ShapesNet
from infoflow.models.zoo import get_model
from infoflow.tasks import default_weights
from infoflow.utils.cache import (
    LOADER_KEYS,
    CorruptCacheWarning,
    cache_dir,
    cache_key,
    ensure_writable,
    load_cached,
    save_cached,
    using_cache_dir,
    weights_id,
)
from infoflow.utils.checkpoint import CACHE_HEADER, load_file, load_state_dict_file

DATA = {"_target_": "infoflow.data.shapes.ShapesDataModule", "image_size": 64, "num_classes": 4, "num_train": 4000,
        "seed": 0, "batch_size": 64, "num_workers": 0}
BASE = {"model": "shapesnet", "weights": "none", "layer": "conv3", "data": DATA, "recipe": {"samples": 5000}}


def key(**changes: object) -> str:
    return cache_key(**{**BASE, **changes})


def unwritable(tmp_path: Path) -> Path:
    """A directory that can never be created (its parent is a file), whoever runs the test."""
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "cache"


# --- identity ---------------------------------------------------------------------------------------------

def test_each_input_changes_the_key_and_loader_settings_do_not() -> None:
    base = key()
    assert len(base) == 64 and base == key()  # SHA-256, stable
    changed = [
        key(model="resnet20"), key(weights="other.pt"), key(weights="default"), key(layer="conv4"),
        key(data={**DATA, "seed": 1}), key(data={**DATA, "num_train": 100}), key(data={**DATA, "image_size": 32}),
        key(data=None), key(recipe={"samples": 8}), key(recipe={"samples": 5000, "tau": 1e-3}),
    ]
    assert len({base, *changed}) == len(changed) + 1
    for name, value in [("batch_size", 7), ("num_workers", 3), ("pin_memory", True), ("persistent_workers", True)]:
        assert name in LOADER_KEYS and key(data={**DATA, name: value}) == base
    assert key(data=dict(reversed(list(DATA.items())))) == base  # order does not matter
    assert key(data=OmegaConf.create(DATA)) == base  # a config is the same as its plain dict


def test_file_weights_are_identified_by_content_stamp(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"a": torch.zeros(1)}, path)
    before = weights_id(path, "shapesnet")
    assert before.startswith("w-") and key(weights=str(path)) == key(weights=str(path))
    torch.save({"a": torch.zeros(2)}, path)  # retrained at the same path: another identity
    assert weights_id(path, "shapesnet") != before


def compose_evaluate(tmp_path: Path, *overrides: str):
    return compose_config("evaluate", [f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'c'}",
                                       "weights=none", *overrides])


def test_the_estimator_sample_count_is_part_of_the_cache_file(tmp_path: Path) -> None:
    from infoflow.builders import cache_path

    default = compose_evaluate(tmp_path)
    few = compose_evaluate(tmp_path, "method.estimator_samples=8")
    assert few.method.estimator_cache != default.method.estimator_cache
    assert Path(default.method.estimator_cache).parent == tmp_path / "c" / "estimators"
    # the readout task names the same file for the same samples, so the two share estimates
    assert cache_path(default, "estimators", default.layer, samples=5000) == Path(default.method.estimator_cache)
    assert compose_evaluate(tmp_path, "data.batch_size=3").method.estimator_cache == default.method.estimator_cache
    assert compose_evaluate(tmp_path, "data.seed=3").method.estimator_cache != default.method.estimator_cache


# --- broken cache files ----------------------------------------------------------------------------------

def garbage(path: Path, valid: bytes | None = None) -> None:
    """Garbage bytes, or the first half of a valid file (a half-written zip), at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a torch file" if valid is None else valid[: len(valid) // 2])


def batches() -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    return [{"image": torch.randn(8, 3)} for _ in range(4)]


@pytest.fixture
def own_cache(tmp_path: Path):
    """`tmp_path` as infoflow's cache folder: broken files there are infoflow's own and may be rebuilt."""
    with using_cache_dir(tmp_path) as root:
        yield root


@pytest.mark.parametrize("kind", ["wrong-shape", "missing-keys", "nan"])
def test_a_broken_own_estimator_cache_is_rebuilt(own_cache: Path, kind: str) -> None:
    """A file infoflow wrote into its cache (header naming the file) that does not validate: deleted, rebuilt."""
    path = own_cache / "estimators" / "c.pt"
    reference = fit_estimator(lambda x: x * 2, batches(), max_samples=20)
    if kind == "wrong-shape":
        Estimator((5,)).save_cache(path)
    elif kind == "missing-keys":
        save_cached({"shape": torch.tensor([3])}, path)
    else:
        save_cached({**reference._state(), "s1": torch.full((3,), float("nan"))}, path)
    assert load_file(path, keep_header=True)[CACHE_HEADER] == {"format": 1, "file": "c.pt"}
    with pytest.warns(CorruptCacheWarning, match=rf"cache file {path} is corrupt.*deleting it and rebuilding"):
        rebuilt = fit_estimator(lambda x: x * 2, batches(), max_samples=20, cache=path)
    assert torch.equal(rebuilt.mean, reference.mean) and rebuilt.n == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file loads cleanly
        again = fit_estimator(lambda x: x * 0, batches(), max_samples=20, cache=path)
    assert torch.equal(again.mean, reference.mean)


def weights_copy(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ShapesNet(4).state_dict(), path)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "plain-estimator", "weights-copy", "renamed"])
def test_a_foreign_file_under_a_cache_name_is_an_error_and_kept(own_cache: Path, kind: str) -> None:
    """Inside the cache folder, a broken file without infoflow's header naming it (foreign, truncated,
    a plain `Estimator.save`, another cache file moved there) is a DataError; its bytes stay."""
    path = own_cache / "estimators" / "c.pt"
    path.parent.mkdir(parents=True)
    if kind == "garbage":
        garbage(path)
    elif kind == "truncated":
        Estimator((5,)).save_cache(path)
        garbage(path, path.read_bytes())
    elif kind == "plain-estimator":
        Estimator((5,)).save(path)
    elif kind == "weights-copy":
        weights_copy(path)
    else:  # an own cache file of another name (e.g. default weights), copied under the estimator's name
        save_cached(ShapesNet(4).state_dict(), own_cache / "shapesnet-c4.pt")
        (own_cache / "shapesnet-c4.pt").rename(path)
    before = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=rf"{path} does not hold a valid.*left untouched: remove it yourself"):
            fit_estimator(lambda x: x * 2, batches(), max_samples=20, cache=path)
    assert path.read_bytes() == before


def test_broken_default_weights_are_retrained(own_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    fresh = ShapesNet(4).state_dict()
    calls = []
    monkeypatch.setattr(default_weights, "train_shapesnet", lambda n: calls.append(n) or fresh)  # minutes otherwise
    path = pretrained.default_weights_path(4, own_cache)
    save_cached({"weight": torch.zeros(3)}, path)  # an own file with keys of another network
    with pytest.warns(CorruptCacheWarning, match="corrupt"):
        state = pretrained.default_state_dict("shapesnet", 4, root=own_cache)
    assert all(torch.equal(state[k], fresh[k]) for k in fresh) and CACHE_HEADER not in state
    assert load_file(path, keep_header=True)[CACHE_HEADER]["file"] == path.name  # written with the header
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the retrained file loads cleanly
        again = pretrained.default_state_dict("shapesnet", 4, root=own_cache)
    assert all(torch.equal(again[k], fresh[k]) for k in fresh)
    assert calls == [4]
    garbage(path)  # not recognisably infoflow's: kept, and an error
    with pytest.raises(DataError, match=str(path)):
        pretrained.default_state_dict("shapesnet", 4, root=own_cache)
    assert path.read_bytes() == b"not a torch file" and calls == [4]


def test_processes_that_need_the_default_weights_at_once_train_them_once(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh, calls = ShapesNet(4).state_dict(), []

    def slow(n: int) -> dict:  # long enough that the second caller arrives while the first trains
        calls.append(n)
        time.sleep(1.0)
        return fresh

    monkeypatch.setattr(default_weights, "train_shapesnet", slow)
    with ThreadPoolExecutor(2) as pool:
        states = list(pool.map(lambda _: pretrained.default_state_dict("shapesnet", 4, root=own_cache), range(2)))
    assert calls == [4]  # the second waited for the first one's file instead of training again
    assert all(torch.equal(s[k], fresh[k]) for s in states for k in fresh)


def test_a_legacy_cache_file_without_header_still_loads(own_cache: Path) -> None:
    reference = fit_estimator(lambda x: x * 2, batches(), max_samples=20)
    path = reference.save(own_cache / "c.pt")  # plain, as older versions wrote caches
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = fit_estimator(lambda x: x * 0, batches(), max_samples=20, cache=path)
    assert torch.equal(loaded.mean, reference.mean)


def test_broken_delta_f2_and_decoder_files(own_cache: Path) -> None:
    model = get_model("shapesnet", "none", 4, (3, 32, 32))
    features = LayerFeatures(model.module, {"conv1": model.layer_path("conv1")}, (0.5,) * 3, (0.25,) * 3)
    x = torch.rand(2, 3, 32, 32)
    first = delta_f2_for_model("shapesnet", "none", features, x, own_cache / "df2", samples=2)
    (path,) = (own_cache / "df2").glob("*.pt")
    assert CACHE_HEADER in load_file(path, keep_header=True)
    save_cached({"v_half": 1.0}, path)  # own, missing fields
    with pytest.warns(CorruptCacheWarning, match="corrupt"):
        again = delta_f2_for_model("shapesnet", "none", features, x, own_cache / "df2", samples=2)
    assert again == first and path.is_file()
    garbage(path)
    with pytest.raises(DataError, match=str(path)):
        delta_f2_for_model("shapesnet", "none", features, x, own_cache / "df2", samples=2)
    assert path.read_bytes() == b"not a torch file"

    decoder = LayerDecoder.for_layer(model, "conv2", (0.5,) * 3, (0.25,) * 3, width=8, num_blocks=1)
    path = decoder.save(decoder_path(own_cache / "dec", model.name, model.weights, "conv2", model.input_size))
    assert set(load_decoders(own_cache / "dec", model, ["conv2"])) == {"conv2"}
    record = load_file(path, keep_header=True)
    save_cached({k: v for k, v in record.items() if k not in ("hparams", CACHE_HEADER)}, path)
    with pytest.warns(CorruptCacheWarning, match="corrupt"), pytest.raises(MissingDecoderError, match="conv2"):
        load_decoders(own_cache / "dec", model, ["conv2"])
    assert not path.exists()
    decoder.save(path)
    garbage(path, path.read_bytes())  # truncated: no readable header, kept
    before = path.read_bytes()
    with pytest.raises(DataError, match=str(path)):
        load_decoders(own_cache / "dec", model, ["conv2"])
    assert path.read_bytes() == before


@pytest.mark.parametrize("named", ["weights", "text", "own-cache-file"])
def test_a_user_named_file_that_is_no_estimator_is_an_error_and_kept(tmp_path: Path, named: str) -> None:
    """``estimator_cache=<file>`` outside the cache folder: a DataError naming the file; its bytes stay, even
    when it carries infoflow's header (a cache file the user copied there)."""
    path = tmp_path / "mine" / "model.pt"
    path.parent.mkdir()
    if named == "weights":
        torch.save(ShapesNet(4).state_dict(), path)
    elif named == "text":
        path.write_text("my notes")
    else:
        save_cached(ShapesNet(4).state_dict(), path)
    before = path.read_bytes()
    with using_cache_dir(tmp_path / "cache"), pytest.raises(DataError, match=rf"{path} does not hold a valid"):
        fit_estimator(lambda x: x * 2, batches(), max_samples=20, cache=path)
    assert path.read_bytes() == before


def test_save_cached_header_is_invisible_to_loaders(tmp_path: Path) -> None:
    path = save_cached({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert set(load_file(path)) == {"a"}
    assert load_file(path, keep_header=True)[CACHE_HEADER] == {"format": 1, "file": "x.pt"}
    assert set(load_state_dict_file(path)) == {"a"}


def test_load_cached_leaves_good_and_missing_files_alone(tmp_path: Path) -> None:
    assert load_cached(tmp_path / "none.pt", torch.load) is None
    torch.save({"a": 1}, tmp_path / "ok.pt")
    assert load_cached(tmp_path / "ok.pt", lambda p: torch.load(p, weights_only=True)) == {"a": 1}


# --- unwritable cache directories -------------------------------------------------------------------------

def test_an_unwritable_cache_dir_fails_before_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = unwritable(tmp_path)
    with pytest.raises(DataError, match=rf"cache directory {bad} is not writable.*set paths.cache_dir"):
        ensure_writable(bad)
    seen = []

    def features(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return x

    with pytest.raises(DataError, match=str(bad)):
        fit_estimator(features, batches(), max_samples=20, cache=bad / "estimators" / "c.pt")
    assert seen == [8]  # one batch to learn the feature shape, no fitting

    def no_training(n: int) -> None:
        raise AssertionError("must not train into an unwritable cache")

    monkeypatch.setattr(default_weights, "train_shapesnet", no_training)
    with pytest.raises(DataError, match=str(bad)):
        pretrained.default_state_dict("shapesnet", 4, root=bad)
    model = get_model("shapesnet", "none", 4, (3, 32, 32))
    features_ = LayerFeatures(model.module, {"conv1": model.layer_path("conv1")}, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(DataError, match=str(bad)):
        delta_f2_for_model("shapesnet", "none", features_, torch.rand(1, 3, 32, 32), bad, samples=2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_cache_dir_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(DataError, match="not writable"):
            ensure_writable(tmp_path / "cache")
    finally:
        tmp_path.chmod(0o700)


# --- one setting: paths.cache_dir ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cache_seen_by_module_fixtures() -> Path:
    return cache_dir()


def test_module_fixtures_already_use_the_session_cache(cache_seen_by_module_fixtures: Path,
                                                       _isolated_cache: Path) -> None:
    assert cache_seen_by_module_fixtures == _isolated_cache == cache_dir()
    assert os.environ["INFOFLOW_CACHE"] == str(_isolated_cache)


def test_paths_cache_dir_moves_the_default_weights_and_every_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infoflow.analyses import run_analysis

    torch.manual_seed(2)
    mine = ShapesNet(4).state_dict()
    moved = tmp_path / "moved"
    moved.mkdir()
    torch.save(mine, pretrained.default_weights_path(4, moved))
    monkeypatch.setenv("INFOFLOW_CACHE", str(tmp_path / "empty"))  # the default would have no weights there

    def no_training(n: int) -> None:
        raise AssertionError("the default weights should come from paths.cache_dir")

    monkeypatch.setattr(default_weights, "train_shapesnet", no_training)
    with using_cache_dir(moved):  # Python use: the same setting without Hydra
        model = get_model("shapesnet", "default")
    assert all(torch.equal(model.module.state_dict()[k], v) for k, v in mine.items())
    assert cache_dir() == tmp_path / "empty"  # restored after the block

    cfg = compose_config("evaluate", [
        f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={moved}", "logger=csv", "method=iba",
        "method.estimator_samples=8", "method.steps=1", "method.copies=2", "num_images=2", "data.num_train=16",
        "data.num_val=8", "data.num_test=8", "data.batch_size=8"])
    run_analysis(cfg)
    assert [p.parent for p in moved.glob("estimators/*.pt")] == [moved / "estimators"]
    assert not (tmp_path / "empty").exists()
