"""From presets to runs: canonical configs, their keys, and the plan of a reproduction.

Runs are keyed by a hash of their canonical config, so a run shared by two
figures (or by a reproduction and a tuning grid) is computed once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from byzrsa.config import RunConfig
from byzrsa.errors import ConfigError, did_you_mean
from byzrsa.experiments.paper.presets import (
    ALIASES,
    FIGURES,
    PAPER_SETTING,
    QUICK_EVAL_EVERY,
    QUICK_ITERATIONS,
    Figure,
)

__all__ = ["canonical", "run_key", "figure_configs", "resolve_figures", "Plan", "plan", "base_settings", "other_order", "ORDER_FIGURES"]




def canonical(config: RunConfig) -> RunConfig:
    """The config with settings that cannot change the result normalised, so equal runs share a key.

    Ideal SGD ignores the Byzantine workers, so its attack is irrelevant: it is
    keyed with ``attack="none"`` (which drops the attack's options). Thread
    counts only change speed.
    """
    changes: dict[str, Any] = {"threads": None}
    if config.method == "ideal-sgd":
        changes["attack"] = "none"
    if config.method != "rsa":
        default = RunConfig()
        changes.update(norm=default.norm, lam=default.lam, master_order=default.master_order)
    return config.replace(**changes)


def run_key(config: RunConfig) -> str:
    """A short stable hash of the canonical config: the name of the run's results folder."""
    text = canonical(config).to_json()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def figure_configs(figure: Figure, base: Mapping[str, Any]) -> dict[str, RunConfig]:
    """Label -> canonical run config of each line of ``figure``.

    Settings are layered: :data:`PAPER_SETTING` < the figure's ``fixed`` < the
    line's settings < ``base`` (the dataset, ``--quick``'s iteration count, the
    user's ``--set`` overrides).
    """
    out: dict[str, RunConfig] = {}
    for line in figure.lines:
        settings = {**PAPER_SETTING, **figure.fixed, **line.settings, **base}
        out[line.label] = canonical(RunConfig().replace(**settings))
    return out


def resolve_figures(names: Iterable[str]) -> list[str]:
    """Expand ``all`` and aliases (``fig4`` -> fig4a, fig4b); keep ``theory``; reject unknown names."""
    wanted: list[str] = []
    for name in names:
        key = name.lower().strip()
        if key in ("all",):
            expanded = [*FIGURES, "theory"]
        elif key in ALIASES:
            expanded = list(ALIASES[key])
        elif key.isdigit() and f"fig{key}" in FIGURES:
            expanded = [f"fig{key}"]
        elif key.isdigit() and key in ("4", "5", "10"):
            expanded = list(ALIASES[f"fig{key}"])
        elif key in FIGURES or key == "theory":
            expanded = [key]
        else:
            valid = ", ".join([*FIGURES, *ALIASES, "theory", "all"])
            hint = did_you_mean(name, [*FIGURES, *ALIASES, "theory", "all"])
            raise ConfigError(f"unknown figure {name!r}{hint}: choose from {valid}")
        for item in expanded:
            if item not in wanted:
                wanted.append(item)
    return wanted


@dataclass
class Plan:
    """Every run the chosen figures need: figure -> label -> key, and key -> config."""

    figures: list[str]
    lines: dict[str, dict[str, str]]
    runs: dict[str, RunConfig]
    base: dict[str, Any] = field(default_factory=dict)
    #: figure -> RSA label -> key of the same run with the other master order (``--compare-master-order``)
    other_order: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"figures": self.figures, "base": self.base, "lines": self.lines, "other_order": self.other_order, "runs": {k: json.loads(c.to_json()) for k, c in self.runs.items()}},
            indent=2,
        )


#: Panels whose RSA lines ``--compare-master-order`` also runs with the other master order.
ORDER_FIGURES = ("fig3", "fig4a", "fig4b", "fig5a", "fig5b", "fig10a", "fig10b")


def other_order(order: str) -> str:
    return "gauss-seidel" if order == "jacobi" else "jacobi"


def plan(figures: Iterable[str], base: Mapping[str, Any], *, compare_order: bool = False) -> Plan:
    """The runs behind ``figures`` (figure names, not aliases) with ``base`` settings on top of the presets.

    With ``compare_order``, the RSA lines of the :data:`ORDER_FIGURES` among
    them are also planned with the other master order.
    """
    names = [f for f in figures if f in FIGURES]
    lines: dict[str, dict[str, str]] = {}
    runs: dict[str, RunConfig] = {}
    others: dict[str, dict[str, str]] = {}
    for name in names:
        lines[name] = {}
        for label, config in figure_configs(FIGURES[name], base).items():
            key = run_key(config)
            lines[name][label] = key
            runs.setdefault(key, config)
            if compare_order and name in ORDER_FIGURES and config.method == "rsa":
                flipped = config.replace(master_order=other_order(config.master_order))
                others.setdefault(name, {})[label] = run_key(flipped)
                runs.setdefault(run_key(flipped), flipped)
    return Plan(names, lines, runs, dict(base), others)


def base_settings(
    dataset: str, data_dir: str | None = None, quick: bool = False, iterations: int | None = None,
    eval_every: int | None = None, overrides: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Settings every run of a reproduction gets on top of the presets."""
    base: dict[str, Any] = {"dataset": dataset, "data_dir": data_dir}
    if quick:
        base.update(iterations=QUICK_ITERATIONS, eval_every=QUICK_EVAL_EVERY)
    if iterations is not None:
        base["iterations"] = iterations
        base["eval_every"] = max(1, min(PAPER_SETTING["eval_every"], iterations // 10))
    if eval_every is not None:
        base["eval_every"] = eval_every
    for item in overrides or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        base[key] = value.strip()
    RunConfig().replace(**{k: v for k, v in base.items()})  # unknown keys and bad values fail here
    return base


