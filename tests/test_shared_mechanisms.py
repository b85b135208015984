"""The small shared mechanisms: layer capture with early stop, frozen(), hidden modules, the box
rasteriser and merging metric states."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from infoflow.data.boxes import box_masks, boxes_to_mask
from infoflow.errors import ConfigError
from infoflow.metrics import SanitySSIM
from infoflow.utils.hooks import capture_outputs, keep_copy
from infoflow.utils.modules import MovesHidden, frozen, hide_module


class _Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 2)
        self.calls: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append("a")
        x = self.a(x)
        self.calls.append("b")
        x = self.b(x)
        self.calls.append("c")
        return self.c(x)


def test_capture_records_in_order_and_stops_early() -> None:
    net, x = _Counting(), torch.randn(4, 3)
    with capture_outputs(net, {"first": "a", "second": "b"}) as out:
        logits = net(x)
    assert out.order == ["first", "second"] and logits.shape == (4, 2)
    net.calls.clear()
    with capture_outputs(net, ["a"], until=True) as out:
        net(x)
        pytest.fail("the pass should have stopped after the captured layer")
    assert net.calls == ["a"] and torch.equal(out["a"], net.a(x))  # b and c never ran
    # the in-place ReLU overwrites a kept output unless it is copied
    with torch.no_grad():
        with capture_outputs(net, ["a"]) as out:
            net(x)
        assert torch.equal(out["a"], net.a(x).relu()) and not torch.equal(out["a"], net.a(x))
        with capture_outputs(net, ["a"], take=keep_copy) as out:
            net(x)
        assert torch.equal(out["a"], net.a(x))
    identity = nn.Sequential(nn.Identity())
    with pytest.raises(ConfigError, match="not a tensor"), capture_outputs(identity, ["0"]):
        identity((1, 2))
    assert not net.a._forward_hooks and not net.b._forward_hooks  # hooks removed


def test_capture_replaces_outputs_and_rejects_a_layer_run_twice() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    x = torch.randn(5, 3)
    with torch.no_grad(), capture_outputs(net, ["0"], take=lambda n, o: (o, o[:2])) as out:
        assert net(x).shape == (2, 1)  # the network continues with the replacement
    assert out["0"].shape == (5, 3)
    shared = nn.Linear(3, 3)
    twice = nn.Sequential(shared, shared)
    with pytest.raises(ValueError, match="more than once"), capture_outputs(twice, ["0"]):
        twice(x)


def test_frozen_restores_each_flag() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[1].bias.requires_grad_(False)
    with frozen(net):
        assert not any(p.requires_grad for p in net.parameters())
        net(torch.randn(1, 2)).sum()
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, False]


def test_hidden_module_is_outside_the_tree_but_moves_along() -> None:
    class Owner(MovesHidden, nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.own = nn.Linear(2, 2)
            hide_module(self, "guest", nn.Linear(2, 2))

    owner = Owner()
    assert set(owner.state_dict()) == {"own.weight", "own.bias"}
    assert len(list(owner.parameters())) == 2
    owner.double()
    assert owner.guest.weight.dtype == torch.float64 and owner.own.weight.dtype == torch.float64
    owner.train()
    owner.guest.eval()
    owner.train()
    assert not owner.guest.training  # train()/eval() do not reach it


def test_one_box_rasteriser_for_single_and_many_boxes() -> None:
    boxes = torch.tensor([[1.0, 0.0, 3.0, 2.0], [2.5, 1.5, 4.0, 4.0]])
    masks = box_masks(boxes, (4, 5))
    assert masks.shape == (2, 4, 5)
    assert masks[0].nonzero().tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]
    # pixel centres j + 0.5 in [2.5, 4) -> columns 2, 3; in [1.5, 4) -> rows 1, 2, 3
    assert masks[1].nonzero().tolist() == [[1, 2], [1, 3], [2, 2], [2, 3], [3, 2], [3, 3]]
    assert torch.equal(boxes_to_mask(boxes, (4, 5)), masks.any(0))


def test_sanity_states_merge_like_one_metric() -> None:
    torch.manual_seed(0)
    a, b = torch.rand(6, 16, 16), torch.rand(6, 16, 16)
    whole, first, second = SanitySSIM(["x", "y"]), SanitySSIM(["x", "y"]), SanitySSIM(["x", "y"])
    for step in (0, 1):
        whole.update(a, b.roll(step, 0), step)
        first.update(a[:3], b.roll(step, 0)[:3], step)
        second.update(a[3:], b.roll(step, 0)[3:], step)
    first.merge_state(second)
    assert torch.allclose(first.compute(), whole.compute(), atol=1e-12)


def test_metrics_that_run_the_network_keep_it_out_of_their_state() -> None:
    from infoflow.metrics.suite import MethodMetrics, MetricSettings

    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 16 * 16, 3)).eval()
    suite = MethodMetrics(net, (16, 16), MetricSettings(), boxes=True, masks=True, num_classes=3)
    runs_net = [name for name, m in suite.metrics.items() if getattr(m, "model", None) is net]
    assert {"degradation_8", "sensitivity_8", "insertion_deletion", "road", "infidelity"} <= set(runs_net)
    assert suite.net is net
    for owner in [suite, *suite.metrics.values()]:
        assert not any(p is q for p in owner.parameters() for q in net.parameters())
        assert not any(key.endswith(("weight", "bias")) for key in owner.state_dict())
    # every one is attached the same way, with `hide_module`
    assert all("model" in suite.metrics[name].__dict__.get("_hidden_modules", []) for name in runs_net)


@pytest.mark.parametrize(("affine", "bias"), [(True, False), (True, True), (False, True)])
def test_batch_norm_folding_equals_the_closed_form_and_the_network(affine: bool, bias: bool) -> None:
    from infoflow.utils.fold import fold_batchnorm

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=bias), nn.BatchNorm2d(4, affine=affine), nn.ReLU()).double()
    bn = net[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    if affine:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-1, 1)
    net.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    folded = fold_batchnorm(net, x)
    assert isinstance(folded[1], nn.Identity) and net[1] is bn  # a copy; the original keeps its batch norm
    scale = (bn.weight if affine else 1) / (bn.running_var + bn.eps).sqrt()
    conv = net[0]
    torch.testing.assert_close(folded[0].weight, conv.weight * scale.view(-1, 1, 1, 1))
    expected_bias = ((conv.bias if bias else 0) - bn.running_mean) * scale + (bn.bias if affine else 0)
    torch.testing.assert_close(folded[0].bias, expected_bias)
    torch.testing.assert_close(folded(x), net(x))
