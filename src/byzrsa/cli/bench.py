"""``byzrsa bench``: the argparse side of :mod:`byzrsa.experiments.bench`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from byzrsa.errors import ConfigError

__all__ = ["register"]


def _grid(args: argparse.Namespace) -> Any:
    from byzrsa.experiments.bench import apply_overrides
    from byzrsa.experiments.bench.presets import PRESETS, load_grid

    name = args.grid or args.preset
    if name is None:
        raise ConfigError("name a preset (byzrsa bench --list shows them) or a grid file: "
                          "byzrsa bench --grid FILE.toml")
    if args.grid or name.endswith(".toml") or Path(name).is_file():
        grid = load_grid(name)
    elif name in PRESETS:
        grid = PRESETS[name]
    else:
        raise ConfigError(f"unknown bench preset {name!r}: choose one of {', '.join(PRESETS)} or give a TOML grid file")
    settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        settings[key.strip().replace("-", "_")] = value.strip()
    seeds: Any = None
    if args.seeds is not None:
        text = args.seeds.strip()
        try:
            seeds = [int(s) for s in text.split(",")] if "," in text else int(text)
        except ValueError:
            raise ConfigError(f"--seeds takes a count (3) or a list (0,1,2), got {args.seeds!r}") from None
    return apply_overrides(grid, dataset=args.dataset, data_dir=args.data_dir, model=args.model,
                           iterations=args.iterations, seeds=seeds, settings=settings)


def _cmd_bench(args: argparse.Namespace) -> int:
    from byzrsa.experiments.bench import bench
    from byzrsa.experiments.bench.presets import describe_presets

    if args.list:
        print(describe_presets())
        return 0
    grid = _grid(args)
    suffix = ("-" + args.dataset if args.dataset else "") + ("-untuned" if args.untuned else "")
    out = args.out or f"results/bench/{grid.name}{suffix}"
    devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
    try:
        result = bench(grid, out=out, jobs=args.jobs, untuned=args.untuned, dry_run=args.dry_run,
                       curves=args.curves, devices=devices, quiet=args.quiet)
    except KeyboardInterrupt as exc:
        print(f"byzrsa: interrupted; finished runs are kept in {out} and the next invocation continues",
              file=sys.stderr)
        from byzrsa.cli import interrupted_status

        return interrupted_status(exc)
    if args.dry_run:
        return 0
    print(f"report: {result['report']} ({result['runs']} grid runs, {result['tuning_runs']} tuning runs, "
          f"{result['total_seconds']:.0f} s)")
    if result["failures"]:
        print(f"byzrsa: {len(result['failures'])} run(s) failed; see the report", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add ``byzrsa bench`` to the CLI."""
    parser = subparsers.add_parser(
        "bench",
        help="the robustness benchmark: methods x attacks x heterogeneity levels, fairly tuned, over seeds",
        description="Tune every method on a validation split (worst case over the grid's attacks), run the grid "
        "(shared runs once, in parallel, resuming finished runs), and write per-level heatmaps, the worst-case "
        "ranking with 95%% confidence intervals, cells.json/.csv and DIR/report.md with verdicts on RSA.",
    )
    parser.add_argument("preset", nargs="?", metavar="PRESET", help="a preset (see --list) or a TOML grid file")
    parser.add_argument("--grid", metavar="FILE", default=None, help="a user grid from a TOML file (docs/bench.md)")
    parser.add_argument("--list", action="store_true", help="print the presets as data and exit")
    parser.add_argument("--out", metavar="DIR", default=None, help="results folder [results/bench/PRESET]")
    parser.add_argument("--jobs", type=int, default=None, help="parallel processes [number of CPU cores]")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the cost estimate only")
    parser.add_argument("--untuned", action="store_true",
                        help="skip tuning: every method at its starting values (marked untuned)")
    parser.add_argument("--curves", nargs="*", default=None, metavar="WHICH",
                        help="also draw accuracy curves per cell: all, or attack / level names")
    parser.add_argument("--dataset", default=None, help="replace the grid's dataset (e.g. mnist-sample)")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset's IDX files")
    parser.add_argument("--model", default=None, help="replace the grid's model (e.g. lenet5)")
    parser.add_argument("--iterations", type=int, default=None, help="replace the grid's iterations")
    parser.add_argument("--seeds", default=None, metavar="N|A,B,...",
                        help="replace the grid's seeds (a count or a list)")
    parser.add_argument("--devices", default=None, metavar="D,D,...",
                        help="spread runs over these devices round-robin (e.g. cuda:0,cuda:1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run setting of every run (e.g. device=cuda); repeatable")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(handler=_cmd_bench)
