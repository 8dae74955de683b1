"""The decentralized run on real processes (--engine dist --topology): the simulator's trajectory, and its faults.

Each test launches one process per node (forked from the forkserver, as the
master/worker engine's tests do) on tiny data: a few seconds each.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from byzrsa.decentralized import graph_edges
from byzrsa.engines.common import build_problem, validate
from byzrsa.engines.decentralized import GraphSimulator, graph_metrics
from byzrsa.engines.dist.faults import FAULTS_ENV, FaultPlan
from byzrsa.engines.dist.peer import peer_plan, run_peers
from byzrsa.engines.sim import simulate
from byzrsa.experiments.runner import run
from reference import make_config

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

BASE = dict(dataset="synthetic", workers=7, byzantine=2, batch_size=4, iterations=4, eval_every=2, dtype="float64",
            seed=5, lr=0.05, lam=0.05, timeout=20.0, engine="dist")
METRICS = ("accuracy", "test_loss", "train_loss", "variance", "accuracy_min", "accuracy_max", "average_accuracy")


def both(faults: str = "", **settings) -> tuple[list[dict], list[dict], dict]:
    c = make_config(**{**BASE, **settings})
    sim = list(simulate(build_problem(c.replace(engine="sim"))))
    extra: dict = {}
    dist = list(run_peers(build_problem(c), extra, FaultPlan.parse(faults)))
    return sim, dist, extra


def assert_same(sim: list[dict], dist: list[dict]) -> None:
    assert [r["iteration"] for r in dist] == [r["iteration"] for r in sim]
    for a, b in zip(sim, dist):
        for key in METRICS:
            assert abs(a[key] - b[key]) <= 1e-10, (key, a, b)


@pytest.mark.parametrize("settings", [
    dict(topology="ring", method="rsa", attack="sign-flip"),
    dict(topology="er", method="mean", attack="dissensus"),
    dict(topology="er", method="ios", attack="alie", workers=8),
], ids=["ring-drsa-signflip", "er-gossip-dissensus", "er-ios-alie"])
def test_processes_follow_the_simulator(settings):
    sim, dist, extra = both(**settings)
    assert_same(sim, dist)
    assert extra["dead_workers"] == [] and extra["malformed_messages"] == {}


def test_byzantine_nodes_hear_two_hops_when_they_forge():
    c = make_config(**{**BASE, "topology": "ring", "method": "rsa", "attack": "alie"})
    edges = graph_edges(build_problem(c).topology)
    byz = peer_plan(edges, 5, lies=True)  # ring 0..6: node 5's neighbours 4, 6; two hops 3, 0
    assert byz.neighbours == (4, 6) and byz.hears_from == (0, 3, 4, 6) and [i for i, *_ in byz.receivers] == [4]
    regular = peer_plan(edges, 3, lies=True)  # tells its neighbours and the Byzantine node 5, two hops away
    assert regular.sends_to == (2, 4, 5) and regular.hears_from == (2, 4)
    assert peer_plan(edges, 3, lies=False).sends_to == (2, 4)


def simulated_without(c, node: int, from_iteration: int) -> dict:
    """The simulator's last row over the regular nodes but ``node``, its edges removed from ``from_iteration`` on."""
    problem = build_problem(c.replace(engine="sim"))
    sim = GraphSimulator(problem)
    with torch.no_grad():
        while sim.k < from_iteration - 1:
            sim.step()
        t = problem.topology
        cut = dataclasses.replace(t, edges=tuple(e for e in t.edges if node not in e))
        rest = GraphSimulator(dataclasses.replace(problem, parts=dataclasses.replace(problem.parts, topology=cut)))
        rest.load_state_dict(sim.state_dict())
        while rest.k < c.iterations:
            rest.step()
    live = [i for i in range(c.regular) if i != node]
    return graph_metrics(problem, rest.workers[live])


def test_a_killed_node_is_dropped_and_drsa_goes_on_as_on_the_graph_without_it():
    sim, dist, extra = both("1:3:exit", topology="er", method="rsa", attack="sign-flip")
    assert_same(sim[:2], dist[:2])  # iterations 0 and 2: before node 1 died
    dead = extra["dead_workers"]
    assert {d["worker"] for d in dead} == {1}
    assert {"iteration": 4, "worker": 1} == {k: dead[0][k] for k in ("iteration", "worker")}
    assert all("iteration 3: connection closed" in d["reason"] for d in dead[1:]) and len(dead) > 1
    # DRSA loses the dead node's terms from round 3 on: the simulator on the graph without its edges, over the
    # other regular nodes (the documented behaviour, docs/decentralized.md)
    expected = simulated_without(make_config(**{**BASE, "topology": "er", "method": "rsa", "attack": "sign-flip"}), 1, 3)
    assert_same([{"iteration": 4, **expected}], dist[-1:])
    assert dist[-1]["variance"] != sim[-1]["variance"]


@pytest.mark.slow  # waits out two timeouts (about 5 s)
def test_a_hung_node_is_dropped_after_the_timeout():
    _, dist, extra = both("3:3:hang", topology="ring", method="median", attack="sign-flip", workers=6, byzantine=1,
                          timeout=1.0, agg_f=0)
    by_launcher = [d for d in extra["dead_workers"] if "dropped_by" not in d]
    assert by_launcher == [{"worker": 3, "iteration": 4, "reason": "did not report within 4 s of the others"}]
    dropped = {(d["worker"], d["dropped_by"], d["reason"]) for d in extra["dead_workers"] if "dropped_by" in d}
    # its ring neighbours and the Byzantine node two hops away; nobody else (the late ones sent HOLDs)
    assert dropped == {(3, 2, "iteration 3: timed out"), (3, 4, "iteration 3: timed out"),
                       (3, 5, "iteration 3: timed out")}
    assert [r["iteration"] for r in dist] == [0, 2, 4] and math.isfinite(dist[-1]["train_loss"])


def test_malformed_frames_are_byzantine_messages(monkeypatch):
    """Through run(), as the CLI: the fault plan from the environment, the counts in the summary."""
    monkeypatch.setenv(FAULTS_ENV, "2:2:size,1:2:foreign,0:3:kind,3:3:oversize")
    summary = run(make_config(**{**BASE, "topology": "er", "method": "mean", "attack": "sign-flip"}), None)
    bad = summary["malformed_messages"]
    assert sorted(bad) == ["0", "1", "2", "3"]
    assert "104 entries, expected 105" in bad["2"]["first"] and "expected MSG of iteration 3, got LOCAL" in bad["0"]["first"]
    assert "more than the" in bad["3"]["first"]
    assert summary["dead_workers"] == []  # dropped for the round only, nobody timed out
    assert summary["iterations"] == 4 and math.isfinite(summary["final_train_loss"])


def test_dist_with_a_topology_is_a_valid_run():
    validate(make_config(dataset="synthetic", workers=7, byzantine=2, topology="ring", method="rsa", engine="dist"))
