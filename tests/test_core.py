"""Update rules and models against their definitions (the attacks: tests/test_attacks.py)."""

from __future__ import annotations

import math

import pytest
import torch

from byzrsa.methods import aggregation_step, rsa_master_step, rsa_worker_step, step_size
from byzrsa.models import SoftmaxRegression, evaluate, mlp


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
