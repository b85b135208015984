"""Layer-wise information discarding (Ma, Zhang et al.): SID/CID, RU, concentration and coherency.

Typical use (images in the [0, 1] pixel space, e.g. ``datamodule.denormalize(batch["image"])``)::

    model = get_model("vgg16", "DEFAULT")
    sid = layerwise_sid(model, images01, dm.mean, dm.std, cache_dir="cache/delta_f2")
    sid.maps, sid.per_pixel, sid.total, sid.ratio_fresh  # (N, L, H, W), (N, L), (N, L), (N, L)
    ru = layerwise_ru(model, images01, sid, dm.mean, dm.std, decoder_dir="decoders")
    concentration(sid.maps, object_mask(batch))          # (N, L)

See the module docstrings of `sid`, `delta_f`, `decoder` and `ru` for the documented decisions.
"""

from infoflow.discarding.coherency import (
    coherency_report,
    feature_gradient_map,
    max_logit_change,
    rescale_adjacent_layers,
)
from infoflow.discarding.concentration import concentration, object_mask
from infoflow.discarding.decoder import (
    DecoderNet,
    LayerDecoder,
    MissingDecoderError,
    decoder_path,
    load_decoder,
    load_decoders,
)
from infoflow.discarding.delta_f import DeltaF2, DeltaF2Cache, delta_f2_for_model, estimate_delta_f2
from infoflow.discarding.features import LayerFeatures, model_fingerprint, resolve_layers
from infoflow.discarding.ru import RUResult, compute_ru, layerwise_ru
from infoflow.discarding.sid import ALPHA, ENTROPY_CONST, SIDConfig, SIDResult, compute_sid, layerwise_sid

__all__ = [
    "ALPHA",
    "ENTROPY_CONST",
    "DecoderNet",
    "DeltaF2",
    "DeltaF2Cache",
    "LayerDecoder",
    "LayerFeatures",
    "MissingDecoderError",
    "RUResult",
    "SIDConfig",
    "SIDResult",
    "coherency_report",
    "compute_ru",
    "compute_sid",
    "concentration",
    "decoder_path",
    "delta_f2_for_model",
    "estimate_delta_f2",
    "feature_gradient_map",
    "layerwise_ru",
    "layerwise_sid",
    "load_decoder",
    "load_decoders",
    "max_logit_change",
    "model_fingerprint",
    "object_mask",
    "rescale_adjacent_layers",
    "resolve_layers",
]
