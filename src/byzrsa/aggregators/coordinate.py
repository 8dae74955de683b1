"""Coordinate-wise rules: mean, true median, trimmed mean."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from byzrsa.aggregators._common import (
    _check_f,
    _check_matrix,
    _check_trimmed,
    _half_sum,
    _middle,
    _nan_as_inf,
    _rows_mean,
)

__all__ = ["mean", "median", "trimmed_mean"]



def mean(x: Tensor) -> Tensor:
    r"""Coordinate-wise mean :math:`\frac1m \sum_i x_i`: the non-robust baseline.

    Parameters
    ----------
    x : Tensor, shape (m, d)

    Returns
    -------
    Tensor, shape (d,)

    Non-finite entries propagate (one NaN row gives a NaN output): showing that
    is the point of this baseline.
    """
    _check_matrix(x)
    return _rows_mean(x)


def _np_half_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`_half_sum` on NumPy rows, bit for bit (the same IEEE operations), without torch's per-op cost."""
    with np.errstate(over="ignore", invalid="ignore"):
        mid = (a + b) / a.dtype.type(2)
        overflow = np.isinf(mid) & np.isfinite(a) & np.isfinite(b)
        if overflow.any():
            mid = np.where(overflow, a / a.dtype.type(2) + b / a.dtype.type(2), mid)
    return mid


def median(x: Tensor) -> Tensor:
    r"""Coordinate-wise true median.

    For odd ``m`` the middle order statistic :math:`x_{((m+1)/2)}`; for even ``m``
    the mean of the two middle ones, :math:`(x_{(m/2)} + x_{(m/2+1)}) / 2`
    (``torch.median`` returns the lower one, which is not used).

    Parameters
    ----------
    x : Tensor, shape (m, d)

    Returns
    -------
    Tensor, shape (d,)

    Non-finite entries: ``+-inf`` are ordinary (extreme) values and a NaN entry
    is read as ``+inf``, so while fewer than ``m / 2`` entries of a coordinate are
    non-finite that coordinate of the output is finite and within the range of
    the finite ones.

    Implementation: on CPU, NumPy's sort along dim 0 (vectorised; faster than its
    selection, see the comment in the code); elsewhere a selection of the one or
    two middle order statistics per coordinate (:func:`_middle`, two ``topk`` calls).
    """
    m = _check_matrix(x)
    if x.device.type != "cpu":  # no host read of the data: two topk selections on the device
        return _median_on_device(x)
    x = _nan_as_inf(x)
    if x.dtype in (torch.float32, torch.float64) and not x.requires_grad:
        # NumPy's sort along dim 0 (vectorised, AVX-512 here) measured ~3x faster than its
        # introselect (np.partition, what _middle uses) at every shape tried: (20, 7850)
        # 0.63 vs 2.2 ms, (1000, 7850) 41 vs 109 ms, (100, 1e6) 0.46 vs 1.35 s. The same
        # order statistics, so the same output. The rows are copied out of the sorted array
        # so that the result does not keep it alive.
        ordered = np.sort(x.numpy(), axis=0)
        if m % 2 == 1:
            return torch.from_numpy(ordered[m // 2].copy())
        return torch.from_numpy(_np_half_sum(ordered[m // 2 - 1], ordered[m // 2]))
    if m % 2 == 1:
        return _middle(x, m // 2, m // 2 + 1)[0]
    mid = _middle(x, m // 2 - 1, m // 2 + 1)
    return _half_sum(mid[0], mid[1])


def _median_on_device(x: Tensor) -> Tensor:
    """:func:`median` without reading the data on the host (no NaN test, no NumPy): for GPUs.

    NaN entries become ``+inf`` by an unconditional ``where``; the middle order
    statistics come from two ``topk`` selections. The same values as the CPU path.
    """
    m = x.shape[0]
    x = torch.where(torch.isnan(x), torch.full((), math.inf, dtype=x.dtype, device=x.device), x)
    hi = m // 2 + 1
    low = torch.topk(x, hi, dim=0, largest=False, sorted=False).values
    if m % 2 == 1:
        return low.amax(dim=0)
    top = torch.topk(low, 2, dim=0, largest=True, sorted=True).values
    return _half_sum(top[1], top[0])


def trimmed_mean(x: Tensor, f: int) -> Tensor:
    r"""Coordinate-wise trimmed mean: drop the ``f`` largest and ``f`` smallest entries.

    .. math:: \mathrm{TM}_f(x)_j = \frac{1}{m - 2f} \sum_{r=f+1}^{m-f} x_{(r), j}

    where :math:`x_{(r), j}` is the ``r``-th smallest entry of column ``j``.
    Requires ``m > 2f`` (:class:`ConfigError` otherwise); ``f = 0`` is exactly
    :func:`mean`.

    Parameters
    ----------
    x : Tensor, shape (m, d)
    f : int
        Number of entries trimmed on each side.

    Returns
    -------
    Tensor, shape (d,)

    Non-finite entries (f > 0): a NaN entry is read as ``+inf``; so as long as
    each coordinate has at most ``f`` entries that are ``+inf``/NaN and at most
    ``f`` that are ``-inf``, they are all trimmed and the output is finite. With
    ``f = 0`` the rule is the mean and non-finite entries propagate.

    Implementation: a selection of the middle ``m - 2f`` order statistics
    (:func:`_middle`), no sort and no subtraction of trimmed sums, so an
    infinite trimmed entry cannot produce ``inf - inf``.
    """
    m = _check_matrix(x)
    f = _check_f(f)
    _check_trimmed(m, f)
    if f == 0:
        return x.mean(dim=0)
    return _middle(_nan_as_inf(x), f, m - f).mean(dim=0)


# ----------------------------------------------------------------------------- Krum
