"""TorchModel: any ``torch.nn.Module`` as a byzrsa model, with its batching paths and per-worker dropout streams.

See :class:`TorchModel` and docs/models.md. The model protocol is described in :mod:`byzrsa.models`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from byzrsa.errors import ConfigError, did_you_mean

__all__ = ["TorchModel", "BATCHING"]

#: How :class:`TorchModel` batches the workers' gradients (see its docstring).
BATCHING: tuple[str, ...] = ("auto", "vmap", "loop", "chain")

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


def _lives_on(generator: torch.Generator, device: torch.device) -> bool:
    return generator.device == device or (generator.device.type == device.type == "cuda" and device.index is None)


def _uniforms(
    generators: Sequence[torch.Generator], shapes: list[tuple[int, ...]], device: torch.device
) -> list[Tensor]:
    """Per shape ``(m, ...)``, uniforms on ``device`` whose row i comes from ``generators[i]`` alone.

    Worker i draws its rows in the order of ``shapes`` (forward order), in float32
    whatever the run's dtype, so float32 and float64 runs drop the same units.
    Generators that live elsewhere (CPU streams for a CUDA run) draw the same
    numbers where they live, into one host tensor per shape, copied over once per
    shape and step rather than once per worker.
    """
    device = torch.device(device)
    local = [_lives_on(g, device) for g in generators]
    out = [torch.empty(shape, dtype=torch.float32, device=device) for shape in shapes]
    staged = None if all(local) else [torch.empty(shape, dtype=torch.float32) for shape in shapes]
    for i, gen in enumerate(generators):  # worker i's draws, in forward order
        for u, host in zip(out, staged or [None] * len(out)):
            if local[i]:
                u[i].uniform_(0.0, 1.0, generator=gen)
            else:
                host[i].uniform_(0.0, 1.0, generator=gen)  # the numbers torch.rand(..., generator=gen) gives
    if staged is not None:
        for u, host in zip(out, staged):
            rows = [i for i, here in enumerate(local) if not here]
            if len(rows) == len(local):
                u.copy_(host)
            else:
                u[rows] = host[rows].to(device)
    return out


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
        elif type(layer) is nn.Tanh:
            layers.append("tanh")
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
    * ``"chain"``: for a ``Sequential`` of Flatten/Linear/ReLU/Tanh/Dropout, a
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
            hint = did_you_mean(batching, BATCHING)
            raise ConfigError(f"unknown batching {batching!r}{hint}: choose one of {', '.join(BATCHING)}")
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
        uniform = _uniforms(generators, [(m, b, *site.shape) for site in sites], x.device)
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
                    h = _per_worker_linear(item, w, h)
            elif item == "relu":
                h = h.clamp_min(0.0)
                saved.append(h)
            elif item == "tanh":
                h = h.tanh()
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
            elif item == "tanh":  # d tanh = 1 - tanh^2, from the saved output
                delta = delta * (1.0 - inp * inp)
            elif item == "dropout" and inp is not None:
                delta = delta * inp
        return loss, grads

    def _sample_grads_chain(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample gradients ``(m, b, dim)`` of a Linear/ReLU/Tanh chain (no dropout), by hand with bmm.

        As :meth:`_by_chain`, but the output's error is not averaged over the batch
        and each Linear layer's gradient is kept per sample (``delta_s`` outer ``input_s``).
        """
        m, b = y.shape
        h = x.reshape(m, b, -1)
        saved: list[Tensor | None] = []
        for item in self._chain:
            if isinstance(item, _Linear):
                saved.append(h)
                h = _per_worker_linear(item, w, h)
            elif item == "relu":
                h = h.clamp_min(0.0)
                saved.append(h)
            elif item == "tanh":
                h = h.tanh()
                saved.append(h)
            else:  # flatten (already flat)
                saved.append(None)
        delta = torch.softmax(h, dim=2)
        delta.scatter_add_(2, y.unsqueeze(2), delta.new_full((1, 1, 1), -1.0).expand(m, b, 1))
        grads = torch.empty(m, b, self.dim, dtype=w.dtype, device=w.device)
        first = next(item for item in self._chain if isinstance(item, _Linear))
        for item, inp in zip(reversed(self._chain), reversed(saved)):
            if isinstance(item, _Linear):
                size = item.out * item.inp
                rows = grads[:, :, item.weight : item.weight + size].view(m, b, item.out, item.inp)
                torch.mul(delta.unsqueeze(3), inp.unsqueeze(2), out=rows)
                if item.bias is not None:
                    grads[:, :, item.bias : item.bias + item.out] = delta
                if item is first:
                    break
                delta = torch.bmm(delta, w[:, item.weight : item.weight + size].view(m, item.out, item.inp))
            elif item == "relu":
                delta = delta.masked_fill(inp <= 0, 0.0)
            elif item == "tanh":
                delta = delta * (1.0 - inp * inp)
        return grads

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

    def sample_grads(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Each sample's gradient ``(m, b, dim)`` (for SAGA's table, :mod:`byzrsa.estimators`), by ``vmap(grad)``.

        Models without dropout only: a per-sample gradient of a stochastic model is random.
        """
        if self.stochastic:
            raise ConfigError("per-sample gradients of a model with dropout are random: use a model without dropout")
        self._use(w.dtype, w.device, training=True)
        m, b = y.shape

        def one(flat: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
            return self._loss(flat, xs.unsqueeze(0), ys.unsqueeze(0), [])

        if self._path(w.device) == "chain":
            with torch.no_grad():
                return self._sample_grads_chain(w, x, y)
        per_sample = vmap(torch.func.grad(one), in_dims=(None, 0, 0))
        if w.stride(0) == 0:  # a shared model: every sample of every row at that one point
            return per_sample(w[0], x.reshape(m * b, *x.shape[2:]), y.reshape(m * b)).view(m, b, self.dim)
        return vmap(per_sample)(w, x, y)




def _per_worker_linear(item: _Linear, w: Tensor, h: Tensor) -> Tensor:
    """Each worker's own Linear layer on its rows: ``h (m, b, in) -> (m, b, out)`` with the weights in ``w (m, d)``."""
    m = w.shape[0]
    weight = w[:, item.weight : item.weight + item.out * item.inp].view(m, item.out, item.inp)
    if item.bias is None:
        return torch.bmm(h, weight.transpose(1, 2))
    return torch.baddbmm(w[:, item.bias : item.bias + item.out].unsqueeze(1), h, weight.transpose(1, 2))
