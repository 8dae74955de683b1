"""Decentralized learning: the neighbour rules, the graph attacks, and the simulator against a plain float64
per-node reference loop written from the equations (docs/decentralized.md)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from byzrsa.aggregators import ios
from byzrsa.attacks import AttackContext, get_attack
from byzrsa.config import RunConfig
from byzrsa.data import load_dataset
from byzrsa.decentralized import gossip_mean, self_centred_clipping
from byzrsa.engines.common import build_problem, validate
from byzrsa.engines.decentralized import GraphSimulator
from byzrsa.engines.sim import simulate
from byzrsa.errors import ConfigError

from reference import VarianceReduction, geomed, krum, median, softmax_grad, subgradient, trimmed_mean

ITERATIONS = 6


# ------------------------------------------------------------------ the rules and attacks, one neighbourhood at a time


def ref_ios(rows: list[np.ndarray], f: int, weights: list[float], keep: int | None) -> np.ndarray:
    """Wu, Chen, Ling (TSP 2023), Alg. 1: f times drop the kept row farthest from the weighted mean of the kept rows."""
    kept = list(range(len(rows)))
    for _ in range(f):
        centre = sum(weights[j] * rows[j] for j in kept) / sum(weights[j] for j in kept)
        candidates = [j for j in kept if j != keep]
        far = max(candidates, key=lambda j: (float(np.linalg.norm(rows[j] - centre)), -j))
        kept.remove(far)
    return sum(weights[j] * rows[j] for j in kept) / sum(weights[j] for j in kept)


@pytest.mark.parametrize("seed", range(6))
def test_ios_matches_its_definition(seed):
    gen = torch.Generator().manual_seed(seed)
    n, f = 7, 2
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    x[3] += 10.0  # an outlier
    weights = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
    rows = list(x.numpy())
    got = ios(x, f, weights=weights, keep=0)
    np.testing.assert_allclose(got.numpy(), ref_ios(rows, f, weights.tolist(), 0), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(ios(x, f).numpy(), ref_ios(rows, f, [1.0] * n, None), rtol=1e-13, atol=1e-13)


def test_ios_never_drops_the_kept_row_and_drops_non_finite_first():
    x = torch.tensor([[100.0], [0.0], [1.0], [math.inf]], dtype=torch.float64)
    assert ios(x, 1, keep=0).item() == pytest.approx(101.0 / 3)  # the infinite row goes, the far own row stays
    assert ios(x, 2).item() == pytest.approx(0.5)


def test_gossip_and_self_centred_clipping_match_their_definitions():
    gen = torch.Generator().manual_seed(1)
    own = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    messages = torch.randn(5, 4, generator=gen, dtype=torch.float64) * 3
    messages[4] = math.nan
    receiver = torch.tensor([0, 0, 1, 1, 1])
    w_self, w = torch.tensor([0.5, 0.4], dtype=torch.float64), torch.tensor([0.2, 0.3, 0.1, 0.25, 0.25], dtype=torch.float64)
    gossip = gossip_mean(own[:, :], messages[:4], receiver[:4], w_self, w[:4], (0, 0))
    expected = [0.5 * own[0] + 0.2 * messages[0] + 0.3 * messages[1], 0.4 * own[1] + 0.1 * messages[2] + 0.25 * messages[3]]
    torch.testing.assert_close(gossip, torch.stack(expected), rtol=1e-14, atol=1e-14)
    tau = 1.0
    got = self_centred_clipping(own, messages, receiver, w_self, w, (0, 0), tau=tau)
    for i in range(2):
        total = own[i].clone()
        for e in range(5):
            if receiver[e] != i or not torch.isfinite(messages[e]).all():
                continue
            v = messages[e] - own[i]
            total += w[e] * v * min(1.0, tau / float(v.norm()))
        torch.testing.assert_close(got[i], total, rtol=1e-14, atol=1e-14)


def test_dissensus_and_isolation_follow_their_formulas():
    gen = torch.Generator().manual_seed(2)
    regular = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    x_i = torch.randn(4, generator=gen, dtype=torch.float64)
    w = torch.tensor([0.1, 0.2, 0.15], dtype=torch.float64)
    own = torch.zeros(2, 4, dtype=torch.float64)
    ctx = AttackContext(receiver=x_i, regular_weights=w, byzantine_weight=0.3)
    pull = sum(float(w[j]) * (regular[j] - x_i) for j in range(3))
    z = get_attack("dissensus")(regular, own, ctx, eps=2.0)
    torch.testing.assert_close(z, (x_i - 2.0 * pull / 0.3).expand(2, -1), rtol=1e-14, atol=1e-14)
    iso = get_attack("isolation")(regular, own, ctx)
    # isolation: the receiver's weighted average (self weight 1 - sum of the others) equals its own model
    average = (1 - 0.45 - 0.3) * x_i + sum(float(w[j]) * regular[j] for j in range(3)) + 0.15 * iso[0] + 0.15 * iso[1]
    torch.testing.assert_close(average, x_i, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ the simulator against a per-node reference loop


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", workers=10, heterogeneity=0.5, seed=3)


def ref_attack(name: str, options: dict, regular: list, own: list, generators: list, x_i, w_regular, w_byzantine):
    """What every Byzantine neighbour sends to one receiver (its regular neighbours' messages ``regular``)."""
    mu = sum(regular) / len(regular)
    sigma = np.sqrt(sum((x - mu) ** 2 for x in regular) / len(regular))
    out = []
    for j, g in enumerate(generators):
        if name in ("none", "label-flip"):
            out.append(own[j])
        elif name == "sign-flip":
            out.append(options["sigma"] * own[j])
        elif name == "same-value":
            out.append(np.full_like(x_i, options["c"]))
        elif name == "gaussian":
            noise = torch.randn(len(x_i), generator=g, dtype=torch.float64).numpy() * options["std"]
            out.append(noise + (mu if options["around"] == "mean" else 0.0))
        elif name == "alie":
            out.append(mu - options["z"] * sigma)
        elif name in ("dissensus", "isolation"):
            eps = 1.0 if name == "isolation" else options["eps"]
            out.append(x_i - eps * sum(w * (x - x_i) for w, x in zip(w_regular, regular)) / w_byzantine)
        else:
            raise AssertionError(name)
    return out


def ref_aggregate(method: str, options: dict, own, received: list, w_self: float, weights: list, b: int):
    if method == "mean":
        return w_self * own + sum(w * z for w, z in zip(weights, received))
    if method == "cclip":
        total = own.copy()
        for w, z in zip(weights, received):
            v = z - own
            norm = np.linalg.norm(v)
            total = total + w * v * (1.0 if norm <= options["tau"] else options["tau"] / norm)
        return total
    rows = np.array([own, *received])
    if method == "ios":
        return ref_ios(list(rows), b, [w_self, *weights], 0)
    if method == "median":
        return median(rows)
    if method == "trimmed-mean":
        return trimmed_mean(rows, b)
    if method == "krum":
        return krum(rows, b)
    if method == "geomed":
        return geomed(rows)
    raise AssertionError(method)


def graph_reference_run(problem, iterations: int) -> np.ndarray:
    """One node at a time, float64, from the equations of docs/decentralized.md; the regular nodes' models."""
    c, topology = problem.config, problem.topology
    m, r = c.workers, c.regular
    W = topology.mixing(torch.float64).numpy()
    classes = problem.dataset.num_classes
    x_all, y_all = problem.train_x.double().numpy(), problem.train_y.numpy()
    active = m if problem.needs_own else r
    samplers = [problem.sampler(i) for i in range(active)]
    gens = problem.attack_generators()
    x = [problem.init_vector().double().numpy() for _ in range(m)]
    b = [topology.byzantine_neighbours(i) if c.agg_f is None else c.agg_f for i in range(m)]

    def minibatch_gradient(i: int, w: np.ndarray, batch: np.ndarray) -> np.ndarray:
        y = y_all[batch]
        return softmax_grad(w, x_all[batch], classes - 1 - y if i >= r and c.attack == "label-flip" else y, classes)

    # node i's gradient at its model on its minibatch: plain, or variance-reduced (--vr, tests/reference.py)
    gradient = VarianceReduction(problem, active, minibatch_gradient) if c.vr != "none" else minibatch_gradient
    for k in range(1, iterations + 1):
        alpha = c.lr / math.sqrt(k) if c.lr_schedule == "sqrt" else c.lr
        grads = []
        for i in range(active):
            grads.append(gradient(i, x[i], samplers[i].next().numpy()))
        sent = x if c.method == "rsa" else [x[i] - alpha * (grads[i] + c.mu * x[i]) for i in range(active)]
        new = list(x)
        for i in range(active):
            nbrs = topology.neighbours(i)
            byz = [j for j in nbrs if j >= r]
            received = {j: sent[j] for j in nbrs if j < r or i >= r}
            if i < r and byz:
                reg = [j for j in nbrs if j < r]
                own = [sent[j] for j in byz] if problem.needs_own else [None] * len(byz)
                lies = ref_attack(c.attack, c.attack_options, [sent[j] for j in reg], own, [gens[j - r] for j in byz],
                                  sent[i], [W[i, j] for j in reg], sum(W[i, j] for j in byz))
                received.update(zip(byz, lies))
            order = sorted(received)
            if c.method == "rsa":
                pull = sum(subgradient(x[i] - received[j], problem.p) for j in order)
                new[i] = x[i] - alpha * (grads[i] + c.mu * x[i] + c.lam * pull)
            else:
                method = c.method if i < r else "mean"
                new[i] = ref_aggregate(method, c.method_options, sent[i], [received[j] for j in order], W[i, i],
                                       [W[i, j] for j in order], b[i])
        x = new
    return np.array(x[:r])


CASES = [
    ("rsa", "l1", "er", "sign-flip"),
    ("rsa", "l2", "ring", "dissensus"),
    ("rsa", "l1", "two-castle", "gaussian"),
    ("rsa", "linf", "er", "alie"),
    ("mean", "l1", "er", "isolation"),
    ("mean", "l1", "ring", "none"),
    ("median", "l1", "er", "sign-flip"),
    ("trimmed-mean", "l1", "two-castle", "dissensus"),
    ("geomed", "l1", "er", "same-value"),
    ("krum", "l1", "er", "alie"),
    ("cclip", "l1", "er", "dissensus"),
    ("cclip", "l1", "ring", "gaussian"),
    ("ios", "l1", "er", "isolation"),
    ("ios", "l1", "two-castle", "label-flip"),
]


@pytest.mark.parametrize("method,norm,topology,attack", CASES)
@pytest.mark.slow
def test_simulator_matches_per_node_reference(synthetic, method, norm, topology, attack):
    settings = dict(
        dataset="synthetic", workers=10, byzantine=2, batch_size=4, iterations=ITERATIONS, dtype="float64",
        seed=5, lr=0.05, lam=0.05, mu=0.01, method=method, norm=norm, topology=topology, attack=attack,
    )
    options = {"gaussian": {"attack.std": 3.0, "attack.around": "mean"}, "alie": {"attack.z": 1.0},
               "dissensus": {"attack.eps": 1.5}}.get(attack, {})
    if method == "geomed":
        options.update({"method.tol": 1e-15, "method.max_iter": 5000})
    if method == "cclip":
        options.update({"method.tau": 0.05})
    config = RunConfig().replace(**settings, **options)
    sim = GraphSimulator(build_problem(config, synthetic))
    with torch.no_grad():
        for _ in range(ITERATIONS):
            sim.step()
    expected = graph_reference_run(build_problem(config, synthetic), ITERATIONS)
    np.testing.assert_allclose(sim.workers[: config.regular].numpy(), expected, rtol=0, atol=1e-10)


def test_a_run_reports_the_spread_over_the_regular_nodes(synthetic):
    config = RunConfig(dataset="synthetic", workers=10, byzantine=2, topology="ring", method="rsa", attack="sign-flip",
                       iterations=4, eval_every=2, lr=0.05, lam=0.05)
    rows = list(simulate(build_problem(config, synthetic)))
    assert [r["iteration"] for r in rows] == [0, 2, 4]
    last = rows[-1]
    assert last["accuracy_min"] <= last["accuracy"] <= last["accuracy_max"]
    assert 0.0 <= last["average_accuracy"] <= 1.0 and last["variance"] > 0.0  # the nodes have drifted apart


# ------------------------------------------------------------------ bad input: one line each


@pytest.mark.parametrize("settings,message", [
    (dict(topology="moebius"), "unknown topology"),
    (dict(topology="er", **{"topology.p": 0}), "p"),
    (dict(topology="er", **{"topology.p": 1.5}), "p"),
    (dict(topology="ring", workers=6, byzantine=2, **{"topology.byzantine": "1,4"}), "disconnected"),
    (dict(topology="ring", workers=8, byzantine=2, method="krum", attack="sign-flip"), "node"),
    (dict(topology="er", pre=("nnm",), method="median"), "pre-aggregators"),
    (dict(topology="er", method="ideal-sgd"), "decentralized counterpart"),
    (dict(topology="er", engine="dist", checkpoint_every=5), "no checkpoints"),
    (dict(topology="er", engine="dist", device="cuda", backend="nccl"), "on the CPU"),
    (dict(topology="er", attack="rsa-aware", byzantine=2), "master"),
    (dict(attack="dissensus", byzantine=2), "only on a graph"),
    (dict(**{"topology.p": 0.5}), "no --topology"),
])
def test_bad_graph_settings_are_one_line_errors(settings, message):
    base = dict(workers=12, byzantine=2, attack="sign-flip")
    with pytest.raises(ConfigError, match=message) as info:
        validate(RunConfig().replace(**{**base, **settings}))
    assert "\n" not in str(info.value)


def test_trimmed_mean_refused_for_a_node_with_too_many_byzantine_neighbours():
    # star: the hub (node 0) is regular, the leaves 4 and 5 Byzantine: every leaf has 1 neighbour, so
    # n = 2 rows with b = 0 there; the hub has n = 6 with b = 2 (fine for the trimmed mean, not for Krum)
    validate(RunConfig(topology="star", workers=6, byzantine=2, method="trimmed-mean", attack="sign-flip"))
    with pytest.raises(ConfigError, match="node 0"):
        validate(RunConfig(topology="star", workers=6, byzantine=2, method="krum", attack="sign-flip"))


def test_median_of_an_even_neighbourhood_is_the_true_median():
    rows = torch.tensor([[0.0], [1.0], [2.0], [10.0]], dtype=torch.float64)
    assert statistics.median([0.0, 1.0, 2.0, 10.0]) == 1.5
    from byzrsa.decentralized import aggregate_neighbourhoods

    out = aggregate_neighbourhoods("median", rows[:1], rows[1:], torch.zeros(3, dtype=torch.long),
                                   torch.ones(1, dtype=torch.float64), torch.ones(3, dtype=torch.float64), (0,), {})
    assert out.item() == 1.5


def test_results_folder_of_a_graph_run_has_the_spread_columns(synthetic, tmp_path):
    from byzrsa.experiments.runner import read_metrics, run

    config = RunConfig(dataset="synthetic", workers=10, byzantine=2, topology="er", method="ios", attack="isolation",
                       iterations=4, eval_every=2, lr=0.05)
    summary = run(config, tmp_path / "run", quiet=True, dataset=synthetic)
    rows = read_metrics(tmp_path / "run")
    assert {"accuracy_min", "accuracy_max", "average_accuracy"} <= set(rows[-1])
    assert summary["final_accuracy_min"] == rows[-1]["accuracy_min"]
    assert (tmp_path / "run" / "accuracy.png").exists()


# ------------------------------------------------------------------ the shared properties, over each neighbourhood rule

NEIGHBOUR_RULES = ["mean", "cclip", "ios", "median", "trimmed-mean", "geomed", "krum", "multi-krum"]


def _neighbourhood(seed: int, n: int = 6, d: int = 5):
    gen = torch.Generator().manual_seed(seed)
    own = torch.randn(1, d, generator=gen, dtype=torch.float64)
    messages = torch.randn(n, d, generator=gen, dtype=torch.float64)
    weight = torch.rand(n, generator=gen, dtype=torch.float64) / n + 0.01
    self_weight = (1.0 - weight.sum()).reshape(1)
    return own, messages, weight, self_weight


def _aggregate(rule: str, own, messages, weight, self_weight, b: int = 1):
    from byzrsa.aggregators import RULES
    from byzrsa.decentralized import aggregate_neighbourhoods

    options = RULES[rule].resolve({"tau": 0.5} if rule == "cclip" else {}, "method")
    options = {k: v for k, v in options.items() if k != "iters"}
    receiver = torch.zeros(len(messages), dtype=torch.long)
    return aggregate_neighbourhoods(rule, own, messages, receiver, self_weight, weight, (b,), options)


@pytest.mark.parametrize("rule", NEIGHBOUR_RULES)
@pytest.mark.parametrize("seed", range(4))
def test_neighbour_rules_ignore_the_order_of_the_neighbours(rule, seed):
    own, messages, weight, self_weight = _neighbourhood(seed)
    perm = torch.randperm(len(messages), generator=torch.Generator().manual_seed(100 + seed))
    a = _aggregate(rule, own, messages, weight, self_weight)
    b = _aggregate(rule, own, messages[perm], weight[perm], self_weight)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rule", NEIGHBOUR_RULES)
def test_neighbour_rules_return_identical_inputs(rule):
    own, messages, weight, self_weight = _neighbourhood(7)
    v = own.expand(len(messages), -1).clone()
    torch.testing.assert_close(_aggregate(rule, own, v, weight, self_weight), own, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("rule", [r for r in NEIGHBOUR_RULES if r != "cclip"])  # clipping radius is absolute
def test_neighbour_rules_are_translation_and_scale_equivariant(rule):
    own, messages, weight, self_weight = _neighbourhood(11)
    t = torch.linspace(-3.0, 3.0, own.shape[1], dtype=torch.float64)
    base = _aggregate(rule, own, messages, weight, self_weight)
    moved = _aggregate(rule, own + t, messages + t, weight, self_weight)
    torch.testing.assert_close(moved, base + t, rtol=1e-9, atol=1e-9)
    scaled = _aggregate(rule, 2.5 * own, 2.5 * messages, weight, self_weight)
    torch.testing.assert_close(scaled, 2.5 * base, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("rule", [r for r in NEIGHBOUR_RULES if r != "mean"])
def test_robust_neighbour_rules_stay_bounded_with_b_outliers(rule):
    own, messages, weight, self_weight = _neighbourhood(13, n=8)
    messages[0] = 1e6
    out = _aggregate(rule, own, messages, weight, self_weight, b=1)
    honest = torch.cat([own, messages[1:]])
    assert bool((out <= honest.max(0).values + 1.0).all() and (out >= honest.min(0).values - 1.0).all())


def test_cli_refuses_bad_topologies_in_one_line(tmp_path):
    from byzrsa.cli import main

    for args in (["--topology", "moebius"], ["--topology", "er", "--set", "topology.p=2"],
                 ["--topology", "edges", "--set", f"topology.file={tmp_path / 'missing.txt'}"],
                 ["--topology", "ring", "--byzantine", "2", "--attack", "sign-flip", "--set", "topology.byzantine=1,4",
                  "--workers", "6"]):
        out = tmp_path / "run"
        try:
            code = main(["run", "--quiet", "--iterations", "2", "--out", str(out), *args])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        assert code == 2, args
        assert not out.exists(), args
