"""The decentralized simulator: every node's model is a row of one ``(m, d)`` tensor, messages travel along edges.

The update rules are those of :mod:`byzrsa.decentralized`; this module only
moves rows. Messages are gathers over the topology's edge list, sorted by
receiver (:class:`~byzrsa.decentralized.GraphEdges`), and every pass over them
runs a block of receivers at a time, sized so that the block's incoming
messages fit the cache (:mod:`byzrsa.engines.blocking`): no ``(edges, d)``
tensor exists at full size, however dense the graph.

What the master/worker simulator shares with it (:class:`~byzrsa.engines.sim.Simulator`):
the minibatch streams (one per node), the gradient call (with ``--vr``), the
attack streams (one per Byzantine node) and the checkpoint layout.

Byzantine messages. A Byzantine node may send each neighbour something else:
the attack is called once per regular receiver ``i`` that has Byzantine
neighbours, in receiver order, with ``regular`` = the messages of ``i``'s regular
neighbours (by sender), ``own`` = its Byzantine neighbours' true values, their
generators, and in the context ``workers = n_i`` (``i`` and its neighbours),
``byzantine`` = its Byzantine neighbours, ``f = b_i``, the receiver's own model
and its mixing weights. A stateful attack keeps one state per receiver.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean
from typing import Any

import torch
from torch import Tensor

from byzrsa.attacks import AttackContext
from byzrsa.attacks.basic import honest
from byzrsa.decentralized import (
    aggregate_neighbourhoods,
    drsa_step,
    edge_pull,
    gossip_dense,
    gossip_mean,
    graph_edges,
    half_step,
    pair_pull_l1,
)
from byzrsa.engines.blocking import block_rows
from byzrsa.engines.common import Problem
from byzrsa.engines.sim import Simulator
from byzrsa.methods import step_size
from byzrsa.models import evaluate
from byzrsa.penalties import subgradient_of_difference

__all__ = ["GraphSimulator", "graph_metrics", "receiver_lies"]


@dataclass(frozen=True)
class _Receiver:
    """A regular node with Byzantine neighbours: what the attack needs to forge its messages."""

    node: int
    edges: slice  # its incoming messages in the edge arrays
    regular_src: Tensor  # senders of its regular messages
    regular_weights: Tensor
    byzantine_src: tuple[int, ...]
    byzantine_at: Tensor  # positions of the Byzantine messages in the edge arrays
    byzantine_weight: float


def receiver_lies(parts: Any, regular: Tensor, own: Tensor | None, receiver: Tensor, *,
                  generators: list[torch.Generator], f: int, regular_weights: Tensor, byzantine_weight: float,
                  state: dict[str, Any]) -> Tensor:
    """The messages of one regular receiver's Byzantine neighbours ``(len(generators), d)``, in sender order.

    ``regular`` are its regular neighbours' messages (by sender), ``own`` its
    Byzantine neighbours' true values (None when the attack does not read them),
    ``receiver`` its own model; the attack sees ``workers = n_i``,
    ``byzantine = b``, ``f = b_i`` and one generator per Byzantine neighbour (a
    row's random draws come from its sender's stream alone, so a process that
    forges only its own row draws what the simulator draws).
    """
    c = parts.config
    if own is None:  # placeholders of the right shape; the attack does not read them
        own = regular.new_zeros(()).expand(len(generators), receiver.shape[-1])
    ctx = AttackContext(
        generators=generators, workers=len(regular) + len(generators) + 1, byzantine=len(generators), f=f,
        lam=c.lam, p=parts.p, state=state, receiver=receiver, regular_weights=regular_weights,
        byzantine_weight=byzantine_weight,
    )
    return parts.attack(regular, own, ctx, **parts.attack_options)


class GraphSimulator(Simulator):
    """State and step of one simulated decentralized run (``--topology``).

    Rows ``0..r-1`` of ``workers`` are the regular nodes, the last q the
    Byzantine ones (the topology's canonical labels). Byzantine rows are
    computed only when the attack needs their true values.
    """

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        c = problem.config
        self.edges = graph_edges(problem.topology, c.agg_f)
        if self.workers is None:
            self.workers = self.x0.expand(c.workers, -1).clone()
        d, item = self.x0.shape[0], problem.dtype.itemsize
        self._edges_per_block = block_rows(2 * d * item)  # a block's messages and their subgradients
        self._receivers = self._attacked_receivers() if problem.attacked and problem.attack.fn is not honest else []
        self._weight = self.edges.weight.to(problem.dtype).to(problem.device)
        self._self_weight = self.edges.self_weight.to(problem.dtype).to(problem.device)
        self._src = self.edges.src.to(problem.device)
        self._dst = self.edges.dst.to(problem.device)
        # The fast forms of the separable methods (see step): l1 DRSA over undirected honest pairs, each sign
        # once, and the directed edges between a regular and a Byzantine node (where lies travel); gossip as
        # one product with the regular nodes' mixing matrix when only they compute.
        src, dst, r, act = self.edges.src, self.edges.dst, c.regular, self.active
        pair = (src < dst) & (dst < act) & ((dst < r) | (src >= r))
        self._pairs = (src[pair].to(problem.device), dst[pair].to(problem.device))
        self._mixed = torch.nonzero((dst < act) & ((src < r) != (dst < r))).flatten().to(problem.device)
        # (a product costs r^2 d multiply-adds: worth it only where the edges are a fair share of all pairs)
        dense = problem.rule is not None and problem.rule.name == "mean" and act == r and r <= 4096 \
            and len(src) >= r * r // 8
        self._mixing = problem.topology.mixing(problem.dtype)[:r, :r].to(problem.device) if dense else None

    def _attacked_receivers(self) -> list[_Receiver]:
        e, r = self.edges, self.edges.regular
        out = []
        for i in range(r):
            edges = e.into(i, i + 1)
            src, weight = e.src[edges], e.weight[edges]
            byz = src >= r
            if not bool(byz.any()):
                continue
            out.append(_Receiver(
                i, edges, src[~byz], weight[~byz].to(self.problem.dtype), tuple(src[byz].tolist()),
                torch.nonzero(byz).flatten() + edges.start, float(weight[byz].sum()),
            ))
        return out

    def _blocks(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Receivers ``start .. stop - 1`` in consecutive groups whose incoming messages fit a block."""
        ptr, blocks, first = self.edges.ptr.tolist(), [], start
        for i in range(start, stop):
            if i > first and ptr[i + 1] - ptr[first] > self._edges_per_block:
                blocks.append((first, i))
                first = i
        if first < stop:
            blocks.append((first, stop))
        return blocks

    def _column_blocks(self, edges: int) -> list[slice]:
        """Coordinate blocks whose messages along ``edges`` edges (and their differences) fit a block."""
        d = self.workers.shape[1]
        width = block_rows(3 * max(edges, 1) * self.problem.dtype.itemsize)
        return [slice(start, min(start + width, d)) for start in range(0, d, width)]

    def _lies(self, sent: Tensor) -> tuple[Tensor, Tensor]:
        """The Byzantine messages of this round: their positions in the edge arrays and their rows."""
        pb, c = self.problem, self.problem.config
        positions, rows = [], []
        generators = self.attack_context.generators  # one per Byzantine node, node order
        for rec in self._receivers:
            byz = rec.byzantine_src
            rows.append(receiver_lies(
                pb, sent.index_select(0, rec.regular_src.to(sent.device)), sent[list(byz)] if pb.needs_own else None,
                sent[rec.node], generators=[generators[j - c.regular] for j in byz], f=self.edges.b[rec.node],
                regular_weights=rec.regular_weights.to(sent.device), byzantine_weight=rec.byzantine_weight,
                state=self.attack_context.state.setdefault(f"receiver {rec.node}", {}),
            ))
            positions.append(rec.byzantine_at)
        if not rows:
            return torch.zeros(0, dtype=torch.int64), sent[:0]
        return torch.cat(positions).to(sent.device), torch.cat(rows)

    def _edge_messages(self, sent: Tensor, edges: slice, lies: tuple[Tensor, Tensor]) -> Tensor:
        """The messages along ``edges``: the senders' rows, the Byzantine ones replaced by this round's lies."""
        src = self._src[edges]
        at, rows = lies
        if at.numel() == 0:
            return sent.index_select(0, src)
        out = sent.index_select(0, src.clamp(max=sent.shape[0] - 1))  # inactive senders lie on every edge
        inside = (at >= edges.start) & (at < edges.stop)
        return out.index_copy_(0, at[inside] - edges.start, rows[inside])

    def _messages_at(self, sent: Tensor, positions: Tensor, lies: tuple[Tensor, Tensor]) -> Tensor:
        """The messages along the edges at ``positions`` (sorted): senders' rows, Byzantine ones replaced by lies."""
        out = sent.index_select(0, self._src[positions].clamp(max=sent.shape[0] - 1))
        at, rows = lies
        if at.numel():
            out.index_copy_(0, torch.searchsorted(positions, at), rows)
        return out

    def _all_gradients(self, indices: Tensor) -> Tensor:
        """Every computing node's gradient (or --vr estimate) at its own model, block by block."""
        x_all = self.workers[: self.active]
        grad = torch.empty_like(x_all)
        for start in range(0, self.active, self._rows):
            rows = slice(start, min(start + self._rows, self.active))
            x, y = self._batch(indices, rows)
            grad[rows] = self._gradients(rows, x_all[rows], x, y)
        return grad

    def step(self) -> None:
        """Advance one iteration (k -> k + 1): DRSA, or a half step and each node's neighbourhood rule."""
        pb, c = self.problem, self.problem.config
        self.k += 1
        alpha = step_size(c.lr, self.k, c.lr_schedule)
        grad = self._all_gradients(self._next_indices())
        current, r = self.workers[: self.active], c.regular
        e = self.edges
        if pb.is_rsa:
            lies = self._lies(self.workers)  # every node reads its neighbours' x_j^k
            pull = torch.empty_like(current)
            if pb.p == 1.0:  # l1 is separable: every pair at once, a block of coordinates at a time
                first, second = self._pairs
                for cols in self._column_blocks(len(first)):
                    block = torch.zeros(self.active, cols.stop - cols.start, dtype=pull.dtype, device=pull.device)
                    pull[:, cols] = pair_pull_l1(self.workers[:, cols], first, second, block)
                if self._mixed.numel():
                    messages = self._messages_at(self.workers, self._mixed, lies)
                    dst = self._dst[self._mixed]
                    pull.index_add_(0, dst, subgradient_of_difference(current.index_select(0, dst), messages, 1.0))
            else:  # a norm of the whole difference: a block of receivers at a time
                for start, stop in self._blocks(0, self.active):
                    edges = e.into(start, stop)
                    messages = self._edge_messages(self.workers, edges, lies)
                    pull[start:stop] = edge_pull(current[start:stop], messages, self._dst[edges] - start, pb.p)
            drsa_step(current, grad, pull, alpha=alpha, lam=c.lam, mu=c.mu)
            return
        half = half_step(current, grad, alpha=alpha, mu=c.mu)
        lies = self._lies(half)
        new = torch.empty_like(half)
        if self._mixing is not None:  # gossip among the regular nodes, one product, plus the lies' weighted rows
            new = gossip_dense(self._mixing, half)
            at, rows = lies
            if at.numel():
                new.index_add_(0, self._dst[at], rows * self._weight[at].unsqueeze(1))
            current.copy_(new)
            return
        for start, stop in self._blocks(0, r) + self._blocks(r, self.active):
            edges = e.into(start, stop)
            args = (half[start:stop], self._edge_messages(half, edges, lies), self._dst[edges] - start,
                    self._self_weight[start:stop], self._weight[edges], e.b[start:stop])
            if start < r:
                new[start:stop] = aggregate_neighbourhoods(pb.rule.name, *args, pb.rule_options)
            else:  # Byzantine nodes' true values: plain gossip (the rule binds the regular nodes only)
                new[start:stop] = gossip_mean(*args)
        current.copy_(new)

    def metrics(self) -> dict[str, float]:
        """Mean, min and max test accuracy over the regular nodes, that of their average, and their consensus distance.

        ``variance`` is the consensus distance :math:`\\frac1r\\sum_i \\|x_i - \\bar x\\|^2`;
        ``train_loss`` is the average model's.
        """
        return graph_metrics(self.problem, self.workers[: self.problem.config.regular])


def graph_metrics(problem: Problem, models: Tensor) -> dict[str, float]:
    """:meth:`GraphSimulator.metrics` of the regular nodes' models ``(r, d)`` (the dist engine's rows too)."""
    pb = problem
    scores = [evaluate(pb.model, models[i], pb.test_x, pb.test_y) for i in range(models.shape[0])]
    average = models.mean(dim=0)
    average_accuracy, _ = evaluate(pb.model, average, pb.test_x, pb.test_y)
    _, train_loss = evaluate(pb.model, average, pb.train_x, pb.train_y)
    accuracies = [a for a, _ in scores]
    losses = [loss for _, loss in scores]
    return {
        "accuracy": fmean(accuracies), "test_loss": fmean(losses) if all(map(math.isfinite, losses)) else math.inf,
        "train_loss": train_loss, "variance": float(((models - average) ** 2).sum(dim=1).mean()),
        "accuracy_min": min(accuracies), "accuracy_max": max(accuracies), "average_accuracy": average_accuracy,
    }
