"""Simulator step in the paper's setting: time per iteration, where it goes, scaling, threads.

Setting (docs/protocol.md, figure 6): mnist-sample with raw pixels, m = 20 workers,
q = 8 Byzantine (same-value attack, c = 100), batch 32, softmax regression
(d = 7850), float32. Measured, all in one process and interleaved:

* ``step``: ``Simulator.step`` per method;
* ``split``: the same step's parts timed one by one on the simulator's own
  tensors (data gathering, gradients, attack, penalty/aggregation), plus one
  evaluation (test accuracy and train loss) per call;
* ``authors``: the per-worker NumPy loop of ``authors_loop.py`` (RSA l1 and Ideal SGD);
* ``scaling``: RSA l1 and Ideal SGD for m = 20, 100, 1000 and for an MLP (d ~ 51k);
* ``threads``: torch threads 1 vs 2 (wall time) at each m.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from byzrsa.data import load_dataset
from byzrsa.engines.common import build_problem
from byzrsa.engines.sim import Simulator
from byzrsa.config import config_from_dict
from byzrsa.methods import aggregation_step, rsa_master_step, rsa_worker_step
from byzrsa.penalties import subgradient

from authors_loop import AuthorsLoop
from timing import measure

# Step sizes follow docs/protocol.md (same-value attack, q = 8); they do not change the cost of a step.
METHODS: dict[str, dict[str, Any]] = {
    "rsa-l1": dict(method="rsa", norm="l1", lam=0.07, lr=1e-3),
    "rsa-l2": dict(method="rsa", norm="l2", lam=1.2, lr=1e-3),
    "rsa-linf": dict(method="rsa", norm="linf", lam=20.0, lr=1e-4),
    "ideal-sgd": dict(method="ideal-sgd", lr=1e-4),
    "geomed": dict(method="geomed", lr=1e-4),
    "krum": dict(method="krum", lr=1e-3),
    "median": dict(method="median", lr=1e-5),
}
BASE = dict(dataset="mnist-sample", pixels="raw", split="iid", attack={"name": "same-value", "c": 100.0}, iterations=10**9)

_DATA: dict[int, Any] = {}


def _dataset(workers: int):
    if workers not in _DATA:
        _DATA[workers] = load_dataset("mnist-sample", pixels="raw", workers=workers, quiet=True)
    return _DATA[workers]


def make_sim(workers: int = 20, byzantine: int = 8, device: str = "cpu", warm: int = 20, **settings: Any) -> Simulator:
    config = config_from_dict({**BASE, "workers": workers, "byzantine": byzantine, "device": device, **settings})
    sim = Simulator(build_problem(config, _dataset(workers)))
    with torch.no_grad():
        for _ in range(warm):
            sim.step()
    return sim


def phases(sim: Simulator) -> dict[str, Callable[[], Any]]:
    """The parts of one ``sim.step``, each callable alone on the simulator's current tensors (state untouched)."""
    pb, c = sim.problem, sim.problem.config
    r = c.regular
    def minibatch() -> Any:  # one iteration's minibatch of every computing worker, as one block
        return sim._batch(sim._next_indices(), slice(0, sim.active))

    x, y = minibatch()
    parts: dict[str, Callable[[], Any]] = {"gather": minibatch}
    if pb.is_rsa:
        current = sim.workers[: sim.active]
        scratch = torch.empty_like(current)
        grad = pb.model.grad(current, x, y)
        lies = sim._byzantine_messages(current[:r], current[r:], sim.x0)
        step = dict(lam=c.lam, p=pb.p, alpha=1e-3)

        def penalty_and_steps() -> None:
            penalty = subgradient(current - sim.x0, pb.p)
            rsa_master_step(sim.x0, lies, mu=c.mu, pull=-penalty[:r].sum(dim=0), **step)
            rsa_worker_step(current, sim.x0, grad, m=c.workers, penalty=penalty, out=scratch, **step)

        parts["gradient"] = lambda: pb.model.grad(current, x, y)
        parts["attack"] = lambda: sim._byzantine_messages(current[:r], current[r:], sim.x0)
        parts["penalty+steps"] = penalty_and_steps
    else:
        shared = sim.x0.expand(sim.active, -1)
        grad = pb.model.grad(shared, x, y).add_(sim.x0, alpha=c.mu)
        lies = sim._byzantine_messages(grad[:r], grad[r:], sim.x0)
        messages = torch.cat([grad[:r], lies]) if lies.shape[0] else grad[:r]
        parts["gradient"] = lambda: pb.model.grad(shared, x, y).add_(sim.x0, alpha=c.mu)
        parts["attack"] = lambda: sim._byzantine_messages(grad[:r], grad[r:], sim.x0)
        parts["aggregation"] = lambda: aggregation_step(sim.x0, messages, lambda m: pb.aggregate(m, sim.aggregator), alpha=1e-4)
    return parts


def authors_loop(sim: Simulator) -> AuthorsLoop:
    pb = sim.problem
    xs = [pb.train_x[s].float().numpy() for s in pb.shards]
    ys = [pb.train_y[s].numpy() for s in pb.shards]
    return AuthorsLoop(xs, ys, pb.dataset.num_classes, byzantine=pb.config.byzantine)


def _sync(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device == "cuda" else None


@torch.no_grad()
def bench_steps(quick: bool, device: str = "cpu") -> dict[str, Any]:
    """Time per iteration of every method, its split, and the authors' loop (CPU only)."""
    sims = {name: make_sim(device=device, **kw) for name, kw in METHODS.items()}
    cases: dict[str, Callable[[], Any]] = {name: sim.step for name, sim in sims.items()}
    if device == "cpu":
        loop_rsa, loop_sgd = authors_loop(sims["rsa-l1"]), authors_loop(sims["ideal-sgd"])
        cases["authors-loop rsa-l1"] = loop_rsa.rsa_step
        cases["authors-loop ideal-sgd"] = loop_sgd.sgd_step
    rounds, calls = (5, 8) if quick else (9, 30)
    steps = measure(cases, rounds=rounds, calls=calls, sync=_sync(device))
    split: dict[str, dict[str, float]] = {}
    for name, sim in sims.items():
        parts = phases(sim)
        got = measure(parts, rounds=3 if quick else rounds, calls=calls, sync=_sync(device))
        row = {part: t.cpu if device == "cpu" else t.wall for part, t in got.items()}
        evals = measure({"evaluation": sim.metrics}, rounds=1 if quick else 3, calls=1, warmup=1, sync=_sync(device))
        row["evaluation (per call)"] = evals["evaluation"].cpu if device == "cpu" else evals["evaluation"].wall
        split[name] = row
    return {"steps": {k: v.to_dict() for k, v in steps.items()}, "split": split}


@torch.no_grad()
def bench_scaling(quick: bool, device: str = "cpu") -> dict[str, Any]:
    """RSA l1 and Ideal SGD as m grows (q = 40% of m, as 8 of 20) and for an MLP."""
    sizes = [20, 100] if quick else [20, 100, 1000]
    rows: dict[str, Any] = {}
    for m in sizes:
        q = (2 * m) // 5
        rsa = make_sim(m, q, device, warm=3, **METHODS["rsa-l1"])
        cases = {
            f"rsa-l1 m={m}": rsa.step,
            f"ideal-sgd m={m}": make_sim(m, q, device, warm=3, **METHODS["ideal-sgd"]).step,
        }
        if device == "cpu":  # the per-worker loop's cost grows with m, the batched step's much less
            cases[f"authors-loop rsa-l1 m={m}"] = authors_loop(rsa).rsa_step
        calls = max(2, 2000 // m) if not quick else max(2, 500 // m)
        for k, t in measure(cases, rounds=3 if quick else 5, calls=calls, sync=_sync(device)).items():
            rows[k] = {"m": m, "d": 7850, **t.to_dict()}
    mlp = {
        "rsa-l1 mlp": make_sim(20, 8, device, warm=3, model="mlp", **METHODS["rsa-l1"]),
        "ideal-sgd mlp": make_sim(20, 8, device, warm=3, model="mlp", **METHODS["ideal-sgd"]),
    }
    got = measure({k: s.step for k, s in mlp.items()}, rounds=5, calls=5 if quick else 20, sync=_sync(device))
    for k, t in got.items():
        rows[k] = {"m": 20, "d": mlp[k].problem.model.dim, **t.to_dict()}
    return rows


@torch.no_grad()
def bench_threads(quick: bool) -> dict[str, Any]:
    """Wall time per step with 1 and 2 torch threads (CPU), interleaved in one run (and the default's pick)."""
    return threads_under(quick, hogs=0)[1]


def _threads(n: int) -> None:
    """``n`` torch threads and ``n`` NumPy BLAS threads, as ``simulate`` sets them (``blas_threads``)."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")  # kept until the next case's setup


@torch.no_grad()
def threads_under(quick: bool, hogs: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The condition and the wall times per step with 1, 2 and the default's torch threads, interleaved.

    ``hogs`` busy processes (one pure-Python spin loop each) run alongside: the
    loaded condition. The rule's pick (:func:`byzrsa.engines.cpu.default_threads`)
    is evaluated under the same condition, after the hogs have run for a few seconds.
    """
    import subprocess
    import sys
    import time

    from byzrsa.engines.cpu import _busy_cores, _cores, default_threads

    before = torch.get_num_threads()
    sizes = [20] if quick else [20, 100, 1000]
    rows: dict[str, Any] = {}
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        time.sleep(5 if hogs else 0)  # the runnable count sees them at once; the load average needs longer
        busy = _busy_cores()
        pick = default_threads(cores=_cores(), busy=busy)
        condition = {"hogs": hogs, "busy": busy, "pick": pick, "load_average": list(os.getloadavg())}
        for m in sizes:
            q = (2 * m) // 5
            sims = {name: make_sim(m, q, warm=3, **METHODS[name]) for name in ("rsa-l1", "ideal-sgd")}
            cases, setup = {}, {}
            for name, sim in sims.items():
                for threads in sorted({1, 2, pick}):
                    key = f"{name} m={m} threads={threads}"
                    cases[key] = sim.step
                    setup[key] = (lambda t=threads: _threads(t))
            calls = max(2, 1000 // m) if not quick else 10
            for k, t in measure(cases, rounds=3 if quick else 7, calls=calls, setup=setup).items():
                rows[k] = t.to_dict()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
        torch.set_num_threads(before)
    condition["load_average_after"] = list(os.getloadavg())
    return condition, rows
