"""The Readout Bottleneck (Schulz et al. 2020, section 3.3): a network that predicts the mask from readouts.

A first pass without noise collects *readouts*, the feature maps of several layers and the logits. Each is
standardised with its estimated per-element mean and std, resized bilinearly to the bottleneck's spatial
size (2-D outputs such as logits are broadcast over space) and concatenated. Three 1x1 convolutions with
ReLU between them predict alpha (clamped to [-max_alpha, max_alpha]); the smoothing, noise and capacity are
those of the Per-Sample Bottleneck (`Bottleneck`). A second pass runs only the part of the network after
the bottleneck, on the noisy features. The readout sees no target: its heatmap is class-agnostic.

The analysed classifier is frozen (no gradients, always in eval mode) and deliberately not a registered
submodule: `train()` cannot switch its batch norms to training mode, optimisers and DDP never see its
weights, and checkpoints hold only the readout (plus metadata naming the model, weights, layers and data
it was trained for; `check_meta` rejects a checkpoint made for something else).

Modules: `network` (the readout network and its two passes), `statistics` (estimating the readouts'
statistics, under DDP too), `meta` (what a checkpoint is valid for, and reading one), `attribution`
(heatmaps from a trained readout, registered as method ``readout``).
"""

from infoflow.iba.readout.attribution import ReadoutIBA
from infoflow.iba.readout.meta import (
    META_KEY,
    STATE_PREFIX,
    check_meta,
    data_signature,
    load_readout,
    setup_meta,
    weights_fingerprint,
)
from infoflow.iba.readout.network import ReadoutBottleneck, ReadoutOutput
from infoflow.iba.readout.statistics import fit_statistics

__all__ = [
    "META_KEY",
    "STATE_PREFIX",
    "ReadoutBottleneck",
    "ReadoutIBA",
    "ReadoutOutput",
    "check_meta",
    "data_signature",
    "fit_statistics",
    "load_readout",
    "setup_meta",
    "weights_fingerprint",
]
