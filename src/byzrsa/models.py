"""Models: a flat parameter vector -> loss and gradient, vectorised over workers.

Every worker's model is a flat vector of length ``dim``; the engines stack the
workers' vectors into one ``(m, dim)`` tensor. A model provides

* ``featurize(x)``: turn raw features into model inputs once (softmax adds the bias 1);
* ``init(generator, dtype)``: the starting vector (all workers and x0 share it);
* ``loss_grad(w, x, y)``: batch-mean loss ``(m,)`` and gradient ``(m, dim)`` for
  ``w (m, dim)``, ``x (m, b, ...)``, ``y (m, b)``; ``w`` may be one vector
  expanded to m rows (``w.expand(m, -1)``), which the baselines' shared model is;
* ``grad(w, x, y)``: the gradient alone (what training needs; may skip the loss);
* ``logits(w, x)``: ``(N, C)`` class scores of one model ``w (dim,)``.

The regulariser f0 is *not* part of the model: the update rules add it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from byzrsa.errors import ConfigError
from byzrsa.registry import Entry, Option, Registry, at_least

__all__ = ["Model", "ModelEntry", "SoftmaxRegression", "TorchModel", "mlp", "build_model", "evaluate", "MODELS"]


class Model(Protocol):
    dim: int
    num_classes: int

    def featurize(self, x: Tensor) -> Tensor: ...

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> Tensor: ...

    def loss_grad(self, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]: ...

    def grad(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor: ...

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

    def _residual(self, w: Tensor, x: Tensor, y: Tensor, with_loss: bool) -> tuple[Tensor | None, Tensor]:
        """``(softmax(logits) - onehot(y)) / b`` laid out ``(m, C, b)``, and the loss if asked.

        Why this shape of computation (float32, m = 20, b = 32, 785 features, 1
        thread; ``benchmarks/``): the forward product as ``W x^T`` is ~25% faster
        than ``x W^T`` (the long dimension is the shared one); a shared model
        (the baselines, ``w`` expanded) takes one ``(m b, n) @ (n, C)`` product
        instead of m small ones; every elementwise pass runs on the small
        ``(m, C, b)`` tensor, never on the ``(m, d)`` gradient, so the 1/b goes
        into the residual.
        """
        m, b, n1 = x.shape
        if w.stride(0) == 0:  # one model shared by every worker
            logits = (x.reshape(m * b, n1) @ w[0].view(self.num_classes, n1).T).view(m, b, -1).transpose(1, 2)
        else:
            logits = torch.bmm(w.view(m, self.num_classes, n1), x.transpose(1, 2))  # (m, C, b)
        z = logits - logits.amax(dim=1, keepdim=True)  # log-sum-exp shift: raw pixels cannot overflow
        target = y.unsqueeze(1)
        z_true = z.gather(1, target) if with_loss else None
        # exp of a very negative z is a denormal, and denormals make the gradient's matrix
        # product ~8x slower on x86 (measured: 1.3 ms vs 0.16 ms); a probability below
        # e * tiny * C * b is noise far under rounding, so it is raised to that floor, which
        # keeps the residual (divided by the sum <= C and by b) normal. The loss is unaffected
        # (the sum is >= 1, and its log is taken before the floor could matter).
        z.clamp_min_(math.log(torch.finfo(z.dtype).tiny * self.num_classes * b) + 1.0)
        e = z.exp_()
        total = e.sum(dim=1, keepdim=True)
        loss = (total.log() - z_true).squeeze(1).mean(dim=1) if z_true is not None else None
        residual = e.div_(total.mul_(b))
        residual.scatter_add_(1, target, residual.new_full((1, 1, 1), -1.0 / b).expand(target.shape))
        return loss, residual

    def loss_grad(self, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss, residual = self._residual(w, x, y, with_loss=True)
        return loss, torch.bmm(residual, x).view(x.shape[0], self.dim)

    def grad(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        _, residual = self._residual(w, x, y, with_loss=False)
        return torch.bmm(residual, x).view(x.shape[0], self.dim)  # (m, C, n + 1), the 1/b already in

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

    def grad(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.loss_grad(w, x, y)[1]

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        self.module.to(w.dtype)
        return functional_call(self.module, self._unflatten(w), (x,))


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 64) -> TorchModel:
    """A one-hidden-layer ReLU perceptron wrapped as a :class:`TorchModel` (inputs flattened)."""
    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, num_classes),
    )
    return TorchModel(net, num_classes)


def softmax_regression(input_shape: tuple[int, ...], num_classes: int) -> SoftmaxRegression:
    return SoftmaxRegression(math.prod(input_shape), num_classes)


@dataclass(frozen=True)
class ModelEntry(Entry):
    """A model: ``fn(input_shape, num_classes, **options) -> Model``; ``input_shape`` is one sample's shape."""


MODELS: Registry[ModelEntry] = Registry("model")
MODELS.register(ModelEntry(
    "softmax", softmax_regression, "softmax regression", "multinomial logistic regression with a bias (the paper's)",
))
MODELS.register(ModelEntry(
    "mlp", mlp, "MLP", "one hidden ReLU layer",
    options=(Option("hidden", int, 64, "hidden units", at_least(1), aliases=("--hidden",)),),
))


def build_model(
    name: str, input_shape: tuple[int, ...] | int, num_classes: int, options: dict[str, Any] | None = None
) -> Model:
    """The model registered as ``name`` for samples of ``input_shape``, with ``options`` over its defaults."""
    entry = MODELS[name]
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    return entry.fn(shape, num_classes, **entry.resolve(options, "model"))


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
