"""Errors of the training package. Messages say what was wrong and how to fix it."""

from flywheel.errors import FlywheelError


class TrainingError(FlywheelError):
    """Base of the errors raised by training/."""


class SnapshotError(TrainingError):
    """A dataset snapshot folder is missing, incomplete or holds an invalid record."""


class TrainingConfigError(TrainingError):
    """A training config (YAML or override) names an unknown key or holds a bad value."""


class JobError(TrainingError):
    """A training job failed or could not be started."""


class DatasetError(TrainingError):
    """A dataset cannot be built, found or exported."""


class TeacherError(TrainingError):
    """The teacher (or the judge) could not answer: endpoint unreachable or failing, bad settings."""
