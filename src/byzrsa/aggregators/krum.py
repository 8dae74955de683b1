"""Krum and multi-Krum (Blanchard et al., NeurIPS 2017), with the correct m - f - 2 neighbours."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from byzrsa.aggregators._common import _SAFE, _check_f, _check_krum, _check_matrix, _rows_mean, power_of_two_scale
from byzrsa.errors import ConfigError, config_int

__all__ = ["krum", "multi_krum", "krum_scores"]



def _pairwise_sq_dists(y: Tensor, bad: Tensor, any_bad: bool = True) -> Tensor:
    """Squared distances from one Gram matrix; ``inf`` on the diagonal and for ``bad`` rows.

    ``any_bad`` False promises that no row is bad (the masking is skipped). The same IEEE
    operations on the same values as the plain form (so the same bits), in fewer calls:
    at (20, 7850) the ~20 tiny (m, m) operations cost more than the Gram product itself.
    """
    gram = y @ y.T
    sq = gram.diagonal()
    d2 = sq[:, None] + sq[None, :] - 2 * gram
    # A squared norm that overflows gives inf - inf = NaN or finite - inf = -inf: such a
    # pair is infinitely far apart, never at distance 0.
    d2 = torch.nan_to_num_(d2, nan=math.inf, posinf=math.inf, neginf=math.inf).clamp_min_(0)
    d2 = (d2 + d2.T).div_(2)  # exact symmetry, so ties do not depend on BLAS's summation order
    d2.fill_diagonal_(math.inf)
    if any_bad:
        d2.masked_fill_(bad[:, None] | bad[None, :], math.inf)
    return d2


def _scores_from(d2: Tensor, f: int, bad: Tensor, any_bad: bool = True) -> Tensor:
    k = d2.shape[0] - f - 2  # >= f + 1 >= 1 under m >= 2f + 3; the inf diagonal is never among them
    nearest = torch.topk(d2, k, dim=1, largest=False, sorted=False).values
    scores = nearest.sum(dim=1)
    return scores.masked_fill_(bad, math.inf) if any_bad else scores


def _ranking(scores: Tensor, bad: Tensor, any_bad: bool = True) -> Tensor:
    """Row indices ordered by (has a non-finite entry, score, index)."""
    order = torch.sort(scores, stable=True).indices
    if not any_bad:  # the first key is False for every row: sorting by it changes nothing
        return order
    return order[torch.sort(bad[order].to(torch.int8), stable=True).indices]


def _duplicate_of(x: Tensor, bad: Tensor, sums: Tensor | None = None) -> Tensor | None:
    """For each row, the lowest index of a row exactly equal to it (None when no two rows are equal).

    Copies are common (copy and mimic attackers, Byzantine workers sending one
    vector), and the Gram identity gives two equal rows a distance of rounding
    size (about 5e-7 in float32 at d = 5) rather than 0, and their scores may
    differ by as much, which broke the lowest-index tie-break. Candidates are the
    rows with equal sums; only those are compared entry by entry, and a row only
    against rows that are still their own representative, lowest first (equality
    is transitive, so the answer is that of comparing every candidate pair, with
    m - 1 comparisons at most instead of m^2 / 2 for m copies). Rows with a
    non-finite entry (``bad``) are nobody's copy: they stay infinitely far.
    ``sums`` may pass ``x.sum(dim=1)`` when the caller has it.
    """
    if sums is None:
        sums = x.sum(dim=1)
    good = ~bad
    equal = (sums[:, None] == sums[None, :]) & good[:, None] & good[None, :]
    candidates = equal.triu_(diagonal=1).nonzero().tolist()
    if not candidates:
        return None
    rep = list(range(x.shape[0]))
    if _sync_free(x):  # on a GPU: every candidate pair compared at once (one more host read, not one per pair)
        pairs = torch.tensor(candidates, device=x.device)
        same = torch.ones(pairs.shape[0], dtype=torch.bool, device=x.device)
        for block in x.split(1 << 20, dim=1):
            same &= (block.index_select(0, pairs[:, 0]) == block.index_select(0, pairs[:, 1])).all(dim=1)
        for (i, j), equal_rows in zip(candidates, same.tolist()):
            if equal_rows and rep[j] == j:  # row-major: the first hit is the lowest i, a representative
                rep[j] = i
        return torch.tensor(rep, device=x.device) if rep != list(range(x.shape[0])) else None
    earlier: dict[int, list[int]] = {}
    for i, j in candidates:  # row-major: each row's earlier candidates in ascending order
        earlier.setdefault(j, []).append(i)
    for j in sorted(earlier):
        for i in earlier[j]:
            if rep[i] == i and torch.equal(x[i], x[j]):
                rep[j] = i
                break
    if all(r == i for i, r in enumerate(rep)):
        return None
    return torch.tensor(rep, device=x.device)


def _with_duplicates(d2: Tensor, rep: Tensor | None) -> Tensor:
    """Make equal rows exactly equal in ``d2``: the representative's distances, and 0 between copies."""
    if rep is None:
        return d2
    d2 = d2[rep][:, rep]  # copies read their representative's row and column
    same = rep[:, None] == rep[None, :]
    same.fill_diagonal_(False)
    return d2.masked_fill(same, 0.0)


def _sync_free(x: Tensor) -> bool:
    """Whether to avoid host reads of ``x``'s values (on a GPU each one waits for the device)."""
    return x.device.type != "cpu"


def _device_scale(x: Tensor) -> Tensor:
    """:func:`power_of_two_scale` computed on the device: a power of two, or 1 where the data are safe."""
    peak = x.abs().amax().double()
    safe = (peak == 0) | ((peak >= _SAFE[0]) & (peak <= _SAFE[1]))
    return torch.where(safe, torch.ones_like(peak), peak.log2().floor().exp2()).to(x.dtype)


def _krum_scores(x: Tensor, f: int) -> tuple[Tensor, Tensor]:
    sums = x.sum(dim=1)
    # A NaN or inf entry makes the row sum non-finite (one reduction is ~30x cheaper than
    # isfinite(x).all(1)); so does a finite row whose sum overflows, whose squared norm
    # overflows anyway. The sums are reused for the duplicate search.
    bad = ~torch.isfinite(sums)
    device_side = _sync_free(x)
    any_bad = True if device_side else bool(bad.any())  # on a GPU: mask always, never ask
    if any_bad:
        # Zero those rows so that their inf/NaN never enter the Gram products of the others.
        x = torch.where(bad[:, None], torch.zeros((), dtype=x.dtype, device=x.device), x)
    # Pass 1 picks a central row; pass 2 recomputes the distances around it. The Gram
    # identity loses about eps * (||a||^2 + ||b||^2), so centring on a row of the dense
    # cluster keeps its small distances accurate whatever the translation of the data
    # (e.g. same-value attackers at 100 while the regular gradients differ by 1e-2).
    if device_side:  # an exact power of two (or 1) without reading the peak on the host
        x = x / _device_scale(x)
        rep = _duplicate_of(x, bad)  # the one host read left: whether two rows are equal
    else:
        scale = power_of_two_scale(x, bad)
        if scale is not None:  # exact rescaling keeps the squared distances finite and normal
            x = x / scale
        rep = _duplicate_of(x, bad, sums if scale is None and not any_bad else None)
    scores = _scores_from(_with_duplicates(_pairwise_sq_dists(x, bad, any_bad), rep), f, bad, any_bad)
    first = _ranking(scores, bad, any_bad)[:1]
    centre = x.index_select(0, first) if device_side else x[int(first)]
    d2 = _with_duplicates(_pairwise_sq_dists(x - centre, bad, any_bad), rep)
    return _scores_from(d2, f, bad, any_bad), bad


def krum_scores(x: Tensor, f: int) -> Tensor:
    r"""Krum scores (Blanchard et al., NeurIPS 2017).

    .. math:: s(i) = \sum_{j \in N_i} \|x_i - x_j\|^2

    where :math:`N_i` are the ``m - f - 2`` rows nearest to row ``i`` *other than
    itself*. Requires ``m >= 2f + 3`` (:class:`ConfigError` otherwise).

    Parameters
    ----------
    x : Tensor, shape (m, d)
    f : int
        Number of Byzantine rows.

    Returns
    -------
    Tensor, shape (m,), dtype of ``x``

    A row with a non-finite entry gets score ``+inf`` and is infinitely far from
    every other row (it never enters another row's neighbour sum unless fewer
    than ``m - f - 2`` other rows are finite, in which case that score is
    ``+inf`` too). Rows are flagged by their sum, so a row of finite entries
    whose sum overflows the dtype counts as non-finite as well. A finite row
    whose squared distances overflow is infinitely far from the others (never
    at distance 0: ``inf - inf`` is mapped to ``+inf``). Squared distances come
    from one Gram matrix per pass
    (``||a||^2 + ||b||^2 - 2 a.b``, clamped at 0), never from an (m, m, d) tensor;
    a second pass recentres the data on the first pass's best row so that the
    identity's cancellation error stays small relative to the distances that
    decide the selection.
    """
    m = _check_matrix(x)
    f = _check_f(f)
    _check_krum("krum", m, f)
    return _krum_scores(x, f)[0]


def multi_krum(x: Tensor, f: int, k: int | None = None) -> Tensor:
    r"""Multi-Krum: the mean of the ``k`` rows with the lowest Krum scores.

    .. math:: \mathrm{MK}_{f,k}(x) = \frac1k \sum_{i \in S_k} x_i

    where :math:`S_k` holds the ``k`` rows with the lowest :func:`krum_scores`
    (computed once, as in Blanchard et al. 2017). Ties are broken by the lowest
    row index, so the result is deterministic. ``k`` defaults to ``m - f``;
    ``k = 1`` is :func:`krum`. Requires ``m >= 2f + 3`` and ``1 <= k <= m``.

    Parameters
    ----------
    x : Tensor, shape (m, d)
    f : int
        Number of Byzantine rows.
    k : int, optional
        Number of rows averaged (default ``m - f``).

    Returns
    -------
    Tensor, shape (d,)

    Non-finite rows are ranked after every finite row and are never averaged:
    if fewer than ``k`` rows are finite, the mean of the finite ones among the
    ``k`` selected is returned. If every row is non-finite, the (non-finite)
    :func:`mean` is returned.
    """
    m = _check_matrix(x)
    f = _check_f(f)
    _check_krum("multi-krum" if k != 1 else "krum", m, f)
    if k is None:
        k = m - f
    k = config_int(k, "multi-krum k")
    if not 1 <= k <= m:
        raise ConfigError(f"multi-krum needs 1 <= k <= m: got k = {k}, m = {m}")
    scores, bad = _krum_scores(x, f)
    if _sync_free(x):
        return _selected_mean_on_device(x, _ranking(scores, bad)[:k], bad)
    if k == 1:  # Krum: the selected row itself (the mean of one row, without the product)
        best = int(_ranking(scores, bad)[0])
        return x.mean(dim=0) if bool(bad[best]) else x[best].clone()
    chosen = _ranking(scores, bad)[:k]
    chosen = chosen[~bad[chosen]]
    if chosen.numel() == 0:
        return x.mean(dim=0)
    if bool(bad.any()):  # a non-finite row, even with weight 0, would poison a product
        return x.index_select(0, chosen).mean(dim=0)
    return _rows_mean(x, chosen)


def _selected_mean_on_device(x: Tensor, chosen: Tensor, bad: Tensor) -> Tensor:
    """Multi-Krum's output without host reads: the mean of the finite rows among ``chosen``, else the mean.

    The same rule as the host path; the sums may round differently (weights 0/1 over all rows).
    """
    keep = (~bad.index_select(0, chosen)).to(x.dtype)
    if chosen.numel() == 1:  # Krum: that row itself, unless it is non-finite
        return torch.where(keep.bool(), x.index_select(0, chosen)[0], x.mean(dim=0))
    weights = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device).index_put_((chosen,), keep)
    clean = torch.where(bad[:, None], torch.zeros((), dtype=x.dtype, device=x.device), x)
    count = weights.sum()
    return torch.where(count > 0, (weights @ clean) / count.clamp_min(1), x.mean(dim=0))


def krum(x: Tensor, f: int) -> Tensor:
    r"""Krum: the row with the lowest Krum score, i.e. :func:`multi_krum` with ``k = 1``.

    See :func:`krum_scores` for the score (``m - f - 2`` nearest other rows) and
    :func:`multi_krum` for ties (lowest index wins) and non-finite rows (never
    selected; all rows non-finite returns the mean). Requires ``m >= 2f + 3``.
    """
    return multi_krum(x, f, k=1)


# ----------------------------------------------------------------------------- geometric median

