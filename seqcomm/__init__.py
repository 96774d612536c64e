"""seqcomm: learned sequential communication for cooperative MARL (see DESIGN.md)."""

__version__ = "0.1.0"
