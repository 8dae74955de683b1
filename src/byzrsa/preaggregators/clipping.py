"""Pre-aggregators that rescale rows: static norm clipping and adaptive robust clipping (ARC)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from byzrsa.aggregators._blocks import _row_dists
from byzrsa.aggregators._common import _check_f, _check_matrix
from byzrsa.errors import ConfigError

__all__ = ["norm_clipping", "adaptive_robust_clipping", "arc_count"]


def _scaled(x: Tensor, norms: Tensor, threshold: float) -> Tensor:
    """``x_i * min(1, threshold / ||x_i||)``; rows with a non-finite norm (a NaN or inf entry) unchanged."""
    # where(norm > C) rather than min(1, C / norm): a zero row stays zero (0/0 is not needed) and
    # a row at exactly the threshold is copied bit for bit.
    scale = torch.where(norms > threshold, threshold / norms, torch.ones_like(norms))
    scale = scale.masked_fill(~torch.isfinite(norms), 1.0)
    return x * scale.to(x.dtype)[:, None]


def _check_tau(tau: Any) -> float:
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise ConfigError(f"clip tau must be a number > 0, got {tau!r}") from None
    if not (tau > 0 and math.isfinite(tau)):
        raise ConfigError(f"clip tau must be a finite number > 0, got {tau}")
    return tau


def norm_clipping(x: Tensor, f: int, generator: torch.Generator | None = None, tau: float = 2.0) -> Tensor:
    r"""Static norm clipping: every row longer than :math:`\tau` is scaled to length :math:`\tau`.

    .. math:: y_i = x_i \min\Bigl(1, \frac{\tau}{\|x_i\|_2}\Bigr)

    The static baseline of Allouah et al. (ICLR 2025, see
    :func:`adaptive_robust_clipping`), whose experiments use :math:`\tau = 2`,
    the default here (and ByzFL's). :math:`\tau` is absolute, so the map is
    neither translation- nor scale-equivariant.

    Parameters
    ----------
    x : Tensor, shape (n, d)
    f : int
        Declared Byzantine rows (not used).
    generator : unused
    tau : float
        Clipping threshold ``> 0``.

    Returns
    -------
    Tensor, shape (n, d), dtype and device of ``x`` (a new tensor)

    Non-finite rows: a row with a NaN or infinite entry has no length to clip
    to (nor a direction, for NaN) and is passed through unchanged, for the rule
    to treat as it documents. A finite row whose squared norm overflows is
    clipped along its direction (the norm is rescaled, see
    :func:`~byzrsa.aggregators._blocks._row_dists`). Norms are taken per block of
    columns with their squares summed in float64 (about 1e-7 relative in
    float32), so a row's fate does not hinge on a long float32 accumulation.
    """
    _check_matrix(x)
    _check_f(f)
    tau = _check_tau(tau)
    return _scaled(x, _row_dists(x), tau)


def arc_count(n: int, f: int) -> int:
    r"""How many rows ARC clips: :math:`k = \lfloor 2 (f / n) (n - f) \rfloor`, in integer arithmetic."""
    return (2 * f * (n - f)) // n


def _check_arc(n: int, f: int) -> None:
    if f > n:
        raise ConfigError(f"arc needs f <= n rows: got n = {n}, f = {f}")


def adaptive_robust_clipping(x: Tensor, f: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Adaptive robust clipping, ARC.

    Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, *Adaptive Gradient
    Clipping for Robust Federated Learning*, ICLR 2025 (arXiv:2405.14432).

    Clip the :math:`k` longest rows to the length of the :math:`(k+1)`-th longest:

    .. math:: k = \Bigl\lfloor 2 \frac{f}{n} (n - f) \Bigr\rfloor, \qquad
              C = \|x_{\pi(k+1)}\|_2, \qquad y_i = x_i \min\Bigl(1, \frac{C}{\|x_i\|_2}\Bigr),

    where :math:`\pi` orders the rows by decreasing norm. As
    :math:`2 (f/n)(n - f) \le n/2`, there always is a :math:`(k+1)`-th row;
    ``f = 0`` clips nothing. The formula for :math:`k` and the threshold are the
    paper's, and ByzFL (the authors' library) computes the same. Rows tied with
    :math:`C` are unchanged, so which of several equally long rows counts as
    "among the k" does not matter. The map is scale-equivariant (``C`` scales
    with the rows) but not translation-equivariant.

    The paper's venue: this work first appeared as arXiv:2405.14432 (2024,
    "Boosting Robustness by Clipping Gradients in Distributed Learning") and was
    published at ICLR 2025.

    Parameters
    ----------
    x : Tensor, shape (n, d)
    f : int
        Declared Byzantine rows, ``0 <= f <= n``.
    generator : unused

    Returns
    -------
    Tensor, shape (n, d), dtype and device of ``x`` (a new tensor)

    Non-finite rows: a row with a NaN or infinite entry counts as infinitely
    long, so it is among the :math:`k` longest, but it is passed through
    unchanged (it has no length to clip); if more than :math:`k` rows are
    non-finite, :math:`C` is infinite and no finite row is clipped. Norms as in
    :func:`norm_clipping`.
    """
    n = _check_matrix(x)
    f = _check_f(f)
    _check_arc(n, f)
    k = arc_count(n, f)
    norms = _row_dists(x)
    if k == 0:
        return x.clone()
    ranked = torch.nan_to_num(norms, nan=math.inf)
    threshold = float(torch.topk(ranked, k + 1).values[k])
    return _scaled(x, norms, threshold)
