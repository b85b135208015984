"""The papers' layer names (VGG `conv4_1`, ResNet `conv3_4`, ...) mapped to module paths."""

from __future__ import annotations

from torch import nn


def vgg_layers(model: nn.Module) -> dict[str, str]:
    """VGG/AlexNet: `convS_I` is the I-th conv of stage S (stages end at max-pools); `fc6..fc8`.

    AlexNet has one conv per stage in its first two stages, so its convs are named `conv1..conv5`.
    """
    names: dict[str, str] = {}
    stage, index, flat = 1, 0, []
    for idx, m in enumerate(model.features):
        if isinstance(m, nn.Conv2d):
            index += 1
            flat.append(f"features.{idx}")
            names[f"conv{stage}_{index}"] = f"features.{idx}"
        elif isinstance(m, nn.MaxPool2d):
            stage, index = stage + 1, 0
    if len(flat) == 5:  # AlexNet
        names = {f"conv{i + 1}": p for i, p in enumerate(flat)}
    linears = [f"classifier.{i}" for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    names.update({f"fc{6 + i}": p for i, p in enumerate(linears)})
    return names


def resnet_layers(model: nn.Module) -> dict[str, str]:
    """ResNet (torchvision or CIFAR): `conv1` is the stem (after its ReLU), `convS_B` the B-th block of
    stage S (torchvision `layer{S-1}.{B-1}`), `fc` the classifier."""
    names = {"conv1": "relu"}
    for s in range(1, 5):
        stage = getattr(model, f"layer{s}", None)
        if stage is None:
            break
        for b in range(len(stage)):
            names[f"conv{s + 1}_{b + 1}"] = f"layer{s}.{b}"
    names["fc"] = "fc"
    return names


def shapesnet_layers(model: nn.Module) -> dict[str, str]:
    """ShapesNet: blocks `conv1..conv4` and `fc` are named as their modules."""
    return {name: name for name, _ in model.named_children() if name.startswith(("conv", "fc"))}


def vit_layers(model: nn.Module) -> dict[str, str]:
    """ViT (`TokenViT`): `embed` and `block1..blockN`, each a patch map (N, C, h, w); `fc` the logits."""
    return {"embed": "embed", **{name: name for name in model.block_names}, "fc": "heads.head"}


def swin_layers(model: nn.Module) -> dict[str, str]:
    """Swin (`TokenSwin`): `embed`, `stageS_B` (block B of stage S, a patch map (N, C, h, w)), `stageS` (the
    last block of stage S), `fc` the logits."""
    names = {"embed": "embed"}
    for s, blocks in enumerate(model.stage_names):
        names.update({name: name for name in blocks})
        names[f"stage{s + 1}"] = blocks[-1]
    return {**names, "fc": "head"}


def convnext_layers(model: nn.Module) -> dict[str, str]:
    """ConvNeXt: `stem`, `stageS_B` (block B of stage S), `stageS` (the last block of stage S), `fc`."""
    names = {"stem": "features.0"}
    for s, idx in enumerate(range(1, len(model.features), 2)):
        blocks = [f"features.{idx}.{b}" for b in range(len(model.features[idx]))]
        names.update({f"stage{s + 1}_{b + 1}": p for b, p in enumerate(blocks)})
        names[f"stage{s + 1}"] = blocks[-1]
    return {**names, "fc": "classifier.2"}
