"""Theory checks at small sizes: x~*, lambda0 and consensus where lambda0 is known in closed form."""

from __future__ import annotations

import json
import math

import pytest
import torch

from byzrsa.cli import main
from byzrsa.config import RunConfig
from byzrsa.experiments.paper.theory import (
    decaying_step, fit_slope, lambda0, objective_from_config, quadratic_objective, run_rsa, solve_consensus,
)


def quadratic_targets(obj, x):
    """The b_i of a quadratic objective, read back from its gradients x - b_i."""
    return x - obj.full(x.expand(obj.r, -1))[1]


@pytest.fixture()
def quadratic():
    # F_i(x) = 1/2 ||x - b_i||^2, m = 6 workers (q = 1 Byzantine, so r = 5), mu = 0.5.
    gen = torch.Generator().manual_seed(0)
    targets = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    m, mu = 6, 0.5
    r = targets.shape[0]
    x_star = targets.mean(dim=0) * r / (r + m * mu)  # grad: (1/m) sum (x - b_i) + mu x = 0
    lam0 = float((x_star - targets).abs().max() / m)  # l1 penalty: dual norm is l-inf
    return quadratic_objective(targets, m, mu), x_star, lam0


def test_solution_and_lambda0_match_closed_form(quadratic):
    obj, x_star, lam0 = quadratic
    solved, gnorm = solve_consensus(obj)
    assert gnorm < 1e-9
    torch.testing.assert_close(solved, x_star, atol=1e-9, rtol=0)
    computed, per_worker = lambda0(obj, solved, p=1.0)
    assert computed == pytest.approx(lam0, rel=1e-8)
    assert per_worker.shape == (5,)
    l2, _ = lambda0(obj, solved, p=2.0)  # the dual of l2 is l2: max_i ||x* - b_i||_2 / m
    assert l2 == pytest.approx(float((x_star - quadratic_targets(obj, x_star)).norm(dim=1).max()) / 6, rel=1e-8)


def test_consensus_above_lambda0_not_below(quadratic):
    obj, x_star, lam0 = quadratic
    step = decaying_step(0.5, 20.0)
    above = run_rsa(obj, lam=2 * lam0, iterations=3000, step=step, x_star=x_star, stochastic=False, record=[300, 3000])
    below = run_rsa(obj, lam=0.2 * lam0, iterations=3000, step=step, x_star=x_star, stochastic=False, record=[300, 3000])
    scale = float(x_star.norm())
    # Above lambda0: every x_i and x0 approach x~*, up to the subgradient jitter, which shrinks like the
    # step (~1/k): ten times more iterations, about ten times closer.
    assert above["gap"][-1] < 0.1 * scale and above["gap"][-1] < 0.2 * above["gap"][0]
    assert math.sqrt(above["dist2"][-1]) < 0.1 * scale
    assert math.sqrt(above["dist2"][-1]) < 0.2 * math.sqrt(above["dist2"][0])
    # Well below lambda0: the workers stay apart (the gap does not shrink) and x0 is not x~*.
    assert below["gap"][-1] > 1.0 * scale and below["gap"][-1] > 0.9 * below["gap"][0]
    assert math.sqrt(below["dist2"][-1]) > 1.0 * scale


def test_byzantine_error_grows_with_q(quadratic):
    obj, x_star, lam0 = quadratic
    step = decaying_step(0.5, 20.0)
    errors = [run_rsa(obj, lam=2 * lam0, iterations=1500, step=step, x_star=x_star, q=q, stochastic=False)["dist2"][-1]
              for q in (0, 1, 2)]
    assert errors[0] < errors[1] < errors[2]


@pytest.mark.slow
def test_softmax_lambda0_is_an_optimality_certificate():
    config = RunConfig(dataset="synthetic", split="natural", workers=4, heterogeneity=0.5, mu=1.0, dtype="float64")
    obj = objective_from_config(config)
    x_star, gnorm = solve_consensus(obj)
    assert gnorm < 1e-7
    lam0, per_worker = lambda0(obj, x_star, p=1.0)
    _, grads = obj.full(x_star.expand(obj.r, -1))
    # Stationarity of problem (3), and lambda0 is the largest scaled local gradient.
    assert float((grads.sum(0) / obj.m + obj.mu * x_star).abs().max()) < 1e-7
    assert lam0 == pytest.approx(float((grads / obj.m).abs().max()))


def test_fit_slope():
    ks = [10, 100, 1000]
    assert fit_slope(ks, [1 / k for k in ks]) == pytest.approx(-1.0)


@pytest.mark.slow
def test_lambda0_command(capsys):
    code = main(["lambda0", "--dataset", "synthetic", "--split", "natural", "--workers", "4", "--heterogeneity", "0.5",
                 "--mu", "1", "--lam", "10"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["norm"] == "l1" and 0 < result["lambda0"] < 10 and result["consensus_guaranteed"] is True
    assert len(result["per_worker"]) == 4
