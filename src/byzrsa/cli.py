"""The ``byzrsa`` command line.

Every user mistake (bad flag value, impossible config, missing data) ends with
one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import fields
from typing import Any

from byzrsa.errors import ByzrsaError

__all__ = ["main", "add_config_flags", "config_from_args"]

# Subcommands that live in their own modules: each module has register(subparsers).
PLUGINS = ("byzrsa.experiments.paper", "byzrsa.experiments.tune", "byzrsa.experiments.theory")

HELP: dict[str, str] = {
    "method": "rsa, ideal-sgd, sgd, geomed, krum, median, trimmed-mean or multi-krum",
    "norm": "RSA penalty norm: l1, l2, linf or a number p > 1",
    "lam": "RSA penalty weight lambda (>= 0)",
    "lr": "base step size a; the step is a/sqrt(k) (or a, with --lr-schedule constant)",
    "lr_schedule": "sqrt (a/sqrt(k), the paper's) or constant",
    "master_order": "RSA master uses x_i^k (jacobi, eq. 8 of the paper) or x_i^{k+1} (gauss-seidel, the authors' code)",
    "mu": "weight of f0(x) = mu/2 ||x||^2",
    "agg_f": "number of outliers a robust rule is told (default: --byzantine)",
    "multi_krum_k": "rows multi-Krum averages (default m - f)",
    "geomed_tol": "geometric median: relative stopping tolerance of Weiszfeld's iterations",
    "geomed_max_iter": "geometric median: iteration cap",
    "attack": "none, same-value, sign-flip, copy, gaussian, non-finite or negative-sum",
    "byzantine": "number q of Byzantine workers (the last q workers)",
    "attack_c": "same-value attack: the value c sent in every entry",
    "attack_sigma": "sign-flip attack: multiplier sigma of the true value",
    "attack_copy_from": "copy attack: index of the regular worker copied (0 = first)",
    "attack_std": "gaussian attack: standard deviation",
    "attack_value": "non-finite attack: nan, inf or -inf",
    "dataset": "mnist-sample (offline), mnist, fashion-mnist, digits or synthetic",
    "data_dir": "folder holding the dataset's IDX files (mnist, fashion-mnist)",
    "pixels": "raw (0..255, the paper's) or unit ([0, 1])",
    "split": "iid, by-label (the paper's heterogeneous split), dirichlet or natural (synthetic)",
    "dirichlet_alpha": "dirichlet split: concentration alpha (smaller = more heterogeneous)",
    "heterogeneity": "synthetic data: how much the workers' distributions differ, in [0, 1]",
    "model": "softmax (regression with bias) or mlp",
    "hidden": "mlp: hidden units",
    "workers": "number m of workers, regular and Byzantine",
    "batch_size": "minibatch size per worker per iteration",
    "iterations": "number of iterations",
    "eval_every": "evaluate every N iterations",
    "seed": "random seed of the run",
    "dtype": "float32 or float64",
    "device": "cpu or cuda (cuda:N)",
    "threads": "torch CPU threads (default: torch's choice)",
    "engine": "sim (vectorised simulator) or dist (one process per worker, torch.distributed)",
    "backend": "dist engine: gloo or nccl",
    "timeout": "dist engine: seconds before a silent worker is declared dead",
    "checkpoint_every": "dist engine: checkpoint the master every N iterations into --out (0: never); see --resume",
}
ALIASES = {"attack_sigma": ["--sigma"], "attack_copy_from": ["--copy-from"], "attack_c": ["--c"]}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (default None: only given flags override), plus --config and --set."""
    from byzrsa.experiments.config import RunConfig

    group = parser.add_argument_group("run settings (defaults in brackets)")
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        group.add_argument(
            flag, *ALIASES.get(f.name, []), dest=f.name, default=None, metavar=f.name.split("_")[-1].upper(),
            help=f"{HELP[f.name]} [{f.default}]",
        )
    parser.add_argument("--config", metavar="FILE", help="TOML (or config.json) file of settings; flags override it")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key (repeatable)"
    )


def config_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    """Resolve defaults (or ``base``) < --config file < flags < --set into a RunConfig."""
    from byzrsa.experiments.config import RunConfig, apply_overrides, load_config

    config = load_config(args.config) if args.config else (base if base is not None else RunConfig())
    given = {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name, None) is not None}
    if given:
        config = config.replace(**given)
    return apply_overrides(config, args.set)


def resume_base(resume: str | None) -> Any:
    """The config of the results folder ``resume`` (its config.json), or None."""
    if resume is None:
        return None
    from pathlib import Path

    from byzrsa.errors import ConfigError
    from byzrsa.experiments.config import load_config

    path = Path(resume) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: no config.json there; give the results folder of a checkpointed run")
    return load_config(path)


def _cmd_run(args: argparse.Namespace) -> int:
    from byzrsa.experiments.runner import run

    config = config_from_args(args, resume_base(args.resume))
    if args.resume and args.out is None:
        args.out = args.resume
    try:
        summary = run(config, args.out, quiet=args.quiet, resume=args.resume)
    except KeyboardInterrupt:
        where = f"; partial results are in {args.out}" if args.out else ""
        print(f"byzrsa: interrupted{where}", file=sys.stderr)
        return 130
    keys = ("method", "attack", "byzantine", "iterations", "final_accuracy", "best_accuracy", "wall_seconds")
    print(json.dumps({k: summary[k] for k in keys}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byzrsa", description="Byzantine-robust distributed learning: RSA, robust baselines, attacks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = sub.add_parser(
        "run",
        help="train one configuration and write its results folder",
        description="Train one configuration. Writes config.json, metrics.csv, summary.json and accuracy.png to --out.",
    )
    add_config_flags(run_parser)
    run_parser.add_argument("--out", metavar="DIR", help="results folder (created); without it nothing is written")
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    run_parser.add_argument(
        "--resume", metavar="DIR",
        help="continue the checkpointed dist run in results folder DIR (its config.json and checkpoint.pt); "
        "results go to DIR unless --out is given",
    )
    run_parser.set_defaults(handler=_cmd_run)
    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ByzrsaError as exc:
        print(f"byzrsa: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
