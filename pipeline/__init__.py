"""compress: train, distill, quantize and benchmark small image classifiers."""

__version__ = "0.1.0"
