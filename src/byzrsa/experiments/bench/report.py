"""The benchmark's outputs: heatmaps, the worst-case ranking, verdicts on RSA, ``report.md``, cells.json and .csv.

Every verdict is computed here from the cells' numbers (:mod:`~byzrsa.experiments.bench.stats`),
by a paired comparison over seeds (seed s gives every method the same data, batches and Byzantine draws):
the 95% Student-t interval of the mean of the per-seed differences
(:func:`~byzrsa.experiments.bench.stats.compare`):

* **best under an attack**: the highest mean among the defences (Ideal SGD, which
  ignores the Byzantine workers, is shown as the ceiling but never "best");
  methods whose paired interval against the best holds 0 are tied with it;
* **RSA tied with the best**: the paired interval of (RSA - best) holds 0;
* **RSA loses**: that interval lies entirely below 0; by how much = the
  difference of the means; the attack that breaks RSA in a scenario is the one
  with its lowest mean;
* **not converged**: RSA's cell or the best's moved by more than the seed spread
  over the last 20% of the iterations; no win, tie or loss is read from it;
* with fewer than two seeds there is no interval and no tie or loss.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from byzrsa.experiments.bench.stats import CellResult, by_scenario, collect, compare, paired_difference, run_rows
from byzrsa.experiments.bench.stats import final_accuracy
from byzrsa.experiments.bench.published import published_section
from byzrsa.experiments.bench.tune import chosen_values, format_tuning

__all__ = ["write_report", "verdicts", "final_accuracy", "CSV_COLUMNS"]

CSV_COLUMNS = ("level", "q", "f", "method", "attack", "n_seeds", "mean", "ci95", "std", "worst_for_method", "tuned",
               "values", "per_seed", "missing_seeds", "diverged_seeds", "not_applicable", "run_keys", "drift",
               "converged")


def _method_name(settings: Mapping[str, Any]) -> str:
    name = settings.get("method", "rsa")
    return name.get("name", "") if isinstance(name, Mapping) else str(name)


def _is_oracle(name: str) -> bool:
    from byzrsa.methods import get_method

    try:
        return bool(get_method(name).regular_only)
    except Exception:
        return False


def verdicts(results: Sequence[CellResult], methods: Sequence[str], attacks: Sequence[str], rsa: Sequence[str],
             oracles: Sequence[str]) -> dict[str, Any]:
    """The ranking, the best per attack and RSA's standing in one scenario (see the module docstring)."""
    cell = {(r.method, r.attack): r for r in results if r.stat.n}
    ranking = []
    for m in methods:
        mine = [cell[(m, a)] for a in attacks if (m, a) in cell]
        if not mine:
            continue
        worst = min(mine, key=lambda r: r.stat.mean)
        ranking.append({"method": m, "worst_attack": "(ignores the attack)" if m in oracles else worst.attack,
                        "worst": worst.stat, "worst_cell": worst,
                        "mean_over_attacks": sum(r.stat.mean for r in mine) / len(mine), "oracle": m in oracles})
    ranking.sort(key=lambda row: -row["worst"].mean)
    defences = [row for row in ranking if not row["oracle"]]
    for row in ranking:
        ceiling = " (ceiling)" if row["oracle"] else ""
        if not defences:
            row["status"] = "-"
            continue
        if row is defences[0]:
            row["status"] = "best worst case" + (" (not converged)" if row["worst_cell"].converged is False else "")
            continue
        word = compare(row["worst_cell"], defences[0]["worst_cell"])
        row["status"] = {"not converged": "not converged" + ceiling, "no interval": "no interval (one seed)" + ceiling,
                         "tie": "tied with the best" + ceiling, "below": "below the best" + ceiling,
                         "above": "ceiling (ignores the Byzantine workers)" if row["oracle"] else "above the best"}[word]
    per_attack = []
    for a in attacks:
        entries = {m: cell[(m, a)] for m in methods if (m, a) in cell and m not in oracles}
        if not entries:
            continue
        best = max(entries, key=lambda m: entries[m].stat.mean)
        tied = [m for m in entries if m != best and compare(entries[m], entries[best]) == "tie"]
        row: dict[str, Any] = {"attack": a, "best": best, "best_stat": entries[best].stat, "tied": tied, "rsa": {},
                               "best_converged": entries[best].converged}
        for r in rsa:
            if r not in entries:
                continue
            mine = entries[r]
            if r == best:
                status = "best" if mine.converged is not False else "not converged"
            else:
                status = {"below": "loses", "tie": "within the CI of the best", "above": "within the CI of the best",
                          "no interval": "no interval", "not converged": "not converged"}[compare(mine, entries[best])]
            row["rsa"][r] = {"stat": mine.stat, "status": status, "gap": entries[best].stat.mean - mine.stat.mean,
                             "paired": paired_difference(mine, entries[best]) if r != best else None,
                             "converged": mine.converged}
        per_attack.append(row)
    rsa_view = {}
    for r in rsa:
        mine = {a: cell[(r, a)].stat for a in attacks if (r, a) in cell}
        if not mine:
            continue
        def gaps(status: str) -> list[tuple[Any, ...]]:
            return sorted(((row["attack"], row["rsa"][r]["gap"], row["best"], row["best_stat"], row["rsa"][r]["stat"])
                           for row in per_attack if r in row["rsa"] and row["rsa"][r]["status"] == status),
                          key=lambda x: -x[1])

        worst = min(mine, key=lambda a: mine[a].mean)
        clean = next((mine[a] for a in attacks if a == "none" and a in mine), None)
        rsa_view[r] = {"losses": gaps("loses"), "unresolved": gaps("no interval"),
                       "unconverged": gaps("not converged"), "worst_attack": worst, "worst": mine[worst],
                       "clean": clean,
                       "ties": [row["attack"] for row in per_attack if r in row["rsa"]
                                and row["rsa"][r]["status"] in ("best", "within the CI of the best")]}
    return {"ranking": ranking, "per_attack": per_attack, "rsa": rsa_view}


def _values_text(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def _breaks_text(scenario_label: str, rsa: str, view: Mapping[str, Any]) -> str:
    worst = view["worst"]
    drop = ""
    if view["clean"] is not None and view["worst_attack"] != "none":
        drop = f", {view['clean'].mean - worst.mean:.3f} below its no-attack accuracy {view['clean'].mean:.3f}"
    tail = f"its worst attack is {view['worst_attack']} ({worst.text()}{drop})"
    def listed(entries: Sequence[tuple[Any, ...]]) -> str:
        return "; ".join(f"{a} by {gap:.3f} ({rsa} {mine.text()} vs {best} {bstat.text()})"
                         for a, gap, best, bstat, mine in entries)

    said = []
    if view["losses"]:
        said.append(f"{rsa} loses under {listed(view['losses'])}")
    if view["unresolved"]:
        said.append(f"with one seed (no intervals) {rsa} is behind the best under {listed(view['unresolved'])}")
    if view.get("unconverged"):
        said.append(f"not converged (no verdict) under {listed(view['unconverged'])}")
    if not said:
        return f"- {scenario_label}: {rsa} is within the CI of the best under every attack; {tail}."
    return f"- {scenario_label}: {'; and '.join(said)}; {tail}."


def _drift_text(cell: CellResult) -> str:
    if cell.drift is None:
        return "n/a"
    return f"{cell.drift:+.3f}" + (" (not converged)" if cell.converged is False else "")


def _verdict_text(d: Mapping[str, Any]) -> str:
    status, gap, paired = d["status"], d["gap"], d.get("paired")
    interval = f" (paired difference {paired.mean:+.3f} ± {paired.ci:.3f})" if paired is not None and \
        math.isfinite(paired.ci) else ""
    if status == "loses":
        return f"loses by {gap:.3f}{interval}"
    if status == "no interval":
        return f"behind by {gap:.3f}, no interval (one seed)"
    if status == "within the CI of the best":
        return f"tied with the best{interval}"
    if status == "not converged":
        return f"not converged (gap {gap:.3f}, no verdict)"
    return status


def _lambda0s(out: Path, plan: Any, scenario: Any, rsa: Sequence[str]) -> dict[str, tuple[float, float]]:
    """RSA row -> (its lambda, Theorem 1's lambda0 for its scenario's problem, first seed's split) where defined."""
    from byzrsa.experiments.bench.theory import lambda0_of, lambda0_table

    configs = {}
    for cell in plan.cells:
        if cell.scenario == scenario and cell.method in rsa and cell.keys and cell.method not in configs:
            config = plan.runs[cell.keys[min(cell.keys)]]
            if config.topology == "none":  # Theorem 1 is the master/worker problem's; DRSA's threshold differs
                configs[cell.method] = config
    table = lambda0_table(out, list(configs.values()))
    found = {m: (c.lam, lambda0_of(table, c)) for m, c in configs.items()}
    return {m: (lam, v) for m, (lam, v) in found.items() if v is not None}


def _scenario_section(scenario: Any, v: Mapping[str, Any], values: Mapping[tuple[str, str], Mapping[str, float]],
                      image: str, untuned: bool, n_seeds: int,
                      lambda0s: Mapping[str, tuple[float, float]] | None = None
                      ) -> list[str]:
    lambda0s = lambda0s or {}
    lines = [f"## {scenario.label}", "", f"![heatmap]({image})", "",
             "### Worst-case ranking", "",
             f"Worst case = the method's lowest cell (mean final test accuracy over {n_seeds} seeds ± 95% CI); "
             "verdicts against the best by the paired interval over seeds; drift = change of the mean accuracy over "
             "the last 20% of the iterations (a cell whose drift exceeds its seed spread and 0.01 has not converged).",
             "",
             "| rank | method | " + ("values (untuned)" if untuned else "tuned values")
             + " | worst attack | worst-case accuracy | drift | mean over attacks | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(v["ranking"], 1):
        vals = _values_text(values.get((row["method"], scenario.level), {}))
        if row["method"] in lambda0s:
            lam, lam0 = lambda0s[row["method"]]
            if "lam" not in values.get((row["method"], scenario.level), {}):
                vals += f", lam={lam:.4g}"
            vals += f" (lambda0 {lam0:.3g})"
        lines.append(f"| {i} | {row['method']} | {vals} | {row['worst_attack']} | {row['worst'].text()} | "
                     f"{_drift_text(row['worst_cell'])} | {row['mean_over_attacks']:.3f} | {row['status']} |")
    lines += ["", "### Best method under each attack", "",
              "| attack | best | accuracy | tied with the best (paired CI of the difference holds 0) | RSA | "
              "RSA's verdict |",
              "|---|---|---|---|---|---|"]
    for row in v["per_attack"]:
        rsa = "; ".join(f"{r}: {d['stat'].text()}" for r, d in row["rsa"].items()) or "-"
        verdict = "; ".join(f"{r}: {_verdict_text(d)}" for r, d in row["rsa"].items()) or "-"
        lines.append(f"| {row['attack']} | {row['best']} | {row['best_stat'].text()} | "
                     f"{', '.join(row['tied']) or '-'} | {rsa} | {verdict} |")
    return lines + [""]


def _cells_rows(results: Sequence[CellResult], values: Mapping[tuple[str, str], Mapping[str, float]],
                untuned: bool) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        s = r.stat
        rows.append({
            "level": r.scenario.level, "q": r.scenario.q, "f": r.scenario.f, "method": r.method, "attack": r.attack,
            "n_seeds": s.n, "mean": s.mean if s.n else None, "ci95": s.ci if s.n > 1 else None,
            "std": s.std if s.n > 1 else None, "worst_for_method": r.worst, "tuned": not untuned,
            "values": dict(values.get((r.method, r.scenario.level), {})),
            "per_seed": {str(k): v for k, v in r.per_seed.items()}, "missing_seeds": r.missing,
            "diverged_seeds": r.diverged, "not_applicable": r.na, "run_keys": {str(k): v for k, v in r.keys.items()},
            "drift": r.drift, "converged": r.converged,
        })
    return rows


def _write_cells(out: Path, rows: list[dict[str, Any]], meta: Mapping[str, Any]) -> None:
    (out / "cells.json").write_text(json.dumps({**meta, "cells": rows}, indent=2, default=str) + "\n")
    with open(out / "cells.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            flat = dict(row)
            for key in ("values", "per_seed", "run_keys"):
                flat[key] = json.dumps(row[key], sort_keys=True)
            for key in ("missing_seeds", "diverged_seeds"):
                flat[key] = " ".join(map(str, row[key]))
            writer.writerow({k: ("" if flat[k] is None else flat[k]) for k in CSV_COLUMNS})


def _wanted(selection: Sequence[str] | None, scenario: Any, attack: str) -> bool:
    if not selection:
        return False
    from byzrsa.experiments.bench.figures import slug

    names = {s.strip().lower() for s in selection}
    return bool(names & {"all", attack.lower(), slug(attack), scenario.slug, scenario.level.lower()})


def write_report(out: Path, plan: Any, *, failures: Mapping[str, str], timing: Mapping[str, Any],
                 curves: Sequence[str] | None = None) -> Path:
    """Write every output of a bench into ``out`` and return the path of ``report.md``."""
    from byzrsa.experiments.bench import figures as bench_figures

    grid = plan.grid
    oracles = [m.label for m in grid.methods if _is_oracle(_method_name(m.settings))]
    results = collect(out, plan.cells, oracles)
    values = chosen_values(plan.tune_jobs, plan.untuned)
    methods = [m.label for m in grid.methods]
    attacks = [a.label for a in grid.attacks]
    rsa = [m.label for m in grid.methods if _method_name(m.settings) == "rsa"]
    mark = " (UNTUNED)" if plan.untuned else ""
    n_seeds = len(grid.seeds)
    lines = [f"# byzrsa bench: {grid.name}{mark}", "", grid.description, ""]
    base = ", ".join(f"{k}={v}" for k, v in grid.base.items())
    lines += [f"- Settings: {base}.", f"- Levels: {', '.join(lv.label for lv in grid.levels)}; q: "
              f"{', '.join(map(str, grid.byzantine))}; declared f: {', '.join(map(str, grid.declared_f))}; "
              f"seeds: {', '.join(map(str, grid.seeds))}.",
              "- Final accuracy = mean test accuracy over the last 10% of the iterations; cells give mean ± 95% "
              "confidence interval over seeds (Student t, n - 1 degrees of freedom). Seeds are paired (seed s gives "
              "every method the same data split, batches and Byzantine draws), so one method beats another only "
              "when the 95% Student-t interval of the mean per-seed difference excludes 0; otherwise it is a tie.",
              "- Converged: a cell whose mean accuracy moved over the last 20% of the iterations by more than "
              "max(seed standard deviation, 0.01) has not converged; its verdicts read \"not converged\" "
              "(no win, tie or loss).",
              "- Hyper-parameters: " + (
                  "**untuned**: every method at its starting values." if plan.untuned else
                  "tuned on a validation split of the training data by the worst case over the grid's attacks "
                  "(see below); the test set is read only by the grid's runs."),
              f"- Time of this invocation: {timing.get('run_seconds', math.nan):.0f} s in all "
              f"(tuning {timing.get('tuning_seconds', 0):.0f} s) on {timing.get('jobs')} process(es), "
              f"estimated {timing.get('estimated_seconds', math.nan):.0f} s; "
              f"load average (1, 5, 15 min) at the start {timing.get('load_average_start')}, "
              f"at the end {timing.get('load_average')} (the estimate assumes free cores)."]
    if n_seeds < 3:
        lines.append(f"- **Only {n_seeds} seed(s)**: docs/protocol.md asks for at least 3; intervals are wide or absent "
                     "and most comparisons are ties.")
    lines += [f"- Note: {n}" for n in grid.notes]
    lines += ["", "## Hyper-parameters" + mark, "", format_tuning(plan.tune_jobs, grid.tuning, plan.untuned), ""]
    sections: list[str] = []
    breaks: list[str] = []
    counts = {r: {"best": 0, "tie": 0, "loses": 0, "no interval": 0, "not converged": 0} for r in rsa}
    largest: dict[str, tuple[float, str]] = {}
    written: list[str] = []
    for scenario, group in by_scenario(results).items():
        image = f"heatmap-{scenario.slug}"
        title = (f"{grid.name}: {scenario.label}{mark}\nmean final test accuracy ± 95% CI over {n_seeds} seeds; "
                 "outlined: each method's worst attack; ~: not converged")
        written += [p.name for p in bench_figures.heatmap(group, methods, attacks, title, out / image)]
        v = verdicts(group, methods, attacks, rsa, oracles)
        sections += _scenario_section(scenario, v, values, image + ".png", plan.untuned, n_seeds,
                                      _lambda0s(out, plan, scenario, rsa))
        for r, view in v["rsa"].items():
            breaks.append(_breaks_text(scenario.label, r, view))
        for row in v["per_attack"]:
            for r, d in row["rsa"].items():
                counts[r][d["status"] if d["status"] in counts[r] else "tie"] += 1
                if d["status"] == "loses" and (r not in largest or d["gap"] > largest[r][0]):
                    largest[r] = (d["gap"], f"{r} under {row['attack']} at {scenario.label}, by {d['gap']:.3f} "
                                         f"({d['stat'].text()} vs {row['best']} {row['best_stat'].text()})")
        for attack in attacks:
            if _wanted(curves, scenario, attack):
                (out / "curves").mkdir(exist_ok=True)
                picked = [r for r in group if r.attack == attack and r.stat.n]
                path = out / "curves" / f"{scenario.slug}-{bench_figures.slug(attack)}"
                bench_figures.curves(picked, lambda key: run_rows(out, key),
                                     f"{grid.name}: {scenario.label}, attack {attack}{mark}", path)
    if rsa:
        lines += ["## Where RSA breaks", ""]
        for r in rsa:
            c = counts[r]
            lines.append(
                f"- {r}: over {sum(c.values())} (scenario, attack) cells, the best in {c['best']}, tied with the "
                f"best (paired interval holds 0) in {c['tie']}, loses (paired interval below 0) in {c['loses']}"
                + (f"; not converged (no verdict) in {c['not converged']}" if c["not converged"] else "")
                + (f"; no interval to decide (one seed) in {c['no interval']}" if c["no interval"] else "")
                + "." + (f" Largest loss: {largest[r][1]}." if r in largest else ""))
        lines += ["", *breaks, ""]
    lines += published_section(grid.published, results)
    lines += sections
    na = [r for r in results if r.na]
    if na:
        lines += ["## Cells not applicable", ""]
        lines += [f"- {r.scenario.label} / {r.method} / {r.attack}: {r.na}" for r in na]
        lines.append("")
    if failures:
        lines += ["## Failed runs", ""] + [f"- `{k}`: {msg}" for k, msg in sorted(failures.items())] + [""]
    missing = [r for r in results if r.missing]
    if missing:
        lines += ["## Cells with missing seeds", ""]
        lines += [f"- {r.scenario.label} / {r.method} / {r.attack}: seeds {r.missing}" for r in missing] + [""]
    lines += ["## Files", "", "- `cells.json`, `cells.csv`: every cell (per-seed values, run keys).",
              "- `tuning.json`, `tuning.md`: every tuning point and its score.",
              f"- heatmaps: {', '.join(f'`{w}`' for w in written)}.",
              "- accuracy curves per cell: `byzrsa bench ... --curves all` (or an attack or level name) writes "
              "`curves/`.", "- `runs/KEY/`: each run's config.json, metrics.csv and summary.json.", ""]
    # Which folder feeds which cell (the tuning runs are listed in tuning.md).
    lines += ["## Run folders", "", "| level | q | f | method | attack | seed: folder in `runs/` |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.scenario.level} | {r.scenario.q} | {r.scenario.f} | {r.method} | {r.attack} | "
              + ", ".join(f"{seed}: `{key}`" for seed, key in sorted(r.keys.items())) + " |" for r in results]
    lines.append("")
    meta = {"grid": grid.name, "untuned": plan.untuned, "seeds": list(grid.seeds), "timing": dict(timing),
            "chosen": [{"method": m, "level": lv, "values": v} for (m, lv), v in values.items()]}
    _write_cells(out, _cells_rows(results, values, plan.untuned), meta)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
