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
from itertools import accumulate
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from byzrsa.errors import ConfigError
from byzrsa.nets import cnn_net, lenet5_net, mlp_net
from byzrsa.registry import Entry, Option, Registry, at_least, one_of

__all__ = [
    "Model",
    "ModelEntry",
    "ModelRegistry",
    "SoftmaxRegression",
    "TorchModel",
    "BATCHING",
    "mlp",
    "cnn",
    "lenet5",
    "build_model",
    "evaluate",
    "MODELS",
]

#: How :class:`TorchModel` batches the workers' gradients (see its docstring).
BATCHING: tuple[str, ...] = ("auto", "vmap", "loop", "chain")


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

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, generators: Sequence[torch.Generator] | None = None
    ) -> tuple[Tensor, Tensor]:
        loss, residual = self._residual(w, x, y, with_loss=True)
        return loss, torch.bmm(residual, x).view(x.shape[0], self.dim)

    def grad(self, w: Tensor, x: Tensor, y: Tensor, generators: Sequence[torch.Generator] | None = None) -> Tensor:
        _, residual = self._residual(w, x, y, with_loss=False)
        return torch.bmm(residual, x).view(x.shape[0], self.dim)  # (m, C, n + 1), the 1/b already in

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        return x @ w.view(self.num_classes, -1).T


# --------------------------------------------------------------------------- torch modules

# Dropout layers whose masks TorchModel draws itself; value: how many leading axes of one
# sample the mask spans (None: every element, as nn.Dropout; 1: whole channels).
_DROPOUTS: dict[type, int | None] = {nn.Dropout: None, nn.Dropout1d: 1, nn.Dropout2d: 1, nn.Dropout3d: 1}


@dataclass(frozen=True)
class _Site:
    """One call of a dropout layer in a forward pass: its drop probability and per-sample mask shape."""

    p: float
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Linear:
    """A ``Linear`` layer of a chain: where its weight ``(out, in)`` and bias sit in the flat vector."""

    weight: int
    bias: int | None
    out: int
    inp: int


def _channels_last(x: Tensor) -> Tensor:
    """A copy of ``x (m, b, C, H, W)`` whose every sample is laid out channels-last.

    On the CPU, oneDNN's convolutions and the max-pooling after them run 8-13%
    faster on channels-last inputs (the CNN and LeNet-5, one thread). The strides
    are set explicitly because ``contiguous(memory_format=torch.channels_last)``
    leaves a one-channel image as it is, and torch then picks the NCHW kernels.
    """
    _, b, c, h, w = x.shape
    strides = (b * h * w * c, h * w * c, 1, w * c, c)
    return torch.empty_strided(x.shape, strides, dtype=x.dtype, device=x.device).copy_(x)


def _refuse_unsupported(module: nn.Module) -> None:
    """A :class:`ConfigError` for layers that cannot live in a flat, per-worker parameter vector."""
    for name, layer in module.named_modules():
        where = f"layer {name!r} ({type(layer).__name__})" if name else type(layer).__name__
        norm = isinstance(layer, nn.modules.batchnorm._NormBase) and layer.track_running_stats
        if norm or isinstance(layer, nn.modules.batchnorm._LazyNormBase):
            raise ConfigError(
                f"the model's {where} keeps running statistics, which byzrsa cannot train: they are per-worker "
                f"state outside the flat parameter vector and vmap(grad) cannot update them; use GroupNorm or "
                f"LayerNorm (or BatchNorm with track_running_stats=False: batch statistics in training and evaluation)"
            )
        if isinstance(layer, nn.modules.dropout._DropoutNd) and type(layer) not in _DROPOUTS:
            raise ConfigError(
                f"the model's {where} is not supported: byzrsa draws dropout masks itself for "
                f"{', '.join(t.__name__ for t in _DROPOUTS)}; use one of those"
            )
    for name, p in module.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise ConfigError(f"the model's parameter {name!r} is lazy; run one forward pass to materialise it first")


def _chain(module: nn.Module, names: list[str], offsets: dict[str, int]) -> list[Any] | None:
    """The layers of ``module`` if it is a plain chain the hand-batched path can run, else None.

    A chain is an ``nn.Sequential`` of ``Flatten`` (before the first Linear),
    ``Linear``, ``ReLU``, ``Dropout`` and ``Identity``, with at least one Linear,
    whose parameters are exactly those Linear layers' (the flat layout).
    """
    if type(module) is not nn.Sequential:
        return None
    layers: list[Any] = []
    seen_linear = False
    for key, layer in module.named_children():
        if type(layer) is nn.Linear:
            bias = offsets.get(f"{key}.bias")
            layers.append(_Linear(offsets[f"{key}.weight"], bias, layer.out_features, layer.in_features))
            seen_linear = True
        elif type(layer) is nn.ReLU:
            layers.append("relu")
        elif type(layer) is nn.Dropout:
            if layer.p > 0:  # p = 0 draws no mask (as in TorchModel's hook): nothing to do
                layers.append("dropout")
        elif type(layer) is nn.Flatten and not seen_linear and layer.start_dim == 1 and layer.end_dim == -1:
            layers.append("flatten")
        elif type(layer) is not nn.Identity:
            return None
    expected = sum(1 + (item.bias is not None) for item in layers if isinstance(item, _Linear))
    return layers if seen_linear and expected == len(names) else None


class TorchModel:
    """Adapter that makes any ``torch.nn.Module`` a byzrsa model through ``torch.func``.

    Parameters are flattened in ``named_parameters()`` order; the loss is the
    batch-mean cross-entropy of the module's output (logits). The adapter takes
    ownership of ``module`` (it registers hooks on its dropout layers and moves
    it between dtypes and devices).

    Batching (``batching``): all paths compute the same gradient, to rounding.

    * ``"vmap"``: ``vmap(grad_and_value(loss))`` over the workers, one call;
    * ``"loop"``: one autograd forward/backward per worker (for convolutions on
      CPU, where vmap turns m convolutions into a grouped one that oneDNN runs
      ~1.7x slower than m plain ones);
    * ``"chain"``: for a ``Sequential`` of Flatten/Linear/ReLU/Dropout, a
      hand-written batched forward and backward with ``bmm`` (no autograd),
      writing each worker's gradient straight into its row;
    * ``"auto"`` (default): chain where it applies, else loop for modules with
      convolutions on CPU, else vmap. The choice depends only on the module
      and the device, so a run is deterministic on one device.

    Training runs the module in training mode with its dropout layers fed by
    explicit masks: for row i, each dropout call in forward order draws
    ``torch.rand(b, *shape, generator=generators[i]) < 1 - p`` (in float32,
    whatever the run's dtype), scaled by ``1 / (1 - p)``. Row i's masks
    therefore depend only on its generator: the same seed gives the same
    trajectory on the same device, under every batching path, and a process
    that holds one worker draws that worker's masks. Any other random
    operation inside the module is refused (vmap raises, and the loop path
    checks that torch's global generator was not touched). Evaluation
    (:meth:`logits`) runs in eval mode: dropout off.

    Normalisation layers with running statistics (BatchNorm) are refused with a
    :class:`ConfigError`: GroupNorm and LayerNorm are the supported choice.
    """

    def __init__(self, module: nn.Module, num_classes: int, *, batching: str = "auto") -> None:
        if batching not in BATCHING:
            raise ConfigError(f"unknown batching {batching!r}: choose one of {', '.join(BATCHING)}")
        _refuse_unsupported(module)
        self.module = module
        self.num_classes = num_classes
        named = list(module.named_parameters())
        self._names = [name for name, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._sizes = [p.numel() for _, p in named]
        self.dim = sum(self._sizes)
        self._built = nn.utils.parameters_to_vector(module.parameters()).detach().float().cpu().clone()
        offsets = dict(zip(self._names, [0, *accumulate(self._sizes)]))
        self._chain = _chain(module, self._names, offsets)
        if batching == "chain" and self._chain is None:
            raise ConfigError("batching 'chain' needs a Sequential of Flatten, Linear, ReLU and Dropout layers")
        self.batching = batching
        self._has_conv = any(isinstance(layer, nn.modules.conv._ConvNd) for layer in module.modules())
        self._conv2d = any(isinstance(layer, nn.Conv2d) for layer in module.modules())
        self._dropouts = [layer for layer in module.modules() if type(layer) in _DROPOUTS]
        self.stochastic = any(layer.p > 0 for layer in self._dropouts)
        for layer in self._dropouts:
            layer.register_forward_hook(self._dropout_hook)
        self._masks: list[Tensor] | None = None  # this forward pass's masks, in call order
        self._calls = 0
        self._recording: list[_Site] | None = None
        self._sites: dict[tuple[int, ...], list[_Site]] = {}  # input shape -> dropout calls
        self._place: tuple[torch.dtype, torch.device] | None = None
        self._training: bool | None = None
        self._rng_checked = False
        self._eval_batch: dict[tuple[int, ...], int] = {}
        self._vmapped = vmap(grad_and_value(self._loss))
        self._vmapped_shared = vmap(grad_and_value(self._loss), in_dims=(None, 0, 0, 0))

    # ------------------------------------------------------------------ internals
    def _unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        parts = torch.split(flat, self._sizes)
        return {n: t.view(s) for n, t, s in zip(self._names, parts, self._shapes)}

    def _dropout_hook(self, layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        # Dropout layers always run in eval mode (identity), so they never draw from torch's
        # global generator; in training the mask of this call is applied here instead.
        if layer.p == 0:
            return output
        if self._recording is not None:
            span = _DROPOUTS[type(layer)]
            shape = tuple(output.shape[1:])
            if span is not None:  # one draw per channel, broadcast over the rest
                shape = shape[:span] + (1,) * (len(shape) - span)
            self._recording.append(_Site(float(layer.p), shape))
            return output
        if self._masks is None:
            return output
        mask = self._masks[self._calls]
        self._calls += 1
        return output * mask

    def _use(self, dtype: torch.dtype, device: torch.device, training: bool) -> None:
        if self._place != (dtype, device):
            self.module.to(device=device, dtype=dtype)  # buffers must match the parameters
            self._place = (dtype, device)
        if self._training != training:
            self.module.train(training)
            for layer in self._dropouts:
                layer.eval()
            self._training = training

    def _dropout_sites(self, input_shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list[_Site]:
        """The dropout calls of one forward pass on samples of ``input_shape`` (a dry run, cached)."""
        if input_shape not in self._sites:
            self._recording = []
            try:
                with torch.no_grad():
                    self.module(torch.zeros(1, *input_shape, dtype=dtype, device=device))
                self._sites[input_shape] = self._recording
            finally:
                self._recording = None
        return self._sites[input_shape]

    def eval_batch(self, input_shape: tuple[int, ...]) -> int:
        """How many samples :func:`evaluate` feeds at once: about 2**25 activation values (a dry run, cached)."""
        if input_shape not in self._eval_batch:
            sizes: list[int] = []
            hooks = [layer.register_forward_hook(lambda _l, _i, out: sizes.append(out.numel()))
                     for layer in self.module.modules() if not any(True for _ in layer.children())]
            try:
                dtype, device = self._place or (torch.float32, torch.device("cpu"))
                with torch.no_grad():
                    self.module(torch.zeros(1, *input_shape, dtype=dtype, device=device))
            finally:
                for hook in hooks:
                    hook.remove()
            self._eval_batch[input_shape] = max(16, min(8192, 2**25 // max(sum(sizes), 1)))
        return self._eval_batch[input_shape]

    def _draw_masks(self, m: int, b: int, x: Tensor, generators: Sequence[torch.Generator] | None) -> list[Tensor]:
        """Per dropout call, the ``(m, b, *shape)`` masks; row i from ``generators[i]`` alone."""
        if not self.stochastic:
            return []
        if generators is None or len(generators) != m:
            raise ValueError(
                f"this model has dropout: pass one torch.Generator per worker row ({m}) as generators=, "
                f"e.g. derive_generator(seed, 'dropout', worker); got {None if generators is None else len(generators)}"
            )
        sites = self._dropout_sites(tuple(x.shape[2:]), x.dtype, x.device)
        # drawn in float32 whatever the run's dtype: float32 and float64 runs drop the same units
        uniform = [torch.empty(m, b, *site.shape, dtype=torch.float32, device=x.device) for site in sites]
        for i, gen in enumerate(generators):  # worker i's draws, in forward order
            for u in uniform:
                if gen.device == u.device:
                    u[i].uniform_(0.0, 1.0, generator=gen)
                else:  # e.g. CPU generators for a CUDA run: the same numbers, drawn where the stream lives
                    u[i].copy_(torch.rand(u.shape[1:], generator=gen, device=gen.device))
        masks = []
        for site, u in zip(sites, uniform):
            keep = 1.0 - site.p
            masks.append(u.lt_(keep).to(x.dtype).mul_(1.0 / keep if keep > 0 else 0.0))
        return masks

    def _loss(self, flat: Tensor, x: Tensor, y: Tensor, masks: list[Tensor]) -> Tensor:
        """Batch-mean cross-entropy of one worker (``x (b, ...)``), its dropout ``masks`` applied."""
        self._masks, self._calls = (masks if masks else None), 0
        try:
            out = functional_call(self.module, self._unflatten(flat), (x,))
        finally:
            self._masks = None
        return nn.functional.cross_entropy(out, y)

    def _path(self, device: torch.device) -> str:
        if self.batching != "auto":
            return self.batching
        if self._chain is not None:
            return "chain"
        return "loop" if self._has_conv and device.type == "cpu" else "vmap"

    def _by_vmap(self, w: Tensor, x: Tensor, y: Tensor, masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        try:
            if w.stride(0) == 0:  # a shared model: the parameters are not batched
                grad, loss = self._vmapped_shared(w[0], x, y, masks)
            else:
                grad, loss = self._vmapped(w, x, y, masks)
        except RuntimeError as exc:
            if "randomness" in str(exc):
                raise ConfigError(
                    "the model draws random numbers inside its forward pass (other than nn.Dropout layers); "
                    "byzrsa needs one explicit stream per worker: use nn.Dropout modules"
                ) from None
            raise
        return loss, grad

    def _by_loop(self, w: Tensor, x: Tensor, y: Tensor, masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        m = w.shape[0]
        grads = torch.empty(m, self.dim, dtype=w.dtype, device=w.device)
        losses = torch.empty(m, dtype=w.dtype, device=w.device)
        check = not self._rng_checked and w.device.type == "cpu"
        before = torch.random.get_rng_state() if check else None
        params = list(self.module.parameters())
        if self._conv2d and x.dim() == 5 and w.device.type == "cpu":
            x = _channels_last(x)
        with torch.enable_grad():
            for i in range(m):
                # The parameters are pointed at row i (no copy) and the module is called
                # directly: functional_call's re-parametrisation costs ~20 us per parameter
                # and call, 5% of a LeNet-5 worker's forward and backward.
                nn.utils.vector_to_parameters(w[i], params)
                self._masks, self._calls = [mask[i] for mask in masks] or None, 0
                try:
                    loss = nn.functional.cross_entropy(self.module(x[i]), y[i])
                finally:
                    self._masks = None
                parts = torch.autograd.grad(loss, params)
                torch.cat([g.reshape(-1) for g in parts], out=grads[i])
                losses[i] = loss.detach()
        if check:
            if not torch.equal(before, torch.random.get_rng_state()):
                raise ConfigError(
                    "the model drew from torch's global random generator in its forward pass (a random operation "
                    "other than nn.Dropout layers); byzrsa needs one explicit stream per worker: use nn.Dropout"
                )
            self._rng_checked = True
        return losses, grads

    def _by_chain(self, w: Tensor, x: Tensor, y: Tensor, masks: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Forward and backward of a Linear/ReLU/Dropout chain by hand, batched over workers with bmm."""
        m, b = y.shape
        shared = w.stride(0) == 0
        h = x.reshape(m, b, -1)
        saved: list[Tensor] = []  # per layer: the linear's input, the ReLU's output or the mask
        drop = iter(masks)
        linears = [item for item in self._chain if isinstance(item, _Linear)]
        for item in self._chain:
            if isinstance(item, _Linear):
                if h.shape[-1] != item.inp:
                    raise ConfigError(f"the model's Linear layer expects {item.inp} inputs, got {h.shape[-1]}")
                saved.append(h)
                if shared:  # one (m b, in) @ (in, out) product for every worker
                    weight = w[0, item.weight : item.weight + item.out * item.inp].view(item.out, item.inp)
                    flat = h.reshape(m * b, item.inp)
                    h = (torch.addmm(w[0, item.bias : item.bias + item.out], flat, weight.T) if item.bias is not None
                         else flat @ weight.T).view(m, b, item.out)
                else:
                    weight = w[:, item.weight : item.weight + item.out * item.inp].view(m, item.out, item.inp)
                    h = (torch.baddbmm(w[:, item.bias : item.bias + item.out].unsqueeze(1), h, weight.transpose(1, 2))
                         if item.bias is not None else torch.bmm(h, weight.transpose(1, 2)))
            elif item == "relu":
                h = h.clamp_min(0.0)
                saved.append(h)
            elif item == "dropout":
                mask = next(drop, None)
                if mask is not None:
                    h = h * mask
                saved.append(mask)
            else:
                saved.append(None)
        # cross-entropy of the logits h (m, b, C), by log-sum-exp, and its gradient (softmax - onehot) / b
        log_p = torch.log_softmax(h, dim=2)
        target = y.unsqueeze(2)
        loss = -log_p.gather(2, target).squeeze(2).mean(dim=1)
        delta = log_p.exp_()
        delta.scatter_add_(2, target, delta.new_full((1, 1, 1), -1.0).expand(target.shape)).div_(b)
        grads = torch.empty(m, self.dim, dtype=w.dtype, device=w.device)
        for item, inp in zip(reversed(self._chain), reversed(saved)):
            if isinstance(item, _Linear):
                size = item.out * item.inp
                # written in place into each worker's row: no (m, d) temporary
                rows = grads[:, item.weight : item.weight + size].view(m, item.out, item.inp)
                torch.bmm(delta.transpose(1, 2), inp, out=rows)
                if item.bias is not None:
                    torch.sum(delta, dim=1, out=grads[:, item.bias : item.bias + item.out])
                if item is linears[0]:
                    break  # the input's gradient is not needed
                if shared:
                    weight = w[0, item.weight : item.weight + size].view(item.out, item.inp)
                    delta = (delta.reshape(m * b, item.out) @ weight).view(m, b, item.inp)
                else:
                    delta = torch.bmm(delta, w[:, item.weight : item.weight + size].view(m, item.out, item.inp))
            elif item == "relu":
                delta = delta.masked_fill(inp <= 0, 0.0)
            elif item == "dropout" and inp is not None:
                delta = delta * inp
        return loss, grads

    # ------------------------------------------------------------------ the Model protocol
    def featurize(self, x: Tensor) -> Tensor:
        return x

    def init(self, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """The module's own initialisation, seeded by ``generator``, as a flat vector of ``dtype``.

        Every layer with ``reset_parameters`` is reset under a fork of torch's
        CPU generator seeded from ``generator`` (the global stream is left as it
        was), in float32 on the CPU, so the start is the same for every dtype and
        device. Parameters outside such layers keep the values they were built
        with (:func:`build_model` builds modules under a fixed seed).
        """
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.no_grad():  # fresh storage holding the values built with (the loop path re-points it)
            for param, value in zip(self.module.parameters(), torch.split(self._built, self._sizes)):
                param.data = value.view(param.shape).clone()
        self.module.to(device="cpu", dtype=torch.float32)
        self._place = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for layer in self.module.modules():
                if hasattr(layer, "reset_parameters"):
                    layer.reset_parameters()
        return nn.utils.parameters_to_vector(self.module.parameters()).detach().to(dtype)

    def loss_grad(
        self, w: Tensor, x: Tensor, y: Tensor, generators: Sequence[torch.Generator] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Batch-mean loss ``(m,)`` and gradient ``(m, dim)``, by the path :attr:`batching` picks."""
        self._use(w.dtype, w.device, training=True)
        masks = self._draw_masks(w.shape[0], y.shape[1], x, generators)
        path = self._path(w.device)
        if path == "chain":
            with torch.no_grad():
                return self._by_chain(w, x, y, masks)
        return self._by_loop(w, x, y, masks) if path == "loop" else self._by_vmap(w, x, y, masks)

    def grad(self, w: Tensor, x: Tensor, y: Tensor, generators: Sequence[torch.Generator] | None = None) -> Tensor:
        return self.loss_grad(w, x, y, generators)[1]

    def logits(self, w: Tensor, x: Tensor) -> Tensor:
        self._use(w.dtype, w.device, training=False)
        return functional_call(self.module, self._unflatten(w), (x,))


# --------------------------------------------------------------------------- registered models


def _built(factory: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """``factory(*args, **kwargs)`` under a fixed seed: building a model never reads or moves torch's global stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return factory(*args, **kwargs)


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 64, batching: str = "auto") -> TorchModel:
    """A one-hidden-layer ReLU perceptron (:func:`byzrsa.nets.mlp_net`) as a :class:`TorchModel`."""
    return TorchModel(_built(mlp_net, input_shape, num_classes, hidden), num_classes, batching=batching)


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
                f"unknown {self.kind} {name!r}: choose one of {', '.join(self.entries)}, "
                f"or give a factory as 'package.module:Factory'"
            ) from None

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and ":" in name:
            module_name, _, attr = name.partition(":")
            return bool(module_name) and bool(attr) and ":" not in attr
        return name in self.entries


_BATCHING_OPTION = Option(
    "batching", str, "auto", "how the workers' gradients are batched: auto, vmap, loop, chain (MLP only)",
    one_of(*BATCHING),
)

MODELS: ModelRegistry = ModelRegistry("model")
MODELS.register(ModelEntry(
    "softmax", softmax_regression, "softmax regression", "multinomial logistic regression with a bias (the paper's)",
))
MODELS.register(ModelEntry(
    "mlp", mlp, "MLP", "one hidden ReLU layer",
    options=(Option("hidden", int, 64, "hidden units", at_least(1), aliases=("--hidden",)), _BATCHING_OPTION),
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
