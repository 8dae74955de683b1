"""Attacks, update rules and models against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from byzrsa.attacks import ATTACKS, AttackContext, check_attack, get_attack
from byzrsa.errors import ConfigError
from byzrsa.methods import aggregation_step, rsa_master_step, rsa_worker_step, step_size
from byzrsa.models import SoftmaxRegression, evaluate, mlp

REGULAR = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
OWN = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)


def gens(n: int, seed: int = 0) -> AttackContext:
    """An attack context with one generator per Byzantine row."""
    return AttackContext(generators=[torch.Generator().manual_seed(seed + j) for j in range(n)], workers=3, byzantine=n)


def test_attacks_follow_their_definitions():
    assert get_attack("same-value")(REGULAR, OWN, gens(1), c=100.0).tolist() == [[100.0] * 3]
    assert get_attack("sign-flip")(REGULAR, OWN, gens(1), sigma=-4.0).tolist() == [[-2.0, 4.0, -8.0]]
    assert get_attack("copy")(REGULAR, OWN, gens(1), copy_from=1).tolist() == [[4.0, 5.0, 6.0]]
    assert get_attack("negative-sum")(REGULAR, OWN, gens(1)).tolist() == [[-5.0, -7.0, -9.0]]
    assert torch.isnan(get_attack("non-finite")(REGULAR, OWN, gens(1), value=math.nan)).all()
    assert torch.isinf(get_attack("non-finite")(REGULAR, OWN, gens(1), value=-math.inf)).all()
    assert get_attack("none")(REGULAR, OWN, gens(1)).tolist() == OWN.tolist()


def test_gaussian_attack_draws_one_stream_per_byzantine_worker():
    own = torch.zeros(3, 1000, dtype=torch.float64)
    regular = torch.zeros(2, 1000, dtype=torch.float64)
    sent = get_attack("gaussian")(regular, own, gens(3), std=5.0)
    assert sent.shape == (3, 1000) and sent.dtype == torch.float64
    assert 4.5 < float(sent.std()) < 5.5
    # Row j depends only on generator j: that is what lets a Byzantine process draw its own row.
    alone = get_attack("gaussian")(regular[:, :], own[1:2], AttackContext([torch.Generator().manual_seed(1)]), std=5.0)
    assert torch.equal(alone[0], sent[1])


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_keeps_shape_dtype_and_handles_no_byzantine(name):
    params = {"value": math.inf} if name == "non-finite" else {}
    out = get_attack(name)(REGULAR.float(), OWN.float(), gens(1), **params)
    assert out.shape == OWN.shape and out.dtype == torch.float32
    empty = get_attack(name)(REGULAR, OWN[:0], AttackContext(), **params)
    assert empty.shape == (0, 3)


def test_attack_validation():
    with pytest.raises(ConfigError, match="unknown attack"):
        get_attack("teleport")
    with pytest.raises(ConfigError, match="copy"):
        check_attack("copy", regular=3, byzantine=1, options={"copy_from": 3})
    with pytest.raises(ConfigError, match="non-finite"):
        check_attack("non-finite", regular=3, byzantine=1, options={"value": 1.0})


def test_step_size():
    assert step_size(0.1, 1) == 0.1 and step_size(0.1, 4) == pytest.approx(0.05)
    assert step_size(0.1, 9, "constant") == 0.1
    with pytest.raises(ValueError):
        step_size(0.1, 0)


def test_rsa_steps_by_hand():
    x0 = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64)
    x = torch.tensor([[1.0, 1.0, -3.0]], dtype=torch.float64)
    grad = torch.tensor([[4.0, 0.0, 8.0]], dtype=torch.float64)
    # x - alpha (grad/m + lam sign(x - x0)), m = 4, lam = 0.5, alpha = 0.1
    stepped = rsa_worker_step(x, x0, grad, lam=0.5, p=1.0, alpha=0.1, m=4)
    assert torch.allclose(stepped, torch.tensor([[1 - 0.1 * 1.5, 1.0, -3 - 0.1 * (2 - 0.5)]], dtype=torch.float64))
    messages = torch.tensor([[1.0, 1.0, -3.0], [math.nan, math.inf, -math.inf]], dtype=torch.float64)
    # x0 - alpha (mu x0 + lam sum sign(x0 - z)); NaN contributes 0, sign(1 - inf) = -1, sign(-1 + inf) = +1
    new = rsa_master_step(x0, messages, lam=0.5, p=1.0, alpha=0.1, mu=0.01)
    pull = torch.tensor([-1.0 + 0.0, 0.0 - 1.0, 1.0 + 1.0], dtype=torch.float64)
    assert torch.allclose(new, x0 - 0.1 * (0.01 * x0 + 0.5 * pull))
    assert torch.equal(rsa_master_step(x0, messages[:0], lam=0.5, p=1.0, alpha=0.1, mu=0.0), x0)


def test_aggregation_step():
    x = torch.ones(3)
    out = aggregation_step(x, torch.stack([torch.ones(3), 3 * torch.ones(3)]), lambda g: g.mean(0), alpha=0.5)
    assert torch.allclose(out, torch.zeros(3))


def test_softmax_gradient_matches_autograd():
    torch.manual_seed(0)
    model = SoftmaxRegression(num_features=6, num_classes=4)
    x = model.featurize(torch.randn(3 * 5, 6, dtype=torch.float64) * 50).view(3, 5, 7)  # large inputs: stable?
    y = torch.randint(0, 4, (3, 5))
    w = torch.randn(3, model.dim, dtype=torch.float64, requires_grad=True)
    loss, grad = model.loss_grad(w.detach(), x, y)
    logits = torch.bmm(x, w.view(3, 4, 7).transpose(1, 2))
    expected_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 4), y.reshape(-1), reduction="none").view(3, 5).mean(1)
    (expected_grad,) = torch.autograd.grad(expected_loss.sum(), w)
    assert torch.allclose(loss, expected_loss.detach()) and torch.allclose(grad, expected_grad)
    assert x[..., -1].eq(1).all()  # the bias feature


def test_softmax_raw_pixels_do_not_overflow():
    model = SoftmaxRegression(784, 10)
    x = model.featurize(torch.full((4, 784), 255.0)).view(1, 4, 785)
    w = torch.full((1, model.dim), 3.0)
    w[0, :785] = 10.0
    loss, grad = model.loss_grad(w, x, torch.tensor([[1, 1, 1, 1]]))
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()


def test_mlp_trains_through_torch_func():
    torch.manual_seed(0)
    centers = torch.randn(3, 5) * 3
    labels = torch.randint(0, 3, (600,))
    data = centers[labels] + torch.randn(600, 5)
    model = mlp((5,), 3, hidden=16)
    w = model.init(torch.Generator().manual_seed(0), torch.float32)
    before, _ = evaluate(model, w, data, labels)
    batches = data.view(4, 150, 5)  # four "workers", full-batch each
    targets = labels.view(4, 150)
    for _ in range(60):
        loss, grad = model.loss_grad(w.expand(4, -1), batches, targets)
        w = w - 0.3 * grad.mean(0)
    after, after_loss = evaluate(model, w, data, labels)
    assert grad.shape == (4, model.dim) and loss.shape == (4,)
    assert after > 0.9 and after > before
