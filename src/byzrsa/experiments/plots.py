"""Plots of runs: accuracy (and other metrics) against iterations."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_curves"]


def plot_curves(
    curves: dict[str, Sequence[dict[str, float]]],
    path: str | Path,
    *,
    title: str = "",
    x: str = "iteration",
    y: str = "accuracy",
    xlabel: str = "iteration",
    ylabel: str = "top-1 test accuracy",
    logy: bool = False,
) -> None:
    """One line per labelled run (rows as written to metrics.csv), saved to ``path`` (png/svg by suffix)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for label, rows in curves.items():
        line = ax.plot([r[x] for r in rows], [r[y] for r in rows], label=label, linewidth=1.6)[0]
        if y == "accuracy" and rows and "accuracy_min" in rows[0]:  # a decentralized run: the nodes' min-max band
            ax.fill_between([r[x] for r in rows], [r["accuracy_min"] for r in rows], [r["accuracy_max"] for r in rows],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    elif y == "accuracy":
        ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    if len(curves) > 1 or any(curves):
        ax.legend(fontsize=8, loc="lower right" if y == "accuracy" else "best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
