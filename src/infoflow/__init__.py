"""infoflow: measure, in bits, how information flows through neural networks."""

__version__ = "0.1.0"
