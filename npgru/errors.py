"""The exceptions npgru raises on bad input. Each message is one line that says what to do.

Command-line programs catch :class:`NpgruError`, print its message and exit with status 2,
so a user never sees a traceback for a mistake they can fix.
"""


def one_line(obj: object) -> str:
    """``str(obj)`` with every run of whitespace (newlines included) folded to one space."""
    return " ".join(str(obj).split())


class NpgruError(Exception):
    """Base class: a problem with the user's input, files or environment, not a bug."""


class BackendError(NpgruError, RuntimeError):
    """The requested backend cannot be used here (unknown name, CuPy missing, no GPU)."""


class ShapeError(NpgruError, ValueError):
    """Arrays with the wrong shape, dtype or parameter names, or non-finite values, were passed
    in."""


class ConfigError(NpgruError, ValueError):
    """A hyperparameter is out of range (non-positive size, num_steps too large, ...)."""


class DataError(NpgruError, ValueError):
    """The training text is missing, unreadable, not UTF-8, or too short."""


class CheckpointError(NpgruError, ValueError):
    """A checkpoint is missing, damaged, or does not match the model being trained."""


class DivergenceError(NpgruError, FloatingPointError):
    """The loss or a gradient became NaN or infinite during training."""
