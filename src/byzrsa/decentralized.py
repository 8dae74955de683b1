r"""The decentralized counterparts of the methods: no master, a graph of nodes (:mod:`byzrsa.topologies`).

Under ``--topology`` every method name means its decentralized counterpart, so
grids and tables read the same in both settings. Node ``i`` keeps its own model
:math:`x_i`; :math:`N_i` are its neighbours, :math:`W` the mixing matrix,
:math:`z_{ji}` what neighbour ``j`` sent to ``i`` (``x_j``, or a lie when ``j``
is Byzantine: a Byzantine node may send each neighbour something else), and
:math:`b_i` the number of ``i``'s Byzantine neighbours (``agg_f`` overrides it
for every node).

**RSA = DRSA** (Peng, Ling, *Byzantine-robust decentralized stochastic
optimization over static and time-varying networks*, Signal Processing 2021):
the lp penalty sits on the edges,

.. math:: x_i \leftarrow x_i - \alpha_k\Big(\nabla F_i(x_i; \xi_i) + \mu x_i
          + \lambda \sum_{j \in N_i} \partial\|x_i - z_{ji}\|_p\Big),

with the messages of iteration k (every node reads its neighbours' ``x_j^k``),
for every norm RSA has (:mod:`byzrsa.penalties`). The gradient is not divided
by the number of nodes: each node's loss is its own (the DRSA paper's form).

**A rule = decentralized SGD with that rule over the neighbourhood** (Wu, Chen,
Ling, *Byzantine-resilient decentralized stochastic optimization with robust
aggregation rules*, IEEE TSP 2023): a local half step, then a robust
combination of the node's own half-stepped model and what it received,

.. math:: x_i' = x_i - \alpha_k\big(\nabla F_i(x_i; \xi_i) + \mu x_i\big),\qquad
          x_i \leftarrow \mathrm{AGG}_i\big(x_i', \{z_{ji}\}_{j \in N_i}\big),

where regular neighbours send their ``x_j'``. ``AGG_i`` is the rule applied to
the ``n_i = |N_i| + 1`` rows (own model first, then the messages by sender)
told ``f = b_i`` (the trimmed mean is BRIDGE-T; Yang, Bajwa 2019), except for
the rules with a graph form in :data:`GRAPH_FORMS`:

* ``mean``: gossip with the mixing weights, :math:`W_{ii} x_i' + \sum_j W_{ij} z_{ji}` (DPSGD);
* ``cclip``: self-centred clipping (He, Karimireddy, Jaggi 2022, ClippedGossip),
  :math:`x_i' + \sum_j W_{ij}\,\mathrm{clip}(z_{ji} - x_i', \tau)` with
  :math:`\mathrm{clip}(v, \tau) = v \min(1, \tau/\|v\|)`; a non-finite message
  contributes nothing;

and a rule whose entry is ``weighted`` (IOS) gets the mixing weights
:math:`(W_{ii}, W_{ij}, \dots)` and never drops the node's own row.

Byzantine nodes whose true values the attack needs (sign-flip, label-flip, no
attack) follow the method with honest inputs: DRSA as above, or plain gossip
for a rule (the rule's requirements bind the regular nodes only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from byzrsa.aggregators import RULES
from byzrsa.penalties import subgradient_of_difference
from byzrsa.topologies import Topology

__all__ = [
    "GRAPH_METRICS",
    "GraphEdges",
    "graph_edges",
    "half_step",
    "drsa_step",
    "edge_pull",
    "pair_pull_l1",
    "gossip_dense",
    "gossip_mean",
    "self_centred_clipping",
    "GRAPH_FORMS",
    "aggregate_neighbourhoods",
    "neighbourhood_requirement",
]

# What a decentralized run reports beside the master/worker metrics: "accuracy" is the mean over the
# regular nodes' models; these are their min and max, and the accuracy of their average.
GRAPH_METRICS = ("accuracy_min", "accuracy_max", "average_accuracy")


@dataclass(frozen=True)
class GraphEdges:
    """A topology's messages as tensors: message ``j -> i`` is ``src = j``, ``dst = i``, sorted by ``(dst, src)``.

    ``ptr[i]:ptr[i + 1]`` are node ``i``'s incoming messages; ``weight`` the
    mixing weight ``W_ij`` of each, ``self_weight[i] = W_ii``; ``b[i]`` the
    number of outliers node ``i``'s rule is told.
    """

    src: Tensor
    dst: Tensor
    ptr: Tensor
    weight: Tensor
    self_weight: Tensor
    b: tuple[int, ...]
    regular: int

    @property
    def m(self) -> int:
        return len(self.self_weight)

    def into(self, start: int, stop: int) -> slice:
        """The messages received by nodes ``start .. stop - 1``, as a slice of the edge arrays."""
        return slice(int(self.ptr[start]), int(self.ptr[stop]))


def graph_edges(topology: Topology, declared_f: int | None = None) -> GraphEdges:
    """The :class:`GraphEdges` of ``topology``; ``declared_f`` (``agg_f``) replaces every node's ``b_i``."""
    src, dst = topology.directed_edges()
    w = topology.mixing(torch.float64)
    counts = torch.bincount(dst, minlength=topology.m)
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    b = tuple(declared_f if declared_f is not None else topology.byzantine_neighbours(i) for i in range(topology.m))
    return GraphEdges(src, dst, ptr, w[dst, src], w.diagonal().clone(), b, topology.regular)


def half_step(x: Tensor, grad: Tensor, *, alpha: float, mu: float) -> Tensor:
    """The local step ``x - alpha (grad + mu x)`` of decentralized SGD, new tensor."""
    return torch.mul(x, 1.0 - alpha * mu).add_(grad, alpha=-alpha)


def drsa_step(x: Tensor, grad: Tensor, pull: Tensor, *, alpha: float, lam: float, mu: float) -> Tensor:
    r"""DRSA's step ``x - alpha (grad + mu x + lam pull)``, in place in ``x``; ``pull`` = :func:`edge_pull`."""
    return x.mul_(1.0 - alpha * mu).add_(grad, alpha=-alpha).add_(pull, alpha=-alpha * lam)


def edge_pull(x: Tensor, messages: Tensor, receiver: Tensor, p: float) -> Tensor:
    r""":math:`\sum_{j} \partial\|x_i - z_{ji}\|_p` per receiving row of ``x`` (n, d).

    ``messages`` (e, d) are the messages, ``receiver`` (e,) the row of ``x``
    each was sent to. Finite whatever the messages hold (:mod:`byzrsa.penalties`).
    """
    sub = subgradient_of_difference(x.index_select(0, receiver), messages, p)
    return torch.zeros_like(x).index_add_(0, receiver, sub)


def pair_pull_l1(x: Tensor, first: Tensor, second: Tensor, out: Tensor) -> Tensor:
    r""":func:`edge_pull` for l1 over undirected pairs of honest rows, each pair's sign computed once.

    :math:`\mathrm{sign}(x_j - x_i) = -\mathrm{sign}(x_i - x_j)` exactly, so the pair ``(i, j)`` adds
    ``s = sign(x_i - x_j)`` to row i and ``-s`` to row j of ``out``: half the work of the directed form.
    The rows must be finite (regular nodes' own models); Byzantine messages go through :func:`edge_pull`.
    """
    sign = torch.sub(x.index_select(0, first), x.index_select(0, second)).sign_()
    return out.index_add_(0, first, sign).index_add_(0, second, sign, alpha=-1)


def gossip_dense(mixing: Tensor, own: Tensor) -> Tensor:
    """:func:`gossip_mean` when every message is its sender's own row: ``W @ X``, one matrix product."""
    return torch.mm(mixing.to(own.dtype), own)


def gossip_mean(own: Tensor, messages: Tensor, receiver: Tensor, self_weight: Tensor, weight: Tensor,
                b: tuple[int, ...], **options: Any) -> Tensor:
    r"""Gossip: :math:`W_{ii} x_i' + \sum_j W_{ij} z_{ji}` per row of ``own``."""
    out = own * self_weight.to(own.dtype).unsqueeze(1)
    return out.index_add_(0, receiver, messages * weight.to(own.dtype).unsqueeze(1))


def self_centred_clipping(own: Tensor, messages: Tensor, receiver: Tensor, self_weight: Tensor, weight: Tensor,
                          b: tuple[int, ...], *, tau: float, **options: Any) -> Tensor:
    r"""ClippedGossip: :math:`x_i' + \sum_j W_{ij}\, (z_{ji} - x_i') \min(1, \tau / \|z_{ji} - x_i'\|)`."""
    diff = messages - own.index_select(0, receiver)
    norm = torch.linalg.vector_norm(diff, dim=1)
    finite = torch.isfinite(diff).all(dim=1)
    scale = torch.where(norm > tau, tau / norm, torch.ones_like(norm))
    scale = torch.where(finite, scale * weight.to(own.dtype), torch.zeros_like(scale))
    diff = torch.where(finite.unsqueeze(1), diff, torch.zeros_like(diff))
    return own.clone().index_add_(0, receiver, diff * scale.unsqueeze(1))


# Rules whose decentralized form is not "the rule over the neighbourhood's rows" (see the module docstring).
GRAPH_FORMS: dict[str, Callable[..., Tensor]] = {"mean": gossip_mean, "cclip": self_centred_clipping}


def aggregate_neighbourhoods(rule: str, own: Tensor, messages: Tensor, receiver: Tensor, self_weight: Tensor,
                             weight: Tensor, b: tuple[int, ...], options: dict[str, Any]) -> Tensor:
    """``AGG_i(own_i, messages into i)`` for every row of ``own`` (n, d); ``receiver`` (e,) sorted.

    ``b[i]`` is row i's declared number of Byzantine neighbours. Rules with a
    graph form run on all rows at once; any other rule runs on each node's
    ``(n_i, d)`` rows, its own first.
    """
    form = GRAPH_FORMS.get(rule)
    if form is not None:
        return form(own, messages, receiver, self_weight, weight, b, **options)
    entry = RULES[rule]
    options = {k: v for k, v in options.items() if k != "previous"}
    counts = torch.bincount(receiver, minlength=own.shape[0]).tolist()
    out = torch.empty_like(own)
    start = 0
    for i, count in enumerate(counts):
        rows = torch.cat([own[i : i + 1], messages[start : start + count]])
        if entry.weighted:
            w = torch.cat([self_weight[i : i + 1], weight[start : start + count]])
            out[i] = entry(rows, b[i], weights=w, keep=0, **options)
        else:
            out[i] = entry(rows, b[i], **options)
        start += count
    return out


def neighbourhood_requirement(rule: str, options: dict[str, Any]) -> Callable[[int, int], None]:
    """``requirement(n_i, b_i)`` for :func:`byzrsa.topologies.check_neighbourhoods`: the rule's own check."""
    from byzrsa.aggregators import check_rule

    if rule in GRAPH_FORMS:
        return lambda n, b: None
    return lambda n, b: check_rule(rule, n, b, options)


def check_graph_setting(config: Any, method: Any, rule_options: dict[str, Any]) -> dict[str, Any]:
    """Validate a run's topology against its method and attack; return the topology's resolved options.

    Without a topology, refuses the attacks that exist only on a graph. With
    one: builds it (its own checks: connected regular subgraph, options), checks
    every regular node's neighbourhood against the rule, and refuses what has
    no decentralized counterpart here (pre-aggregators, momentum, Ideal SGD,
    attacks that probe a master, NCCL and checkpoints on the dist engine).
    """
    from byzrsa.attacks import get_attack
    from byzrsa.errors import ConfigError
    from byzrsa.topologies import TOPOLOGIES, build_topology, check_neighbourhoods

    c = config
    attack = get_attack(c.attack)
    if c.topology == "none":
        if c.topology_options:
            raise ConfigError("topology options were given but no --topology: name a topology, e.g. --topology er")
        if attack.needs_graph and c.byzantine > 0:
            raise ConfigError(f"attack {c.attack!r} exists only on a graph: add --topology (e.g. er, ring)")
        return {}
    options = TOPOLOGIES[c.topology].resolve(c.topology_options, "topology")
    topology = build_topology(c.topology, c.workers, c.byzantine, options, c.seed)
    refusals = [
        (bool(c.pre), "pre-aggregators are not available with --topology (each node aggregates its neighbours)"),
        (bool(c.momentum), "worker momentum is not available with --topology"),
        (method.regular_only, f"{c.method} has no decentralized counterpart: use mean (gossip) for the ceiling"),
        (c.engine == "dist" and (c.backend != "gloo" or c.device != "cpu"),
         "--topology with --engine dist runs its nodes on the CPU (--device cpu, --backend gloo) only, for now"),
        (c.engine == "dist" and bool(c.checkpoint_every),
         "--topology with --engine dist has no checkpoints yet: drop --checkpoint-every, or use --engine sim"),
        (attack.needs_defence or attack.needs_master,
         f"attack {c.attack!r} probes a master's step, which a graph does not have"),
    ]
    for refused, message in refusals:
        if refused:
            raise ConfigError(message)
    if method.rule is not None:
        check_neighbourhoods(topology, neighbourhood_requirement(method.rule, rule_options))
    return options
