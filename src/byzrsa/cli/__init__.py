"""The ``byzrsa`` command line.

Every user mistake (bad flag value, impossible config, missing data) ends with
one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
from typing import Any

from byzrsa.errors import ByzrsaError

__all__ = ["main", "add_config_flags", "config_from_args"]

# Subcommands that live in their own modules: each module has register(subparsers).
PLUGINS = ("byzrsa.cli.reproduce", "byzrsa.cli.tune", "byzrsa.cli.theory", "byzrsa.cli.bench", "byzrsa.cli.topology")

# Help for the run's own settings; a component's options carry their help in their registry entry.
HELP: dict[str, str] = {
    "method": "training method",
    "norm": "RSA penalty norm: l1, l2, linf or a number p > 1",
    "lam": "RSA penalty weight lambda (>= 0)",
    "lr": "base step size a; the step is a/sqrt(k) (or a, with --lr-schedule constant)",
    "lr_schedule": "sqrt (a/sqrt(k), the paper's) or constant",
    "master_order": "RSA master uses x_i^k (jacobi, eq. 8 of the paper) or x_i^{k+1} (gauss-seidel, the authors' code)",
    "mu": "weight of f0(x) = mu/2 ||x||^2",
    "momentum": "worker momentum beta of the gradient methods: workers send m = beta m + (1 - beta) g (0: off)",
    "vr": "worker-side variance reduction of every method's gradient (docs/variance-reduction.md)",
    "agg_f": "number of outliers the rule and pre-aggregators are told (default: --byzantine)",
    "pre": "pre-aggregators applied before the rule, in order, comma-separated",
    "attack": "what the Byzantine workers do",
    "byzantine": "number q of Byzantine workers (the last q workers)",
    "dataset": "mnist-sample (offline), mnist, fashion-mnist, digits or synthetic",
    "data_dir": "folder holding the dataset's IDX files (mnist, fashion-mnist)",
    "pixels": "raw (0..255, the paper's) or unit ([0, 1])",
    "split": "iid, by-label (the paper's heterogeneous split), dirichlet, natural (synthetic), sorted-shards or label-separated (each regular worker its own classes)",
    "dirichlet_alpha": "dirichlet split: concentration alpha (smaller = more heterogeneous)",
    "heterogeneity": "synthetic data: how much the workers' distributions differ, in [0, 1]",
    "validation": "fraction of the training data held out as a validation set, reported in place of the test set (tuning)",
    "model": "model",
    "topology": "decentralized learning over a graph of nodes, no master (none: the master and workers)",
    "workers": "number m of workers, regular and Byzantine",
    "batch_size": "minibatch size per worker per iteration",
    "iterations": "number of iterations",
    "eval_every": "evaluate every N iterations",
    "seed": "random seed of the run (>= 0)",
    "dtype": "float32 or float64",
    "device": "cpu, cuda or cuda:N",
    "threads": "torch CPU threads (default on CPU: the idle cores, at least 1; see docs/performance.md, Threads)",
    "engine": "sim (vectorised simulator) or dist (one process per worker, torch.distributed)",
    "backend": "dist engine: gloo or nccl",
    "timeout": "dist engine: seconds before a silent worker is declared dead",
    "plugins": "comma-separated Python modules to import first: they register their own rules, attacks, models",
    "checkpoint_every": "checkpoint the run every N iterations into --out (0: never); continue it with --resume",
}


def _component_flags() -> list[tuple[str, list[str], str, str, str, str]]:
    """(flag, aliases, config key, component kind, owners, help) for every option of every registered component."""
    from byzrsa.cli.catalog import catalog

    flags: dict[str, tuple[list[str], str, str, list[str], str]] = {}  # flag -> (aliases, key, kind, owners, help)

    def add(flag: str, opt: dict[str, Any], key: str, kind: str, owner: str) -> None:
        aliases, _, _, owners, help_ = flags.setdefault(flag, ([], key, kind, [], f"{opt['help']} [{opt['default']}]"))
        aliases.extend(a for a in opt["aliases"] if a not in aliases)
        owners.append(owner)

    entries = catalog()
    for rule in entries["rules"]:
        for opt in rule["options"]:
            add(f"--{rule['name']}-{opt['name'].replace('_', '-')}", opt, f"method.{opt['name']}", "method", rule["name"])
    for attack in entries["attacks"]:
        for opt in attack["options"]:
            add(f"--attack-{opt['name'].replace('_', '-')}", opt, f"attack.{opt['name']}", "attack", attack["name"])
    for model in entries["models"]:
        for opt in model["options"]:
            add(f"--{model['name']}-{opt['name'].replace('_', '-')}", opt, f"model.{opt['name']}", "model", model["name"])
    for pre in entries["pre"]:
        for opt in pre["options"]:
            add(f"--{pre['name']}-{opt['name'].replace('_', '-')}", opt, f"pre.{pre['name']}.{opt['name']}", "pre",
                pre["name"])
    for estimator in entries.get("estimators", []):
        for opt in estimator["options"]:
            add(f"--{estimator['name']}-{opt['name'].replace('_', '-')}", opt, f"vr.{opt['name']}", "vr",
                estimator["name"])
    return [(flag, aliases, key, kind, ",".join(owners), help_) for flag, (aliases, key, kind, owners, help_) in flags.items()]


def _choices(kind: str) -> str:
    from byzrsa.cli.catalog import catalog

    section = {"method": "methods", "attack": "attacks", "model": "models", "pre": "pre", "vr": "estimators"}.get(kind)
    return ", ".join(e["name"] for e in catalog()[section]) if section else ""


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config key and per component option (default None: only given flags override)."""
    from byzrsa.config import KEYS, RunConfig

    defaults = RunConfig().to_dict()
    group = parser.add_argument_group("run settings (defaults in brackets)")
    for key in KEYS:
        default = defaults[key]
        if isinstance(default, dict):
            default = default["name"]
        elif isinstance(default, list):
            default = ",".join(d["name"] for d in default) or "none"
        choices = _choices(key)
        help_ = HELP[key] + (f": {choices}" if choices else "")
        group.add_argument(
            "--" + key.replace("_", "-"), dest=key, default=None, metavar=key.split("_")[-1].upper(),
            help=f"{help_} [{default}]",
        )
    options = parser.add_argument_group(
        "component options (also --set method.OPTION=..., attack.OPTION=..., model.OPTION=..., vr.OPTION=..., "
        "pre.NAME.OPTION=...)"
    )
    for flag, aliases, key, kind, owners, help_ in _component_flags():
        options.add_argument(
            flag, *aliases, dest=f"option:{kind}:{owners}:{key}", default=None, metavar="VALUE",
            help=f"{kind} {owners}: {help_}",
        )
    parser.add_argument("--config", metavar="FILE", help="TOML (or config.json) file of settings; flags override it")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key (repeatable)"
    )


def config_from_args(args: argparse.Namespace, base: Any = None) -> Any:
    """Resolve defaults (or ``base``) < --config file < flags < --set into a RunConfig."""
    from byzrsa.config import KEYS, RunConfig, apply_overrides, load_config
    from byzrsa.errors import ConfigError

    config = load_config(args.config) if args.config else (base if base is not None else RunConfig())
    given = {k: getattr(args, k) for k in KEYS if getattr(args, k, None) is not None}
    if given:
        config = config.replace(**given)
    options = {}
    for dest, value in vars(args).items():
        if not dest.startswith("option:") or value is None:
            continue
        _, kind, owners, key = dest.split(":", 3)
        chosen = config.pre if kind == "pre" else (getattr(config, kind),)
        if not set(owners.split(",")) & set(chosen):
            flag = "--" + (f"{kind}-" if kind == "attack" else f"{owners.split(',')[0]}-") + key.rsplit(".", 1)[1]
            raise ConfigError(
                f"{flag.replace('_', '-')} is an option of {kind} {owners.replace(',', ', ')}, "
                f"but this run's {kind} is {', '.join(chosen) or 'none'}"
            )
        options[key] = value
    if options:
        config = config.replace(**options)
    return apply_overrides(config, args.set)


def resume_base(resume: str | None) -> Any:
    """The config of the results folder ``resume`` (its config.json), or None."""
    if resume is None:
        return None
    from pathlib import Path

    from byzrsa.config import load_config
    from byzrsa.errors import ConfigError

    path = Path(resume) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: no config.json there; give the results folder of a checkpointed run")
    return load_config(path)


def _cmd_run(args: argparse.Namespace) -> int:
    from byzrsa.experiments.runner import run

    if args.list:
        if args.plugins:
            from byzrsa.config import config_from_dict
            from byzrsa.engines.common import import_plugins

            import_plugins(config_from_dict({"plugins": args.plugins}))
        return _cmd_list(args)
    config = config_from_args(args, resume_base(args.resume))
    from byzrsa.config import config_warnings
    from byzrsa.engines.common import validate

    # Validated first, so that an impossible config is one error line, not a warning and an error.
    for warning in config_warnings(validate(config)):
        print(f"byzrsa: warning: {warning}", file=sys.stderr)
    if args.resume and args.out is None:
        args.out = args.resume
    if args.resume and args.overwrite and _same_path(args.out, args.resume):
        from byzrsa.errors import ConfigError

        raise ConfigError("--resume continues the run in its folder and --overwrite would replace it: give one of them")
    try:
        summary = run(config, args.out, quiet=args.quiet, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt as exc:
        from pathlib import Path

        where = ""
        if args.out is not None:
            kept = (Path(args.out) / "summary.json").exists()
            where = f"; partial results are in {args.out}" if kept else " before the first evaluation; nothing was written"
        print(f"byzrsa: interrupted{where}", file=sys.stderr)
        return interrupted_status(exc)
    keys = ("method", "attack", "byzantine", "iterations", "final_accuracy", "best_accuracy", "wall_seconds")
    print(json.dumps({k: summary[k] for k in keys}))
    return 0


def _same_path(a: str, b: str) -> bool:
    from pathlib import Path

    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return a == b


def list_components() -> str:
    """Every registered component with its options and defaults (``byzrsa list``)."""
    from byzrsa.cli.catalog import catalog

    entries = catalog()
    sections = [
        ("methods (--method; a gradient method's options are its rule's: --set method.OPTION=...)", entries["methods"]),
        ("pre-aggregators (--pre a,b; --set pre.NAME.OPTION=...)", entries["pre"]),
        ("attacks (--attack; --set attack.OPTION=...)", entries["attacks"]),
        ("models (--model, or package.module:Factory; --set model.OPTION=...)", entries["models"]),
        ("variance reduction (--vr; --set vr.OPTION=...)", entries.get("estimators", [])),
    ]
    lines = []
    for title, section in sections:
        lines.append(title)
        for entry in section:
            lines.append(f"  {entry['name']:<16} {entry['help']}")
            for opt in entry["options"]:
                lines.append(f"      {opt['name']} = {opt['repr']:<10} {opt['type']}: {opt['help']}")
        lines.append("")
    return "\n".join(lines).rstrip()


def _cmd_list(args: argparse.Namespace) -> int:
    print(list_components())
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (and exit status 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            from byzrsa.errors import did_you_mean

            flag = next((w for w in message.split()[2:] if w.startswith("--")), None)
            if flag is not None:
                message += did_you_mean(flag.partition("=")[0], self._every_flag())
        self.exit(2, f"byzrsa: error: {message} (see {self.prog} --help)\n")

    def _every_flag(self) -> list[str]:
        """The long flags of this parser and of its subcommands' parsers (argparse reports them all from the top)."""
        flags = [s for s in self._option_string_actions if s.startswith("--")]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    flags.extend(s for s in sub._option_string_actions if s.startswith("--"))
        return flags


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="byzrsa", description="Byzantine-robust distributed learning: RSA, robust baselines, attacks."
    )
    from byzrsa import __version__

    parser.add_argument("--version", action="version", version=f"byzrsa {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, print the traceback after the one-line message (also BYZRSA_DEBUG=1); "
                        "may be given anywhere on the line")
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
        help="continue the checkpointed run in results folder DIR (its config.json and checkpoint.pt); "
        "results go to DIR unless --out is given",
    )
    run_parser.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    run_parser.add_argument("--list", action="store_true", help="print every component with its options and exit")
    run_parser.set_defaults(handler=_cmd_run)
    list_parser = sub.add_parser("list", help="every method, pre-aggregator, attack and model with its options")
    list_parser.set_defaults(handler=_cmd_list)
    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


TERMINATION_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)
HANDLED_SIGNALS = (signal.SIGINT, *TERMINATION_SIGNALS)


def interrupted_status(exc: BaseException) -> int:
    """The exit status shells expect after a signal, 128 + its number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM.

    :func:`_interrupt_on_termination` raises ``KeyboardInterrupt("SIGTERM")``; a plain Ctrl-C carries no name.
    """
    name = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "SIGINT"
    try:
        return 128 + int(signal.Signals[name])
    except KeyError:
        return 130


def _interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP (batch schedulers, a closed terminal) end a command the way Ctrl-C does.

    The KeyboardInterrupt they raise runs the same clean-up: child processes
    are ended and every results folder says ``interrupted``. Only the first
    signal of the three (Ctrl-C included) raises: a scheduler or a process
    group may deliver several, a user may press Ctrl-C twice, and a second
    signal must not cut the clean-up short (SIGKILL still ends everything).
    """
    received: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if received:
            return
        received.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in HANDLED_SIGNALS:
        try:
            signal.signal(sig, handler)
        except ValueError:  # main() called from a thread other than the main one: signals stay as they are
            return


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; return the exit status (0, 1 for failed runs, 2 for an error, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("BYZRSA_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line, not only before the command
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error (already printed as one line)
        return exc.code if isinstance(exc.code, int) else 2
    previous = {sig: signal.getsignal(sig) for sig in HANDLED_SIGNALS}
    _interrupt_on_termination()
    try:
        return int(args.handler(args) or 0)
    except ByzrsaError as exc:
        print(f"byzrsa: error: {_first_line(exc)}", file=sys.stderr)
        _traceback(debug)
        return 2
    except OSError as exc:  # results that cannot be written (a full disk, a read-only folder) outside a run
        from byzrsa.errors import WriteError

        print(f"byzrsa: error: {WriteError.from_os(exc)}", file=sys.stderr)
        _traceback(debug)
        return 2
    finally:
        for sig, handler in previous.items():  # main() called from Python leaves the caller's handlers as they were
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)


def _traceback(debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__

