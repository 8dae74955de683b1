"""Runtime of each method on real processes (the paper's figure 6): 1 master + m workers, torch.distributed.

For each method the distributed engine runs a fixed number of iterations
(no evaluation in between) and reports the time per iteration, split into

* worker compute: a worker's minibatch gradient, local step and attack, per
  iteration (mean over the regular workers, CPU time measured in the workers);
* master aggregation: the master's update (``rsa_master_step`` or the rule
  inside ``aggregation_step``), CPU time measured in the master;
* communication: the rest of the iteration (framing, sends, waiting for
  the slowest worker), i.e. total - worker compute - master aggregation;

and its ratio to Ideal SGD. The floor is the same broadcast-and-gather loop
with nothing computed (workers echo a d-vector; see
:func:`byzrsa.engines.dist.measure_floor`).

On a machine with fewer cores than processes the workers' compute is
serialised: ``compute x computing workers / cores`` is then what it adds to
an iteration; that is the column used for the communication estimate and the
"floor + compute" ratio (the issue's target: RSA within 1.25x of it). Run, e.g.::

    python benchmarks/dist_runtime.py --iterations 200 --out benchmarks/results/dist_runtime

Each method runs ``--repeats`` times, round robin with the floor, and the
median is reported. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from byzrsa.engines.common import build_problem
from byzrsa.engines.dist import measure_floor
from byzrsa.config import config_from_dict
from byzrsa.experiments.runner import describe, run

# Step sizes do not change the time per iteration; these follow docs/protocol.md (same-value, q=8).
METHODS = {
    "ideal-sgd": dict(lr=1e-4),
    "rsa": dict(lam=0.07, lr=1e-3),
    "median": dict(lr=1e-5),
    "krum": dict(lr=1e-3),
    "geomed": dict(lr=1e-4),
    "sgd": dict(lr=1e-4),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--byzantine", type=int, default=8)
    parser.add_argument("--dataset", default="mnist-sample")
    parser.add_argument("--methods", default="ideal-sgd,rsa,median,krum,geomed")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per method, interleaved; the median is reported (robust to bursts of other load)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process, master included (more processes than cores: keep 1)")
    parser.add_argument("--out", default="benchmarks/results/dist_runtime")
    args = parser.parse_args(argv)

    base = config_from_dict(dict(
        dataset=args.dataset, pixels="raw", workers=args.workers, byzantine=args.byzantine, attack="same-value",
        **{"attack.c": 100.0}, iterations=args.iterations, eval_every=args.iterations, engine="dist", dtype=args.dtype,
        timeout=120.0, threads=args.threads,
    ))
    cores = os.cpu_count() or 1
    print(f"{args.workers} workers + 1 master, {args.iterations} iterations, {args.dataset}, q={args.byzantine} "
          f"same-value; {cores} CPU cores; torch {torch.__version__}", flush=True)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    methods = args.methods.split(",")
    floors: list[float] = []
    timings: dict[str, list[dict]] = {m: [] for m in methods}
    accuracy: dict[str, float] = {}
    for repeat in range(args.repeats):  # round robin: a burst of other load hits every method alike
        floors.append(measure_floor(build_problem(base), args.iterations))
        print(f"[{repeat + 1}/{args.repeats}] floor (broadcast + gather, no compute): {floors[-1] * 1e3:.2f} ms",
              flush=True)
        for method in methods:
            summary = run(base.replace(method=method, **METHODS.get(method, {})))
            timings[method].append(summary["dist"]["timing"])
            accuracy[method] = summary["final_accuracy"]
            print(f"[{repeat + 1}/{args.repeats}] {method}: {timings[method][-1]['seconds_per_iteration'] * 1e3:.2f} ms",
                  flush=True)
    floor = statistics.median(floors)

    results = []
    for method in methods:
        config = base.replace(method=method, **METHODS.get(method, {}))
        runs = timings[method]
        timing = {key: statistics.median(t[key] for t in runs) if runs[0][key] is not None else None for key in runs[0]}
        total = timing["seconds_per_iteration"]
        # CPU time, not wall clock: with more processes than cores the wall clock counts the waits for a core.
        compute = timing["worker_compute_cpu_per_iteration_mean"] or 0.0
        active = int(timing["computing_workers"])
        serial = compute * active / min(cores, active)  # what the workers' compute adds to an iteration here
        master = timing["master_step_cpu_per_iteration"] or 0.0
        results.append({
            "method": method,
            "label": describe(config),
            "seconds_per_iteration": total,
            "worker_compute": compute,
            "computing_workers": active,
            "worker_compute_serialised": serial,
            "master_aggregation": master,
            "communication": max(total - serial - master, 0.0),
            "worker_compute_wall": timing["worker_compute_per_iteration_mean"],
            "master_aggregation_wall": timing["master_step_per_iteration"],
            "final_accuracy": accuracy[method],
            "runs_seconds_per_iteration": [t["seconds_per_iteration"] for t in runs],
        })
    ideal = next((r["seconds_per_iteration"] for r in results if r["method"] == "ideal-sgd"), None)
    for r in results:
        r["ratio_to_ideal_sgd"] = r["seconds_per_iteration"] / ideal if ideal else None
        r["ratio_to_floor_plus_compute"] = r["seconds_per_iteration"] / (floor + r["worker_compute_serialised"])

    report = {
        "workers": args.workers, "byzantine": args.byzantine, "iterations": args.iterations,
        "dataset": args.dataset, "dtype": args.dtype, "cores": cores, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "floor_seconds_per_iteration": floor, "floor_runs": floors, "repeats": args.repeats, "methods": results,
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "benchmark_seconds": time.perf_counter() - start,
    }
    table = markdown(report)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dist_runtime.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "dist_runtime.md").write_text(table + "\n")
    print(f"wrote {out / 'dist_runtime.json'} and {out / 'dist_runtime.md'}")
    return 0


def markdown(report: dict) -> str:
    ms = lambda s: f"{s * 1e3:.2f}" if s is not None else "-"  # noqa: E731
    lines = [
        f"1 master + {report['workers']} workers, {report['dataset']}, q={report['byzantine']} same-value, "
        f"{report['iterations']} iterations, {report['dtype']}, {report['cores']} CPU cores, "
        f"median of {report['repeats']} interleaved runs. "
        f"Floor (broadcast + gather, no compute): {ms(report['floor_seconds_per_iteration'])} ms/iteration.",
        "",
        "| method | ms / iteration | worker compute (per worker, CPU) | computing workers "
        "| worker compute x workers / cores | master aggregation (CPU) | communication (rest) "
        "| vs Ideal SGD | vs floor + compute |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["methods"]:
        ratio = f"{r['ratio_to_ideal_sgd']:.2f}" if r["ratio_to_ideal_sgd"] else "-"
        lines.append(
            f"| {r['label']} | {ms(r['seconds_per_iteration'])} | {ms(r['worker_compute'])} | "
            f"{r['computing_workers']} | {ms(r['worker_compute_serialised'])} | {ms(r['master_aggregation'])} | {ms(r['communication'])} | "
            f"{ratio} | {r['ratio_to_floor_plus_compute']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
