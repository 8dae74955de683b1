"""signSGD with majority vote (Bernstein, Zhao, Azizzadenesheli, Anandkumar, ICLR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from byzrsa.aggregators._blocks import _column_blocks
from byzrsa.aggregators._common import _check_matrix

__all__ = ["sign_majority"]


def sign_majority(x: Tensor) -> Tensor:
    r"""Majority vote over the rows' signs.

    Bernstein, Zhao, Azizzadenesheli, Anandkumar, *signSGD with Majority Vote is
    Communication Efficient and Fault Tolerant*, ICLR 2019:

    .. math:: \mathrm{vote}(x)_j = \operatorname{sign}\Bigl(\sum_{i=1}^m \operatorname{sign}(x_{ij})\Bigr),
              \qquad \operatorname{sign}(0) = 0,

    a vector in :math:`\{-1, 0, 1\}^d`: the engines step by ``-alpha_k`` times it,
    as the paper's server broadcasts the vote and the workers step by its sign.
    A tied vote gives 0 (no step on that coordinate).

    Parameters
    ----------
    x : Tensor, shape (m, d)
        The workers' messages; only their signs are read (the paper's workers
        send ``sign(g_i)`` themselves, which gives the same vote).

    Returns
    -------
    Tensor, shape (d,), dtype and device of ``x``, entries in {-1, 0, 1}

    Properties. The output does not change when ``x`` is multiplied by any
    ``a > 0`` (scale-invariant, so not scale-equivariant) and is not
    translation-equivariant; identical rows return the sign of that row. The
    output is bounded, :math:`\|\mathrm{vote}(x)\|_\infty \le 1`, whatever the
    rows; the paper's robustness result is against "blind" adversaries (fewer
    than half the workers, not seeing the others' gradients), not omniscient ones.

    Non-finite entries (docs/protocol.md, convention 6): ``sign(+-inf) = +-1`` and a
    NaN entry casts no vote (0), as in RSA's subgradients
    (:mod:`byzrsa.penalties`).

    Implementation: the signs are summed a block of columns at a time, so that
    no (m, d) temporary is formed.
    """
    _check_matrix(x)
    votes = torch.empty(x.shape[1], dtype=x.dtype, device=x.device)
    for cols in _column_blocks(x):
        # Sums of -1, 0, 1 are exact in floating point (m < 2^24); measured ~3.5x faster than
        # counting (x > 0) and (x < 0) and ~2.5x faster than NumPy's sign(sum(sign(x))).
        votes[cols] = torch.sign(x[:, cols]).nan_to_num_(nan=0.0).sum(dim=0)
    return votes.sign_()
