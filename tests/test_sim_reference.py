"""The vectorised simulator against the plain float64 reference loop (tests/reference.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from byzrsa.data import load_dataset
from byzrsa.engines.common import build_problem
from byzrsa.engines.sim import Simulator

from reference import make_config, reference_run

ITERATIONS = 20


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", workers=7, heterogeneity=0.5, seed=3)


def simulate_and_compare(dataset, **settings):
    base = dict(
        dataset="synthetic", workers=7, byzantine=2, batch_size=4, iterations=ITERATIONS, dtype="float64",
        split="iid", seed=5, lr=0.05, lam=0.05, attack_std=3.0,
    )
    config = make_config(**{**base, **settings})
    problem = build_problem(config, dataset)
    sim = Simulator(problem)
    with torch.no_grad():
        for _ in range(ITERATIONS):
            sim.step()
    expected_x0, expected_local = reference_run(build_problem(config, dataset), ITERATIONS)
    np.testing.assert_allclose(sim.x0.numpy(), expected_x0, rtol=0, atol=1e-10)
    if expected_local is not None:
        np.testing.assert_allclose(sim.workers[: config.regular].numpy(), expected_local, rtol=0, atol=1e-10)
    return sim


@pytest.mark.parametrize("norm", ["l1", "l2", "linf", "3"])
@pytest.mark.parametrize("attack", ["same-value", "sign-flip", "non-finite", "gaussian", "copy", "negated-copy"])
@pytest.mark.slow
def test_rsa_matches_reference(synthetic, norm, attack):
    sim = simulate_and_compare(synthetic, method="rsa", norm=norm, attack=attack, attack_value=math.inf)
    assert torch.isfinite(sim.x0).all()  # nothing a Byzantine worker sends can poison x0


@pytest.mark.parametrize("order", ["jacobi", "gauss-seidel"])
def test_rsa_master_orders_match_reference(synthetic, order):
    simulate_and_compare(synthetic, method="rsa", attack="negative-sum", master_order=order, lr_schedule="constant")


@pytest.mark.parametrize("method", ["sgd", "ideal-sgd", "geomed", "krum", "median", "trimmed-mean", "multi-krum"])
@pytest.mark.parametrize("attack", ["sign-flip", "copy", "negative-sum", "gaussian", "same-value", "negated-copy"])
@pytest.mark.slow
def test_baselines_match_reference(synthetic, method, attack):
    simulate_and_compare(synthetic, method=method, attack=attack, geomed_tol=1e-15, geomed_max_iter=5000)


def test_master_orders_differ(synthetic):
    """The option is real: the two orders give different trajectories."""
    a = simulate_and_compare(synthetic, method="rsa", attack="none", master_order="jacobi")
    b = simulate_and_compare(synthetic, method="rsa", attack="none", master_order="gauss-seidel")
    assert not torch.allclose(a.x0, b.x0)
