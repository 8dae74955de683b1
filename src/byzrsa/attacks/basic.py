"""The RSA paper's attacks (Li et al., AAAI 2019, "Numerical tests"), the classic sanity attacks, label flipping.

Same-value, sign-flip and copy (a regular worker's message, fig. 10) are the
paper's, negated copy (minus a regular worker's message) its sign-flipped variant; Gaussian noise, non-finite messages and minus the sum (attack a2) are
the usual sanity attacks; :func:`flip_labels` is the data attack of the
bucketing paper's experiments (Karimireddy, He, Jaggi, ICLR 2022).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from byzrsa.attacks.base import AttackContext
from byzrsa.errors import ConfigError

__all__ = [
    "same_value",
    "sign_flip",
    "copy_worker",
    "negated_copy",
    "gaussian",
    "non_finite",
    "negative_sum",
    "honest",
    "flip_labels",
    "copy_check",
    "non_finite_check",
]


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


def negated_copy(regular: Tensor, own: Tensor, ctx: AttackContext, *, copy_from: int = 0) -> Tensor:
    r"""Every Byzantine worker sends minus regular worker ``copy_from``'s message, :math:`-x_{j}`.

    On RSA's l1 master (a coordinate-wise vote of signs of :math:`x_0 - x_i`)
    q copies of :math:`-x_j` all vote on the side opposite to a typical regular
    model in every coordinate, so the master is pulled towards zero and past it
    with the whole :math:`q \lambda` budget, where ``copy`` only re-weights
    worker j's data. Named by an outside audit of byzrsa's benchmark as damaging to l1 RSA on
    by-label data; no paper defines it. Same worker order rules as :func:`copy_worker`.
    """
    return (-regular[copy_from]).expand_as(own).clone()


def gaussian(
    regular: Tensor, own: Tensor, ctx: AttackContext, *, std: float = 200.0, around: str = "zero"
) -> Tensor:
    """Each Byzantine worker sends ``c + N(0, std^2)`` entries, the noise drawn from its own generator.

    ``around = "zero"``: ``c = 0``, pure noise (the sanity attack). ``around =
    "mean"``: ``c`` is the mean of the regular messages, the form of the
    variance-reduction and decentralized papers (Byrd-SAGA, Wu et al. TSP 2020:
    "mean of the regular messages plus variance 30"; IOS, Wu, Chen, Ling TSP
    2023: the receiver's honest neighbours' mean plus Gaussian noise).

    The draws come from the worker's CPU generator and are then moved to the
    run's device, so a CUDA run draws exactly what a CPU run draws.
    """
    rows = [torch.randn(own.shape[1], generator=g, dtype=own.dtype) for g in ctx.generators]
    noise = (torch.stack(rows) * std).to(own.device) if rows else torch.empty_like(own)
    return noise + regular.mean(dim=0) if around == "mean" else noise


def non_finite(regular: Tensor, own: Tensor, ctx: AttackContext, *, value: float = math.nan) -> Tensor:
    """Every Byzantine worker sends a vector of ``value`` (NaN, +inf or -inf)."""
    return torch.full_like(own, value)


def negative_sum(regular: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
    """Every Byzantine worker sends minus the sum of the regular messages (attack a2 of the paper)."""
    return (-regular.sum(dim=0)).expand_as(own).clone()


def honest(regular: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
    """The Byzantine workers send their true values (no attack; also what data attacks send)."""
    return own.clone()


def flip_labels(y: Tensor, num_classes: int) -> Tensor:
    r"""Label flipping: :math:`y \mapsto C - 1 - y` for C classes (labels 0..C-1).

    The data attack of the bucketing paper's experiments (Karimireddy, He and
    Jaggi, ICLR 2022; their code maps ``y -> 9 - y`` for ten classes). The Byzantine workers then
    compute honestly on the flipped minibatches (the entry's ``fn`` is
    :func:`honest`), so the attacker needs to know nothing of the round.
    """
    return (num_classes - 1) - y


def copy_check(regular: int, byzantine: int, options: dict[str, Any]) -> None:
    """``copy_from`` must name a regular worker."""
    if byzantine > 0 and not 0 <= options["copy_from"] < regular:
        raise ConfigError(f"copy attack: copy_from={options['copy_from']} is not a regular worker (0..{regular - 1})")


def non_finite_check(regular: int, byzantine: int, options: dict[str, Any]) -> None:
    """The value sent must be NaN or infinite (a finite one is the same-value attack)."""
    if math.isfinite(options["value"]):
        raise ConfigError("non-finite attack: value must be nan, inf or -inf")
