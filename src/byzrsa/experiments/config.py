"""Run configuration: one frozen dataclass, loadable from TOML, overridable by ``key=value``.

Unknown or misspelled keys are an error, never silently dropped, and
:func:`validate` rejects impossible settings before any training starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from byzrsa.errors import ConfigError

__all__ = ["RunConfig", "METHODS", "RULE_OF_METHOD", "load_config", "apply_overrides", "validate", "config_from_dict"]

# Each gradient-aggregation method and the rule of byzrsa.aggregators it uses.
RULE_OF_METHOD: dict[str, str] = {
    "ideal-sgd": "mean",
    "sgd": "mean",
    "geomed": "geomed",
    "krum": "krum",
    "median": "median",
    "trimmed-mean": "trimmed-mean",
    "multi-krum": "multi-krum",
}
METHODS: tuple[str, ...] = ("rsa", *RULE_OF_METHOD)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Defaults follow PROTOCOL.md (the paper's setting)."""

    # method
    method: str = "rsa"
    norm: str = "l1"
    lam: float = 0.07
    lr: float = 0.001
    lr_schedule: str = "sqrt"
    master_order: str = "jacobi"
    mu: float = 0.01
    # robust-aggregation rule settings (None: f is the number of Byzantine workers, k = m - f)
    agg_f: int | None = None
    multi_krum_k: int | None = None
    geomed_tol: float = 1e-7
    geomed_max_iter: int = 1000
    # attack
    attack: str = "none"
    byzantine: int = 0
    attack_c: float = 100.0
    attack_sigma: float = -4.0
    attack_copy_from: int = 0
    attack_std: float = 200.0
    attack_value: float = math.nan
    # data
    dataset: str = "mnist-sample"
    data_dir: str | None = None
    pixels: str = "unit"
    split: str = "iid"
    dirichlet_alpha: float = 0.5
    heterogeneity: float = 0.0
    # model and training
    model: str = "softmax"
    hidden: int = 64
    workers: int = 20
    batch_size: int = 32
    iterations: int = 5000
    eval_every: int = 100
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None
    # engine
    engine: str = "sim"
    backend: str = "gloo"
    timeout: float = 60.0
    checkpoint_every: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        # NaN is not JSON; write it as the string "nan" and read it back in config_from_dict.
        data = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.to_dict().items()}
        return json.dumps(data, indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> RunConfig:
        return config_from_dict({**self.to_dict(), **changes})

    @property
    def regular(self) -> int:
        return self.workers - self.byzantine


_HINTS = get_type_hints(RunConfig)
_FIELDS = {f.name for f in fields(RunConfig)}


def _field_type(key: str) -> tuple[type, bool]:
    """The base type of a field and whether it may be None."""
    hint = _HINTS[key]
    args = [a for a in get_args(hint) if a is not type(None)]
    return (args[0] if args else hint), bool(args)


def _coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (from TOML, JSON or a command line string) to the field's type."""
    kind, optional = _field_type(key)
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
        return str(value)
    except (TypeError, ValueError):
        what = {float: "a number", int: "an integer"}.get(kind, "a string")
        raise ConfigError(f"config key {key!r} must be {what}, got {value!r}") from None


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Build a config from a mapping; unknown keys are a :class:`ConfigError`."""
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))}: valid keys are {', '.join(sorted(_FIELDS))}")
    return RunConfig(**{k: _coerce(k, v) for k, v in data.items()})


def load_config(path: str | Path) -> RunConfig:
    """Read a TOML (or JSON, e.g. a run's config.json) config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}") from None
    if isinstance(data.get("run"), dict) and len(data) == 1:
        data = data["run"]  # allow a [run] table
    return config_from_dict(data)


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key=value`` strings (the CLI's ``--set``) to a config."""
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        if key not in _FIELDS:
            raise ConfigError(f"--set: unknown config key {key!r}; valid keys are {', '.join(sorted(_FIELDS))}")
        changes[key] = value.strip()
    return config.replace(**changes)


def validate(config: RunConfig) -> None:
    """Reject impossible settings with one clear :class:`ConfigError`, before any training."""
    from byzrsa.aggregators import check_rule
    from byzrsa.attacks import check_attack
    from byzrsa.data import SCHEMES, SOURCES
    from byzrsa.methods import MASTER_ORDERS, SCHEDULES
    from byzrsa.models import MODELS
    from byzrsa.penalties import parse_norm

    c = config

    def one_of(key: str, value: str, valid: tuple[str, ...] | list[str]) -> None:
        if value not in valid:
            raise ConfigError(f"unknown {key} {value!r}: choose one of {', '.join(valid)}")

    one_of("method", c.method, METHODS)
    one_of("dataset", c.dataset, SOURCES)
    one_of("split", c.split, SCHEMES)
    one_of("pixels", c.pixels, ("raw", "unit"))
    one_of("model", c.model, MODELS)
    one_of("dtype", c.dtype, ("float32", "float64"))
    one_of("engine", c.engine, ("sim", "dist"))
    one_of("lr_schedule", c.lr_schedule, SCHEDULES)
    one_of("master_order", c.master_order, MASTER_ORDERS)
    one_of("backend", c.backend, ("gloo", "nccl"))
    if not (c.device == "cpu" or c.device.startswith("cuda")):
        raise ConfigError(f"unknown device {c.device!r}: use cpu or cuda (cuda:N)")
    if c.engine == "dist" and c.backend == "nccl" and not c.device.startswith("cuda"):
        raise ConfigError("backend nccl moves GPU tensors only: add --device cuda, or use --backend gloo on CPU")
    parse_norm(c.norm)
    if c.workers < 1:
        raise ConfigError(f"workers must be >= 1, got {c.workers}")
    if not 0 <= c.byzantine < c.workers:
        raise ConfigError(
            f"byzantine must satisfy 0 <= q < m: got q={c.byzantine} with m={c.workers} workers (at least one must be regular)"
        )
    for key in ("lam", "mu"):
        value = getattr(c, key)
        if not value >= 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    for key in ("lr", "geomed_tol", "dirichlet_alpha"):
        value = getattr(c, key)
        if not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")
    for key in ("batch_size", "iterations", "eval_every", "geomed_max_iter", "hidden"):
        if getattr(c, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(c, key)}")
    if c.threads is not None and c.threads < 1:
        raise ConfigError(f"threads must be >= 1, got {c.threads}")
    if not 0.0 <= c.heterogeneity <= 1.0:
        raise ConfigError(f"heterogeneity must be in [0, 1], got {c.heterogeneity}")
    if c.timeout <= 0 or c.checkpoint_every < 0:
        raise ConfigError("timeout must be > 0 and checkpoint_every >= 0")
    rule = RULE_OF_METHOD.get(c.method)
    if rule is not None and c.method != "ideal-sgd":
        f = c.byzantine if c.agg_f is None else c.agg_f
        check_rule(rule, c.workers, f)
        if c.method == "multi-krum" and c.multi_krum_k is not None and not 1 <= c.multi_krum_k <= c.workers:
            raise ConfigError(f"multi_krum_k must be in 1..{c.workers}, got {c.multi_krum_k}")
    check_attack(c.attack, c.regular, c.byzantine, attack_params(c))


def attack_params(config: RunConfig) -> dict[str, Any]:
    """The keyword arguments of the configured attack, read from its config fields."""
    from byzrsa.attacks import ATTACKS

    attack = ATTACKS.get(config.attack)
    if attack is None:
        return {}
    return {kw: getattr(config, key) for kw, key in attack.params.items()}
