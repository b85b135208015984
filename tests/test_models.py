"""Model zoo: layer names, head/tail splitting, weights loading and the errors for bad input."""

from __future__ import annotations

import pytest
import torch

from infoflow.models import SplitModel, get_model, list_models
from infoflow.registry import UnknownNameError

SMALL = {"alexnet": (3, 64, 64), "vgg16": (3, 32, 32), "vgg19": (3, 32, 32), "resnet18": (3, 32, 32),
         "resnet34": (3, 32, 32), "resnet50": (3, 32, 32)}


@pytest.mark.parametrize("name", list_models())
def test_every_layer_name_resolves_in_forward_order(name: str) -> None:
    model = get_model(name)
    modules = dict(model.module.named_modules())
    assert model.layers, name
    for layer in model.layers:
        assert model.layer_path(layer) in modules
    order = list(modules)
    positions = [order.index(p) for p in model.layers.values() if p != "relu"]
    assert positions == sorted(positions)


def test_paper_layer_names() -> None:
    vgg = get_model("vgg16")
    assert [vgg.layers[f"conv{s}_{i}"] for s, i in [(1, 1), (3, 1), (4, 1), (5, 3)]] == [
        "features.0", "features.10", "features.17", "features.28"]
    assert vgg.layers["fc6"] == "classifier.0" and vgg.layers["fc8"] == "classifier.6"
    r50 = get_model("resnet50")
    assert r50.layers["conv3_4"] == "layer2.3" and r50.layers["conv5_3"] == "layer4.2"
    assert len(r50.conv_layers()) == 1 + 3 + 4 + 6 + 3
    assert len(get_model("resnet44").conv_layers()) == 1 + 3 * 7
    assert get_model("alexnet").layers["conv5"] == "features.10"
    assert r50.layer_path("layer2.3.conv1") == "layer2.3.conv1"  # module paths work too


def test_unknown_model_and_layer_list_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="vgg16.*|.*resnet50"):
        get_model("vgg17")
    with pytest.raises(ValueError, match="conv4_1"):
        get_model("vgg16").layer_path("conv9_9")


@pytest.mark.parametrize(("name", "layer"), [("vgg16", "conv4_1"), ("resnet50", "conv3_4"), ("alexnet", "fc7"),
                                             ("resnet20", "conv3_2"), ("shapesnet", "conv3"), ("resnet18", "conv1")])
def test_head_plus_tail_equals_full_model(name: str, layer: str) -> None:
    model = get_model(name, input_size=SMALL.get(name))
    x = torch.randn(2, *model.input_size)
    split = SplitModel(model.module, model.layer_path(layer))
    assert not split.needs_input  # a clean fx cut
    with torch.no_grad():
        assert torch.equal(split.tail(split.head(x)), model.module(x))


def test_hook_fallback_for_a_cut_crossed_by_a_skip_connection() -> None:
    model = get_model("resnet20")
    x = torch.randn(2, *model.input_size)
    path = "layer2.1.conv1"  # inside a residual block: the skip connection crosses the cut
    with pytest.warns(UserWarning, match="forward hooks"):
        split = SplitModel(model.module, path)
    assert split.needs_input
    with torch.no_grad():
        feature = split.head(x)
        assert feature.shape == (2, 32, 16, 16)
        assert torch.equal(split.tail(feature, x), model.module(x))
        # the tail really continues from the given feature
        assert not torch.allclose(split.tail(torch.zeros_like(feature), x), model.module(x))
    with pytest.raises(ValueError, match="needs the input"):
        split.tail(feature)


def test_local_checkpoint_roundtrip_and_lightning_prefix(tmp_path) -> None:
    a = get_model("resnet20")
    torch.save(a.module.state_dict(), tmp_path / "plain.pth")
    torch.save({"state_dict": {f"model.{k}": v for k, v in a.module.state_dict().items()}}, tmp_path / "pl.ckpt")
    x = torch.randn(2, 3, 32, 32)
    for file in ("plain.pth", "pl.ckpt"):
        b = get_model("resnet20", weights=str(tmp_path / file))
        with torch.no_grad():
            assert torch.equal(a.module(x), b.module(x))


def test_bad_checkpoints_get_clear_errors(tmp_path) -> None:
    torch.save(get_model("resnet20").module.state_dict(), tmp_path / "r20.pth")
    with pytest.raises(ValueError, match="does not fit"):
        get_model("resnet32", weights=str(tmp_path / "r20.pth"))
    with pytest.raises(ValueError, match="shape mismatches"):
        get_model("resnet20", weights=str(tmp_path / "r20.pth"), num_classes=7)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        get_model("resnet20", weights=str(tmp_path / "bad.pth"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        get_model("resnet20", weights=str(tmp_path / "missing.pth"))


def test_offline_pretrained_download_says_how_to_pass_a_file() -> None:
    # The tests run without network: the real torchvision download fails, and the error explains the fix.
    with pytest.raises(RuntimeError, match=r"weights=/path/to/resnet18-.*\.pth"):
        get_model("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        get_model("resnet18", weights="IMAGENET9K")
    with pytest.raises(ValueError, match="1000 classes"):
        get_model("resnet18", weights="DEFAULT", num_classes=10)


def test_input_and_target_checks() -> None:
    model = get_model("resnet20")
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        model.check_inputs(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        model.check_inputs(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="10 classes"):
        model.check_target(torch.tensor([3, 10]))
