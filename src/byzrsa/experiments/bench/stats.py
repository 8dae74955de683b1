"""The benchmark's numbers: each cell's final accuracies over seeds, their mean and 95% interval, and verdicts.

Final accuracy of a run = mean test accuracy over the last 10% of its
iterations (:func:`byzrsa.experiments.paper.claims.final_values`); a run whose
accuracy is not finite (it diverged) counts as 0. A cell's interval is the
two-sided 95% Student-t interval over its seeds, ``mean +- t(0.975, n - 1) s /
sqrt(n)`` (``s`` the sample standard deviation); with one seed there is no
interval (``ci`` is inf).

Comparisons are paired (:func:`compare`): seed s gives every method the same
data split, batches, Byzantine draws and tuning split, so two cells are compared
through the per-seed differences ``d_s = a_s - b_s`` over their common seeds:
``a`` is below ``b`` when the two-sided 95% Student-t interval of the mean
difference, ``mean(d) +- t(0.975, n - 1) sd(d) / sqrt(n)``, lies below 0,
above when it lies above 0, tied when it holds 0; with fewer than two common
seeds there is no interval and nothing is decided.

Convergence (:func:`convergence`): a run's drift is its final accuracy (the
mean over evaluations at iterations >= 0.9 T) minus the mean over its
evaluations at iterations in [0.7 T, 0.8 T] (the 10% window that ends where
the last 20% of the iterations begin; the last evaluation at or before 0.8 T
if none falls in it). A cell's drift is the mean of its seeds' drifts; the cell
has converged when ``|drift| <= max(spread, 0.01)``, ``spread`` being the
sample standard deviation over seeds of the final accuracies (0 with one
seed): the last fifth of the run moved the mean accuracy by no more than the
seeds disagree, or than one point of accuracy. A non-converged cell gets no
win, tie or loss: its verdicts read "not converged".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["t_quantile", "Stat", "summarise", "CellResult", "final_accuracy", "beats", "overlaps", "collect",
           "drift_of", "convergence", "paired_difference", "compare", "CONVERGENCE_FLOOR"]

#: the smallest change of accuracy over the last 20% of the iterations that counts as "still moving"
CONVERGENCE_FLOOR = 0.01

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (scipy's, or a table)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass
class Stat:
    values: list[float]
    mean: float
    std: float
    ci: float  # half-width of the 95% interval; inf with fewer than two values

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def low(self) -> float:
        return self.mean - self.ci

    @property
    def high(self) -> float:
        return self.mean + self.ci

    def text(self, digits: int = 3) -> str:
        if not self.values:
            return "n/a"
        if not math.isfinite(self.ci):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.ci:.{digits}f}"


def summarise(values: Sequence[float]) -> Stat:
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return Stat([], math.nan, math.nan, math.nan)
    mean = sum(values) / n
    if n == 1:
        return Stat(values, mean, math.nan, math.inf)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Stat(values, mean, std, t_quantile(n - 1) * std / math.sqrt(n))


def overlaps(a: Stat, b: Stat) -> bool:
    return not (a.high < b.low or b.high < a.low)


def beats(a: Stat, b: Stat) -> bool:
    """``a`` is better than ``b``: its interval lies entirely above ``b``'s."""
    return a.n > 0 and b.n > 0 and a.low > b.high


_CACHE: dict[tuple[str, str], tuple[float, list[dict[str, float]]] | None] = {}


def _read(out: Path, key: str) -> tuple[float, list[dict[str, float]]] | None:
    from byzrsa.experiments.paper.claims import final_values
    from byzrsa.experiments.paper import is_done, run_folder
    from byzrsa.experiments.runner import read_metrics

    if not is_done(out, key):
        return None
    cache_key = (str(out.resolve()), key)
    if cache_key in _CACHE:
        return _CACHE[cache_key]
    try:
        rows = read_metrics(run_folder(out, key))
    except (OSError, ValueError, KeyError):
        return None
    value = (final_values(rows)["accuracy"], rows)
    _CACHE[cache_key] = value
    return value


def final_accuracy(out: str | Path, key: str) -> float | None:
    """The final accuracy of the finished run ``key`` in ``out`` (None when it is not there)."""
    got = _read(Path(out), key)
    return None if got is None else got[0]


def run_rows(out: str | Path, key: str) -> list[dict[str, float]] | None:
    got = _read(Path(out), key)
    return None if got is None else got[1]


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def drift_of(rows: Sequence[Mapping[str, float]]) -> float | None:
    """Final accuracy minus the mean accuracy over iterations [0.7 T, 0.8 T] (non-finite as 0); None if unknown."""
    if not rows:
        return None
    end = rows[-1]["iteration"]
    final = [_finite(r["accuracy"]) for r in rows if r["iteration"] >= 0.9 * end and r["iteration"] > 0]
    earlier = [_finite(r["accuracy"]) for r in rows if 0.7 * end <= r["iteration"] <= 0.8 * end]
    if not earlier:
        before = [r for r in rows if r["iteration"] <= 0.8 * end]
        if not before or before[-1]["iteration"] <= 0:
            return None
        earlier = [_finite(before[-1]["accuracy"])]
    if not final:
        return None
    return sum(final) / len(final) - sum(earlier) / len(earlier)


def convergence(drifts: Sequence[float], finals: Sequence[float]) -> tuple[float | None, bool | None]:
    """(cell drift, converged) from each seed's drift and final accuracy (see the module docstring)."""
    if not drifts:
        return None, None
    drift = sum(drifts) / len(drifts)
    spread = summarise(finals).std if len(finals) > 1 else 0.0
    return drift, abs(drift) <= max(spread, CONVERGENCE_FLOOR)


@dataclass
class CellResult:
    """A cell's numbers: final accuracy per seed (diverged runs as 0), their summary, and which seeds are missing."""

    scenario: Any
    method: str
    attack: str
    keys: dict[int, str]
    stat: Stat
    per_seed: dict[int, float]
    diverged: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    na: str | None = None
    worst: bool = False  # the method's worst attack in its scenario
    drift: float | None = None  # change of the mean accuracy over the last 20% of the iterations
    converged: bool | None = None  # None: unknown (too few evaluations)


def paired_difference(a: CellResult, b: CellResult) -> Stat | None:
    """Mean and 95% t interval of ``a_s - b_s`` over the seeds both cells have; None without a common seed."""
    seeds = sorted(set(a.per_seed) & set(b.per_seed))
    if not seeds:
        return None
    return summarise([a.per_seed[s] - b.per_seed[s] for s in seeds])


def compare(a: CellResult, b: CellResult) -> str:
    """``a`` against ``b``: "not converged", "no interval" (< 2 common seeds), "below", "above" or "tie"."""
    if a.converged is False or b.converged is False:
        return "not converged"
    d = paired_difference(a, b)
    if d is None or not math.isfinite(d.ci):
        return "no interval"
    if d.high < 0:
        return "below"
    if d.low > 0:
        return "above"
    return "tie"


def collect(out: Path, cells: Sequence[Any], oracles: Sequence[str] = ()) -> list[CellResult]:
    """Read every cell's runs back and mark each method's worst attack per scenario (not the ``oracles``'s)."""
    results = []
    for cell in cells:
        per_seed, diverged, missing, drifts = {}, [], [], []
        for seed, key in cell.keys.items():
            acc = final_accuracy(out, key)
            if acc is None:
                missing.append(seed)
                continue
            if not math.isfinite(acc):
                per_seed[seed] = 0.0
                diverged.append(seed)
            else:
                per_seed[seed] = acc
            d = drift_of(run_rows(out, key) or [])
            if d is not None:
                drifts.append(d)
        drift, converged = convergence(drifts, list(per_seed.values()))
        results.append(CellResult(cell.scenario, cell.method, cell.attack, dict(cell.keys),
                                  summarise(list(per_seed.values())), per_seed, diverged, missing, cell.na,
                                  drift=drift, converged=converged))
    groups: dict[tuple[Any, str], list[CellResult]] = {}
    for r in results:
        if r.stat.n and r.method not in oracles:
            groups.setdefault((r.scenario, r.method), []).append(r)
    for group in groups.values():
        min(group, key=lambda r: r.stat.mean).worst = True
    return results


def by_scenario(results: Sequence[CellResult]) -> Mapping[Any, list[CellResult]]:
    out: dict[Any, list[CellResult]] = {}
    for r in results:
        out.setdefault(r.scenario, []).append(r)
    return out
