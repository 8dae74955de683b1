r"""Iterative outlier scissor (IOS): Wu, Chen, Ling, *Byzantine-resilient decentralized stochastic
optimization with robust aggregation rules*, IEEE TSP 2023, Algorithm 1.

Starting from every row kept, ``f`` times: compute the weighted mean of the
kept rows,

.. math:: \bar x = \frac{\sum_{j \in S} w_j x_j}{\sum_{j \in S} w_j},

and drop the kept row farthest from it (Euclidean distance; ties to the lowest
index; the row ``keep``, a node's own model on a graph, is never dropped).
Return the weighted mean of the rows left. On a graph the weights are the
node's mixing weights ``W_ij`` (itself included) and ``f`` its number of
Byzantine neighbours; on a server, equal weights.

Non-finite rows are dropped first (their distance counts as infinite), so up
to ``f`` of them cannot reach the output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from byzrsa.aggregators._common import _check_f, _check_matrix
from byzrsa.errors import ConfigError

__all__ = ["ios", "ios_check"]


def ios(x: Tensor, f: int, *, weights: Tensor | None = None, keep: int | None = None) -> Tensor:
    """IOS over the ``(n, d)`` rows ``x``: drop ``f`` rows one at a time, then the weighted mean of the rest.

    ``weights`` (n,), positive, default equal; ``keep`` the index of a row never dropped.
    """
    n = _check_matrix(x)
    f = _check_f(f)
    ios_check(n, f, {})
    w = torch.ones(n, dtype=x.dtype, device=x.device) if weights is None else weights.to(x.dtype).to(x.device)
    kept = torch.ones(n, dtype=torch.bool, device=x.device)
    bad = ~torch.isfinite(x).all(dim=1)
    for _ in range(f):
        live = kept & ~bad
        centre = (w[live].unsqueeze(1) * x[live]).sum(dim=0) / w[live].sum() if live.any() else x.new_zeros(x.shape[1])
        dist = torch.linalg.vector_norm(x - centre, dim=1)
        dist = torch.where(bad, torch.full_like(dist, torch.inf), torch.nan_to_num(dist, nan=torch.inf))
        dist = torch.where(kept, dist, torch.full_like(dist, -1.0))
        if keep is not None:
            dist[keep] = -1.0
        kept[int(torch.argmax(dist))] = False  # argmax takes the first of equal maxima: the lowest index
    return (w[kept].unsqueeze(1) * x[kept]).sum(dim=0) / w[kept].sum()


def ios_check(m: int, f: int, options: dict) -> None:
    """IOS drops f rows and must keep one beyond the row it never drops: m >= f + 2 (f = 0: any m)."""
    if f and m < f + 2:
        raise ConfigError(f"ios needs m >= f + 2 rows to drop f = {f}: got m = {m}")
