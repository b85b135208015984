"""Model zoo: `get_model(name, weights)`, layer names, and head/tail splitting.

In-place modules are switched off in every network the zoo builds and every network a `SplitModel` is made
of, so no part of a network can overwrite a tensor that infoflow keeps (see `infoflow.models.inplace`).
"""

from infoflow.models import cifar_resnet, revised, shapesnet, timm_models  # noqa: F401  (register their models; zoo registers torchvision's)
from infoflow.models.inplace import disable_inplace
from infoflow.models.split import SplitModel
from infoflow.models.wrap import wrap
from infoflow.models.zoo import MODELS, ZooModel, get_model, list_models

__all__ = ["MODELS", "SplitModel", "ZooModel", "disable_inplace", "get_model", "list_models", "wrap"]
