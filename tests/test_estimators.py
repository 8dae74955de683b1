"""Variance-reduced estimators (--vr saga, lsvrg): unbiasedness, the residual table, engines against the reference."""

from __future__ import annotations

import copy
import csv
import itertools

import pytest
import torch

from byzrsa.cli import main
from byzrsa.estimators import ESTIMATORS, LocalData, estimate, init_state
from byzrsa.experiments.runner import run
from byzrsa.models import build_model

from test_sim_reference import simulate_and_compare, synthetic  # noqa: F401  (a fixture)

J = 6  # samples of the toy worker


def toy(model_name: str, seed: int = 0):
    """One worker (row) with J samples of 3 x 3 images, its model, and a point away from the start."""
    g = torch.Generator().manual_seed(seed)
    options = {"hidden": 4, "activation": "tanh"} if model_name == "mlp" else {}
    model = build_model(model_name, (1, 3, 3), 3, options)
    raw = torch.randn(J, 1, 3, 3, generator=g, dtype=torch.float64)
    x, y = model.featurize(raw), torch.randint(3, (J,), generator=g)
    start = model.init(torch.Generator().manual_seed(1), torch.float64)
    away = start + 0.5 * torch.randn(model.dim, generator=g, dtype=torch.float64)
    shard = torch.tensor([10, 3, 7, 40, 22, 5])  # ids as a minibatch names them (any order)
    data = LocalData(model, [shard], lambda i: (x, y))
    return model, data, x, y, shard, start, away


def draw(state, data, x, y, shard, w, picks):
    local = torch.tensor([picks])
    return estimate(state, data, slice(0, 1), w.unsqueeze(0), x[local], y[local], shard[local])[0]


@pytest.mark.parametrize("name,model_name,residual", [
    ("saga", "softmax", True), ("saga", "softmax", False), ("saga", "mlp", None), ("lsvrg", "softmax", None),
    ("lsvrg", "mlp", None),
])
def test_estimators_are_unbiased(name, model_name, residual):
    """The mean over every minibatch of 2 (drawn with replacement) is the full local gradient at the point."""
    model, data, x, y, shard, start, away = toy(model_name)
    state = init_state(name, {"p": 0.5}, data, start, [torch.Generator().manual_seed(0)], residual=residual)
    # move the state off its start: a few estimates at other points (the table and snapshot now differ from x)
    for k, picks in enumerate([[0, 1], [2, 2], [4, 5]]):
        draw(state, data, x, y, shard, start + 0.3 * (k + 1) * (away - start), picks)
    full = model.grad(away.unsqueeze(0), x.unsqueeze(0), y.unsqueeze(0))[0]
    total = torch.zeros_like(full)
    for picks in itertools.product(range(J), repeat=2):
        total += draw(copy.deepcopy(state), data, x, y, shard, away, list(picks))
    mean = total / J**2
    torch.testing.assert_close(mean, full, rtol=0, atol=1e-12)
    single = draw(copy.deepcopy(state), data, x, y, shard, away, [0, 3])
    assert (single - full).abs().max() > 1e-6  # one draw is not the full gradient: the test is not vacuous


def test_residual_table_equals_the_full_table_bit_for_bit():
    """SAGA on softmax keeps residuals; expanded, they are the full per-sample table, bit for bit."""
    model, data, x, y, shard, start, away = toy("softmax")
    small = init_state("saga", {}, data, start, [torch.Generator()], residual=True)
    large = init_state("saga", {}, data, start, [torch.Generator()], residual=False)
    assert small.table.shape == (J, 3) and large.table.shape == (J, model.dim)
    for k, picks in enumerate([[0, 1, 1], [2, 2, 5], [4, 5, 0], [3, 3, 3]]):  # duplicates on purpose
        w = start + 0.2 * (k + 1) * (away - start)
        a, b = draw(small, data, x, y, shard, w, picks), draw(large, data, x, y, shard, w, picks)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
        expanded = (small.table.unsqueeze(2) * x.unsqueeze(1)).reshape(J, model.dim)
        assert torch.equal(expanded, large.table)
        torch.testing.assert_close(small.average, large.average, rtol=0, atol=1e-14)
    # and each row is that sample's gradient where it was last drawn, as the model's minibatch gradient gives it
    draw(large, data, x, y, shard, w, list(range(J)))
    for j in range(J):
        grad = model.grad(w.unsqueeze(0), x[j].view(1, 1, -1), y[j].view(1, 1))[0]
        torch.testing.assert_close(large.table[j], grad, rtol=0, atol=1e-15)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("shared", [False, True], ids=["distinct", "shared"])
@pytest.mark.slow
def test_per_sample_gradients_of_the_chain_equal_vmaps(activation, shared):
    """The MLP's hand-written per-sample path against torch.func's vmap(grad), and their mean the minibatch gradient."""
    options = {"hidden": 5, "activation": activation}
    chain = build_model("mlp", (1, 4, 4), 3, options)
    vmapped = build_model("mlp", (1, 4, 4), 3, {**options, "batching": "vmap"})
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, chain.dim, generator=g, dtype=torch.float64)
    w = w[:1].expand(3, -1) if shared else w
    x, y = torch.randn(3, 4, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(3, (3, 4), generator=g)
    got = chain.sample_grads(w, x, y)
    torch.testing.assert_close(got, vmapped.sample_grads(w, x, y), rtol=0, atol=1e-14)
    torch.testing.assert_close(got.mean(dim=1), chain.grad(w, x, y), rtol=0, atol=1e-14)


def test_saga_state_is_plain_and_reloads():
    model, data, x, y, shard, start, away = toy("softmax")
    state = init_state("lsvrg", {"p": 0.5}, data, start, [torch.Generator().manual_seed(3)])
    saved = state.state_dict()
    twin = init_state("lsvrg", {"p": 0.5}, data, start, [torch.Generator().manual_seed(9)])
    twin.load_state_dict(copy.deepcopy(saved))
    for _ in range(5):
        assert torch.equal(draw(state, data, x, y, shard, away, [1, 2]), draw(twin, data, x, y, shard, away, [1, 2]))
    assert torch.equal(state.snapshot, twin.snapshot)


# ---------------------------------------------------------------------------- the simulator against the reference

VR_CASES = [
    dict(vr="saga", method="sgd", attack="sign-flip"),
    dict(vr="saga", method="geomed", attack="gaussian", geomed_tol=1e-15, geomed_max_iter=5000),
    dict(vr="saga", method="rsa", attack="sign-flip", norm="l1"),
    dict(vr="saga", method="sgd", attack="same-value", momentum=0.5),
    dict(vr="lsvrg", method="sgd", attack="sign-flip", **{"vr.p": 0.3}),
    dict(vr="lsvrg", method="geomed", attack="gaussian", geomed_tol=1e-15, geomed_max_iter=5000, **{"vr.p": 0.3}),
    dict(vr="lsvrg", method="rsa", attack="same-value", norm="l2", **{"vr.p": 0.3}),
    dict(vr="lsvrg", method="rsa", attack="none"),  # p = 1/J
]


@pytest.mark.parametrize("settings", VR_CASES, ids=lambda s: f"{s['vr']}-{s['method']}-{s['attack']}")
@pytest.mark.slow
def test_simulator_matches_reference(synthetic, settings):  # noqa: F811
    simulate_and_compare(synthetic, **settings)


@pytest.mark.slow
def test_resumed_saga_run_equals_the_uninterrupted_one(tmp_path):
    base = dict(dataset="digits", workers=5, byzantine=1, batch_size=4, iterations=30, eval_every=5,
                dtype="float64", lr=0.05, checkpoint_every=10, method="geomed", attack="sign-flip", vr="saga")
    whole, part = tmp_path / "whole", tmp_path / "part"
    run(base, whole)
    run({**base, "iterations": 25}, part)
    assert main(["run", "--resume", str(part), "--iterations", "30", "--quiet"]) == 0

    def rows(folder):
        with open(folder / "metrics.csv", newline="") as handle:
            return [{k: v for k, v in r.items() if k != "time"} for r in csv.DictReader(handle)]

    assert rows(whole) == rows(part)
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["sim"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["sim"]
    assert a["vr"]["name"] == "saga" and torch.equal(a["vr"]["table"], b["vr"]["table"])
    assert torch.equal(a["vr"]["average"], b["vr"]["average"]) and torch.equal(a["x0"], b["x0"])


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,words", [
    (["--vr", "nope"], "unknown estimator 'nope'"),
    (["--vr", "lsvrg", "--set", "vr.p=0"], "must be in (0, 1]"),
    (["--vr", "lsvrg", "--set", "vr.p=1.5"], "must be in (0, 1]"),
    (["--vr", "saga", "--set", "vr.p=0.5"], "has no option 'p'"),
    (["--vr", "lsvrg", "--lsvrg-p", "2"], "must be in (0, 1]"),  # the derived flag
    (["--vr", "saga", "--lsvrg-p", "0.5"], "--lsvrg-p is an option of vr lsvrg"),
    (["--vr", "saga", "--model", "cnn"], "without dropout"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, words):
    code = main(["run", *args, "--dataset", "digits" if "cnn" not in args else "mnist-sample", "--iterations", "1",
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err


def test_a_table_that_does_not_fit_is_refused_with_its_numbers(tmp_path, capsys, monkeypatch):
    from byzrsa.engines import common

    monkeypatch.setattr(common, "_available_bytes", lambda: 300 * 2**20)  # 300 MiB
    args = ["run", "--model", "mlp", "--dataset", "mnist-sample", "--iterations", "1", "--quiet"]
    assert main([*args, "--vr", "saga", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--vr saga needs about 0.8 GiB" in err and "--vr lsvrg" in err, err
    assert main([*args, "--vr", "lsvrg", "--out", str(tmp_path / "b")]) == 0  # two vectors per worker fit


def test_estimators_registry_lists_the_three():
    assert ESTIMATORS.names() == ("none", "saga", "lsvrg")


# ---------------------------------------------------------------------------- the dist engine against the simulator


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("settings", [
    pytest.param(dict(method="geomed", attack="sign-flip", vr="saga"), marks=pytest.mark.slow),  # ~8 s
    dict(method="rsa", attack="gaussian", vr="saga"),
], ids=["geomed-saga", "rsa-saga"])
@pytest.mark.slow
def test_dist_matches_simulator(tmp_path, settings):
    from test_dist import config, dist_matches_sim

    dist_matches_sim(tmp_path, config(**settings))


# ---------------------------------------------------------------------------- decentralized: DRSA-SAGA, DRSA-LSVRG


@pytest.fixture(scope="module")
def graph_data():
    from byzrsa.data import load_dataset

    return load_dataset("synthetic", workers=10, heterogeneity=0.5, seed=3)


@pytest.mark.parametrize("settings", [
    dict(method="rsa", norm="l1", topology="two-castle", attack="sign-flip", vr="saga"),
    dict(method="rsa", norm="l2", topology="er", attack="gaussian", vr="lsvrg", **{"vr.p": 0.3}),
    dict(method="trimmed-mean", topology="two-castle", attack="sign-flip", vr="saga"),
], ids=["drsa-saga", "drsa-lsvrg", "trimmed-mean-saga"])
@pytest.mark.slow
def test_decentralized_simulator_matches_reference(graph_data, settings):
    """The graph simulator's nodes get their --vr estimate at their own model, as the per-node reference does."""
    import numpy as np

    from byzrsa.config import RunConfig
    from byzrsa.engines.common import build_problem
    from byzrsa.engines.decentralized import GraphSimulator
    from test_decentralized import graph_reference_run

    iterations = 15
    config = RunConfig().replace(dataset="synthetic", workers=10, byzantine=2, batch_size=4, iterations=iterations,
                                 dtype="float64", seed=5, lr=0.05, lam=0.05, mu=0.01, **settings,
                                 **({"attack.std": 3.0} if settings["attack"] == "gaussian" else {}))
    sim = GraphSimulator(build_problem(config, graph_data))
    with torch.no_grad():
        for _ in range(iterations):
            sim.step()
    expected = graph_reference_run(build_problem(config, graph_data), iterations)
    np.testing.assert_allclose(sim.workers[: config.regular].numpy(), expected, rtol=0, atol=1e-10)


def test_flower_refuses_vr_in_one_line():
    pytest.importorskip("flwr")
    from byzrsa.errors import ConfigError
    from test_flower import config, job_of

    with pytest.raises(ConfigError, match="--vr saga runs on the sim and dist engines") as info:
        job_of(config(workers=4, vr="saga"))
    assert "\n" not in str(info.value)
