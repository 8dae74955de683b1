"""The reproduction's figures: one PNG + SVG per panel, one colour and line style per method."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from byzrsa.errors import WriteError
from byzrsa.experiments.paper.claims import Result, lambda_of
from byzrsa.folders import atomic_path
from byzrsa.experiments.paper.presets import Figure  # noqa: E402

__all__ = ["STYLE", "draw_figure", "save_figure", "setting_title"]

#: One colour and style per method, the same in every figure.
STYLE: dict[str, dict[str, Any]] = {
    "Ideal SGD": {"color": "black", "linestyle": "--"},
    "SGD": {"color": "0.55", "linestyle": "-"},
    # GeoMed and Krum often fail onto the same curve: dash them differently so both stay visible.
    "GeoMed": {"color": "tab:blue", "linestyle": "-."},
    "Krum": {"color": "tab:orange", "linestyle": (0, (1, 1.5)), "linewidth": 2.0},
    "Median": {"color": "tab:green", "linestyle": "-"},
    "RSA": {"color": "tab:red", "linestyle": "-", "linewidth": 2.2},
    "RSA l1": {"color": "tab:red", "linestyle": "-"},
    "RSA l2": {"color": "tab:purple", "linestyle": "-"},
    "RSA linf": {"color": "tab:brown", "linestyle": "-"},
}



def setting_title(figure: Figure, dataset: str) -> str:
    fixed = figure.fixed
    q = fixed.get("byzantine", 0)
    split = "iid" if fixed.get("split") == "iid" else "heterogeneous (by digit)"
    attack = {
        "none": "no attack",
        "same-value": f"same-value attack c={fixed.get('attack.c', 100):g}",
        "sign-flip": f"sign-flip attack sigma={fixed.get('attack.sigma', -4):g}",
        "copy": "copy attack (regular worker 1)",
    }[fixed.get("attack", "none")]
    return f"{figure.name}: {dataset}, {split}, q={q}, {attack}"


def _style(label: str) -> dict[str, Any]:
    return {"linewidth": 1.6, **STYLE.get(label, {})}


def save_figure(fig: Any, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    fig.tight_layout()
    try:
        for path in paths:  # through a temporary file: a full disk leaves the old figure, not half a new one
            tmp = atomic_path(path)
            try:
                fig.savefig(tmp, dpi=130)
                os.replace(tmp, path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise WriteError.from_os(exc, path) from None
    finally:
        plt.close(fig)
    return paths


def _accuracy_axes(ax: Any, lines: Mapping[str, Result], x: str) -> None:
    for label, r in lines.items():
        ax.plot([row[x] for row in r.rows], [row["accuracy"] for row in r.rows], label=label, **_style(label))
    finals = [r.final["accuracy"] for r in lines.values() if math.isfinite(r.final["accuracy"])]
    # The paper's axes show the range where the curves end; keep 0 visible when a method fails.
    low = 0.0 if not finals or min(finals) < 0.5 else math.floor((min(finals) - 0.15) * 10) / 10
    ax.set_ylim(low, 1.0)
    ax.set_ylabel("top-1 test accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def draw_figure(figure: Figure, lines: Mapping[str, Result], folder: Path, dataset: str) -> list[Path]:
    """Draw the panel(s) of ``figure`` from its results into ``folder`` (PNG and SVG each); return the paths."""
    title = setting_title(figure, dataset)
    paths: list[Path] = []
    if figure.kind == "lambda":
        points = sorted((lambda_of(label), r.final["accuracy"]) for label, r in lines.items())
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:red", label="RSA (l1)")
            for i, (lam, acc) in enumerate(points):
                ax.annotate(f"{acc:.3f}", (lam, acc), textcoords="offset points", xytext=(0, 7 if i % 2 == 0 else -13),
                            ha="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("lambda")
        ax.set_ylabel("final top-1 test accuracy")
        finals = [p[1] for p in points]
        ax.set_ylim(0.0 if not finals or min(finals) < 0.5 else math.floor((min(finals) - 0.1) * 10) / 10, 1.0)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(title, fontsize=9)
        return save_figure(fig, folder, figure.name)
    x = "time" if figure.kind == "runtime" else "iteration"
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if x == "time":  # log axis: the methods' times differ by an order of magnitude (the paper's point)
        lines = {label: Result(r.label, r.key, [row for row in r.rows if row["time"] > 0], r.summary, r.config)
                 for label, r in lines.items()}
        ax.set_xscale("log")
    _accuracy_axes(ax, lines, x)
    ax.set_xlabel("training time (s, log scale)" if x == "time" else "iteration k")
    ax.set_title(title, fontsize=9)
    stem = figure.name + ("a" if figure.kind == "norms" else "")
    paths += save_figure(fig, folder, stem)
    if figure.kind == "norms":
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for label, r in lines.items():
            rows = [row for row in r.rows if row["iteration"] > 0 and row.get("variance", 0) > 0]
            ax.plot([row["iteration"] for row in rows], [row["variance"] for row in rows], label=label, **_style(label))
        ax.set_yscale("log")
        ax.set_xlabel("iteration k")
        ax.set_ylabel("variance of regular workers' local iterates")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="best")
        ax.set_title(title, fontsize=9)
        paths += save_figure(fig, folder, figure.name + "b")
    return paths


# ---------------------------------------------------------------------------------------------
# Explanations of claims that do not hold (docs/protocol.md, "Things to know before judging results")
# ---------------------------------------------------------------------------------------------


