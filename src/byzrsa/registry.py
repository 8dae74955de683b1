"""Registries: one entry per component, carrying everything the rest of byzrsa needs to know about it.

Every aggregation rule, pre-aggregator, attack, model and training method is an
:class:`Entry` in the :class:`Registry` of its kind (``RULES`` in
:mod:`byzrsa.aggregators`, ``PRE_AGGREGATORS`` in :mod:`byzrsa.preaggregators`,
``ATTACKS`` in :mod:`byzrsa.attacks`, ``MODELS`` in :mod:`byzrsa.models`,
``METHODS`` in :mod:`byzrsa.methods`). An entry holds the function, its options
(:class:`Option`: type, default, one-line help, validation), its facts (in the
subclass of its kind) and its display label. The command line, config
validation, plots, reports and engines read the entries; no other file lists
component names, so adding a component is one function and one entry.

This module depends on nothing of byzrsa but :mod:`byzrsa.errors`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from byzrsa.errors import ConfigError, did_you_mean

__all__ = ["Option", "Entry", "Registry", "positive", "non_negative", "at_least", "finite", "one_of", "in_range"]

Check = Callable[[Any], "str | None"]  # returns what is wrong with a value, or None


def positive(value: Any) -> str | None:
    return None if value > 0 and math.isfinite(value) else "must be a finite number > 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 and math.isfinite(value) else "must be a finite number >= 0"


def finite(value: Any) -> str | None:
    return None if math.isfinite(value) else "must be finite"


def at_least(minimum: int) -> Check:
    def check(value: Any) -> str | None:
        return None if value >= minimum else f"must be >= {minimum}"

    return check


def in_range(low: float, high: float, *, open_low: bool = False, open_high: bool = False) -> Check:
    def check(value: Any) -> str | None:
        ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
        return None if ok else f"must be in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"

    return check


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


@dataclass(frozen=True)
class Option:
    """One option of a component: ``name`` (a keyword of its function), type, default, help, check.

    ``default=None`` with ``optional=True`` means "decided at run time" (for
    example Krum's ``k`` defaults to ``m - f``). ``check`` returns what is wrong
    with a value (``"must be > 0"``) or None. ``aliases`` are extra command-line
    flags kept for compatibility (``--sigma`` for the sign-flip attack's option).
    """

    name: str
    type: type
    default: Any
    help: str
    check: Check | None = None
    optional: bool = False
    aliases: tuple[str, ...] = ()

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` (from TOML, JSON or a command-line string) as this option's type, checked."""
        if value is None or (self.optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            if self.optional:
                return None
            raise ConfigError(f"{where} cannot be empty")
        try:
            if self.type is bool:
                if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                    value = value.strip().lower() in ("true", "1", "yes")
                elif not isinstance(value, bool):
                    raise ValueError
            elif isinstance(value, bool):
                raise ValueError
            elif self.type is float:
                value = float(value)
            elif self.type is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                if isinstance(value, str) and not value.strip().lstrip("+-").isdigit():
                    raise ValueError
                value = int(value)
            else:
                value = str(value)
        except (TypeError, ValueError, OverflowError):
            what = {float: "a number", int: "an integer", bool: "true or false"}.get(self.type, "a string")
            raise ConfigError(f"{where} must be {what}, got {value!r}") from None
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise ConfigError(f"{where} {problem}, got {value!r}")
        return value


@dataclass(frozen=True)
class Entry:
    """A component: its registry ``name``, the function, its ``label`` for plots, ``help`` and ``options``.

    Subclasses add the facts of their kind (a rule's claims, an attack's needs).
    """

    name: str
    fn: Callable[..., Any]
    label: str
    help: str
    options: tuple[Option, ...] = ()

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        return {opt.name: opt.default for opt in self.options}

    def resolve(self, given: Mapping[str, Any] | None, kind: str) -> dict[str, Any]:
        """Every option of this entry: the ``given`` values (coerced and checked) over the defaults.

        An option this entry does not have is a :class:`ConfigError` that lists the ones it has.
        """
        given = dict(given or {})
        names = [opt.name for opt in self.options]
        unknown = sorted(set(given) - set(names))
        if unknown:
            valid = ", ".join(names) if names else "none"
            hint = did_you_mean(unknown[0], names) if len(unknown) == 1 else ""
            raise ConfigError(
                f"{kind} {self.name!r} has no option {', '.join(map(repr, unknown))}{hint}; its options are: {valid}"
            )
        return {
            opt.name: opt.coerce(given[opt.name], f"{kind} {self.name!r} option {opt.name!r}") if opt.name in given
            else opt.default
            for opt in self.options
        }


E = TypeVar("E", bound=Entry)


@dataclass
class Registry(Generic[E]):
    """The entries of one kind of component (``kind`` is "rule", "attack", ...), in registration order."""

    kind: str
    entries: dict[str, E] = field(default_factory=dict)

    def register(self, entry: E) -> E:
        """Add ``entry``; a second entry under the same name is a programming error (ValueError)."""
        if entry.name in self.entries:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self.entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests that register toy components)."""
        self.entries.pop(name, None)

    def __getitem__(self, name: str) -> E:
        try:
            return self.entries[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.entries)}: choose one of {', '.join(self.entries)}"
            ) from None

    def get(self, name: str, default: Any = None) -> E | Any:
        return self.entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def items(self) -> Iterator[tuple[str, E]]:
        return iter(self.entries.items())

    def values(self) -> Iterator[E]:
        return iter(self.entries.values())

    def keys(self) -> Iterator[str]:
        return iter(self.entries)
