"""The project's one error type for bad input: the ``seqcomm`` command (``seqcomm.cli``) prints
a ``ConfigError`` as one line on stderr and exits with status 2.
"""


class ConfigError(Exception):
    """Bad input: printed as one line, exit status 2."""


class NonFiniteError(RuntimeError):
    """A loss or gradient norm became NaN or infinite: the run stops (one line, exit 1)."""
