"""Errors of the flywheel core. Messages say what was wrong and how to fix it."""


class FlywheelError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(FlywheelError):
    """Settings could not be loaded or are invalid."""


class BrokerError(FlywheelError):
    """The Kafka broker could not be started or reached."""
