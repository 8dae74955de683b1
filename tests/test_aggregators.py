"""Aggregation rules: shared property tests over ``RULES`` and float64 references.

The references below are written plainly (Python loops, ``statistics.median``,
``sorted``) and are the ground truth the fast rules are compared against.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from byzrsa.aggregators import (
    RULES,
    Rule,
    check_rule,
    geometric_median,
    geometric_median_with_info,
    get_rule,
    krum,
    krum_scores,
    mean,
    median,
    multi_krum,
    trimmed_mean,
)
from byzrsa.errors import ConfigError

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ALL = sorted(RULES)
KRUMS = ("krum", "multi-krum")


# ----------------------------------------------------------------------------- references (float64, plain)


def ref_mean(rows: list[list[float]]) -> list[float]:
    m, d = len(rows), len(rows[0])
    return [math.fsum(rows[i][j] for i in range(m)) / m for j in range(d)]


def ref_median(rows: list[list[float]]) -> list[float]:
    return [statistics.median(r[j] for r in rows) for j in range(len(rows[0]))]


def ref_trimmed_mean(rows: list[list[float]], f: int) -> list[float]:
    m = len(rows)
    out = []
    for j in range(len(rows[0])):
        kept = sorted(r[j] for r in rows)[f : m - f]
        out.append(math.fsum(kept) / len(kept))
    return out


def ref_krum_scores(rows: list[list[float]], f: int) -> list[float]:
    m = len(rows)
    scores = []
    for i in range(m):
        dists = []
        for j in range(m):
            if j != i:
                dists.append(math.fsum((a - b) ** 2 for a, b in zip(rows[i], rows[j])))
        neighbours = sorted(dists)[: m - f - 2]
        assert len(neighbours) == m - f - 2
        scores.append(math.fsum(neighbours))
    return scores


def ref_krum_order(rows: list[list[float]], f: int) -> list[int]:
    scores = ref_krum_scores(rows, f)
    return sorted(range(len(rows)), key=lambda i: (scores[i], i))


def ref_multi_krum(rows: list[list[float]], f: int, k: int) -> list[float]:
    chosen = ref_krum_order(rows, f)[:k]
    return ref_mean([rows[i] for i in chosen])


def objective(rows: np.ndarray, z: np.ndarray) -> float:
    return float(sum(np.linalg.norm(r - z) for r in rows))


def ref_geomed_min(rows: np.ndarray, iterations: int = 3000) -> float:
    """Smallest objective among a long plain Weiszfeld run (from the mean) and every data point.

    The objective is convex, so when the minimum sits at a data point the second
    candidate finds it exactly, and otherwise plain Weiszfeld converges to it.
    """
    z = rows.mean(axis=0)
    for _ in range(iterations):
        dist = np.linalg.norm(rows - z, axis=1)
        if dist.min() < 1e-300:
            break
        w = 1.0 / dist
        z_new = (w[:, None] * rows).sum(axis=0) / w.sum()
        if np.array_equal(z_new, z):
            break
        z = z_new
    return min([objective(rows, z)] + [objective(rows, r) for r in rows])


def geomed_scale(rows: np.ndarray) -> float:
    """The geomed's stopping scale: median distance of the rows to their coordinate-wise median."""
    c = np.median(rows, axis=0)
    return float(np.median(np.linalg.norm(rows - c, axis=1)))


# ----------------------------------------------------------------------------- strategies

moderate = st.floats(-100, 100, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def min_rows(rule: Rule, f: int, most: int = 12) -> int | None:
    """The smallest m <= most that check_rule accepts for ``rule`` with ``f``, or None."""
    for m in range(max(f, 1), most + 1):
        try:
            check_rule(rule.name, m, f)
        except ConfigError:
            continue
        return m
    return None


def valid_m_f(rule: Rule, max_f: int = 4) -> st.SearchStrategy[tuple[int, int]]:
    """(m, f) with 1 <= m <= 12 that check_rule accepts for ``rule``: f = 0 for rules that do not take f.

    Every rule's validity condition is monotone in m, so m is drawn from the smallest
    valid m up to 12 (Krum: 2f + 3, trimmed mean: 2f + 1, Bulyan: 4f + 3).
    """
    top = max((f for f in range(max_f + 1) if min_rows(rule, f) is not None), default=0) if rule.needs_f else 0

    @st.composite
    def draw(data: st.DrawFn) -> tuple[int, int]:
        f = data(st.integers(0, top)) if rule.needs_f else 0
        m = data(st.integers(min_rows(rule, f), 12))
        return m, f

    return draw()


@st.composite
def cases(draw: st.DrawFn, name: str) -> tuple[torch.Tensor, int]:
    """A float64 (m, d) matrix of moderate finite values and an f valid for the rule."""
    m, f = draw(valid_m_f(RULES[name]))
    d = draw(st.integers(1, 20))
    values = draw(st.lists(moderate, min_size=m * d, max_size=m * d))
    x = torch.tensor(values, dtype=torch.float64).reshape(m, d)
    check_rule(name, m, f)
    return x, f


def krum_separated(x: torch.Tensor, f: int, k: int) -> bool:
    """True when the reference selection of k rows is separated from the rest by a clear score gap."""
    m = x.shape[0]
    if k >= m:
        return True
    scores = sorted(ref_krum_scores(x.tolist(), f))
    spread = float((x - x.mean(0)).abs().max()) ** 2 + 1e-300
    gap = scores[k] - scores[k - 1]
    return gap > 1e-7 * (abs(scores[k]) + spread * x.shape[1])


def equivariance_tol(name: str, x: torch.Tensor, scale: float) -> float:
    """Absolute tolerance for comparing a rule's outputs on two transformed copies of x."""
    if name == "geomed":
        # Both runs stop within tol * s of their own limit; a run may take one step more.
        return 20 * 1e-7 * geomed_scale(x.numpy()) + 1e-9 * scale
    return 1e-10 * scale


def default_k(name: str, m: int, f: int) -> int:
    return 1 if name == "krum" else m - f


def bulyan_separated(x: torch.Tensor, f: int) -> bool:
    """True when Bulyan's choices (each iterated-Krum pick, each coordinate's kept window) have clear margins.

    A plain float64 re-run of both steps; rounding cannot flip a choice with a margin.
    """
    rows = x.double().tolist()
    m, d = len(rows), len(rows[0])
    theta, beta = m - 2 * f, m - 4 * f
    spread = (float((x - x.mean(0)).abs().max()) + 1e-300) ** 2 * d
    remaining, chosen = list(range(m)), []
    while len(chosen) < theta:
        k = max(len(remaining) - f - 2, 1)
        scores = []
        for i in remaining:
            dists = sorted(math.fsum((a - b) ** 2 for a, b in zip(rows[i], rows[j])) for j in remaining if j != i)
            scores.append(math.fsum(dists[:k]))
        ranked = sorted(range(len(remaining)), key=lambda r: (scores[r], r))
        if f and len(ranked) > 1 and scores[ranked[1]] - scores[ranked[0]] <= 1e-7 * (abs(scores[ranked[1]]) + spread):
            return False
        chosen.append(remaining.pop(ranked[0]))
    scale = float(x.abs().max()) + 1
    for j in range(d):
        col = [rows[i][j] for i in chosen]
        mu = statistics.median(col)
        devs = sorted((abs(v - mu), v) for v in col)
        if beta < theta and devs[beta - 1][1] != devs[beta][1] and devs[beta][0] - devs[beta - 1][0] <= 1e-9 * scale:
            return False
    return True


def separated(name: str, x: torch.Tensor, f: int) -> bool:
    """Whether the rule's discrete choices on x have margins, so permutations and transformations keep them."""
    if name in KRUMS:
        return krum_separated(x, f, default_k(name, x.shape[0], f))
    if name == "bulyan":
        return bulyan_separated(x, f)
    return True


# ----------------------------------------------------------------------------- shared properties


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(data=st.data())
def test_permutation_invariance(name: str, data: st.DataObject) -> None:
    x, f = data.draw(cases(name))
    rule = RULES[name]
    perm = torch.tensor(data.draw(st.permutations(range(x.shape[0]))))
    assume(separated(name, x, f))
    scale = float(x.abs().max()) + 1
    torch.testing.assert_close(rule(x[perm], f), rule(x, f), rtol=0, atol=equivariance_tol(name, x, scale))


@pytest.mark.parametrize("name", [n for n in ALL if RULES[n].translation_equivariant])
@SETTINGS
@given(data=st.data())
def test_translation_equivariance(name: str, data: st.DataObject) -> None:
    rule = RULES[name]
    x, f = data.draw(cases(name))
    t = torch.tensor(data.draw(st.lists(moderate, min_size=x.shape[1], max_size=x.shape[1])), dtype=x.dtype)
    assume(separated(name, x, f))
    scale = float(x.abs().max()) + float(t.abs().max()) + 1
    if name == "geomed":
        # The minimiser need not be unique (collinear rows, even m: a whole segment), so compare
        # what is unique: the objective value, to the rule's tolerance.
        rows = x.double().numpy()
        moved = objective(rows, (rule(x + t, f) - t).double().numpy())
        assert moved == pytest.approx(objective(rows, rule(x, f).double().numpy()), rel=1e-6, abs=1e-9 * scale)
        return
    torch.testing.assert_close(rule(x + t, f), rule(x, f) + t, rtol=0, atol=equivariance_tol(name, x, scale))


@pytest.mark.parametrize("name", [n for n in ALL if RULES[n].scale_equivariant])
@SETTINGS
@given(data=st.data(), a=st.floats(1e-3, 1e3))
def test_scale_equivariance(name: str, data: st.DataObject, a: float) -> None:
    rule = RULES[name]
    x, f = data.draw(cases(name))
    assume(separated(name, x, f))
    scale = a * (float(x.abs().max()) + 1)
    if name == "geomed":  # compare objectives: the minimiser need not be unique (see translation)
        rows = x.double().numpy()
        moved = objective(rows, (rule(a * x, f) / a).double().numpy())
        assert moved == pytest.approx(objective(rows, rule(x, f).double().numpy()), rel=1e-6, abs=1e-9 * scale / a)
        return
    torch.testing.assert_close(rule(a * x, f), a * rule(x, f), rtol=0, atol=a * equivariance_tol(name, x, scale / a))


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_identical_rows_return_that_row(name: str, data: st.DataObject, dtype: torch.dtype) -> None:
    rule = RULES[name]
    m, f = data.draw(valid_m_f(rule))
    d = data.draw(st.integers(1, 20))
    row = torch.tensor(data.draw(st.lists(moderate, min_size=d, max_size=d)), dtype=dtype)
    x = row.repeat(m, 1)
    out = rule(x, f)
    if rule.sign_output:
        assert torch.equal(out, torch.sign(row))
    elif name in ("mean", "trimmed-mean", "multi-krum", "ios"):  # means of the kept rows
        torch.testing.assert_close(out, row, rtol=4 * torch.finfo(dtype).eps, atol=0)  # (v + ... + v) / k may round
    else:
        assert torch.equal(out, row)


OUTLIERS = [1e6, -1e6, math.inf, -math.inf, math.nan]


@pytest.mark.parametrize("name", [n for n in ALL if RULES[n].robust])
@SETTINGS
@given(data=st.data())
def test_bounded_under_outliers(name: str, data: st.DataObject) -> None:
    rule = RULES[name]
    x, f = data.draw(cases(name))
    m = x.shape[0]
    # how many rows are outliers: f itself for rules that take f, else any count below m/2
    n_out = f if rule.needs_f else data.draw(st.integers(0, (m - 1) // 2))
    n_out = min(n_out, (m - 1) // 2)
    bad = data.draw(st.lists(st.integers(0, m - 1), min_size=n_out, max_size=n_out, unique=True))
    y = x.clone()
    for i in bad:
        y[i] = data.draw(st.sampled_from(OUTLIERS))
    note(f"outlier rows {bad}: {[y[i, 0].item() for i in bad]}")
    regular = x[[i for i in range(m) if i not in bad]]
    out = rule(y, f)
    assert out.shape == (x.shape[1],)
    assert torch.isfinite(out).all()
    if rule.sign_output:
        assert set(out.unique().tolist()) <= {-1.0, 0.0, 1.0}  # a vote: bounded by 1 whatever the rows
    elif name == "cclip":
        # each iteration is a convex combination of v and the regular rows, plus at most tau / m
        # per coordinate from each finite outlier (non-finite rows pull 0); v_0 = the median
        # lies in the regular range while fewer than m / 2 rows are outliers
        opts = rule.defaults()
        q = sum(1 for i in bad if math.isfinite(y[i, 0]))
        slack = opts["iters"] * opts["tau"] * q / m + 1e-9 * (float(regular.abs().max()) + 1)
        assert (out >= regular.amin(0) - slack).all() and (out <= regular.amax(0) + slack).all()
    elif name == "geomed":
        # exact bound: ||z - c|| <= 2 (m - q) / (m - 2q) * max_i ||x_i - c|| over the regular rows
        c = regular.mean(0)
        r = float((regular - c).norm(dim=1).max())
        q = sum(1 for i in bad if math.isfinite(y[i, 0]))  # finite outliers; non-finite rows are dropped
        kept = m - (len(bad) - q)
        bound = 2 * (kept - q) / (kept - 2 * q) * r
        assert float((out - c).norm()) <= bound * (1 + 1e-6) + 1e-6
    else:
        slack = 1e-9 * (float(regular.abs().max()) + 1)
        assert (out >= regular.amin(0) - slack).all() and (out <= regular.amax(0) + slack).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m", [1, 2, 5, 8])
def test_dtype_device_shape_preserved(name: str, dtype: torch.dtype, m: int) -> None:
    rule = RULES[name]
    f = 1 if rule.needs_f else 0
    if name in KRUMS and m < 5 or name == "trimmed-mean" and m < 3:
        f = 0
    try:
        check_rule(name, m, f)
    except ConfigError:
        with pytest.raises(ConfigError):
            rule(torch.zeros(m, 3, dtype=dtype), f)
        return
    x = torch.randn(m, 7, dtype=dtype, generator=torch.Generator().manual_seed(m))
    out = rule(x, f)
    assert out.dtype == dtype and out.device == x.device and out.shape == (7,)
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_cuda_matches_cpu(name: str) -> None:
    x = torch.randn(11, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[3] = math.nan
    cpu = RULES[name](x, 2)
    gpu = RULES[name](x.cuda(), 2)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, equal_nan=True)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_all_rows_non_finite_does_not_crash(name: str, value: float) -> None:
    rule = RULES[name]
    f = 1 if rule.needs_f and min_rows(rule, 1, 5) is not None else 0
    out = rule(torch.full((5, 3), value), f)
    assert out.shape == (3,)
    if rule.sign_output:  # a NaN casts no vote, +inf votes +1
        assert torch.equal(out, torch.full((3,), 0.0 if math.isnan(value) else 1.0))
    else:
        assert not torch.isfinite(out).any()


# ----------------------------------------------------------------------------- validity


def test_check_rule_conditions() -> None:
    check_rule("krum", 7, 2)
    check_rule("multi-krum", 3, 0)
    check_rule("trimmed-mean", 5, 2)
    check_rule("median", 1, 0)
    for name, m, f in [("krum", 6, 2), ("multi-krum", 2, 0), ("trimmed-mean", 4, 2), ("trimmed-mean", 0, 0)]:
        with pytest.raises(ConfigError, match=f"m = {m}"):
            check_rule(name, m, f)
    with pytest.raises(ConfigError, match=">= 0"):
        check_rule("median", 5, -1)
    with pytest.raises(ConfigError, match="cannot exceed"):
        check_rule("mean", 3, 4)
    with pytest.raises(ConfigError, match="krum"):
        get_rule("kurm")
    assert get_rule("geomed").fn is geometric_median


@SETTINGS
@given(data=st.data(), f=st.integers(0, 5), d=st.integers(1, 4))
def test_functions_raise_on_invalid_f(data: st.DataObject, f: int, d: int) -> None:
    m = data.draw(st.integers(1, 2 * f + 2))
    x = torch.zeros(m, d)
    for name, fn in (("krum", krum), ("multi-krum", multi_krum), ("krum", krum_scores)):
        with pytest.raises(ConfigError, match="2f \\+ 3"):
            fn(x, f)
        with pytest.raises(ConfigError, match=f"m = {m}\\b"):
            check_rule(name, m, f)
    if f >= 1:
        m = data.draw(st.integers(1, 2 * f))
        with pytest.raises(ConfigError, match="m > 2f"):
            trimmed_mean(torch.zeros(m, d), f)
        with pytest.raises(ConfigError, match=f"m = {m}\\b"):
            check_rule("trimmed-mean", m, f)
    with pytest.raises(ConfigError):
        median(torch.zeros(0, d))


def test_bad_arguments_raise_config_error() -> None:
    x = torch.randn(7, 3)
    for call in [
        lambda: multi_krum(x, 1, k=0),
        lambda: multi_krum(x, 1, k=8),
        lambda: trimmed_mean(x, -1),
        lambda: krum(x, 1.5),
        lambda: geometric_median(x, tol=-1.0),
        lambda: geometric_median(x, max_iter=-1),
        lambda: mean(torch.zeros(3)),
        lambda: median(torch.zeros(3, 2, dtype=torch.long)),
    ]:
        with pytest.raises(ConfigError):
            call()


def test_rule_call_passes_f_only_when_needed() -> None:
    x = torch.arange(10.0).reshape(5, 2)
    assert torch.equal(RULES["median"](x, 2), median(x))
    assert torch.equal(RULES["trimmed-mean"](x, 2), trimmed_mean(x, 2))
    assert torch.equal(RULES["multi-krum"](x, 1, k=2), multi_krum(x, 1, k=2))
    assert torch.equal(RULES["geomed"](x, 1, max_iter=0), median(x))
    assert set(RULES) == {
        "mean", "median", "trimmed-mean", "geomed", "krum", "multi-krum", "cclip", "bulyan", "signsgd", "ios"
    }
    assert not RULES["mean"].robust and all(RULES[n].robust for n in ALL if n != "mean")


# ----------------------------------------------------------------------------- against the references


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_median_and_trimmed_mean_match_reference(data: st.DataObject, dtype: torch.dtype) -> None:
    x, f = data.draw(cases("trimmed-mean"))
    rows = x.tolist()
    xd = x.to(dtype)
    rows_d = xd.double().tolist()  # the reference sees exactly the values the rule sees
    rtol = 1e-12 if dtype == torch.float64 else 1e-6
    atol = rtol * (float(x.abs().max()) + 1)
    tiny = torch.finfo(dtype).tiny  # halving a subnormal rounds
    f64 = torch.float64
    torch.testing.assert_close(median(xd).double(), torch.tensor(ref_median(rows_d), dtype=f64), rtol=rtol, atol=tiny)
    torch.testing.assert_close(
        trimmed_mean(xd, f).double(), torch.tensor(ref_trimmed_mean(rows_d, f), dtype=f64), rtol=rtol, atol=atol
    )
    torch.testing.assert_close(mean(x), torch.tensor(ref_mean(rows), dtype=torch.float64), rtol=1e-12, atol=atol)


@pytest.mark.parametrize("m", [2, 4, 6, 12])
def test_median_even_m_is_mean_of_middle_values(m: int) -> None:
    x = torch.randn(m, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(m))
    s = x.sort(0).values
    torch.testing.assert_close(median(x), (s[m // 2 - 1] + s[m // 2]) / 2, rtol=1e-15, atol=0)
    assert not torch.equal(median(x), torch.median(x, 0).values)  # torch's lower middle is not ours


def test_nan_is_read_as_plus_inf_by_median_and_trimmed_mean() -> None:
    x = torch.tensor([[math.nan, 0.0], [1.0, math.nan], [2.0, 5.0], [3.0, -math.inf], [4.0, 1.0]])
    torch.testing.assert_close(median(x), torch.tensor([3.0, 1.0]))  # columns read as [1,2,3,4,+inf], [-inf,0,1,5,+inf]
    torch.testing.assert_close(trimmed_mean(x, 1), torch.tensor([3.0, 2.0]))


@SETTINGS
@given(data=st.data())
def test_krum_matches_reference(data: st.DataObject) -> None:
    x, f = data.draw(cases("krum"))
    m = x.shape[0]
    rows = x.tolist()
    ref = ref_krum_scores(rows, f)
    spread = float((x - x.mean(0)).abs().max()) ** 2 * x.shape[1] + 1e-300
    torch.testing.assert_close(krum_scores(x, f), torch.tensor(ref, dtype=x.dtype), rtol=1e-9, atol=1e-9 * spread)
    k = data.draw(st.integers(1, m))
    if krum_separated(x, f, k):
        torch.testing.assert_close(multi_krum(x, f, k), torch.tensor(ref_multi_krum(rows, f, k), dtype=x.dtype))
    if krum_separated(x, f, 1):
        assert torch.equal(krum(x, f), x[ref_krum_order(rows, f)[0]])


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_krum_ties_lowest_index_wins(data: st.DataObject, dtype: torch.dtype) -> None:
    # small integers: every distance and score is exact, so ties are exact ties
    m, f = data.draw(valid_m_f(RULES["krum"]))
    d = data.draw(st.integers(1, 3))
    values = data.draw(st.lists(st.integers(-2, 2), min_size=m * d, max_size=m * d))
    x = torch.tensor(values, dtype=dtype).reshape(m, d)
    rows = x.double().tolist()
    assert krum_scores(x, f).double().tolist() == ref_krum_scores(rows, f)
    order = ref_krum_order(rows, f)
    assert torch.equal(krum(x, f), x[order[0]])
    k = data.draw(st.integers(1, m))
    torch.testing.assert_close(multi_krum(x, f, k), x[order[:k]].mean(0))


def test_krum_tie_example() -> None:
    x = torch.tensor([[3.0], [2.0], [1.0], [0.0], [4.0]])  # scores 2, 2, 2, 5, 5 with m - f - 2 = 2
    assert krum_scores(x, 1).tolist() == [2.0, 2.0, 2.0, 5.0, 5.0]
    assert krum(x, 1).item() == 3.0
    assert multi_krum(x, 1, k=2).item() == 2.5


def test_krum_uses_exactly_m_minus_f_minus_2_neighbours() -> None:
    m, f = 7, 2
    x = torch.tensor([[0.0], [8.0], [14.0], [19.0], [22.0], [24.0], [28.0]])
    rows = x.tolist()

    def winner(neighbours: int) -> int:
        scores = []
        for i, a in enumerate(rows):
            dists = sorted((a[0] - b[0]) ** 2 for j, b in enumerate(rows) if j != i)
            scores.append(sum(dists[:neighbours]))
        best = min(scores)
        assert scores.count(best) == 1
        return scores.index(best)

    right, off_by_one, off_by_two = winner(m - f - 2), winner(m - f - 1), winner(m - f)
    assert len({right, off_by_one, off_by_two}) == 3  # the case discriminates between the counts
    assert torch.equal(krum(x, f), x[right])
    assert krum_scores(x, f).tolist() == ref_krum_scores(rows, f)


def test_krum_never_selects_non_finite_rows() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 4, dtype=torch.float64, generator=g)
    x[0, 1] = math.nan
    x[4] = math.inf
    x[5, 0] = -math.inf
    scores = krum_scores(x, 3)
    assert torch.isinf(scores[[0, 4, 5]]).all() and torch.isfinite(scores[[1, 2, 3, 6, 7, 8]]).all()
    # the other rows' scores are those of the finite rows alone (with the same neighbour count)
    finite = [1, 2, 3, 6, 7, 8]
    ref = ref_krum_scores(x[finite].tolist(), 3 - 3)  # 6 rows, f = 0: 4 neighbours = 9 - 3 - 2
    torch.testing.assert_close(scores[finite], torch.tensor(ref, dtype=x.dtype))
    assert torch.isfinite(multi_krum(x, 3)).all()
    # more non-finite rows than k finite ones: only finite rows are averaged
    y = x.clone()
    y[1:4] = math.nan
    torch.testing.assert_close(multi_krum(y, 3, k=9), y[[6, 7, 8]].mean(0))


def test_krum_huge_rows_do_not_leak_nan() -> None:
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    x[0] = 3e38  # squared norm overflows float32: inf - inf in the Gram identity
    x[1] = -3e38
    scores = krum_scores(x, 2)
    assert not torch.isnan(scores).any()
    assert torch.isfinite(scores[2:]).all()
    assert torch.isfinite(krum(x, 2)).all() and torch.isfinite(multi_krum(x, 2)).all()


def test_krum_float32_far_from_origin() -> None:
    # spread 1e-2 around 1e3: the raw Gram identity would lose every digit in float32
    g = torch.Generator().manual_seed(2)
    x64 = 1e3 + 1e-2 * torch.randn(10, 50, dtype=torch.float64, generator=g)
    x32 = x64.float()
    ref = ref_krum_scores(x32.double().tolist(), 2)
    torch.testing.assert_close(krum_scores(x32, 2).double(), torch.tensor(ref, dtype=torch.float64), rtol=1e-3, atol=0)
    assert torch.equal(krum(x32, 2), x32[ref_krum_order(x32.double().tolist(), 2)[0]])


@SETTINGS
@given(data=st.data())
def test_geomed_objective_matches_reference(data: st.DataObject) -> None:
    x, _ = data.draw(cases("geomed"))
    rows = x.numpy()
    z = geometric_median(x).numpy()
    best = ref_geomed_min(rows)
    assert objective(rows, z) <= best * (1 + 1e-6) + 1e-12
    # first-order optimality: the unit vectors to the rows not at z sum to at most the count at z
    # (rows within 1e-3 s count as at z: near an optimal data point the iterate approaches it
    # linearly and stops one small step short)
    s = geomed_scale(rows)
    dist = np.linalg.norm(rows - z, axis=1)
    at_z = dist <= 1e-3 * s
    pull = ((rows[~at_z] - z) / dist[~at_z, None]).sum(axis=0)
    assert np.linalg.norm(pull) <= at_z.sum() + 1e-3 * len(rows) or s == 0


def test_geomed_leaves_a_non_optimal_data_point() -> None:
    # the coordinate-wise median (0, 0) is a data point, but the minimum is the Fermat point
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = (3 - math.sqrt(3)) / 6
    torch.testing.assert_close(geometric_median(x, tol=1e-12), torch.tensor([t, t], dtype=torch.float64))


def test_geomed_stops_at_an_optimal_data_point() -> None:
    # an angle of more than 120 degrees at (0, 0): that vertex is the geometric median
    x = torch.tensor([[0.0, 0.0], [1.0, 0.1], [-1.0, 0.1]], dtype=torch.float64)
    z, n_iter = geometric_median_with_info(x)
    torch.testing.assert_close(z, x[0], rtol=0, atol=1e-7)
    assert n_iter < 20


def test_geomed_info_and_limits() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 30, dtype=torch.float64, generator=g)
    z, n_iter = geometric_median_with_info(x)
    assert 1 <= n_iter < 1000
    z2, n2 = geometric_median_with_info(x, max_iter=2)
    assert n2 == 2 and not torch.equal(z, z2)
    z0, n0 = geometric_median_with_info(x, max_iter=0)
    assert n0 == 0 and torch.equal(z0, median(x))
    # more than half the rows at one point: that point, with no iteration
    y = torch.cat([torch.ones(6, 30, dtype=torch.float64), x[:5]])
    zy, ny = geometric_median_with_info(y)
    assert ny == 0 and torch.equal(zy, torch.ones(30, dtype=torch.float64))


def test_geomed_drops_non_finite_rows() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(9, 6, dtype=torch.float64, generator=g)
    y = torch.cat([x, torch.full((3, 6), math.nan), torch.full((2, 6), math.inf)])
    y[10, 2] = 1.0  # partly finite rows are dropped too
    torch.testing.assert_close(geometric_median(y), geometric_median(x))


def test_geomed_float32_reaches_tolerance() -> None:
    g = torch.Generator().manual_seed(5)
    x = 5.0 + torch.randn(20, 785, generator=g)
    x[:4] = 100.0
    z, n_iter = geometric_median_with_info(x)
    assert n_iter < 200 and z.dtype == torch.float32
    rows = x.double().numpy()
    assert objective(rows, z.double().numpy()) <= ref_geomed_min(rows, 500) * (1 + 1e-6)


def test_krum_float32_same_value_attack_keeps_regular_distances() -> None:
    # attackers at 100 per coordinate, regular rows 1e-2 apart: centring on a regular row
    # keeps the regular rows' scores accurate in float32
    g = torch.Generator().manual_seed(6)
    x = (0.3 + 1e-2 * torch.randn(20, 785, dtype=torch.float64, generator=g)).float()
    x[-8:] = 100.0
    rows = x.double().tolist()
    ref = torch.tensor(ref_krum_scores(rows, 8), dtype=torch.float64)
    torch.testing.assert_close(krum_scores(x, 8).double()[:12], ref[:12], rtol=1e-4, atol=0)
    assert torch.equal(krum(x, 8), x[ref_krum_order(rows, 8)[0]])


def test_geomed_does_not_stop_next_to_a_non_optimal_row() -> None:
    # the coordinate-wise median (0, 0) lies 1e-7 from the row (0, 1e-7), whose weight then
    # swamps the others: steps are tiny, yet the minimum is the Fermat point far away
    x = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 1e-7]], dtype=torch.float64)
    rows = x.numpy()
    z = geometric_median(x).numpy()
    assert objective(rows, z) <= ref_geomed_min(rows) * (1 + 1e-9)
    assert np.linalg.norm(z - rows[2]) > 0.1


def test_krum_tie_break_on_identical_float32_rows():
    """Issue 8: identical rows got Gram distances of rounding size (~5e-7), so Krum chose row 1 on [a, b, a, b]."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        a, b = torch.randn(5, generator=gen), torch.randn(5, generator=gen) * 3 + 1
        x = torch.stack([a, b, a, b])
        assert torch.equal(krum(x, 0), a)
        assert torch.equal(krum(torch.stack([b, a, b, a]), 0), b)
    # copies are distance 0 apart and share their representative's distances exactly
    x = torch.randn(7, 50, generator=gen)
    x[4] = x[1]
    x[6] = x[1]
    scores = krum_scores(x, 1)
    assert scores[1] == scores[4] == scores[6]
    # a non-finite row is nobody's copy, not even of another non-finite row
    x[2] = math.inf
    x[3] = math.inf
    assert torch.isinf(krum_scores(x, 1)[2:4]).all()


@pytest.mark.parametrize("name", ["krum", "multi-krum", "geomed", "median", "trimmed-mean", "mean"])
@pytest.mark.parametrize("a", [1e-30, 1e-23, 1e19, 1e30])
def test_scale_equivariance_at_extreme_float32_scales(name, a):
    """Issue 8: squared distances under/overflowed in float32 below ~1e-22 and above ~1e19 (Krum chose
    another row; geomed returned its start after 0 iterations). Rows are rescaled by an exact power of two."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 6, generator=gen)
    rule = RULES[name]
    expected = rule(x, 2)
    got = rule(a * x, 2) / a
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=0)
    if name == "geomed":
        assert geometric_median_with_info(a * x)[1] == geometric_median_with_info(x)[1] > 0
