r"""The RSA-aware attack: the Byzantine messages that move RSA's master farthest along a target, from its update.

RSA's master step (Li et al., AAAI 2019, equation (11); :func:`byzrsa.methods.rsa_master_step`) is

.. math::
    x_0^{k+1} = x_0^k - \alpha\Big(\mu x_0^k + \lambda \sum_{i \in R} \partial\|x_0^k - x_i\|_p
              + \lambda \sum_{j \in B} g_j\Big), \qquad g_j = \partial\|x_0^k - z_j\|_p .

A Byzantine message :math:`z_j` enters only through :math:`g_j`, and by
Proposition 1 of the paper :math:`\|g_j\|_{p^*} \le 1` (:math:`1/p + 1/p^* = 1`).
So for any direction t the q Byzantine workers move the next master by

.. math::
    \Big\langle -\alpha\lambda \sum_{j \in B} g_j ,\, t \Big\rangle
    \;\le\; \alpha\lambda \sum_{j \in B} \|g_j\|_{p^*} \|t\|_p \;\le\; q\,\alpha\lambda\,\|t\|_p

(Hölder), whatever they send: a per-step budget of :math:`q\alpha\lambda` in the
dual-norm ball (for l1, :math:`q\alpha\lambda` per coordinate). Equality holds
exactly when every :math:`-g_j` maximises :math:`\langle g, t\rangle` over the dual
ball, and by Proposition 1 again those maximisers are the subgradients of
:math:`\|\cdot\|_p` at t. byzrsa's element :math:`g^* = \partial\|t\|_p`
(:func:`byzrsa.penalties.subgradient`) is

* p = 1: :math:`g^* = \mathrm{sign}(t)`;
* p = 2: :math:`g^* = t / \|t\|_2`;
* p = inf: :math:`\mathrm{sign}(t_j)/n` on the n entries of largest :math:`|t_j|`, 0 elsewhere;
* 1 < p < inf: :math:`g^* = \mathrm{sign}(t)\,|t|^{p-1} / \|t\|_p^{p-1}`, the Hölder
  equality case (:math:`\langle g^*, t\rangle = \|t\|_p`, :math:`\|g^*\|_{p^*} = 1`).

The master computes :math:`g_j = -g^*` from :math:`z_j = x_0 + c\,v` for any
:math:`c > 0` and any v with :math:`\partial\|v\|_p = g^*` (byzrsa's subgradients
are odd and positively homogeneous): v = t works for every p. For p = 1 and
p = inf the attack sends :math:`v = g^*/\max|g^*|` instead (entries +-1 on the
support, exactly 0 elsewhere), whose signs and ties survive rounding;
:math:`c = 1 + \|x_0\|_\infty` makes the shift dominate :math:`x_0`'s entries so
that the master's :math:`x_0 - z_j` is :math:`-c\,v` to within one rounding.
How large the message is does not matter to RSA (only its direction from
:math:`x_0` does); that is the point of RSA, and the reason this attack is the
worst case for one step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from byzrsa.attacks.base import AttackContext, require, same_row
from byzrsa.errors import ConfigError, did_you_mean
from byzrsa.penalties import subgradient

__all__ = ["TARGETS", "rsa_target", "rsa_best_response", "rsa_aware"]

TARGETS = ("against-pull", "negative-x0", "ones")


def rsa_target(regular: Tensor, x0: Tensor, p: float, target: str) -> Tensor:
    r"""The direction t the attack pushes the master along, shape (d,).

    * ``against-pull``: :math:`t = \sum_{i \in R} \partial\|x_0 - x_i\|_p`, the
      regular workers' penalty term of the master's step. They move :math:`x_0`
      by :math:`-\alpha\lambda t` (towards their consensus); the attack moves it
      by :math:`q\alpha\lambda\|t\|_p` along +t, the steepest first-order increase
      of :math:`\sum_i \|x_0 - x_i\|_p` the budget allows: away from the regular
      workers, as fast as q workers can. The default: it needs no model of the
      task, and it is what an attacker wanting RSA not to reach consensus does.
    * ``negative-x0``: :math:`t = -x_0`, shrink the master model (through 0).
    * ``ones``: :math:`t = \mathbf 1`; for l1 this is the same-value attack with
      :math:`c \to \infty`.
    """
    if target == "against-pull":
        return subgradient(x0 - regular, p).sum(dim=0) if regular.shape[0] else torch.zeros_like(x0)
    if target == "negative-x0":
        return -x0
    if target == "ones":
        return torch.ones_like(x0)
    hint = did_you_mean(target, TARGETS)
    raise ConfigError(f"unknown rsa-aware target {target!r}{hint}: choose one of {', '.join(TARGETS)}")


def rsa_best_response(x0: Tensor, t: Tensor, p: float) -> Tensor:
    r"""The message z (d,) whose master subgradient is :math:`-\partial\|t\|_p`, moving :math:`x_0` most along t.

    It moves the next master by :math:`\alpha\lambda\|t\|_p` along t, the most one
    message can: :math:`z = x_0 + (1 + \|x_0\|_\infty)\, v`, v as in the module docstring; a
    zero t gives :math:`z = x_0` (no move is better than another to first order).
    """
    v = subgradient(t, p) if p == 1.0 or math.isinf(p) else t
    peak = v.abs().max() if v.numel() else torch.zeros((), dtype=v.dtype, device=v.device)
    if not peak > 0:
        return x0.clone()
    scale = 1.0 + (x0.abs().max() if x0.numel() else 0.0)
    return x0 + (v / peak) * scale


def rsa_aware(regular: Tensor, own: Tensor, ctx: AttackContext, *, target: str = "against-pull") -> Tensor:
    r"""Every Byzantine worker sends :math:`z = x_0 + c\,v`: RSA's next master moves the most it can along t.

    .. math::
        z_j = \arg\max_z \big\langle -\alpha\lambda\,\partial\|x_0 - z\|_p,\, t\big\rangle ,
        \qquad \max = \alpha\lambda\,\|t\|_p ,

    so the q of them together reach the bound :math:`q\alpha\lambda\|t\|_p` that no
    messages of theirs can exceed (derivation in the module docstring, from
    equation (11) and Proposition 1 of Li et al., AAAI 2019). Needs ``ctx.x0``
    and ``ctx.p`` (``ctx.lam`` and the step size only scale the move). Meant for
    RSA: on a gradient-aggregation baseline the message is just a large step
    from the shared model, with no such guarantee.

    Parameters
    ----------
    target : {"against-pull", "negative-x0", "ones"}
        The direction t (:func:`rsa_target`).
    """
    if own.shape[0] == 0:
        return own.clone()
    x0 = require(ctx.x0, "the master model (ctx.x0)", "rsa-aware")
    t = rsa_target(regular.to(dtype=x0.dtype, device=x0.device), x0, ctx.p, target)
    return same_row(rsa_best_response(x0, t, ctx.p), own)
