"""The simulator's cache-blocked step: the same trajectory whatever the block size.

``BYZRSA_BLOCK_BYTES=1`` makes every block one worker; a budget of 1 GiB makes
the whole step one block. The messages and updates are the same operations on
the same rows, so the baselines and RSA with l1 (whose master pull sums
integers) agree bit for bit; for the other norms the master's pull is summed
block by block (engines/sim.py, "Reduction order") and agrees to 1e-12. Both
are also held to the plain float64 reference loop (tests/reference.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from byzrsa.data import load_dataset
from byzrsa.engines.blocking import BLOCK_BYTES_ENV
from byzrsa.engines.common import build_problem
from byzrsa.engines.sim import Simulator, step_block_rows

from reference import make_config, reference_run

ITERATIONS = 12


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", workers=7, heterogeneity=0.5, seed=3)


def run(dataset, monkeypatch, budget: str, **settings) -> Simulator:
    base = dict(dataset="synthetic", workers=7, byzantine=2, batch_size=4, iterations=ITERATIONS, dtype="float64",
                split="iid", seed=5, lr=0.05, lam=0.05)
    monkeypatch.setenv(BLOCK_BYTES_ENV, budget)
    sim = Simulator(build_problem(make_config(**{**base, **settings}), dataset))
    with torch.no_grad():
        for _ in range(ITERATIONS):
            sim.step()
    return sim


def check_against_reference(sim: Simulator) -> None:
    c = sim.problem.config
    x0, local = reference_run(build_problem(c, sim.problem.dataset), ITERATIONS)
    np.testing.assert_allclose(sim.x0.numpy(), x0, rtol=0, atol=1e-10)
    if local is not None:
        np.testing.assert_allclose(sim.workers[: c.regular].numpy(), local, rtol=0, atol=1e-10)


def test_the_budget_sets_the_rows_per_block(synthetic, monkeypatch):
    one = run(synthetic, monkeypatch, "1", method="rsa", attack="none")
    assert one._rows == 1
    whole = run(synthetic, monkeypatch, "1G", method="rsa", attack="none")
    assert whole._rows >= 7
    assert step_block_rows(whole.problem, budget=1) == 1


@pytest.mark.parametrize("order", ["jacobi", "gauss-seidel"])
@pytest.mark.parametrize("attack", ["same-value", "sign-flip", "copy", "label-flip"])
def test_rsa_l1_is_the_same_bits_for_any_block_size(synthetic, monkeypatch, order, attack):
    one = run(synthetic, monkeypatch, "1", method="rsa", norm="l1", attack=attack, master_order=order)
    whole = run(synthetic, monkeypatch, "1G", method="rsa", norm="l1", attack=attack, master_order=order)
    assert torch.equal(one.x0, whole.x0) and torch.equal(one.workers, whole.workers)
    check_against_reference(one)


@pytest.mark.parametrize("order", ["jacobi", "gauss-seidel"])
@pytest.mark.parametrize("norm", ["l2", "linf", "3"])
def test_rsa_other_norms_agree_to_1e_12_for_any_block_size(synthetic, monkeypatch, order, norm):
    one = run(synthetic, monkeypatch, "1", method="rsa", norm=norm, attack="sign-flip", master_order=order)
    whole = run(synthetic, monkeypatch, "1G", method="rsa", norm=norm, attack="sign-flip", master_order=order)
    scale = float(whole.x0.abs().max())
    torch.testing.assert_close(one.x0, whole.x0, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(one.workers, whole.workers, rtol=0, atol=1e-12 * scale)
    check_against_reference(one)


@pytest.mark.parametrize("method, attack, momentum", [
    ("ideal-sgd", "same-value", 0.0), ("sgd", "copy", 0.0), ("median", "sign-flip", 0.0),
    ("median", "label-flip", 0.9), ("trimmed-mean", "gaussian", 0.5),
])
def test_baselines_are_the_same_bits_for_any_block_size(synthetic, monkeypatch, method, attack, momentum):
    one = run(synthetic, monkeypatch, "1", method=method, attack=attack, momentum=momentum, attack_std=3.0)
    whole = run(synthetic, monkeypatch, "1G", method=method, attack=attack, momentum=momentum, attack_std=3.0)
    assert torch.equal(one.x0, whole.x0)
    check_against_reference(one)


def dropout_net(input_shape, num_classes):
    """A small chain with dropout: each block must draw its rows' masks from their own streams."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                               torch.nn.Linear(8, num_classes))


@pytest.mark.parametrize("batching", ["auto", "vmap"])
@pytest.mark.slow
def test_a_network_with_dropout_agrees_for_any_block_size(monkeypatch, batching):
    ds = load_dataset("mnist-sample", workers=5, quiet=True)
    settings = dict(dataset="mnist-sample", workers=5, byzantine=1, batch_size=4, iterations=3, dtype="float64",
                    model={"name": "test_sim_blocked:dropout_net"}, method="rsa", norm="l2", attack="sign-flip")
    if batching == "vmap":  # the same network through torch.func instead of the hand-batched chain
        settings["model"] = {"name": "mlp", "hidden": 8, "batching": "vmap"}
    sims = []
    for budget in ("1", "1G"):
        monkeypatch.setenv(BLOCK_BYTES_ENV, budget)
        sim = Simulator(build_problem(make_config(**settings), ds))
        with torch.no_grad():
            for _ in range(3):
                sim.step()
        sims.append(sim)
    assert sims[0]._rows == 1 and sims[1]._rows >= 5
    assert sims[0].dropout is not None or batching == "vmap"
    torch.testing.assert_close(sims[0].workers, sims[1].workers, rtol=0, atol=1e-12)
    torch.testing.assert_close(sims[0].x0, sims[1].x0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("budget", ["1", "1G"])
def test_local_variance_by_blocks_is_the_plain_sum(monkeypatch, budget):
    from byzrsa.engines.common import local_variance

    monkeypatch.setenv(BLOCK_BYTES_ENV, budget)
    gen = torch.Generator().manual_seed(2)
    regular, x0 = torch.randn(9, 13, generator=gen), torch.randn(13, generator=gen)
    points = np.vstack([regular.double().numpy(), x0.double().numpy()[None]])
    expected = float(((points - points.mean(axis=0)) ** 2).sum())
    assert local_variance(regular, x0) == pytest.approx(expected, rel=1e-12)
    kept = x0.clone()
    assert local_variance(regular[:0], x0.double()) == 0.0 and torch.equal(x0, kept)


def test_a_sampler_hands_its_block_over_and_draws_the_same_stream():
    from byzrsa.engines.common import BATCH_BLOCK, BatchSampler

    shard = torch.arange(100, 150)
    one, other = BatchSampler(shard, 4, torch.Generator().manual_seed(1)), BatchSampler(shard, 4, torch.Generator().manual_seed(1))
    one.next()
    rows = [one.next_block(), one.next_block()]
    assert one.state_dict()["block"].numel() == 0  # nothing kept after the hand-over
    expected = torch.stack([other.next() for _ in range(2 * BATCH_BLOCK)])
    assert torch.equal(torch.cat(rows), expected[1:])


def test_a_saved_state_keeps_its_indices_when_the_buffer_is_refilled(synthetic, monkeypatch):
    from byzrsa.engines.common import BATCH_BLOCK

    sim = run(synthetic, monkeypatch, "1", method="rsa", attack="none")
    saved = sim.state_dict()
    kept = saved["indices"].clone()
    with torch.no_grad():
        for _ in range(BATCH_BLOCK):  # past the next refill of the (refilled in place) index buffer
            sim.step()
    assert torch.equal(saved["indices"], kept)
