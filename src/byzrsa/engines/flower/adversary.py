r"""A simulation of an omniscient adversary: a server-side wrapper around a strategy.

An attack whose registry entry reads the regular workers' messages of the round
(``reads_regular``: copy, negative-sum, ALIE, IPM, min-max, mimic, optimised
attacks, ...) needs to see them before the Byzantine clients answer. A real
Flower deployment gives no client that view, so byzrsa *simulates* the
omniscient adversary on the server: once a round's replies are collected,
:class:`OmniscientAdversary` replaces the replies of the designated Byzantine
clients (the last q partition ids) by what the attack makes of the regular
messages, and only then does the wrapped strategy take its step. The server's
rule never learns which rows were replaced.

What the attack sees is what the simulator gives it:

* ``regular``: one row per regular worker, in worker order. A regular worker
  whose reply is absent this round (not sampled, failed, timed out) keeps the
  row of its last message (zeros before its first), so that an attack naming
  worker r (copy) reads worker r, as in the dist engine; with full
  participation these are exactly the round's messages.
* ``own``: each replying Byzantine client's true value (its honest message, sent
  when the attack needs it: ``needs_own``), or zeros;
* the context: each Byzantine worker's own random stream (held here, derived
  from the seed as the simulator derives it), the server's model, and for
  optimised attacks the defence (:meth:`byzrsa.engines.common.Parts.defence`,
  probing a copy of the server's aggregator state).

Lies go to the Byzantine clients whose reply arrived; one that failed stays
absent. Non-omniscient attacks (sign-flip, gaussian, same-value, label-flip)
never come here: they run on the Byzantine clients themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from byzrsa.engines.flower.strategy import ByzrsaStrategy, RobustStrategy, RoundMessages

__all__ = ["OmniscientAdversary"]

log = logging.getLogger("flwr")


class OmniscientAdversary(Strategy):
    """Wraps a :class:`~byzrsa.engines.flower.strategy.ByzrsaStrategy`; forges the Byzantine replies of each round."""

    def __init__(self, strategy: ByzrsaStrategy) -> None:
        self.strategy = strategy
        job = strategy.job
        self.job = job
        self.byzantine = list(range(job.regular, job.workers))
        self.generators = {j: job.attack_generator(j) for j in self.byzantine}
        self.state: dict[str, Any] = {}  # kept across rounds, for stateful attacks (mimic)
        self.last_regular: dict[int, Tensor] = {}

    def __getattr__(self, name: str) -> Any:
        # x, stats, report_rounds, nodes, ...: the wrapped strategy's
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def regular_view(self, rnd: RoundMessages) -> Tensor:
        """``(r, d)``: each regular worker's message this round, or its last one (zeros before the first)."""
        job = self.job
        for w in rnd.rows(range(job.regular)):
            self.last_regular[w] = rnd.messages[w]
        zero = torch.zeros(job.d, dtype=job.dtype, device=job.device)
        return torch.stack([self.last_regular.get(w, zero) for w in range(job.regular)])

    def forge(self, rnd: RoundMessages) -> None:
        """Replace the replying Byzantine clients' messages in ``rnd`` by the attack's."""
        job, strategy = self.job, self.strategy
        targets = [j for j in self.byzantine if j in rnd.replied]
        regular = self.regular_view(rnd)
        if not targets:
            return
        zero = torch.zeros(job.d, dtype=job.dtype, device=job.device)
        own = torch.stack([rnd.messages.get(j, zero) for j in targets])
        ctx = job.attack_context([self.generators[j] for j in targets], self.state)
        ctx.x0 = strategy.x
        if job.needs_defence:
            aggregator = strategy.aggregator if isinstance(strategy, RobustStrategy) else None
            ctx.defence = job.defence(strategy.x, strategy.alpha(rnd.k), aggregator)
        lies = job.forge(regular, own, ctx)
        for j, lie in zip(targets, lies):
            rnd.messages[j] = lie

    # Strategy interface: the wrapped strategy's, with the forgery between collecting and stepping
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = self.strategy.collect(server_round, replies)
        self.forge(rnd)
        return self.strategy.finish(rnd)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
        log.info("\t└──> omniscient attack %r simulated on the server for workers %s", self.job.config.attack,
                 self.byzantine)
