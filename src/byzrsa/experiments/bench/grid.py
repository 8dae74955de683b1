"""The robustness benchmark's grids: the data types, a user's grid from TOML, and their description.

A :class:`Grid` names what every run shares (``base``: dataset, model,
workers, iterations, schedule, ...) and the axes it crosses: heterogeneity
levels, methods (each with its pre-aggregators, momentum and starting
hyper-parameters), attacks, numbers q of Byzantine workers, the f each rule
is told (``declared_f``: ``"q"`` or an offset ``"q+1"`` or a number) and
seeds. :class:`Tuning` says how the step size (and lambda for RSA, tau for
centered clipping) is tuned on a validation split: every searched value is a
method's starting value times a factor of the grid. :mod:`~byzrsa.experiments.bench`
turns a grid into run configs; settings are layered ``base`` < level <
method < attack < (q, f, seed), with keys as in
:func:`byzrsa.config.config_from_dict`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from byzrsa.errors import ConfigError

__all__ = [
    "LEVELS",
    "AttackSpec",
    "Grid",
    "Level",
    "MethodSpec",
    "Published",
    "Tuning",
    "describe_grid",
    "grid_from_dict",
    "load_grid",
    "resolve_f",
]


@dataclass(frozen=True)
class MethodSpec:
    """A method of the grid: its label, its settings (``method``, ``pre``, ``momentum``, ``lr``, ``lam``,
    ``method.tau`` ...; the starting point of tuning) and, optionally, its own tuning factors per key
    (``{"lr": (0.5, 1, 2)}``; an empty tuple leaves a key untuned)."""

    label: str
    settings: Mapping[str, Any]
    tune: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, label: str, method: str, lr: float, **settings: Any) -> MethodSpec:
        """The row ``label``: ``method`` starting at step size ``lr`` with further ``settings``."""
        return cls(label, {"method": method, "lr": lr, **settings})


@dataclass(frozen=True)
class AttackSpec:
    """An attack column: its label and settings (``attack`` and its options, e.g. ``attack.epsilon``)."""

    label: str
    settings: Mapping[str, Any]

    @classmethod
    def of(cls, label: str, name: str, **options: Any) -> AttackSpec:
        """The column ``label``: attack ``name`` with ``options`` (``AttackSpec.of("IPM 0.1", "ipm", epsilon=0.1)``)."""
        return cls(label, {"attack": name, **{f"attack.{k}": v for k, v in options.items()}})


@dataclass(frozen=True)
class Level:
    """A heterogeneity level: its label and split settings (``split``, ``dirichlet_alpha``)."""

    label: str
    settings: Mapping[str, Any]


@dataclass(frozen=True)
class Tuning:
    """How hyper-parameters are tuned (docs/protocol.md, "Beyond the paper").

    For each method and level, every combination of ``start * factor`` over the
    tuned keys is run on the grid's attacks, q and f values with the ``seeds``,
    trained on the training data minus a stratified ``validation`` fraction and
    scored on that fraction (never the test set). The point with the best worst
    case over the attacks (mean over the tuning seeds) wins; ties go to the point
    nearest the start. ``lr`` is tuned for every method, ``lam`` for RSA and
    ``method.tau`` for centered clipping, unless a method gives its own factors.
    When a chosen value lies at an edge of its key's range, the range is extended
    past that edge by the same factor and the new points are run, up to
    ``extensions`` times per key; a value still at an edge after that is flagged.
    """

    validation: float = 0.2
    seeds: tuple[int, ...] = (0,)
    lr: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    lam: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    tau: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    #: iterations of a tuning run (None: the grid's)
    iterations: int | None = None
    #: how many times each tuned key's range may be extended past an edge where its chosen value lies
    extensions: int = 3


@dataclass(frozen=True)
class Published:
    """Published results of the experiment a grid mirrors, for one (level, q, attack) of the grid.

    ``values``: method label -> the published final accuracy; ``order``: (better,
    worse) pairs the source states without a number; ``source``: paper and
    table or figure (or released logs); ``differences``: how byzrsa's setting
    differs (dataset, model, seeds, ...). Labels are the grid's.
    """

    level: str
    q: int
    attack: str
    source: str
    values: Mapping[str, float] = field(default_factory=dict)
    order: tuple[tuple[str, str], ...] = ()
    differences: str = ""


@dataclass(frozen=True)
class Grid:
    """A benchmark grid: see the module docstring."""

    name: str
    description: str
    base: Mapping[str, Any]
    levels: tuple[Level, ...]
    methods: tuple[MethodSpec, ...]
    attacks: tuple[AttackSpec, ...]
    byzantine: tuple[int, ...] = (4,)
    declared_f: tuple[int | str, ...] = ("q",)
    seeds: tuple[int, ...] = (0, 1, 2)
    tuning: Tuning = field(default_factory=Tuning)
    notes: tuple[str, ...] = ()
    published: tuple[Published, ...] = ()

    def with_changes(self, **changes: Any) -> Grid:
        return replace(self, **changes)


def resolve_f(f: int | str | None, q: int) -> int:
    """The declared f of a grid entry for q Byzantine workers: ``"q"``, ``"q+k"``, ``"q-k"`` or a number."""
    if f is None:
        return q
    if isinstance(f, bool):
        raise ConfigError(f"declared_f entries are 'q', 'q+K', 'q-K' or numbers, got {f!r}")
    if isinstance(f, int):
        return f
    text = str(f).replace(" ", "").lower()
    if text == "q":
        return q
    if text.startswith("q") and text[1:2] in "+-" and text[2:].isdigit():
        return max(0, q + int(text[1:]))
    if text.isdigit():
        return int(text)
    raise ConfigError(f"declared_f entries are 'q', 'q+K', 'q-K' or numbers, got {f!r}")


# --------------------------------------------------------------------------- levels

IID = Level("iid", {"split": "iid"})
DIR1 = Level("dirichlet 1.0", {"split": "dirichlet", "dirichlet_alpha": 1.0})
DIR01 = Level("dirichlet 0.1", {"split": "dirichlet", "dirichlet_alpha": 0.1})
BY_LABEL = Level("by-label", {"split": "by-label"})
SORTED = Level("sorted shards", {"split": "sorted-shards"})
#: The four heterogeneity levels of the benchmark, from iid to one digit per worker pair.
LEVELS: tuple[Level, ...] = (IID, DIR1, DIR01, BY_LABEL)


# --------------------------------------------------------------------------- user grids (TOML)

_GRID_KEYS = {"name", "description", "base", "levels", "methods", "attacks", "byzantine", "declared_f", "seeds",
              "tuning", "notes"}
_TUNING_KEYS = {"validation", "seeds", "lr", "lam", "tau", "iterations", "extensions"}


def _numbers(value: Any, what: str, kind: type = float) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"grid: {what} must be a non-empty list, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
            raise ConfigError(f"grid: {what} must hold {'integers' if kind is int else 'numbers'}, got {v!r}")
        if kind is float and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"grid: {what} must be positive, got {v!r}")
        if kind is int and v < 0:
            raise ConfigError(f"grid: {what} must be >= 0, got {v!r}")
        out.append(kind(v))
    return tuple(out)


def _level(item: Any) -> Level:
    if isinstance(item, str):
        named = {lv.label.replace(" ", "-"): lv for lv in (*LEVELS, SORTED)}
        key = item.strip().lower().replace(" ", "-")
        if key in named:
            return named[key]
        if key.startswith("dirichlet-"):
            try:
                alpha = float(key[10:])
                return Level(f"dirichlet {alpha:g}", {"split": "dirichlet", "dirichlet_alpha": alpha})
            except ValueError:
                pass
        raise ConfigError(f"grid: unknown level {item!r}: use iid, dirichlet-ALPHA, by-label, sorted-shards or a table")
    if isinstance(item, Mapping):
        settings = {k: v for k, v in item.items() if k != "label"}
        label = item.get("label") or ", ".join(f"{k}={v}" for k, v in settings.items())
        return Level(str(label), settings)
    raise ConfigError(f"grid: a level is a name or a table, got {item!r}")


def _entry(item: Any, key: str) -> tuple[str | None, dict[str, Any], dict[str, tuple[float, ...]]]:
    if isinstance(item, str):
        return None, {key: item}, {}
    if not isinstance(item, Mapping) or key not in item:
        raise ConfigError(f"grid: each of the {key}s is a name or a table with a {key!r} key, got {item!r}")
    settings = {k: v for k, v in item.items() if k not in ("label", "tune")}
    tune_raw = item.get("tune", {})
    if not isinstance(tune_raw, Mapping):
        raise ConfigError(f"grid: {key} tune must be a table of factor lists, got {tune_raw!r}")
    tune = {k: (tuple(_numbers(v, f"tune.{k}")) if v else ()) for k, v in tune_raw.items()}
    return item.get("label"), settings, tune


def grid_from_dict(data: Mapping[str, Any], default_name: str = "user") -> Grid:
    """A :class:`Grid` from a TOML table (see docs/bench.md for the format); unknown keys are an error."""
    unknown = sorted(set(data) - _GRID_KEYS)
    if unknown:
        raise ConfigError(f"grid: unknown key(s) {', '.join(unknown)}; valid keys are {', '.join(sorted(_GRID_KEYS))}")
    for key in ("levels", "methods", "attacks"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise ConfigError(f"grid: {key!r} must be a non-empty list")
    methods = []
    for item in data["methods"]:
        label, settings, tune = _entry(item, "method")
        methods.append(MethodSpec(str(label or settings["method"]), settings, tune))
    attacks = []
    for item in data["attacks"]:
        label, settings, _ = _entry(item, "attack")
        name = settings["attack"] if isinstance(settings["attack"], str) else settings["attack"].get("name")
        attacks.append(AttackSpec(str(label or name), settings))
    tuning_raw = data.get("tuning", {})
    if not isinstance(tuning_raw, Mapping) or set(tuning_raw) - _TUNING_KEYS:
        raise ConfigError(f"grid: [tuning] takes {', '.join(sorted(_TUNING_KEYS))}")
    tuning = Tuning(
        validation=float(tuning_raw.get("validation", Tuning.validation)),
        seeds=_numbers(tuning_raw["seeds"], "tuning.seeds", int) if "seeds" in tuning_raw else Tuning.seeds,
        **{k: _numbers(tuning_raw[k], f"tuning.{k}") for k in ("lr", "lam", "tau") if k in tuning_raw},
        iterations=int(tuning_raw["iterations"]) if "iterations" in tuning_raw else None,
        extensions=_numbers([tuning_raw["extensions"]], "tuning.extensions", int)[0]
        if "extensions" in tuning_raw else Tuning.extensions,
    )
    if not 0.0 < tuning.validation < 1.0:
        raise ConfigError(f"grid: tuning.validation must be a fraction in (0, 1), got {tuning.validation}")
    base = data.get("base", {})
    if not isinstance(base, Mapping):
        raise ConfigError("grid: [base] must be a table of run settings")
    declared = data.get("declared_f", ["q"])
    if not isinstance(declared, list) or not declared:
        raise ConfigError("grid: declared_f must be a non-empty list such as [\"q\", \"q+1\", 4]")
    for f in declared:
        resolve_f(f, 0)
    return Grid(
        name=str(data.get("name", default_name)),
        description=str(data.get("description", "a user grid")),
        base=dict(base),
        levels=tuple(_level(item) for item in data["levels"]),
        methods=tuple(methods),
        attacks=tuple(attacks),
        byzantine=_numbers(data.get("byzantine", [4]), "byzantine", int),
        declared_f=tuple(declared),
        seeds=_numbers(data.get("seeds", [0, 1, 2]), "seeds", int),
        tuning=tuning,
        notes=tuple(str(n) for n in data.get("notes", ())),
    )


def load_grid(path: str | Path) -> Grid:
    """Read a user grid from a TOML file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read grid file {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"grid file {path} is not valid UTF-8 TOML: {exc}") from None
    return grid_from_dict(data, default_name=path.stem)


# --------------------------------------------------------------------------- description

def _value(value: Any) -> str:
    """A setting as a person writes it: 0.001 not 0.0010000000000000002, bucketing(s=2) not a dict's repr."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        options = {k: v for k, v in value.items() if k != "name"}
        inner = ", ".join(f"{k}={_value(v)}" for k, v in options.items())
        return f"{value.get('name', '')}({inner})" if "name" in value else "{" + inner + "}"
    if isinstance(value, (list, tuple)):
        return " + ".join(_value(v) for v in value) if value else "none"
    return str(value)


def _numbers_text(values: Any) -> str:
    return ", ".join(_value(v) for v in values)


def _settings(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in settings.items())


def describe_grid(grid: Grid) -> str:
    """A grid as readable text (``byzrsa bench --list``, ``--dry-run``)."""
    t = grid.tuning
    lines = [
        f"{grid.name}: {grid.description}",
        f"  base: {_settings(grid.base)}",
        f"  levels: {'; '.join(f'{lv.label} ({_settings(lv.settings)})' for lv in grid.levels)}",
        f"  q: {', '.join(map(str, grid.byzantine))}; declared f: {', '.join(map(str, grid.declared_f))}; "
        f"seeds: {', '.join(map(str, grid.seeds))}",
        "  methods:",
        *(f"    - {m.label}: {_settings(m.settings)}"
          + (f"; {'; '.join(f'{k} tuned x {_numbers_text(v)}' if v else f'{k} not tuned' for k, v in m.tune.items())}"
             if m.tune else "")
          for m in grid.methods),
        f"  attacks: {'; '.join(f'{a.label} ({_settings(a.settings)})' for a in grid.attacks)}",
        f"  tuning: validation {t.validation:g} of the training data, seeds {_numbers_text(t.seeds)}; factors: lr x "
        f"{_numbers_text(t.lr)}; lam (RSA) x {_numbers_text(t.lam)}; tau (cclip) x {_numbers_text(t.tau)}; "
        f"up to {t.extensions} extension(s) per key past an edge"
        + (f", {t.iterations} iterations" if t.iterations else ""),
        *(f"  note: {n}" for n in grid.notes),
        *(f"  published: {p.level}, q={p.q}, {p.attack}: {p.source}" for p in grid.published),
    ]
    return "\n".join(lines)
