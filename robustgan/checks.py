"""Checks of config values that stop with a ConfigError naming the key."""

from __future__ import annotations

from robustgan.errors import ConfigError


def check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"config.{key}={value!r} is not valid; choose one of {choices}")


def check_range(key: str, value, low, high) -> None:
    if not low <= value <= high:
        raise ConfigError(f"config.{key}={value!r} is out of range: must be in [{low}, {high}]")


def check_at_least(key: str, value, minimum, what: str = "") -> None:
    """value >= minimum; `what` names the requirement in the message."""
    if value < minimum:
        raise ConfigError(f"config.{key}={value!r} must be {what or f'>= {minimum}'}")
