"""Typed errors. Every error this library raises on bad input derives from :class:`HippError`."""

from __future__ import annotations


class HippError(Exception):
    """Base class of every error raised by hipp-torchprune on bad input or bad state."""


class PlanError(HippError, ValueError):
    """A pruning plan is malformed: wrong length, NaN, or ratios outside ``[0, r_max]``."""


class RoundingError(HippError, ValueError):
    """``round_to`` cannot be applied to the model's MLP widths."""


class UnknownPluginError(HippError, KeyError):
    """A strategy, scorer, adapter or task name is not registered.

    The message lists the valid names.
    """

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(HippError, TypeError):
    """No registered model adapter handles this model class."""


class CalibrationError(HippError, ValueError):
    """The calibration set is empty or unusable."""


class CheckpointError(HippError, OSError):
    """A checkpoint directory is missing, incomplete, or its weights do not match its widths."""


class DataError(HippError, ValueError):
    """A dataset is missing a file or column, has unreadable images, or names an unknown task."""


class DtypeError(HippError, ValueError):
    """A dtype name is not one of the accepted ones (the message lists them)."""


class DeviceError(HippError, ValueError):
    """A device was asked for that this machine does not have (``--device cuda`` without a GPU)."""
