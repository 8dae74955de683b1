r"""The update rules, as pure functions of (state, inputs) -> new state.

RSA (equations 10 and 11 of the paper, lp-norm form) with byzrsa's mean-loss
convention (PROTOCOL.md, convention 1): the objective is

.. math::
    \min_{x_0, \{x_i\}} \frac1m \sum_{i \in R} \mathbb E F(x_i, \xi_i) + f_0(x_0)
        + \lambda \sum_{i \in R} \|x_i - x_0\|_p ,\qquad f_0(x) = \tfrac{\mu}{2}\|x\|^2,

so a regular worker steps

.. math::  x_i^{k+1} = x_i^k - \alpha_k\big(\nabla F(x_i^k, \xi_i^k)/m + \lambda\,\partial\|x_i^k - x_0^k\|_p\big)

and the master steps over all m messages :math:`z_j` (regular iterates or
Byzantine lies)

.. math::  x_0^{k+1} = x_0^k - \alpha_k\big(\mu x_0^k + \lambda \sum_{j=1}^m \partial\|x_0^k - z_j\|_p\big).

The paper's equation (8) uses :math:`z_i = x_i^k` ("jacobi"); the authors' code
uses the freshly updated :math:`x_i^{k+1}` ("gauss-seidel"). Both are offered.
Dividing the gradient by m is what the authors' code does; it is why their
lambda and step sizes work as published.

The gradient-aggregation baselines step :math:`x \leftarrow x - \alpha_k \,
\mathrm{AGG}(g_1, \dots, g_m)` where each :math:`g_j = \nabla F(x, \xi_j) + \mu x`
(or a Byzantine lie).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from byzrsa.errors import ConfigError
from byzrsa.penalties import subgradient

__all__ = [
    "SCHEDULES",
    "MASTER_ORDERS",
    "step_size",
    "rsa_worker_step",
    "rsa_master_step",
    "aggregation_step",
]

SCHEDULES = ("sqrt", "constant")
MASTER_ORDERS = ("jacobi", "gauss-seidel")


def step_size(lr: float, k: int, schedule: str = "sqrt") -> float:
    """Step size of iteration ``k`` (counted from 1): ``lr / sqrt(k)`` or the constant ``lr``."""
    if k < 1:
        raise ValueError(f"iterations are counted from k = 1, got k = {k}")
    if schedule == "sqrt":
        return lr / math.sqrt(k)
    if schedule == "constant":
        return lr
    raise ConfigError(f"unknown step-size schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")


def rsa_worker_step(
    x: Tensor,
    x0: Tensor,
    grad: Tensor,
    *,
    lam: float,
    p: float,
    alpha: float,
    m: int,
    penalty: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    r"""RSA regular-worker step (equation 10), for one row ``(d,)`` or a batch ``(r, d)``.

    ``grad`` is the stochastic gradient of the worker's loss at ``x``; it is
    divided by the number of workers ``m`` (mean-loss convention).

    ``penalty`` is :math:`\partial\|x - x_0\|_p` if the caller has computed it
    already (the simulator shares it with the master's step); ``out`` receives
    :math:`x^{k+1}` and may be ``x`` itself, for an update in place (a new tensor
    by default). Two in-place passes over the state, one rounding per term.
    """
    if penalty is None:
        penalty = subgradient(x - x0, p)
    return torch.add(x, grad, alpha=-alpha / m, out=out).add_(penalty, alpha=-alpha * lam)


def rsa_master_step(
    x0: Tensor, messages: Tensor, *, lam: float, p: float, alpha: float, mu: float, pull: Tensor | None = None
) -> Tensor:
    r"""RSA master step (equation 11) over the ``(m, d)`` received messages.

    Non-finite messages cannot poison ``x0``: the penalty subgradient of any
    difference is finite (see :mod:`byzrsa.penalties`). A lost message (a dead
    worker) is simply a missing row.

    ``pull`` is :math:`\sum_j \partial\|x_0 - z_j\|_p` over messages the caller
    has already accounted for and left out of ``messages``. The simulator passes
    minus the sum of the regular workers' own penalty subgradients: subgradients
    are odd (:math:`\partial\|{-v}\| = -\partial\|v\|`, exactly, for every
    norm here), so in the jacobi order that is the same sum, computed once.
    """
    total = subgradient(x0 - messages, p).sum(dim=0) if messages.shape[0] else torch.zeros_like(x0)
    if pull is not None:
        total.add_(pull)
    # x0 - alpha (mu x0 + lam total), as two passes instead of five.
    return torch.mul(x0, 1.0 - alpha * mu).add_(total, alpha=-alpha * lam)


def aggregation_step(x: Tensor, messages: Tensor, aggregate: Callable[[Tensor], Tensor], *, alpha: float) -> Tensor:
    """Gradient-aggregation step ``x - alpha * aggregate(messages)``."""
    return x - alpha * aggregate(messages)
