"""The geometric median (Weiszfeld in the Vardi-Zhang form) with a relative stopping rule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from byzrsa.aggregators._common import _check_matrix, _non_finite_rows, power_of_two_scale
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


def geometric_median_with_info(x: Tensor, tol: float = 1e-7, max_iter: int = 1000) -> tuple[Tensor, int]:
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
    scale-equivariant). Scale: :math:`s = \operatorname{median}_i \|x_i - c\|`,
    the median distance of the rows to the start. The iteration runs in the
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
        Most Weiszfeld iterations (default ``1000``).

    Returns
    -------
    (Tensor of shape (d,), int)
        The estimate and the number of iterations run.

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
    bad = _non_finite_rows(x)
    if bool(bad.any()):
        if bool(bad.all()):
            return x.mean(dim=0), 0
        x = x[~bad]
    scale = power_of_two_scale(x, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device))
    if scale is not None:  # exact rescaling: squared distances neither underflow nor overflow
        z, iterations = geometric_median_with_info(x / scale, tol=tol, max_iter=max_iter)
        return z * scale, iterations
    c = median(x)
    y = x - c
    # Not vector_norm(y, dim=1) ** 2: in float32 it accumulates with ~1e-4 relative error at
    # d = 1e6 (measured), which moved the fixed point by 6e-6 s whatever the tolerance. A
    # pairwise sum is exact to ~1e-7; taken over blocks of rows, no (m, d) temporary.
    sq = torch.cat([(rows * rows).sum(dim=1) for rows in y.split(8)])
    near_enough = torch.isfinite(sq)
    if not bool(near_enough.all()):
        if not bool(near_enough.any()):
            return c, 0
        x, y, sq = x[near_enough], y[near_enough], sq[near_enough]
    s = float(median(sq.sqrt()[:, None])[0])
    if s == 0.0 or max_iter == 0:
        return c, 0
    eps = _COINCIDE * s
    z = torch.zeros_like(c)
    zz = torch.zeros((), dtype=x.dtype, device=x.device)
    checked: dict[int, float] = {}  # row -> its distance to z when last tested as a vertex
    it = 0
    while it < max_iter:
        it += 1
        d2 = sq - 2 * (y @ z) + zz
        shaky = d2 <= _CANCEL * (sq + zz)
        if bool(shaky.any()):
            d2 = d2.clone()
            d2[shaky] = ((y[shaky] - z) ** 2).sum(dim=1)
        dist = d2.sqrt()
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
                z, zz = z_out, z_out @ z_out
                continue
        z_new = _vardi_zhang_step(y, z, dist, s, eps)
        if z_new is None:  # z sits on a data point that is optimal
            return x[k].clone(), it
        step = float(torch.linalg.vector_norm(z_new - z))
        z, zz = z_new, z_new @ z_new
        if step <= tol * s:
            break
    return c + z, it


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


def geometric_median(x: Tensor, tol: float = 1e-7, max_iter: int = 1000) -> Tensor:
    r"""Geometric median :math:`\arg\min_z \sum_i \|x_i - z\|_2` by Weiszfeld's iteration.

    See :func:`geometric_median_with_info` for the iteration (Vardi-Zhang form,
    started at the coordinate-wise median), the relative stopping rule
    ``||z_{k+1} - z_k|| <= tol * median_i ||x_i - median(x)||``, and the
    treatment of non-finite rows (dropped; all non-finite returns the mean).

    Parameters
    ----------
    x : Tensor, shape (m, d)
    tol : float
        Relative tolerance (default ``1e-7``).
    max_iter : int
        Most iterations (default ``1000``).

    Returns
    -------
    Tensor, shape (d,)
    """
    return geometric_median_with_info(x, tol=tol, max_iter=max_iter)[0]

