"""Model zoo: `get_model(name, weights)`, layer names, and head/tail splitting."""

from infoflow.models.split import SplitModel
from infoflow.models.zoo import MODELS, ZooModel, get_model, list_models

from infoflow.models import revised  # noqa: E402,F401,I001  (registers the <model>_revised entries)

__all__ = ["MODELS", "SplitModel", "ZooModel", "get_model", "list_models"]
