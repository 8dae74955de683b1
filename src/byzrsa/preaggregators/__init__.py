"""Pre-aggregators: a chain of maps ``(n, d) -> (n', d)`` applied to the messages before a rule.

Selection and transformation of messages, apart from averaging them (as Flower
separates them): bucketing, nearest-neighbour mixing, clipping. A chain such as
``--pre nnm --method trimmed-mean`` applies each pre-aggregator in order and
then the rule; the rule's validity condition applies to the rows it receives.

Every pre-aggregator is one :class:`PreAggregator` entry of ``PRE_AGGREGATORS``:
``fn(x, f, generator, **options) -> Tensor (n', d)``, where ``f`` is the declared
number of Byzantine rows and ``generator`` a CPU ``torch.Generator`` owned by the
run (one stream per pre-aggregator, for the random ones such as bucketing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from byzrsa.errors import ConfigError
from byzrsa.registry import Entry, Registry

__all__ = ["PreAggregator", "PRE_AGGREGATORS", "apply_chain", "rows_after", "check_chain"]


@dataclass(frozen=True)
class PreAggregator(Entry):
    """One pre-aggregator: ``fn(x, f, generator, **options) -> (n', d)``.

    Attributes (beyond :class:`byzrsa.registry.Entry`)
    ----------
    rows : callable
        ``rows(n, options)``: how many rows come out of ``n`` rows (bucketing:
        ``ceil(n / s)``); the rule's validity check runs on that number.
    check : callable or None
        ``check(n, f, options)`` raises :class:`ConfigError` when it cannot run.
    translation_equivariant, scale_equivariant, permutation_invariant : bool
        Claims the shared property tests check on the chain ``pre -> mean``.
    """

    rows: Callable[[int, dict[str, Any]], int] = lambda n, options: n
    check: Callable[[int, int, dict[str, Any]], None] | None = None
    translation_equivariant: bool = True
    scale_equivariant: bool = True
    permutation_invariant: bool = True


PRE_AGGREGATORS: Registry[PreAggregator] = Registry("pre-aggregator")


def apply_chain(
    chain: Sequence[tuple[PreAggregator, dict[str, Any]]], x: Tensor, f: int, generators: Sequence[torch.Generator]
) -> Tensor:
    """Apply each ``(entry, options)`` of ``chain`` in order, the i-th with ``generators[i]``."""
    for (entry, options), generator in zip(chain, generators):
        x = entry.fn(x, f, generator, **options)
    return x


def rows_after(chain: Sequence[tuple[PreAggregator, dict[str, Any]]], n: int) -> int:
    """The number of rows the rule receives when ``n`` messages enter ``chain``."""
    for entry, options in chain:
        n = entry.rows(n, options)
    return n


def check_chain(chain: Sequence[tuple[PreAggregator, dict[str, Any]]], n: int, f: int) -> int:
    """Run each entry's check on the rows it receives; return the rows that reach the rule."""
    for entry, options in chain:
        if entry.check is not None:
            entry.check(n, f, options)
        n = entry.rows(n, options)
        if n < 1:
            raise ConfigError(f"pre-aggregator {entry.name!r} leaves no rows")
    return n
