"""`MODELS`: the zoo's registry. Each model module registers a function that describes its models.

A registered function takes the registration's presets and returns a `ModelEntry`; stacked decorators give
one function several names (as for methods with presets):

    @MODELS.register("resnet20", depth=20)
    @MODELS.register("resnet32", depth=32)
    def cifar_resnet(depth: int) -> ModelEntry: ...

``MODELS.get("resnet20")()`` is then resnet20's entry (`infoflow.models.zoo.get_model` builds it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from infoflow.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    """How to build one zoo model.

    Attributes:
        build: ``build(num_classes)`` -> the network with random weights.
        layers: the papers' layer names -> module paths of a built network, in forward order.
        input_size: (C, H, W) of one input image.
        num_classes: the classes of the model's usual data (its pretrained weights).
        torchvision_name: the torchvision model name, for its weights enums (None: not a torchvision model).
        load: ``load(weights, num_classes, input_size)`` -> the network with `weights`, for models with their
            own weights loading (timm); None: `build` and the zoo's loading.
        mean, std: the input normalisation of the model's weights (None: unknown).
        default_weights: loads the trained weights that ``weights=default`` means (None: the model has none).
    """

    build: Callable[[int], nn.Module]
    layers: Callable[[nn.Module], dict[str, str]]
    input_size: tuple[int, int, int]
    num_classes: int
    torchvision_name: str | None = None
    load: Callable[[str, int, tuple[int, int, int]], nn.Module] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: ``default_weights(num_classes)`` -> the state dict of the model's trained default weights (``weights=default``;
    #: None: the model has none)
    default_weights: Callable[[int], dict] | None = None


MODELS: Registry[Callable[[], ModelEntry]] = Registry("model")
