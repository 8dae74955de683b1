"""``byzrsa tune``: a short grid search over the step size (and, for RSA, lambda).

The paper's baselines were "hand-tuned to the best"; this makes the tuning a
command. Every grid point is one run config (the ``byzrsa run`` flags with
``lr`` and ``lam`` replaced), run in parallel and resumably like ``byzrsa
reproduce`` (results in ``OUT/runs/KEY``), and ranked by final accuracy: the
mean test accuracy over the last 10% of the iterations.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from byzrsa.config import RunConfig, config_from_dict
from byzrsa.engines.common import validate
from byzrsa.errors import ConfigError, config_int

__all__ = ["parse_grid", "tune"]


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
    config: RunConfig | Mapping[str, Any],
    lrs: Sequence[float],
    lams: Sequence[float] | None = None,
    *,
    out: str | Path,
    jobs: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run ``config`` at every (lr[, lam]) of the grid; return the table and the best point.

    Writes ``out/tune.json`` and ``out/tune.md`` (atomically), holding the
    folder's lock throughout, like ``reproduce``. ``lams`` only applies to RSA.
    Every input is checked before any run starts.
    """
    from byzrsa.experiments.folders import check_folder
    from byzrsa.experiments.paper import _exclusive

    if isinstance(config, Mapping):
        config = config_from_dict(config)
    elif not isinstance(config, RunConfig):
        raise ConfigError(f"tune() takes a RunConfig or a mapping of settings, got {type(config).__name__}")
    validate(config)  # the user's own settings (e.g. threads), which the grid's run keys leave out
    lrs = [_grid_value(v, "grid") for v in lrs]
    lams = [_grid_value(v, "lam-grid") for v in lams] if lams else None
    if not lrs:
        raise ConfigError("--grid is empty")
    if lams and config.method != "rsa":
        raise ConfigError("--lam-grid only applies to --method rsa")
    out = check_folder(out)
    if jobs is not None:
        config_int(jobs, "--jobs", minimum=1)
    with _exclusive(out):
        return _tune(config, lrs, lams, out, jobs, quiet)


def _grid_value(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{what}: {value!r} is not a number") from None
    if not number > 0 or not math.isfinite(number):
        raise ConfigError(f"--{what}: values must be positive and finite, got {value}")
    return number


def _tune(
    config: RunConfig, lrs: list[float], lams: list[float] | None, out: Path, jobs: int | None, quiet: bool
) -> dict[str, Any]:
    from byzrsa.experiments.folders import atomic_write_text
    from byzrsa.experiments.paper import execute, is_done, run_folder
    from byzrsa.experiments.plan import canonical, run_key
    from byzrsa.experiments.report import final_values
    from byzrsa.experiments.runner import read_metrics

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
        folder = run_folder(out, key)
        if key in failures or not is_done(out, key, c.iterations):
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
    atomic_write_text(out / "tune.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "tune.md", format_table(result) + "\n")
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
