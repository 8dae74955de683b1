"""Fair tuning for the benchmark: per method and heterogeneity level, the best worst case on a validation split.

For every method and level of a :class:`~byzrsa.experiments.bench.presets.Grid`
the tuned keys (``lr`` always, ``lam`` for RSA, ``method.tau`` for centered
clipping, or the method's own list) take every combination of
``start * factor``. Each point runs under every attack, q and declared f of
the grid, with the tuning seeds, on the training data minus a stratified
validation fraction (``RunConfig.validation``: the run is scored on the held-out
samples, and its data holds no test sample at all). A point's score is its
worst case over the attacks (and q, f) of the mean validation accuracy over the
seeds; the best score wins. A worst case no better than chance (a constant
predictor's 1/classes) counts as chance: where a well-learning setting is pushed
below chance by one attack (label-flip on one-class workers) and a setting
that learns nothing scores chance everywhere, both are useless in the worst
case, and the tie goes to the larger mean over the attacks, then to the point
nearest the start (the smallest sum of |log factor|). Without this rule the
tuner picks a setting that learns nothing. The test set is read only by the
grid's runs.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from byzrsa.config import RunConfig
from byzrsa.experiments.bench.grid import Grid, MethodSpec, Tuning

__all__ = ["tuned_keys", "value_of", "TunePoint", "TuneJob", "tuning_jobs", "choose", "extend", "settle", "chosen_values",
           "format_tuning", "score_of"]


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
    mean: float | None = None  # mean over the scenarios: the tie-break when worst cases tie at chance


@dataclass
class TuneJob:
    """The tuning of one method at one level: the factors searched per key (extended past an edge), the points."""

    method: str
    level: str
    start: dict[str, float]
    points: list[TunePoint]
    chosen: TunePoint | None = None
    edge: list[str] = field(default_factory=list)
    factors: dict[str, list[float]] = field(default_factory=dict)
    extended: dict[str, int] = field(default_factory=dict)  # key -> times its range was extended
    chance: float = 0.0  # a constant predictor's accuracy, 1 / classes: worst cases below it tie


Configs = Callable[[str, str, Mapping[str, float]], list[tuple[str, RunConfig]]]


def _add_points(job: TuneJob, configs: Configs, key_of: Callable[[RunConfig], str],
                runs: dict[str, RunConfig]) -> list[str]:
    """Add every combination of ``job.factors`` not yet a point; return the run keys of the new points."""
    names = list(job.factors)
    have = {tuple(p.factors[k] for k in names) for p in job.points}
    new_keys = []
    for combo in itertools.product(*(job.factors[k] for k in names)):
        if combo in have:
            continue
        factors = dict(zip(names, combo))
        point = TunePoint(factors, {k: job.start[k] * factors[k] for k in names})
        for label, c in configs(job.method, job.level, point.values):
            key = key_of(c)
            point.keys.append((label, key))
            if key not in runs:
                runs[key] = c
                new_keys.append(key)
        job.points.append(point)
    return new_keys


def tuning_jobs(
    grid: Grid,
    configs: Configs,
    starts: Mapping[tuple[str, str], tuple[RunConfig, MethodSpec]],
    key_of: Callable[[RunConfig], str],
) -> tuple[list[TuneJob], dict[str, RunConfig]]:
    """Every (method, level) tuning job and the runs they need (key -> config).

    ``configs(method, level, values)`` gives the tuning runs of one point as
    (label, config) pairs; ``starts[(method, level)]`` the method's resolved
    starting config and spec; ``key_of`` the run key of a config.
    """
    jobs: list[TuneJob] = []
    runs: dict[str, RunConfig] = {}
    for (method, level), (config, spec) in starts.items():
        keys = tuned_keys(spec, config, grid.tuning)
        start = {k: value_of(config, k) for k in keys}
        if not keys:  # nothing to tune: the start is the choice, and no run is needed
            jobs.append(TuneJob(method, level, start, [TunePoint({}, {})]))
            continue
        job = TuneJob(method, level, start, [], factors={k: sorted(set(v)) for k, v in keys.items()},
                      extended={k: 0 for k in keys})
        _add_points(job, configs, key_of, runs)
        jobs.append(job)
    return jobs, runs


def extend(jobs: Sequence[TuneJob], limit: int, configs: Configs, key_of: Callable[[RunConfig], str],
           runs: dict[str, RunConfig]) -> list[str]:
    """Walk each chosen value that sits at an edge one step further out; return the new run keys.

    For a key whose chosen factor is the largest searched, the factor
    ``largest * (largest / second largest)`` is added (the smallest likewise
    downwards), crossed with every searched value of the other keys (RSA's
    lr and lambda stay a joint grid), at most ``limit`` times per key. Call
    after :func:`choose`; the new points need their runs, then ``choose`` again.
    """
    new: list[str] = []
    for job in jobs:
        if job.chosen is None:
            continue
        grew = False
        for key in job.edge:
            if job.extended.get(key, 0) >= limit:
                continue
            factors = job.factors[key]
            value = job.chosen.factors[key]
            step = factors[-1] / factors[-2] if value == factors[-1] else factors[0] / factors[1]
            factors.insert(len(factors) if value == factors[-1] else 0, value * step)
            job.extended[key] = job.extended.get(key, 0) + 1
            grew = True
        if grew:
            new += _add_points(job, configs, key_of, runs)
    return new


def settle(jobs: Sequence[TuneJob], limit: int, configs: Configs, key_of: Callable[[RunConfig], str],
           runs: dict[str, RunConfig], done: Callable[[str], bool],
           accuracy: Callable[[str], float | None], chance: float = 0.0) -> dict[str, RunConfig]:
    """Choose and extend for as long as every tuning run is ``done``; return the runs still to do.

    Deterministic in the finished runs' scores, so a resumed bench recomputes the
    same extensions; an empty result means tuning is over (every ``chosen`` set).
    """
    while True:
        pending = {k: c for k, c in runs.items() if not done(k)}
        if pending:
            return pending
        choose(jobs, accuracy, chance)
        if not extend(jobs, limit, configs, key_of, runs):
            return {}


#: a worst case within this of chance is chance (a mean over seeds of 0.1 comes out as 0.10000000000000002)
CHANCE_TOLERANCE = 1e-9


def _at_chance(score: float, chance: float) -> bool:
    """A worst case no better than chance: learning nothing and being pushed below chance are alike useless."""
    return score <= chance + CHANCE_TOLERANCE


def score_of(accuracy: float | None) -> float:
    """A run's score: its validation accuracy; a diverged (non-finite) or missing run scores 0."""
    return accuracy if accuracy is not None and math.isfinite(accuracy) else 0.0


def choose(jobs: Sequence[TuneJob], accuracy: Callable[[str], float | None], chance: float = 0.0) -> None:
    """Score every point (worst case over attacks of the mean over seeds) and set each job's ``chosen``.

    The ranking is (worst case, floored at ``chance``; mean over the attacks;
    nearness to the start). ``edge`` lists the keys whose chosen factor is the
    smallest or largest searched.
    """
    for job in (j for j in jobs if j.points):
        job.chance = chance
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
            point.mean = sum(means.values()) / len(means) if means else 0.0
        job.chosen = max(job.points, key=lambda p: (chance if _at_chance(p.score, chance) else p.score, p.mean,
                                                    -sum(abs(math.log(f)) for f in p.factors.values())))
        job.edge = [k for k, fs in job.factors.items() if len(fs) > 1 and job.chosen.factors[k] in (fs[0], fs[-1])]


def chosen_values(jobs: Sequence[TuneJob], untuned: bool) -> dict[tuple[str, str], dict[str, float]]:
    """(method, level) -> the values its grid runs use (tuned, or the starting values when untuned)."""
    return {(j.method, j.level): dict(j.start if untuned or j.chosen is None else j.chosen.values) for j in jobs}


def _fmt(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items()) or "(nothing tuned)"


def _searched(job: TuneJob, key: str) -> str:
    """The final range of one key: start x every factor searched, and how often it was extended."""
    factors = job.factors.get(key) or sorted({p.factors[key] for p in job.points})
    times = job.extended.get(key, 0)
    return (f"{key} {job.start[key]:.4g} x [{', '.join(f'{f:.4g}' for f in factors)}]"
            + (f" (extended {times}x)" if times else ""))


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
        "accuracy. Searched values are the starting value times each factor; a range whose chosen value lay at an "
        f"edge was extended past it by the same factor, up to {tuning.extensions} time(s) per key (the final "
        "range is shown). A worst case at or below chance (1 / classes) ties with chance, and ties go to the "
        "larger mean over the attacks.",
        "",
        "| method | level | chosen | worst-case validation accuracy | worst attack | start | searched |",
        "|---|---|---|---|---|---|---|",
    ]
    for j in jobs:
        c = j.chosen
        edge = (f" (still at the edge of the range after {tuning.extensions} extension(s): {', '.join(j.edge)})"
                if j.edge else "")
        if c is not None and c.keys and c.score is not None and j.chance and _at_chance(c.score, j.chance):
            edge += (f" (no point beats chance, {j.chance:.3g}, in the worst case: chosen by its mean over the "
                     f"attacks, {c.mean:.4f})")
        searched = "; ".join(_searched(j, k) for k in j.start)
        score = f"{c.score:.4f}" if c is not None and c.score is not None else "n/a"
        lines.append(f"| {j.method} | {j.level} | {_fmt(c.values) if c else 'n/a'}{edge} | {score} | "
                     f"{(c.worst if c else None) or '-'} | {_fmt(j.start)} | {searched or '-'} |")
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
                "factors": j.factors, "extended": j.extended,
                "chance": j.chance,
                "chosen": None if j.chosen is None else {"values": j.chosen.values, "score": j.chosen.score,
                                                         "worst_attack": j.chosen.worst, "mean": j.chosen.mean},
                "points": [{"factors": p.factors, "values": p.values, "score": p.score, "worst_attack": p.worst,
                            "mean": p.mean,
                            "runs": [{"scenario": label, "key": key} for label, key in p.keys]} for p in j.points],
            }
            for j in jobs
        ],
    }
    (out / "tuning.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "tuning.md").write_text(format_tuning(jobs, tuning, untuned) + "\n")
