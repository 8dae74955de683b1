"""Models: a flat parameter vector -> loss and gradient, vectorised over workers.

Every worker's model is a flat vector of length ``dim``; the engines stack the
workers' vectors into one ``(m, dim)`` tensor. A model provides

* ``featurize(x)``: turn raw features into model inputs once (softmax adds the bias 1);
* ``init(generator, dtype)``: the starting vector (all workers and x0 share it);
* ``loss_grad(w, x, y)``: batch-mean loss ``(m,)`` and gradient ``(m, dim)`` for
  ``w (m, dim)``, ``x (m, b, ...)``, ``y (m, b)``;
* ``logits(w, x)``: ``(N, C)`` class scores of one model ``w (dim,)``.

The regulariser f0 is *not* part of the model: the update rules add it.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from byzrsa.errors import ConfigError

__all__ = ["Model", "SoftmaxRegression", "TorchModel", "mlp", "build_model", "evaluate", "MODELS"]

MODELS = ("softmax", "mlp")


class Model(Protocol):
    dim: int
    num_classes: int

    def featurize(self, x: Tensor) -> Tensor: ...

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> Tensor: ...

    def loss_grad(self, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]: ...

    def logits(self, w: Tensor, x: Tensor) -> Tensor: ...


class SoftmaxRegression:
    """Multinomial logistic regression with a bias feature (the paper's model).

    The flat vector is the row-major ``(C, n + 1)`` weight matrix; the last
    input feature is the constant 1. Loss is the batch-mean cross-entropy,
    computed with log-sum-exp so raw 0..255 pixels cannot overflow. Gradient:
    ``(softmax(X W^T) - Y)^T X / b``.
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.num_classes = num_classes
        self.dim = num_classes * (num_features + 1)

    def featurize(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        return torch.zeros(self.dim, dtype=dtype)

    def loss_grad(self, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        m, b, n1 = x.shape
        weights = w.view(m, self.num_classes, n1)
        logits = torch.bmm(x, weights.transpose(1, 2))  # (m, b, C)
        log_probs = torch.log_softmax(logits, dim=2)
        loss = -log_probs.gather(2, y.unsqueeze(2)).squeeze(2).mean(dim=1)
        residual = log_probs.exp_()
        residual.scatter_add_(2, y.unsqueeze(2), torch.full_like(residual[..., :1], -1.0))
        grad = torch.bmm(residual.transpose(1, 2), x).div_(b)  # (m, C, n + 1)
        return loss, grad.view(m, self.dim)

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        return x @ w.view(self.num_classes, -1).T


class TorchModel:
    """Adapter that makes any ``torch.nn.Module`` a byzrsa model through ``torch.func``.

    Parameters are flattened in ``named_parameters()`` order. The gradient of
    the batch-mean cross-entropy is taken with ``grad_and_value`` and vectorised
    over workers with ``vmap``. The module's own initialisation (seeded by the
    run's generator) is the common starting point.
    """

    def __init__(self, module: torch.nn.Module, num_classes: int) -> None:
        self.module = module
        self.num_classes = num_classes
        self._names = [name for name, _ in module.named_parameters()]
        self._shapes = [p.shape for _, p in module.named_parameters()]
        self._sizes = [p.numel() for _, p in module.named_parameters()]
        self.dim = sum(self._sizes)

        def batch_loss(flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
            out = functional_call(self.module, self._unflatten(flat), (x,))
            return torch.nn.functional.cross_entropy(out, y)

        self._loss_grad = vmap(grad_and_value(batch_loss))

    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, self._sizes)
        return {n: t.view(s) for n, t, s in zip(self._names, parts, self._shapes)}

    def featurize(self, x: Tensor) -> Tensor:
        return x

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in self.module.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        return torch.nn.utils.parameters_to_vector(self.module.parameters()).detach().to(dtype)

    def loss_grad(self, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self.module.to(w.dtype)
        grad, loss = self._loss_grad(w, x, y)
        return loss, grad

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        self.module.to(w.dtype)
        return functional_call(self.module, self._unflatten(w), (x,))


def mlp(num_features: int, num_classes: int, hidden: int = 64) -> TorchModel:
    """A one-hidden-layer ReLU perceptron wrapped as a :class:`TorchModel`."""
    net = torch.nn.Sequential(
        torch.nn.Linear(num_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes)
    )
    return TorchModel(net, num_classes)


def build_model(name: str, num_features: int, num_classes: int, *, hidden: int = 64) -> Model:
    """The model called ``name`` (``softmax`` or ``mlp``) for the given data shape."""
    if name == "softmax":
        return SoftmaxRegression(num_features, num_classes)
    if name == "mlp":
        return mlp(num_features, num_classes, hidden)
    raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")


@torch.no_grad()
def evaluate(model: Model, w: Tensor, x: Tensor, y: Tensor, chunk: int = 8192) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of one model ``w`` on featurised ``x``."""
    correct, loss_sum = 0, 0.0
    for start in range(0, x.shape[0], chunk):
        out = model.logits(w, x[start : start + chunk])
        target = y[start : start + chunk]
        correct += int((out.argmax(dim=1) == target).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(out, target, reduction="sum"))
    n = max(int(x.shape[0]), 1)
    loss = loss_sum / n
    return correct / n, loss if math.isfinite(loss) else math.inf
