r"""The update rules, as pure functions of (state, inputs) -> new state.

RSA (equations 10 and 11 of the paper, lp-norm form) with byzrsa's mean-loss
convention (docs/protocol.md, convention 1): the objective is

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
from dataclasses import dataclass

import torch
from torch import Tensor

from byzrsa.aggregators import RULES
from byzrsa.config import MASTER_ORDERS, SCHEDULES
from byzrsa.errors import ConfigError, did_you_mean
from byzrsa.penalties import subgradient_of_difference
from byzrsa.registry import Entry, Registry

__all__ = [
    "SCHEDULES",
    "MASTER_ORDERS",
    "Method",
    "METHODS",
    "get_method",
    "method_names",
    "step_size",
    "rsa_worker_step",
    "rsa_master_step",
    "rsa_master_pull",
    "aggregation_step",
    "baseline_message",
    "momentum_step",
]


def step_size(lr: float, k: int, schedule: str = "sqrt") -> float:
    """Step size of iteration ``k`` (counted from 1): ``lr / sqrt(k)`` or the constant ``lr``."""
    if k < 1:
        raise ValueError(f"iterations are counted from k = 1, got k = {k}")
    if schedule == "sqrt":
        return lr / math.sqrt(k)
    if schedule == "constant":
        return lr
    hint = did_you_mean(schedule, SCHEDULES)
    raise ConfigError(f"unknown step-size schedule {schedule!r}{hint}: choose one of {', '.join(SCHEDULES)}")


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
        penalty = subgradient_of_difference(x, x0, p)
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
    total = rsa_master_pull(x0, messages, p) if messages.shape[0] else torch.zeros_like(x0)
    if pull is not None:
        total.add_(pull)
    # x0 - alpha (mu x0 + lam total), as two passes instead of five.
    return torch.mul(x0, 1.0 - alpha * mu).add_(total, alpha=-alpha * lam)


def rsa_master_pull(x0: Tensor, messages: Tensor, p: float) -> Tensor:
    r""":math:`\sum_j \partial\|x_0 - z_j\|_p` over the rows of ``messages (n, d)``: the master's pull (equation 11).

    The simulator sums it a block of messages at a time and passes the total to
    :func:`rsa_master_step` as ``pull``.
    """
    return subgradient_of_difference(x0, messages, p).sum(dim=0)


def aggregation_step(x: Tensor, messages: Tensor, aggregate: Callable[[Tensor], Tensor], *, alpha: float) -> Tensor:
    """Gradient-aggregation step ``x - alpha * aggregate(messages)``."""
    return x - alpha * aggregate(messages)


def baseline_message(grad: Tensor, x: Tensor, mu: float) -> Tensor:
    """A gradient-aggregation worker's message ``grad F(x; batch) + mu x`` (docs/protocol.md, convention 1), in place."""
    return grad.add_(x, alpha=mu)


def momentum_step(momentum: Tensor | None, message: Tensor, beta: float) -> Tensor:
    r"""Worker momentum :math:`m_i \leftarrow \beta m_i + (1 - \beta) g_i`, updated in place.

    Karimireddy, He, Jaggi (ICML 2021), eq. (3); Farhadkhani et al. (ICML 2022).
    The worker sends :math:`m_i` instead of :math:`g_i`. The momentum starts at
    :math:`m_i^0 = 0` (``momentum`` None), as in both papers, so the first
    message is :math:`(1 - \beta) g_i`. ``beta = 0`` returns ``message`` itself.
    """
    if beta == 0.0:
        return message
    if momentum is None:
        return message * (1.0 - beta)
    return momentum.mul_(beta).add_(message, alpha=1.0 - beta)


@dataclass(frozen=True)
class Method(Entry):
    """A training method: RSA, or gradient aggregation with a rule.

    ``rule`` is the aggregation rule of a gradient method (None for RSA);
    ``regular_only`` aggregates the regular workers' messages alone (Ideal SGD:
    the ceiling no attack can touch). Every aggregation rule is also a method of
    the same name (see :func:`get_method`), so a new rule needs no method entry.
    """

    rule: str | None = None
    regular_only: bool = False

    @property
    def is_rsa(self) -> bool:
        return self.rule is None


METHODS: Registry[Method] = Registry("method")
METHODS.register(Method("rsa", rsa_master_step, "RSA", "RSA with an lp-norm penalty (--norm, --lam)"))
METHODS.register(Method(
    "ideal-sgd", aggregation_step, "Ideal SGD", "mean of the regular workers' gradients only (the ceiling)",
    rule="mean", regular_only=True,
))
METHODS.register(Method("sgd", aggregation_step, "SGD", "mean of all messages (not robust)", rule="mean"))


def get_method(name: str) -> Method:
    """The method ``name``: a METHODS entry, or gradient aggregation with the rule of that name."""
    if name in METHODS:
        return METHODS[name]
    if name in RULES:
        rule = RULES[name]
        return Method(name, aggregation_step, rule.label, rule.help, options=rule.options, rule=name)
    from byzrsa.preaggregators import PRE_AGGREGATORS

    hint = f" ({name} is a pre-aggregator: add --pre {name} to a rule)" if name in PRE_AGGREGATORS else \
        did_you_mean(name, method_names())
    raise ConfigError(f"unknown method {name!r}{hint}: choose one of {', '.join(method_names())}")


def method_names() -> tuple[str, ...]:
    """Every method: the METHODS entries, then each rule but the mean (which is ``sgd``)."""
    return (*METHODS.names(), *(name for name in RULES if name != "mean" and name not in METHODS))
