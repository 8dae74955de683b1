r"""Communication graphs for decentralized learning: pure data, one registry.

A :class:`Topology` is ``m`` nodes, an undirected edge list, the Byzantine
nodes and a weighting rule for the mixing matrix. It knows nothing of models or
engines: the simulator turns its :meth:`Topology.directed_edges` into gathers,
the dist engine into point-to-point sends between neighbour processes.

Canonical labels. Inside a topology the Byzantine nodes are **always the last
q** labels ``m - q .. m - 1``, as in the master/worker setting, so every engine
can slice the regular rows as ``[:m - q]``. A user who names other Byzantine
nodes (topology option ``byzantine = "1,4"``) keeps the graph: the nodes are
relabelled, regular nodes first in their order, then the Byzantine ones in
increasing order, and ``labels[c]`` is the user's id of canonical node ``c``.

Mixing weights (``W`` symmetric and doubly stochastic, degrees counted over
the whole graph, Byzantine nodes included):

.. math::

    \text{metropolis:}\; W_{ij} = \frac{1}{1 + \max(d_i, d_j)},\qquad
    \text{uniform:}\; W_{ij} = \frac{1}{1 + d_{\max}}\quad (ij \in E),\qquad
    W_{ii} = 1 - \sum_{j \ne i} W_{ij}.

:meth:`Topology.mixing` is the dense ``(m, m)`` matrix; :meth:`Topology.edge_weights`
the same numbers per directed edge, for graphs too large for a dense matrix.
Metropolis-Hastings weights are those of Xiao, Boyd and Kim, *Distributed
average consensus with least-mean-square deviation* (2007); the uniform
(max-degree) weights are their "maximum-degree" weights.

``TOPOLOGIES`` holds one :class:`TopologyEntry` per graph; each entry's
builder returns the edges in the user's labels. Adding a topology is one
builder and one entry (docs/extending.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from byzrsa.errors import ConfigError, config_int
from byzrsa.registry import Entry, Option, Registry, at_least, in_range, one_of

__all__ = [
    "Topology",
    "TopologyEntry",
    "TOPOLOGIES",
    "WEIGHTINGS",
    "SHARED_OPTIONS",
    "build_topology",
    "check_neighbourhoods",
    "draw_topology",
    "parse_edge_file",
]

WEIGHTINGS = ("metropolis", "uniform")
Edge = tuple[int, int]
Positions = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Topology:
    """An undirected graph of ``m`` nodes whose last ``q`` (canonical) nodes are Byzantine.

    Attributes
    ----------
    name : str
        The registry name it was built from (``"er"``, ``"ring"``, ...).
    m : int
        Number of nodes, regular and Byzantine.
    edges : tuple of (i, j)
        Undirected edges in canonical labels, ``i < j``, sorted, no duplicates.
    q : int
        Number of Byzantine nodes: canonical labels ``m - q .. m - 1``.
    labels : tuple of int
        ``labels[c]`` is the user's id of canonical node ``c`` (identity unless
        the user named the Byzantine nodes).
    weighting : str
        ``"metropolis"`` (default) or ``"uniform"``: see :meth:`mixing`.
    positions : tuple of (x, y) or None
        Where :func:`draw_topology` places each node, indexed by the user's id
        (None: on a circle). Not compared: two equal graphs are equal.
    """

    name: str
    m: int
    edges: tuple[Edge, ...]
    q: int
    labels: tuple[int, ...]
    weighting: str = "metropolis"
    positions: Positions | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        m, q = self.m, self.q
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError(f"a topology needs m >= 1 nodes, got {m!r}")
        if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q < m:
            raise ConfigError(f"a topology needs 0 <= q < m Byzantine nodes, got q = {q!r} with m = {m}")
        if sorted(self.labels) != list(range(m)):
            raise ConfigError(f"topology labels must be a permutation of 0..{m - 1}, got {self.labels}")
        if any(not 0 <= i < j < m for i, j in self.edges) or list(self.edges) != sorted(set(self.edges)):
            raise ConfigError("topology edges must be sorted, unique pairs (i, j) with 0 <= i < j < m")
        if self.weighting not in WEIGHTINGS:
            raise ConfigError(f"topology weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")

    @property
    def regular(self) -> int:
        """Number of regular nodes, ``m - q`` (canonical labels ``0 .. m - q - 1``)."""
        return self.m - self.q

    @cached_property
    def _neighbours(self) -> tuple[tuple[int, ...], ...]:
        lists: list[list[int]] = [[] for _ in range(self.m)]
        for i, j in self.edges:
            lists[i].append(j)
            lists[j].append(i)
        return tuple(tuple(sorted(n)) for n in lists)

    def neighbours(self, i: int) -> tuple[int, ...]:
        """Canonical labels of node ``i``'s neighbours, sorted (``i`` itself excluded)."""
        return self._neighbours[i]

    def degree(self, i: int) -> int:
        """Number of neighbours of node ``i``, Byzantine ones included."""
        return len(self._neighbours[i])

    def byzantine_neighbours(self, i: int) -> int:
        """Number of Byzantine neighbours of node ``i`` (labels ``>= m - q``)."""
        return sum(1 for j in self._neighbours[i] if j >= self.regular)

    def adjacency(self) -> Tensor:
        """``(m, m)`` boolean adjacency matrix: symmetric, False on the diagonal."""
        adj = torch.zeros(self.m, self.m, dtype=torch.bool)
        if self.edges:
            i, j = torch.tensor(self.edges, dtype=torch.int64).T
            adj[i, j] = True
            adj[j, i] = True
        return adj

    def mixing(self, dtype: torch.dtype = torch.float64) -> Tensor:
        r"""``(m, m)`` mixing matrix ``W``: symmetric, doubly stochastic.

        Metropolis-Hastings: :math:`W_{ij} = 1 / (1 + \max(d_i, d_j))` on an edge;
        uniform (max-degree): :math:`W_{ij} = 1 / (1 + d_{\max})`; zero off the
        edges; :math:`W_{ii} = 1 - \sum_{j \ne i} W_{ij}`. Degrees count every
        neighbour, Byzantine ones included (a node cannot tell them apart).
        """
        w = torch.zeros(self.m, self.m, dtype=torch.float64)
        if self.edges:
            i, j = torch.tensor(self.edges, dtype=torch.int64).T
            deg = torch.tensor([self.degree(k) for k in range(self.m)], dtype=torch.float64)
            if self.weighting == "metropolis":
                weight = 1.0 / (1.0 + torch.maximum(deg[i], deg[j]))
            else:
                weight = torch.full(i.shape, 1.0 / (1.0 + float(deg.max())), dtype=torch.float64)
            w[i, j] = weight
            w[j, i] = weight
        w.diagonal().copy_(1.0 - w.sum(dim=1))
        return w.to(dtype)

    def directed_edges(self) -> tuple[Tensor, Tensor]:
        """``(src, dst)`` int64 tensors: both directions of every edge, sorted by ``(dst, src)``.

        Message ``j -> i`` is ``src = j, dst = i``; sorting by receiver keeps each
        node's incoming messages contiguous (a segment per node for the gathers).
        """
        if not self.edges:
            empty = torch.zeros(0, dtype=torch.int64)
            return empty, empty.clone()
        pairs = torch.tensor(self.edges, dtype=torch.int64)
        src = torch.cat([pairs[:, 0], pairs[:, 1]])
        dst = torch.cat([pairs[:, 1], pairs[:, 0]])
        order = torch.argsort(dst * self.m + src)
        return src[order], dst[order]

    def edge_weights(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """The mixing matrix without its zeros: ``(w, w_self)`` with ``w[e] = W[dst[e], src[e]]``.

        ``w`` is aligned with :meth:`directed_edges` and ``w_self`` is the
        diagonal ``(m,)``; equal to :meth:`mixing` entry for entry, in
        ``O(m + |E|)`` memory for graphs too large for an ``(m, m)`` matrix.
        """
        src, dst = self.directed_edges()
        deg = torch.bincount(dst, minlength=self.m).to(torch.float64)
        if self.weighting == "metropolis":
            w = 1.0 / (1.0 + torch.maximum(deg[src], deg[dst]))
        else:
            w = torch.full(src.shape, 1.0 / (1.0 + float(deg.max())), dtype=torch.float64)
        w_self = 1.0 - torch.zeros(self.m, dtype=torch.float64).index_add_(0, dst, w)
        return w.to(dtype), w_self.to(dtype)

    def regular_components(self) -> list[list[int]]:
        """Connected components of the regular nodes' subgraph, as sorted canonical labels."""
        r = self.regular
        pairs = np.asarray(self.edges, dtype=np.int64).reshape(-1, 2)
        return _components(r, pairs[(pairs < r).all(axis=1)])

    def regular_connected(self) -> bool:
        """Whether the regular nodes stay connected without the Byzantine ones."""
        return len(self.regular_components()) == 1


def _components(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components of nodes ``0..n-1`` joined by the ``(E, 2)`` undirected ``pairs``, each sorted.

    Label propagation: every node takes the smallest label among itself and its
    neighbours, then follows its label's label (pointer jumping), until nothing
    changes; O(|E|) per round, no (n, n) matrix, so it scales to large graphs.
    """
    label = np.arange(n)
    i, j = pairs[:, 0], pairs[:, 1]
    while True:
        new = label.copy()
        np.minimum.at(new, i, label[j])
        np.minimum.at(new, j, label[i])
        new = new[new]  # a label is a node of the same component with a smaller id: follow it
        if np.array_equal(new, label):
            break
        label = new
    order = np.argsort(label, kind="stable")
    cuts = np.flatnonzero(np.diff(label[order])) + 1
    return [part.tolist() for part in np.split(order, cuts)] if n else []


# ---------------------------------------------------------------------------------------------
# Builders: edges in the user's labels. ``byzantine[u]`` says whether user node u is Byzantine.
# ---------------------------------------------------------------------------------------------


def _complete(m: int, byzantine: Sequence[bool], seed: int) -> list[Edge]:
    return [(i, j) for i in range(m) for j in range(i + 1, m)]


def _ring(m: int, byzantine: Sequence[bool], seed: int) -> list[Edge]:
    return [(i, (i + 1) % m) for i in range(m)]  # m = 2 gives (0, 1) twice: deduplicated later


def _star(m: int, byzantine: Sequence[bool], seed: int) -> list[Edge]:
    return [(0, i) for i in range(1, m)]


def _torus_shape(m: int, rows: int | None) -> tuple[int, int]:
    """``(rows, cols)`` with ``rows * cols = m``, both >= 3 (so each node has 4 distinct neighbours)."""
    if rows is None:
        rows = max(r for r in range(1, math.isqrt(m) + 1) if m % r == 0)  # the most square factorisation
        if rows < 3:
            raise ConfigError(
                f"topology 'torus' needs m = rows * cols with rows, cols >= 3; m = {m} has no such "
                f"factorisation (try m = 9, 12, 15, 16, 20, ...)"
            )
    if m % rows or rows < 3 or m // rows < 3:
        raise ConfigError(
            f"topology 'torus' option 'rows' = {rows} must divide m = {m} leaving rows, cols >= 3"
        )
    return rows, m // rows


def _torus(m: int, byzantine: Sequence[bool], seed: int, rows: int | None = None) -> list[Edge]:
    rows, cols = _torus_shape(m, rows)
    edges = []
    for r in range(rows):
        for c in range(cols):
            node = r * cols + c
            edges.append((node, r * cols + (c + 1) % cols))  # right neighbour, wrapping
            edges.append((node, ((r + 1) % rows) * cols + c))  # neighbour below, wrapping
    return edges


def _torus_positions(m: int, rows: int | None = None) -> Positions:
    rows, cols = _torus_shape(m, rows)
    return tuple((float(u % cols), float(-(u // cols))) for u in range(m))


def _two_castle(m: int, byzantine: Sequence[bool], seed: int) -> list[Edge]:
    k = _castle_size(m)
    inner = [(a + s, b + s) for s in (0, k) for a in range(k) for b in range(a + 1, k)]
    cross = [(a, k + b) for a in range(k) for b in range(k) if a != b]  # all but the matching a -- k + a
    return inner + cross


def _castle_size(m: int) -> int:
    if m % 2 or m < 6:
        raise ConfigError(
            f"topology 'two-castle' needs an even m >= 6 (two cliques of k = m/2 >= 3 nodes), got m = {m}"
        )
    return m // 2


def _two_castle_positions(m: int) -> Positions:
    k = _castle_size(m)
    return tuple(
        (math.cos(2 * math.pi * (u % k) / k) + (2.5 if u >= k else -2.5), math.sin(2 * math.pi * (u % k) / k))
        for u in range(m)
    )


def _star_positions(m: int) -> Positions:
    return ((0.0, 0.0),) + tuple(
        (math.cos(2 * math.pi * u / (m - 1)), math.sin(2 * math.pi * u / (m - 1))) for u in range(m - 1)
    )


ER_ATTEMPTS = 100


def _er(m: int, byzantine: Sequence[bool], seed: int, p: float = 0.7, graph_seed: int | None = 0) -> list[Edge]:
    """Each pair an edge with probability ``p``, redrawn until the regular nodes' subgraph is connected.

    The draws come from one ``torch.Generator`` seeded with ``graph_seed`` (the
    run's seed when it is None), so a graph is reproducible from its seed alone.
    """
    generator = torch.Generator().manual_seed(seed if graph_seed is None else graph_seed)
    regular = torch.tensor([not b for b in byzantine])
    for _ in range(ER_ATTEMPTS):
        upper = torch.triu(torch.rand(m, m, generator=generator, dtype=torch.float64) < p, diagonal=1)
        pairs = torch.nonzero(upper)
        kept = pairs[regular[pairs].all(dim=1)]
        index = torch.cumsum(regular, 0) - 1  # user id -> position among the regular nodes
        if len(_components(int(regular.sum()), index[kept].numpy())) <= 1:
            return [tuple(e) for e in pairs.tolist()]  # type: ignore[misc]
    raise ConfigError(
        f"topology 'er': the regular nodes' subgraph was disconnected in all {ER_ATTEMPTS} draws "
        f"(m = {m}, p = {p:g}): raise p"
    )


_INT = re.compile(r"[+-]?\d+")


def parse_edge_file(path: str | Path, m: int) -> list[Edge]:
    """Edges from a text file: one ``i j`` per line (node ids ``0 .. m - 1``), ``#`` starts a comment.

    Both directions of an edge may be listed (they are one edge). A line that is
    not two integers, a self loop or an id outside ``0 .. m - 1`` is a
    :class:`ConfigError` naming the file and the line.
    """
    if not str(path):
        raise ConfigError("topology 'edges' needs its edge list: --set topology.file=PATH")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"topology 'edges': cannot read edge file {str(path)!r}: {reason}") from None
    edges = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"edge file {str(path)!r} line {number} ({line!r})"
        parts = line.split()
        if len(parts) != 2 or not all(_INT.fullmatch(p) for p in parts):
            raise ConfigError(f"{where}: expected two integer node ids 'i j'")
        i, j = int(parts[0]), int(parts[1])
        for node in (i, j):
            if not 0 <= node < m:
                raise ConfigError(f"{where}: node id {node} is outside 0..{m - 1} (m = {m} nodes)")
        if i == j:
            raise ConfigError(f"{where}: self loop on node {i}")
        edges.append((i, j))
    return edges


def _edges(m: int, byzantine: Sequence[bool], seed: int, file: str = "") -> list[Edge]:
    return parse_edge_file(file, m)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopologyEntry(Entry):
    """One topology: ``fn(m, byzantine, seed, **options) -> edges`` in the user's labels.

    ``byzantine[u]`` says whether the user's node ``u`` is Byzantine (only
    builders that must keep the regular nodes connected read it); ``seed`` is
    the run's seed. ``layout(m, **options)`` gives each node's drawing position
    (None: a circle). The options ``byzantine`` and ``weighting`` every entry
    shares are handled by :func:`build_topology`, not passed to ``fn``.
    """

    layout: Callable[..., Positions] | None = None
    random: bool = False  # the edges depend on a seed


def _check_byzantine_list(value: str) -> str | None:
    tokens = [t.strip() for t in value.split(",")] if value.strip() else []
    if not all(t.isdigit() for t in tokens):
        return "must be node ids separated by commas (\"\" = the last q nodes)"
    return None


SHARED_OPTIONS = (
    Option("byzantine", str, "", "Byzantine node ids, comma-separated (\"\" = the last q); as many as --byzantine",
           _check_byzantine_list),
    Option("weighting", str, "metropolis", "mixing weights: metropolis (Metropolis-Hastings) or uniform (max-degree)",
           one_of(*WEIGHTINGS)),
)

TOPOLOGIES: Registry[TopologyEntry] = Registry("topology")
TOPOLOGIES.register(TopologyEntry("complete", _complete, "Complete", "every pair of nodes joined", SHARED_OPTIONS))
TOPOLOGIES.register(TopologyEntry("ring", _ring, "Ring", "node i joined to i - 1 and i + 1 (mod m)", SHARED_OPTIONS))
TOPOLOGIES.register(TopologyEntry(
    "torus", _torus, "Torus", "2-D grid rows x cols with wrap-around (4 neighbours each)",
    (Option("rows", int, None, "grid rows, dividing m (default: the most square factorisation)", at_least(3),
            optional=True),) + SHARED_OPTIONS,
    layout=_torus_positions,
))
TOPOLOGIES.register(TopologyEntry(
    "er", _er, "Erdős–Rényi", "each pair joined with probability p, redrawn until the regular nodes are connected",
    (
        Option("p", float, 0.7, "edge probability, in (0, 1]", in_range(0.0, 1.0, open_low=True)),
        Option("graph_seed", int, 0, "seed of the graph (none: the run's seed)", at_least(0), optional=True),
    ) + SHARED_OPTIONS,
    random=True,
))
TOPOLOGIES.register(TopologyEntry(
    "two-castle", _two_castle, "Two castles",
    "two cliques of m/2 nodes; node a of one joined to every node of the other but its twin (IOS, Wu et al. 2023)",
    SHARED_OPTIONS, layout=_two_castle_positions,
))
TOPOLOGIES.register(TopologyEntry(
    "star", _star, "Star", "node 0 joined to every other node (the master/worker graph, for checks)",
    SHARED_OPTIONS, layout=_star_positions,
))
TOPOLOGIES.register(TopologyEntry(
    "edges", _edges, "Edge list", "the user's edge-list file: one 'i j' per line, # comments",
    (Option("file", str, "", "path of the edge-list file"),) + SHARED_OPTIONS,
))


def _byzantine_ids(value: str, m: int, q: int) -> list[int]:
    """The user's Byzantine node ids, sorted: the last q unless ``value`` lists them."""
    if not value.strip():
        return list(range(m - q, m))
    ids = [int(t) for t in value.split(",")]
    where = f"topology option 'byzantine' = {value!r}"
    if len(ids) != q:
        raise ConfigError(f"{where} lists {len(ids)} nodes but q = {q} nodes are Byzantine (--byzantine)")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where} lists a node twice")
    outside = [i for i in ids if not 0 <= i < m]
    if outside:
        raise ConfigError(f"{where}: node {outside[0]} is outside 0..{m - 1} (m = {m} nodes)")
    return sorted(ids)


def build_topology(name: str, m: int, q: int, options: dict[str, Any] | None = None, seed: int = 0) -> Topology:
    """Build topology ``name`` on ``m`` nodes of which ``q`` are Byzantine.

    ``options`` are the entry's options (strings from the command line are
    coerced and checked); ``seed`` is the run's seed, read only by random
    graphs whose own seed is not given. Every user error is a one-line
    :class:`ConfigError`: an unknown topology, ``m < 2``, ``q`` outside
    ``0 .. m - 1``, a bad option, or a regular subgraph that is disconnected.
    """
    entry = TOPOLOGIES[name]
    m = config_int(m, f"topology {name!r}: the number of nodes m", minimum=2)
    q = config_int(q, f"topology {name!r}: the number of Byzantine nodes q", minimum=0)
    if q >= m:
        raise ConfigError(f"topology {name!r}: q = {q} Byzantine nodes leave none of the m = {m} nodes regular")
    resolved = entry.resolve(options, "topology")
    byzantine_ids = _byzantine_ids(resolved.pop("byzantine"), m, q)
    weighting = resolved.pop("weighting")
    is_byzantine = [False] * m
    for u in byzantine_ids:
        is_byzantine[u] = True
    raw = entry.fn(m, is_byzantine, seed, **resolved)
    labels = tuple([u for u in range(m) if not is_byzantine[u]] + byzantine_ids)
    canonical = {u: c for c, u in enumerate(labels)}
    edges = sorted({(min(canonical[u], canonical[v]), max(canonical[u], canonical[v])) for u, v in raw})
    positions = entry.layout(m, **resolved) if entry.layout is not None else None
    topology = Topology(name, m, tuple(edges), q, labels, weighting, positions)
    components = topology.regular_components()
    if len(components) > 1:
        parts = "; ".join(", ".join(str(labels[c]) for c in comp[:8]) + (", ..." if len(comp) > 8 else "")
                          for comp in components[:4])
        raise ConfigError(
            f"topology {name!r} (m = {m}, Byzantine nodes {', '.join(map(str, byzantine_ids)) or 'none'}): "
            f"the regular nodes' subgraph is disconnected: {len(components)} parts ({parts}); "
            "choose other Byzantine nodes or a denser graph"
        )
    return topology


def check_neighbourhoods(topology: Topology, requirement: Callable[[int, int], None]) -> None:
    """Call ``requirement(n_i, b_i)`` for every regular node ``i``; name the node if it refuses.

    ``n_i = degree(i) + 1`` counts the node itself and its neighbours, ``b_i``
    its Byzantine neighbours (for example the trimmed mean needs
    ``n_i > 2 b_i``). A :class:`ConfigError` from ``requirement`` is raised
    again as ``"node {label}: ..."`` with the user's id of the node.
    """
    for i in range(topology.regular):
        try:
            requirement(topology.degree(i) + 1, topology.byzantine_neighbours(i))
        except ConfigError as exc:
            raise ConfigError(f"node {topology.labels[i]}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Picture
# ---------------------------------------------------------------------------------------------


def draw_topology(topology: Topology, path: str | Path) -> list[Path]:
    """Draw ``topology`` to ``path`` as PNG and SVG (the same stem); return both paths.

    Nodes carry the user's ids; Byzantine nodes are red, regular ones blue.
    Nodes sit where the entry's layout puts them (torus: its grid), else on a
    circle. An edge whose straight line would cross another node is drawn as an
    arc so that it stays visible (the torus's wrap-around edges).
    """
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays as it is
    from matplotlib.patches import FancyArrowPatch

    m, labels = topology.m, topology.labels
    if topology.positions is not None:
        xy_user = np.asarray(topology.positions, dtype=float)
    else:
        angle = 2 * np.pi * np.arange(m) / m
        xy_user = np.stack([np.cos(np.pi / 2 - angle), np.sin(np.pi / 2 - angle)], axis=1)
    xy = xy_user[list(labels)]  # canonical node c sits at its user id's place
    span = np.ptp(xy_user, axis=0) + 1.0
    fig = Figure(figsize=(6.4, float(np.clip(6.4 * span[1] / span[0], 3.0, 6.4)) + 0.8))  # as wide as the layout
    ax = fig.add_subplot()
    straight, curved = _split_edges(xy, topology.edges)
    ax.add_collection(LineCollection([(xy[i], xy[j]) for i, j in straight], colors="0.6", linewidths=0.8, zorder=1))
    for i, j in curved:
        ax.add_patch(FancyArrowPatch(xy[i], xy[j], arrowstyle="-", connectionstyle="arc3,rad=0.25",
                                     color="0.6", linewidth=0.8, zorder=1))
    size = 260 if m <= 40 else max(12.0, 9000 / m)
    r = topology.regular
    ax.scatter(*xy[:r].T, s=size, c="tab:blue", edgecolors="black", zorder=2, label=f"regular ({r})")
    if topology.q:
        ax.scatter(*xy[r:].T, s=size, c="tab:red", edgecolors="black", zorder=2, label=f"Byzantine ({topology.q})")
    if m <= 60:
        for c in range(m):
            ax.annotate(str(labels[c]), xy[c], ha="center", va="center", fontsize=8, color="white", zorder=3)
    ax.set_title(f"{topology.name}: m = {m}, q = {topology.q}, {len(topology.edges)} edges")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=9, markerscale=0.5, frameon=False)
    ax.set_aspect("equal")
    ax.margins(0.12)
    ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    paths = [path.with_suffix(".png"), path.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=130)
    return paths


def _split_edges(xy: np.ndarray, edges: Sequence[Edge]) -> tuple[list[Edge], list[Edge]]:
    """Edges whose straight segment keeps clear of every other node, and the others."""
    if not edges or len(edges) * len(xy) > 4_000_000:  # big graphs: a picture of a hairball either way
        return list(edges), []
    e = np.asarray(edges)
    a, b = xy[e[:, 0]], xy[e[:, 1]]  # (E, 2)
    ab = b - a
    t = np.clip(np.einsum("ekd,ed->ek", xy[None] - a[:, None], ab) / (ab * ab).sum(1, keepdims=True), 0, 1)
    nearest = a[:, None] + t[..., None] * ab[:, None]
    dist = np.linalg.norm(xy[None] - nearest, axis=2)  # (E, m): each node's distance to each segment
    dist[np.arange(len(e)), e[:, 0]] = np.inf
    dist[np.arange(len(e)), e[:, 1]] = np.inf
    spacing = np.min(np.linalg.norm(ab, axis=1))
    blocked = (dist < 0.15 * spacing).any(axis=1)
    return [tuple(x) for x in e[~blocked].tolist()], [tuple(x) for x in e[blocked].tolist()]  # type: ignore[misc]
