"""Topologies: each builder against its definition, mixing weights against a plain loop, relabelling, bad input.

The references here are written from the definitions (sets of pairs, Python
loops, a breadth-first search over dicts), not from the module's code.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch

from byzrsa.errors import ConfigError
from byzrsa.topologies import (
    TOPOLOGIES,
    Topology,
    build_topology,
    check_neighbourhoods,
    parse_edge_file,
)


def user_edges(t: Topology) -> set[tuple[int, int]]:
    """The edges in the user's labels (maps canonical labels back)."""
    return {tuple(sorted((t.labels[i], t.labels[j]))) for i, j in t.edges}


def connected(nodes: set[int], edges: set[tuple[int, int]]) -> bool:
    """Plain breadth-first search: are ``nodes`` connected by the edges among them?"""
    if not nodes:
        return True
    nbrs = {v: set() for v in nodes}
    for a, b in edges:
        if a in nodes and b in nodes:
            nbrs[a].add(b)
            nbrs[b].add(a)
    start = min(nodes)
    seen, todo = {start}, [start]
    while todo:
        for w in nbrs[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen == nodes


def reference_mixing(t: Topology) -> list[list[float]]:
    """W from the definition, one entry at a time."""
    m = t.m
    adj = [[False] * m for _ in range(m)]
    for i, j in t.edges:
        adj[i][j] = adj[j][i] = True
    deg = [sum(row) for row in adj]
    w = [[0.0] * m for _ in range(m)]
    for i in range(m):
        for j in range(m):
            if adj[i][j]:
                w[i][j] = 1.0 / (1 + max(deg[i], deg[j])) if t.weighting == "metropolis" else 1.0 / (1 + max(deg))
        w[i][i] = 1.0 - sum(w[i][j] for j in range(m) if j != i)
    return w


# ---------------------------------------------------------------------------------------------
# Builders against their definitions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [2, 5, 12])
def test_complete(m):
    t = build_topology("complete", m, 0)
    assert set(t.edges) == set(itertools.combinations(range(m), 2))
    assert [t.degree(i) for i in range(m)] == [m - 1] * m


@pytest.mark.parametrize("m", [2, 3, 10])
def test_ring(m):
    t = build_topology("ring", m, 0)
    assert user_edges(t) == {tuple(sorted((i, (i + 1) % m))) for i in range(m)}
    assert len(t.edges) == (1 if m == 2 else m)
    for i in range(m):
        assert set(t.neighbours(i)) == {(i - 1) % m, (i + 1) % m}


@pytest.mark.parametrize(("m", "rows", "shape"), [(9, None, (3, 3)), (12, None, (3, 4)), (30, None, (5, 6)),
                                                  (12, 4, (4, 3)), (36, 3, (3, 12))])
def test_torus(m, rows, shape):
    t = build_topology("torus", m, 0, {} if rows is None else {"rows": rows})
    r, c = shape
    assert len(t.edges) == 2 * m
    for u in range(m):
        y, x = divmod(u, c)
        expected = {((y + 1) % r) * c + x, ((y - 1) % r) * c + x, y * c + (x + 1) % c, y * c + (x - 1) % c}
        assert set(t.neighbours(u)) == expected


@pytest.mark.parametrize("m", [6, 12])
def test_two_castle(m):
    t = build_topology("two-castle", m, 0)
    k = m // 2
    castle = [u // k for u in range(m)]
    for u in range(m):
        twin = (u + k) % m
        # inside its castle: everyone; across: everyone but its twin
        assert set(t.neighbours(u)) == set(range(m)) - {u, twin}
        assert castle[twin] != castle[u]
    assert len(t.edges) == 2 * k * (k - 1)


def test_star():
    t = build_topology("star", 7, 2)
    assert t.edges == tuple((0, i) for i in range(1, 7))
    assert [t.degree(i) for i in range(7)] == [6] + [1] * 6


def test_er_full_probability_is_complete():
    t = build_topology("er", 8, 2, {"p": 1.0})
    assert set(t.edges) == set(itertools.combinations(range(8), 2))


def test_er_reproducible_from_its_seed_and_independent_of_the_run_seed():
    a = build_topology("er", 20, 3, {"p": 0.3, "graph_seed": 7}, seed=1)
    b = build_topology("er", 20, 3, {"p": 0.3, "graph_seed": 7}, seed=99)
    c = build_topology("er", 20, 3, {"p": 0.3, "graph_seed": 8}, seed=1)
    assert a == b and a.edges != c.edges
    # graph_seed none: the run's seed decides the graph
    assert build_topology("er", 20, 3, {"p": 0.3, "graph_seed": "none"}, seed=7) == a


def test_er_edge_fraction_near_p():
    m, p = 60, 0.3
    t = build_topology("er", m, 0, {"p": p, "graph_seed": 3})
    assert abs(len(t.edges) / (m * (m - 1) / 2) - p) < 0.05  # 1770 pairs: 0.05 is > 4 standard deviations


@pytest.mark.parametrize("graph_seed", range(6))
def test_er_regular_nodes_connected(graph_seed):
    # p small enough that some draws disconnect the regular nodes and are redrawn
    t = build_topology("er", 14, 4, {"p": 0.2, "graph_seed": graph_seed, "byzantine": "0,3,5,9"})
    regular_users = {t.labels[c] for c in range(t.regular)}
    assert regular_users == set(range(14)) - {0, 3, 5, 9}
    assert connected(regular_users, user_edges(t))
    assert t.regular_connected()


# ---------------------------------------------------------------------------------------------
# Derived data: adjacency, mixing, directed edges
# ---------------------------------------------------------------------------------------------

CASES = [("complete", 6, 1, {}), ("ring", 7, 2, {"byzantine": "3,4"}), ("torus", 12, 2, {}),
         ("er", 12, 2, {"p": 0.5}), ("two-castle", 12, 2, {"byzantine": "1,7"}), ("star", 6, 1, {}),
         ("er", 10, 0, {"p": 0.4, "weighting": "uniform"}), ("torus", 9, 1, {"weighting": "uniform"})]


@pytest.mark.parametrize(("name", "m", "q", "options"), CASES)
def test_mixing_matches_the_definition(name, m, q, options):
    t = build_topology(name, m, q, options)
    w = t.mixing()
    assert w.dtype == torch.float64
    assert torch.equal(w, w.T)
    torch.testing.assert_close(w.sum(0), torch.ones(m, dtype=torch.float64), rtol=0, atol=1e-14)
    torch.testing.assert_close(w.sum(1), torch.ones(m, dtype=torch.float64), rtol=0, atol=1e-14)
    assert (w >= 0).all()
    torch.testing.assert_close(w, torch.tensor(reference_mixing(t), dtype=torch.float64), rtol=0, atol=1e-15)
    assert t.mixing(torch.float32).dtype == torch.float32


@pytest.mark.parametrize(("name", "m", "q", "options"), CASES)
def test_adjacency_neighbours_and_directed_edges(name, m, q, options):
    t = build_topology(name, m, q, options)
    adj = t.adjacency()
    assert adj.dtype == torch.bool and torch.equal(adj, adj.T) and not adj.diagonal().any()
    pairs = {(i, j) for i in range(m) for j in range(m) if adj[i, j]}
    assert pairs == {(i, j) for i, j in t.edges} | {(j, i) for i, j in t.edges}
    src, dst = t.directed_edges()
    assert src.dtype == dst.dtype == torch.int64 and len(src) == 2 * len(t.edges)
    listed = list(zip(dst.tolist(), src.tolist()))
    assert listed == sorted(listed) and {(s, d) for d, s in listed} == pairs
    for i in range(m):
        assert t.neighbours(i) == tuple(sorted(j for j in range(m) if adj[i, j]))
        assert t.degree(i) == len(t.neighbours(i))
        assert t.byzantine_neighbours(i) == sum(1 for j in t.neighbours(i) if j >= m - q)
    assert t.regular == m - q


@pytest.mark.parametrize(("name", "m", "q", "options"), CASES)
def test_edge_weights_are_the_mixing_matrix_without_its_zeros(name, m, q, options):
    t = build_topology(name, m, q, options)
    w, w_self = t.edge_weights()
    src, dst = t.directed_edges()
    dense = t.mixing()
    torch.testing.assert_close(w, dense[dst, src], rtol=0, atol=1e-15)
    torch.testing.assert_close(w_self, dense.diagonal(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_regular_components_match_a_plain_search(seed):
    g = torch.Generator().manual_seed(seed)
    m, q = 16, 5
    pairs = [(i, j) for i, j in itertools.combinations(range(m), 2) if torch.rand(1, generator=g) < 0.12]
    t = Topology("x", m, tuple(pairs), q, tuple(range(m)))
    parts = t.regular_components()
    assert sorted(x for part in parts for x in part) == list(range(m - q))
    for part in parts:
        assert part == sorted(part) and connected(set(part), set(pairs))
    for a, b in itertools.combinations(parts, 2):
        assert not connected(set(a) | set(b), set(pairs))
    assert t.regular_connected() == (len(parts) == 1)


@pytest.mark.slow
def test_large_ring_is_checked_without_a_dense_matrix():
    t = build_topology("ring", 20_000, 2)  # 20 000 x 20 000 would be 400 MB of booleans
    assert t.regular_connected() and len(t.edges) == 20_000
    with pytest.raises(ConfigError, match="2 parts"):
        build_topology("ring", 20_000, 2, {"byzantine": "5,10000"})


def test_byzantine_list_relabels_and_keeps_the_graph():
    plain = build_topology("two-castle", 12, 0)
    t = build_topology("two-castle", 12, 3, {"byzantine": "7,1,4"})
    assert t.labels == (0, 2, 3, 5, 6, 8, 9, 10, 11, 1, 4, 7)  # regular in order, then the Byzantine sorted
    assert user_edges(t) == set(plain.edges)  # the same graph: isomorphic through labels
    # on an irregular graph, the mixing matrix is the same matrix with rows and columns permuted
    plain = build_topology("er", 12, 0, {"p": 0.5, "graph_seed": 2})
    t = build_topology("er", 12, 3, {"p": 0.5, "graph_seed": 2, "byzantine": "7,1,4"})
    assert user_edges(t) == set(plain.edges) and len({plain.degree(i) for i in range(12)}) > 1
    perm = torch.tensor(t.labels)
    torch.testing.assert_close(t.mixing(), plain.mixing()[perm][:, perm], rtol=0, atol=1e-15)
    assert build_topology("ring", 6, 2, {"byzantine": "4,5"}).labels == tuple(range(6))


def test_er_byzantine_list_draws_the_same_graph_as_the_last_q():
    # the draw does not depend on which nodes are Byzantine when both placements stay connected
    a = build_topology("er", 10, 2, {"p": 0.9, "graph_seed": 1})
    b = build_topology("er", 10, 2, {"p": 0.9, "graph_seed": 1, "byzantine": "0,1"})
    assert user_edges(a) == user_edges(b)


def test_check_neighbourhoods_names_the_users_node():
    t = build_topology("ring", 6, 1, {"byzantine": "2"})
    seen = []
    check_neighbourhoods(t, lambda n, b: seen.append((n, b)))
    assert seen == [(3, 0), (3, 1), (3, 1), (3, 0), (3, 0)]  # users 0, 1, 3, 4, 5: 1 and 3 touch node 2

    def trimmed(n: int, b: int) -> None:
        if n <= 2 * b + 1:
            raise ConfigError(f"trimmed-mean needs more than 2b + 1 = {2 * b + 1} values, got {n}")

    with pytest.raises(ConfigError, match=r"^node 1: trimmed-mean needs more than 2b \+ 1 = 3 values, got 3$"):
        check_neighbourhoods(t, trimmed)


# ---------------------------------------------------------------------------------------------
# Edge files
# ---------------------------------------------------------------------------------------------


def test_edge_file_good(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("# a square with a diagonal\n0 1\n1 2  # trailing comment\n\n  2 3\n3 0\n2 0\n0 2\n")
    assert parse_edge_file(path, 4) == [(0, 1), (1, 2), (2, 3), (3, 0), (2, 0), (0, 2)]
    t = build_topology("edges", 4, 1, {"file": str(path)})
    assert t.edges == ((0, 1), (0, 2), (0, 3), (1, 2), (2, 3))


@pytest.mark.parametrize(("text", "match"), [
    ("0 1\n1\n", r"line 2 \('1'\): expected two integer node ids"),
    ("0 1 0.5\n", r"line 1 .*expected two integer node ids"),
    ("0 x\n", r"line 1 .*expected two integer node ids"),
    ("0 1.0\n", r"line 1 .*expected two integer node ids"),
    ("0 1\n\n# c\n1 4\n", r"line 4 \('1 4'\): node id 4 is outside 0\.\.3"),
    ("-1 2\n", r"line 1 .*node id -1 is outside"),
    ("0 1\n2 2\n", r"line 2 .*self loop on node 2"),
])
def test_edge_file_malformed(tmp_path, text, match):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        build_topology("edges", 4, 0, {"file": str(path)})
    assert "\n" not in str(info.value) and "bad.txt" in str(info.value)


def test_edge_file_missing_or_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="cannot read edge file .*nope.txt"):
        build_topology("edges", 4, 0, {"file": str(tmp_path / "nope.txt")})
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read edge file"):
        build_topology("edges", 4, 0, {"file": str(binary)})
    with pytest.raises(ConfigError, match="needs its edge list"):
        build_topology("edges", 4, 0, {})


# ---------------------------------------------------------------------------------------------
# Bad input: one line each
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "m", "q", "options", "match"), [
    ("grid", 6, 0, {}, r"unknown topology 'grid': choose one of complete, ring, torus, er"),
    ("ring", 1, 0, {}, r"number of nodes m must be >= 2"),
    ("ring", 4, 4, {}, r"leave none of the m = 4 nodes regular"),
    ("ring", 4, -1, {}, r"Byzantine nodes q must be >= 0"),
    ("er", 6, 1, {"p": 0}, r"option 'p' must be in \(0, 1\]"),
    ("er", 6, 1, {"p": "1.01"}, r"option 'p' must be in \(0, 1\]"),
    ("er", 6, 1, {"p": "many"}, r"option 'p' must be a number"),
    ("er", 12, 2, {"p": 0.01}, r"disconnected in all 100 draws .*raise p"),
    ("ring", 6, 2, {"byzantine": "1,4"}, r"the regular nodes' subgraph is disconnected: 2 parts \(0, 5; 2, 3\)"),
    ("star", 5, 1, {"byzantine": "0"}, r"regular nodes' subgraph is disconnected"),
    ("ring", 6, 2, {"byzantine": "1"}, r"lists 1 nodes but q = 2"),
    ("ring", 6, 2, {"byzantine": "1,1"}, r"lists a node twice"),
    ("ring", 6, 1, {"byzantine": "6"}, r"node 6 is outside 0\.\.5"),
    ("ring", 6, 1, {"byzantine": "-1"}, r"must be node ids separated by commas"),
    ("ring", 6, 1, {"weighting": "max"}, r"option 'weighting' must be one of metropolis, uniform"),
    ("ring", 6, 1, {"p": 0.5}, r"has no option 'p'; its options are: byzantine, weighting"),
    ("torus", 7, 0, {}, r"m = 7 has no such factorisation"),
    ("torus", 8, 0, {}, r"m = 8 has no such factorisation"),
    ("torus", 12, 0, {"rows": 5}, r"'rows' = 5 must divide m = 12"),
    ("torus", 12, 0, {"rows": 2}, r"option 'rows' must be >= 3"),
    ("two-castle", 7, 0, {}, r"needs an even m >= 6"),
    ("two-castle", 4, 0, {}, r"needs an even m >= 6"),
])
def test_bad_input_is_one_clear_line(name, m, q, options, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_topology(name, m, q, options)
    assert "\n" not in str(info.value)


def test_topology_checks_its_own_invariants():
    Topology("x", 3, ((0, 1), (1, 2)), 1, (0, 1, 2))
    for bad in [dict(edges=((1, 0),)), dict(edges=((0, 1), (0, 1))), dict(edges=((0, 3),)), dict(edges=((1, 1),)),
                dict(q=3), dict(labels=(0, 0, 1)), dict(weighting="max")]:
        kwargs = {"name": "x", "m": 3, "edges": ((0, 1),), "q": 1, "labels": (0, 1, 2), **bad}
        with pytest.raises(ConfigError):
            Topology(**kwargs)


def test_every_entry_shares_the_byzantine_and_weighting_options():
    for name, entry in TOPOLOGIES.items():
        names = [opt.name for opt in entry.options]
        assert names[-2:] == ["byzantine", "weighting"], name
        assert entry.label and entry.help
        assert entry.resolve({}, "topology")["weighting"] == "metropolis"


# ---------------------------------------------------------------------------------------------
# Picture and command line
# ---------------------------------------------------------------------------------------------


def test_torus_picture_bends_exactly_the_wrap_around_edges():
    from byzrsa.topologies import _split_edges

    t = build_topology("torus", 12, 0)  # 3 x 4
    straight, curved = _split_edges(np.asarray(t.positions), t.edges)
    wrap = {(r * 4, r * 4 + 3) for r in range(3)} | {(c, 8 + c) for c in range(4)}
    assert set(curved) == wrap and len(straight) == 24 - 7


def test_cli_topology_prints_facts_and_draws(tmp_path, capsys):
    from byzrsa.cli import main

    out = tmp_path / "pics" / "er.png"
    code = main(["topology", "er", "--workers", "12", "--byzantine", "2", "--set", "topology.p=0.5",
                 "--set", "topology.byzantine=3,8", "--out", str(out)])
    assert code == 0
    facts = json.loads(capsys.readouterr().out)
    t = build_topology("er", 12, 2, {"p": 0.5, "byzantine": "3,8"})
    assert facts["edges"] == len(t.edges) and facts["byzantine"] == [3, 8]
    assert facts["degree_max"] == max(t.degree(i) for i in range(12))
    assert 0 < facts["spectral_gap"] <= 1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in out.with_suffix(".svg").read_text()
    assert facts["files"] == [str(out), str(out.with_suffix(".svg"))]


@pytest.mark.parametrize(("args", "match"), [
    (["grid"], "unknown topology 'grid'"),
    (["ring", "--workers", "6", "--byzantine", "2", "--set", "topology.byzantine=1,4"], "disconnected"),
    (["er", "--set", "topology.p=2"], r"option 'p' must be in \(0, 1\]"),
    (["er", "--set", "p=0.5"], "--set takes topology.OPTION=VALUE"),
    (["ring", "--set", "topology.rows=3"], "has no option 'rows'"),
    (["edges", "--workers", "3", "--set", "topology.file=BAD"], "line 1 .*self loop"),
    (["star", "--workers", "1"], "m must be >= 2"),
])
def test_cli_topology_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, match):
    from byzrsa.cli import main

    bad = tmp_path / "bad.txt"
    bad.write_text("1 1\n")
    args = [a.replace("BAD", str(bad)) for a in args]
    out = tmp_path / "pics" / "x.png"
    assert main(["topology", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("byzrsa: error: ")
    assert re.search(match, err)
    assert not (tmp_path / "pics").exists()


def test_cli_topology_help_lists_every_topology_and_option(capsys):
    from byzrsa.cli import main

    assert main(["topology", "--help"]) == 0
    text = capsys.readouterr().out
    for name, entry in TOPOLOGIES.items():
        assert f"  {name}: " in text
        for opt in entry.options:
            assert f"{opt.name} = " in text
