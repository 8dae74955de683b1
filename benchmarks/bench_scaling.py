"""Cost per regular worker per step from m = 20 to 10 000 workers, against the per-worker NumPy loop; peak memory.

    python benchmarks/bench_scaling.py [--workers 20,1000,10000] [--rounds 5] [--threads 1|default] [--out DIR]

Issues 11 and 19: softmax regression on raw pixels (Fashion-MNIST, 60 000
samples, so that every one of 10 000 workers holds some; where it is not in the
cache, mnist-sample's images tiled to 60 000, said in the output), batch 32,
q = 40% of m Byzantine (same-value, c = 100; they send without computing), one
torch thread (``--threads default``: the count ``simulate`` picks), float32.
NumPy's BLAS gets the same thread count. For each m > 20 a fresh process times,
interleaved (``timing.py``):

* ``rsa-l1`` and ``ideal-sgd``: ``Simulator.step`` at m and at m = 20 (the
  reference, in the same process and rounds, so the flatness ratio is taken
  within one run);
* ``loop``: the authors'-style per-worker NumPy loop (``authors_loop.py``) on the
  same shards, RSA l1 and Ideal SGD, at the same m.

Cost per regular worker = CPU time per step / (m - q) (the JSON has the wall
time too). Goals (issue 19): at least 1.5x faster than the loop at each m;
the cost at m = 10 000 within 1.2x of that at m = 20.

Memory: another fresh process per m loads the data, builds the RSA simulator,
steps it and evaluates it once (test and training sets, local-iterate
variance); its peak resident set (``ru_maxrss``) is reported against the RSA
state (the ``(m, d)`` local models and x0) plus the data (as loaded and as
featurised), against the resident set before the simulator was built
(interpreter, torch and the data), and against what the run must hold (that,
plus the featurised data and the state; issue 19's goal: within 1.3x). Results
go to ``DIR/scaling-<stamp>.json`` (default ``benchmarks/results/``). Never
part of the test run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from timing import fmt_time, machine, measure  # noqa: E402

DATASET = "fashion-mnist"
RSA = dict(method="rsa", norm="l1", lam=0.07, lr=1e-3)
IDEAL = dict(method="ideal-sgd", lr=1e-4)


def _sims(m: int, dataset: Any) -> dict[str, Any]:
    from byzrsa.config import config_from_dict
    from byzrsa.engines.common import build_problem
    from byzrsa.engines.sim import Simulator

    base = dict(dataset=dataset.name, pixels="raw", split="iid", attack={"name": "same-value", "c": 100.0},
                iterations=10**9, workers=m, byzantine=(2 * m) // 5)  # noqa: C408
    out = {}
    for name, kw in (("rsa-l1", RSA), ("ideal-sgd", IDEAL)):
        sim = Simulator(build_problem(config_from_dict({**base, **kw}), dataset))
        with torch.no_grad():
            for _ in range(2):
                sim.step()
        out[name] = sim
    return out


def _load(m: int) -> Any:
    """Fashion-MNIST (raw pixels) if it is in the cache; else mnist-sample's 4000 images tiled to 60 000.

    The tiled stand-in has Fashion-MNIST's training-set size and layout (so every one of 10 000
    workers holds samples and the gathers read the same amount of memory); its test set is
    mnist-sample's 1000 images. What was used is recorded in the results (``dataset``).
    """
    import dataclasses

    from byzrsa.data import load_dataset
    from byzrsa.errors import DataError

    try:
        return load_dataset(DATASET, pixels="raw", workers=m, quiet=True)
    except DataError:
        small = load_dataset("mnist-sample", pixels="raw", workers=m, quiet=True)
        reps = -(-60_000 // small.train_x.shape[0])
        return dataclasses.replace(small, train_x=small.train_x.repeat(reps, 1, 1, 1)[:60_000],
                                   train_y=small.train_y.repeat(reps)[:60_000])


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@torch.no_grad()
def time_one(m: int, rounds: int, threads: int | None = 1) -> dict[str, Any]:
    """In this process: the steps at m and at 20, and the loop at m, interleaved."""
    from authors_loop import AuthorsLoop

    from byzrsa.engines.cpu import blas_threads, reuse_freed_memory, subnormals_flushed

    from byzrsa.engines.cpu import default_threads

    threads = threads or default_threads()  # None: what simulate would pick now
    torch.set_num_threads(threads)
    dataset = _load(m)
    sizes = [m] if m == 20 else [20, m]
    cases: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    # What simulate() does for a run; the flushed subnormals apply to the loop's NumPy too (same thread).
    with reuse_freed_memory(), subnormals_flushed(), blas_threads(threads):  # the loop's NumPy gets them too
        for size in sizes:
            sims = _sims(size, dataset)
            pb = sims["rsa-l1"].problem
            facts[size] = {"regular": pb.config.regular, "d": pb.model.dim}
            for name, sim in sims.items():
                cases[f"{name} m={size}"] = sim.step
            if size == m:
                xs = [pb.train_x[s].float().numpy() for s in pb.shards]
                ys = [pb.train_y[s].numpy() for s in pb.shards]
                loop_rsa = AuthorsLoop(xs, ys, pb.dataset.num_classes, byzantine=pb.config.byzantine)
                loop_sgd = AuthorsLoop(xs, ys, pb.dataset.num_classes, byzantine=pb.config.byzantine)
                cases[f"loop rsa-l1 m={size}"] = loop_rsa.rsa_step
                cases[f"loop ideal-sgd m={size}"] = loop_sgd.sgd_step
        calls = max(1, 2000 // m)
        got = measure(cases, rounds=rounds, calls=calls, warmup=1)
    rows = {}
    for key, t in got.items():
        size = int(key.rsplit("m=", 1)[1])
        rows[key] = {**t.to_dict(), "m": size, "per_worker": t.cpu / facts[size]["regular"],
                     "per_worker_wall": t.wall / facts[size]["regular"], **facts[size]}
    return {"m": m, "rows": rows, "threads": threads, "machine": machine(),
            "dataset": DATASET if dataset.name == DATASET else f"{dataset.name} tiled to {len(dataset.train_y)}"}


@torch.no_grad()
def memory_one(m: int, steps: int = 3) -> dict[str, Any]:
    """In this process: peak RSS of the RSA simulator at m, and what it is made of."""
    from byzrsa.config import config_from_dict
    from byzrsa.engines.common import build_problem
    from byzrsa.engines.cpu import reuse_freed_memory
    from byzrsa.engines.sim import Simulator

    torch.set_num_threads(1)
    dataset = _load(m)
    loaded = _rss_mb()
    config = config_from_dict(dict(dataset=dataset.name, pixels="raw", split="iid", iterations=10**9, workers=m,
                                   attack={"name": "same-value", "c": 100.0}, byzantine=(2 * m) // 5, **RSA))
    problem = build_problem(config, dataset)
    with reuse_freed_memory():  # as simulate(): the problem is built first, then the run keeps its freed memory
        sim = Simulator(problem)
        for _ in range(steps):
            sim.step()
        sim.metrics()  # a run evaluates too: the test and training sets, the local-iterate variance
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mb = 1 / 2**20
    state = (sim.workers.numel() + sim.x0.numel()) * sim.workers.element_size() * mb
    raw = sum(t.numel() * t.element_size() for t in (dataset.train_x, dataset.test_x)) * mb
    featurised = sum(t.numel() * t.element_size() for t in (problem.train_x, problem.test_x)) * mb
    return {"m": m, "peak_mb": peak, "before_sim_mb": loaded, "state_mb": state, "data_raw_mb": raw,
            "data_featurised_mb": featurised, "ratio_to_state_and_data": peak / (state + raw + featurised),
            "growth_over_loaded": (peak - loaded) / state,
            # issue 19's goal: peak within 1.3x of what the run must hold (before + featurised data + state)
            "ratio_to_needed": peak / (loaded + featurised + state)}


def _child(flag: str, m: int, rounds: int, threads: str = "1") -> dict[str, Any]:
    cmd = [sys.executable, __file__, flag, str(m), "--rounds", str(rounds), "--threads", threads]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(timings: list[dict[str, Any]], memory: list[dict[str, Any]]) -> str:
    out = ["| m | regular | rsa-l1 / step | per regular worker | vs m = 20 (same run) | loop rsa-l1 per worker | "
           "loop / rsa-l1 | ideal-sgd per worker | vs m = 20 | loop ideal per worker | loop / ideal |",
           "|" + "---|" * 11]
    for res in timings:
        m, rows = res["m"], res["rows"]
        ref_rsa, ref_ideal = rows["rsa-l1 m=20"], rows["ideal-sgd m=20"]
        rsa, ideal = rows[f"rsa-l1 m={m}"], rows[f"ideal-sgd m={m}"]
        loop_rsa, loop_ideal = rows.get(f"loop rsa-l1 m={m}"), rows.get(f"loop ideal-sgd m={m}")
        us = lambda t: f"{t * 1e6:.1f} us"  # noqa: E731
        out.append("| " + " | ".join(str(c) for c in [
            m, rsa["regular"], fmt_time(rsa["cpu"]), us(rsa["per_worker"]),
            f"{rsa['per_worker'] / ref_rsa['per_worker']:.2f}",
            us(loop_rsa["per_worker"]) if loop_rsa else "-",
            f"{loop_rsa['per_worker'] / rsa['per_worker']:.2f}x" if loop_rsa else "-",
            us(ideal["per_worker"]), f"{ideal['per_worker'] / ref_ideal['per_worker']:.2f}",
            us(loop_ideal["per_worker"]) if loop_ideal else "-",
            f"{loop_ideal['per_worker'] / ideal['per_worker']:.2f}x" if loop_ideal else "-",
        ]) + " |")
    if memory:
        out += ["", "| m | peak RSS | before the simulator (python, torch, data) | (m, d) state + x0 | "
                "data raw + featurised | peak / (state + data) | (peak - before) / state | "
                "peak / (before + featurised + state) |", "|" + "---|" * 8]
        for r in memory:
            out.append(f"| {r['m']} | {r['peak_mb']:.0f} MB | {r['before_sim_mb']:.0f} MB | {r['state_mb']:.0f} MB | "
                       f"{r['data_raw_mb']:.0f} + {r['data_featurised_mb']:.0f} MB | "
                       f"{r['ratio_to_state_and_data']:.2f} | {r['growth_over_loaded']:.2f} | "
                       f"{r['ratio_to_needed']:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="20,1000,10000")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--threads", default="1", help="torch (and BLAS) threads: a number, or 'default' (simulate's rule)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--time-one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--memory-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time_one is not None:
        print(json.dumps(time_one(args.time_one, args.rounds, None if args.threads == "default" else int(args.threads))))
        return 0
    if args.memory_one is not None:
        print(json.dumps(memory_one(args.memory_one)))
        return 0
    sizes = [int(m) for m in args.workers.split(",")]
    timings = [_child("--time-one", m, args.rounds, args.threads) for m in sizes]
    memory = [] if args.no_memory else [_child("--memory-one", m, args.rounds) for m in sizes]
    text = markdown(timings, memory)
    info = machine()
    used = timings[0].get("dataset", DATASET) if timings else DATASET
    threads = timings[0].get("threads", args.threads) if timings else args.threads
    print(f"softmax, {used} raw, batch 32, q = 40% same-value, {threads} thread(s), CPU time; {info}\n\n{text}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scaling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": info, "timings": timings, "memory": memory}, indent=1))
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
