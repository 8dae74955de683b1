"""Pre-aggregators that average rows: bucketing and nearest-neighbour mixing."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from byzrsa.aggregators._common import _check_f, _check_matrix, _non_finite_rows
from byzrsa.aggregators.krum import _pairwise_sq_dists, _ranking
from byzrsa.errors import ConfigError, config_int

__all__ = ["bucketing", "nearest_neighbour_mixing"]


def bucketing(x: Tensor, f: int, generator: torch.Generator | None, s: int = 2) -> Tensor:
    r"""Bucketing.

    Karimireddy, He, Jaggi, *Byzantine-Robust Learning on Heterogeneous
    Datasets via Bucketing*, ICLR 2022.

    Shuffle the rows with a random permutation :math:`\pi` and average
    consecutive buckets of ``s`` rows:

    .. math:: y_b = \frac{1}{|B_b|} \sum_{j \in B_b} x_{\pi(j)}, \qquad
              B_b = \{(b - 1)s + 1, \dots, \min(bs, n)\}, \quad b = 1, \dots, \lceil n/s \rceil,

    so the last bucket is smaller when ``s`` does not divide ``n``. The rule then
    receives the :math:`\lceil n/s \rceil` bucket means with the same ``f``
    (a Byzantine row spoils at most its own bucket).

    Parameters
    ----------
    x : Tensor, shape (n, d)
    f : int
        Declared Byzantine rows (not used by the map itself).
    generator : torch.Generator or None
        Draws :math:`\pi` (``torch.randperm`` on the CPU); one stream per
        pre-aggregator, owned by the run. None uses torch's global generator.
    s : int
        Bucket size ``s >= 1`` (default 2, the paper's choice); ``s = 1`` only shuffles.

    Returns
    -------
    Tensor, shape (ceil(n / s), d), dtype and device of ``x``

    Non-finite rows make their own bucket's mean non-finite (and no other), for
    the rule to treat as it documents.

    Implementation: one ``index_add_`` of the rows into their buckets (a single
    pass over ``x``, no gathered copy), then a division by the bucket sizes.
    """
    n = _check_matrix(x)
    _check_f(f)
    s = config_int(s, "bucketing s", minimum=1)
    perm = torch.randperm(n, generator=generator)
    bucket = torch.empty(n, dtype=torch.long)
    bucket[perm] = torch.arange(n) // s  # row perm[j] goes to bucket j // s
    buckets = math.ceil(n / s)
    sizes = torch.bincount(bucket, minlength=buckets).to(dtype=x.dtype, device=x.device)
    out = torch.zeros(buckets, x.shape[1], dtype=x.dtype, device=x.device)
    out.index_add_(0, bucket.to(x.device), x)
    return out.div_(sizes[:, None])


def _check_nnm(n: int, f: int) -> None:
    if f >= n:
        raise ConfigError(f"nnm needs f < n rows: got n = {n}, f = {f} (each row averages its n - f nearest)")


def nearest_neighbour_mixing(x: Tensor, f: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Nearest-neighbour mixing, NNM.

    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, *Fixing by Mixing: A
    Recipe for Optimal Byzantine ML under Heterogeneity*, AISTATS 2023:

    .. math:: y_i = \frac{1}{n - f} \sum_{j \in N_i} x_j,

    where :math:`N_i` holds the :math:`n - f` rows nearest to :math:`x_i` in
    Euclidean distance, :math:`x_i` itself included. Requires ``f < n``
    (the paper's guarantees need ``n > 2f``). ``f = 0`` gives every row the mean.

    Parameters
    ----------
    x : Tensor, shape (n, d)
    f : int
        Declared Byzantine rows.
    generator : unused (NNM is deterministic)

    Returns
    -------
    Tensor, shape (n, d), dtype and device of ``x``

    Ties: :math:`x_i` comes first, then the other rows by (distance, index), so
    the result is deterministic; at an exact tie on the boundary of
    :math:`N_i` the lower index wins (the output then depends on the order of the
    rows, as any tie-break must).

    Non-finite rows: a row with a NaN or infinite entry is infinitely far from
    every other row and is passed through unchanged (it cannot be mixed with
    anything), for the rule to treat as it documents. A finite row never
    averages it: when fewer than :math:`n - f` rows are finite, a finite row
    averages the finite rows among its :math:`n - f` nearest.

    Distances: Krum's Gram-matrix passes
    (:func:`~byzrsa.aggregators.krum.krum_scores`): one on the raw rows picks a
    central row (the smallest sum of squared distances to its ``n - f - 1``
    nearest), a second recentres on it, so that the identity's cancellation
    error stays small next to the distances that decide :math:`N_i`. The mixing
    is one (n, n) by (n, d) matrix product.
    """
    n = _check_matrix(x)
    f = _check_f(f)
    _check_nnm(n, f)
    k = n - f
    bad = _non_finite_rows(x)
    xz = x
    if bool(bad.any()):
        if bool(bad.all()):
            return x.clone()
        xz = torch.where(bad[:, None], torch.zeros((), dtype=x.dtype, device=x.device), x)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    if k == 1:
        weights = eye.to(x.dtype)
    else:
        d2 = _pairwise_sq_dists(xz, bad)  # inf on the diagonal and for bad rows
        near = torch.topk(d2, k - 1, dim=1, largest=False, sorted=False).values.sum(dim=1).masked_fill(bad, math.inf)
        centre = int(_ranking(near, bad)[0])
        d2 = _pairwise_sq_dists(xz - xz[centre], bad)
        order = torch.sort(d2, dim=1, stable=True).indices[:, : k - 1]  # the k - 1 nearest others, by (distance, index)
        chosen = torch.zeros(n, n, dtype=torch.bool, device=x.device).scatter_(1, order, True)
        chosen &= torch.isfinite(d2)  # never a bad row, never itself twice
        weights = (chosen | eye).to(x.dtype)
    weights[bad] = 0.0
    counts = weights.sum(dim=1, keepdim=True)
    out = (weights / counts.clamp_min(1)) @ xz
    if bool(bad.any()):
        out[bad] = x[bad]
    return out
