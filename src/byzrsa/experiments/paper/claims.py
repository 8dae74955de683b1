"""Claim verdicts of a reproduction, computed by code from the runs' final values."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byzrsa.experiments.paper.plan import Plan, figure_configs, run_key
from byzrsa.experiments.paper.presets import FIGURES, Claim

__all__ = ["lambda_of", "read_run", "FINAL_WINDOW", "Result", "Verdict", "final_values", "load_results", "check_claim"]

#: Fraction of the run whose evaluations are averaged into the final accuracy.
FINAL_WINDOW = 0.1

@dataclass
class Result:
    """One line of a figure, read back from its run folder."""

    label: str
    key: str
    rows: list[dict[str, float]]
    summary: dict[str, Any]
    config: dict[str, Any]

    @property
    def final(self) -> dict[str, float]:
        return final_values(self.rows)


@dataclass
class Verdict:
    """The outcome of one claim: held (True/False) or not checkable (None), and the numbers behind it."""

    claim: Claim
    held: bool | None
    numbers: str

    @property
    def word(self) -> str:
        return {True: "held", False: "did not hold", None: "not checked"}[self.held]


def final_values(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Final accuracy (mean over the last 10% of iterations), training time and variance of a run's rows."""
    if not rows:
        return {"accuracy": math.nan, "time": math.nan, "variance": math.nan, "last_accuracy": math.nan}
    last = rows[-1]
    start = last["iteration"] * (1.0 - FINAL_WINDOW)
    window = [r["accuracy"] for r in rows if r["iteration"] >= start and r["iteration"] > 0] or [last["accuracy"]]
    return {
        "accuracy": sum(window) / len(window),
        "time": last["time"],
        "variance": last.get("variance", math.nan),
        "last_accuracy": last["accuracy"],
        "best_accuracy": max(r["accuracy"] for r in rows),
    }


def read_run(folder: Path) -> tuple[list[dict[str, float]], dict[str, Any], dict[str, Any]] | None:
    from byzrsa.experiments.runner import read_metrics

    if not (folder / "summary.json").exists():
        return None
    return (
        read_metrics(folder),
        json.loads((folder / "summary.json").read_text()),
        json.loads((folder / "config.json").read_text()),
    )


def load_results(out: Path, plan: Plan) -> dict[str, dict[str, Result]]:
    """figure -> label -> :class:`Result` for every finished run of the plan (missing runs are left out).

    Figures referenced by a claim (``fig4a:Krum``) but not in the plan are
    loaded too when their runs exist in ``out`` with the same settings.
    """
    wanted = list(plan.figures)
    for name in plan.figures:
        for claim in FIGURES[name].claims:
            for ref in claim.right:
                if ":" in ref and ref.split(":")[0] not in wanted:
                    wanted.append(ref.split(":")[0])
    results: dict[str, dict[str, Result]] = {}
    for name in wanted:
        keys = plan.lines.get(name) or {
            label: run_key(config) for label, config in figure_configs(FIGURES[name], plan.base).items()
        }
        results[name] = {}
        for label, key in keys.items():
            read = read_run(out / "runs" / key)
            if read is not None:
                results[name][label] = Result(label, key, *read)
    return results


# ---------------------------------------------------------------------------------------------
# Claims
# ---------------------------------------------------------------------------------------------


def _fmt(value: float, metric: str) -> str:
    if metric == "time":
        return f"{value:.2f} ms/it"
    if metric == "variance":
        return f"{value:.4g}"
    return f"{value:.3f}"


def check_claim(
    claim: Claim,
    figure: str,
    results: Mapping[str, Mapping[str, Result]],
    measured: Mapping[str, Mapping[str, float]] | None = None,
) -> Verdict:
    """Decide one claim on the final values of the figure's lines (see :class:`byzrsa.experiments.paper.presets.Claim`).

    ``measured`` (metric -> label -> value) replaces the runs' values of the
    figure's own lines for that metric (the interleaved timing of fig 6).
    """
    metric = claim.metric
    own = results.get(figure, {})
    override = (measured or {}).get(metric)

    def value(ref: str) -> float | None:
        fig, _, label = ref.rpartition(":")
        if override is not None and fig in ("", figure):
            return override.get(label)
        line = results.get(fig or figure, {}).get(label)
        if line is None:
            return None
        v = line.final[metric]
        return v if math.isfinite(v) else None

    def name(ref: str) -> str:
        return ref.replace(":", " ") if ":" in ref else ref

    refs = [*claim.left, *claim.right]
    values = {ref: value(ref) for ref in refs}
    missing = [name(r) for r, v in values.items() if v is None]
    if claim.op == "interior-peak":
        return _interior_peak(claim, own)
    if claim.op == "largest":
        values = {label: value(label) for label in own}
        missing = [label for label, v in values.items() if v is None]
    if missing or (not refs and claim.op != "largest"):
        return Verdict(claim, None, f"no result for {', '.join(missing) or 'any line'}")
    shown = ", ".join(f"{name(r)} {_fmt(v, metric)}" for r, v in values.items())
    op, tol = claim.op, claim.tol
    if op == "close":
        gaps = [abs(values[a] - values[b]) for a in claim.left for b in claim.right]
        held = max(gaps) <= tol
        return Verdict(claim, held, f"{shown}: gap {max(gaps):.3f} {'<=' if held else '>'} {tol:g}")
    if op in ("below", "fails"):
        margins = [values[b] - values[a] for a in claim.left for b in claim.right]
        held = min(margins) > tol
        what = f"smallest margin {min(margins):+.3g}" if metric != "time" else f"smallest margin {min(margins):+.3f} ms/it"
        return Verdict(claim, held, f"{shown}: {what} {'>' if held else '<='} {tol:g}")
    if op == "similar":
        span = max(values.values()) - min(values.values())
        held = span <= tol
        return Verdict(claim, held, f"{shown}: spread {span:.3f} {'<=' if held else '>'} {tol:g}")
    if op == "approx":
        gap = abs(values[claim.left[0]] - claim.value)
        held = gap <= tol
        return Verdict(claim, held, f"{shown}: {gap:.3f} from {claim.value:g} ({'<=' if held else '>'} {tol:g})")
    if op == "largest":
        target = claim.left[0]
        others = {k: v for k, v in values.items() if k != target}
        held = target in values and all(values[target] > v for v in others.values())
        ranked = sorted(values.items(), key=lambda kv: -kv[1])
        return Verdict(claim, held, ", ".join(f"{k} {_fmt(v, metric)}" for k, v in ranked))
    raise ValueError(f"unknown claim op {op!r}")


def lambda_of(label: str) -> float:
    match = re.search(r"lambda=([0-9.eE+-]+)", label)
    return float(match.group(1)) if match else math.nan


def _interior_peak(claim: Claim, own: Mapping[str, Result]) -> Verdict:
    points = sorted((lambda_of(label), r.final["accuracy"]) for label, r in own.items())
    if len(points) < 3:
        return Verdict(claim, None, "fewer than three lambdas have results")
    best = max(range(len(points)), key=lambda i: points[i][1])
    lo, hi, top = points[0][1], points[-1][1], points[best][1]
    held = 0 < best < len(points) - 1 and lo < top - claim.tol and hi < top - claim.tol
    numbers = ", ".join(f"{lam:g}: {acc:.3f}" for lam, acc in points)
    return Verdict(
        claim, held,
        f"best lambda {points[best][0]:g} ({top:.3f}); smallest lambda {lo:.3f}, largest {hi:.3f} [{numbers}]",
    )


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


