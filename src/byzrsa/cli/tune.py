"""``byzrsa tune``: the argparse side of :mod:`byzrsa.experiments.tune`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from byzrsa.config import RunConfig
from byzrsa.errors import ConfigError

__all__ = ["register"]


def _figure_config(args: argparse.Namespace) -> RunConfig:
    """The preset run of ``--method`` in ``--figure``, with every given flag on top."""

    from byzrsa.experiments.paper.plan import figure_configs, resolve_figures
    from byzrsa.experiments.paper.presets import FIGURES

    names = resolve_figures([args.figure])
    if len(names) != 1 or names[0] not in FIGURES:
        raise ConfigError(f"--figure takes one figure panel such as fig4a, got {args.figure!r}")
    figure = FIGURES[names[0]]
    method = args.method or "rsa"
    presets = {label: c for label, c in figure_configs(figure, {"dataset": args.dataset or "mnist-sample"}).items()
               if c.method == method}
    if not presets:
        have = sorted({c.method for c in figure_configs(figure, {}).values()})
        raise ConfigError(f"{figure.name} has no {method} line; it has {', '.join(have)}")
    from byzrsa.cli import config_from_args

    return config_from_args(args, base=next(iter(presets.values())))


def _cmd_tune(args: argparse.Namespace) -> int:
    from byzrsa.cli import config_from_args
    from byzrsa.experiments.tune import format_table, parse_grid, tune  # imports torch: only when the command runs

    config = _figure_config(args) if args.figure else config_from_args(args)
    lrs = parse_grid(args.grid, "grid")
    lams = parse_grid(args.lam_grid, "lam-grid") if args.lam_grid else None
    out = args.out or f"results/tune/{config.method}"
    try:
        result = tune(config, lrs, lams, out=out, jobs=args.jobs, quiet=args.quiet, extensions=args.extensions,
                      on_test=args.rank_by_test)
    except KeyboardInterrupt as exc:
        print(f"byzrsa: interrupted; finished grid points are kept in {out}", file=sys.stderr)
        from byzrsa.cli import interrupted_status

        return interrupted_status(exc)
    print(format_table(result) + "\n")
    best = result["best"]
    if best is None:
        print("byzrsa: every grid point failed", file=sys.stderr)
        return 1
    lam = f" --lam {best['lam']:g}" if config.method == "rsa" else ""
    where = "TEST accuracy (--rank-by-test: the test set chose it)" if result["scored_on"] == "test" else \
        f"accuracy on the {result['scored_on']} split"
    print(f"best: --lr {best['lr']:g}{lam} (final {where} {best['final_accuracy']:.4f}); table in {out}/tune.md")
    return 0


def register(subparsers: Any) -> None:
    """Add ``byzrsa tune`` to the CLI."""
    from byzrsa.cli import add_config_flags

    parser = subparsers.add_parser(
        "tune",
        help="grid-search the step size (and lambda for RSA) of a config; print and save the table",
        description="Run the config (same flags as `byzrsa run`) at every step size of --grid (and, for RSA, every "
        "lambda of --lam-grid), in parallel and resumably, and rank the points by final accuracy on a validation "
        "split of the training data (--validation, default 0.2; the test set only with --rank-by-test). A best "
        "value at an end of its grid extends the grid past it (--extensions times at most).",
    )
    parser.add_argument("--grid", required=True, metavar="A,B,...", help="base step sizes a to try (the step is a/sqrt(k))")
    parser.add_argument("--lam-grid", default=None, metavar="L,M,...", help="RSA only: lambdas to try")
    parser.add_argument("--figure", default=None, metavar="FIG",
                        help="start from the paper preset of --method in this figure (e.g. fig4a); flags override it")
    parser.add_argument("--extensions", type=int, default=3, metavar="N",
                        help="times a grid may be extended past a best value at its end, per key [3]")
    parser.add_argument("--rank-by-test", action="store_true",
                        help="rank by TEST accuracy instead of a validation split (the output says so)")
    parser.add_argument("--out", default=None, metavar="DIR", help="results folder [results/tune/METHOD]")
    parser.add_argument("--jobs", type=int, default=None, help="parallel processes [number of CPU cores]")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_config_flags(parser)
    parser.set_defaults(handler=_cmd_tune)
