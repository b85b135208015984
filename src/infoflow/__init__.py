"""infoflow: measure, in bits, how information flows through neural networks."""

import logging
import warnings

__version__ = "0.1.0"


class _DropMessages(logging.Filter):
    """Drops log records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Third-party noise on every run that the user can do nothing about, silenced precisely (one message each):
# Lightning's advertisement for its cloud logger, printed whenever a Trainer is built without it
for _name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropMessages("💡 Tip: For seamless cloud logging"))


def _filter_warnings() -> None:
    """Lightning's own use of torch's deprecated `LeafSpec` (a FutureWarning from torch >= 2.10 on every fit)."""
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )


_filter_warnings()
