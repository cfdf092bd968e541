"""The errors robustgan raises for problems a user can fix.

Each carries one message that says what is wrong and what to do; the CLI prints it
without a traceback.
"""


class RobustGANError(Exception):
    """Base class: a problem with the user's inputs, data, checkpoints or run."""


class ConfigError(RobustGANError, ValueError):
    """A config key is unknown, or a value is out of range or inconsistent."""


class DataError(RobustGANError):
    """Data is missing, unreadable, or has the wrong labels, shapes or types."""


class CheckpointError(RobustGANError):
    """A checkpoint cannot be restored (corrupt, or from another model/config)."""


class DivergenceError(RobustGANError):
    """Training produced a non-finite loss."""
