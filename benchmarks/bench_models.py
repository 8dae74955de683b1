"""byzrsa's batched model gradients against the per-worker autograd loop of the peer libraries.

    python benchmarks/bench_models.py [--quick] [--models softmax,mlp-64,...] [--workers 20,100] [--out DIR]
    python benchmarks/bench_models.py --steps [--models ...] [--workers 20]

For each model and m, the gradient of m workers' distinct models ``w (m, d)``
on their own minibatches ``x (m, 32, 1, 28, 28)`` (the RSA case), float32, one
torch thread, timed interleaved in one process (``timing.py``):

* ``loop``: :class:`per_worker_loop.PerWorkerLoop`, one ``nn.Module``, a
  forward/backward per worker, the way ByzFL and Blades train clients;
* ``byzrsa``: ``model.grad(w, x, y, generators)``, the path ``batching="auto"``
  picks (named in the table);
* ``vmap``: the same model forced to ``batching="vmap"`` (torch.func over all
  workers), to show what the automatic choice avoids;
* ``shared``: ``model.grad(w0.expand(m, -1), ...)``, one model for every
  worker (the gradient-aggregation baselines' case), auto path.

The table gives the medians of CPU time per call (one thread: what the call
costs even while other processes share the cores) and the ratios
``loop / candidate`` (above 1: faster than the loop). Results also go to
``DIR/models-<stamp>.json`` (default ``benchmarks/results/``, git-ignored).

``--steps``: whole simulator steps instead (``Simulator.step``, mnist-sample,
unit pixels, no attack, q = 0, batch 32) of RSA l1 and Ideal SGD for each model,
interleaved, and their ratio (issue 11's goal: RSA within 1.15x of Ideal SGD for
every model, "one sign more"), with the RSA step split into its gradient and the
rest. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from per_worker_loop import PerWorkerLoop  # noqa: E402
from timing import fmt_time, machine, measure  # noqa: E402
from torch import nn  # noqa: E402

from byzrsa.models import TorchModel, build_model  # noqa: E402
from byzrsa.nets import cnn_net, lenet5_net, mlp_net  # noqa: E402

SHAPE = (1, 28, 28)
BATCH = 32

# name -> (byzrsa model name, options, the same network as a plain module for the loop)
MODELS: dict[str, tuple[str, dict[str, Any], Callable[[], nn.Module]]] = {
    "softmax": ("softmax", {}, lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10))),
    "mlp-64": ("mlp", {"hidden": 64}, lambda: mlp_net(SHAPE, 10, 64)),
    "mlp-256": ("mlp", {"hidden": 256}, lambda: mlp_net(SHAPE, 10, 256)),
    "lenet5": ("lenet5", {}, lambda: lenet5_net(SHAPE, 10)),
    "cnn": ("cnn", {}, lambda: cnn_net(SHAPE, 10)),
}


def cases(name: str, m: int) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The timed calls for one model at m workers, and facts for the table."""
    registered, options, plain = MODELS[name]
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(m, BATCH, *SHAPE, generator=gen)
    y = torch.randint(0, 10, (m, BATCH), generator=gen)
    model = build_model(registered, SHAPE, 10, options)
    x = model.featurize(images.reshape(m * BATCH, *SHAPE)).reshape(m, BATCH, -1) if registered == "softmax" else images
    w0 = model.init(torch.Generator().manual_seed(1), torch.float32)
    if not w0.any():  # softmax starts at zero; time it at a generic point
        w0 = 0.01 * torch.randn(model.dim, generator=gen)
    w = w0 + 0.01 * torch.randn(m, model.dim, generator=gen)
    gens = [torch.Generator().manual_seed(100 + i) for i in range(m)]
    loop = PerWorkerLoop(plain())
    timed: dict[str, Callable[[], Any]] = {
        "loop": lambda: loop.grad(w, images, y),
        "byzrsa": lambda: model.grad(w, x, y, gens),
        "shared": lambda: model.grad(w0.expand(m, -1), x, y, gens),
    }
    facts: dict[str, Any] = {"d": model.dim, "path": "bmm (hand-written)" if registered == "softmax" else None}
    if isinstance(model, TorchModel):
        facts["path"] = model._path(w.device)
        if facts["path"] != "vmap":
            forced = build_model(registered, SHAPE, 10, {**options, "batching": "vmap"})
            timed["vmap"] = lambda: forced.grad(w, x, y, gens)
    return timed, facts


@torch.no_grad()
def run(models: list[str], workers: list[int], quick: bool) -> list[dict[str, Any]]:
    rows = []
    for name in models:
        for m in workers:
            timed, facts = cases(name, m)
            # about 2 s per case and round; slow cases (the CNN at m = 100: seconds a call) get one call
            got = measure(timed, rounds=3 if quick else 5, calls=20, warmup=1, target=1.0 if quick else 2.0)
            row = {"model": name, "m": m, **facts, **{k: t.to_dict() for k, t in got.items()}}
            base = got["loop"].cpu
            for k, t in got.items():
                if k != "loop":
                    row[f"ratio {k}"] = base / t.cpu
            rows.append(row)
            print(_row(row), flush=True)
    return rows


HEADER = ["model", "m", "d", "path", "loop", "byzrsa", "loop / byzrsa", "vmap", "loop / vmap", "shared w",
          "loop / shared"]


def _row(row: dict[str, Any]) -> str:
    def t(key: str) -> str:
        return fmt_time(row[key]["cpu"]) if key in row else "-"

    def r(key: str) -> str:
        return f"{row[key]:.2f}x" if key in row else "-"

    cells = [row["model"], row["m"], f"{row['d']:_}", row["path"], t("loop"), t("byzrsa"), r("ratio byzrsa"),
             t("vmap"), r("ratio vmap"), t("shared"), r("ratio shared")]
    return "| " + " | ".join(str(c) for c in cells) + " |"


@torch.no_grad()
def run_steps(models: list[str], workers: list[int], quick: bool) -> list[dict[str, Any]]:
    """Simulator steps of RSA l1 and Ideal SGD per model, interleaved; the RSA step's gradient alone too."""
    from byzrsa.config import config_from_dict
    from byzrsa.data import load_dataset
    from byzrsa.engines.common import build_problem
    from byzrsa.engines.cpu import blas_threads, reuse_freed_memory
    from byzrsa.engines.sim import Simulator

    rows = []
    for m in workers:
        dataset = load_dataset("mnist-sample", workers=m, quiet=True)
        for name in models:
            registered, options, _ = MODELS[name]
            base = dict(dataset="mnist-sample", workers=m, byzantine=0, attack="none", iterations=10**9,
                        model={"name": registered, **options})
            sims = {}
            for method, kw in (("rsa-l1", dict(method="rsa", norm="l1", lam=0.1, lr=1e-3)),
                               ("ideal-sgd", dict(method="ideal-sgd", lr=1e-2))):
                sim = Simulator(build_problem(config_from_dict({**base, **kw}), dataset))
                sim.step()
                sims[method] = sim
            rsa = sims["rsa-l1"]
            x, y = rsa._batch(rsa._next_indices(), slice(0, rsa.active))  # one whole-step minibatch
            cases = {
                "rsa-l1": rsa.step,
                "ideal-sgd": sims["ideal-sgd"].step,
                "rsa gradient": lambda rsa=rsa, x=x, y=y: rsa.problem.model.grad(rsa.workers, x, y, rsa.dropout),
                "ideal gradient": lambda s=sims["ideal-sgd"], x=x, y=y: s.problem.model.grad(
                    s.x0.expand(m, -1), x, y, s.dropout),
            }
            with reuse_freed_memory(), blas_threads(1):
                got = measure(cases, rounds=3 if quick else 5, calls=20, warmup=1, target=1.0 if quick else 2.0)
            row = {"model": name, "m": m, "d": rsa.problem.model.dim, **{k: t.to_dict() for k, t in got.items()}}
            row["ratio"] = got["rsa-l1"].cpu / got["ideal-sgd"].cpu
            rows.append(row)
            print(_step_row(row), flush=True)
    return rows


STEP_HEADER = ["model", "m", "d", "rsa-l1 step", "ideal-sgd step", "rsa / ideal", "rsa gradient", "ideal gradient",
               "rsa step - gradient", "ideal step - gradient"]


def _step_row(row: dict[str, Any]) -> str:
    c = {k: row[k]["cpu"] for k in ("rsa-l1", "ideal-sgd", "rsa gradient", "ideal gradient")}
    cells = [row["model"], row["m"], f"{row['d']:_}", fmt_time(c["rsa-l1"]), fmt_time(c["ideal-sgd"]),
             f"{row['ratio']:.2f}", fmt_time(c["rsa gradient"]), fmt_time(c["ideal gradient"]),
             fmt_time(c["rsa-l1"] - c["rsa gradient"]), fmt_time(c["ideal-sgd"] - c["ideal gradient"])]
    return "| " + " | ".join(str(x) for x in cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--workers", default="20,100", help="comma-separated values of m")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--steps", action="store_true", help="whole simulator steps: RSA l1 against Ideal SGD")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    info = machine()
    if args.steps:
        print(f"Simulator.step, mnist-sample, q = 0, float32, batch {BATCH}, 1 thread, CPU time (median); {info}")
        print("| " + " | ".join(STEP_HEADER) + " |\n|" + "---|" * len(STEP_HEADER), flush=True)
        rows = run_steps(models, [int(m) for m in args.workers.split(",")], args.quick)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"steps-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
        print(f"written {path}")
        return
    print(f"float32, batch {BATCH}, 1 thread, CPU time per call (median); {info}")
    print("| " + " | ".join(HEADER) + " |\n|" + "---|" * len(HEADER), flush=True)
    rows = run(models, [int(m) for m in args.workers.split(",")], args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"models-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
