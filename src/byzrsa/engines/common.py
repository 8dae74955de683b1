"""What every engine shares: building the problem from a config, random streams, minibatches, metrics.

An engine only decides where the rows of the ``(m, d)`` state live and how
messages travel; the data, the model, the rule and the random streams are built
here, identically for all of them. That is what lets the distributed engine
reproduce the simulator's trajectory.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byzrsa.aggregators import get_rule
from byzrsa.attacks import Attack, get_attack
from byzrsa.data import Dataset, load_dataset, partition
from byzrsa.experiments.config import RULE_OF_METHOD, RunConfig, attack_params, validate
from byzrsa.models import Model, build_model, evaluate
from byzrsa.penalties import parse_norm

__all__ = ["Problem", "build_problem", "derive_generator", "BatchSampler", "local_variance", "BATCH_BLOCK"]

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
        rows, self._pos = self._block[self._pos :], self._block.shape[0]
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "block": self._block.clone(), "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._block, self._pos = state["block"].clone(), int(state["pos"])


@dataclass
class Problem:
    """A config turned into tensors: data on the device, shards, model, rule, attack."""

    config: RunConfig
    dataset: Dataset
    model: Model
    train_x: Tensor  # featurised, on device, run dtype
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    shards: list[Tensor]  # m CPU int64 index tensors into train_x
    p: float  # RSA norm exponent
    attack: Attack
    attack_kwargs: dict[str, Any]
    aggregate: Callable[[Tensor], Tensor] | None  # the baseline's rule, with f and options bound
    dtype: torch.dtype
    device: torch.device

    @property
    def is_rsa(self) -> bool:
        return self.config.method == "rsa"

    @property
    def needs_own(self) -> bool:
        """Whether Byzantine workers must compute their true values (the attack uses them)."""
        return self.config.byzantine > 0 and self.config.method != "ideal-sgd" and self.attack.needs_own

    def init_vector(self) -> Tensor:
        gen = derive_generator(self.config.seed, "init")
        return self.model.init(gen, self.dtype).to(self.device)

    def sampler(self, worker: int) -> BatchSampler:
        gen = derive_generator(self.config.seed, "batches", worker)
        return BatchSampler(self.shards[worker], self.config.batch_size, gen)

    def attack_generators(self) -> list[torch.Generator]:
        c = self.config
        return [derive_generator(c.seed, "attack", j) for j in range(c.regular, c.workers)]

    def gather(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Minibatch tensors ``(k, b, *sample_shape)`` and ``(k, b)`` for index rows ``(k, b)``.

        ``sample_shape`` is one featurised sample's shape (``train_x.shape[1:]``):
        images stay ``(C, H, W)`` for the models that want them.
        """
        flat = indices.reshape(-1).to(self.device)
        x = self.train_x.index_select(0, flat).view(*indices.shape, *self.train_x.shape[1:])
        return x, self.train_y.index_select(0, flat).view(indices.shape)

    def metrics(self, w: Tensor, locals_: Tensor | None = None) -> dict[str, float]:
        """Test accuracy and loss, training loss of ``w``; the RSA local-iterate variance if given."""
        accuracy, test_loss = evaluate(self.model, w, self.test_x, self.test_y)
        _, train_loss = evaluate(self.model, w, self.train_x, self.train_y)
        row = {"accuracy": accuracy, "test_loss": test_loss, "train_loss": train_loss}
        row["variance"] = local_variance(locals_, w) if locals_ is not None else float("nan")
        return row


def local_variance(regular: Tensor, x0: Tensor) -> float:
    """Sum of squared distances of the regular workers' iterates and x0 to their mean (PROTOCOL.md)."""
    points = torch.cat([regular, x0.unsqueeze(0)])
    return float(((points - points.mean(dim=0)) ** 2).sum())


def build_problem(config: RunConfig, dataset: Dataset | None = None) -> Problem:
    """Validate ``config``, load and split the data, and build model, rule and attack."""
    validate(config)
    if dataset is None:
        dataset = load_dataset(
            config.dataset,
            pixels=config.pixels,
            data_dir=config.data_dir,
            seed=config.seed,
            workers=config.workers,
            heterogeneity=config.heterogeneity,
        )
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        from byzrsa.errors import ConfigError

        raise ConfigError("--device cuda was asked for, but this machine has no CUDA device")
    num_features = int(np.prod(dataset.train_x.shape[1:]))
    model = build_model(config.model, num_features, dataset.num_classes, hidden=config.hidden)
    groups = dataset.train_groups.numpy() if dataset.train_groups is not None else None
    shards = partition(
        dataset.train_y.numpy(), config.workers, config.split, config.seed, alpha=config.dirichlet_alpha, groups=groups
    )
    aggregate = None
    if config.method != "rsa":
        rule = get_rule(RULE_OF_METHOD[config.method])
        f = config.byzantine if config.agg_f is None else config.agg_f
        options: dict[str, Any] = {}
        if rule.name == "geomed":
            options = {"tol": config.geomed_tol, "max_iter": config.geomed_max_iter}
        elif rule.name == "multi-krum" and config.multi_krum_k is not None:
            options = {"k": config.multi_krum_k}
        aggregate = lambda x, rule=rule, f=f, options=options: rule(x, f, **options)  # noqa: E731

    def prepare(x: Tensor) -> Tensor:
        return model.featurize(x.to(dtype)).to(device)

    return Problem(
        config=config,
        dataset=dataset,
        model=model,
        train_x=prepare(dataset.train_x),
        train_y=dataset.train_y.to(device),
        test_x=prepare(dataset.test_x),
        test_y=dataset.test_y.to(device),
        shards=[torch.as_tensor(s, dtype=torch.long) for s in shards],
        p=parse_norm(config.norm),
        attack=get_attack(config.attack),
        attack_kwargs=attack_params(config),
        aggregate=aggregate,
        dtype=dtype,
        device=device,
    )
