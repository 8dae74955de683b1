r"""The mimic attack: every Byzantine worker sends one regular worker's message, chosen to skew the data most.

Karimireddy, He and Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets
via Bucketing", ICLR 2022 (the mimic attack, and its appendix on choosing whom to
mimic). On heterogeneous data, making one regular worker count q + 1 times
over-represents its data and under-represents the rest, and no rule can tell the
copies from the original. The worker chosen is the one farthest along the top
principal direction z of the regular messages (largest :math:`\langle x_i, z\rangle`,
the worker that most stretches their spread along z), with z tracked online
across rounds by a running power iteration, during the first ``warmup`` rounds:

.. math::
    \bar x^t = \tfrac1r \sum_{i \in R} x_i^t ,\quad
    \mu^t = \tfrac{t}{t+1}\mu^{t-1} + \tfrac{1}{t+1}\bar x^t ,\quad
    u^t = \sum_{i \in R} \langle x_i^t - \mu^t, z^{t-1}\rangle (x_i^t - \mu^t),

.. math::
    z^t = \frac{w^t}{\|w^t\|},\quad w^t = \tfrac{t}{t+1} z^{t-1} + \tfrac{1}{t+1}\frac{u^t}{\|u^t\|},
    \qquad i^* = \arg\max_{i \in R} \langle x_i^t, z^t\rangle ,

rounds counted from t = 0, where :math:`\mu^0 = \bar x^0` and :math:`z^{-1}` is a
standard normal vector. From round ``warmup`` on, :math:`i^*` is fixed and the
Byzantine workers send worker :math:`i^*`'s current message. This follows the
authors' implementation (``MimicVariantAttacker``: the same averages, the first
regular index on ties, ``warmup = 1`` by default, the start drawn from a generator
seeded 0); ``copy`` is the fixed-worker version.

The start is seeded 0, not from a Byzantine worker's stream, so every Byzantine
process of the dist engine tracks the same z and picks the same worker as the
simulator. State (``ctx.state``): ``mimic_round``, ``mimic_mu``, ``mimic_z``,
``mimic_target``; each call is one round.
"""

from __future__ import annotations

import torch
from torch import Tensor

from byzrsa.attacks.base import AttackContext, same_row

__all__ = ["mimic", "mimic_direction_start"]


def mimic_direction_start(d: int) -> Tensor:
    """:math:`z^{-1}`: d standard normal draws (float64, CPU) from a generator seeded 0."""
    return torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _unit(v: Tensor, fallback: Tensor) -> Tensor:
    norm = torch.linalg.vector_norm(v)
    return v / norm if norm > 0 else fallback  # all regular messages equal: keep the previous direction


def mimic(regular: Tensor, own: Tensor, ctx: AttackContext, *, warmup: int = 1) -> Tensor:
    r"""Every Byzantine worker sends regular worker :math:`i^*`'s message (module docstring for :math:`i^*`).

    Parameters
    ----------
    warmup : int
        Rounds during which z is updated and :math:`i^*` re-chosen (>= 1); from
        then on :math:`i^*` stays fixed.
    """
    state = ctx.state
    t = state.get("mimic_round", 0)
    if t < warmup:
        x = regular.double()
        mean = x.mean(dim=0)
        if t == 0:
            mu = mean
            z = mimic_direction_start(x.shape[1]).to(x.device)
            z = z / torch.linalg.vector_norm(z)
        else:
            mu = state["mimic_mu"] * (t / (t + 1)) + mean / (t + 1)
            z = state["mimic_z"]
        centred = x - mu
        u = _unit(centred.T @ (centred @ z), z)
        z = u if t == 0 else _unit(z * (t / (t + 1)) + u / (t + 1), z)
        projections = (x @ z).tolist()
        state["mimic_mu"], state["mimic_z"] = mu, z
        state["mimic_target"] = max(range(len(projections)), key=lambda i: (projections[i], -i))
    state["mimic_round"] = t + 1
    if own.shape[0] == 0:
        return own.clone()
    return same_row(regular[state["mimic_target"]], own)
