r"""Attacks that exist only on a graph: they read the receiving node's model and its mixing weights.

A Byzantine node of a decentralized run may send a different message to each
neighbour; the engines call an attack once per receiving regular node ``i``
with ``regular`` = the messages of ``i``'s regular neighbours and the context's
``receiver`` (``x_i``), ``regular_weights`` (``W_ij``) and ``byzantine_weight``
(:math:`\sum_b W_{ib}` over the Byzantine neighbours sending).

Dissensus (He, Karimireddy, Jaggi, *Byzantine-robust decentralized learning via
ClippedGossip*, 2022, section 4): every Byzantine neighbour sends

.. math:: z = x_i - \varepsilon\,\frac{\sum_{j \text{ regular}} W_{ij} (x_j - x_i)}{\sum_{b \text{ Byzantine}} W_{ib}},

which cancels (``eps = 1``) or reverses (``eps > 1``) the pull of the honest
neighbours in a gossip average, so the regular nodes drift apart. With
``eps = 1`` the weighted average of ``i``'s neighbourhood equals ``x_i``: the
*isolation* attack of Wu, Chen, Ling (IOS, IEEE TSP 2023), kept as its own
entry under its own name.
"""

from __future__ import annotations

from torch import Tensor

from byzrsa.attacks.base import AttackContext, require, same_row

__all__ = ["dissensus", "isolation"]


def dissensus(regular: Tensor, own: Tensor, ctx: AttackContext, *, eps: float = 1.5) -> Tensor:
    """Every Byzantine neighbour of the receiver sends ``x_i - eps sum_j W_ij (x_j - x_i) / sum_b W_ib``."""
    if own.shape[0] == 0:
        return own.clone()
    x_i = require(ctx.receiver, "the receiver's model (a --topology run)", "dissensus")
    weights = require(ctx.regular_weights, "the receiver's mixing weights (a --topology run)", "dissensus")
    if ctx.byzantine_weight <= 0 or regular.shape[0] == 0:
        return same_row(x_i, own)  # nothing to cancel: the receiver's own model
    pull = (weights.to(regular.dtype).unsqueeze(1) * (regular - x_i)).sum(dim=0)
    return same_row(x_i - (eps / ctx.byzantine_weight) * pull, own)


def isolation(regular: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
    """Every Byzantine neighbour sends what makes the receiver's weighted average its own model (dissensus, eps = 1)."""
    return dissensus(regular, own, ctx, eps=1.0)
