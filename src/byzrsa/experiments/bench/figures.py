"""The benchmark's figures: a heatmap per scenario and accuracy curves per cell, each as PNG and SVG."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

from byzrsa.experiments.bench.stats import CellResult
from byzrsa.folders import atomic_savefig

__all__ = ["heatmap", "curves", "slug"]


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-" else "-" for ch in text.lower()).strip("-")


def _save(fig: plt.Figure, path: Path) -> list[Path]:
    # not with_suffix: a level such as "dirichlet 1.0" puts a dot in the stem
    paths = [path.parent / f"{path.name}.png", path.parent / f"{path.name}.svg"]
    try:
        for p in paths:  # a full disk: one line naming the file, and no half-written figure
            atomic_savefig(fig, p)
    finally:
        plt.close(fig)
    return paths


def heatmap(results: Sequence[CellResult], methods: Sequence[str], attacks: Sequence[str], title: str,
            path: Path) -> list[Path]:
    """Methods x attacks, colour = mean final accuracy, text = mean +- CI (``~``: not converged); each method's
    worst attack outlined."""
    cell = {(r.method, r.attack): r for r in results}
    fig, ax = plt.subplots(figsize=(1.25 * len(attacks) + 3.2, 0.5 * len(methods) + 1.8), dpi=120)
    grid = [[cell[(m, a)].stat.mean if (m, a) in cell and cell[(m, a)].stat.n else math.nan for a in attacks]
            for m in methods]
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i, m in enumerate(methods):
        for j, a in enumerate(attacks):
            r = cell.get((m, a))
            if r is None or not r.stat.n:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.3")
                continue
            ci = "" if not math.isfinite(r.stat.ci) else f"\n±{r.stat.ci:.3f}"
            colour = "black" if r.stat.mean > 0.6 else "white"
            mark = "~" if r.converged is False else ""  # still moving over the last 20% of the iterations
            ax.text(j, i, f"{mark}{r.stat.mean:.3f}{ci}", ha="center", va="center", fontsize=7, color=colour)
            if r.worst:
                ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, edgecolor="red", linewidth=2.2))
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="mean final test accuracy")
    fig.tight_layout()
    return _save(fig, path)


def curves(results: Sequence[CellResult], rows_of: Callable[[str], list[dict[str, float]] | None], title: str,
           path: Path) -> list[Path]:
    """Test accuracy against iterations for each method of one (scenario, attack): mean over seeds, min-max band."""
    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=120)
    for r in results:
        series = [rows for rows in (rows_of(k) for k in r.keys.values()) if rows]
        if not series:
            continue
        n = min(len(s) for s in series)
        xs = [series[0][i]["iteration"] for i in range(n)]
        ys = [[s[i]["accuracy"] if math.isfinite(s[i]["accuracy"]) else 0.0 for s in series] for i in range(n)]
        mean = [sum(y) / len(y) for y in ys]
        line, = ax.plot(xs, mean, label=r.method, linewidth=2.0 if r.method.startswith("RSA") else 1.3)
        if len(series) > 1:
            ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("iteration")
    ax.set_ylabel("top-1 test accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    return _save(fig, path)
