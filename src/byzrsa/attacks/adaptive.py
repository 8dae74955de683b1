r"""Defence-aware ALIE and IPM: the factor chosen each round by a line search against the real defence.

The attacker knows the defence ``D = ctx.defence``, the server's map from the
``(m, d)`` messages of a round (regular rows first, then the q Byzantine rows)
to what it will use: the aggregate (pre-aggregators and rule) for the
baselines, the next master model for RSA. For a family of lies ``m(s)``
(:math:`\mu - s\sigma`, ALIE; :math:`-s\mu`, IPM) it sends :math:`m(s^*)` with

.. math::
    s^* = \arg\max_{s \in [s_{lo}, s_{hi}]}
          \big\| D([X_R;\, m(s) \mathbf 1_q]) - D([X_R;\, \mu \mathbf 1_q]) \big\|_2 ,

the distance between what the server does under the attack and what it would do
had the Byzantine workers sent the regular mean (the honest average; for a mean
aggregate this is exactly the distance from the regular workers' mean). One
objective serves both: for a rule it is the aggregate's error, for RSA how far the
attack moves the next ``x0``. Optimised ALIE and IPM of this kind (a factor
searched each round to maximise the aggregate's distance from the honest
average) appear in later benchmarks, e.g. Allouah et al., AISTATS 2023.

The search: the objective is neither smooth nor unimodal in general (Krum switches
rows), so a geometric grid of ``grid`` factors over ``[low, high]`` is evaluated
first, then ``refine`` golden-section steps (in log s) maximise within the grid
cell on either side of the best grid point; the best factor evaluated wins
(ties: the smaller). That is ``grid + refine + 2`` calls of the defence a round
(one for the baseline).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from byzrsa.attacks.base import AttackContext, byzantine_rows, require, same_row
from byzrsa.attacks.statistical import alie_message, ipm_message
from byzrsa.errors import ConfigError

__all__ = ["line_search", "defence_gap", "alie_opt", "ipm_opt", "search_check"]

_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0  # 1 / golden ratio


def line_search(objective: Callable[[float], float], low: float, high: float, grid: int, refine: int) -> float:
    """The ``s`` in ``[low, high]`` (``0 < low < high``) with the largest ``objective(s)`` found.

    A geometric grid of ``grid`` points, then ``refine`` golden-section steps in
    ``log s`` between the grid neighbours of the best point. NaN counts as the
    worst value. Deterministic; the smaller factor wins a tie.
    """
    def value(s: float) -> float:
        v = objective(s)
        return -math.inf if math.isnan(v) else v

    points = [low * (high / low) ** (k / (grid - 1)) for k in range(grid - 1)] + [high]  # both ends exact
    values = [value(s) for s in points]
    best = max(range(grid), key=lambda k: (values[k], -k))
    best_s, best_v = points[best], values[best]
    a, b = math.log(points[max(best - 1, 0)]), math.log(points[min(best + 1, grid - 1)])
    if refine == 0 or a == b:
        return best_s
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    vc, vd = value(math.exp(c)), value(math.exp(d))
    for step in range(refine):
        for u, v in ((c, vc), (d, vd)):
            s = math.exp(u)
            if v > best_v or (v == best_v and s < best_s):
                best_s, best_v = s, v
        if step == refine - 1:
            break
        if vc >= vd:  # the maximum is in [a, d]
            b, d, vd = d, c, vc
            c = b - _INV_PHI * (b - a)
            vc = value(math.exp(c))
        else:
            a, c, vc = c, d, vd
            d = a + _INV_PHI * (b - a)
            vd = value(math.exp(d))
    return best_s


def defence_gap(regular: Tensor, lie: Tensor, q: int, defence: Callable[[Tensor], Tensor], baseline: Tensor) -> float:
    r""":math:`\|D([X_R; \mathrm{lie}\,\mathbf 1_q]) - \mathrm{baseline}\|_2`, a float (inf if the defence says inf)."""
    messages = torch.cat([regular, lie.expand(q, -1)])
    return float(torch.linalg.vector_norm((defence(messages) - baseline).double()))


def _optimised(
    regular: Tensor, own: Tensor, ctx: AttackContext, lie: Callable[[float], Tensor], name: str,
    low: float, high: float, grid: int, refine: int,
) -> Tensor:
    if own.shape[0] == 0:
        return own.clone()
    defence = require(ctx.defence, "the defence (ctx.defence)", name)
    q = byzantine_rows(ctx, own)
    honest = regular.mean(dim=0)
    baseline = defence(torch.cat([regular, honest.expand(q, -1)]))
    s = line_search(lambda s: defence_gap(regular, lie(s), q, defence, baseline), low, high, grid, refine)
    return same_row(lie(s), own)


def alie_opt(
    regular: Tensor, own: Tensor, ctx: AttackContext, *, low: float = 0.01, high: float = 100.0, grid: int = 17,
    refine: int = 10,
) -> Tensor:
    r"""ALIE with its factor searched against the defence: :math:`\mu - z^*\sigma`, :math:`z^*` by :func:`line_search`.

    Baruch et al. (NeurIPS 2019) for the lie :math:`\mu - z\sigma`
    (:func:`byzrsa.attacks.statistical.alie`); the module docstring gives the
    objective and the search. Needs ``ctx.defence``.

    Parameters
    ----------
    low, high : float
        The factor range searched, ``0 < low < high`` (default 0.01..100).
    grid : int
        Grid points, geometric over the range (>= 2; default 17, four a decade).
    refine : int
        Golden-section steps after the grid (>= 0).
    """
    return _optimised(regular, own, ctx, lambda z: alie_message(regular, z), "alie-opt", low, high, grid, refine)


def ipm_opt(
    regular: Tensor, own: Tensor, ctx: AttackContext, *, low: float = 0.01, high: float = 100.0, grid: int = 17,
    refine: int = 10,
) -> Tensor:
    r"""IPM with its factor searched against the defence: :math:`-\epsilon^*\mu`, :math:`\epsilon^*` by ``line_search``.

    Xie, Koyejo and Gupta (UAI 2019) for the lie :math:`-\epsilon\mu`
    (:func:`byzrsa.attacks.statistical.ipm`); options as :func:`alie_opt`.
    """
    return _optimised(regular, own, ctx, lambda eps: ipm_message(regular, eps), "ipm-opt", low, high, grid, refine)


def search_check(name: str, regular: int, byzantine: int, options: dict[str, Any]) -> None:
    """The factor range must be a proper interval (each bound is checked positive by its option).

    Bind ``name`` (``functools.partial``) to get an entry's ``check``.
    """
    if not options["low"] < options["high"]:
        raise ConfigError(f"{name} attack: low ({options['low']:g}) must be < high ({options['high']:g})")
