"""Fair tuning for the benchmark: per method and heterogeneity level, the best worst case on a validation split.

For every method and level of a :class:`~byzrsa.experiments.bench_presets.Grid`
the tuned keys (``lr`` always, ``lam`` for RSA, ``method.tau`` for centered
clipping, or the method's own list) take every combination of
``start * factor``. Each point runs under every attack, q and declared f of
the grid, with the tuning seeds, on the training data minus a stratified
validation fraction (``RunConfig.validation``: the run is scored on the held-out
samples, and its data holds no test sample at all). A point's score is its
worst case over the attacks (and q, f) of the mean validation accuracy over the
seeds; the best score wins, ties going to the point nearest the start (the
smallest sum of |log factor|). The test set is read only by the grid's runs.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from byzrsa.config import RunConfig
from byzrsa.experiments.bench_grid import Grid, MethodSpec, Tuning

__all__ = ["tuned_keys", "value_of", "TunePoint", "TuneJob", "tuning_jobs", "choose", "format_tuning", "score_of"]


def tuned_keys(spec: MethodSpec, config: RunConfig, tuning: Tuning) -> dict[str, tuple[float, ...]]:
    """Key -> factors searched for one method (a method's own ``tune`` entries replace the defaults)."""
    keys: dict[str, tuple[float, ...]] = {"lr": tuning.lr}
    if config.method == "rsa":
        keys["lam"] = tuning.lam
    if config.method == "cclip":
        keys["method.tau"] = tuning.tau
    for key, factors in spec.tune.items():
        keys[key] = tuple(factors)
    return {k: v for k, v in keys.items() if v and tuple(v) != (1.0,)}


def value_of(config: RunConfig, key: str) -> float:
    """The value of a key as :func:`~byzrsa.config.config_from_dict` names it (``lr``, ``method.tau``, ...)."""
    head, _, rest = key.partition(".")
    if not rest:
        return float(getattr(config, key))
    data = config.to_dict()
    if head == "pre":
        name, option = rest.split(".")
        return float(next(p for p in data["pre"] if p["name"] == name)[option])
    return float(data[head][rest])


@dataclass
class TunePoint:
    """One point of a method's tuning grid: its factors, values and the run key of every (attack, q, f, seed)."""

    factors: dict[str, float]
    values: dict[str, float]
    keys: list[tuple[str, str]] = field(default_factory=list)  # (scenario label "attack, q, f", run key)
    score: float | None = None
    worst: str | None = None


@dataclass
class TuneJob:
    """The tuning of one method at one level."""

    method: str
    level: str
    start: dict[str, float]
    points: list[TunePoint]
    chosen: TunePoint | None = None
    edge: list[str] = field(default_factory=list)


def tuning_jobs(
    grid: Grid,
    configs: Callable[[str, str, Mapping[str, float]], list[tuple[str, RunConfig]]],
    starts: Mapping[tuple[str, str], tuple[RunConfig, MethodSpec]],
    key_of: Callable[[RunConfig], str],
) -> tuple[list[TuneJob], dict[str, RunConfig]]:
    """Every tuning job and the runs they need (key -> config).

    ``configs(method, level, values)`` gives the tuning runs of one point as
    (label, config) pairs; ``starts[(method, level)]`` the method's resolved
    starting config and spec; ``key_of`` the run key of a config.
    """
    jobs: list[TuneJob] = []
    runs: dict[str, RunConfig] = {}
    for (method, level), (config, spec) in starts.items():
        keys = tuned_keys(spec, config, grid.tuning)
        start = {k: value_of(config, k) for k in keys}
        names = list(keys)
        if not names:  # nothing to tune: the start is the choice, and no run is needed
            jobs.append(TuneJob(method, level, start, [TunePoint({}, {})]))
            continue
        points = []
        for combo in itertools.product(*(keys[k] for k in names)):
            factors = dict(zip(names, combo))
            values = {k: start[k] * factors[k] for k in names}
            point = TunePoint(factors, values)
            for label, c in configs(method, level, values):
                key = key_of(c)
                point.keys.append((label, key))
                runs.setdefault(key, c)
            points.append(point)
        jobs.append(TuneJob(method, level, start, points))
    return jobs, runs


def score_of(accuracy: float | None) -> float:
    """A run's score: its validation accuracy; a diverged (non-finite) or missing run scores 0."""
    return accuracy if accuracy is not None and math.isfinite(accuracy) else 0.0


def choose(jobs: Sequence[TuneJob], accuracy: Callable[[str], float | None]) -> None:
    """Score every point (worst case over attacks of the mean over seeds) and set each job's ``chosen``."""
    for job in (j for j in jobs if j.points):
        if len(job.points) == 1 and not job.points[0].keys:
            job.chosen = job.points[0]
            continue
        for point in job.points:
            by_label: dict[str, list[float]] = {}
            for label, key in point.keys:
                by_label.setdefault(label, []).append(score_of(accuracy(key)))
            means = {label: sum(v) / len(v) for label, v in by_label.items()}
            point.worst = min(means, key=means.__getitem__) if means else None
            point.score = means[point.worst] if means else 0.0
        job.chosen = max(
            job.points, key=lambda p: (p.score, -sum(abs(math.log(f)) for f in p.factors.values()))
        )
        job.edge = [
            k for k in job.chosen.factors
            if len({p.factors[k] for p in job.points}) > 1
            and job.chosen.factors[k] in (min(p.factors[k] for p in job.points), max(p.factors[k] for p in job.points))
        ]


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items()) or "(nothing tuned)"


def format_tuning(jobs: Sequence[TuneJob], tuning: Tuning, untuned: bool) -> str:
    """The chosen values (and every point's score) as markdown."""
    if untuned:
        lines = ["Untuned: every method runs at its starting values (marked *untuned* in every table).", "",
                 "| method | level | values |", "|---|---|---|"]
        lines += [f"| {j.method} | {j.level} | {_fmt(j.start)} |" for j in jobs]
        return "\n".join(lines)
    lines = [
        f"Tuned on a validation split ({tuning.validation:g} of the training data, stratified, never the test set), "
        f"seeds {list(tuning.seeds)}; score = worst case over the grid's attacks of the mean final validation "
        "accuracy. Searched values are the starting value times each factor.",
        "",
        "| method | level | chosen | worst-case validation accuracy | worst attack | start | searched |",
        "|---|---|---|---|---|---|---|",
    ]
    for j in jobs:
        c = j.chosen
        edge = f" (edge of the grid: {', '.join(j.edge)})" if j.edge else ""
        searched = "; ".join(f"{k} x {sorted({round(p.factors[k], 4) for p in j.points})}" for k in j.start)
        score = f"{c.score:.4f}" if c is not None and c.score is not None else "n/a"
        lines.append(f"| {j.method} | {j.level} | {_fmt(c.values) if c else 'n/a'}{edge} | {score} | "
                     f"{c.worst if c else ''} | {_fmt(j.start)} | {searched or '-'} |")
    return "\n".join(lines)


def write_tuning(out: Path, jobs: Sequence[TuneJob], tuning: Tuning, untuned: bool) -> None:
    """``tuning.json`` (every point with its score and run keys) and ``tuning.md``."""
    data = {
        "untuned": untuned,
        "validation": tuning.validation,
        "seeds": list(tuning.seeds),
        "jobs": [
            {
                "method": j.method, "level": j.level, "start": j.start, "edge": j.edge,
                "chosen": None if j.chosen is None else {"values": j.chosen.values, "score": j.chosen.score,
                                                         "worst_attack": j.chosen.worst},
                "points": [{"factors": p.factors, "values": p.values, "score": p.score, "worst_attack": p.worst,
                            "runs": [{"scenario": label, "key": key} for label, key in p.keys]} for p in j.points],
            }
            for j in jobs
        ],
    }
    (out / "tuning.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "tuning.md").write_text(format_tuning(jobs, tuning, untuned) + "\n")
