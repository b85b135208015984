"""Chunk sizes chosen by measurement: the fastest candidate is chosen and cached; results are unchanged."""

from __future__ import annotations

import json
import time

import pytest
import torch

from infoflow.iba.per_sample import PerSampleIBA
from infoflow.models import get_model
from infoflow.utils.autotune import choose_chunk, timed
from infoflow.utils.cache import using_cache_dir


def test_the_fastest_per_item_candidate_is_chosen_and_cached(tmp_path) -> None:
    calls: list[int] = []

    def run(c: int) -> None:  # fixed cost per call, so per item the largest chunk wins ... except 8, made slow
        calls.append(c)
        time.sleep(0.002 + (0.05 if c == 8 else 0.0))

    path = tmp_path / "autotune.json"
    messages: list[str] = []
    assert choose_chunk({"kind": "t"}, timed(run), candidates=(1, 4, 8), path=path, report=messages.append) == 4
    assert sorted(set(calls)) == [1, 4, 8] and "chunk size 4" in messages[0]
    entry = next(iter(json.loads(path.read_text()).values()))
    assert entry["chunk"] == 4 and entry["key"]["threads"] == str(torch.get_num_threads())
    calls.clear()
    assert choose_chunk({"kind": "t"}, timed(run), candidates=(1, 4, 8), path=path) == 4 and calls == []  # cached
    # another key (or thread count) is measured again
    assert choose_chunk({"kind": "u"}, timed(run), candidates=(1, 2), path=path, report=messages.append) == 2
    assert len(json.loads(path.read_text())) == 2


def test_larger_candidates_are_not_measured_once_one_is_much_slower(tmp_path) -> None:
    measured: list[int] = []

    def cost(c: int) -> float:  # seconds per call: per item 1.0, 0.5, then 4.0 at c=4; 8 and 16 never measured
        measured.append(c)
        return {1: 1.0, 2: 1.0, 4: 16.0}.get(c, 0.0)

    chunk = choose_chunk({"kind": "g"}, cost, candidates=(16, 1, 8, 2, 4), path=tmp_path / "a.json", report=lambda m: None)
    assert chunk == 2 and measured == [1, 2, 4]


def test_the_timer_takes_the_best_call_after_a_warm_up() -> None:
    durations = iter([0.2, 0.03, 0.01, 0.02])  # the warm-up (0.2) is not counted; the best timed call is

    def run(c: int) -> None:
        time.sleep(next(durations))

    assert 0.01 <= timed(run, repeats=3)(1) < 0.02


def test_a_corrupt_cache_file_is_measured_again(tmp_path) -> None:
    path = tmp_path / "autotune.json"
    path.write_text("{not json")
    assert choose_chunk({"kind": "t"}, lambda c: 1.0, candidates=(3,), path=path, report=lambda m: None) == 3
    assert next(iter(json.loads(path.read_text()).values()))["chunk"] == 3


def test_auto_batch_size_leaves_the_maps_unchanged(_isolated_cache) -> None:
    torch.manual_seed(0)
    model = get_model("shapesnet")
    images = torch.randn(24, *model.input_size)
    iba = PerSampleIBA(model, "conv3", seed=5, steps=3, copies=2, batch_size=1)
    iba.fit([{"image": images[i : i + 12]} for i in range(0, 24, 12)])
    x, target = images[:5], torch.tensor([0, 1, 2, 3, 0])
    fixed = iba.explain(x, target).heatmap
    iba.batch_size = "auto"
    chunk = iba.chunk_size(x, target)
    assert chunk in (1, 2, 4, 8, 16) and (_isolated_cache / "autotune.json").exists()
    auto = iba.explain(x, target).heatmap
    assert torch.allclose(auto, fixed, atol=1e-4 * float(fixed.max()))
    grid = iba.explain_grid(x, target, [10.0]).heatmap[:, 0]
    assert torch.allclose(grid, fixed, atol=1e-4 * float(fixed.max()))


def test_auto_perturbation_batches_give_the_same_values(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("INFOFLOW_CACHE", str(tmp_path))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)).eval()
    images = torch.randn(3, 3, 8, 8)
    net(images)

    def build(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return images[i] * (1 + j.float())[:, None, None, None]

    def forward(batch: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return net(batch)

    from infoflow.metrics.perturb import run_perturbations
    with using_cache_dir(tmp_path):
        fixed = run_perturbations(forward, build, 3, 20, 7, torch.device("cpu"))
        auto = run_perturbations(forward, build, 3, 20, "auto", torch.device("cpu"), tune_key={"net": "t"})
    assert auto.shape == (3, 20, 2) and torch.allclose(auto, fixed, atol=1e-6)
    assert (tmp_path / "autotune.json").exists()


def test_sid_auto_rows_are_measured_once_and_leave_the_result_unchanged(tmp_path) -> None:
    from infoflow.discarding import LayerFeatures, SIDConfig, compute_sid, estimate_delta_f2
    from infoflow.discarding.sid import ROW_CANDIDATES, resolve_max_rows
    from infoflow.errors import ConfigError
    from tests.test_discarding import LAYERS, MEAN, STD, small_cnn, smooth_images

    net, x = small_cnn(), smooth_images(6)
    features = LayerFeatures(net, LAYERS, MEAN, STD)
    df2 = {k: v.value for k, v in estimate_delta_f2(features, x, samples=4).items()}
    with using_cache_dir(tmp_path):
        auto = SIDConfig(steps=6, eval_samples=8, max_rows="auto")
        chosen = resolve_max_rows(features, x, list(LAYERS), auto).max_rows
        assert chosen in ROW_CANDIDATES[:2]  # capped at the 6 x 3 x 4 = 72 rows one step needs
        entry = next(iter(json.loads((tmp_path / "autotune.json").read_text()).values()))
        assert entry["chunk"] == chosen and entry["key"]["kind"] == "sid_rows"
        fixed = compute_sid(features, x, df2, SIDConfig(steps=6, eval_samples=8, max_rows=chosen))
        tuned = compute_sid(features, x, df2, auto)  # the cached choice
        small = compute_sid(features, x, df2, SIDConfig(steps=6, eval_samples=8, max_rows=8))
    assert torch.equal(tuned.log_sigma, fixed.log_sigma)
    assert torch.allclose(small.log_sigma, fixed.log_sigma, atol=1e-4)
    with pytest.raises(ConfigError, match="sid.max_rows"):
        SIDConfig(max_rows="fast")


@pytest.mark.parametrize("metric", ["degradation", "sensitivity", "insertion_deletion"])
def test_auto_metric_batches_give_the_same_scores_and_are_keyed_by_the_network(tmp_path, metric) -> None:
    from infoflow.metrics import Degradation, InsertionDeletion, SensitivityN

    torch.manual_seed(0)
    make = {"degradation": lambda net, bs: Degradation(net, (16, 16), tile_size=4, num_points=9, batch_size=bs),
            "sensitivity": lambda net, bs: SensitivityN(net, (16, 16), tile_size=4, num_n=4, num_subsets=5,
                                                        batch_size=bs),
            "insertion_deletion": lambda net, bs: InsertionDeletion(net, (16, 16), tile_size=4, num_points=9,
                                                                    batch_size=bs)}[metric]
    nets = [torch.nn.Sequential(torch.nn.Conv2d(3, w, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3)).eval()
            for w in (2, 5)]
    images, maps, target = torch.randn(3, 3, 16, 16), torch.rand(3, 16, 16), torch.tensor([0, 1, 2])
    for net in nets:
        net(images)
    with using_cache_dir(tmp_path):
        for net in nets:
            scores = []
            for bs in (7, "auto"):
                m = make(net, bs)
                m.update(images, target, maps)
                scores.append(m.compute())
            for fixed, auto in zip(scores[0], scores[1], strict=True):
                assert torch.allclose(torch.as_tensor(fixed), torch.as_tensor(auto), atol=1e-6)  # fp32 rounding
    keys = [e["key"] for e in json.loads((tmp_path / "autotune.json").read_text()).values()]
    assert {k["parameters"] for k in keys} == {str(sum(p.numel() for p in n.parameters())) for n in nets}
    assert all(k["metric"] == metric for k in keys)
