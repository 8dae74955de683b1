"""``byzrsa bench``: the robustness table of RSA against today's defences and attacks.

A grid (:mod:`~byzrsa.experiments.bench.presets`) becomes run configs in two
phases. Tuning (:mod:`~byzrsa.experiments.bench.tune`): per method and level,
the step size (lambda for RSA, tau for centered clipping) with the best worst
case over the grid's attacks on a validation split of the training data. The
grid: every (level, q, f, method, attack, seed) cell at the chosen values,
scored on the test set. Both phases go through
:func:`byzrsa.experiments.paper.execute` (each distinct config runs once, in
parallel processes, finished runs are kept, one progress bar with an ETA), so
an interrupted bench resumes where it stopped. Then
:mod:`~byzrsa.experiments.bench.report` writes heatmaps, the ranking table,
``cells.json``/``cells.csv`` and ``report.md``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzrsa.config import RunConfig, config_from_dict
from byzrsa.engines.common import validate
from byzrsa.errors import ConfigError
from byzrsa.experiments.bench.cost import estimate, minutes
from byzrsa.experiments.bench.grid import Grid, Level, MethodSpec, resolve_f
from byzrsa.experiments.bench.stats import final_accuracy
from byzrsa.folders import exclusive
from byzrsa.experiments.bench import tune as bench_tune
from byzrsa.experiments.bench.tune import TuneJob, settle, tuned_keys, tuning_jobs, value_of, write_tuning
from byzrsa.experiments.paper.plan import canonical, run_key

__all__ = ["Scenario", "Cell", "BenchPlan", "plan_bench", "plan_grid", "chosen_values", "bench", "apply_overrides"]


@dataclass(frozen=True)
class Scenario:
    """One (heterogeneity level, q, declared f): one heatmap and one ranking table."""

    level: str
    q: int
    f: int

    @property
    def label(self) -> str:
        return f"{self.level}, q={self.q}, f={self.f}"

    @property
    def slug(self) -> str:
        name = "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in self.level.lower())
        return f"{name}-q{self.q}-f{self.f}"


@dataclass
class Cell:
    """One cell of a heatmap: a method under an attack in a scenario, one run key per seed."""

    scenario: Scenario
    method: str
    attack: str
    keys: dict[int, str] = field(default_factory=dict)
    na: str | None = None  # why the cell cannot run (an impossible config), else None


@dataclass
class BenchPlan:
    grid: Grid
    scenarios: list[Scenario]
    tune_jobs: list[TuneJob]
    tune_runs: dict[str, RunConfig]
    untuned: bool
    cells: list[Cell] = field(default_factory=list)
    runs: dict[str, RunConfig] = field(default_factory=dict)
    #: (method, level, values) -> the tuning runs of that point: how extensions past an edge get their runs
    tune_configs: Any = None
    chance: float | None = None  # 1 / classes of the grid's dataset, read once when tuning first chooses

    def settle_tuning(self, done: Callable[[str], bool], accuracy: Callable[[str], float | None]
                      ) -> dict[str, RunConfig]:
        """Choose, and extend ranges past an edge, while every tuning run is done; return the tuning runs to do."""
        if self.untuned:
            return {}
        if self.chance is None and self.tune_runs:
            self.chance = 1.0 / _classes(next(iter(self.tune_runs.values())))
        return settle(self.tune_jobs, self.grid.tuning.extensions, self.tune_configs, run_key, self.tune_runs, done,
                      accuracy, self.chance or 0.0)


def _classes(config: RunConfig) -> int:
    """The number of classes of a run's dataset (loaded here: a synthetic one has no fixed count)."""
    from byzrsa.data import load_dataset

    return load_dataset(config.dataset, pixels=config.pixels, data_dir=config.data_dir, seed=config.seed,
                        workers=config.workers, heterogeneity=config.heterogeneity, quiet=True).num_classes


def apply_overrides(grid: Grid, *, dataset: str | None = None, data_dir: str | None = None, model: str | None = None,
                    iterations: int | None = None, seeds: int | Sequence[int] | None = None,
                    settings: Mapping[str, Any] | None = None) -> Grid:
    """The grid with the command line's changes: base settings, and ``seeds`` as a count or a list."""
    base = dict(grid.base)
    for key, value in (("dataset", dataset), ("data_dir", data_dir), ("model", model)):
        if value is not None:
            base[key] = value
    if iterations is not None:
        base["iterations"] = iterations
        base["eval_every"] = max(1, min(int(base.get("eval_every", 100)), iterations // 10 or 1))
    base.update(settings or {})
    changes: dict[str, Any] = {"base": base}
    if seeds is not None:
        changes["seeds"] = tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds)
        if not changes["seeds"]:
            raise ConfigError("--seeds must be at least 1")
    return grid.with_changes(**changes)


def _settings(grid: Grid, level: Level, method: MethodSpec, attack: Mapping[str, Any], q: int, f: int, seed: int,
              values: Mapping[str, float]) -> dict[str, Any]:
    settings = {**grid.base, **level.settings, **method.settings, **attack, **values}
    settings.update(byzantine=q, agg_f=None if f == q else f, seed=seed)
    return settings


def _config(settings: Mapping[str, Any]) -> RunConfig:
    """The canonical config of ``settings``, checked against the registries (a ConfigError if impossible)."""
    config = validate(canonical(config_from_dict(settings)))
    return _normalise_f(config)


def _normalise_f(config: RunConfig) -> RunConfig:
    """Drop a declared f nothing reads, so cells that differ only in it share one run."""
    from byzrsa.attacks import ATTACKS
    from byzrsa.methods import get_method

    if config.agg_f is None:
        return config
    method = get_method(config.method)
    from byzrsa.aggregators import RULES

    reads_f = (method.rule is not None and RULES[method.rule].needs_f and not method.regular_only) or bool(config.pre)
    if reads_f or getattr(ATTACKS[config.attack], "needs_defence", False):
        return config
    return config.replace(agg_f=None)


def _attacks(grid: Grid, q: int) -> list[tuple[str, dict[str, Any] | None]]:
    """(label, settings) of each attack column; settings None when the column cannot run (q = 0)."""
    out = []
    for attack in grid.attacks:
        name = attack.settings.get("attack")
        name = name.get("name") if isinstance(name, Mapping) else name
        out.append((attack.label, dict(attack.settings) if q > 0 or name == "none" else None))
    return out


def plan_bench(grid: Grid, *, untuned: bool = False) -> BenchPlan:
    """The scenarios and the tuning phase of ``grid`` (the grid's own runs follow from :func:`plan_grid`)."""
    if len({m.label for m in grid.methods}) != len(grid.methods):
        raise ConfigError("grid: two methods share a label; give each a distinct label")
    if len({a.label for a in grid.attacks}) != len(grid.attacks):
        raise ConfigError("grid: two attacks share a label; give each a distinct label")
    scenarios = []
    for level in grid.levels:
        for q in grid.byzantine:
            for f in dict.fromkeys(resolve_f(f, q) for f in grid.declared_f):
                scenarios.append(Scenario(level.label, q, f))
    levels = {lv.label: lv for lv in grid.levels}
    methods = {m.label: m for m in grid.methods}
    starts: dict[tuple[str, str], tuple[RunConfig, MethodSpec]] = {}
    for level in grid.levels:
        for spec in grid.methods:
            first = scenarios[0]
            try:
                config = _config(_settings(grid, level, spec, {"attack": "none"}, first.q, first.f, grid.seeds[0], {}))
            except ConfigError as exc:
                raise ConfigError(f"grid: method {spec.label!r} at level {level.label!r}: {exc}") from None
            starts[(spec.label, level.label)] = (config, spec)
    tuning = grid.tuning

    def configs(method: str, level: str, values: Mapping[str, float]) -> list[tuple[str, RunConfig]]:
        out = []
        extra: dict[str, Any] = {"validation": tuning.validation, **values}
        if tuning.iterations is not None:
            extra["iterations"] = tuning.iterations
        for scenario in (s for s in scenarios if s.level == level):
            for label, attack in _attacks(grid, scenario.q):
                if attack is None:
                    continue
                for seed in tuning.seeds:
                    try:
                        c = _config(_settings(grid, levels[level], methods[method], attack, scenario.q, scenario.f,
                                              seed, extra))
                    except ConfigError:
                        continue  # a cell that cannot run is not part of the worst case
                    out.append((f"{label}, q={scenario.q}, f={scenario.f}", c))
        return out

    if untuned:
        jobs = [TuneJob(m, lv, {}, []) for (m, lv) in starts]

        for job in jobs:
            config, spec = starts[(job.method, job.level)]
            job.start = {k: value_of(config, k) for k in tuned_keys(spec, config, tuning)}
        return BenchPlan(grid, scenarios, jobs, {}, True)
    jobs, runs = tuning_jobs(grid, configs, starts, run_key)
    return BenchPlan(grid, scenarios, jobs, runs, False, tune_configs=configs)


def chosen_values(plan: BenchPlan) -> dict[tuple[str, str], dict[str, float]]:
    """(method, level) -> the values its grid runs use (tuned, or the starting values when untuned)."""
    return bench_tune.chosen_values(plan.tune_jobs, plan.untuned)


def plan_grid(plan: BenchPlan) -> None:
    """Fill ``plan.cells`` and ``plan.runs`` with the grid's runs at the chosen values."""
    grid = plan.grid
    values = chosen_values(plan)
    levels = {lv.label: lv for lv in grid.levels}
    plan.cells, plan.runs = [], {}
    for scenario in plan.scenarios:
        for spec in grid.methods:
            for label, attack in _attacks(grid, scenario.q):
                cell = Cell(scenario, spec.label, label)
                plan.cells.append(cell)
                if attack is None:
                    cell.na = "no Byzantine worker (q = 0)"
                    continue
                for seed in grid.seeds:
                    settings = _settings(grid, levels[scenario.level], spec, attack, scenario.q, scenario.f, seed,
                                         values[(spec.label, scenario.level)])
                    try:
                        config = _config(settings)
                    except ConfigError as exc:
                        cell.na, cell.keys = str(exc), {}
                        break
                    key = run_key(config)
                    cell.keys[seed] = key
                    plan.runs.setdefault(key, config)


# --------------------------------------------------------------------------- the command


def _locked(out: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``out/.bench.lock`` for the whole bench (paper.execute locks each phase on its own)."""
    return exclusive(out, ".bench.lock", "byzrsa bench")


def _assign(runs: Mapping[str, RunConfig], devices: Sequence[str] | None) -> dict[str, RunConfig]:
    """Spread runs over ``devices`` round-robin (the run keys stay those of the unassigned configs)."""
    if not devices:
        return dict(runs)
    return {key: c.replace(device=devices[i % len(devices)]) for i, (key, c) in enumerate(sorted(runs.items()))}


def bench(grid: Grid, *, out: str | Path, dry_run: bool = False, **options: Any) -> dict[str, Any]:
    """Tune, run and report ``grid`` into ``out``; return a summary (``dry_run``: the plan and estimate only).

    Options: ``jobs``, ``untuned``, ``curves``, ``devices``, ``calibrate``,
    ``quiet`` (see :func:`_bench`). A second bench on the same ``out`` is
    refused before it does anything, its calibration and plan included.
    """
    if dry_run:
        return _bench(grid, out=out, dry_run=True, **options)
    with _locked(Path(out)):
        return _bench(grid, out=out, **options)


def _bench(
    grid: Grid,
    *,
    out: str | Path,
    jobs: int | None = None,
    untuned: bool = False,
    dry_run: bool = False,
    curves: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    calibrate: bool = True,
    quiet: bool = False,
) -> dict[str, Any]:
    import os

    from byzrsa.experiments.bench import report as bench_report
    from byzrsa.experiments.paper import execute, is_done

    out = Path(out)
    say = (lambda *a: None) if quiet and not dry_run else (lambda text: print(text, file=sys.stderr))
    jobs = max(1, jobs or os.cpu_count() or 1)
    started = time.perf_counter()
    load_at_start = _load()
    plan = plan_bench(grid, untuned=untuned)
    failures: dict[str, str] = {}

    def done(key: str) -> bool:
        return key in failures or is_done(out, key)  # a failed tuning run scores 0; it is not retried in this call

    def accuracy(key: str) -> float | None:
        return final_accuracy(out, key)

    tune_pending = plan.settle_tuning(done, accuracy)
    tune_done = not tune_pending
    plan_grid(plan)  # at the starting values until tuning is done: counts (and keys, when tuned or untuned)
    grid_pending = {k: c for k, c in plan.runs.items() if not is_done(out, k)} if tune_done else dict(plan.runs)
    costs = estimate({**tune_pending, **grid_pending}, calibrate=calibrate)
    seconds = sum(costs.values()) / jobs
    n_cells = sum(len(c.keys) for c in plan.cells)
    na = sum(1 for c in plan.cells if c.na)
    say(f"bench {grid.name}: {len(plan.scenarios)} scenario(s) x {len(grid.methods)} methods x "
        f"{len(grid.attacks)} attacks x {len(grid.seeds)} seeds = {n_cells} cell runs ({na} cells not applicable), "
        f"{len(plan.runs)} distinct; tuning: {len(plan.tune_runs)} runs" + (" (untuned)" if untuned else ""))
    say(f"to do: {len(tune_pending)} tuning + {len(grid_pending)} grid runs, "
        f"{sum(c.iterations for c in {**tune_pending, **grid_pending}.values())} iterations; estimated "
        f"{minutes(seconds)} on {jobs} process{'es' if jobs > 1 else ''}"
        + ("" if calibrate else " (uncalibrated guess)")
        + ("" if untuned else "; more tuning runs follow if a chosen value lies at the edge of its range"))
    result: dict[str, Any] = {"grid": grid.name, "cells": n_cells, "runs": len(plan.runs),
                              "tuning_runs": len(plan.tune_runs), "estimated_seconds": seconds,
                              "pending": len(tune_pending) + len(grid_pending)}
    if dry_run:
        from byzrsa.experiments.bench.grid import describe_grid

        print(describe_grid(grid))
        for cell in plan.cells:
            if cell.na:
                print(f"  not applicable: {cell.scenario.label} / {cell.method} / {cell.attack}: {cell.na}")
        return result
    with _locked(out):
        round_ = 0
        while tune_pending:
            round_ += 1
            say("phase 1/2, tuning" + (f" (round {round_}: ranges extended past an edge)" if round_ > 1 else "")
                + f": {len(tune_pending)} runs on the validation split")
            failed, _ = execute(_assign(tune_pending, devices), out, jobs=jobs, quiet=quiet)
            failures.update(failed)
            tune_pending = plan.settle_tuning(done, accuracy)
        tune_seconds = time.perf_counter() - started
        write_tuning(out, plan.tune_jobs, grid.tuning, untuned)
        plan_grid(plan)
        pending = {k: c for k, c in plan.runs.items() if not is_done(out, k)}
        if pending:
            say(f"phase 2/2, the grid: {len(pending)} runs")
            failed, _ = execute(_assign(pending, devices), out, jobs=jobs, quiet=quiet)
            failures.update(failed)
        run_seconds = time.perf_counter() - started
        timing = {"tuning_seconds": tune_seconds, "run_seconds": run_seconds, "estimated_seconds": seconds,
                  "jobs": jobs, "load_average_start": load_at_start, "load_average": _load()}
        path = bench_report.write_report(out, plan, failures=failures, timing=timing, curves=curves)
    result.update(report=str(path), tuning_runs=len(plan.tune_runs), failures=failures, total_seconds=time.perf_counter() - started, **timing)
    return result


def _load() -> list[float] | None:
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover
        return None

