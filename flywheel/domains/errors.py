"""Errors of the domain plugins. Messages name the plugin and what is wrong with it."""

from flywheel.errors import FlywheelError


class DomainError(FlywheelError):
    """A domain plugin cannot be loaded or is malformed (which plugin, what is wrong)."""
