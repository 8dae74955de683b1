"""``byzrsa tune``: a short grid search over the step size (and, for RSA, lambda).

The paper's baselines were "hand-tuned to the best"; this makes the tuning a
command. Every grid point is one run config (the ``byzrsa run`` flags with
``lr`` and ``lam`` replaced), run in parallel and resumably like ``byzrsa
reproduce`` (results in ``OUT/runs/KEY``), and ranked by final accuracy: the
mean accuracy over the last 10% of the iterations on a validation split of
the training data (the test set only with ``on_test``). A best value at an
end of the grid extends the grid past it.
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

__all__ = ["parse_grid", "tune", "DEFAULT_VALIDATION"]

#: fraction of the training data held out to score the grid's points when the config names none
DEFAULT_VALIDATION = 0.2


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
    extensions: int = 3,
    on_test: bool = False,
) -> dict[str, Any]:
    """Run ``config`` at every (lr[, lam]) of the grid; return the table and the best point.

    Points are scored on a validation split carved from the training data
    (``config.validation``, :data:`DEFAULT_VALIDATION` when it is 0), never the
    test set, unless ``on_test`` asks to rank by test accuracy (the output then
    says so). When the best value of ``lr`` (or ``lam``) is the smallest or
    largest of its grid, the grid is extended past it by the ratio of its two
    outermost values and the new points run, up to ``extensions`` times per key.
    Writes ``out/tune.json`` and ``out/tune.md`` (atomically), holding the
    folder's lock throughout, like ``reproduce``. ``lams`` only applies to RSA.
    Every input is checked before any run starts.
    """
    from byzrsa.folders import check_folder
    from byzrsa.experiments.paper import _exclusive

    if isinstance(config, Mapping):
        config = config_from_dict(config)
    elif not isinstance(config, RunConfig):
        raise ConfigError(f"tune() takes a RunConfig or a mapping of settings, got {type(config).__name__}")
    if on_test and config.validation > 0:
        raise ConfigError("--rank-by-test and --validation contradict each other: give one")
    if not on_test and config.validation == 0:
        config = config.replace(validation=DEFAULT_VALIDATION)
    validate(config)  # the user's own settings (e.g. threads), which the grid's run keys leave out
    lrs = [_grid_value(v, "grid") for v in lrs]
    lams = [_grid_value(v, "lam-grid") for v in lams] if lams else None
    if not lrs:
        raise ConfigError("--grid is empty")
    if lams and config.method != "rsa":
        raise ConfigError("--lam-grid only applies to --method rsa")
    extensions = config_int(extensions, "--extensions", minimum=0)
    out = check_folder(out)
    if jobs is not None:
        config_int(jobs, "--jobs", minimum=1)
    with _exclusive(out):
        return _tune(config, lrs, lams, out, jobs, quiet, extensions)


def _grid_value(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{what}: {value!r} is not a number") from None
    if not number > 0 or not math.isfinite(number):
        raise ConfigError(f"--{what}: values must be positive and finite, got {value}")
    return number


def _outward(values: list[float], best: float) -> float | None:
    """The next value past ``best`` when it is an end of ``values`` (same ratio as the two outermost), else None."""
    ordered = sorted(values)
    if len(ordered) < 2 or best not in (ordered[0], ordered[-1]):
        return None
    if best == ordered[-1]:
        return best * ordered[-1] / ordered[-2]
    return best * ordered[0] / ordered[1]


def _at_end(grid: Mapping[str, list[float]], row: Mapping[str, Any]) -> bool:
    return any(_outward(grid[n], row[n]) is not None for n in ("lr", "lam"))


def _tune(
    config: RunConfig, lrs: list[float], lams: list[float] | None, out: Path, jobs: int | None, quiet: bool,
    extensions: int,
) -> dict[str, Any]:
    from byzrsa.folders import atomic_write_text
    from byzrsa.experiments.paper import execute, is_done, run_folder
    from byzrsa.experiments.paper.plan import canonical, run_key
    from byzrsa.experiments.paper.report import final_values
    from byzrsa.experiments.runner import read_metrics

    grid = {"lr": list(lrs), "lam": list(lams) if lams else [config.lam]}
    extended = {"lr": 0, "lam": 0}
    configs: dict[tuple[float, float], RunConfig] = {}
    failures: dict[str, str] = {}
    rows: dict[tuple[float, float], dict[str, Any]] = {}
    best = None
    while True:
        for lr in grid["lr"]:
            for lam in grid["lam"]:
                if (lr, lam) not in configs:
                    c = canonical(config.replace(lr=lr, lam=lam))
                    validate(c)
                    configs[(lr, lam)] = c
        runs = {run_key(c): c for p, c in configs.items() if p not in rows}
        failed, _ = execute(runs, out, jobs=jobs, quiet=quiet)
        failures.update(failed)
        for (lr, lam), c in configs.items():
            if (lr, lam) in rows:
                continue
            key = run_key(c)
            if key in failures or not is_done(out, key, c.iterations):
                rows[(lr, lam)] = {"lr": lr, "lam": lam, "key": key, "final_accuracy": None,
                                   "error": failures.get(key, "missing")}
                continue
            final = final_values(read_metrics(run_folder(out, key)))
            rows[(lr, lam)] = {"lr": lr, "lam": lam, "key": key, "final_accuracy": final["accuracy"],
                               "last_accuracy": final["last_accuracy"], "train_seconds": final["time"]}
        ranked = [r for r in rows.values() if r["final_accuracy"] is not None and math.isfinite(r["final_accuracy"])]
        # a tie between an end of the grid and an inner point goes inside: a plateau is no reason to walk out
        best = max(ranked, key=lambda r: (r["final_accuracy"], not _at_end(grid, r))) if ranked else None
        grew = False
        for name in ("lr", "lam") if best is not None else ():
            step = _outward(grid[name], best[name])
            if step is not None and extended[name] < extensions:
                grid[name].append(step)
                extended[name] += 1
                grew = True
        if not grew:
            break
    edge = None
    if best is not None:
        at = [n for n in ("lr", "lam") if _outward(grid[n], best[n]) is not None]
        edge = " and ".join(at) or None
    result = {
        "config": json.loads(config.to_json()),
        "scored_on": f"validation ({config.validation:g} of the training data)" if config.validation else "test",
        "grid": {"lr": sorted(grid["lr"]), "lam": sorted(grid["lam"]) if lams else None},
        "extended": extended if lams else {"lr": extended["lr"]},
        "extensions": extensions,
        "rows": sorted(rows.values(), key=lambda r: (r["lr"], r["lam"])),
        "best": best,
        "best_on_grid_edge": edge,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tune.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "tune.md", format_table(result) + "\n")
    return result


def format_table(result: dict[str, Any]) -> str:
    """The grid as a markdown table, best row marked."""
    c = {k: (v.get("name", v) if isinstance(v, Mapping) else v) for k, v in result["config"].items()}
    rsa = c["method"] == "rsa"
    on_test = result.get("scored_on", "test") == "test"
    scored = ("**ranked by TEST accuracy** (--rank-by-test): the chosen values have seen the test set, so a test "
              "accuracy reported at them is optimistic" if on_test else
              f"scored on a {result['scored_on']} split, never the test set")
    grid = "; ".join(f"{k} {', '.join(f'{x:.4g}' for x in sorted(v))}" for k, v in result["grid"].items() if v)
    lines = [
        f"Tuning {c['method']} on {c['dataset']} ({c['split']}, q={c['byzantine']}, attack {c['attack']}, "
        f"{c['iterations']} iterations); final accuracy = mean over the last 10% of the iterations, {scored}.",
        f"Final grid: {grid}; a best value at an end of its grid extends it by the same ratio, up to "
        f"{result.get('extensions', 0)} time(s) per key (extended: "
        f"{', '.join(f'{k} {n}x' for k, n in result.get('extended', {}).items()) or 'none'}).",
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
        lines += ["", f"Note: the best {result['best_on_grid_edge']} is still on the edge of the grid after "
                      f"{result.get('extensions', 0)} extension(s); extend the grid further."]
    return "\n".join(lines)
