"""The thread default of ``simulate`` measured on a quiet and on a loaded machine.

    python benchmarks/bench_threads.py [--quick] [--hogs N] [--out DIR]

Issue 11, item 4. For each condition, the paper-setting steps (RSA l1 and Ideal
SGD, q = 40% same-value, m = 20, 100, 1000) run with 1 and 2 torch threads and
with the count :func:`byzrsa.engines.cpu.default_threads` picks under that
condition, interleaved (``bench_sim.threads_under``); wall time per step, the
measure a user waits on. "quiet" is the machine as it is (its load average is
reported: on a shared machine it may not be quiet); "loaded" adds ``--hogs``
busy processes (default: one per core). Goal: the default never more than 10%
slower than 1 thread in either condition. Results go to
``DIR/threads-<stamp>.json``. Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_sim import threads_under  # noqa: E402
from timing import fmt_time, machine  # noqa: E402


def markdown(results: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> str:
    out = ["| condition | load (1 min) | busy cores seen | default picks | case | 1 thread | 2 threads | default | "
           "default / 1 thread |", "|" + "---|" * 9]
    for name, (cond, rows) in results.items():
        cases = sorted({k.rsplit(" threads=", 1)[0] for k in rows}, key=lambda c: (int(c.split("m=")[1]), c))
        for case in cases:
            one, two = rows[f"{case} threads=1"]["wall"], rows[f"{case} threads=2"]["wall"]
            pick = rows[f"{case} threads={cond['pick']}"]["wall"]
            out.append(f"| {name} | {cond['load_average'][0]:.1f} | {cond['busy']:.1f} | {cond['pick']} | {case} | "
                       f"{fmt_time(one)} | {fmt_time(two)} | {fmt_time(pick)} | {pick / one:.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    results = {"quiet": threads_under(args.quick, hogs=0), "loaded": threads_under(args.quick, hogs=args.hogs)}
    torch.set_num_threads(1)
    info = machine()
    print(f"wall time per step (median of interleaved rounds); {info}\n\n{markdown(results)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"threads-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
