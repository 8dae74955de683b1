"""Today's defences against plain float64 references written from the papers' equations.

Rules: centered clipping, Bulyan, signSGD's majority vote. Pre-aggregators:
bucketing, nearest-neighbour mixing, static clipping, ARC. The references below
are loops over Python floats (``math.fsum``, ``statistics.median``, ``sorted``);
the shared rule properties run in ``tests/test_aggregators.py`` over the whole
``RULES`` table, the pre-aggregator properties here over ``PRE_AGGREGATORS``.
"""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_aggregators import bulyan_separated  # the shared table's margin check for Bulyan's choices

from byzrsa.aggregators import (
    RULES,
    bulyan,
    bulyan_selection,
    centered_clipping,
    check_rule,
    median,
    sign_majority,
)
from byzrsa.errors import ConfigError
from byzrsa.preaggregators import (
    PRE_AGGREGATORS,
    adaptive_robust_clipping,
    apply_chain,
    arc_count,
    bucketing,
    check_chain,
    nearest_neighbour_mixing,
    norm_clipping,
    rows_after,
)

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F64 = torch.float64
moderate = st.floats(-100, 100, allow_nan=False, allow_infinity=False, allow_subnormal=False)

# ----------------------------------------------------------------------------- references (float64, plain)

Rows = list[list[float]]


def dist(a: list[float], b: list[float]) -> float:
    return math.sqrt(math.fsum((p - q) ** 2 for p, q in zip(a, b)))


def norm(a: list[float]) -> float:
    return math.sqrt(math.fsum(p * p for p in a))


def mean_of(rows: Rows) -> list[float]:
    return [math.fsum(col) / len(rows) for col in zip(*rows)]


def ref_cclip(rows: Rows, tau: float, iters: int, start: list[float]) -> list[float]:
    """v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||), iters times (Karimireddy et al. 2021)."""
    v = list(start)
    n = len(rows)
    for _ in range(iters):
        step = [0.0] * len(v)
        for x in rows:
            r = dist(x, v)
            c = 1.0 if r == 0 else min(1.0, tau / r)
            step = [s + c * (p - q) for s, p, q in zip(step, x, v)]
        v = [q + s / n for q, s in zip(v, step)]
    return v


def ref_bulyan(rows: Rows, f: int) -> list[float]:
    """Iterated Krum to theta = n - 2f rows, then per coordinate the mean of the beta closest to the median."""
    n = len(rows)
    theta, beta = n - 2 * f, n - 4 * f
    remaining, chosen = list(range(n)), []
    while len(chosen) < theta:
        k = max(len(remaining) - f - 2, 1) if f else 0  # byzrsa's documented floor of 1 (f = 1, last pick)
        scores = [
            math.fsum(sorted(dist(rows[i], rows[j]) ** 2 for j in remaining if j != i)[:k]) for i in remaining
        ]
        best = min(range(len(remaining)), key=lambda r: (scores[r], r))
        chosen.append(remaining.pop(best))
    out = []
    for j in range(len(rows[0])):
        col = [rows[i][j] for i in chosen]
        mu = statistics.median(col)
        kept = sorted(col, key=lambda v: (abs(v - mu), v))[:beta]
        out.append(math.fsum(kept) / beta)
    return out


def ref_sign(rows: Rows) -> list[float]:
    def sgn(v: float) -> int:
        return 0 if math.isnan(v) or v == 0 else (1 if v > 0 else -1)

    return [float(sgn(sum(sgn(v) for v in col))) for col in zip(*rows)]


def ref_bucketing(rows: Rows, perm: list[int], s: int) -> Rows:
    return [mean_of([rows[i] for i in perm[b : b + s]]) for b in range(0, len(rows), s)]


def ref_nnm(rows: Rows, f: int) -> Rows:
    """Each row: the mean of its n - f nearest rows, itself first, ties by index (Allouah et al. 2023)."""
    n = len(rows)
    out = []
    for i in range(n):
        order = sorted(range(n), key=lambda j: (j != i, dist(rows[i], rows[j]), j))
        out.append(mean_of([rows[j] for j in order[: n - f]]))
    return out


def ref_clip(rows: Rows, tau: float) -> Rows:
    return [[v * min(1.0, tau / norm(x)) for v in x] if norm(x) > tau else list(x) for x in rows]


def ref_arc(rows: Rows, f: int) -> Rows:
    """Clip the floor(2 (f/n) (n - f)) longest rows to the (k+1)-th longest norm (Allouah et al. 2025)."""
    n = len(rows)
    k = math.floor(Fraction(2 * f, n) * (n - f))
    c = sorted((norm(x) for x in rows), reverse=True)[k]
    return ref_clip(rows, c) if k else [list(x) for x in rows]


def matrix(draw: st.DrawFn, m: int, d: int) -> torch.Tensor:
    return torch.tensor(draw(st.lists(moderate, min_size=m * d, max_size=m * d)), dtype=F64).reshape(m, d)


def close(out: torch.Tensor, ref: list, atol: float = 1e-9, rtol: float = 1e-9) -> None:
    torch.testing.assert_close(out.double(), torch.tensor(ref, dtype=F64), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- centered clipping


def test_cclip_hand_made() -> None:
    # start 0, tau = 1: rows at distance 2 are pulled with length 1, the row at 0.5 fully
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.5, 0.0]], dtype=F64)
    out = centered_clipping(x, tau=1.0, iters=1, previous=torch.zeros(2, dtype=F64))
    close(out, [(1.0 + 0.5) / 3, 1.0 / 3], rtol=0, atol=1e-15)


@SETTINGS
@given(data=st.data(), tau=st.floats(0.1, 300), iters=st.integers(1, 5))
def test_cclip_matches_reference(data: st.DataObject, tau: float, iters: int) -> None:
    m, d = data.draw(st.integers(1, 10)), data.draw(st.integers(1, 12))
    x = matrix(data.draw, m, d)
    prev = torch.tensor(data.draw(st.lists(moderate, min_size=d, max_size=d)), dtype=F64)
    rows = x.tolist()
    close(centered_clipping(x, tau, iters, previous=prev), ref_cclip(rows, tau, iters, prev.tolist()), atol=1e-9)
    # first round: the start is the coordinate-wise median
    close(centered_clipping(x, tau, iters), ref_cclip(rows, tau, iters, median(x).tolist()), atol=1e-9)


def test_cclip_random_float32_matches_float64_reference() -> None:
    g = torch.Generator().manual_seed(0)
    x = 3 + torch.randn(20, 300, generator=g)
    x[-4:] = 100.0
    prev = torch.zeros(300)
    ref = ref_cclip(x.double().tolist(), 10.0, 3, prev.double().tolist())
    out = centered_clipping(x, 10.0, 3, previous=prev)
    assert out.dtype == torch.float32
    close(out, ref, rtol=1e-5, atol=1e-5)


def test_cclip_previous_and_non_finite() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, dtype=F64, generator=g)
    prev = torch.full((5,), 0.25, dtype=F64)
    y = x.clone()
    y[2, 1] = math.nan
    y[5] = math.inf
    # non-finite rows pull 0 but count in 1/m: as if they had sent v itself
    rows = [r for i, r in enumerate(x.tolist()) if i not in (2, 5)] + [prev.tolist()] * 2
    ref = ref_cclip(rows, 1.0, 1, prev.tolist())
    close(centered_clipping(y, 1.0, 1, previous=prev), ref, atol=1e-12)
    # a non-finite previous is ignored: restart from the median
    bad_prev = prev.clone()
    bad_prev[0] = math.nan
    assert torch.equal(centered_clipping(x, 2.0, 2, previous=bad_prev), centered_clipping(x, 2.0, 2))
    # every row non-finite: the start comes back
    assert torch.equal(centered_clipping(torch.full((4, 5), math.nan, dtype=F64), previous=prev), prev)
    with pytest.raises(ConfigError, match="shape"):
        centered_clipping(x, previous=torch.zeros(4, dtype=F64))
    for bad in ({"tau": 0.0}, {"tau": -1.0}, {"tau": math.inf}, {"iters": 0}, {"iters": 1.5}):
        with pytest.raises(ConfigError):
            centered_clipping(x, **bad)
    with pytest.raises(ConfigError, match="tau"):
        RULES["cclip"].resolve({"tau": 0}, "rule")


def test_cclip_huge_finite_row_keeps_its_direction() -> None:
    x = torch.zeros(4, 3)
    x[0, 0] = 3e30  # its square overflows float32, its clipped pull does not
    out = centered_clipping(x, tau=1.0, iters=1, previous=torch.zeros(3))
    torch.testing.assert_close(out, torch.tensor([0.25, 0.0, 0.0]))


def test_cclip_through_the_rule_entry_takes_previous() -> None:
    rule = RULES["cclip"]
    assert rule.uses_previous and not rule.scale_equivariant and rule.translation_equivariant
    x = torch.randn(6, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    prev = torch.ones(4, dtype=F64)
    assert torch.equal(rule(x, 1, previous=prev, tau=0.5, iters=2), centered_clipping(x, 0.5, 2, previous=prev))


# ----------------------------------------------------------------------------- Bulyan


def test_bulyan_hand_made() -> None:
    # m = 7, f = 1: theta = 5 rows by iterated Krum, beta = 3 per coordinate. Picks (neighbours):
    # 3 (4: score 1+1+2.25+4), 2 (3: 1+4+4), 4 (2: 0.25+9), then 0 and 1 (1 neighbour: ties at
    # score 1, lowest index first; 4.5 and 100 stay out)
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [100.0], [4.5]], dtype=F64)
    assert bulyan_selection(x, 1).tolist() == [3, 2, 4, 0, 1]
    close(bulyan(x, 1), [2.0], rtol=0, atol=0)  # median 2 of [0, 1, 2, 3, 4]: nearest 1, 2, 3
    close(bulyan(x, 1), ref_bulyan(x.tolist(), 1), rtol=0, atol=0)


def test_bulyan_equidistant_values_keep_the_smaller() -> None:
    # m = 7, f = 1: Krum leaves out +-50; the selected column [-1, -1, 0, 1, 1] has median 0 and
    # four values at distance 1 for two places: the smaller ones are kept, (-1 - 1 + 0) / 3
    col = [[-1.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [1.0, 1.0], [1.0, -1.0], [50.0, 50.0], [-50.0, -50.0]]
    x = torch.tensor(col, dtype=F64)
    assert sorted(bulyan_selection(x, 1).tolist()) == [0, 1, 2, 3, 4]
    close(bulyan(x, 1), [-2 / 3, -2 / 3], rtol=0, atol=1e-15)
    close(bulyan(x, 1), ref_bulyan(col, 1), rtol=0, atol=1e-15)
    assert bulyan(torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]], dtype=F64), 0).item() == 2.0  # f = 0: the mean


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_bulyan_matches_reference(data: st.DataObject, dtype: torch.dtype) -> None:
    f = data.draw(st.integers(0, 2))
    m = data.draw(st.integers(4 * f + 3, 12))
    d = data.draw(st.integers(1, 8))
    x = matrix(data.draw, m, d)
    # small integers: every distance exact, ties exact, so both sides break them the same way
    if data.draw(st.booleans()):
        x = x.round().clamp(-3, 3)
    elif dtype == torch.float32:
        assume(bulyan_separated(x, f))  # float32 rounding must not flip a choice the reference makes
    xd = x.to(dtype)
    ref = ref_bulyan(xd.double().tolist(), f)
    tol = 1e-12 if dtype == F64 else 1e-5
    close(bulyan(xd, f), ref, rtol=tol, atol=tol * (float(x.abs().max()) + 1))


def test_bulyan_validity_and_non_finite() -> None:
    with pytest.raises(ConfigError, match=r"m >= 4f \+ 3.*m = 10, f = 2"):
        bulyan(torch.zeros(10, 3), 2)
    with pytest.raises(ConfigError, match="m = 6"):
        check_rule("bulyan", 6, 1)
    check_rule("bulyan", 7, 1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 4, dtype=F64, generator=g)
    y = x.clone()
    y[0, 0] = math.nan
    y[7] = -math.inf
    chosen = bulyan_selection(y, 2)
    assert 0 not in chosen.tolist() and 7 not in chosen.tolist()
    assert torch.isfinite(bulyan(y, 2)).all()
    torch.testing.assert_close(bulyan(x, 0), x.mean(0))


# ----------------------------------------------------------------------------- signSGD


def test_sign_majority_hand_made_and_non_finite() -> None:
    x = torch.tensor(
        [[1.0, -2.0, 0.0, math.nan, 3.0], [2.0, -1.0, 0.0, math.inf, -3.0], [-5.0, 4.0, 0.0, -1.0, math.nan]]
    )
    out = sign_majority(x)
    assert out.tolist() == [1.0, -1.0, 0.0, 0.0, 0.0]  # NaN casts no vote, ties give 0
    assert out.tolist() == ref_sign(x.tolist())


@SETTINGS
@given(data=st.data(), a=st.floats(1e-3, 1e3))
def test_sign_majority_matches_reference_and_is_scale_invariant(data: st.DataObject, a: float) -> None:
    m, d = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 20))
    x = matrix(data.draw, m, d)
    assert sign_majority(x).tolist() == ref_sign(x.tolist())
    assert torch.equal(sign_majority(a * x), sign_majority(x))
    rule = RULES["signsgd"]
    assert rule.sign_output and not rule.scale_equivariant and not rule.translation_equivariant


# ----------------------------------------------------------------------------- pre-aggregators vs references


def test_bucketing_hand_made_and_reference() -> None:
    x = torch.arange(10.0, dtype=F64).reshape(5, 2)
    g = torch.Generator().manual_seed(4)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(4)).tolist()
    out = bucketing(x, 1, g, s=2)
    assert out.shape == (3, 2)  # the last bucket holds one row
    close(out, ref_bucketing(x.tolist(), perm, 2), rtol=0, atol=1e-15)
    # the generator owns the permutation: same seed, same buckets
    assert torch.equal(bucketing(x, 1, torch.Generator().manual_seed(4), s=2), out)
    assert sorted(bucketing(x, 1, g, s=1).tolist()) == sorted(x.tolist())  # s = 1 only shuffles
    entry = PRE_AGGREGATORS["bucketing"]
    assert entry.rows(5, {"s": 2}) == 3 == rows_after([(entry, {"s": 2})], 5)


@SETTINGS
@given(data=st.data(), s=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_bucketing_matches_reference(data: st.DataObject, s: int, seed: int) -> None:
    m, d = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 10))
    x = matrix(data.draw, m, d)
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed)).tolist()
    out = bucketing(x, 0, torch.Generator().manual_seed(seed), s=s)
    close(out, ref_bucketing(x.tolist(), perm, s), atol=1e-12)


def test_nnm_hand_made() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]], dtype=F64)
    # f = 1: each row with its 2 nearest others
    close(nearest_neighbour_mixing(x, 1), [[4 / 3], [4 / 3], [4 / 3], [14 / 3]], rtol=0, atol=1e-15)
    close(nearest_neighbour_mixing(x, 0), [[3.5]] * 4, rtol=0, atol=0)
    close(nearest_neighbour_mixing(x, 3), x.tolist(), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="f < n"):
        nearest_neighbour_mixing(x, 4)


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_nnm_matches_reference(data: st.DataObject, dtype: torch.dtype) -> None:
    m = data.draw(st.integers(1, 10))
    f = data.draw(st.integers(0, m - 1))
    d = data.draw(st.integers(1, 8))
    x = matrix(data.draw, m, d)
    if data.draw(st.booleans()):
        x = x.round().clamp(-2, 2)  # exact distances and ties: index tie-breaks must agree
    elif dtype == torch.float32:
        assume(nnm_separated(x, f))
    xd = x.to(dtype)
    tol = 1e-12 if dtype == F64 else 1e-5
    close(nearest_neighbour_mixing(xd, f), ref_nnm(xd.double().tolist(), f), rtol=tol, atol=tol * 100)


def nnm_separated(x: torch.Tensor, f: int) -> bool:
    """No near-tie at the boundary of any row's neighbourhood (so rounding cannot change it)."""
    rows = x.tolist()
    n = len(rows)
    scale = float(x.abs().max()) + 1
    for i in range(n):
        ds = sorted(dist(rows[i], rows[j]) for j in range(n) if j != i)
        k = n - f - 1
        if 0 < k < len(ds) and ds[k] - ds[k - 1] <= 1e-6 * scale:
            return False
    return True


def test_nnm_non_finite_rows_pass_through_and_are_never_mixed() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, dtype=F64, generator=g)
    y = x.clone()
    y[1, 2] = math.nan
    y[6] = math.inf
    out = nearest_neighbour_mixing(y, 2)
    torch.testing.assert_close(out[1], y[1], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(out[6], y[6])
    finite = [0, 2, 3, 4, 5, 7]
    # the finite rows mix among themselves exactly as without the others (6 rows, n - f = 6 nearest: all)
    close(out[finite], [mean_of(x[finite].tolist())] * 6, atol=1e-12)
    # more non-finite rows than f: a finite row averages the finite ones among its n - f nearest
    z = x.clone()
    z[:4] = math.nan
    close(nearest_neighbour_mixing(z, 1)[4:], [mean_of(x[4:].tolist())] * 4, atol=1e-12)


def test_clip_and_arc_hand_made() -> None:
    x = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 0.0], [30.0, 40.0]], dtype=F64)
    close(norm_clipping(x, 0, None, tau=2.0), [[1.2, 1.6], [0.6, 0.8], [0.0, 0.0], [1.2, 1.6]], rtol=0, atol=1e-15)
    # n = 4, f = 1: k = floor(2 * 1/4 * 3) = 1: the longest row goes to the second longest norm, 5
    assert arc_count(4, 1) == 1
    close(adaptive_robust_clipping(x, 1), [[3.0, 4.0], [0.6, 0.8], [0.0, 0.0], [3.0, 4.0]], rtol=0, atol=1e-15)
    assert torch.equal(adaptive_robust_clipping(x, 0), x)
    with pytest.raises(ConfigError):
        adaptive_robust_clipping(x, 5)
    with pytest.raises(ConfigError):
        norm_clipping(x, 0, None, tau=0.0)


def test_arc_count_is_the_exact_floor() -> None:
    for n in range(1, 120):
        for f in range(n + 1):
            k = arc_count(n, f)
            assert k == math.floor(Fraction(2 * f, n) * (n - f))
            assert 0 <= k < n or n == 0  # a (k+1)-th longest row always exists


@SETTINGS
@given(data=st.data(), tau=st.floats(0.01, 500), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_clip_and_arc_match_reference(data: st.DataObject, tau: float, dtype: torch.dtype) -> None:
    m = data.draw(st.integers(1, 12))
    f = data.draw(st.integers(0, m))
    x = matrix(data.draw, m, data.draw(st.integers(1, 10))).to(dtype)
    rows = x.double().tolist()
    tol = 1e-12 if dtype == F64 else 1e-6
    close(norm_clipping(x, f, None, tau=tau), ref_clip(rows, tau), rtol=tol, atol=tol)
    close(adaptive_robust_clipping(x, f), ref_arc(rows, f), rtol=tol, atol=tol)


def test_clip_and_arc_non_finite_rows() -> None:
    x = torch.tensor([[3.0, 4.0], [math.nan, 1.0], [math.inf, 0.0], [0.3, 0.4], [6.0, 8.0]])
    out = norm_clipping(x, 0, None, tau=1.0)
    assert torch.equal(out[2], x[2]) and out[1].isnan()[0] and out[1, 1] == 1.0
    torch.testing.assert_close(out[[0, 3, 4]], torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.6, 0.8]]))
    # n = 5, f = 2: k = floor(2 * 2/5 * 3) = 2: the two non-finite rows are the two "longest"; C = 10
    arc = adaptive_robust_clipping(x, 2)
    torch.testing.assert_close(arc[[0, 3, 4]], x[[0, 3, 4]])
    # f = 3 -> k = 2 as well; with three non-finite rows C is infinite: nothing finite is clipped
    y = x.clone()
    y[3] = -math.inf
    torch.testing.assert_close(adaptive_robust_clipping(y, 2)[[0, 4]], y[[0, 4]])


def test_clip_huge_finite_row_keeps_its_direction() -> None:
    x = torch.tensor([[3e30, 4e30], [1.0, 0.0]])
    torch.testing.assert_close(norm_clipping(x, 0, None, tau=5.0), torch.tensor([[3.0, 4.0], [1.0, 0.0]]))


# ----------------------------------------------------------------------------- chains and validity


def test_chains_through_apply_chain() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(12, 5, dtype=F64, generator=g)
    x[:2] = 50.0
    chain = [(PRE_AGGREGATORS["nnm"], {}), (PRE_AGGREGATORS["clip"], {"tau": 1.5})]
    out = apply_chain(chain, x, 2, [torch.Generator(), torch.Generator()])
    ref = ref_clip(ref_nnm(x.tolist(), 2), 1.5)
    close(out, ref, atol=1e-12)
    close(RULES["bulyan"](out, 2), ref_bulyan(ref, 2), atol=1e-12)
    # bucketing then Krum: the rule sees ceil(12 / 2) = 6 rows with the same f
    chain = [(PRE_AGGREGATORS["arc"], {}), (PRE_AGGREGATORS["bucketing"], {"s": 2})]
    seed = 7
    out = apply_chain(chain, x, 1, [torch.Generator(), torch.Generator().manual_seed(seed)])
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(seed)).tolist()
    close(out, ref_bucketing(ref_arc(x.tolist(), 1), perm, 2), atol=1e-12)
    assert check_chain(chain, 12, 1) == 6
    check_rule("krum", 6, 1)
    with pytest.raises(ConfigError, match="m = 6"):
        check_rule("krum", check_chain(chain, 12, 2), 2)


def test_chain_checks_raise() -> None:
    with pytest.raises(ConfigError, match="nnm needs f < n"):
        check_chain([(PRE_AGGREGATORS["nnm"], {})], 3, 3)
    with pytest.raises(ConfigError, match="arc"):
        check_chain([(PRE_AGGREGATORS["arc"], {})], 3, 4)
    for entry, bad in (("bucketing", {"s": 0}), ("clip", {"tau": -1.0}), ("bucketing", {"s": 1.5})):
        with pytest.raises(ConfigError):
            PRE_AGGREGATORS[entry].resolve(bad, "pre-aggregator")
    with pytest.raises(ConfigError, match="bucketing s"):
        bucketing(torch.zeros(3, 2), 0, None, s=0)


# ----------------------------------------------------------------------------- pre-aggregator properties


def _run(name: str, x: torch.Tensor, f: int, seed: int = 0) -> torch.Tensor:
    entry = PRE_AGGREGATORS[name]
    return entry.fn(x, f, torch.Generator().manual_seed(seed), **entry.defaults())


@st.composite
def pre_cases(draw: st.DrawFn, name: str) -> tuple[torch.Tensor, int]:
    m = draw(st.integers(1, 10))
    f = draw(st.integers(0, m - 1))
    x = matrix(draw, m, draw(st.integers(1, 8)))
    check_chain([(PRE_AGGREGATORS[name], PRE_AGGREGATORS[name].defaults())], m, f)
    return x, f


PRES = sorted(PRE_AGGREGATORS)


def _as_multiset(y: torch.Tensor) -> list[list[float]]:
    return sorted(y.tolist())


@pytest.mark.parametrize("name", [n for n in PRES if PRE_AGGREGATORS[n].permutation_invariant])
@SETTINGS
@given(data=st.data())
def test_pre_permutation_invariance(name: str, data: st.DataObject) -> None:
    x, f = data.draw(pre_cases(name))
    if name == "nnm":
        assume(nnm_separated(x, f))
    perm = torch.tensor(data.draw(st.permutations(range(x.shape[0]))))
    out, moved = _run(name, x, f), _run(name, x[perm], f)
    # as multisets, and indeed row by row: the i-th output belongs to the i-th input
    torch.testing.assert_close(moved, out[perm], rtol=1e-12, atol=1e-12)
    assert len(_as_multiset(moved)) == len(_as_multiset(out))


@pytest.mark.parametrize("name", [n for n in PRES if PRE_AGGREGATORS[n].translation_equivariant])
@SETTINGS
@given(data=st.data())
def test_pre_translation_equivariance(name: str, data: st.DataObject) -> None:
    x, f = data.draw(pre_cases(name))
    if name == "nnm":
        assume(nnm_separated(x, f))
    t = torch.tensor(data.draw(st.lists(moderate, min_size=x.shape[1], max_size=x.shape[1])), dtype=F64)
    scale = float(x.abs().max()) + float(t.abs().max()) + 1
    torch.testing.assert_close(_run(name, x + t, f), _run(name, x, f) + t, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("name", [n for n in PRES if PRE_AGGREGATORS[n].scale_equivariant])
@SETTINGS
@given(data=st.data(), a=st.floats(1e-3, 1e3))
def test_pre_scale_equivariance(name: str, data: st.DataObject, a: float) -> None:
    x, f = data.draw(pre_cases(name))
    if name == "nnm":
        assume(nnm_separated(x, f))
    scale = a * (float(x.abs().max()) + 1)
    torch.testing.assert_close(_run(name, a * x, f), a * _run(name, x, f), rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("name", PRES)
@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_pre_identical_rows_return_that_row(name: str, data: st.DataObject, dtype: torch.dtype) -> None:
    m = data.draw(st.integers(1, 10))
    f = data.draw(st.integers(0, m - 1))
    d = data.draw(st.integers(1, 8))
    row = torch.tensor(data.draw(st.lists(moderate, min_size=d, max_size=d)), dtype=dtype)
    out = _run(name, row.repeat(m, 1), f)
    assert out.shape == (PRE_AGGREGATORS[name].rows(m, PRE_AGGREGATORS[name].defaults()), d)
    if name == "clip":  # static clipping: every copy clipped the same way
        row = norm_clipping(row[None], 0)[0]
        assert torch.equal(out, row.expand_as(out))
    elif name == "arc":  # every norm ties with C: nothing changes
        assert torch.equal(out, row.expand_as(out))
    else:  # averages of copies: (v + ... + v) / k may round
        torch.testing.assert_close(out, row.expand_as(out), rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("name", PRES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [1, 2, 5, 8])
def test_pre_dtype_device_shape_preserved(name: str, dtype: torch.dtype, m: int) -> None:
    entry = PRE_AGGREGATORS[name]
    f = min(1, m - 1)
    x = torch.randn(m, 7, dtype=dtype, generator=torch.Generator().manual_seed(m))
    out = _run(name, x, f)
    assert out.dtype == dtype and out.device == x.device and out.shape == (entry.rows(m, entry.defaults()), 7)
    assert torch.isfinite(out).all()
    assert out.data_ptr() != x.data_ptr()  # a new tensor, never the input


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", PRES)
def test_pre_cuda_matches_cpu(name: str) -> None:
    x = torch.randn(11, 50, dtype=F64, generator=torch.Generator().manual_seed(0))
    x[3] = math.nan
    cpu, gpu = _run(name, x, 2), _run(name, x.cuda(), 2)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cclip_cuda_with_previous_matches_cpu() -> None:
    x = torch.randn(11, 5000, dtype=F64, generator=torch.Generator().manual_seed(0))
    prev = torch.zeros(5000, dtype=F64)
    gpu = centered_clipping(x.cuda(), previous=prev.cuda())
    torch.testing.assert_close(gpu.cpu(), centered_clipping(x, previous=prev))
