"""Byzantine attacks: what the q Byzantine workers send instead of the truth.

An attack is a pure function of what an omniscient attacker may see:

* ``regular``: the messages of the regular workers this iteration, ``(r, d)``;
* ``own``: the Byzantine workers' own true values, ``(q, d)`` (the model a
  Byzantine worker would have sent had it been honest, or its true gradient);
* ``ctx``: an :class:`AttackContext`: one ``torch.Generator`` per Byzantine row
  of ``own`` (for random attacks), the numbers of workers, the defence's
  declared f, and, for attacks whose entry asks for them, the defence itself
  and the master's state (RSA),

and returns the ``(q, d)`` messages actually sent (one per row of ``own``). The same attacks apply to
models (RSA, where messages are local iterates) and to gradients (the
gradient-aggregation baselines). One generator per Byzantine worker means a
Byzantine *process* of the distributed engine, holding only its own generator,
draws exactly what the simulator draws for its row.


Every attack is one :class:`Attack` entry of ``ATTACKS``: the function, its
options, and the facts the engines act on (does it read the regular messages,
does it need the Byzantine workers' true values, the defence, the master's
model, or does it poison the labels instead of forging messages).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from byzrsa.errors import ConfigError
from byzrsa.registry import Entry, Option, Registry, non_negative

__all__ = [
    "Attack",
    "AttackContext",
    "ATTACKS",
    "get_attack",
    "check_attack",
    "same_value",
    "sign_flip",
    "copy_worker",
    "gaussian",
    "non_finite",
    "negative_sum",
]


@dataclass
class AttackContext:
    """What the attacker knows in a round besides the messages (PROTOCOL.md: omniscient unless a data attack).

    Attributes
    ----------
    generators : sequence of torch.Generator
        One CPU generator per row of ``own``, in the same order (the Byzantine
        worker's own stream; see :func:`byzrsa.engines.common.derive_generator`).
    workers : int
        n, the number of workers, regular and Byzantine.
    byzantine : int
        q, the true number of Byzantine workers (``own`` may hold fewer rows:
        one Byzantine process of the dist engine computes only its own).
    f : int
        The number of outliers the defence is told (``agg_f``, default q).
    defence : callable or None
        For entries with ``needs_defence``: the server's map from the ``(m, d)``
        messages of a round to its next model (the pre-aggregators and rule
        with the step, or RSA's master step), what optimised attacks search over.
    x0 : Tensor or None
        For entries with ``needs_master``: RSA's master model ``x0^k`` (or the
        baselines' shared model).
    lam, p : float
        RSA's penalty weight and norm exponent (``p = inf`` for l-inf).
    state : dict
        Kept across rounds for the run (stateful attacks such as mimic).
    """

    generators: Sequence[torch.Generator] = ()
    workers: int = 0
    byzantine: int = 0
    f: int = 0
    defence: Callable[[Tensor], Tensor] | None = None
    x0: Tensor | None = None
    lam: float = 0.0
    p: float = 1.0
    state: dict[str, Any] = field(default_factory=dict)


def same_value(regular: Tensor, own: Tensor, ctx: AttackContext, *, c: float = 100.0) -> Tensor:
    """Every Byzantine worker sends ``c * 1`` (the paper's same-value attack)."""
    return torch.full_like(own, c)


def sign_flip(regular: Tensor, own: Tensor, ctx: AttackContext, *, sigma: float = -4.0) -> Tensor:
    """Each Byzantine worker sends ``sigma`` times its own true value (sigma < 0 flips it)."""
    return own * sigma


def copy_worker(regular: Tensor, own: Tensor, ctx: AttackContext, *, copy_from: int = 0) -> Tensor:
    """Every Byzantine worker sends regular worker ``copy_from``'s message (0 = first regular worker).

    On a heterogeneous split this makes that worker's data count q + 1 times and
    hides what the Byzantine workers' own data would have contributed. The
    engines pass ``regular`` with one row per regular worker, in worker order;
    the dist engine puts the messages that arrived at their workers' rows, so a
    dead worker never shifts which worker is copied (a dead ``copy_from`` sends
    its last arrived message, see :mod:`byzrsa.engines.dist`).
    """
    return regular[copy_from].expand_as(own).clone()


def gaussian(regular: Tensor, own: Tensor, ctx: AttackContext, *, std: float = 200.0) -> Tensor:
    """Each Byzantine worker sends i.i.d. ``N(0, std^2)`` entries, drawn from its own generator.

    The draws come from the worker's CPU generator and are then moved to the
    run's device, so a CUDA run draws exactly what a CPU run draws.
    """
    rows = [torch.randn(own.shape[1], generator=g, dtype=own.dtype) for g in ctx.generators]
    return (torch.stack(rows) * std).to(own.device) if rows else torch.empty_like(own)


def non_finite(regular: Tensor, own: Tensor, ctx: AttackContext, *, value: float = math.nan) -> Tensor:
    """Every Byzantine worker sends a vector of ``value`` (NaN, +inf or -inf)."""
    return torch.full_like(own, value)


def negative_sum(regular: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
    """Every Byzantine worker sends minus the sum of the regular messages (attack a2 of the paper)."""
    return (-regular.sum(dim=0)).expand_as(own).clone()


def honest(regular: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
    """The Byzantine workers send their true values (no attack; also what data attacks send)."""
    return own.clone()


@dataclass(frozen=True)
class Attack(Entry):
    """An attack: ``fn(regular, own, ctx, **options) -> (len(own), d)`` and what the engines must give it.

    Attributes (beyond :class:`byzrsa.registry.Entry`)
    ----------
    reads_regular : bool
        The attack reads the regular workers' messages of the round (omniscient);
        the dist engine forwards them to the Byzantine processes.
    needs_own : bool
        The Byzantine workers' true values must be computed (a gradient or a
        local step per Byzantine worker).
    needs_defence, needs_master : bool
        ``ctx.defence`` / ``ctx.x0`` must be filled in.
    label_map : callable or None
        A data attack: ``label_map(y, num_classes)`` poisons the Byzantine
        workers' labels, they compute honestly on the result (``needs_own``)
        and ``fn`` is usually :func:`honest`.
    check : callable or None
        ``check(regular, byzantine, options)`` raises :class:`ConfigError` for
        settings the attack cannot run with.
    """

    reads_regular: bool = True
    needs_own: bool = False
    needs_defence: bool = False
    needs_master: bool = False
    label_map: Callable[[Tensor, int], Tensor] | None = None
    check: Callable[[int, int, dict[str, Any]], None] | None = None

    def __call__(self, regular: Tensor, own: Tensor, ctx: AttackContext, **options: Any) -> Tensor:
        return self.fn(regular, own, ctx, **options)


def _copy_check(regular: int, byzantine: int, options: dict[str, Any]) -> None:
    if byzantine > 0 and not 0 <= options["copy_from"] < regular:
        raise ConfigError(f"copy attack: copy_from={options['copy_from']} is not a regular worker (0..{regular - 1})")


def _non_finite_check(regular: int, byzantine: int, options: dict[str, Any]) -> None:
    if math.isfinite(options["value"]):
        raise ConfigError("non-finite attack: value must be nan, inf or -inf")


ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register(Attack("none", honest, "no attack", "the Byzantine workers behave", reads_regular=False, needs_own=True))
ATTACKS.register(Attack(
    "same-value", same_value, "same-value", "send c * 1",
    options=(Option("c", float, 100.0, "the value sent in every entry", aliases=("--c",)),), reads_regular=False,
))
ATTACKS.register(Attack(
    "sign-flip", sign_flip, "sign-flip", "send sigma times the true value",
    options=(Option("sigma", float, -4.0, "multiplier of the true value", aliases=("--sigma",)),),
    reads_regular=False, needs_own=True,
))
ATTACKS.register(Attack(
    "copy", copy_worker, "copy", "send regular worker r's message",
    options=(Option("copy_from", int, 0, "index of the regular worker copied (0 = first)", aliases=("--copy-from",)),),
    check=_copy_check,
))
ATTACKS.register(Attack(
    "gaussian", gaussian, "gaussian", "send N(0, std^2) noise",
    options=(Option("std", float, 200.0, "standard deviation", non_negative),), reads_regular=False,
))
ATTACKS.register(Attack(
    "non-finite", non_finite, "non-finite", "send NaN or inf",
    options=(Option("value", float, math.nan, "nan, inf or -inf"),), reads_regular=False, check=_non_finite_check,
))
ATTACKS.register(Attack("negative-sum", negative_sum, "negative-sum", "send minus the sum of the regular messages"))


def get_attack(name: str) -> Attack:
    """The attack called ``name``; :class:`ConfigError` listing the valid names otherwise."""
    return ATTACKS[name]


def check_attack(name: str, regular: int, byzantine: int, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate an attack's settings before training; return its resolved options."""
    attack = get_attack(name)
    resolved = attack.resolve(options, "attack")
    if attack.check is not None:
        attack.check(regular, byzantine, resolved)
    return resolved
