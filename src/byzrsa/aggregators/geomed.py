"""The geometric median (Weiszfeld in the Vardi-Zhang form) with a relative stopping rule."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byzrsa.aggregators._common import _check_matrix, _half_sum, _non_finite_rows, power_of_two_scale
from byzrsa.aggregators.coordinate import median
from byzrsa.errors import ConfigError, config_int

__all__ = ["geometric_median", "geometric_median_with_info"]


def _check_tol(tol: Any, max_iter: Any) -> tuple[float, int]:
    try:
        tol = float(tol)
    except (TypeError, ValueError):
        raise ConfigError(f"geomed tol must be a number >= 0, got {tol!r}") from None
    if not (tol >= 0 and math.isfinite(tol)):
        raise ConfigError(f"geomed tol must be a finite number >= 0, got {tol}")
    return tol, config_int(max_iter, "geomed max_iter", minimum=0)


# A point closer to the iterate than this fraction of the data scale counts as coinciding
# with it (Vardi-Zhang step). Far below float32 resolution, so it only catches exact hits.
_COINCIDE = 1e-12
# The Gram identity for ||y_i - z||^2 loses about eps * (||y_i||^2 + ||z||^2); where the
# result is smaller than this fraction of that, recompute the distance from the difference.
_CANCEL = 1e-4
# When the iterate comes within this fraction of the data scale of a row (and again each
# time it gets this factor closer), that row is tested as a candidate optimum.
_NEAR = 1e-2


def _check_previous(previous: Any, x: Tensor) -> Tensor | None:
    """``previous`` in ``x``'s dtype and device; None when absent or not finite (then the start is cold)."""
    if previous is None:
        return None
    if not isinstance(previous, Tensor) or previous.shape != (x.shape[1],):
        shape = tuple(previous.shape) if isinstance(previous, Tensor) else type(previous).__name__
        raise ConfigError(f"geomed previous must be a tensor of shape ({x.shape[1]},), got {shape}")
    previous = previous.to(dtype=x.dtype, device=x.device)
    return previous if bool(torch.isfinite(previous.sum())) else None


def _distances(y: Tensor, sq: Tensor, z: Tensor, zz: Tensor) -> Tensor:
    """``||y_i - z||`` by the Gram identity, rows where it cancels badly recomputed from the difference."""
    d2 = sq - 2 * (y @ z) + zz
    shaky = d2 <= _CANCEL * (sq + zz)
    if bool(shaky.any()):
        d2 = d2.clone()
        d2[shaky] = ((y[shaky] - z) ** 2).sum(dim=1)
    return d2.sqrt()


def geometric_median_with_info(
    x: Tensor, tol: float = 1e-7, max_iter: int = 1000, *, previous: Tensor | None = None
) -> tuple[Tensor, int]:
    r"""Geometric median and the number of Weiszfeld iterations used.

    Minimises :math:`F(z) = \sum_i \|x_i - z\|_2` with the Weiszfeld iteration in
    the Vardi-Zhang form (Vardi & Zhang, PNAS 2000), which is plain Weiszfeld

    .. math:: z \leftarrow \frac{\sum_i w_i x_i}{\sum_i w_i}, \qquad w_i = 1/\|x_i - z\|

    away from the data points, and which also handles an iterate that lands on
    a data point (plain Weiszfeld with a clamped weight gets stuck there even
    when that point is not optimal): with :math:`\eta` rows at the iterate,
    :math:`T` the Weiszfeld map over the other rows and :math:`r = \|\sum_{x_i \ne z}
    (x_i - z)/\|x_i - z\|\|`, the step is :math:`z \leftarrow (1 - \eta/r)^+ T +
    \min(1, \eta/r) z` (so it stops at a data point exactly when that point is
    optimal, :math:`r \le \eta`).

    Plain Weiszfeld also crawls when the iterate is merely *near* a row: that
    row's weight swamps the others and the step shrinks whether or not the row
    is optimal, so a step-based stopping rule could fire at a non-optimal point
    (e.g. when the coordinate-wise median start lies 1e-7 from a row). So when
    the iterate comes within ``1e-2 * s`` of a row (and again each time it gets
    100 times closer to it), that row is tested as a vertex with the exact
    condition :math:`r \le \eta (1 + \sqrt{\epsilon_{mach}})` evaluated at the
    row (the slack keeps rounding from rejecting a vertex with :math:`r = \eta`
    exactly, where the iterate would only creep towards it): if it holds, the row
    itself is returned (the exact minimiser, also reached faster than by the
    linear approach); otherwise the Vardi-Zhang step out of the row is taken
    when it has a lower objective than the iterate. Each test costs one extra
    pass over ``x``.

    Start: the coordinate-wise :func:`median` ``c`` (translation- and
    scale-equivariant), or, warm, ``previous`` (the previous round's aggregate,
    which the engines pass: the rule's entry says ``uses_previous``) when its
    objective :math:`F` is lower than that of ``c``. Consecutive rounds'
    messages are close, so a warm start saves iterations (see below); it never
    starts worse than the cold one, and it changes neither the point the
    iteration converges to (the minimiser of ``F``, which does not depend on
    the start) nor the stopping rule (same ``s``, same ``tol``), so both starts
    stop within the same tolerance of it. Scale: :math:`s =
    \operatorname{median}_i \|x_i - c\|`, the median distance of the rows to
    ``c``, whatever the start. The iteration runs in the
    centred coordinates :math:`y_i = x_i - c` (which also keeps the floating-point
    error small) and stops when

    .. math:: \|z_{k+1} - z_k\| \le \mathrm{tol} \cdot s

    or after ``max_iter`` iterations. ``s`` is unchanged by a translation of the
    data and multiplied by ``a`` when the data are scaled by ``a > 0``, and so
    is the step length, so the stopping iteration (and hence the output, up to
    rounding) is translation- and scale-equivariant; a bare ``||z||`` in the
    denominator would not be. Being a median, ``s`` also cannot be inflated by
    fewer than ``m / 2`` outliers, so outliers cannot loosen the rule. If
    ``s = 0``, more than half of the rows equal ``c``, which is then the exact
    geometric median and is returned after 0 iterations. A point counts as
    coinciding with the iterate when closer than ``1e-12 * s`` (the relative
    ``eps``; weights are ``s / ||x_i - z||``, dimensionless, at most ``1e12``).

    Distances: per iteration one matrix-vector product, ``||y_i - z||^2 =
    ||y_i||^2 - 2 y_i.z + ||z||^2`` with the row norms computed once; rows where
    that identity cancels badly (result below ``1e-4`` of ``||y_i||^2 + ||z||^2``,
    i.e. the iterate is very near that row) are recomputed from the difference.
    Measured on (100, 100_000) float32 CPU: ~3.5 ms per iteration against ~40 ms
    for ``(y - z).norm(dim=1)`` and ~14 ms for ``torch.cdist``, with the same
    accuracy. Everything stays in the input's dtype.

    Parameters
    ----------
    x : Tensor, shape (m, d)
    tol : float
        Relative tolerance of the stopping rule above (default ``1e-7``).
    max_iter : int
        Most Weiszfeld iterations (default ``1000``); ``0`` returns ``c``.
    previous : Tensor of shape (d,), optional
        A warm start (above); ignored when it has a non-finite entry or is
        no better than ``c``, and None (the default) starts cold.

    Returns
    -------
    (Tensor of shape (d,), int)
        The estimate and the number of iterations run.

    Warm start, measured (``benchmarks/bench_aggregators.py``, docs/performance.md): in
    the paper's setting (mnist-sample, m = 20, 5000 rounds) the iterations per round
    drop from 8-20 (cold) to a few, the result stays within the tolerance of the
    cold start's, and the stopping rule is the same.

    Non-finite rows: a row with a non-finite entry (or whose sum overflows
    the dtype) is dropped before the iteration, so such a row cannot move the
    estimate at all. This is a
    convention, not a limit: a finite row moved off to infinity keeps pulling
    the geometric median with unit force (its weight tends to 0 but its
    direction does not), whereas a NaN or infinite entry carries no usable
    direction. Rows whose squared distance to ``c`` overflows the dtype (a
    distance above about ``1.8e19`` in float32) are dropped too: they do carry
    a direction, so this departs from the exact minimiser, but only for rows
    that far out, and with fewer than ``m / 2`` such rows the estimate stays
    bounded either way. If every row is non-finite, the (non-finite)
    :func:`mean` is returned;
    if every finite row overflows, ``c`` is returned.
    """
    _check_matrix(x)
    tol, max_iter = _check_tol(tol, max_iter)
    start = _check_previous(previous, x)
    bad = _non_finite_rows(x)
    if bool(bad.any()):
        if bool(bad.all()):
            return x.mean(dim=0), 0
        x = x[~bad]
    scale = power_of_two_scale(x, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
    if scale is not None:  # exact rescaling: squared distances neither underflow nor overflow
        warm = start / scale if start is not None else None
        z, iterations = geometric_median_with_info(x / scale, tol=tol, max_iter=max_iter, previous=warm)
        return z * scale, iterations
    c = median(x)
    if x.shape[0] <= _GRAM_ROWS:
        return _gram_weiszfeld(x, c, start, tol, max_iter)
    y = x - c
    sq = _row_sq(y)
    near_enough = torch.isfinite(sq)
    if not bool(near_enough.all()):
        if not bool(near_enough.any()):
            return c, 0
        x, y, sq = x[near_enough], y[near_enough], sq[near_enough]
    s = _true_median(sq.sqrt())
    if s == 0.0 or max_iter == 0:
        return c, 0
    # The iteration runs in coordinates centred at its start (z = 0 there): c, or previous.
    origin, rows, rows_sq = c, y, sq
    if start is not None:
        moved = x - start
        moved_sq = _row_sq(moved)
        if float(moved_sq.sqrt().sum()) < float(sq.sqrt().sum()):  # F(previous) < F(c): start there
            origin, rows, rows_sq = start, moved, moved_sq
    return _weiszfeld(x, origin, rows, rows_sq, s, tol, max_iter)


def _true_median(v: Tensor) -> float:
    """The true median of the finite values ``v (m,)``: what :func:`median` gives on ``v[:, None]``."""
    srt = torch.sort(v).values
    n = srt.shape[0]
    return float(srt[n // 2]) if n % 2 else float(_half_sum(srt[n // 2 - 1], srt[n // 2]))


def _row_sq(y: Tensor) -> Tensor:
    """Squared row norms of ``y``, as pairwise sums over blocks of rows.

    Not ``vector_norm(y, dim=1) ** 2``: in float32 it accumulates with ~1e-4 relative error at
    d = 1e6 (measured), which moved the fixed point by 6e-6 s whatever the tolerance. A
    pairwise sum is exact to ~1e-7; taken over blocks of rows, no (m, d) temporary.
    """
    return torch.cat([(block * block).sum(dim=1) for block in y.split(8)])


def _weiszfeld(
    x: Tensor, origin: Tensor, y: Tensor, sq: Tensor, s: float, tol: float, max_iter: int
) -> tuple[Tensor, int]:
    """The iteration on explicit ``(d,)`` iterates ``z`` (rows ``y = x - origin``, ``sq`` their squared norms)."""
    eps = _COINCIDE * s
    z = torch.zeros_like(origin)
    zz = torch.zeros((), dtype=x.dtype, device=x.device)
    dist: Tensor | None = None  # the distances at z, when already known
    checked: dict[int, float] = {}  # row -> its distance to z when last tested as a vertex
    it = 0
    while it < max_iter:
        it += 1
        if dist is None:
            dist = _distances(y, sq, z, zz)
        k = int(dist.argmin())
        near = float(dist[k])
        if eps < near <= _NEAR * s and near <= _NEAR * checked.get(k, math.inf):
            # Near a row, its weight swamps the others and the steps shrink whether or
            # not that row is optimal (plain Weiszfeld's trap). Test the row as a vertex:
            # return it if optimal, else jump to the Vardi-Zhang step out of it if better.
            checked[k] = near
            z_out = _vardi_zhang_step(y, y[k], torch.linalg.vector_norm(y - y[k], dim=1), s, eps)
            if z_out is None:
                return x[k].clone(), it
            if _objective(y, z_out) < float(dist.sum()):
                z, zz, dist = z_out, z_out @ z_out, None
                continue
        z_new = _vardi_zhang_step(y, z, dist, s, eps)
        if z_new is None:  # z sits on a data point that is optimal
            return x[k].clone(), it
        step = float(torch.linalg.vector_norm(z_new - z))
        z, zz, dist = z_new, z_new @ z_new, None
        if step <= tol * s:
            break
    return origin + z, it


# ----------------------------------------------------------------------------- few rows: the Gram form

# Up to this many rows the iteration runs on the Gram matrix (below); beyond, on explicit iterates.
_GRAM_ROWS = 64
# Columns per block when float64 products are accumulated, and the most entries whose
# float64 rows are kept for the whole call (they are read again at the end).
_GRAM_BLOCK = 1 << 16
_GRAM_KEEP = 1 << 22
# The float64 Gram identity loses about eps64 * sqrt(d) * (||y_i||^2 + ||z||^2); where a squared
# distance is below this fraction of that scale, it is recomputed from the difference.
_GRAM_CANCEL = 1e-8


class _Gram:
    """Iterates as coefficients over a few float64 rows, distances from their Gram matrix.

    The rows are ``y_i = x_i - c`` and, for a warm start, one more row
    ``v = previous - c``. Every Weiszfeld iterate is a combination ``z = a @ rows``
    (the weighted mean of the data rows, the Vardi-Zhang mix of it with the
    previous iterate, a data row, the start), so ``||y_i - z||^2 = H_ii - 2 (H a)_i +
    a^T H a`` with ``H = rows rows^T`` needs no pass over the data: after one
    ``(m, d) x (d, m)`` product an iteration costs O(m^2), on the host.
    """

    def __init__(self, x: Tensor, c: Tensor, start: Tensor | None) -> None:
        self.x, self.c, self.m = x, c, x.shape[0]
        self.v64 = start.double() - c.double() if start is not None else None
        keep = x.shape[0] * x.shape[1] <= _GRAM_KEEP
        self._kept: list[Tensor] | None = [] if keep else None
        n = self.m + (self.v64 is not None)
        h = torch.zeros(n, n, dtype=torch.float64, device=x.device)
        for lo, block in self.blocks(fresh=True):
            h[: self.m, : self.m].addmm_(block, block.T)
            if self.v64 is not None:
                v = self.v64[lo : lo + block.shape[1]]
                h[: self.m, self.m].addmv_(block, v)
                h[self.m, self.m] += v @ v
            if self._kept is not None:
                self._kept.append(block)
        if self.v64 is not None:
            h[self.m, : self.m] = h[: self.m, self.m]
        self.h = h.cpu().numpy()
        self.hd = np.diagonal(self.h)[: self.m].copy()

    def blocks(self, fresh: bool = False) -> Iterator[tuple[int, Tensor]]:
        """``(first column, float64 block (m, columns))`` of the data rows minus ``c``."""
        if self._kept is not None and not fresh:
            yield from zip(range(0, self.x.shape[1], _GRAM_BLOCK), self._kept)
            return
        for lo in range(0, self.x.shape[1], _GRAM_BLOCK):
            # y = x - c rounded in x's dtype, as the explicit iteration has it (and ~10x faster
            # than a mixed-dtype subtraction); the products are then taken in float64.
            yield lo, (self.x[:, lo : lo + _GRAM_BLOCK] - self.c[lo : lo + _GRAM_BLOCK]).double()

    def point(self, a: np.ndarray) -> Tensor:
        """``z = a @ rows`` as a float64 ``(d,)`` tensor, on the data's device."""
        coef = torch.from_numpy(a[: self.m]).to(self.x.device)
        z = torch.cat([coef @ block for _, block in self.blocks()])
        return z.add_(self.v64, alpha=float(a[self.m])) if self.v64 is not None and a[self.m] else z

    def _exact(self, rows: np.ndarray, z: Tensor) -> np.ndarray:
        """``||y_i - z||^2`` for the data rows ``rows``, from the rows themselves."""
        index = torch.from_numpy(rows).to(self.x.device)
        d2 = torch.zeros(rows.shape[0], dtype=torch.float64, device=self.x.device)
        for lo, block in self.blocks():
            diff = block.index_select(0, index) - z[lo : lo + block.shape[1]]
            d2 += (diff * diff).sum(dim=1)
        return d2.cpu().numpy()

    def distances(self, a: np.ndarray) -> np.ndarray:
        """``||y_i - z||`` for the m data rows, rows where the identity cancels recomputed."""
        ha = self.h[: self.m] @ a
        aha = float(a @ self.h @ a)
        d2 = self.hd - 2.0 * ha + aha
        shaky = d2 <= _GRAM_CANCEL * (self.hd + aha)
        if shaky.any():
            d2[shaky] = self._exact(np.flatnonzero(shaky), self.point(a))
        return np.sqrt(np.maximum(d2, 0.0))

    def norm(self, a: np.ndarray) -> float:
        """``||a @ rows||`` for coefficients summing to 0 (a difference of two iterates)."""
        return math.sqrt(max(float(a @ self.h @ a), 0.0))

    def vertex_distances(self, k: int) -> np.ndarray:
        """``||y_i - y_k||`` for every data row (copies of row k come out exactly 0)."""
        d2 = self.hd + self.hd[k] - 2.0 * self.h[k, : self.m]
        d2[k] = 0.0
        shaky = d2 <= _GRAM_CANCEL * (self.hd + self.hd[k])
        shaky[k] = False
        if shaky.any():
            d2[shaky] = self._exact(np.flatnonzero(shaky), self.point(self.unit(k)))
        return np.sqrt(np.maximum(d2, 0.0))

    def unit(self, i: int) -> np.ndarray:
        a = np.zeros(self.h.shape[0])
        a[i] = 1.0
        return a


def _gram_step(g: _Gram, a: np.ndarray, dist: np.ndarray, s: float, eps: float, slack: float) -> np.ndarray | None:
    """:func:`_vardi_zhang_step` on coefficients; None if the iterate is an optimal data point."""
    coincide = dist <= eps
    eta = int(coincide.sum())
    if eta == g.m:
        return None
    target = np.zeros(g.h.shape[0])
    w = np.where(coincide, 0.0, s / np.maximum(dist, eps))
    total = float(w.sum())
    target[: g.m] = w / total
    if not eta:
        return target
    r = total * g.norm(target - a) / s
    if r <= eta * (1 + slack):
        return None
    theta = eta / r
    return (1 - theta) * target + theta * a


def _gram_weiszfeld(x: Tensor, c: Tensor, start: Tensor | None, tol: float, max_iter: int) -> tuple[Tensor, int]:
    """:func:`geometric_median_with_info` after the median, for few rows: the iteration on the Gram matrix.

    The same start (``c``, or ``previous`` when its objective is lower), scale ``s``,
    steps, vertex tests and stopping rule as :func:`_weiszfeld`; distances and steps
    come from the float64 Gram matrix (rows where it cancels recomputed), so the
    small arithmetic runs on the host and on a GPU a call synchronises a handful of
    times instead of several times per iteration.
    """
    g = _Gram(x, c, start)
    radii = np.sort(np.sqrt(g.hd))
    n = radii.shape[0]
    s = float(radii[n // 2]) if n % 2 else float((radii[n // 2 - 1] + radii[n // 2]) / 2)  # median ||y_i||
    if s == 0.0 or max_iter == 0:
        return c, 0
    eps = _COINCIDE * s
    slack = math.sqrt(torch.finfo(x.dtype).eps)
    a = np.zeros(g.h.shape[0])  # z = 0: the start c
    dist: np.ndarray | None = np.sqrt(g.hd)
    if start is not None:
        warm = g.distances(g.unit(g.m))
        if float(warm.sum()) < float(dist.sum()):  # F(previous) < F(c): start there
            a, dist = g.unit(g.m), warm
    checked: dict[int, float] = {}
    it = 0
    while it < max_iter:
        it += 1
        if dist is None:
            dist = g.distances(a)
        k = int(dist.argmin())
        near = float(dist[k])
        if eps < near <= _NEAR * s and near <= _NEAR * checked.get(k, math.inf):
            checked[k] = near
            a_out = _gram_step(g, g.unit(k), g.vertex_distances(k), s, eps, slack)
            if a_out is None:
                return x[k].clone(), it
            if float(g.distances(a_out).sum()) < float(dist.sum()):
                a, dist = a_out, None
                continue
        a_new = _gram_step(g, a, dist, s, eps, slack)
        if a_new is None:
            return x[k].clone(), it
        step = g.norm(a_new - a)
        a, dist = a_new, None
        if step <= tol * s:
            break
    return (c.double() + g.point(a)).to(x.dtype), it


def _vardi_zhang_step(y: Tensor, z: Tensor, dist: Tensor, s: float, eps: float) -> Tensor | None:
    """One Weiszfeld step from ``z`` given ``dist = ||y_i - z||``; ``None`` if ``z`` is an optimal data point.

    ``z`` counts as optimal when ``r <= eta * (1 + sqrt(machine eps))``: rounding in ``r``
    must not reject an optimal vertex with ``r = eta`` exactly (a degenerate but common
    case for data on a grid, where the iterate only creeps towards the vertex), and a
    vertex with ``r = eta (1 + delta)`` is within ``O(delta^2)`` of the minimum anyway.
    """
    coincide = dist <= eps
    eta = int(coincide.sum())
    if eta == y.shape[0]:
        return None
    w = torch.where(coincide, torch.zeros((), dtype=y.dtype, device=y.device), s / dist.clamp_min(eps))
    total = w.sum()
    target = (w @ y) / total
    if not eta:
        return target
    # r = || sum of the unit vectors from z to the other rows || = total * ||target - z|| / s
    r = float(total * torch.linalg.vector_norm(target - z)) / s
    if r <= eta * (1 + math.sqrt(torch.finfo(y.dtype).eps)):
        return None  # the subgradient condition holds at z
    theta = eta / r
    return (1 - theta) * target + theta * z


def _objective(y: Tensor, z: Tensor) -> float:
    return float(torch.linalg.vector_norm(y - z, dim=1).sum())


def geometric_median(
    x: Tensor, tol: float = 1e-7, max_iter: int = 1000, warm: bool = True, *, previous: Tensor | None = None
) -> Tensor:
    r"""Geometric median :math:`\arg\min_z \sum_i \|x_i - z\|_2` by Weiszfeld's iteration.

    See :func:`geometric_median_with_info` for the iteration (Vardi-Zhang form,
    started at the coordinate-wise median or, warm, at ``previous``), the relative stopping rule
    ``||z_{k+1} - z_k|| <= tol * median_i ||x_i - median(x)||``, and the
    treatment of non-finite rows (dropped; all non-finite returns the mean).

    Parameters
    ----------
    x : Tensor, shape (m, d)
    tol : float
        Relative tolerance (default ``1e-7``).
    max_iter : int
        Most iterations (default ``1000``).
    warm : bool
        Start at ``previous`` when it is a better start than the median (default True);
        False always starts cold.
    previous : Tensor of shape (d,), optional
        The previous round's aggregate (the engines pass it), or None.

    Returns
    -------
    Tensor, shape (d,)
    """
    return geometric_median_with_info(x, tol=tol, max_iter=max_iter, previous=previous if warm else None)[0]

