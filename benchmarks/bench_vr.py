"""The variance-reduced step (--vr saga, lsvrg) against the plain SGD step, and the SAGA table's memory.

    python benchmarks/bench_vr.py [--quick] [--workers 20,70] [--batch 32] [--out DIR]

For each model (softmax regression; Byrd-SAGA's MLP 784-50-10 with tanh) and m,
whole simulator steps (``Simulator.step`` under simulate()'s CPU settings, mnist-sample, unit pixels, method
``sgd`` = the mean, q = 0, float32, one torch thread) with ``--vr none``,
``saga`` and ``lsvrg`` (p = 1/J), interleaved in one process (``timing.py``),
and the ratios to the plain step (issue 18's goal: the softmax SAGA step at
most 1.5x the SGD step). Then the memory of SAGA's state for the full MNIST
training set (60 000 samples), computed by ``byzrsa.estimators.table_bytes``:
residuals for softmax, full per-sample gradients for the MLP. Results also go
to ``DIR/vr-<stamp>.json`` (default ``benchmarks/results/``, git-ignored).
Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from timing import fmt_time, machine, measure  # noqa: E402

MODELS = {
    "softmax": {"name": "softmax"},
    "mlp-50-tanh": {"name": "mlp", "hidden": 50, "activation": "tanh"},
}
ESTIMATORS = ("none", "saga", "lsvrg")


@torch.no_grad()
def run_steps(workers: list[int], batch: int, quick: bool) -> list[dict[str, Any]]:
    from byzrsa.config import config_from_dict
    from byzrsa.data import load_dataset
    from byzrsa.engines.common import build_problem
    from byzrsa.engines.cpu import blas_threads, reuse_freed_memory, subnormals_flushed
    from byzrsa.engines.sim import Simulator

    rows = []
    for m in workers:
        dataset = load_dataset("mnist-sample", workers=m, quiet=True)
        for label, model in MODELS.items():
            base = dict(dataset="mnist-sample", pixels="unit", workers=m, byzantine=0, attack="none", method="sgd",
                        lr=0.05, batch_size=batch, iterations=10**9, model=model)
            sims = {}
            for vr in ESTIMATORS:
                sim = Simulator(build_problem(config_from_dict({**base, "vr": vr}), dataset))
                sim.step()
                sims[vr] = sim
            with reuse_freed_memory(), blas_threads(1), subnormals_flushed():  # as simulate() runs
                got = measure({vr: sim.step for vr, sim in sims.items()}, rounds=3 if quick else 7, calls=20,
                              warmup=2, target=1.0 if quick else 2.0)
            row = {"model": label, "m": m, "batch": batch, "d": sims["none"].problem.model.dim,
                   **{k: t.to_dict() for k, t in got.items()}}
            for vr in ESTIMATORS[1:]:
                row[f"{vr} / sgd"] = got[vr].cpu / got["none"].cpu
            rows.append(row)
            print(_row(row), flush=True)
    return rows


def _row(row: dict[str, Any]) -> str:
    cells = [row["model"], row["m"], row["batch"], f"{row['d']:_}", fmt_time(row["none"]["cpu"]),
             fmt_time(row["saga"]["cpu"]), fmt_time(row["lsvrg"]["cpu"]), f"{row['saga / sgd']:.2f}",
             f"{row['lsvrg / sgd']:.2f}"]
    return "| " + " | ".join(str(x) for x in cells) + " |"


def table_memory() -> list[dict[str, Any]]:
    """SAGA's state for full MNIST (60 000 training samples), float32, one worker or many: the same total."""
    from byzrsa.estimators import table_bytes
    from byzrsa.models import build_model

    out = []
    for label, model in MODELS.items():
        options = {k: v for k, v in model.items() if k != "name"}
        built = build_model(model["name"], (1, 28, 28), 10, options)
        total = table_bytes("saga", built, 60_000, 1, 4)
        out.append({"model": label, "d": built.dim, "bytes": total,
                    "per_sample": "residual (10 numbers)" if hasattr(built, "sample_residuals") else f"gradient ({built.dim} numbers)"})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--workers", default="20,70", help="comma-separated values of m")
    parser.add_argument("--batch", type=int, default=32, help="minibatch size per worker")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    info = machine()
    print(f"Simulator.step, mnist-sample, method sgd, q = 0, float32, 1 thread, CPU time (median); {info}")
    header = ["model", "m", "batch", "d", "sgd step", "saga step", "lsvrg step", "saga / sgd", "lsvrg / sgd"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    rows = run_steps([int(m) for m in args.workers.split(",")], args.batch, args.quick)
    memory = table_memory()
    print("\nSAGA state for full MNIST (60 000 samples, float32): table + one average row")
    for item in memory:
        print(f"  {item['model']:<12} d = {item['d']:>6}  per sample: {item['per_sample']:<26} "
              f"{item['bytes'] / 2**20:10.1f} MiB")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"vr-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": info, "rows": rows, "memory": memory}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
