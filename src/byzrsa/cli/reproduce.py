"""``byzrsa reproduce``: the argparse side of :mod:`byzrsa.experiments.paper`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from byzrsa.experiments.paper.presets import QUICK_ITERATIONS

__all__ = ["register"]


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from byzrsa.experiments.paper import describe_presets, reproduce  # imports torch: only when the command runs

    if args.list:
        print(describe_presets())
        return 0
    out = args.out or f"results/{args.dataset}" + ("-quick" if args.quick else "")
    try:
        result = reproduce(
            args.figures or ["all"], dataset=args.dataset, out=out, data_dir=args.data_dir, jobs=args.jobs,
            quick=args.quick, iterations=args.iterations, eval_every=args.eval_every, overrides=args.set,
            compare_order=args.compare_master_order,
            quiet=args.quiet,
        )
    except KeyboardInterrupt as exc:
        from byzrsa.cli import interrupted_status

        print(f"byzrsa: interrupted; finished runs are kept in {out} and the next invocation continues", file=sys.stderr)
        return interrupted_status(exc)
    print(f"report: {result['report']} ({result['runs']} runs, {result['total_seconds']:.0f} s)")
    if result["failures"]:
        print(f"byzrsa: {len(result['failures'])} run(s) failed; see the report", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add ``byzrsa reproduce`` to the CLI."""
    parser = subparsers.add_parser(
        "reproduce",
        help="rerun the paper's figures 3-10 (and the theory checks), draw them and write a report",
        description="Run every run the chosen figures need (shared runs once, in parallel, resuming finished ones), "
        "draw each panel as PNG and SVG and write DIR/report.md with a claim-by-claim verdict.",
    )
    parser.add_argument("figures", nargs="*", metavar="FIG",
                        help="fig3 fig4a fig4b fig5a fig5b fig6 fig7 fig8 fig9 fig10a fig10b theory, "
                        "fig4/fig5/fig10 for both panels, or all (default)")
    parser.add_argument("--dataset", default="mnist-sample", help="mnist-sample (default, offline), mnist or fashion-mnist")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset's IDX files")
    parser.add_argument("--out", metavar="DIR", default=None, help="results folder [results/DATASET]")
    parser.add_argument("--jobs", type=int, default=None, help="parallel processes [number of CPU cores]")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke check: the same figures at {QUICK_ITERATIONS} iterations")
    parser.add_argument("--iterations", type=int, default=None, help="override the number of iterations")
    parser.add_argument("--eval-every", type=int, default=None, help="override the evaluation interval")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run setting in every run (e.g. master_order=gauss-seidel, seed=1); repeatable")
    parser.add_argument("--compare-master-order", action="store_true",
                        help="also run the RSA lines of figures 3, 4, 5, 10 with the other master order and compare")
    parser.add_argument("--list", action="store_true", help="print the presets and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(handler=_cmd_reproduce)
