"""The benchmark's numbers: each cell's final accuracies over seeds, their mean and 95% interval, and verdicts.

Final accuracy of a run = mean test accuracy over the last 10% of its
iterations (:func:`byzrsa.experiments.claims.final_values`); a run whose
accuracy is not finite (it diverged) counts as 0. A cell's interval is the
two-sided 95% Student-t interval over its seeds, ``mean +- t(0.975, n - 1) s /
sqrt(n)`` (``s`` the sample standard deviation); with one seed there is no
interval (``ci`` is inf) and the report decides no tie or loss from it
(``bench_report._intervals``). Following PROTOCOL.md, one method
beats another only when their intervals do not overlap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["t_quantile", "Stat", "summarise", "CellResult", "final_accuracy", "beats", "overlaps", "collect"]

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
    from byzrsa.experiments.claims import final_values
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


def collect(out: Path, cells: Sequence[Any], oracles: Sequence[str] = ()) -> list[CellResult]:
    """Read every cell's runs back and mark each method's worst attack per scenario (not the ``oracles``'s)."""
    results = []
    for cell in cells:
        per_seed, diverged, missing = {}, [], []
        for seed, key in cell.keys.items():
            acc = final_accuracy(out, key)
            if acc is None:
                missing.append(seed)
            elif not math.isfinite(acc):
                per_seed[seed] = 0.0
                diverged.append(seed)
            else:
                per_seed[seed] = acc
        results.append(CellResult(cell.scenario, cell.method, cell.attack, dict(cell.keys),
                                  summarise(list(per_seed.values())), per_seed, diverged, missing, cell.na))
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
