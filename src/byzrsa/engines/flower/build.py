"""Everything the Flower engine needs from byzrsa, built from one :class:`~byzrsa.config.RunConfig`.

This is the engine's only point of contact with the builder
(:func:`byzrsa.engines.common.build_problem`): the client app and the
strategies see a :class:`Job`, never the config machinery, so a change in how
byzrsa builds a run is absorbed here.

Flower's run config (``[tool.flwr.app.config]`` in the app's
``pyproject.toml``, overridden by ``flwr run --run-config``) is a flat table
of scalars. :func:`split_run_config` reads it in two parts:

* keys with a hyphen, and ``overwrite``, are the engine's own settings
  (:class:`FlowerSettings`: ``fraction-train``, ``round-timeout``, ...);
* every other key is a byzrsa setting, exactly as in a byzrsa TOML file or
  ``--set``: ``method``, ``lam``, ``attack``, ``byzantine``, ``workers``,
  ``iterations``, and dotted component options (``"attack.sigma" = -4.0``,
  ``"pre.bucketing.s" = 2``; ``pre`` as a comma-separated string).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from byzrsa.config import RunConfig, config_from_dict
from byzrsa.engines.common import AggregatorState, BatchSampler, Problem, build_problem, derive_generator
from byzrsa.errors import ConfigError

__all__ = ["FlowerSettings", "Job", "split_run_config", "flower_run_config", "load_job"]


@dataclass(frozen=True)
class FlowerSettings:
    """The Flower engine's own settings (hyphenated keys of the run config).

    Attributes
    ----------
    fraction_train : float
        Fraction of the m clients asked to train each round, in (0, 1]; at
        least one is always asked. 1.0 (every client) reproduces the simulator.
    round_timeout : float
        Seconds the server waits for a round's replies (0: the byzrsa config's
        ``timeout``). A reply that has not arrived by then is an absent term.
    discovery_timeout : float
        Seconds the server waits for all m clients to say which worker they are.
    poll_interval : float
        Seconds between the server's pulls of replies (Flower's own
        ``send_and_receive`` waits 3 s between pulls in a deployment).
    weight_by_shard : bool
        Baselines with the mean: weight each gradient by its worker's shard
        size (Flower's FedAvg weighting). byzrsa's rules are unweighted, and
        robust rules refuse weights.
    rescale_sum : bool
        RSA under client sampling: scale the master's penalty sum by
        m / (messages that arrived), an unbiased estimate of the full sum
        when clients are sampled uniformly. Off by default (absent terms).
    results_dir : str
        Folder for config.json, metrics.csv, summary.json and x0.pt ("" = none).
    save_trajectory : bool
        Also write x0 after every round (trajectory.pt, (rounds + 1, d)).
    overwrite : bool
        Replace a run already in ``results_dir`` (``byzrsa run --overwrite``);
        without it such a folder is refused before the run starts.
    """

    fraction_train: float = 1.0
    round_timeout: float = 0.0
    discovery_timeout: float = 120.0
    poll_interval: float = 0.01
    weight_by_shard: bool = False
    rescale_sum: bool = False
    results_dir: str = ""
    save_trajectory: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction_train <= 1.0:
            raise ConfigError(f"fraction-train must be in (0, 1], got {self.fraction_train}")
        for key in ("round_timeout", "discovery_timeout", "poll_interval"):
            value = getattr(self, key)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{key.replace('_', '-')} must be a finite number >= 0, got {value}")

    @staticmethod
    def keys() -> tuple[str, ...]:
        # Every name but overwrite has an underscore, so its key has a hyphen: byzrsa's own keys never do.
        return tuple(f.name.replace("_", "-") for f in fields(FlowerSettings))


def _settings(values: Mapping[str, Any]) -> FlowerSettings:
    known = FlowerSettings.keys()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown Flower engine setting(s) {', '.join(map(repr, unknown))}: valid are {', '.join(known)}")
    kinds = {f.name: f.type for f in fields(FlowerSettings)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        kind = kinds[name]
        try:
            if kind in ("bool", bool):
                if isinstance(value, str):
                    value = value.strip().lower() in ("1", "true", "yes")
                out[name] = bool(value)
            elif kind in ("float", float):
                out[name] = float(value)
            else:
                out[name] = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"Flower engine setting {key!r} has the wrong type: {value!r}") from None
    return FlowerSettings(**out)


def _is_engine_key(key: str) -> bool:
    return "-" in key or key in _PLAIN_ENGINE_KEYS


_PLAIN_ENGINE_KEYS = ("overwrite",)  # named as byzrsa run's flag, which has no hyphen


def split_run_config(run_config: Mapping[str, Any]) -> tuple[RunConfig, FlowerSettings]:
    """A Flower run config as (byzrsa config, engine settings); unknown keys are a :class:`ConfigError`."""
    engine = {k: v for k, v in run_config.items() if _is_engine_key(k)}
    byzrsa = {k: v for k, v in run_config.items() if not _is_engine_key(k)}
    return config_from_dict(byzrsa), _settings(engine)


def flower_run_config(config: RunConfig, settings: FlowerSettings | None = None) -> dict[str, Any]:
    """The flat Flower run config for ``config`` (and ``settings``): the inverse of :func:`split_run_config`.

    Settings left at None (``agg_f``, ``data_dir``, ``threads``) are left out:
    Flower's config values cannot be empty.
    """
    flat: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if key in ("method", "attack", "model") and isinstance(value, dict):
            flat[key] = value["name"]
            flat.update({f"{key}.{k}": v for k, v in value.items() if k != "name"})
        elif key == "pre":
            flat["pre"] = ",".join(item["name"] for item in value)
            for item in value:
                flat.update({f"pre.{item['name']}.{k}": v for k, v in item.items() if k != "name"})
        else:
            flat[key] = value
    flat = {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in flat.items() if v is not None}
    if settings is not None:
        flat.update({k.replace("_", "-"): v for k, v in asdict(settings).items()})
    return flat


class Job:
    """A run as the Flower engine sees it: the built :class:`~byzrsa.engines.common.Problem` and its settings.

    Every method is a thin call into byzrsa's builder, components and step
    functions' inputs; no update rule lives here.
    """

    def __init__(self, problem: Problem, settings: FlowerSettings) -> None:
        if problem.config.vr != "none":  # the clients would silently send plain gradients
            raise ConfigError(f"--vr {problem.config.vr} runs on the sim and dist engines; the Flower engine does not "
                              "offer variance reduction yet: use --vr none")
        self.problem = problem
        self.settings = settings
        self.config: RunConfig = problem.config  # resolved: every option filled in
        self.dtype: torch.dtype = problem.dtype
        self.device: torch.device = problem.device
        self.d = int(self.init_vector().numel())
        self.fingerprint = hashlib.sha256(self.config.to_json().encode()).hexdigest()[:16]

    # facts -------------------------------------------------------------------------------------
    @property
    def workers(self) -> int:
        return self.config.workers

    @property
    def regular(self) -> int:
        return self.config.regular

    @property
    def is_rsa(self) -> bool:
        return bool(self.problem.is_rsa)

    @property
    def p(self) -> float:
        return float(self.problem.p)

    @property
    def attacked(self) -> bool:
        """Whether Byzantine workers send anything the server uses (never under Ideal SGD)."""
        return bool(self.problem.attacked)

    @property
    def omniscient(self) -> bool:
        """The attack reads the regular messages of the round: it runs in the server-side wrapper."""
        return self.attacked and bool(self.problem.attack.reads_regular)

    @property
    def needs_own(self) -> bool:
        return bool(self.problem.needs_own)

    @property
    def needs_defence(self) -> bool:
        return self.attacked and bool(self.problem.attack.needs_defence)

    def role(self, worker: int) -> str:
        """``regular``, ``byzantine``, or ``idle`` (a Byzantine worker whose messages are never used)."""
        if worker < self.regular:
            return "regular"
        return "byzantine" if self.attacked else "idle"

    def computes(self, worker: int) -> bool:
        """Whether ``worker`` does the honest computation (every regular one, a Byzantine one if its attack needs it)."""
        return self.role(worker) != "idle" and bool(self.problem.computes(worker))

    # state and data ----------------------------------------------------------------------------
    def init_vector(self) -> Tensor:
        return self.problem.init_vector()

    def sampler(self, worker: int) -> BatchSampler:
        return self.problem.sampler(worker)

    def gradient(self, worker: int, w: Tensor, sampler: BatchSampler) -> Tensor:
        """Worker ``worker``'s stochastic gradient at ``w (d,)`` on its next minibatch (poisoned labels for a data attack)."""
        x, y = self.problem.gather(sampler.next().unsqueeze(0))
        if worker >= self.regular:
            y = self.problem.labels(worker, y)
        return self.problem.model.grad(w.unsqueeze(0), x, y)[0]

    def shard_fingerprint(self, worker: int) -> str:
        """A digest of worker ``worker``'s training shard (indices and labels): different data files show up."""
        index = self.problem.shards[worker]
        labels = self.problem.train_y.index_select(0, index.to(self.device)).cpu()
        digest = hashlib.sha256(index.numpy().tobytes() + labels.numpy().tobytes())
        return digest.hexdigest()[:16]

    # attacks -----------------------------------------------------------------------------------
    def attack_generator(self, worker: int) -> torch.Generator:
        return derive_generator(self.config.seed, "attack", worker)

    def sampling_generator(self) -> torch.Generator:
        return derive_generator(self.config.seed, "flower-sampling")

    def attack_context(self, generators: list[torch.Generator], state: dict[str, Any]) -> Any:
        return self.problem.attack_context(generators, state)

    def forge(self, regular: Tensor, own: Tensor, ctx: Any) -> Tensor:
        """The attack's ``(len(own), d)`` messages."""
        return self.problem.attack(regular, own, ctx, **self.problem.attack_options)

    def defence(self, x0: Tensor, alpha: float, state: AggregatorState | None) -> Callable[[Tensor], Tensor]:
        return self.problem.defence(x0, alpha, state)

    # aggregation -------------------------------------------------------------------------------
    def aggregator_state(self) -> AggregatorState:
        return self.problem.aggregator_state()

    def aggregate(self, messages: Tensor, state: AggregatorState) -> Tensor:
        return self.problem.aggregate(messages, state)

    def check_rows(self, n: int) -> None:
        self.problem.check_rows(n)

    @property
    def regular_only(self) -> bool:
        """Ideal SGD: the server aggregates the regular workers' messages alone."""
        return bool(self.problem.method.regular_only)

    # evaluation --------------------------------------------------------------------------------
    def metrics(self, w: Tensor, locals_: Tensor | None = None) -> dict[str, float]:
        return self.problem.metrics(w, locals_)


@lru_cache(maxsize=4)
def _cached(frozen: str) -> Job:
    config, settings = split_run_config(json.loads(frozen))
    return Job(build_problem(config), settings)


def load_job(run_config: Mapping[str, Any]) -> Job:
    """The :class:`Job` of a Flower run config, built once per process (the data loads once)."""
    return _cached(json.dumps(dict(run_config), sort_keys=True, default=str))
