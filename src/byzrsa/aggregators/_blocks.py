"""Row reductions over column blocks: distances and norms without an (m, d) temporary or cancellation.

``x - v`` for a large ``x`` allocates a tensor as big as ``x``, and on CPU the page
faults of that fresh allocation cost more than the arithmetic. The Gram identity
``||x_i||^2 - 2 x_i.v + ||v||^2`` avoids the temporary but loses
``eps * (||x_i||^2 + ||v||^2)``, all of the answer when ``x_i`` is close to ``v``
relative to their norms. Here the differences are formed a block of columns at a
time (a temporary of about 4 MiB that stays in cache), each block's row norms
are taken in the input's dtype and their squares summed in float64
(:func:`_add_block`). Off the CPU one block covers every column.
"""

# Measured on (100, 1_000_000) float32, one thread (benchmarks/bench_defences.py has the
# full comparison): x - v ~100 ms against ~27 ms for a matrix-vector product that reads x
# once; the blocked squared distances ~45 ms, relative error ~7e-8, where one vector_norm
# over all the columns in float32 had ~7e-6.

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

# Elements of one (m, block) temporary: 4 MiB in float32, small enough to stay in cache.
_BLOCK_ELEMENTS = 1 << 20


def _column_blocks(x: Tensor) -> Iterator[slice]:
    """Slices of the columns of ``x`` (m, d) sized so that one (m, block) temporary is ~4 MiB on CPU."""
    d = x.shape[1]
    width = d if x.device.type != "cpu" else max(256, _BLOCK_ELEMENTS // max(x.shape[0], 1))
    for start in range(0, d, width):
        yield slice(start, min(d, start + width))


def _row_sq_dists(x: Tensor, centre: Tensor | None = None) -> Tensor:
    r"""``sum_j (x_ij - c_j)^2`` for every row, as float64 ``(m,)``, from column blocks.

    ``centre`` (d,) defaults to 0 (squared norms). A row whose block sums overflow
    the dtype comes out ``inf``; :func:`_row_dists` rescales such rows.
    """
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for cols in _column_blocks(x):
        _add_block(out, x[:, cols] if centre is None else x[:, cols] - centre[cols])
    return out


def _add_block(acc: Tensor, diff: Tensor) -> None:
    """``acc += sum_j diff_ij^2`` per row: the block's norm in its dtype, squared and summed in float64."""
    # One fused vector_norm per block (no squared temporary) is accurate over a block and
    # measured 1.7x faster than (diff * diff).sum(1); a float64 reduction (dtype=float64)
    # converts every element and was 14x slower.
    acc += torch.linalg.vector_norm(diff, dim=1).double().square_()


def _row_dists(x: Tensor, centre: Tensor | None = None, sq: Tensor | None = None) -> Tensor:
    r"""Euclidean distances ``||x_i - c||`` (float64, ``(m,)``), rescaling rows whose squares overflow.

    ``sq`` may pass the squared distances from :func:`_row_sq_dists` when already
    known. A row of finite entries whose squared distance overflows (entries
    beyond ~1.8e19 in float32 or ~1e154 in float64) is recomputed as
    ``a * ||(x_i - c) / a||`` with ``a = max_j |x_ij - c_j|``, so it keeps a finite
    distance and hence a direction; a row with a NaN or infinite entry gets
    ``nan`` or ``inf`` as it comes (the callers treat those rows themselves).
    """
    if sq is None:
        sq = _row_sq_dists(x, centre)
    dist = sq.sqrt()
    overflow = torch.isinf(dist)
    if bool(overflow.any()):
        for i in torch.nonzero(overflow).flatten().tolist():
            row = x[i] if centre is None else x[i] - centre
            if bool(torch.isfinite(row).all()):
                top = row.abs().max().double()
                dist[i] = top * torch.linalg.vector_norm(row.double() / top)
    return dist
