"""Run configuration: one frozen dataclass, loadable from TOML or JSON, overridable by ``key=value``.

The settings of the run itself (workers, step size, data, engine) are fields of
:class:`RunConfig`. Each component (the method's rule, the attack, the model,
every pre-aggregator of the chain) brings its own options, which live with it::

    method = "geomed"            # or a table: [method] name = "geomed"  tol = 1e-6
    attack = "alie"              #             [attack] name = "alie"    z = 1.5
    pre = ["bucketing"]          #             [[pre]]  name = "bucketing" s = 2
    [model]
    name = "mlp"
    hidden = 256

and on the command line ``--attack alie --set attack.z=1.5`` (or the derived
flag ``--attack-z 1.5``). Unknown top-level keys are an error here; a
component's options are checked against its registry entry where it is built
(:func:`byzrsa.engines.common.build_problem`), and the config written next to
a run's results holds every option, defaults filled in.

This module depends on nothing of byzrsa but :mod:`byzrsa.errors`.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from byzrsa.errors import ConfigError, did_you_mean

__all__ = ["RunConfig", "COMPONENTS", "SCHEDULES", "MASTER_ORDERS", "load_config", "apply_overrides", "check_settings", "config_from_dict", "config_warnings"]

SCHEDULES = ("sqrt", "constant")
MASTER_ORDERS = ("jacobi", "gauss-seidel")
# The fields naming a component, each with the field holding its options.
COMPONENTS = {
    "method": "method_options", "attack": "attack_options", "model": "model_options",
    "topology": "topology_options", "vr": "vr_options",
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Defaults follow docs/protocol.md (the paper's setting).

    ``*_options`` hold a component's options by name (treat them as read-only);
    ``pre`` is the chain of pre-aggregators and ``pre_options`` their options, in order.
    """

    # method: "rsa", "ideal-sgd", "sgd" or any aggregation rule; its options (the rule's) beside it
    method: str = "rsa"
    method_options: dict[str, Any] = field(default_factory=dict)
    norm: str = "l1"
    lam: float = 0.07
    lr: float = 0.001
    lr_schedule: str = "sqrt"
    master_order: str = "jacobi"
    mu: float = 0.01
    momentum: float = 0.0
    # worker-side variance reduction ("none", "saga", "lsvrg"; byzrsa.estimators); its options beside it
    vr: str = "none"
    vr_options: dict[str, Any] = field(default_factory=dict)
    # number of outliers the rule and pre-aggregators are told (None: the number of Byzantine workers)
    agg_f: int | None = None
    pre: tuple[str, ...] = ()
    pre_options: tuple[dict[str, Any], ...] = ()
    # attack
    attack: str = "none"
    attack_options: dict[str, Any] = field(default_factory=dict)
    byzantine: int = 0
    # data
    dataset: str = "mnist-sample"
    data_dir: str | None = None
    # raw 0..255, as the paper's step size, lambda and mu were tuned for (unit pixels with a = 0.001 barely train)
    pixels: str = "raw"
    split: str = "iid"
    dirichlet_alpha: float = 0.5
    heterogeneity: float = 0.0
    # fraction of the training data held out as a validation set that replaces the test set (0: off; tuning)
    validation: float = 0.0
    # model and training
    model: str = "softmax"
    model_options: dict[str, Any] = field(default_factory=dict)
    # decentralized learning: the graph of nodes ("none": the paper's master and workers); its options beside it
    topology: str = "none"
    topology_options: dict[str, Any] = field(default_factory=dict)
    workers: int = 20
    batch_size: int = 32
    iterations: int = 5000
    eval_every: int = 100
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    # modules imported before the components are looked up (each registers its own entries)
    plugins: str = ""
    # engine
    engine: str = "sim"
    backend: str = "gloo"
    timeout: float = 60.0
    checkpoint_every: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The nested form written to config.json and read back by :func:`config_from_dict`."""
        data: dict[str, Any] = {}
        for f in fields(self):
            if f.name in COMPONENTS.values() or f.name == "pre_options":
                continue
            value = getattr(self, f.name)
            if f.name in COMPONENTS:
                value = {"name": value, **getattr(self, COMPONENTS[f.name])}
            elif f.name == "pre":
                value = [{"name": name, **options} for name, options in zip(self.pre, self.pre_options)]
            data[f.name] = value
        return data

    def to_json(self) -> str:
        # NaN and inf are not JSON; write them as strings and read them back in config_from_dict.
        return json.dumps(_json_safe(self.to_dict()), indent=2, sort_keys=True)

    def to_toml(self) -> str:
        """The config as a TOML file that :func:`load_config` reads back (unset optional keys left out)."""
        lines = []
        for key, value in self.to_dict().items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes``; keys as in :func:`config_from_dict` (``attack="alie"``, ``**{"attack.z": 1}``).

        Naming another component drops the old one's options unless new ones come with it.
        """
        data = self.to_dict()
        for key in COMPONENTS:
            if key in changes and isinstance(changes[key], str) and changes[key] != getattr(self, key):
                data[key] = {"name": changes.pop(key)}
        if isinstance(changes.get("pre"), (str, list, tuple)):
            data["pre"] = changes.pop("pre")
        return config_from_dict({**data, **changes})

    @property
    def regular(self) -> int:
        return self.workers - self.byzantine

    @property
    def declared_f(self) -> int:
        """The number of outliers the robust rule is told."""
        return self.byzantine if self.agg_f is None else self.agg_f


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


_HINTS = get_type_hints(RunConfig)
_SCALARS = {f.name for f in fields(RunConfig)} - set(COMPONENTS.values()) - set(COMPONENTS) - {"pre", "pre_options"}
KEYS = tuple(f.name for f in fields(RunConfig) if f.name not in COMPONENTS.values() and f.name != "pre_options")


def _coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (from TOML, JSON or a command line string) to the scalar field's type."""
    hint = _HINTS[key]
    args = [a for a in get_args(hint) if a is not type(None)]
    kind, optional = (args[0] if args else hint), bool(args)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"config key {key!r} cannot be empty")
    try:
        if isinstance(value, bool):
            raise ValueError
        if kind is float:
            return float(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if not isinstance(value, (str, int, float)):
            raise TypeError
        return str(value)
    except (TypeError, ValueError, OverflowError):
        what = {float: "a number", int: "an integer"}.get(kind, "a string")
        raise ConfigError(f"config key {key!r} must be {what}, got {value!r}") from None


def _component(key: str, value: Any) -> tuple[str, dict[str, Any]]:
    """A component given as a name or as a table ``{name = ..., option = ...}``."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping):
        if not isinstance(value.get("name"), str):
            raise ConfigError(f"config key {key!r}: a table must give the {key}'s name, e.g. {{name = \"...\"}}")
        return value["name"], {k: v for k, v in value.items() if k != "name"}
    raise ConfigError(f"config key {key!r} must be a name or a table with a name, got {value!r}")


def _chain(value: Any) -> tuple[tuple[str, ...], tuple[dict[str, Any], ...]]:
    """The pre-aggregator chain: ``"a,b"``, ``["a", "b"]`` or a list of tables with names."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip() and v.strip().lower() != "none"]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config key 'pre' must be a list of pre-aggregators, got {value!r}")
    parts = [_component("pre", v) for v in value]
    names = [n for n, _ in parts]
    if len(set(names)) != len(names):
        raise ConfigError(f"pre: each pre-aggregator may appear once in the chain, got {', '.join(names)}")
    return tuple(names), tuple(o for _, o in parts)


# The first release's flat keys and where each moved when options went to their components:
# flat key -> (new dotted key, the component that owns the option).
MOVED = {
    "attack_c": ("attack.c", "same-value"),
    "attack_sigma": ("attack.sigma", "sign-flip"),
    "attack_copy_from": ("attack.copy_from", "copy"),
    "attack_std": ("attack.std", "gaussian"),
    "attack_value": ("attack.value", "non-finite"),
    "geomed_tol": ("method.tol", "geomed"),
    "geomed_max_iter": ("method.max_iter", "geomed"),
    "multi_krum_k": ("method.k", "multi-krum"),
    "hidden": ("model.hidden", "mlp"),
}


def _unknown_keys(unknown: list[str], given: Mapping[str, Any]) -> str:
    """The one-line error for unknown top-level keys: where a moved key went, or the closest valid key."""
    for key in unknown:
        if key in MOVED:
            new, owner = MOVED[key]
            table, option = new.split(".")
            value = given[key]
            if isinstance(value, str):  # from --set: a number stays bare
                value = value if re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?|nan|inf|-inf", value.strip()) else json.dumps(value)
            else:
                value = _toml_value(value) if isinstance(value, (bool, int, float)) else "..."
            return (
                f"config key {key!r} of the first release is now {new}, an option of the {table}: "
                f"write [{table}] name = \"{owner}\" {option} = {value} in TOML, or --set {new}={value}"
            )
    hint = did_you_mean(unknown[0], KEYS) if len(unknown) == 1 else ""
    return f"unknown config key(s) {', '.join(map(repr, unknown))}{hint}: valid keys are {', '.join(KEYS)}"


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a config from a mapping (a TOML table, a config.json, ``--set`` pairs).

    Keys are the fields of :class:`RunConfig`, components as names or tables,
    and dotted option keys: ``attack.z``, ``method.tol``, ``model.hidden``,
    ``pre.bucketing.s``. Unknown keys are a :class:`ConfigError`.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a table of settings (a mapping), got {type(data).__name__}")
    # A run's config.json records what produced it beside its settings; it is not a setting.
    plain = {k: v for k, v in data.items() if "." not in str(k) and k != "provenance"}
    dotted = {str(k): v for k, v in data.items() if "." in str(k)}
    unknown = sorted(set(map(str, plain)) - set(KEYS))
    if unknown:
        raise ConfigError(_unknown_keys(unknown, plain))
    values: dict[str, Any] = {k: _coerce(k, v) for k, v in plain.items() if k in _SCALARS}
    for key, options_key in COMPONENTS.items():
        if key in plain:
            values[key], values[options_key] = _component(key, plain[key])
    if "pre" in plain:
        values["pre"], values["pre_options"] = _chain(plain["pre"])
    pre_names = list(values.get("pre", ()))
    pre_options = [dict(o) for o in values.get("pre_options", ())]
    for key, value in dotted.items():
        head, _, rest = key.partition(".")
        if head in COMPONENTS and rest and "." not in rest:
            values.setdefault(COMPONENTS[head], {})
            values[COMPONENTS[head]] = {**values[COMPONENTS[head]], rest: value}
        elif head == "pre" and rest.count(".") == 1:
            name, option = rest.split(".")
            if name not in pre_names:
                raise ConfigError(f"{key}: {name!r} is not in the pre-aggregator chain ({', '.join(pre_names) or 'empty'})")
            pre_options[pre_names.index(name)][option] = value
        else:
            raise ConfigError(
                f"unknown config key {key!r}: options are method.OPTION, attack.OPTION, model.OPTION, topology.OPTION, vr.OPTION or pre.NAME.OPTION"
            )
    if pre_names:
        values["pre_options"] = tuple(pre_options)
    return RunConfig(**values)


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML (or JSON, e.g. a run's config.json) config file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid UTF-8 {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings, got a {type(data).__name__}")
    if isinstance(data.get("run"), dict) and len(data) == 1:
        data = data["run"]  # allow a [run] table
    return config_from_dict(data)


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key=value`` strings (the CLI's ``--set``) to a config."""
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        head, dot, rest = key.strip().partition(".")
        key = head.replace("-", "_") + dot + rest.replace("-", "_")
        changes[key] = value.strip()
    return config.replace(**changes) if changes else config


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


FLOAT32_MAX = 3.4028234663852886e38
# Whole-number settings must fit a signed 64-bit integer: TOML's range, and what torch and numpy index with.
_INT_LIMIT = 2**63
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def max_threads() -> int:
    """The most torch threads a run may ask for: 4 per core of this machine, and at least 64."""
    return max(64, 4 * (os.cpu_count() or 1))


def config_warnings(c: RunConfig) -> list[str]:
    """Settings that are valid but probably not what was meant, one line each (the CLI prints them)."""
    warnings = []
    if c.byzantine > 0 and c.attack == "none":
        warnings.append(
            f"byzantine = {c.byzantine} with attack none: the {c.byzantine} Byzantine workers behave like regular ones "
            "(name an attack with --attack)"
        )
    if c.byzantine == 0 and c.attack != "none":
        warnings.append(f"attack {c.attack} with byzantine = 0: no worker attacks (set --byzantine to at least 1)")
    return warnings


def check_settings(c: RunConfig) -> None:
    """Reject impossible values of the run's own settings (components are checked where they are built).

    Every number is checked for range and finiteness, every whole number
    against the 64-bit range, names against their choices, the device string
    and the plugin module names for their form (whether a CUDA device exists is
    checked where the run is built).
    """
    for f in fields(c):
        value = getattr(c, f.name)
        if isinstance(value, int) and not isinstance(value, bool):
            _check(abs(value) < _INT_LIMIT, f"{f.name} = {value} is out of range: it must be below 2**63")
    # A component's whole-number options too (their own checks run where the component is built).
    owned = [(f"method {c.method}", c.method_options), (f"attack {c.attack}", c.attack_options),
             (f"model {c.model}", c.model_options), (f"topology {c.topology}", c.topology_options), (f"vr {c.vr}", c.vr_options), *((f"pre {n}", o) for n, o in zip(c.pre, c.pre_options))]
    for owner, options in owned:
        for name, value in options.items():
            if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
                value = int(value)
            _check(
                not (isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _INT_LIMIT),
                f"{owner} option {name} = {value} is out of range: it must be below 2**63",
            )
    _check(c.workers >= 1, f"workers must be >= 1, got {c.workers}")
    _check(
        0 <= c.byzantine < c.workers,
        f"byzantine must satisfy 0 <= q < m: got q={c.byzantine} with m={c.workers} workers (at least one must be regular)",
    )
    for key in ("lam", "mu"):
        value = getattr(c, key)
        _check(value >= 0 and math.isfinite(value), f"{key} must be a finite number >= 0, got {value}")
    for key in ("lr", "dirichlet_alpha", "timeout"):
        value = getattr(c, key)
        _check(value > 0 and math.isfinite(value), f"{key} must be a finite number > 0, got {value}")
    _check(0.0 <= c.momentum < 1.0, f"momentum must be in [0, 1), got {c.momentum}")
    if c.dtype == "float32":  # they scale the run's tensors: beyond float32's range every step is inf
        for key in ("lr", "lam", "mu"):
            value = getattr(c, key)
            _check(value <= FLOAT32_MAX, f"{key} = {value:g} overflows float32 (largest 3.4e+38): use --dtype float64")
    _check(c.batch_size <= 2**31, f"batch_size must be at most 2**31, got {c.batch_size}")
    for key in ("batch_size", "iterations", "eval_every"):
        _check(getattr(c, key) >= 1, f"{key} must be >= 1, got {getattr(c, key)}")
    _check(c.seed >= 0, f"seed must be >= 0, got {c.seed}")
    _check(
        c.threads is None or 1 <= c.threads <= max_threads(),
        f"threads must be between 1 and {max_threads()} (4 per core of this machine), got {c.threads}",
    )
    _check(0.0 <= c.heterogeneity <= 1.0, f"heterogeneity must be in [0, 1], got {c.heterogeneity}")
    _check(0.0 <= c.validation < 1.0, f"validation must be a fraction in [0, 1), got {c.validation}")
    _check(c.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {c.checkpoint_every}")
    _check(c.agg_f is None or c.agg_f >= 0, f"agg_f must be >= 0, got {c.agg_f}")
    for key, valid in (
        ("pixels", ("raw", "unit")),
        ("dtype", ("float32", "float64")),
        ("engine", ("sim", "dist")),
        ("backend", ("gloo", "nccl")),
        ("lr_schedule", SCHEDULES),
        ("master_order", MASTER_ORDERS),
    ):
        value = getattr(c, key)
        _check(value in valid, f"unknown {key} {value!r}{did_you_mean(value, valid)}: choose one of {', '.join(valid)}")
    device = c.device
    _check(
        device == "cpu" or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()),
        f"unknown device {device!r}: use cpu, cuda or cuda:N",
    )
    for name in (n.strip() for n in c.plugins.split(",")):
        _check(
            not name or _MODULE.fullmatch(name) is not None,
            f"plugins: {name!r} is not a Python module name (expected e.g. mypackage.rules, comma-separated)",
        )
    _check(
        c.data_dir is None or (c.data_dir.strip() != "" and "\x00" not in c.data_dir),
        f"data_dir must be a folder path, got {c.data_dir!r}",
    )
    for f in fields(c):  # any other float (a field added later) must at least be a number
        value = getattr(c, f.name)
        _check(not (isinstance(value, float) and math.isnan(value)), f"{f.name} must be a number, got nan")
    _check(
        not (c.engine == "dist" and c.backend == "nccl" and not device.startswith("cuda")),
        "backend nccl moves GPU tensors only: add --device cuda, or use --backend gloo on CPU",
    )
