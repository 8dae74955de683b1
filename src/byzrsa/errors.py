"""Typed errors a user can cause. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

import difflib
import operator
from collections.abc import Iterable
from typing import Any

__all__ = ["ByzrsaError", "ConfigError", "DataError", "WriteError", "config_int", "did_you_mean"]


class ByzrsaError(Exception):
    """Base class of every error caused by the user's input (config, data, flags)."""


class ConfigError(ByzrsaError, ValueError):
    """An impossible or misspelled configuration (e.g. q >= m, unknown method)."""


class DataError(ByzrsaError):
    """A dataset that is missing, corrupt, or cannot be downloaded."""


class WriteError(ByzrsaError, OSError):
    """Results that cannot be written: a full disk, a file-size or quota limit, a read-only or forbidden folder.

    :meth:`from_os` makes the one line from the ``OSError``: the path and the system's words for the error.
    """

    @classmethod
    def from_os(cls, exc: OSError, path: Any = None) -> WriteError:
        if isinstance(exc, WriteError):
            return exc
        where = exc.filename if exc.filename is not None else path
        why = exc.strerror or str(exc) or type(exc).__name__
        return cls(exc.errno, f"cannot write {where}: {why}" if where is not None else f"cannot write results: {why}")

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


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


def did_you_mean(name: Any, choices: Iterable[Any]) -> str:
    """`` (did you mean 'x'?)`` for the valid choice closest to a misspelled ``name``, or ``""`` when none is close.

    Closeness is :func:`difflib.get_close_matches` (ratio >= 0.6) on the names
    with case and ``_``/``-`` folded, so ``sign_flip`` finds ``sign-flip`` and
    ``lamda`` finds ``lam``. Every "unknown ..." error of byzrsa ends its name
    with this, so a typo is answered with the fix.
    """
    if not isinstance(name, str) or not name:
        return ""

    def fold(text: str) -> str:
        return text.strip().lower().replace("_", "-")

    folded: dict[str, str] = {}
    for choice in choices:
        folded.setdefault(fold(str(choice)), str(choice))
    match = difflib.get_close_matches(fold(name), list(folded), n=1, cutoff=0.6)
    return f" (did you mean {folded[match[0]]!r}?)" if match and folded[match[0]] != name else ""
