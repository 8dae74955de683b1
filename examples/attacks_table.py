"""The accuracy table of today's defences and RSA against today's attacks.

mnist-sample, softmax regression on raw pixels, m = 20 workers, q = 4 Byzantine
(the last four), batch 32, f0 = 0.01/2 ||x||^2, step a / sqrt(k), seed 0, the
iid and the by-label split; the issue's 12 methods x 8 attacks x 2 splits = 192 runs,
RSA l1 with the paper's heterogeneous preset (fig. 10) as a 13th row (16 runs), and Ideal SGD (the ceiling,
which ignores the Byzantine workers) once per split: 210 runs.

    python examples/attacks_table.py                       # 5000 iterations, one run at a time
    python examples/attacks_table.py --iterations 1000 --jobs 2
    python examples/attacks_table.py --doc-only            # rewrite the doc from the folders there

Every cell is one results folder, ``OUT/<split>/<method>/<attack>/`` (what
``byzrsa run --out`` writes). A cell whose ``summary.json`` says ``completed``
at the asked number of iterations is skipped, so an interrupted grid resumes
where it stopped; any other folder there (interrupted, failed, another length)
is run again. At the end (and with ``--doc-only``) the finished cells are
written to ``--doc`` (default docs/results-attacks.md) as two tables of final
test accuracy and the worst attack per method; unfinished cells read "-".

Step sizes: the paper presets' per-method values (experiments/paper/presets.py, fig.
4a/5a: RSA l1 lambda 0.07, a = 1e-3; l2 lambda 1.2, a = 1e-3; the baselines
1e-4, Krum 1e-4 at q = 4). The defences the paper did not have run at a = 1e-4
with their default options, signSGD at a = 1e-3 (its step is the sign, so the
gradient's scale does not enter): **untuned**.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: (key, label, settings, how its step size was chosen)
METHODS: list[tuple[str, str, dict[str, Any], str]] = [
    ("rsa-l1", "RSA (l1)", {"method": "rsa", "norm": "l1", "lam": 0.07, "lr": 1e-3}, "preset (fig. 4a, 9)"),
    ("rsa-l2", "RSA (l2)", {"method": "rsa", "norm": "l2", "lam": 1.2, "lr": 1e-3}, "preset (fig. 9)"),
    # Beyond the list: RSA l1 with the paper's heterogeneous-data preset (fig. 10), since the iid preset's
    # small lambda lets the local models drift apart on the by-label split.
    ("rsa-l1-fig10", "RSA (l1, fig. 10 preset)", {"method": "rsa", "norm": "l1", "lam": 0.5, "lr": 5e-4},
     "preset (fig. 10, heterogeneous)"),
    ("sgd", "Mean (SGD)", {"method": "sgd", "lr": 1e-4}, "preset (fig. 4a)"),
    ("median", "Median", {"method": "median", "lr": 1e-4}, "preset (fig. 3)"),
    ("trimmed-mean", "Trimmed mean", {"method": "trimmed-mean", "lr": 1e-4}, "as the baselines, untuned"),
    ("geomed", "GeoMed", {"method": "geomed", "lr": 1e-4}, "preset (fig. 4a, 5a)"),
    ("krum", "Krum", {"method": "krum", "lr": 1e-4}, "preset (fig. 4a, q = 4)"),
    ("cclip", "CClip", {"method": "cclip", "lr": 1e-4}, "untuned (tau = 10, L = 3)"),
    ("nnm-trimmed-mean", "NNM + trimmed mean", {"method": "trimmed-mean", "pre": ["nnm"], "lr": 1e-4}, "untuned"),
    ("bucketing-geomed", "Bucketing + GeoMed", {"method": "geomed", "pre": ["bucketing"], "lr": 1e-4},
     "untuned (s = 2)"),
    ("bulyan", "Bulyan", {"method": "bulyan", "lr": 1e-4}, "untuned"),
    ("signsgd", "signSGD", {"method": "signsgd", "lr": 1e-3}, "untuned (a sign step)"),
]
#: The ceiling: the mean of the 16 regular workers' gradients alone, which no attack reaches (one cell per split).
IDEAL = ("ideal-sgd", "Ideal SGD", {"method": "ideal-sgd", "lr": 1e-4}, "preset (fig. 4a)")

#: (key, label, settings)
ATTACKS: list[tuple[str, str, dict[str, Any]]] = [
    ("none", "none", {"attack": "none"}),
    ("sign-flip", "sign-flip", {"attack": "sign-flip", "attack.sigma": -4.0}),
    ("alie", "ALIE", {"attack": "alie"}),
    ("ipm", "IPM (0.1)", {"attack": "ipm", "attack.epsilon": 0.1}),
    ("min-max", "min-max", {"attack": "min-max"}),
    ("mimic", "mimic", {"attack": "mimic"}),
    ("label-flip", "label-flip", {"attack": "label-flip"}),
    ("rsa-aware", "RSA-aware", {"attack": "rsa-aware"}),
]

SPLITS = [("iid", "iid"), ("by-label", "by-label (workers 2d, 2d+1 hold digit d; digits 8, 9 only at Byzantine workers)")]

FIXED: dict[str, Any] = {
    "dataset": "mnist-sample", "pixels": "raw", "model": "softmax", "workers": 20, "byzantine": 4,
    "batch_size": 32, "lr_schedule": "sqrt", "mu": 0.01, "master_order": "jacobi", "seed": 0,
    "dtype": "float32", "engine": "sim", "threads": 1,
}


#: How to read the tables (written from the 5000-iteration run of 2026-12-02; the numbers quoted are from it).
NOTES = [
    "## Reading the tables",
    "",
    "- **none** on by-label is not the no-attack baseline of the other columns: the four Byzantine workers then",
    "  train honestly on their shards, which hold digits 8 and 9, so the model sees all ten digits. Under every",
    "  attack those digits are lost, and about 0.8 (docs/protocol.md, at 5000 iterations) is the best possible; Ideal",
    "  SGD (the 16 regular workers alone) is the ceiling to compare the attacked columns with.",
    "- **mimic on RSA** chooses its worker in the first round (warmup 1, the authors' default), when every RSA",
    "  local model is still the zero start: all regular messages are equal, every projection is 0, and the",
    "  first index wins, so on RSA mimic is `copy` of worker 0 (checked: the same x0 bit for bit after 100",
    "  steps). On the gradient methods the first round's gradients differ and the heuristic chooses. A larger",
    "  `--attack-warmup` lets it choose on RSA too.",
    "- **RSA-aware on the gradient methods** is the same construction from the shared model: every entry",
    "  x0 +- (1 + ||x0||_inf), the signs those of t = sum_i sign(x0 - g_i) over the regular gradients. That",
    "  is a small message next to raw-pixel gradients and has no optimality there; it hurts the rules that",
    "  may select the four identical copies (Krum, Bulyan) or move towards them (GeoMed on by-label).",
    "- **RSA-aware is a one-step optimum**: no message of the q workers moves x0 farther along its target in",
    "  one step (tests/test_attacks.py). Over a run other attacks can do more harm: sign-flip, whose four",
    "  messages -4 x_j all sit on the far side of 0 from x0, spends the same per-coordinate budget",
    "  q lambda alpha shrinking x0 every step, while the regular workers' votes are split by heterogeneity.",
    "- **RSA's lambda** is the iid preset (0.07 for l1, 1.2 for l2). On iid data RSA holds everywhere (l2's",
    "  worst case 0.885 is the best of any method, with NNM + trimmed mean's 0.884; l1's 0.861 is CClip's",
    "  0.862 and above the median's 0.849). On by-label the regular workers' local models drift apart (each pair holds one",
    "  digit) and the master, close to their coordinate-wise median, is easy to push: RSA l1 at the iid",
    "  lambda falls to 0.05-0.16 under sign-flip, ALIE, IPM and min-max, and RSA l2 to 0.100 (one class)",
    "  under IPM and RSA-aware. The paper's heterogeneous preset (fig. 10: lambda 0.5, a = 5e-4, the extra",
    "  row) holds ALIE, mimic, label-flip and RSA-aware at 0.72-0.74 (the ceiling is 0.739) but not",
    "  sign-flip (0.123) or min-max (0.286): the per-coordinate budget q lambda alpha grows with lambda. The",
    "  best worst case on by-label is Bucketing + GeoMed's 0.704, then CClip 0.572 and NNM + trimmed mean",
    "  0.546. The paper's own point that lambda must follow the heterogeneity, and the reason the benchmark",
    "  tunes it per setting.",
    "- **signSGD** does poorly on by-label even with the Byzantine workers honest: a majority vote keeps no",
    "  magnitudes, and with each digit at two workers of twenty most coordinates of a class's weights are",
    "  voted by workers that do not hold that class.",
]


def cell_config(split: str, method: dict[str, Any], attack: dict[str, Any], iterations: int) -> dict[str, Any]:
    eval_every = max(1, min(100, iterations // 10))
    return {**FIXED, "split": split, "iterations": iterations, "eval_every": eval_every, **method, **attack}


def cell_done(folder: Path, iterations: int) -> dict[str, Any] | None:
    """The cell's summary if it finished at ``iterations``, else None."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") == "completed" and summary.get("iterations") == iterations:
        return summary
    return None


def run_cell(settings: dict[str, Any], folder: str) -> tuple[str, dict[str, Any] | str]:
    """Run one cell into ``folder`` (replacing an unfinished run there); return its summary or the error."""
    from byzrsa.experiments.runner import run

    try:
        return folder, run(settings, folder, overwrite=True)
    except Exception as exc:  # noqa: BLE001 - a failing cell is reported and the grid goes on
        return folder, f"{type(exc).__name__}: {exc}"


def cells(out: Path, iterations: int):
    for split, _ in SPLITS:
        key, _, settings, _ = IDEAL
        yield split, key, "none", out / split / key / "none", cell_config(split, settings, ATTACKS[0][2], iterations)
        for mkey, _, msettings, _ in METHODS:
            for akey, _, asettings in ATTACKS:
                yield split, mkey, akey, out / split / mkey / akey, cell_config(split, msettings, asettings, iterations)


def run_grid(out: Path, iterations: int, jobs: int, quiet: bool) -> list[str]:
    todo = [(folder, settings) for *_, folder, settings in cells(out, iterations) if cell_done(folder, iterations) is None]
    total = sum(1 for _ in cells(out, iterations))
    print(f"{total - len(todo)} of {total} cells finished in {out}; running {len(todo)} with {jobs} job(s)", flush=True)
    errors: list[str] = []
    if not todo:
        return errors
    progress = None
    if not quiet:
        from tqdm import tqdm

        progress = tqdm(total=len(todo), unit="run", dynamic_ncols=True)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_cell, settings, str(folder)) for folder, settings in todo]
        for future in as_completed(futures):
            folder, result = future.result()
            if isinstance(result, str):
                errors.append(f"{folder}: {result}")
                print(f"failed: {folder}: {result}", file=sys.stderr, flush=True)
            elif progress is not None:
                progress.set_postfix_str(f"{Path(folder).relative_to(out)} {result['final_accuracy']:.3f}")
            if progress is not None:
                progress.update(1)
    if progress is not None:
        progress.close()
    return errors


def collect(out: Path, iterations: int) -> dict[tuple[str, str, str], dict[str, Any]]:
    found = {}
    for split, mkey, akey, folder, _ in cells(out, iterations):
        summary = cell_done(folder, iterations)
        if summary is not None:
            found[split, mkey, akey] = summary
    return found


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def worst(results: dict, split: str, mkey: str, tie: float = 0.0) -> tuple[str, float | None]:
    """The attack (labels, ties within ``tie`` joined) with the lowest final accuracy for one method."""
    accs = {alabel: results[split, mkey, akey]["final_accuracy"] for akey, alabel, _ in ATTACKS
            if akey != "none" and (split, mkey, akey) in results}
    if not accs:
        return "-", None
    low = min(accs.values())
    return ", ".join(a for a, v in accs.items() if v <= low + tie), low


def table(results: dict, split: str) -> list[str]:
    header = ["method", *(label for _, label, _ in ATTACKS), "worst attack"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mkey, mlabel, _, _ in METHODS:
        row = [mlabel]
        for akey, _, _ in ATTACKS:
            summary = results.get((split, mkey, akey))
            row.append(_fmt(summary["final_accuracy"]) if summary else "-")
        name, low = worst(results, split, mkey)
        row.append(f"{name} ({_fmt(low)})" if low is not None else "-")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_doc(path: Path, out: Path, iterations: int, command: str, elapsed: float | None, errors: list[str]) -> None:
    results = collect(out, iterations)
    total = sum(1 for _ in cells(out, iterations))
    md = [
        "# Final accuracies under today's attacks",
        "",
        f"Generated by `{command}` (examples/attacks_table.py) from its results folders (`--out`, default `results/attacks-table`): "
        f"{len(results)} of {total} cells finished.",
        "",
        "Setting: mnist-sample (byzrsa's offline MNIST subset), softmax regression on raw pixels (0..255) with a bias,",
        "m = 20 workers of which the last q = 4 are Byzantine (every rule is told f = 4), batch 32,",
        f"f0 = 0.01/2 ||x||^2, step a / sqrt(k), **{iterations} iterations**, seed 0 (one seed: no confidence intervals),",
        "float32, the simulator. Each number is the final test accuracy of x0 (RSA) or of the shared model.",
    ]
    if iterations != 5000:
        md += [
            "",
            f"**Shorter than the issue asks**: {iterations} iterations instead of 5000. The 1000-iteration grid took",
            "22 minutes of run time on the shared 2-core machine it ran on (5-9 s a cell, one core), so at 5000",
            "iterations (5x the steps and the evaluations) it is about 110 minutes, beyond this session's budget. Rerun",
            "with the default `--iterations 5000` where there is time; the script resumes.",
        ]
    md += [
        "",
        "Step sizes (a) and options, **untuned** beyond the paper presets (no validation-split tuning, unlike the",
        "benchmark's convention):",
        "",
        "| method | settings | a chosen by |",
        "|---|---|---|",
    ]
    for _, mlabel, settings, how in [*METHODS, IDEAL]:
        shown = ", ".join(f"{k} = {v}" for k, v in settings.items() if k != "method")
        md.append(f"| {mlabel} | `{settings['method']}`, {shown} | {how} |")
    md += [
        "",
        "Attacks with their defaults (docs/attacks.md): sign-flip sigma = -4; ALIE with the paper's z_max",
        "(n = 20, q = 4: s = 7, z = Phi^-1(13/20) = 0.385); IPM epsilon = 0.1; min-max with the std direction;",
        "mimic with warmup 1; label-flip y -> 9 - y; RSA-aware with target `against-pull`. On RSA the attacks",
        "forge local models, on the baselines gradients. The RSA-aware attack is derived from RSA's master step;",
        "on the gradient methods it sends the same construction built from the shared model (no such optimality).",
        "",
    ]
    for split, title in SPLITS:
        ideal = results.get((split, IDEAL[0], "none"))
        md += [f"## {title}", "", f"Ideal SGD (the 16 regular workers' mean alone, the ceiling): "
               f"{_fmt(ideal['final_accuracy']) if ideal else '-'}.", "", *table(results, split), ""]
    md += ["## Worst attack per method", "", "| method | iid | by-label |", "|---|---|---|"]
    for mkey, mlabel, _, _ in METHODS:
        cols = []
        for split, _ in SPLITS:
            name, low = worst(results, split, mkey)
            cols.append(f"{name} ({_fmt(low)})" if low is not None else "-")
        md.append(f"| {mlabel} | {' | '.join(cols)} |")
    md += [
        "",
        "Ties: the lowest final accuracy; attacks within 0.000 of it are all named. One seed and one",
        "evaluation at the end: differences of a point or two are within run-to-run noise.",
        "",
        *NOTES,
    ]
    if elapsed is not None:
        md += ["", f"Wall time of the last invocation: {elapsed / 60:.0f} minutes."]
    if errors:
        md += ["", "Cells that failed:", "", *(f"- {e}" for e in errors)]
    path.write_text("\n".join(md) + "\n")
    print(f"wrote {path} ({len(results)} of {total} cells)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", default=str(ROOT / "results" / "attacks-table"), help="results folder of the grid")
    ap.add_argument("--iterations", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each one torch thread)")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results-attacks.md"))
    ap.add_argument("--doc-only", action="store_true", help="only (re)write the doc from the finished cells")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    command = "python examples/attacks_table.py" + (f" --iterations {args.iterations}" if args.iterations != 5000 else "")
    started = time.perf_counter()
    errors = [] if args.doc_only else run_grid(out, args.iterations, args.jobs, args.quiet)
    elapsed = None if args.doc_only else time.perf_counter() - started
    write_doc(Path(args.doc), out, args.iterations, command, elapsed, errors)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
