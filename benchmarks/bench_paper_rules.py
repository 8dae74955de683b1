"""The rules of the paper's figures per call, on the messages the paper's runs actually aggregate.

    python benchmarks/bench_paper_rules.py [--steps 300] [--rounds 7]

Issue 11, item 6: ``byzrsa reproduce all --dataset mnist-sample`` spends its time
in the geometric median, the median and Krum at (m, d) = (20, 7850). Short
geomed runs in five of the paper's settings (no attack; same-value q = 4, 8;
sign-flip q = 8; the heterogeneous copy attack q = 8) record every round's
``(20, 7850)`` messages and aggregate; then, interleaved (``timing.py``), per
call, CPU time, one thread:

* ``geomed``: the registered rule with the previous round's aggregate (what the
  engines pass: a warm start where it is the better start), its iterations;
* ``geomed cold``: no previous aggregate (the start is the coordinate-wise median);
* ``geomed explicit``: the iteration on explicit iterates (the path for m > 64);
* ``median``, ``krum`` (f = q).

Never part of the test run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from timing import fmt_time, machine, measure  # noqa: E402

SETTINGS = {
    "no attack": dict(split="iid", byzantine=0, attack="none"),
    "same-value q=4": dict(split="iid", byzantine=4, attack={"name": "same-value", "c": 100.0}),
    "same-value q=8": dict(split="iid", byzantine=8, attack={"name": "same-value", "c": 100.0}),
    "sign-flip q=8": dict(split="iid", byzantine=8, attack={"name": "sign-flip", "sigma": -4.0}),
    "copy q=8 (heterogeneous)": dict(split="by-label", byzantine=8, attack={"name": "copy", "copy_from": 1}),
}


@torch.no_grad()
def record(name: str, steps: int, dataset: Any) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(messages, previous aggregate) of every round of a geomed run in setting ``name``."""
    from byzrsa.config import config_from_dict
    from byzrsa.engines.common import build_problem
    from byzrsa.engines.sim import Simulator

    config = config_from_dict(dict(dataset="mnist-sample", pixels="raw", workers=20, method="geomed", lr=1e-4,
                                   iterations=10**9, **SETTINGS[name]))
    sim = Simulator(build_problem(config, dataset))
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    aggregate = sim.problem.parts.aggregate

    def spy(messages: torch.Tensor, state: Any) -> torch.Tensor:
        previous = state.previous.clone() if state.previous is not None else None
        seen.append((messages.clone(), previous))
        return aggregate(messages, state)

    sim.problem.parts.aggregate = spy  # type: ignore[method-assign]
    for _ in range(steps):
        sim.step()
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from byzrsa.aggregators import geometric_median_with_info, krum, median
    from byzrsa.data import load_dataset

    geomed = sys.modules["byzrsa.aggregators.geomed"]
    dataset = load_dataset("mnist-sample", pixels="raw", workers=20, quiet=True)
    print(f"per call at (20, 7850), float32, 1 thread, CPU time; {machine()}\n")
    print("| setting | geomed (warm where better) | its iterations | geomed cold | iterations | geomed explicit path "
          "| median | krum |\n|---|---|---|---|---|---|---|---|")
    for name in SETTINGS:
        calls = record(name, args.steps, dataset)
        sample = calls[len(calls) // 2 :: max(1, len(calls) // 40)]
        q = SETTINGS[name]["byzantine"]
        warm_it = statistics.mean(geometric_median_with_info(x, previous=p)[1] for x, p in sample)
        cold_it = statistics.mean(geometric_median_with_info(x)[1] for x, _ in sample)

        def each(fn):
            return lambda: [fn(x, p) for x, p in sample]

        def explicit(x, p):
            old, geomed._GRAM_ROWS = geomed._GRAM_ROWS, 0
            try:
                return geometric_median_with_info(x, previous=p)
            finally:
                geomed._GRAM_ROWS = old

        cases = {
            "geomed": each(lambda x, p: geometric_median_with_info(x, previous=p)),
            "cold": each(lambda x, p: geometric_median_with_info(x)),
            "explicit": each(explicit),
            "median": each(lambda x, p: median(x)),
            "krum": each(lambda x, p: krum(x, q)),
        }
        t = {k: v.cpu / len(sample) for k, v in measure(cases, rounds=args.rounds, calls=1, warmup=1).items()}
        print(f"| {name} | {fmt_time(t['geomed'])} | {warm_it:.1f} | {fmt_time(t['cold'])} | {cold_it:.1f} | "
              f"{fmt_time(t['explicit'])} | {fmt_time(t['median'])} | {fmt_time(t['krum'])} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
