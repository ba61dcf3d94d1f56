"""cmgm-bench: benchmark and profile implementations of PGNet's Cross-Model Grafting Module."""

__version__ = "0.1.0"
