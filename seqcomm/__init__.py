"""seqcomm: learned sequential communication for cooperative MARL (see docs/method.md)."""

__version__ = "0.1.0"
