"""The library's errors that users act on: each message names the key, file or value to fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


def bad_value(key: str, value: object, expected: str) -> ConfigError:
    """The one wording of a rejected value, so that every check reads the same."""
    return ConfigError(f"bad value for configuration key '{key}': {value!r} (expected {expected})")


def require(ok: bool, key: str, value: object, expected: str) -> None:
    """Raise ``bad_value`` unless ``ok``."""
    if not ok:
        raise bad_value(key, value, expected)


def one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    require(value in choices, key, value, "one of " + ", ".join(choices))
