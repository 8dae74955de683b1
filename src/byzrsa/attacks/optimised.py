r"""Min-max and min-sum: the aggregation-agnostic optimised attacks of Shejwalkar and Houmansadr.

"Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses for
Federated Learning", NDSS 2021 (their AGR-agnostic attacks). Every Byzantine worker sends

.. math:: m = \mu + \gamma\,p ,

p a fixed perturbation direction and :math:`\gamma` the largest factor that keeps
m as close to the regular messages :math:`x_1, \dots, x_r` as they are to each other:

.. math::
    \text{min-max:}\quad \max_j \|m - x_j\| \le \max_{i,j} \|x_i - x_j\| ,\qquad
    \text{min-sum:}\quad \sum_j \|m - x_j\|^2 \le \max_i \sum_j \|x_i - x_j\|^2 .

:math:`\gamma = 0` always satisfies both (m = mu is no farther than the farthest
pair; the mean minimises the sum of squares), and both left sides are convex in
:math:`\gamma`, so the feasible factors form an interval :math:`[0, \gamma^*]` and
bisection finds its end. The squared distances are quadratics in :math:`\gamma`
whose coefficients come from one float64 Gram matrix of the centred messages, so
a bisection step costs O(r), not O(r d).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from byzrsa.attacks.base import AttackContext, regular_moments, same_row
from byzrsa.errors import ConfigError, did_you_mean

__all__ = ["DIRECTIONS", "perturbation", "largest_feasible", "min_max_gamma", "min_sum_gamma", "min_max", "min_sum"]

DIRECTIONS = ("unit", "std", "sign")
_MAX_DOUBLINGS = 2100  # enough to overflow any float64 start to inf, which is infeasible
_MAX_HALVINGS = 200


def perturbation(regular: Tensor, direction: str) -> Tensor:
    r"""The paper's perturbation p, shape (d,), for ``direction``.

    ``unit``: :math:`-\mu/\|\mu\|`; ``std``: :math:`-\sigma`; ``sign``: :math:`-\mathrm{sign}(\mu)`.

    (The paper's "inverse unit vector", "inverse standard deviation" and "inverse
    sign"; a zero mean gives a zero unit vector.) Its code takes the sample
    standard deviation; byzrsa takes the population one (docs/protocol.md). For these
    attacks that changes nothing but the scale of :math:`\gamma`: the message
    :math:`\mu + \gamma p` found is the same.
    """
    mu, sigma = regular_moments(regular)
    if direction == "unit":
        norm = torch.linalg.vector_norm(mu)
        return -mu / norm if norm > 0 else torch.zeros_like(mu)
    if direction == "std":
        return -sigma
    if direction == "sign":
        return -torch.sign(mu)
    hint = did_you_mean(direction, DIRECTIONS)
    raise ConfigError(f"unknown perturbation direction {direction!r}{hint}: choose one of {', '.join(DIRECTIONS)}")


def largest_feasible(feasible: Callable[[float], bool], gamma_init: float, tol: float) -> float:
    r"""The largest :math:`\gamma \ge 0` with ``feasible(gamma)``, for a feasible set :math:`[0, \gamma^*]`.

    The paper's Algorithm 1 starts at ``gamma_init`` and moves by halving steps,
    so it never goes past :math:`2\gamma_{init}`; here the bracket is first
    doubled from ``gamma_init`` until infeasible (so any :math:`\gamma^*` is
    reached), then bisected until its width is at most ``tol`` times its upper
    end (a relative tolerance: :math:`\gamma` has the messages' units for the
    ``unit`` direction). Returns the feasible end, so the answer always
    satisfies the condition.
    """
    lo, hi = 0.0, gamma_init
    for _ in range(_MAX_DOUBLINGS):
        if not feasible(hi):
            break
        lo, hi = hi, hi * 2.0
    else:  # every factor is feasible: p does not move m (p = 0)
        return lo
    for _ in range(_MAX_HALVINGS):
        if hi - lo <= tol * hi:
            break
        mid = 0.5 * (lo + hi)
        if feasible(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _geometry(regular: Tensor, p: Tensor) -> tuple[Tensor, Tensor, float, Tensor]:
    r"""The float64 coefficients ``a, b, c`` and squared distances ``D`` the conditions are made of.

    :math:`\|\mu + \gamma p - x_j\|^2 = a_j + 2\gamma b_j + \gamma^2 c` and
    :math:`D_{ij} = \|x_i - x_j\|^2`, with :math:`a_j = \|x_j - \mu\|^2`,
    :math:`b_j = \langle p, \mu - x_j\rangle`, :math:`c = \|p\|^2`. D comes from the
    Gram matrix of the centred messages (centring first keeps its cancellation at
    the scale of the distances themselves).
    """
    centred = regular.double()
    centred = centred - centred.mean(dim=0)
    p64 = p.double()
    gram = centred @ centred.T
    a = gram.diagonal()
    pairwise = (a[:, None] + a[None, :] - 2.0 * gram).clamp_min_(0.0)
    return a, -(centred @ p64), float(p64 @ p64), pairwise


def _gamma(regular: Tensor, p: Tensor, kind: str, gamma_init: float, tol: float) -> float:
    a, b, c, pairwise = _geometry(regular, p)
    if c == 0.0:
        return 0.0  # p = 0: every factor sends mu
    if kind == "min-max":
        bound = float(pairwise.max())

        def feasible(gamma: float) -> bool:
            value = float((a + (2.0 * gamma) * b + (gamma * gamma) * c).max())
            return math.isfinite(value) and value <= bound
    else:
        bound = float(pairwise.sum(dim=1).max())
        a_sum, b_sum, r = float(a.sum()), float(b.sum()), a.shape[0]

        def feasible(gamma: float) -> bool:
            value = a_sum + 2.0 * gamma * b_sum + r * gamma * gamma * c
            return math.isfinite(value) and value <= bound

    return largest_feasible(feasible, gamma_init, tol)


def min_max_gamma(regular: Tensor, direction: str = "std", gamma_init: float = 10.0, tol: float = 1e-5) -> float:
    r"""Min-max's factor: the largest :math:`\gamma` with the min-max condition (module docstring)."""
    return _gamma(regular, perturbation(regular, direction), "min-max", gamma_init, tol)


def min_sum_gamma(regular: Tensor, direction: str = "std", gamma_init: float = 10.0, tol: float = 1e-5) -> float:
    r"""Min-sum's factor: the largest :math:`\gamma` with the min-sum condition (module docstring).

    Since :math:`\sum_j (x_j - \mu) = 0` the condition reads
    :math:`\gamma \|p\| \le \max_i \|x_i - \mu\|` (the lie is no farther from mu
    than the farthest regular message); the bisection finds that value.
    """
    return _gamma(regular, perturbation(regular, direction), "min-sum", gamma_init, tol)


def _send(regular: Tensor, own: Tensor, kind: str, direction: str, gamma_init: float, tol: float) -> Tensor:
    if own.shape[0] == 0:
        return own.clone()
    p = perturbation(regular, direction)
    gamma = _gamma(regular, p, kind, gamma_init, tol)
    return same_row(regular.mean(dim=0) + gamma * p, own)


def min_max(
    regular: Tensor, own: Tensor, ctx: AttackContext, *, direction: str = "std", gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> Tensor:
    r"""Min-max: every Byzantine worker sends :math:`\mu + \gamma p`, :math:`\gamma` the largest with

    .. math:: \max_{j \in R} \|\mu + \gamma p - x_j\|_2 \le \max_{i, j \in R} \|x_i - x_j\|_2 .

    Shejwalkar and Houmansadr, NDSS 2021 (the AGR-agnostic min-max attack).
    The attacker needs every regular message of the round, nothing of the defence.

    Parameters
    ----------
    direction : {"std", "unit", "sign"}
        The perturbation p (see :func:`perturbation`); "std" is the paper's
        strongest in most of its experiments.
    gamma_init : float
        First factor tried (the paper's code uses 10; 50 in some settings).
    tol : float
        Relative width of the final bisection bracket (:func:`largest_feasible`).
    """
    return _send(regular, own, "min-max", direction, gamma_init, tol)


def min_sum(
    regular: Tensor, own: Tensor, ctx: AttackContext, *, direction: str = "std", gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> Tensor:
    r"""Min-sum: every Byzantine worker sends :math:`\mu + \gamma p`, :math:`\gamma` the largest with

    .. math:: \sum_{j \in R} \|\mu + \gamma p - x_j\|_2^2 \le \max_{i \in R} \sum_{j \in R} \|x_i - x_j\|_2^2 .

    Shejwalkar and Houmansadr, NDSS 2021 (the AGR-agnostic min-sum attack);
    options as :func:`min_max`, closed form in :func:`min_sum_gamma`.
    """
    return _send(regular, own, "min-sum", direction, gamma_init, tol)
