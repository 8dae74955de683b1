"""Typed errors a user can cause. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

import operator
from typing import Any

__all__ = ["ByzrsaError", "ConfigError", "DataError", "config_int"]


class ByzrsaError(Exception):
    """Base class of every error caused by the user's input (config, data, flags)."""


class ConfigError(ByzrsaError, ValueError):
    """An impossible or misspelled configuration (e.g. q >= m, unknown method)."""


class DataError(ByzrsaError):
    """A dataset that is missing, corrupt, or cannot be downloaded."""


def config_int(value: Any, what: str, minimum: int | None = None) -> int:
    """``value`` as an int (bools and floats refused), at least ``minimum``; else a ConfigError naming ``what``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {number}")
    return number
