"""Per-round overhead of the Flower engine against the simulator (and the dist engine) for the same round.

One config (default: the paper's setting, RSA l1 under sign-flip, m = 20,
q = 4, mnist-sample, float32) runs a fixed number of rounds on

* ``sim``: :class:`byzrsa.engines.sim.Simulator`, all workers in one process;
* ``dist``: ``byzrsa.run(config, engine="dist")``, one process per worker
  (``--no-dist`` leaves it out);
* ``flower-sim``: Flower's simulation engine (``run_simulation``, Ray), the
  ServerApp and ClientApps of :mod:`byzrsa.engines.flower`;

and reports the training time per round (evaluations excluded: each engine
evaluates only at the start and the end), its ratio to the simulator, and the
wall time of the whole run including start-up (Ray, processes, data loading).
The Flower deployment runtime is not timed here: every message starts a new
ClientApp process and an idle SuperNode polls every 3 s (see docs/flower.md).
Run, e.g.::

    python benchmarks/flower_overhead.py --rounds 50

Never part of the test run; numbers belong in docs/performance.md, not in docstrings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from byzrsa.config import config_from_dict
from byzrsa.engines.common import build_problem
from byzrsa.engines.sim import Simulator

PAPER = dict(method="rsa", norm="l1", lam=0.07, lr=0.001, attack="sign-flip", byzantine=4, workers=20,
             dataset="mnist-sample", pixels="raw", batch_size=32, dtype="float32", seed=0)


def time_sim(config, rounds: int) -> tuple[float, float]:
    started = time.perf_counter()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as simulate() does on CPU
    try:
        sim = Simulator(build_problem(config))
        with torch.no_grad():
            sim.step()  # warm-up (first minibatch block, lazy allocations)
            start = time.perf_counter()
            for _ in range(rounds):
                sim.step()
            per_round = (time.perf_counter() - start) / rounds
    finally:
        torch.set_num_threads(previous)
    return per_round, time.perf_counter() - started


def time_dist(config, rounds: int) -> tuple[float, float]:
    from byzrsa.experiments.runner import run

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        run(config.replace(engine="dist", iterations=rounds, eval_every=rounds), Path(folder) / "run")
        rows = (Path(folder) / "run" / "metrics.csv").read_text().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    return float(last[header.index("time")]) / rounds, time.perf_counter() - started


def time_flower(config, rounds: int, cpus: int) -> tuple[float, float]:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.simulation import run_simulation

    from byzrsa.engines.flower import FlowerSettings, client_app, flower_run_config, server_app

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        run_config = flower_run_config(config.replace(iterations=rounds, eval_every=rounds),
                                       FlowerSettings(results_dir=str(out)))
        backend = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": cpus, "logging_level": "ERROR"}}
        run_simulation(server_app(run_config), client_app(run_config), num_supernodes=config.workers,
                       backend_config=backend)
        summary = json.loads((out / "summary.json").read_text())
    if summary["status"] != "completed":
        raise RuntimeError(f"the Flower run did not complete: {summary}")
    return summary["seconds_per_round"], time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="change the config")
    parser.add_argument("--no-dist", action="store_true", help="leave out the dist engine")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray's CPUs (ClientApps at once)")
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    settings = dict(PAPER)
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key.strip()] = value.strip()
    config = config_from_dict({**settings, "iterations": args.rounds, "eval_every": args.rounds})
    rows = {"sim": time_sim(config, args.rounds)}
    if not args.no_dist:
        rows["dist"] = time_dist(config, args.rounds)
    rows["flower-sim"] = time_flower(config, args.rounds, args.cpus)
    base = rows["sim"][0]
    print(f"# {config.method}, attack {config.attack}, m={config.workers}, q={config.byzantine}, {config.dataset}, "
          f"{config.dtype}, {args.rounds} rounds; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, Python {sys.version.split()[0]}")
    print("| engine | ms per round | x simulator | run wall s (with start-up) |")
    print("|---|---:|---:|---:|")
    for name, (per_round, wall) in rows.items():
        print(f"| {name} | {per_round * 1e3:.2f} | {per_round / base:.1f} | {wall:.1f} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({k: {"seconds_per_round": v[0], "wall": v[1]} for k, v in rows.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
