"""Errors a user can cause. Each message says what was found, what was expected, and the fix."""


class PatchForcingError(Exception):
    """Base class: the CLI prints these as one line instead of a stack trace."""


class CheckpointError(PatchForcingError, ValueError):
    """A missing, corrupt or foreign checkpoint, or weights that do not fit the config."""


class ConfigError(PatchForcingError, ValueError):
    """An unknown preset, sampler or distribution name, or an invalid option value."""


class ShapeError(PatchForcingError, ValueError):
    """Inputs whose shapes do not fit the network or each other."""


class DataError(PatchForcingError, ValueError):
    """A data set that is missing, empty or unreadable."""


class TrainingError(PatchForcingError, RuntimeError):
    """Training cannot go on (for example a NaN loss)."""
