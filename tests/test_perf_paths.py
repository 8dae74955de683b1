"""The fast paths give the answers of the plain ones.

Speed work on the rules, the softmax gradient and the simulator's process settings
(docs/performance.md) must not change results: the CPU median's sort against the
selection it replaced (bit for bit), Krum's cheaper bookkeeping against the plain
form (bit for bit), the geometric median's Gram-matrix iteration against the
explicit one and its warm start against the cold start (to the tolerance), the
chunked softmax gradient against the gathered one (bit for bit), and the thread and
memory defaults of ``simulate``. No timing is asserted here.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from byzrsa.aggregators import RULES, geometric_median, geometric_median_with_info, krum, median, multi_krum
from byzrsa.aggregators._common import _half_sum, _middle, _nan_as_inf, _non_finite_rows
from byzrsa.config import config_from_dict
from byzrsa.data import load_dataset
from byzrsa.engines.common import build_problem
from byzrsa.engines.cpu import default_threads, reuse_freed_memory
from byzrsa.engines.sim import Simulator, simulate
from byzrsa.errors import ConfigError
from byzrsa.models import Rows, SoftmaxRegression

GEOMED = sys.modules["byzrsa.aggregators.geomed"]
KRUM = sys.modules["byzrsa.aggregators.krum"]
F64 = torch.float64


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values (NaN equal to NaN), dtype and shape."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def awkward(m: int, d: int, kind: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(m, d, generator=gen, dtype=dtype)
    if kind == 1:
        x = x.round()  # ties
    elif kind == 2:
        x[::2] = math.inf
        x[1::3] = -math.inf
    elif kind == 3:
        x[torch.rand(m, d, generator=gen) < 0.3] = math.nan
    elif kind == 4:
        x = x * torch.finfo(dtype).max  # sums of the middle pair overflow
    elif kind == 5:
        x = x * torch.finfo(dtype).tiny / 8  # subnormal
    elif kind == 6:
        x[m // 2 :] = x[0].clone()  # copies
    return x


# ----------------------------------------------------------------------------- median


def selection_median(x: torch.Tensor) -> torch.Tensor:
    """The median as computed before the sort: two order statistics by selection, then their midpoint."""
    m = x.shape[0]
    x = _nan_as_inf(x)
    if m % 2:
        return _middle(x, m // 2, m // 2 + 1)[0]
    mid = _middle(x, m // 2 - 1, m // 2 + 1)
    return _half_sum(mid[0], mid[1])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 20, 21])
def test_median_by_sort_is_the_selection_bit_for_bit(dtype: torch.dtype, m: int) -> None:
    gen = torch.Generator().manual_seed(m)
    for kind in range(7):
        for d in (1, 9, 300):
            x = awkward(m, d, kind, dtype, gen)
            out = median(x)
            assert same_bits(out, selection_median(x)), (kind, d)
            assert out.data_ptr() != x.data_ptr() and out.is_contiguous()


def test_median_result_does_not_hold_the_sorted_copy() -> None:
    out = median(torch.randn(21, 1000))
    assert out.untyped_storage().nbytes() == 1000 * 4  # one row, not the (m, d) sorted array behind it


# ----------------------------------------------------------------------------- Krum


def pairwise_duplicates(x: torch.Tensor, bad: torch.Tensor) -> torch.Tensor | None:
    """The duplicate search as written before: every candidate pair in row-major order."""
    sums = x.sum(dim=1)
    good = ~bad
    equal = (sums[:, None] == sums[None, :]) & good[:, None] & good[None, :]
    rep = torch.arange(x.shape[0])
    for i, j in equal.triu(diagonal=1).nonzero().tolist():
        if int(rep[j]) == j and torch.equal(x[i], x[j]):
            rep[j] = rep[i]
    return rep if bool((rep != torch.arange(x.shape[0])).any()) else None


def plain_sq_dists(y: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    gram = y @ y.T
    sq = gram.diagonal()
    d2 = sq[:, None] + sq[None, :] - 2 * gram
    d2 = torch.where(torch.isfinite(d2), d2.clamp_min(0), torch.full((), math.inf, dtype=d2.dtype))
    d2 = (d2 + d2.T) / 2
    eye = torch.eye(y.shape[0], dtype=torch.bool)
    return d2.masked_fill(eye | bad[:, None] | bad[None, :], math.inf)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.slow
def test_krum_bookkeeping_is_the_plain_form(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    for m in (3, 7, 12, 20):
        for kind in (0, 1, 3, 6):
            x = awkward(m, 11, kind, dtype, gen)
            if kind == 6:  # several classes of copies, out of order
                x[1] = x[m - 1].clone()
                x[2] = x[m // 2 + 1].clone()
            bad = _non_finite_rows(x)
            any_bad = bool(bad.any())
            clean = torch.where(bad[:, None], torch.zeros((), dtype=dtype), x)
            rep, ref = KRUM._duplicate_of(clean, bad), pairwise_duplicates(clean, bad)
            assert (rep is None and ref is None) or torch.equal(rep, ref)
            assert same_bits(KRUM._pairwise_sq_dists(clean, bad, any_bad), plain_sq_dists(clean, bad))
            if not any_bad:
                scores = KRUM._scores_from(plain_sq_dists(clean, bad), 0, bad)
                assert torch.equal(KRUM._ranking(scores, bad, False), KRUM._ranking(scores, bad, True))


def test_krum_returns_the_selected_row_itself() -> None:
    x = torch.randn(9, 5, dtype=F64)
    x[7:] = 50.0
    out = krum(x, 2)
    assert any(torch.equal(out, row) for row in x) and out.data_ptr() != x.data_ptr()
    assert torch.equal(out, multi_krum(x, 2, k=1))
    x[0] = math.nan  # a non-finite row is never the one returned
    assert torch.isfinite(krum(x, 2)).all()


# ----------------------------------------------------------------------------- geometric median


def explicit(x: torch.Tensor, monkeypatch: pytest.MonkeyPatch, **kwargs) -> tuple[torch.Tensor, int]:
    """The geometric median on explicit iterates (the path for many rows), forced."""
    with monkeypatch.context() as patch:
        patch.setattr(GEOMED, "_GRAM_ROWS", 0)
        return geometric_median_with_info(x, **kwargs)


def scale_of(x: torch.Tensor) -> float:
    x = x.double()
    return float((x - median(x)).norm(dim=1).median()) or 1.0


def objective(x: torch.Tensor, z: torch.Tensor) -> float:
    return float((x.double() - z.double()).norm(dim=1).sum())


def problems(gen: torch.Generator, dtype: torch.dtype) -> list[torch.Tensor]:
    out = []
    for m, d in ((3, 2), (5, 4), (12, 30), (20, 300), (33, 50)):
        x = torch.randn(m, d, generator=gen, dtype=dtype) + 3
        out.append(x.clone())
        x[-(m // 3) :] = 100.0  # same-value attackers: a far cluster of copies
        out.append(x.clone())
        x[-(m // 2 - 1) :] = x[1].clone()  # copy attack: the median sits on a vertex
        out.append(x.clone())
    out.append(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [0.0, 0.0]], dtype=dtype))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_gram_iteration_reaches_the_explicit_iterations_point(dtype: torch.dtype, monkeypatch) -> None:
    gen = torch.Generator().manual_seed(5)
    for x in problems(gen, dtype):
        z_gram, it_gram = geometric_median_with_info(x)
        z_plain, it_plain = explicit(x, monkeypatch)
        s = scale_of(x)
        slack = 50 * 1e-7 * s + 50 * torch.finfo(dtype).eps * (float(x.abs().max()) + s)
        assert float((z_gram.double() - z_plain.double()).norm()) <= slack
        assert objective(x, z_gram) <= objective(x, z_plain) * (1 + 1e-6) + 1e-12
        assert abs(it_gram - it_plain) <= 2 + it_plain // 10 and z_gram.dtype == dtype


def test_gram_iteration_returns_an_optimal_vertex_exactly(monkeypatch) -> None:
    x = torch.randn(15, 40, dtype=F64)
    x[6:] = x[2].clone()  # 10 of 15 rows are one point: it is the geometric median
    z, _ = geometric_median_with_info(x)
    assert torch.equal(z, x[2])
    assert torch.equal(explicit(x, monkeypatch)[0], x[2])


@pytest.mark.slow
def test_gram_iteration_keeps_float64_accuracy_at_large_d(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(10, 200_000, generator=gen, dtype=F64) + 1e3  # columns split over blocks of 2^16
    z, _ = geometric_median_with_info(x, tol=1e-12)
    ref, _ = explicit(x, monkeypatch, tol=1e-12)
    assert float((z - ref).norm()) <= 1e-9 * scale_of(x)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("rows", [12, 80])  # the Gram path and the explicit one
def test_warm_start_reaches_the_cold_starts_point_to_the_tolerance(dtype: torch.dtype, rows: int) -> None:
    """Rounds of drifting messages, the previous round's aggregate passed as the start."""
    gen = torch.Generator().manual_seed(rows)
    base = torch.randn(rows, 60, generator=gen, dtype=dtype) * 0.5
    previous = None
    for step in range(12):
        x = base + 0.05 * step + 0.1 * torch.randn(rows, 60, generator=gen, dtype=dtype)
        x[-(rows // 4) :] = 7.0  # attackers
        cold, _ = geometric_median_with_info(x)
        warm, _ = geometric_median_with_info(x, previous=previous)
        best, _ = geometric_median_with_info(x.double(), tol=1e-14, max_iter=100_000)
        s = scale_of(x)
        tol = 20 * 1e-7 * s + 100 * torch.finfo(dtype).eps * (float(x.abs().max()) + s)
        assert float((warm.double() - best).norm()) <= tol, step  # the same point as the cold start ...
        assert float((cold.double() - best).norm()) <= tol, step  # ... at the same tolerance
        assert objective(x, warm) <= objective(x, best) * (1 + 1e-6)
        previous = warm


def test_a_worse_previous_is_not_used() -> None:
    x = torch.randn(20, 30, dtype=F64)
    cold = geometric_median_with_info(x)
    far = torch.full((30,), 1e3, dtype=F64)
    assert torch.equal(geometric_median_with_info(x, previous=far)[0], cold[0])
    assert geometric_median_with_info(x, previous=far)[1] == cold[1]
    bad = torch.zeros(30, dtype=F64)
    bad[3] = math.nan
    assert torch.equal(geometric_median_with_info(x, previous=bad)[0], cold[0])  # a non-finite start is ignored
    with pytest.raises(ConfigError, match=r"previous must be a tensor of shape \(30,\)"):
        geometric_median(x, previous=torch.zeros(29))
    assert torch.equal(geometric_median(x, previous=geometric_median(x), warm=False), cold[0])


def test_a_previous_at_the_answer_stops_at_once() -> None:
    x = torch.randn(20, 30, dtype=F64)
    z, _ = geometric_median_with_info(x, tol=1e-12)
    again, it = geometric_median_with_info(x, tol=1e-9, previous=z)
    assert it <= 2 and float((again - z).norm()) <= 1e-8 * scale_of(x)


@pytest.mark.parametrize("rows", [12, 80])
def test_warm_start_is_translation_and_scale_equivariant(rows: int) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(rows, 25, generator=gen, dtype=F64)
    previous = geometric_median(x + 0.1)
    t = torch.randn(25, generator=gen, dtype=F64) * 10
    z = geometric_median(x, previous=previous)
    s = scale_of(x)
    torch.testing.assert_close(geometric_median(x + t, previous=previous + t) - t, z, rtol=0, atol=1e-6 * s)
    torch.testing.assert_close(geometric_median(3.0 * x, previous=3.0 * previous) / 3.0, z, rtol=0, atol=1e-6 * s)


def test_the_engines_pass_the_previous_aggregate_to_geomed() -> None:
    rule = RULES["geomed"]
    assert rule.uses_previous
    config = config_from_dict(dict(dataset="synthetic", workers=8, byzantine=2, method="geomed", iterations=3,
                                   attack={"name": "same-value", "c": 10.0}, dtype="float64"))
    problem = build_problem(config)
    sim = Simulator(problem)
    sim.step()
    assert sim.aggregator.previous is not None and sim.aggregator.previous.shape == (problem.model.dim,)
    kept = sim.aggregator.previous.clone()
    sim.step()
    assert not torch.equal(kept, sim.aggregator.previous)


def test_a_copy_attack_needs_few_iterations_from_the_previous_round() -> None:
    """9 of 20 rows are row 1 (the rest in general position), so the geometric median is that row; the rows
    drift a little per round. From the previous round's answer the vertex test fires at once; from the median
    it takes longer."""
    gen = torch.Generator().manual_seed(9)
    base = torch.randn(20, 50, generator=gen, dtype=F64) * 3
    previous = None
    for step in range(5):
        x = base + 1e-4 * step * torch.randn(20, 50, generator=gen, dtype=F64)
        x[12:] = x[1].clone()  # 9 of 20 rows at one point: the geometric median, not the coordinate median
        cold, cold_it = geometric_median_with_info(x)
        warm, warm_it = geometric_median_with_info(x, previous=previous)
        assert torch.equal(cold, x[1]) and torch.equal(warm, x[1])
        if previous is not None:
            assert warm_it <= 2 < cold_it
        previous = warm


# ----------------------------------------------------------------------------- softmax gradient by chunks


@pytest.mark.parametrize("m", [1, 5, 64, 65, 150])
@pytest.mark.parametrize("shared", [False, True])
def test_softmax_gradient_by_chunks_is_the_gathered_one_bit_for_bit(m: int, shared: bool) -> None:
    gen = torch.Generator().manual_seed(m)
    model = SoftmaxRegression(12, 4)
    source = model.featurize(torch.rand(300, 3, 4, generator=gen) * 255)
    index = torch.randint(0, 300, (m * 8,), generator=gen)
    y = torch.randint(0, 4, (m, 8), generator=gen)
    w = torch.randn(model.dim, generator=gen).expand(m, -1) if shared else torch.randn(m, model.dim, generator=gen)
    rows = model.gather_rows(source, index, (m, 8, 13))
    gathered = source[index].view(m, 8, 13)
    assert torch.equal(rows.materialize(), gathered) and rows.shape == (m, 8, 13)
    assert torch.equal(model.grad(w, rows, y), model.grad(w, gathered, y))
    loss, grad = model.loss_grad(w, rows, y)
    ref_loss, ref_grad = model.loss_grad(w, gathered, y)
    assert torch.equal(loss, ref_loss) and torch.equal(grad, ref_grad)


def test_problem_gather_gives_softmax_its_rows_and_networks_tensors() -> None:
    base = dict(dataset="mnist-sample", workers=4, iterations=1)
    soft = build_problem(config_from_dict(base))
    idx = torch.tensor([[0, 5, 5], [2, 1, 0], [7, 7, 7], [3, 2, 1]])
    x, y = soft.gather(idx)
    assert isinstance(x, Rows) and x.shape == (4, 3, 785)
    assert torch.equal(x.materialize(), soft.train_x[idx.reshape(-1)].view(4, 3, 785))
    assert torch.equal(y, soft.train_y[idx.reshape(-1)].view(4, 3))
    net = build_problem(config_from_dict({**base, "model": "lenet5"}))
    x, _ = net.gather(idx)
    assert isinstance(x, torch.Tensor) and x.shape == (4, 3, 1, 28, 28)


# ----------------------------------------------------------------------------- simulate's process settings


@pytest.mark.skipif(not Path("/proc/loadavg").exists(), reason="the runnable count is read from Linux's /proc")
def test_busy_cores_counts_other_runnable_processes_at_once() -> None:
    """Two spinning processes count as two busy cores the moment they run (a load average would lag)."""
    import subprocess

    from byzrsa.engines.cpu import _busy_cores

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.3)
        assert _busy_cores() >= 2.0
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()


def test_pinned_default_threads_holds_until_changed(monkeypatch) -> None:
    import byzrsa.engines.cpu as cpu_module

    monkeypatch.setattr(cpu_module, "_DEFAULT_THREADS", None)
    cpu_module.pin_default_threads(1)
    monkeypatch.setattr(cpu_module, "_busy_cores", lambda: 0.0)
    assert default_threads() == 1  # a pool worker keeps one thread however idle the cores look


def test_default_threads_rule() -> None:
    assert default_threads(cores=2, busy=0.0) == 2
    assert default_threads(cores=2, busy=0.4) == 2
    assert default_threads(cores=2, busy=0.6) == 1
    assert default_threads(cores=2, busy=7.0) == 1
    assert default_threads(cores=16, busy=3.2) == 13
    assert default_threads(cores=1, busy=0.0) == 1
    first = default_threads()
    assert first >= 1 and default_threads() == first  # decided once per process


def test_simulate_restores_threads_and_memory_settings() -> None:
    before = torch.get_num_threads()
    config = config_from_dict(dict(dataset="synthetic", workers=4, iterations=4, eval_every=2))
    rows = list(simulate(build_problem(config)))
    assert [int(r["iteration"]) for r in rows] == [0, 2, 4]
    assert torch.get_num_threads() == before
    cpu_module = sys.modules["byzrsa.engines.cpu"]
    with reuse_freed_memory():
        with reuse_freed_memory():
            big = torch.empty(10**7).fill_(1.0)
        assert cpu_module._REUSING == 1  # nested blocks: the outer one still holds the setting
        del big
    assert cpu_module._REUSING == 0


def test_load_does_not_change_a_runs_thread_count_mid_process(monkeypatch) -> None:
    import byzrsa.engines.cpu as cpu_module

    monkeypatch.setattr(cpu_module, "_DEFAULT_THREADS", None)
    monkeypatch.setattr(cpu_module, "_busy_cores", lambda: 0.0)
    monkeypatch.setattr(cpu_module, "_cores", lambda: 3)
    assert default_threads() == 3
    monkeypatch.setattr(cpu_module, "_busy_cores", lambda: 9.0)
    assert default_threads() == 3  # the process keeps its first answer
    assert default_threads(cores=3, busy=9.0) == 1


@pytest.mark.slow
def test_training_on_mnist_sample_is_unchanged_by_the_fast_paths() -> None:
    """A short paper-setting run per rule: every path still trains (accuracy well above chance)."""
    ds = load_dataset("mnist-sample", pixels="raw", workers=20, quiet=True)
    for method, lr in (("geomed", 1e-4), ("median", 1e-4), ("krum", 1e-4)):
        config = config_from_dict(dict(dataset="mnist-sample", pixels="raw", workers=20, byzantine=4, method=method,
                                       lr=lr, iterations=60, eval_every=60, attack={"name": "same-value", "c": 100.0}))
        rows = list(simulate(build_problem(config, ds)))
        assert rows[-1]["accuracy"] > 0.5, method
    assert np.isfinite(rows[-1]["train_loss"])


# ----------------------------------------------------------------------------- the GPU paths, run on the CPU

COORD = sys.modules["byzrsa.aggregators.coordinate"]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_device_median_is_the_host_median(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    for m in (1, 2, 3, 8, 21):
        for kind in range(7):
            x = awkward(m, 13, kind, dtype, gen)
            assert same_bits(COORD._median_on_device(x), median(x)), (m, kind)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.slow
def test_device_krum_reads_nothing_and_selects_what_the_host_path_selects(dtype: torch.dtype, monkeypatch) -> None:
    gen = torch.Generator().manual_seed(6)
    cases = []
    for m in (5, 9, 20):
        for kind in (0, 1, 3, 4, 6):
            cases.append(awkward(m, 17, kind, dtype, gen))
    cases.append(torch.full((7, 3), math.nan, dtype=dtype))  # every row non-finite: the mean
    host = [(krum_scores_of(x), krum(x, 1), multi_krum(x, 1), multi_krum(x, 1, k=3)) for x in cases]
    monkeypatch.setattr(KRUM, "_sync_free", lambda x: True)
    for x, (scores, one, many, three) in zip(cases, host):
        assert same_bits(krum_scores_of(x), scores)
        assert same_bits(krum(x, 1), one)
        torch.testing.assert_close(multi_krum(x, 1), many, equal_nan=True)
        torch.testing.assert_close(multi_krum(x, 1, k=3), three, equal_nan=True)


def krum_scores_of(x: torch.Tensor) -> torch.Tensor:
    from byzrsa.aggregators import krum_scores

    return krum_scores(x, 1)


def test_simulate_flushes_subnormals_and_restores_the_mode() -> None:
    """A float32 subnormal reads as 0 inside a CPU run and as itself again after (docs/performance.md)."""
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert float(tiny * 1) != 0.0  # the default mode keeps subnormals
    seen: list[float] = []
    config = config_from_dict(dict(dataset="synthetic", workers=4, iterations=2, eval_every=1))
    for _ in simulate(build_problem(config)):
        seen.append(float(tiny * 1))
    assert seen and all(v == 0.0 for v in seen)
    assert float(tiny * 1) != 0.0
