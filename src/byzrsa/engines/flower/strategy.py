r"""Server strategies on Flower's Message API: RSA, and gradient aggregation with any byzrsa rule.

Both follow :class:`flwr.serverapp.strategy.Strategy`: ``configure_train``
makes one ``train`` message per sampled client, ``aggregate_train`` turns the
replies that arrived into the next model. Like Flower's own robust strategies
(``flwr/serverapp/strategy/multikrum.py``), *which messages are kept* is
apart from *how they are combined*: :meth:`ByzrsaStrategy.collect` decodes and
checks the replies into a :class:`RoundMessages`, and :meth:`update` applies
byzrsa's step function to it (the omniscient adversary of
:mod:`byzrsa.engines.flower.adversary` edits the collected messages in between).

RSA (:class:`RSAStrategy`) keeps ``x0``; each round

.. math::  x_0^{k+1} = x_0^k - \alpha_k\Big(\mu x_0^k + \lambda \sum_{j \in A_k} \partial\|x_0^k - z_j\|_p\Big)

(:func:`byzrsa.methods.rsa_master_step`), where :math:`A_k` is the set of
clients whose reply arrived in round k: sampled, answered in time, well
formed. A client that was not sampled, failed or timed out is an absent term,
exactly as a dead worker of the dist engine. With ``rescale-sum`` the sum is
multiplied by :math:`m / |A_k|`.

Client sampling (``fraction-train`` < 1): each round the server draws
``max(1, round(fraction m))`` of the m workers uniformly without replacement,
from its own seeded stream. Under RSA only the sampled regular clients step
their :math:`x_i` (with the round's :math:`\alpha_k` and :math:`x_0^k`); the
others keep theirs unchanged until they are next sampled, and the master's sum
runs over the sampled clients' replies only. Under the baselines only the
sampled clients' gradients enter the rule, and the rule's validity check
(:func:`byzrsa.aggregators.check_rule`, through the pre-aggregator chain)
runs on the number that arrived: a round with too few is skipped (model
unchanged, counted), as in the dist engine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from byzrsa.engines.flower.build import Job
from byzrsa.engines.flower.wire import META, MODEL, REPLY, ROUND, read_vector, to_array, vector_record
from byzrsa.errors import ConfigError
from byzrsa.methods import aggregation_step, rsa_master_step, step_size
from byzrsa.penalties import subgradient

__all__ = ["RoundMessages", "ByzrsaStrategy", "RSAStrategy", "RobustStrategy", "make_strategy"]

log = logging.getLogger("flwr")


@dataclass
class RoundMessages:
    """The replies of one round that the update uses: worker -> message, in worker order when read."""

    k: int
    sampled: list[int]
    messages: dict[int, Tensor] = field(default_factory=dict)
    locals_: dict[int, Tensor] = field(default_factory=dict)
    replied: set[int] = field(default_factory=set)  # every worker whose reply was well formed (message or not)
    failed: int = 0  # error replies and replies that never came
    malformed: int = 0

    def rows(self, workers: Iterable[int]) -> list[int]:
        return [w for w in sorted(self.messages) if w in set(workers)]


class ByzrsaStrategy(Strategy):
    """What RSA and the baselines share: node addressing, sampling, decoding and checking replies.

    ``nodes`` maps each worker index to its Flower node id (found by the
    server's ``query.hello`` round, see :mod:`byzrsa.engines.flower.server`).
    """

    def __init__(self, job: Job, nodes: dict[int, int]) -> None:
        self.job = job
        self.nodes = dict(nodes)
        self.worker_of_node = {node: worker for worker, node in self.nodes.items()}
        self.x = job.init_vector()  # RSA's x0, or the baselines' shared model
        self._sampling = job.sampling_generator()
        self.report_rounds: set[int] = set()  # rounds whose replies also carry RSA's x_i^{k+1} (evaluations)
        self._sampled: list[int] = []
        self.stats = {"failed": 0, "malformed": 0, "non_finite": 0, "skipped": 0}
        self._last: RoundMessages | None = None

    # which clients -----------------------------------------------------------------------------
    def sample(self, k: int) -> list[int]:
        """The workers asked in round k, in worker order (Byzantine ones never used are not asked)."""
        m = self.job.workers
        fraction = self.job.settings.fraction_train
        if fraction >= 1.0:
            chosen = list(range(m))
        else:
            n = max(1, int(round(fraction * m)))
            chosen = sorted(torch.randperm(m, generator=self._sampling)[:n].tolist())
        return [w for w in chosen if self.job.role(w) != "idle"]

    # Strategy interface ------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One ``train`` message per sampled worker, carrying the model and the round."""
        k = server_round
        model = vector_record(x=self.x)  # the strategy's own model (``arrays`` is the same, when given)
        report = k in self.report_rounds
        messages = []
        self._sampled = self.sample(k)
        for worker in self._sampled:
            settings = ConfigRecord({**dict(config), "k": k, "worker": worker, "report": report})
            content = RecordDict({MODEL: model, ROUND: settings})
            messages.append(Message(content, dst_node_id=self.nodes[worker], message_type=MessageType.TRAIN))
        return messages

    def collect(self, server_round: int, replies: Iterable[Message]) -> RoundMessages:
        """Decode the replies; an error reply, a stranger's or a malformed one is an absent term (counted)."""
        job = self.job
        rnd = RoundMessages(server_round, list(self._sampled))
        expected = set(rnd.sampled)
        spoiled: set[int] = set()
        for reply in replies:
            if reply.has_error():
                log.warning("round %d: node %s replied with an error: %s", server_round,
                            reply.metadata.src_node_id, reply.error.reason)
                continue
            worker = self.worker_of_node.get(reply.metadata.src_node_id)
            try:
                meta = reply.content.config_records[META]
                if worker is None or worker not in expected or int(meta["worker"]) != worker:
                    raise ValueError(f"unexpected sender (node {reply.metadata.src_node_id})")
                if int(meta["k"]) != server_round or worker in rnd.replied:
                    raise ValueError(f"a reply for round {meta['k']}")
                arrays = reply.content.array_records[REPLY]
                message = read_vector(arrays, "message", job.d, job.dtype, job.device)
                local = read_vector(arrays, "local", job.d, job.dtype, job.device)
            except (KeyError, ValueError, TypeError) as exc:
                rnd.malformed += 1
                if worker in expected:
                    spoiled.add(worker)
                log.warning("round %d: malformed reply from node %s dropped: %s", server_round,
                            reply.metadata.src_node_id, exc)
                continue
            rnd.replied.add(worker)
            if message is not None:
                rnd.messages[worker] = message
            if local is not None:
                rnd.locals_[worker] = local
        rnd.failed = len(expected - rnd.replied - spoiled)
        return rnd

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = self.collect(server_round, replies)
        return self.finish(rnd)

    def finish(self, rnd: RoundMessages) -> tuple[ArrayRecord, MetricRecord]:
        """Apply the update to the collected messages; the new model and the round's counts."""
        self._last = rnd
        non_finite = sum(1 for m in rnd.messages.values() if not bool(torch.isfinite(m).all()))
        self.stats["failed"] += rnd.failed
        self.stats["malformed"] += rnd.malformed
        self.stats["non_finite"] += non_finite
        skipped = self.update(rnd)
        self.stats["skipped"] += int(skipped)
        metrics = MetricRecord({
            "arrived": len(rnd.messages), "sampled": len(rnd.sampled), "failed": rnd.failed,
            "malformed": rnd.malformed, "non_finite": non_finite, "skipped": int(skipped),
        })
        return ArrayRecord({"x": to_array(self.x)}), metrics

    def update(self, rnd: RoundMessages) -> bool:  # pragma: no cover - abstract
        """Step the model with the round's messages; return True if the round was skipped."""
        raise NotImplementedError

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return []  # evaluation is central, on the server's test split (as in the simulator)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        c = self.job.config
        log.info("\t├──> byzrsa %s: m=%d workers (q=%d Byzantine, attack %s), fraction-train %.2f",
                 c.method, c.workers, c.byzantine, c.attack, self.job.settings.fraction_train)

    # what the metrics need -------------------------------------------------------------------------
    def alpha(self, k: int) -> float:
        c = self.job.config
        return step_size(c.lr, k, c.lr_schedule)


class RSAStrategy(ByzrsaStrategy):
    """RSA's master: ``x0`` stepped by :func:`byzrsa.methods.rsa_master_step` over the messages that arrived."""

    def update(self, rnd: RoundMessages) -> bool:
        job, c = self.job, self.job.config
        r = job.regular
        alpha = self.alpha(rnd.k)
        empty = self.x.new_empty(0, job.d)
        regular = [rnd.messages[w] for w in rnd.rows(range(r))]
        lies = [rnd.messages[w] for w in rnd.rows(range(r, job.workers))]
        arrived = len(regular) + len(lies)
        lam = c.lam * (job.workers / arrived) if job.settings.rescale_sum and arrived else c.lam
        step = dict(lam=lam, p=job.p, alpha=alpha, mu=c.mu)
        lie_rows = torch.stack(lies) if lies else empty
        if c.master_order == "jacobi" and regular:
            # The simulator's arithmetic: the pull towards the regular x_i^k is minus their own
            # penalty subgradients (exactly: subgradients are odd), the lies' terms summed apart.
            pull = -subgradient(torch.stack(regular) - self.x, job.p).sum(dim=0)
            self.x = rsa_master_step(self.x, lie_rows, pull=pull, **step)
        else:
            rows = torch.cat([torch.stack(regular), lie_rows]) if regular else lie_rows
            self.x = rsa_master_step(self.x, rows, **step)
        return False


class RobustStrategy(ByzrsaStrategy):
    r"""Gradient aggregation: :math:`x \leftarrow x - \alpha_k\,\mathrm{AGG}(g_j : j \in A_k)` with byzrsa's rule.

    ``AGG`` is the config's pre-aggregator chain then its rule, told the
    declared f (:meth:`byzrsa.engines.common.Parts.aggregate`). Messages are
    unweighted; with ``weight-by-shard`` (the mean only) each is weighted by its
    worker's shard size, which the server knows from the partition it built
    itself, never from what a client claims.
    """

    def __init__(self, job: Job, nodes: dict[int, int], weighted: bool = False) -> None:
        super().__init__(job, nodes)
        self.aggregator = job.aggregator_state()
        self.weighted = weighted
        self._warned: set[int] = set()
        if weighted and job.problem.rule.name != "mean":
            raise ConfigError(f"weighted aggregation is defined for the mean only, not for {job.problem.rule.name!r}:"
                              " robust rules count each client once")

    def _combine(self, rows: Tensor, workers: list[int]) -> Tensor:
        if not self.weighted:
            return self.job.aggregate(rows, self.aggregator)
        sizes = torch.tensor([len(self.job.problem.shards[w]) for w in workers], dtype=rows.dtype, device=rows.device)
        return (sizes / sizes.sum()) @ rows

    def update(self, rnd: RoundMessages) -> bool:
        job = self.job
        keep = range(job.regular) if job.regular_only else range(job.workers)
        workers = rnd.rows(keep)
        if not workers:
            return True
        try:
            job.check_rows(len(workers))
        except ConfigError as exc:  # too few rows for the rule: the documented skip
            if len(workers) not in self._warned:
                self._warned.add(len(workers))
                log.warning("round %d: the rule cannot aggregate the %d messages that arrived (%s): model unchanged",
                            rnd.k, len(workers), exc)
            return True
        rows = torch.stack([rnd.messages[w] for w in workers])
        self.x = aggregation_step(self.x, rows, lambda m: self._combine(m, workers), alpha=self.alpha(rnd.k))
        return False


def make_strategy(job: Job, nodes: dict[int, int]) -> ByzrsaStrategy:
    """The strategy of the job's method, wrapped in the omniscient adversary when its attack reads the round."""
    strategy: ByzrsaStrategy = RSAStrategy(job, nodes) if job.is_rsa else RobustStrategy(job, nodes, job.settings.weight_by_shard)
    if job.omniscient:
        from byzrsa.engines.flower.adversary import OmniscientAdversary

        return OmniscientAdversary(strategy)  # type: ignore[return-value]
    return strategy

