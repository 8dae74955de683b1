"""``byzrsa tune``: a short grid search over the step size (and, for RSA, lambda).

The paper's baselines were "hand-tuned to the best"; this makes the tuning a
command. Every grid point is one run config (the ``byzrsa run`` flags with
``lr`` and ``lam`` replaced), run in parallel and resumably like ``byzrsa
reproduce`` (results in ``OUT/runs/KEY``), and ranked by final accuracy: the
mean test accuracy over the last 10% of the iterations.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from byzrsa.errors import ConfigError
from byzrsa.config import RunConfig
from byzrsa.engines.common import validate

__all__ = ["parse_grid", "tune", "register"]


def parse_grid(text: str, what: str = "grid") -> list[float]:
    """``"1e-5,3e-5,1e-4"`` -> [1e-05, 3e-05, 0.0001] (positive numbers, duplicates dropped)."""
    values: list[float] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--{what}: {item!r} is not a number (expected e.g. 1e-5,3e-5,1e-4)") from None
        if not value > 0 or not math.isfinite(value):
            raise ConfigError(f"--{what}: values must be positive, got {item}")
        if value not in values:
            values.append(value)
    if not values:
        raise ConfigError(f"--{what} is empty")
    return values


def tune(
    config: RunConfig,
    lrs: Sequence[float],
    lams: Sequence[float] | None = None,
    *,
    out: str | Path,
    jobs: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run ``config`` at every (lr[, lam]) of the grid; return the table and the best point.

    Writes ``out/tune.json`` and ``out/tune.md``. ``lams`` only applies to RSA.
    """
    from byzrsa.experiments.paper import canonical, execute, run_key
    from byzrsa.experiments.report import final_values
    from byzrsa.experiments.runner import read_metrics

    out = Path(out)
    if lams and config.method != "rsa":
        raise ConfigError("--lam-grid only applies to --method rsa")
    points = [(lr, lam) for lr in lrs for lam in (lams or [config.lam])]
    configs = {}
    for lr, lam in points:
        c = canonical(config.replace(lr=lr, lam=lam))
        validate(c)
        configs[(lr, lam)] = c
    runs = {run_key(c): c for c in configs.values()}
    failures, _ = execute(runs, out, jobs=jobs, quiet=quiet)
    rows = []
    for (lr, lam), c in configs.items():
        key = run_key(c)
        folder = out / "runs" / key
        if key in failures or not (folder / "summary.json").exists():
            rows.append({"lr": lr, "lam": lam, "key": key, "final_accuracy": None, "error": failures.get(key, "missing")})
            continue
        final = final_values(read_metrics(folder))
        rows.append({"lr": lr, "lam": lam, "key": key, "final_accuracy": final["accuracy"],
                     "last_accuracy": final["last_accuracy"], "train_seconds": final["time"]})
    ranked = [r for r in rows if r["final_accuracy"] is not None and math.isfinite(r["final_accuracy"])]
    best = max(ranked, key=lambda r: r["final_accuracy"]) if ranked else None
    edge = None
    if best is not None:
        if len(lrs) > 1 and best["lr"] in (min(lrs), max(lrs)):
            edge = "lr"
        if lams and len(lams) > 1 and best["lam"] in (min(lams), max(lams)):
            edge = "lam" if edge is None else "lr and lam"
    result = {
        "config": json.loads(config.to_json()),
        "grid": {"lr": list(lrs), "lam": list(lams) if lams else None},
        "rows": rows,
        "best": best,
        "best_on_grid_edge": edge,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tune.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "tune.md").write_text(format_table(result) + "\n")
    return result


def format_table(result: dict[str, Any]) -> str:
    """The grid as a markdown table, best row marked."""
    c = result["config"]
    rsa = c["method"] == "rsa"
    lines = [
        f"Tuning {c['method']} on {c['dataset']} ({c['split']}, q={c['byzantine']}, attack {c['attack']}, "
        f"{c['iterations']} iterations); final accuracy = mean over the last 10% of the iterations.",
        "",
        "| lr | " + ("lambda | " if rsa else "") + "final accuracy | train s |",
        "|---|" + ("---|" if rsa else "") + "---|---|",
    ]
    best = result["best"]
    for row in result["rows"]:
        acc = "failed" if row["final_accuracy"] is None else f"{row['final_accuracy']:.4f}"
        mark = " **best**" if best is not None and row["key"] == best["key"] else ""
        seconds = f"{row['train_seconds']:.1f}" if "train_seconds" in row else ""
        lines.append(f"| {row['lr']:g} | " + (f"{row['lam']:g} | " if rsa else "") + f"{acc}{mark} | {seconds} |")
    if result.get("best_on_grid_edge"):
        lines += ["", f"Note: the best {result['best_on_grid_edge']} is on the edge of the grid; extend the grid."]
    return "\n".join(lines)


def _figure_config(args: argparse.Namespace) -> RunConfig:
    """The preset run of ``--method`` in ``--figure``, with every given flag on top."""

    from byzrsa.experiments.paper import FIGURES, figure_configs, resolve_figures

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

    config = _figure_config(args) if args.figure else config_from_args(args)
    lrs = parse_grid(args.grid, "grid")
    lams = parse_grid(args.lam_grid, "lam-grid") if args.lam_grid else None
    out = args.out or f"results/tune/{config.method}"
    try:
        result = tune(config, lrs, lams, out=out, jobs=args.jobs, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"byzrsa: interrupted; finished grid points are kept in {out}", file=sys.stderr)
        return 130
    print(format_table(result) + "\n")
    best = result["best"]
    if best is None:
        print("byzrsa: every grid point failed", file=sys.stderr)
        return 1
    lam = f" --lam {best['lam']:g}" if config.method == "rsa" else ""
    print(f"best: --lr {best['lr']:g}{lam} (final accuracy {best['final_accuracy']:.4f}); table in {out}/tune.md")
    return 0


def register(subparsers: Any) -> None:
    """Add ``byzrsa tune`` to the CLI."""
    from byzrsa.cli import add_config_flags

    parser = subparsers.add_parser(
        "tune",
        help="grid-search the step size (and lambda for RSA) of a config; print and save the table",
        description="Run the config (same flags as `byzrsa run`) at every step size of --grid (and, for RSA, every "
        "lambda of --lam-grid), in parallel and resumably, and rank the points by final accuracy.",
    )
    parser.add_argument("--grid", required=True, metavar="A,B,...", help="base step sizes a to try (the step is a/sqrt(k))")
    parser.add_argument("--lam-grid", default=None, metavar="L,M,...", help="RSA only: lambdas to try")
    parser.add_argument("--figure", default=None, metavar="FIG",
                        help="start from the paper preset of --method in this figure (e.g. fig4a); flags override it")
    parser.add_argument("--out", default=None, metavar="DIR", help="results folder [results/tune/METHOD]")
    parser.add_argument("--jobs", type=int, default=None, help="parallel processes [number of CPU cores]")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    add_config_flags(parser)
    parser.set_defaults(handler=_cmd_tune)
