"""How long the command line makes a user wait before it answers, and whether it loaded torch.

    python benchmarks/bench_cli.py [--rounds N] [--cold] [--baseline SRC]

Times, as separate processes (what a user waits for), ``byzrsa --help``,
``byzrsa run --help``, ``byzrsa list``, ``byzrsa --version``, an argparse error
(``byzrsa run --no-such-flag``) and, for comparison, ``python -c "import torch"``.
The commands run interleaved for ``--rounds`` rounds and the median wall time
is reported. Each process also reports whether torch ended up in
``sys.modules``: help, list and usage errors should not need it. The first call
builds the command line's catalog cache (``byzrsa.cli.catalog``); with
``--cold`` every call starts from an empty cache folder instead, which is what
a fresh install sees once. ``--baseline SRC`` also times every command with
another copy of byzrsa's ``src`` folder first on ``PYTHONPATH`` (e.g. an older
commit's, from ``git archive``), interleaved with the current one, so the two
are compared under the same load. Goal: under 1 s for help, list and usage errors.
Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "byzrsa --help": ["--help"],
    "byzrsa run --help": ["run", "--help"],
    "byzrsa list": ["list"],
    "byzrsa --version": ["--version"],
    "byzrsa run --no-such-flag": ["run", "--no-such-flag"],
}
# Runs byzrsa's main() and reports on stderr whether torch was imported (sys.exit would skip it: catch it).
PROBE = (
    "import sys\n"
    "from byzrsa.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('TORCH=%d' % ('torch' in sys.modules), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def one(argv: list[str], env: dict[str, str]) -> tuple[float, bool]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    return seconds, "TORCH=1" in done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold", action="store_true", help="empty catalog cache before every call")
    parser.add_argument("--baseline", metavar="SRC", help="also time the byzrsa in this src folder, interleaved")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "BYZRSA_CACHE": cache}
        variants = {"": env}
        if args.baseline:
            variants["baseline: "] = {**env, "PYTHONPATH": os.path.abspath(args.baseline)}
        if not args.cold:
            for variant in variants.values():
                one(["list"], variant)  # builds the catalog cache once, as the first command after an install does
        times: dict[str, list[float]] = {prefix + name: [] for prefix in variants for name in COMMANDS}
        # rounds in which the command imported torch (a source file edited meanwhile rebuilds the catalog once)
        torch_loaded: dict[str, int] = {}
        torch_import: list[float] = []
        for _ in range(args.rounds):
            for name, argv in COMMANDS.items():
                for prefix, variant in variants.items():
                    if args.cold:
                        for entry in os.listdir(cache):
                            os.remove(os.path.join(cache, entry))
                    seconds, loaded = one(argv, variant)
                    times[prefix + name].append(seconds)
                    torch_loaded[prefix + name] = torch_loaded.get(prefix + name, 0) + int(loaded)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], check=True)
            torch_import.append(time.perf_counter() - started)
    result = {
        "cache": "cold" if args.cold else "warm",
        "rounds": args.rounds,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cpus": os.cpu_count(),
        "median_seconds": {name: round(statistics.median(t), 3) for name, t in times.items()},
        "rounds_that_imported_torch": torch_loaded,
        "python -c 'import torch'": round(statistics.median(torch_import), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
