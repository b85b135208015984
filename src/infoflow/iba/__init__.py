"""The Information Bottleneck for Attribution: the bottleneck, feature statistics, the Per-Sample and the
Readout Bottleneck (registered as the methods ``iba`` and ``readout``), and a reference loop."""

from infoflow.iba import bottleneck, estimator, per_sample, readout, reference  # noqa: F401
