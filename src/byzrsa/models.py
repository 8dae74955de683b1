"""Models: a flat parameter vector -> loss and gradient, vectorised over workers.

Every worker's model is a flat vector of length ``dim``; the engines stack the
workers' vectors into one ``(m, dim)`` tensor. A model provides

* ``featurize(x)``: turn raw samples ``(N, *sample_shape)`` into model inputs
  once (softmax regression flattens them and adds the bias 1; a network keeps
  the image shape);
* ``init(generator, dtype)``: the starting vector (all workers and x0 share it);
* ``loss_grad(w, x, y, generators=None)``: batch-mean loss ``(m,)`` and gradient
  ``(m, dim)`` for ``w (m, dim)``, ``x (m, b, *input_shape)``, ``y (m, b)``;
  ``w`` may be one vector expanded to m rows (``w.expand(m, -1)``), which the
  baselines' shared model is;
* ``grad(w, x, y, generators=None)``: the gradient alone (what training needs);
* ``logits(w, x)``: ``(N, C)`` class scores of one model ``w (dim,)``, in
  evaluation mode (dropout off);
* ``stochastic``: whether training draws random numbers (dropout). A
  stochastic model needs ``generators``, one ``torch.Generator`` per row of
  ``w``, and row i's randomness comes from ``generators[i]`` alone.

The regulariser f0 is *not* part of the model: the update rules add it. The
torch-module adapter, its batching paths and its dropout streams are described
in :class:`TorchModel` and in docs/models.md.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from byzrsa.blas import bmm
from byzrsa.errors import ConfigError, did_you_mean
from byzrsa.nets import cnn_net, lenet5_net, mlp_net
from byzrsa.registry import Entry, Option, Registry, at_least, one_of
from byzrsa.torch_model import BATCHING, TorchModel

__all__ = [
    "Model",
    "ModelEntry",
    "ModelRegistry",
    "SoftmaxRegression",
    "Rows",
    "TorchModel",
    "BATCHING",
    "mlp",
    "cnn",
    "lenet5",
    "build_model",
    "evaluate",
    "MODELS",
]


class Model(Protocol):
    dim: int
    num_classes: int
    stochastic: bool

    def featurize(self, x: Tensor) -> Tensor: ...

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> Tensor: ...

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, generators: Sequence[torch.Generator] | None = None
    ) -> tuple[Tensor, Tensor]: ...

    def grad(self, w: Tensor, x: Tensor, y: Tensor, generators: Sequence[torch.Generator] | None = None) -> Tensor: ...

    def logits(self, w: Tensor, x: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class Rows:
    """A minibatch not copied yet: rows ``index`` of ``source``, seen as ``shape = (k, b, *sample_shape)``.

    ``Problem.gather`` returns one for a model that gathers its own minibatch
    (one with a ``gather_rows(source, index, shape)`` method, as
    :class:`SoftmaxRegression`), which then reads it a few workers at a time.
    """

    source: Tensor  # (N, *sample_shape), featurised
    index: Tensor  # (k * b,) int64, on the source's device
    shape: tuple[int, ...]

    @property
    def dtype(self) -> torch.dtype:
        return self.source.dtype

    @property
    def device(self) -> torch.device:
        return self.source.device

    def take(self, lo: int, hi: int, out: Tensor | None = None) -> Tensor:
        """Workers ``lo .. hi - 1``'s samples, ``(hi - lo, b, *sample_shape)`` (into ``out`` if given)."""
        b = self.shape[1]
        index = self.index[lo * b : hi * b]
        if out is None:
            return self.source.index_select(0, index).view(hi - lo, *self.shape[1:])
        return torch.index_select(self.source, 0, index, out=out).view(hi - lo, *self.shape[1:])

    def materialize(self) -> Tensor:
        """The whole minibatch as one tensor of ``shape``."""
        return self.take(0, self.shape[0])


class SoftmaxRegression:
    """Multinomial logistic regression with a bias feature (the paper's model).

    The flat vector is the row-major ``(C, n + 1)`` weight matrix; the last
    input feature is the constant 1. Loss is the batch-mean cross-entropy,
    computed with log-sum-exp so raw 0..255 pixels cannot overflow. Gradient:
    ``(softmax(X W^T) - Y)^T X / b``. Samples of any shape are flattened in
    row-major order, so a ``(1, 28, 28)`` image gives the same 784 features
    (and the same numbers) as the flat vector it came from.
    """

    stochastic = False

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
        instead of m small ones; every elementwise pass runs on the small ``(m, C, b)`` tensor,
        never on the ``(m, d)`` gradient, so the 1/b goes into the residual. The
        per-worker products go through :func:`byzrsa.blas.bmm`.
        """
        m, b, n1 = x.shape
        if w.stride(0) == 0:  # one model shared by every worker: (m b, C), seen as (m, C, b)
            weights = w[0].view(1, self.num_classes, n1).transpose(1, 2)
            logits = bmm(x.reshape(1, m * b, n1), weights).view(m, b, -1).transpose(1, 2)
        else:
            logits = bmm(w.view(m, self.num_classes, n1), x.transpose(1, 2))  # (m, C, b)
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

    def gather_rows(self, source: Tensor, index: Tensor, shape: tuple[int, ...]) -> Rows:
        """The minibatch ``source[index]`` seen as ``shape``, left uncopied (:class:`Rows`); see :meth:`grad`."""
        return Rows(source, index, tuple(shape))

    def loss_grad(
        self, w: Tensor, x: Tensor | Rows, y: Tensor, generators: Sequence[torch.Generator] | None = None
    ) -> tuple[Tensor, Tensor]:
        if isinstance(x, Rows):
            loss, grad = self._by_chunks(w, x, y, with_loss=True)
            return loss, grad  # type: ignore[return-value]
        loss, residual = self._residual(w, x, y, with_loss=True)
        return loss, bmm(residual, x).view(x.shape[0], self.dim)

    def grad(
        self, w: Tensor, x: Tensor | Rows, y: Tensor, generators: Sequence[torch.Generator] | None = None
    ) -> Tensor:
        """The gradient ``(m, dim)``; ``x`` a gathered ``(m, b, n + 1)`` tensor or the :class:`Rows` to gather.

        :class:`Rows` (what :meth:`gather_rows` returns, and so what the engines'
        ``Problem.gather`` passes) are gathered ``CHUNK`` workers at a time into one
        reused buffer, each chunk's forward and backward products run while it is
        in cache, and the gradient rows are written in place: the same numbers as
        the gathered path, bit for bit (tested), without a ``(m, b, n + 1)`` copy
        (1 GB at m = 10 000) and ~12% faster per worker at m >= 600.
        """
        if isinstance(x, Rows):
            return self._by_chunks(w, x, y, with_loss=False)[1]
        _, residual = self._residual(w, x, y, with_loss=False)
        return bmm(residual, x).view(x.shape[0], self.dim)  # (m, C, n + 1), the 1/b already in

    #: workers gathered and differentiated at a time when the batch comes as :class:`Rows`
    CHUNK = 64

    def _by_chunks(self, w: Tensor, x: Rows, y: Tensor, with_loss: bool) -> tuple[Tensor | None, Tensor]:
        m, b = y.shape
        if m <= self.CHUNK:  # one chunk: gather it whole
            return self.loss_grad(w, x.take(0, m), y) if with_loss else (None, self.grad(w, x.take(0, m), y))
        n1 = x.shape[-1]
        grad = torch.empty(m, self.dim, dtype=w.dtype, device=w.device)
        loss = torch.empty(m, dtype=w.dtype, device=w.device) if with_loss else None
        buffer = torch.empty(self.CHUNK * b, n1, dtype=x.dtype, device=x.device)
        for lo in range(0, m, self.CHUNK):
            hi = min(lo + self.CHUNK, m)
            xb = x.take(lo, hi, out=buffer[: (hi - lo) * b])
            part, residual = self._residual(w[lo:hi], xb, y[lo:hi], with_loss)
            bmm(residual, xb, out=grad[lo:hi].view(hi - lo, self.num_classes, n1))
            if loss is not None:
                loss[lo:hi] = part
        return loss, grad

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        return x @ w.view(self.num_classes, -1).T

    # Per-sample gradients, for variance reduction (byzrsa.estimators): sample j's gradient is
    # r_j (outer) x_j with r_j = softmax(W x_j) - onehot(y_j), so a table keeps r_j, C numbers.
    def sample_residuals(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Each sample's residual ``softmax(W x_j) - onehot(y_j)``, ``(m, b, C)``, for ``w (m, dim)``, ``x (m, b, n + 1)``.

        The same operations as the minibatch gradient's residual with b = 1 (the
        log-sum-exp shift and the floor on the probabilities), without the 1/b.
        """
        m, b, n1 = x.shape
        if w.stride(0) == 0:  # one model shared by every worker: one product, as in _residual
            logits = (x.reshape(m * b, n1) @ w[0].view(self.num_classes, n1).T).view(m, b, -1).transpose(1, 2)
        else:
            logits = torch.bmm(w.view(m, self.num_classes, n1), x.transpose(1, 2))  # (m, C, b)
        z = logits - logits.amax(dim=1, keepdim=True)
        z.clamp_min_(math.log(torch.finfo(z.dtype).tiny * self.num_classes) + 1.0)
        e = z.exp_()
        residual = e.div_(e.sum(dim=1, keepdim=True))
        target = y.unsqueeze(1)
        residual.scatter_add_(1, target, residual.new_full((1, 1, 1), -1.0).expand(target.shape))
        return residual.transpose(1, 2)

    def combine(self, x: Tensor, coefficients: Tensor) -> Tensor:
        """``sum_j c_j (outer) x_j`` per row, ``(m, dim)``, for ``x (m, b, n + 1)`` and residual-like ``c (m, b, C)``."""
        return self.combine_rows(x, coefficients).reshape(x.shape[0], self.dim)

    def combine_rows(self, x: Tensor, coefficients: Tensor) -> Tensor:
        """``sum_j c_j (outer) x_j`` per row as ``(m, k, n + 1)``, for any number k of coefficients per sample."""
        return torch.bmm(coefficients.transpose(1, 2), x)

    def sample_grads(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Each sample's gradient ``(m, b, dim)``: its residual times its features."""
        r = self.sample_residuals(w, x, y)
        return (r.unsqueeze(3) * x.unsqueeze(2)).reshape(*r.shape[:2], self.dim)



# --------------------------------------------------------------------------- registered models


def _built(factory: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """``factory(*args, **kwargs)`` under a fixed seed: building a model never reads or moves torch's global stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return factory(*args, **kwargs)


def mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: int = 64, batching: str = "auto", activation: str = "relu"
) -> TorchModel:
    """A one-hidden-layer perceptron, ReLU or tanh (:func:`byzrsa.nets.mlp_net`), as a :class:`TorchModel`."""
    return TorchModel(_built(mlp_net, input_shape, num_classes, hidden, activation), num_classes, batching=batching)


def cnn(input_shape: tuple[int, ...], num_classes: int, batching: str = "auto") -> TorchModel:
    """The PyTorch MNIST example CNN of the bucketing paper (:func:`byzrsa.nets.cnn_net`) as a :class:`TorchModel`."""
    return TorchModel(_built(cnn_net, input_shape, num_classes), num_classes, batching=batching)


def lenet5(input_shape: tuple[int, ...], num_classes: int, batching: str = "auto") -> TorchModel:
    """LeNet-5 with ReLU and max-pooling (:func:`byzrsa.nets.lenet5_net`) as a :class:`TorchModel`."""
    return TorchModel(_built(lenet5_net, input_shape, num_classes), num_classes, batching=batching)


def softmax_regression(input_shape: tuple[int, ...], num_classes: int) -> SoftmaxRegression:
    return SoftmaxRegression(math.prod(input_shape), num_classes)


@dataclass(frozen=True)
class ModelEntry(Entry):
    """A model: ``fn(input_shape, num_classes, **options) -> Model``; ``input_shape`` is one sample's shape."""


@dataclass(frozen=True)
class _FactoryEntry(ModelEntry):
    """A user's factory named by import path. Options come from its signature: keywords with a
    bool/int/float/str default are typed options; other keywords (``loose``) pass through as
    given; ``required`` ones must be given; ``any_keyword`` (a ``**kwargs``) takes any name."""

    loose: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    any_keyword: bool = False

    def resolve(self, given: Any, kind: str) -> dict[str, Any]:
        given = dict(given or {})
        typed = [opt.name for opt in self.options]
        names = [*typed, *self.loose]
        unknown = [] if self.any_keyword else sorted(set(given) - set(names))
        if unknown:
            raise ConfigError(
                f"{kind} {self.name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
                f"{', '.join(names) or 'none'}"
            )
        missing = [name for name in self.required if name not in given]
        if missing:
            raise ConfigError(f"{kind} {self.name!r} needs option {', '.join(map(repr, missing))} (no default)")
        resolved = super().resolve({k: v for k, v in given.items() if k in typed}, kind)
        resolved.update({k: v for k, v in given.items() if k not in typed})
        return resolved


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _factory_entry(path: str) -> _FactoryEntry:
    """The entry of a ``"package.module:Factory"`` model, or a one-line :class:`ConfigError`."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ConfigError(f"model {path!r} is not an import path: write it as 'package.module:Factory'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or whatever the module raised while importing
        raise ConfigError(
            f"model {path!r}: cannot import {module_name!r} ({_one_line(exc)}); check the name and that its "
            f"folder is on PYTHONPATH"
        ) from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"model {path!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model {path!r}: {attr!r} is not callable; it must be Factory(input_shape, num_classes)")
    options, loose, required, any_keyword = [], [], [], False
    try:
        params = list(inspect.signature(target).parameters.values())[2:]  # after input_shape, num_classes
    except (TypeError, ValueError):  # no inspectable signature: take any keyword as given
        params, any_keyword = [], True
    for param in params:
        if param.kind is param.VAR_KEYWORD:
            any_keyword = True
        elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            if param.default is param.empty:
                required.append(param.name)
                loose.append(param.name)
            elif type(param.default) in (bool, int, float, str):
                options.append(Option(param.name, type(param.default), param.default, f"option of {path}"))
            else:
                loose.append(param.name)

    def build(input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> Model:
        try:
            made = _built(target, input_shape, num_classes, **kwargs)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"model {path!r} failed to build for inputs {input_shape}: {_one_line(exc)}") from None
        if isinstance(made, nn.Module):
            return TorchModel(made, num_classes)
        if all(hasattr(made, a) for a in ("dim", "init", "grad", "loss_grad", "logits", "featurize")):
            return made  # already a byzrsa Model
        raise ConfigError(f"model {path!r} returned {type(made).__name__}, not a torch.nn.Module")

    return _FactoryEntry(path, build, attr.rsplit(".", 1)[-1], f"user model {path}", tuple(options),
                         loose=tuple(loose), required=tuple(required), any_keyword=any_keyword)


class ModelRegistry(Registry[ModelEntry]):
    """The model registry; a name containing ``':'`` is an import path ``"package.module:Factory"``.

    ``Factory(input_shape, num_classes, **options)`` returns a ``torch.nn.Module``
    (wrapped in a :class:`TorchModel`) or an object that already follows
    :class:`Model`. Looking such a name up imports the module; membership
    (``in``) only checks the form, so that the lookup gives the precise error.
    """

    def __getitem__(self, name: str) -> ModelEntry:
        if isinstance(name, str) and name not in self.entries and ":" in name:
            return _factory_entry(name)
        try:
            return self.entries[name]
        except (KeyError, TypeError):
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.entries)}: choose one of {', '.join(self.entries)}, "
                f"or give a factory as 'package.module:Factory'"
            ) from None

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and ":" in name:
            module_name, _, attr = name.partition(":")
            return bool(module_name) and bool(attr) and ":" not in attr
        return name in self.entries


_BATCHING_OPTION = Option(
    "batching", str, "auto", "how the workers' gradients are batched: auto, vmap, loop, or chain (Linear layers only)",
    one_of(*BATCHING),
)

MODELS: ModelRegistry = ModelRegistry("model")
MODELS.register(ModelEntry(
    "softmax", softmax_regression, "softmax regression", "multinomial logistic regression with a bias (the paper's)",
))
MODELS.register(ModelEntry(
    "mlp", mlp, "MLP", "one hidden ReLU (or tanh) layer",
    options=(Option("hidden", int, 64, "hidden units", at_least(1), aliases=("--hidden",)), _BATCHING_OPTION,
             Option("activation", str, "relu", "hidden activation: relu or tanh", one_of("relu", "tanh"))),
))
MODELS.register(ModelEntry(
    "cnn", cnn, "CNN", "the PyTorch MNIST example CNN of the bucketing paper (2 conv, dropout), images only",
    options=(_BATCHING_OPTION,),
))
MODELS.register(ModelEntry(
    "lenet5", lenet5, "LeNet-5", "LeNet-5 with ReLU and max-pooling, images of at least 12 x 12",
    options=(_BATCHING_OPTION,),
))


def build_model(
    name: str, input_shape: tuple[int, ...] | int, num_classes: int, options: dict[str, Any] | None = None
) -> Model:
    """The model registered as ``name`` (or the factory at import path ``name``) for samples of ``input_shape``.

    ``options`` are laid over the entry's defaults; an unknown name or option is a :class:`ConfigError`.
    """
    entry = MODELS[name]
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(int(s) for s in input_shape)
    return entry.fn(shape, num_classes, **entry.resolve(options, "model"))


@torch.no_grad()
def evaluate(model: Model, w: Tensor, x: Tensor, y: Tensor, chunk: int | None = None) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of one model ``w`` on featurised ``x``.

    ``chunk`` samples at a time; by default the model's ``eval_batch`` (a
    network's activations for 8192 images would take gigabytes), else 8192.
    """
    if chunk is None:
        chunk = model.eval_batch(tuple(x.shape[1:])) if hasattr(model, "eval_batch") else 8192
    correct, loss_sum = 0, 0.0
    for start in range(0, x.shape[0], chunk):
        out = model.logits(w, x[start : start + chunk])
        target = y[start : start + chunk]
        correct += int((out.argmax(dim=1) == target).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(out, target, reduction="sum"))
    n = max(int(x.shape[0]), 1)
    loss = loss_sum / n
    return correct / n, loss if math.isfinite(loss) else math.inf
