"""Pre-aggregators: a chain of maps ``(n, d) -> (n', d)`` applied to the messages before a rule.

Selection and transformation of messages, apart from averaging them (as Flower
separates them): bucketing, nearest-neighbour mixing, clipping. A chain such as
``--pre nnm --method trimmed-mean`` applies each pre-aggregator in order and
then the rule; the rule's validity condition applies to the rows it receives.

Every pre-aggregator is one :class:`PreAggregator` entry of ``PRE_AGGREGATORS``:
``fn(x, f, generator, **options) -> Tensor (n', d)``, where ``f`` is the declared
number of Byzantine rows and ``generator`` a CPU ``torch.Generator`` owned by the
run (one stream per pre-aggregator, for the random ones such as bucketing).
Each returns a new tensor in the input's dtype and on its device. The maps live
in :mod:`.mixing` (``bucketing``, ``nnm``) and :mod:`.clipping` (``clip``, ``arc``);
``docs/defences.md`` gives their equations.

Non-finite rows: ``bucketing`` spoils only the bucket holding such a row;
``nnm``, ``clip`` and ``arc`` pass such a row through unchanged (it has no
length or direction to work with) and never mix it into a finite row, so the
rule that follows sees it and treats it as that rule documents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from byzrsa.errors import ConfigError
from byzrsa.preaggregators.clipping import _check_arc, adaptive_robust_clipping, arc_count, norm_clipping
from byzrsa.preaggregators.mixing import _check_nnm, bucketing, nearest_neighbour_mixing
from byzrsa.registry import Entry, Option, Registry, at_least, positive

__all__ = [
    "PreAggregator",
    "PRE_AGGREGATORS",
    "apply_chain",
    "rows_after",
    "check_chain",
    "bucketing",
    "nearest_neighbour_mixing",
    "norm_clipping",
    "adaptive_robust_clipping",
    "arc_count",
]


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
        Claims the shared property tests (``tests/test_defences.py``) check on the
        output, for the same generator state: ``pre(x + t) = pre(x) + t``,
        ``pre(a x) = a pre(x)`` for ``a > 0``, and ``pre(x[p]) = pre(x)[p]`` (rows
        follow their inputs, so the output is the same multiset).
    """

    rows: Callable[[int, dict[str, Any]], int] = lambda n, options: n
    check: Callable[[int, int, dict[str, Any]], None] | None = None
    translation_equivariant: bool = True
    scale_equivariant: bool = True
    permutation_invariant: bool = True


PRE_AGGREGATORS: Registry[PreAggregator] = Registry("pre-aggregator")
PRE_AGGREGATORS.register(PreAggregator(
    "bucketing", bucketing, "Bucketing", "means of random buckets of s rows (ceil(n / s) rows out)",
    options=(Option("s", int, 2, "bucket size", at_least(1)),),
    rows=lambda n, options: -(-n // options["s"]),
    # The value depends on the drawn permutation, so only its distribution is permutation-invariant.
    permutation_invariant=False,
))
PRE_AGGREGATORS.register(PreAggregator(
    "nnm", nearest_neighbour_mixing, "NNM", "each row replaced by the mean of its n - f nearest rows",
    check=lambda n, f, options: _check_nnm(n, f),
))
PRE_AGGREGATORS.register(PreAggregator(
    "clip", norm_clipping, "Clip", "rows longer than tau scaled to length tau",
    options=(Option("tau", float, 2.0, "clipping threshold (absolute)", positive),),
    translation_equivariant=False, scale_equivariant=False,
))
PRE_AGGREGATORS.register(PreAggregator(
    "arc", adaptive_robust_clipping, "ARC",
    "the floor(2 f (n - f) / n) longest rows clipped to the next one's length",
    check=lambda n, f, options: _check_arc(n, f),
    translation_equivariant=False,
))


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
