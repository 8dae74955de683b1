"""Typed errors a user can cause. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

__all__ = ["ByzrsaError", "ConfigError", "DataError"]


class ByzrsaError(Exception):
    """Base class of every error caused by the user's input (config, data, flags)."""


class ConfigError(ByzrsaError, ValueError):
    """An impossible or misspelled configuration (e.g. q >= m, unknown method)."""


class DataError(ByzrsaError):
    """A dataset that is missing, corrupt, or cannot be downloaded."""
