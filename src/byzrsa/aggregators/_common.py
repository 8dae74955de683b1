"""Shared pieces of the rules: input checks, NaN handling, order statistics, row means."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byzrsa.errors import ConfigError, config_int

# ----------------------------------------------------------------------------- checks


def _check_matrix(x: Any) -> int:
    """Return ``m`` after checking that ``x`` is a non-empty floating (m, d) tensor."""
    if not isinstance(x, Tensor):
        raise ConfigError(f"aggregation rules take a torch.Tensor of shape (m, d), got {type(x).__name__}")
    if x.ndim != 2:
        raise ConfigError(f"aggregation rules take a tensor of shape (m, d), got shape {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ConfigError("aggregation rules need at least one row (message), got m = 0")
    if not x.is_floating_point():
        raise ConfigError(f"aggregation rules need a floating-point tensor, got {x.dtype}")
    return int(x.shape[0])


def _check_f(f: Any) -> int:
    return config_int(f, "the number of Byzantine rows f", minimum=0)


def _check_krum(name: str, m: int, f: int) -> None:
    if m < 2 * f + 3:
        fix = f"use f <= {(m - 3) // 2}" if m >= 3 else "it needs at least 3 rows"
        raise ConfigError(f"{name} needs m >= 2f + 3 rows: got m = {m}, f = {f} (needs m >= {2 * f + 3}; {fix})")


def _check_trimmed(m: int, f: int) -> None:
    if m <= 2 * f:
        raise ConfigError(
            f"trimmed-mean needs m > 2f rows: got m = {m}, f = {f} (needs m >= {2 * f + 1}; use f <= {(m - 1) // 2})"
        )


def _nan_as_inf(x: Tensor) -> Tensor:
    # Only copy when there is a NaN. A NaN entry makes the sum NaN, and one reduction is
    # ~10x cheaper than isnan(x).any(); a NaN sum without NaN entries (inf - inf) just
    # takes the exact path.
    if bool(torch.isnan(x.sum())):
        return torch.where(torch.isnan(x), torch.full((), math.inf, dtype=x.dtype, device=x.device), x)
    return x


def _middle(x: Tensor, lo: int, hi: int) -> Tensor:
    """Order statistics ``lo .. hi - 1`` (0-based, ascending) of every column, as ``(hi - lo, d)`` rows in no order.

    A selection, never a sort. On CPU (float32/float64) NumPy's introselect
    (``np.partition`` with ``kth = [lo, hi - 1]``: everything between those two
    positions is then between them in value) measured 1.3-1.9x faster than two
    ``topk`` selections, and faster than ``torch.median`` ((100, 100_000): ~0.22 s
    vs ~0.37 s for the median, ~0.29 s vs ~0.54 s for the trimmed mean; (20, 7850):
    3.7 ms vs 4.9 ms). Elsewhere: the ``hi`` smallest, then the ``hi - lo`` largest of those.
    """
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not x.requires_grad:
        return torch.from_numpy(np.partition(x.numpy(), sorted({lo, hi - 1}), axis=0)[lo:hi])
    low = torch.topk(x, hi, dim=0, largest=False, sorted=False).values
    return torch.topk(low, hi - lo, dim=0, largest=True, sorted=False).values


def _half_sum(a: Tensor, b: Tensor) -> Tensor:
    # (a + b)/2 is the correctly rounded midpoint (and exactly a when a == b, even for
    # subnormals, where a/2 + b/2 is not); fall back to a/2 + b/2 where a + b overflows.
    mid = (a + b) / 2
    overflow = torch.isinf(mid) & torch.isfinite(a) & torch.isfinite(b)
    return torch.where(overflow, a / 2 + b / 2, mid)


# ----------------------------------------------------------------------------- rules
def _rows_mean(x: Tensor, rows: Tensor | None = None) -> Tensor:
    """Mean of the ``rows`` of ``x`` (every row by default), as one matrix-vector product on CPU.

    A sum over dim 0 is a strided reduction; ``ones @ x`` is a BLAS matrix-vector
    product that reads ``x`` once: measured 2.4x faster than ``x.mean(0)`` at
    (100, 1_000_000) float32 (35 ms vs 84 ms), and for multi-Krum it avoids copying
    the selected rows. Rows outside ``rows`` get weight 0, so they must be finite
    (0 * inf is NaN); the caller guarantees that.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return (x if rows is None else x.index_select(0, rows)).mean(dim=0)
    if rows is None:
        return (torch.ones(x.shape[0], dtype=x.dtype) @ x).div_(x.shape[0])
    weights = torch.zeros(x.shape[0], dtype=x.dtype)
    weights[rows] = 1.0
    return (weights @ x).div_(rows.numel())


def _non_finite_rows(x: Tensor) -> Tensor:
    # A NaN or inf entry makes the row sum non-finite; one reduction is ~30x cheaper than
    # isfinite(x).all(1). (A finite row whose sum overflows is flagged too: its entries
    # exceed max/d, so its squared norm overflows anyway.)
    return ~torch.isfinite(x.sum(dim=1))


# Squared distances of float32 rows under/overflow when entries leave about [1e-19, 1e19]; inside
# [2^-40, 2^40] they are safe in every floating dtype byzrsa uses.
_SAFE = (2.0**-40, 2.0**40)


def power_of_two_scale(x: Tensor, bad: Tensor) -> float | None:
    """A power of two near the largest finite entry of ``x``, when squares of the data could under/overflow.

    Dividing by a power of two is exact (no rounding), so a rule that works on
    ``x / scale`` and maps its result back is scale-equivariant at every scale
    its dtype can represent, not only where squared distances stay finite.
    None when the data are in the safe range (the usual case: no extra pass).
    """
    good = x[~bad] if bool(bad.any()) else x
    if good.numel() == 0:
        return None
    peak = float(good.abs().amax())
    if peak == 0.0 or _SAFE[0] <= peak <= _SAFE[1]:
        return None
    return 2.0 ** math.floor(math.log2(peak))
