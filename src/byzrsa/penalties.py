"""Subgradients of the lp norm, the penalty that makes RSA robust.

RSA penalises ``lambda * ||x_i - x0||_p``. Its subgradient ``z`` in ``v`` is, by
Proposition 1 of the paper, any vector with dual norm ``||z||_q <= 1``
(``1/p + 1/q = 1``) and ``<z, v> = ||v||_p``. We pick one element per norm:

* p = 1:   ``z = sign(v)`` with ``sign(0) = 0``;
* p = 2:   ``z = v / ||v||_2``, and ``z = 0`` for ``v = 0``;
* p = inf: every entry of largest magnitude gets ``sign(v_j) / n``, ``n`` the
  number of such entries; every other entry 0 (and ``z = 0`` for ``v = 0``);
* 1 < p < inf: ``z = sign(v) |v|^(p-1) / ||v||_p^(p-1)`` (``z = 0`` for ``v = 0``).

Norms are taken over the whole flattened model (the last dimension), so one
function serves a single vector ``(d,)`` and a batch of rows ``(m, d)``.

Non-finite input (docs/protocol.md convention 6): a Byzantine message may hold NaN or
inf. A NaN entry contributes 0; ``sign(+-inf) = +-1`` as usual. For p > 1, if a
row has infinite entries the finite ones vanish in the limit, so the row is
replaced by the signs of its infinite entries before the formulas above (l1 is
separable: there every finite entry keeps its sign). The result is always
finite, which is what keeps x0 unpoisoned.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from byzrsa.errors import ConfigError

__all__ = ["parse_norm", "norm_name", "dual_exponent", "subgradient", "subgradient_of_difference"]

_NAMES = {"l1": 1.0, "l2": 2.0, "linf": math.inf, "inf": math.inf}


def parse_norm(norm: str | float | int) -> float:
    """Return the exponent p of a norm given as ``"l1"``, ``"l2"``, ``"linf"`` or a number >= 1."""
    if isinstance(norm, str):
        key = norm.strip().lower()
        if key in _NAMES:
            return _NAMES[key]
        try:
            p = float(key.removeprefix("l"))
        except ValueError:
            raise ConfigError(f"unknown norm {norm!r}: use l1, l2, linf or a number p >= 1") from None
    else:
        p = float(norm)
    if not p >= 1.0:  # also rejects NaN
        raise ConfigError(f"norm exponent p must be >= 1, got {norm!r}")
    return p


def norm_name(p: float) -> str:
    """Short name of the norm with exponent p (``l1``, ``l2``, ``linf``, ``l3.5``)."""
    if math.isinf(p):
        return "linf"
    return f"l{p:g}"


def dual_exponent(p: float) -> float:
    """The q with 1/p + 1/q = 1 (the dual norm's exponent)."""
    if p == 1.0:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1.0)


def _sanitize(v: Tensor) -> Tensor:
    """Zero NaN entries; reduce rows with infinite entries to the signs of those entries."""
    # A finite sum proves every entry finite (NaN and inf propagate; an overflowing sum of
    # finite entries only sends us down the full path). One read instead of four passes
    # for what is nearly always the case: a regular worker's own difference x_i - x0.
    # On CUDA the check would cost a device sync every step, so the passes run instead.
    if v.device.type == "cpu" and math.isfinite(float(v.sum())):
        return v
    v = torch.nan_to_num(v, nan=0.0, posinf=math.inf, neginf=-math.inf)
    inf = torch.isinf(v)
    has_inf = inf.any(dim=-1, keepdim=True)
    return torch.where(has_inf, torch.sign(v) * inf, v)


def subgradient_of_difference(a: Tensor, b: Tensor, p: float) -> Tensor:
    """:func:`subgradient` of ``a - b``, the same values; for l1 the sign is taken in the difference's own memory.

    RSA's hot path: one (m, d) temporary instead of two (measured 76 vs 100 us at
    (20, 7850) float32).
    """
    if p == 1.0:
        return torch.sub(a, b).sign_().nan_to_num_(nan=0.0)
    return subgradient(a - b, p)


def subgradient(v: Tensor, p: float) -> Tensor:
    """A subgradient of ``||v||_p`` over the last dimension.

    Parameters
    ----------
    v : Tensor
        Shape ``(d,)`` or ``(m, d)``; each row is one flattened model difference.
    p : float
        Norm exponent, ``>= 1`` (``math.inf`` for l-inf). See :func:`parse_norm`.

    Returns
    -------
    Tensor
        Same shape, dtype and device as ``v``; finite even when ``v`` is not.
    """
    if p == 1.0:
        # The hot path of RSA: sign(inf) is +-1 already, only NaN needs fixing.
        return torch.sign(v).nan_to_num_(nan=0.0)
    v = _sanitize(v)
    mag = v.abs()
    # (amax of abs, not vector_norm(ord=inf): measured ~10x faster on CPU.)
    peak = mag.amax(dim=-1, keepdim=True)
    if math.isinf(p):
        at_peak = (mag == peak) & (peak > 0)
        count = at_peak.sum(dim=-1, keepdim=True).clamp_min_(1)
        return torch.sign(v).mul_(at_peak).div_(count)
    # Scale by the largest magnitude first, so that |v|^p can neither overflow nor underflow.
    u = v / torch.where(peak > 0, peak, 1.0)  # (a subnormal peak too: no clamp to the smallest normal)
    # A non-zero row has an entry equal to 1 now, so its norm is >= 1; a zero row has norm 0,
    # and the floor of 1 makes its z exactly 0 (0 / 1) with no division by zero.
    norm = torch.linalg.vector_norm(u, ord=p, dim=-1, keepdim=True).clamp_min_(1.0)
    if p == 2.0:
        return u.div_(norm)  # sign(u) |u|^1 = u: skip two passes
    return torch.sign(u).mul_(u.abs().pow_(p - 1.0)).div_(norm.pow_(p - 1.0))
