"""Model zoo: `get_model(name, weights)`, layer names, and head/tail splitting."""

from infoflow.models import revised  # noqa: F401  (registers the <model>_revised entries of the zoo)
from infoflow.models.split import SplitModel
from infoflow.models.zoo import MODELS, ZooModel, get_model, list_models

__all__ = ["MODELS", "SplitModel", "ZooModel", "get_model", "list_models"]
