"""What every engine shares: building the problem from a config, random streams, minibatches, metrics.

An engine only decides where the rows of the ``(m, d)`` state live and how
messages travel; the data, the model, the rule and the random streams are built
here, identically for all of them. That is what lets the distributed engine
reproduce the simulator's trajectory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byzrsa.aggregators import RULES, Rule, check_rule
from byzrsa.attacks import Attack, AttackContext, check_attack, get_attack
from byzrsa.config import RunConfig, check_settings
from byzrsa.data import SCHEMES, SOURCES, Dataset, load_dataset, partition
from byzrsa.data.validation import validation_split
from byzrsa.decentralized import check_graph_setting
from byzrsa.engines.blocking import block_rows, row_blocks
from byzrsa.errors import ConfigError, did_you_mean
from byzrsa.estimators import ESTIMATORS, check_estimator, table_bytes
from byzrsa.methods import Method, aggregation_step, get_method, rsa_master_step
from byzrsa.models import MODELS, Model, build_model, evaluate
from byzrsa.penalties import parse_norm
from byzrsa.preaggregators import PRE_AGGREGATORS, PreAggregator, apply_chain, check_chain
from byzrsa.topologies import Topology, build_topology

__all__ = [
    "CHECKPOINT_NAME",
    "config_identity",
    "Parts",
    "Problem",
    "AggregatorState",
    "build_parts",
    "validate",
    "build_problem",
    "derive_generator",
    "BatchSampler",
    "local_variance",
    "BATCH_BLOCK",
]

CHECKPOINT_NAME = "checkpoint.pt"
# Config fields that do not change the trajectory (or may differ between machines and runs).
LOCAL_FIELDS = frozenset(
    {"data_dir", "device", "threads", "engine", "timeout", "checkpoint_every", "eval_every", "iterations"}
)


def config_identity(config: RunConfig) -> dict[str, Any]:
    """The config fields that define the trajectory (every field but :data:`LOCAL_FIELDS`), JSON-safe."""
    from byzrsa import __version__

    settings = json.loads(config.to_json())  # non-finite numbers as strings, as a JSON round trip gives them
    return {"byzrsa": __version__, **{k: v for k, v in sorted(settings.items()) if k not in LOCAL_FIELDS}}


# Minibatch indices are drawn this many iterations at a time (one randint call per block).
BATCH_BLOCK = 64


def derive_generator(seed: int, purpose: str, index: int = 0) -> torch.Generator:
    """An independent CPU ``torch.Generator`` for one purpose ("batches", "attack", ...) and index.

    The stream depends only on (seed, purpose, index), never on how many other
    streams exist or which process creates it.
    """
    words = np.random.SeedSequence([seed, zlib.crc32(purpose.encode()), index]).generate_state(2)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


class BatchSampler:
    """One worker's minibatches: ``batch_size`` indices drawn uniformly, with replacement, from its shard.

    (The authors' code takes 32 consecutive samples at a random offset; uniform
    draws are the textbook stochastic gradient and need no shuffled storage.)
    """

    def __init__(self, shard: Tensor, batch_size: int, generator: torch.Generator) -> None:
        self.shard = shard
        self.batch_size = batch_size
        self.generator = generator
        self._block = torch.empty(0, batch_size, dtype=torch.long)
        self._pos = 0

    def _refill(self) -> None:
        if self._pos == self._block.shape[0]:
            local = torch.randint(len(self.shard), (BATCH_BLOCK, self.batch_size), generator=self.generator)
            self._block, self._pos = self.shard[local], 0

    def next(self) -> Tensor:
        self._refill()
        self._pos += 1
        return self._block[self._pos - 1]

    def next_block(self) -> Tensor:
        """The index rows left in the current block, ``(n, batch_size)``; the sampler moves past them.

        The same rows, in the same order, as ``n`` calls of :meth:`next`: the
        simulator stacks every worker's block once per ``BATCH_BLOCK`` iterations.
        """
        self._refill()
        rows = self._block[self._pos :]
        # Handed over: the sampler keeps none of it (the simulator keeps the stacked copy; at
        # m = 10 000 the blocks are 98 MB), and its next call draws the next block, as it would.
        self._block, self._pos = torch.empty(0, self.batch_size, dtype=torch.long), 0
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "block": self._block.clone(), "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._block, self._pos = state["block"].clone(), int(state["pos"])


@dataclass
class AggregatorState:
    """What a gradient-aggregation server carries from round to round: the pre-aggregators'
    random streams and the previous aggregate (for rules with ``uses_previous``)."""

    generators: list[torch.Generator]
    previous: Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"generators": [g.get_state() for g in self.generators], "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for g, saved in zip(self.generators, state["generators"]):
            g.set_state(saved)
        self.previous = state["previous"]


@dataclass
class Parts:
    """The components of a run, built once from its config by :func:`build_parts`, for every engine.

    ``config`` is the resolved config: every component's options filled in
    from its registry entry, as written to config.json.
    """

    config: RunConfig
    method: Method
    model: Model
    p: float  # RSA norm exponent
    attack: Attack
    attack_options: dict[str, Any]
    rule: Rule | None  # the gradient method's rule (None for RSA)
    rule_options: dict[str, Any]
    chain: tuple[tuple[PreAggregator, dict[str, Any]], ...]
    topology: Topology | None = None  # the graph of a decentralized run (None: master and workers)

    @property
    def is_rsa(self) -> bool:
        return self.method.is_rsa

    @property
    def attacked(self) -> bool:
        """Whether Byzantine workers send anything the server uses (never under Ideal SGD)."""
        return self.config.byzantine > 0 and not self.method.regular_only

    @property
    def needs_own(self) -> bool:
        """Whether the Byzantine workers compute their true values (the attack uses them)."""
        return self.attacked and (self.attack.needs_own or self.attack.label_map is not None)

    def computes(self, worker: int) -> bool:
        """Whether ``worker`` computes a gradient each round: every regular one, a Byzantine one if it must."""
        return worker < self.config.regular or self.needs_own

    def labels(self, worker: int, y: Tensor) -> Tensor:
        """The labels ``worker`` trains on: its own, or the data attack's poisoned ones for a Byzantine worker."""
        if worker >= self.config.regular and self.attack.label_map is not None and self.attacked:
            return self.attack.label_map(y, self.model.num_classes)
        return y

    def dropout_generators(self, workers: range | list[int]) -> list[torch.Generator] | None:
        """One "dropout" stream per worker for a model that draws random numbers in training, else None.

        Worker i's masks come from its own stream alone, so a dist worker draws what the simulator's row i draws.
        """
        if not getattr(self.model, "stochastic", False):
            return None
        return [derive_generator(self.config.seed, "dropout", i) for i in workers]

    def aggregator_state(self) -> AggregatorState:
        seed = self.config.seed
        return AggregatorState([derive_generator(seed, f"pre:{entry.name}") for entry, _ in self.chain])

    def aggregate(self, messages: Tensor, state: AggregatorState) -> Tensor:
        """The server's aggregate of ``(n, d)`` messages: the pre-aggregator chain, then the rule."""
        rows = apply_chain(self.chain, messages, self.config.declared_f, state.generators)
        options = dict(self.rule_options)
        if self.rule.uses_previous:
            options["previous"] = state.previous
        out = self.rule(rows, self.config.declared_f, **options)
        if self.rule.uses_previous:
            state.previous = out
        return out

    def check_rows(self, n: int) -> None:
        """Raise :class:`ConfigError` when the rule cannot run on ``n`` messages (dead workers)."""
        rows = check_chain(self.chain, n, self.config.declared_f)
        check_rule(self.rule.name, rows, self.config.declared_f, self.rule_options)

    def defence(self, x0: Tensor, alpha: float, state: AggregatorState | None) -> Callable[[Tensor], Tensor]:
        """The server's next model as a function of a round's ``(m, d)`` messages: what optimised attacks probe.

        Probing runs on a copy of ``state`` (a fresh one if None), so it never
        advances the server's own random streams or centre.
        """
        c = self.config
        if self.is_rsa:
            return lambda messages: rsa_master_step(x0, messages, lam=c.lam, p=self.p, alpha=alpha, mu=c.mu)

        def probe(messages: Tensor) -> Tensor:
            scratch = copy.deepcopy(state) if state is not None else self.aggregator_state()
            return aggregation_step(x0, messages, lambda rows: self.aggregate(rows, scratch), alpha=alpha)

        return probe

    def attack_context(self, generators: list[torch.Generator], state: dict[str, Any]) -> AttackContext:
        c = self.config
        return AttackContext(
            generators=generators, workers=c.workers, byzantine=c.byzantine, f=c.declared_f,
            lam=c.lam, p=self.p, state=state,
        )


def validate(config: RunConfig) -> RunConfig:
    """Check ``config`` against the registries and return it resolved (every option filled in).

    Raises :class:`ConfigError` for any setting or component that cannot run;
    needs no data (a model's shape-dependent checks happen when it is built).
    """
    return _resolve(config)[0]


def import_plugins(config: RunConfig) -> None:
    """Import the config's plugin modules (comma-separated), which register their components on import.

    Every process of a run calls this before it looks a component up, so a
    rule or attack from a user's module works in the dist engine's workers too.
    Any failure is one line naming the plugin (:mod:`byzrsa.engines.plugins`).
    """
    from byzrsa.engines.plugins import import_plugin_modules

    import_plugin_modules(config.plugins)


def _resolve(c: RunConfig) -> tuple[RunConfig, Method, Rule | None, tuple[tuple[PreAggregator, dict[str, Any]], ...]]:
    check_settings(c)
    import_plugins(c)
    method = get_method(c.method)
    parse_norm(c.norm)
    rule = RULES[method.rule] if method.rule is not None else None
    if rule is None and c.method_options:
        raise ConfigError(f"method {c.method!r} has no options (RSA is set by --norm, --lam, --master-order)")
    rule_options = rule.resolve(c.method_options, "method") if rule is not None else {}
    if c.pre and method.is_rsa:
        raise ConfigError("pre-aggregators apply to the messages of gradient-aggregation methods, not to RSA")
    if c.momentum and method.is_rsa:
        raise ConfigError("momentum applies to gradient-aggregation methods; RSA's workers keep their own models")
    chain = tuple(
        (PRE_AGGREGATORS[n], PRE_AGGREGATORS[n].resolve(o, "pre-aggregator")) for n, o in zip(c.pre, c.pre_options)
    )
    if rule is not None and not method.regular_only and c.topology == "none":
        check_rule(rule.name, check_chain(chain, c.workers, c.declared_f), c.declared_f, rule_options)
    topology_options = check_graph_setting(c, method, rule_options)
    attack_options = check_attack(c.attack, c.regular, c.byzantine, c.attack_options)
    _check_dtype_range(c, attack_options)
    model = MODELS.get(c.model)
    model_options = model.resolve(c.model_options, "model") if model is not None else dict(c.model_options)
    vr_options = ESTIMATORS[c.vr].resolve(c.vr_options, "estimator")
    resolved = dataclasses.replace(
        c, method_options=rule_options, attack_options=attack_options, model_options=model_options,
        pre_options=tuple(o for _, o in chain), vr_options=vr_options, topology_options=topology_options,
    )
    return resolved, method, rule, chain


def _check_dtype_range(c: RunConfig, attack_options: dict[str, Any]) -> None:
    """A finite attack constant beyond the run dtype's range is refused (both engines would otherwise differ)."""
    largest = torch.finfo(run_dtype(c)).max
    for name, value in attack_options.items():
        if isinstance(value, float) and math.isfinite(value) and abs(value) > largest:
            raise ConfigError(
                f"attack option {name} = {value:g} overflows {c.dtype} (largest {largest:.3g}): "
                "use --dtype float64, or inf for an infinite value"
            )


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_memory(config: RunConfig, dataset: Dataset, dim: int | None, model: Model | None = None) -> None:
    """Refuse, with the estimate, a run whose data, (m, d) state, minibatches (and --vr table) cannot fit in memory."""
    item = run_dtype(config).itemsize
    sample = math.prod(dataset.train_x.shape[1:])
    data = 2 * (dataset.train_x.numel() + dataset.test_x.numel()) * item  # as loaded and featurised
    # The blocked simulator (engines/sim.py): the (m, d) iterates or message buffer (and the momenta),
    # plus one block's minibatch, gradients and penalties; the minibatch indices of BATCH_BLOCK
    # iterations, stacked (the samplers' own blocks live until they are stacked).
    row = (3 * (dim or 0) + config.batch_size * sample) * item
    state = (config.workers + 1) * (dim or 0) * item * (2 if config.momentum else 1) + block_rows(row) * row
    batches = 2 * config.workers * config.batch_size * BATCH_BLOCK * 8
    # every worker's estimator state (an upper bound: as if every worker computed)
    vr = table_bytes(config.vr, model, dataset.train_x.shape[0], config.workers, item) if model is not None else 0
    need = data + state + batches + vr
    available = _available_bytes()
    gib = lambda n: n / 2**30  # noqa: E731
    if available is not None and vr and ESTIMATORS[config.vr].table and need > available:
        raise ConfigError(
            f"--vr {config.vr} needs about {gib(vr):.1f} GiB for its state ({dataset.train_x.shape[0]} samples x "
            f"{model.num_classes if hasattr(model, 'sample_residuals') else model.dim} numbers, {item} bytes each) "
            f"besides the run's {gib(need - vr):.1f} GiB, but {gib(available):.1f} GiB are available: use --vr lsvrg "
            f"(two vectors per worker) or a smaller model"
        )
    if available is not None and need > available:
        raise ConfigError(
            f"this run needs about {gib(need):.1f} GiB (data {gib(data):.1f}, (m, d) state {gib(state):.1f}, "
            f"minibatches {gib(batches):.1f}) but {gib(available):.1f} GiB are available: reduce workers, "
            "batch_size or the model"
        )


def build_parts(config: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> Parts:
    """Check ``config`` and build its method, model, rule, pre-aggregators and attack from the registries.

    Every component is looked up once, here, and its options checked against
    its entry; every engine builds its parts with this function.
    """
    c, method, rule, chain = _resolve(config)
    try:
        model = build_model(c.model, input_shape, num_classes, c.model_options)
    except (RuntimeError, MemoryError) as exc:  # a model too large for this machine
        if "alloc" not in str(exc).lower() and not isinstance(exc, MemoryError):
            raise
        raise ConfigError(f"model {c.model!r} with {c.model_options} does not fit in memory: reduce its size") from None
    check_estimator(c.vr, model)
    attack = get_attack(c.attack)
    topology = (
        build_topology(c.topology, c.workers, c.byzantine, c.topology_options, c.seed) if c.topology != "none" else None
    )
    return Parts(
        c, method, model, parse_norm(c.norm), attack, c.attack_options, rule, c.method_options, chain, topology
    )


@dataclass
class Problem:
    """A config turned into tensors: the :class:`Parts` and the data on the device, with its shards."""

    parts: Parts
    dataset: Dataset
    train_x: Tensor  # featurised, on device, run dtype
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    shards: list[Tensor]  # m CPU int64 index tensors into train_x
    dtype: torch.dtype
    device: torch.device

    def __getattr__(self, name: str) -> Any:
        # The parts' fields and facts (config, model, p, attack, is_rsa, needs_own, ...) read through.
        if name == "parts":
            raise AttributeError(name)
        return getattr(self.parts, name)

    def init_vector(self) -> Tensor:
        gen = derive_generator(self.config.seed, "init")
        return self.model.init(gen, self.dtype).to(self.device)

    def sampler(self, worker: int) -> BatchSampler:
        gen = derive_generator(self.config.seed, "batches", worker)
        return BatchSampler(self.shards[worker], self.config.batch_size, gen)

    def local_samples(self, worker: int) -> tuple[Tensor, Tensor]:
        """Worker ``worker``'s whole shard: featurised samples ``(J, ...)`` and the labels it trains on (--vr)."""
        index = self.shards[worker].to(self.device)
        return self.train_x.index_select(0, index), self.labels(worker, self.train_y.index_select(0, index))

    def attack_generators(self) -> list[torch.Generator]:
        c = self.config
        return [derive_generator(c.seed, "attack", j) for j in range(c.regular, c.workers)]

    def gather(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Minibatch tensors ``(k, b, *sample_shape)`` and ``(k, b)`` for index rows ``(k, b)``.

        ``sample_shape`` is one featurised sample's shape (``train_x.shape[1:]``):
        images stay ``(C, H, W)`` for the models that want them. A model with a
        ``gather_rows`` method (softmax regression) gets its samples as it asks for
        them instead: :class:`byzrsa.models.Rows`, read a few workers at a time.
        """
        flat = indices.reshape(-1).to(self.device)
        y = self.train_y.index_select(0, flat).view(indices.shape)
        lazy = getattr(getattr(self, "model", None), "gather_rows", None)
        if lazy is not None:
            return lazy(self.train_x, flat, (*indices.shape, *self.train_x.shape[1:])), y
        x = self.train_x.index_select(0, flat).view(*indices.shape, *self.train_x.shape[1:])
        return x, y

    def metrics(self, w: Tensor, locals_: Tensor | None = None) -> dict[str, float]:
        """Test accuracy and loss, training loss of ``w``; the RSA local-iterate variance if given."""
        accuracy, test_loss = evaluate(self.model, w, self.test_x, self.test_y)
        _, train_loss = evaluate(self.model, w, self.train_x, self.train_y)
        row = {"accuracy": accuracy, "test_loss": test_loss, "train_loss": train_loss}
        row["variance"] = local_variance(locals_, w) if locals_ is not None else float("nan")
        return row


def local_variance(regular: Tensor, x0: Tensor) -> float:
    """Sum of squared distances of the regular workers' iterates and x0 to their mean (docs/protocol.md).

    In float64, a block of rows at a time (:mod:`byzrsa.engines.blocking`): two passes over the
    rows and no ``(r + 1, d)`` copy (at m = 10 000 softmax the copy and its squares were 3 x 190 MB).
    """
    rows = block_rows(2 * regular.shape[1] * 8)
    centre = x0.to(torch.float64, copy=True)
    for block in row_blocks(regular.shape[0], rows):
        centre = centre + regular[block].double().sum(dim=0)
    centre /= regular.shape[0] + 1
    total = float((x0.double() - centre).square_().sum())
    for block in row_blocks(regular.shape[0], rows):
        total += float((regular[block].double() - centre).square_().sum())
    return total


def run_dtype(config: RunConfig) -> torch.dtype:
    return torch.float64 if config.dtype == "float64" else torch.float32


def run_device(config: RunConfig) -> torch.device:
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but this machine has no CUDA device")
    return device


def build_problem(config: RunConfig, dataset: Dataset | None = None) -> Problem:
    """Check ``config``, load and split the data, and build the parts (:func:`build_parts`)."""
    check_settings(config)
    if config.dataset not in SOURCES:
        hint = did_you_mean(config.dataset, SOURCES)
        raise ConfigError(f"unknown dataset {config.dataset!r}{hint}: choose one of {', '.join(SOURCES)}")
    if config.split not in SCHEMES:
        raise ConfigError(
            f"unknown split {config.split!r}{did_you_mean(config.split, SCHEMES)}: choose one of {', '.join(SCHEMES)}"
        )
    device, dtype = run_device(config), run_dtype(config)
    import_plugins(config)
    get_method(config.method)  # a misspelled method fails before the data loads
    get_attack(config.attack)
    if dataset is None:
        dataset = load_dataset(
            config.dataset,
            pixels=config.pixels,
            data_dir=config.data_dir,
            seed=config.seed,
            workers=config.workers,
            heterogeneity=config.heterogeneity,
        )
    _check_memory(config, dataset, None)  # before the model: the minibatches alone may not fit
    parts = build_parts(config, tuple(dataset.train_x.shape[1:]), dataset.num_classes)
    _check_memory(config, dataset, parts.model.dim, parts.model)
    if config.validation:  # tuning: the test set is replaced by samples held out of the training set
        dataset = validation_split(dataset, config.validation)
    groups = dataset.train_groups.numpy() if dataset.train_groups is not None else None
    shards = partition(
        dataset.train_y.numpy(), config.workers, config.split, config.seed, alpha=config.dirichlet_alpha, groups=groups,
        byzantine=config.byzantine,
    )

    def prepare(x: Tensor) -> Tensor:
        return parts.model.featurize(x.to(dtype)).to(device)

    return Problem(
        parts=parts,
        dataset=dataset,
        train_x=prepare(dataset.train_x),
        train_y=dataset.train_y.to(device),
        test_x=prepare(dataset.test_x),
        test_y=dataset.test_y.to(device),
        shards=[torch.as_tensor(s, dtype=torch.long) for s in shards],
        dtype=dtype,
        device=device,
    )
