"""What every attack shares: the :class:`AttackContext`, the :class:`Attack` entry and a few helpers.

The modules of this package import from here only (never from the package's
``__init__``, which imports them to build the registry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from byzrsa.errors import ConfigError
from byzrsa.registry import Entry

__all__ = ["AttackContext", "Attack", "regular_moments", "same_row", "byzantine_rows", "require"]


@dataclass
class AttackContext:
    """What the attacker knows in a round besides the messages (docs/protocol.md: omniscient unless a data attack).

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
        messages of a round (regular rows first, then the q Byzantine rows) to
        what it will use: the pre-aggregators and rule for the baselines, RSA's
        master step (the next ``x0``) for RSA. What optimised attacks search over.
    x0 : Tensor or None
        For entries with ``needs_master``: RSA's master model ``x0^k`` (or the
        baselines' shared model).
    lam, p : float
        RSA's penalty weight and norm exponent (``p = inf`` for l-inf).
    state : dict
        Kept across rounds for the run (stateful attacks such as mimic). Each
        call of a stateful attack is one round: call it once per round.
    receiver, regular_weights, byzantine_weight :
        On a graph (``--topology``), for entries with ``needs_graph``: the
        receiving node's own model ``x_i`` (d,), its mixing weights ``W_ij`` of
        the regular neighbours whose messages are ``regular`` (same order), and
        the sum of its weights ``W_ib`` of the Byzantine neighbours sending.
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
    receiver: Tensor | None = None
    regular_weights: Tensor | None = None
    byzantine_weight: float = 0.0


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
        ``ctx.defence`` / ``ctx.x0`` (with ``ctx.lam`` and ``ctx.p``) must be filled in.
    label_map : callable or None
        A data attack: ``label_map(y, num_classes)`` poisons the Byzantine
        workers' labels, they compute honestly on the result (``needs_own``)
        and ``fn`` is usually :func:`byzrsa.attacks.basic.honest`.
    check : callable or None
        ``check(regular, byzantine, options)`` raises :class:`ConfigError` for
        settings the attack cannot run with.
    needs_graph : bool
        Only meaningful on a graph (it reads ``ctx.receiver`` and the mixing
        weights): refused without ``--topology``.
    """

    reads_regular: bool = True
    needs_own: bool = False
    needs_defence: bool = False
    needs_master: bool = False
    label_map: Callable[[Tensor, int], Tensor] | None = None
    check: Callable[[int, int, dict[str, Any]], None] | None = None
    needs_graph: bool = False

    def __call__(self, regular: Tensor, own: Tensor, ctx: AttackContext, **options: Any) -> Tensor:
        return self.fn(regular, own, ctx, **options)


def regular_moments(regular: Tensor) -> tuple[Tensor, Tensor]:
    r"""mu and sigma: the coordinate-wise mean and *population* standard deviation of the regular messages.

    .. math:: \mu = \frac1r \sum_i x_i ,\qquad \sigma = \sqrt{\tfrac1r \sum_i (x_i - \mu)^2}

    docs/protocol.md fixes the population form for every attack; papers whose code
    uses the sample form (``torch.std``, divisor r - 1) say so in their docstring.
    """
    if regular.shape[0] == 0:
        raise ConfigError("this attack reads the regular workers' messages, but there are none")
    return regular.mean(dim=0), regular.std(dim=0, correction=0)


def same_row(row: Tensor, own: Tensor) -> Tensor:
    """``row`` (d,) sent by every Byzantine row of ``own``, in ``own``'s dtype and device."""
    return row.to(dtype=own.dtype, device=own.device).expand_as(own).clone()


def byzantine_rows(ctx: AttackContext, own: Tensor) -> int:
    """q, the number of Byzantine rows the server receives (``ctx.byzantine``; ``len(own)`` if unset).

    Attacks that simulate the server's view stack q copies of their message,
    never ``len(own)``: a dist-engine process holding one row must see what the
    simulator sees.
    """
    return max(ctx.byzantine, own.shape[0])


def require(value: Any, what: str, attack: str) -> Any:
    """``value``, or a :class:`ConfigError` saying the engine did not give ``attack`` what it needs."""
    if value is None:
        raise ConfigError(f"{attack} attack needs {what} in its AttackContext (see its entry's needs_* facts)")
    return value
