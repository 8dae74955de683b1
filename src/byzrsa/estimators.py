r"""Worker-side variance-reduced gradient estimators: SAGA and loopless SVRG (LSVRG).

An estimator sits between a worker's stochastic gradient and its message, for
every method: a gradient method sends the estimate (plus :math:`\mu x`, then
momentum if asked), RSA's worker step uses it in place of
:math:`\nabla F(x_i, \xi_i)`. Worker :math:`i` holds :math:`J_i` samples with
losses :math:`f_{i,j}`, its local loss is :math:`f_i = \frac1{J_i}\sum_j f_{i,j}`,
and each iteration it draws a minibatch :math:`B` of :math:`b` indices
(uniformly, with replacement, as every byzrsa sampler does).

SAGA (Defazio, Bach, Lacoste-Julien, NeurIPS 2014; at the workers with the
geometric median at the master it is Byrd-SAGA: Wu, Ling, Chen, Giannakis,
IEEE TSP 2020). The worker keeps a table :math:`\phi_{i,j}` of per-sample
gradients and its average :math:`\bar\phi_i`, and estimates

.. math::  g_i = \frac1b \sum_{s \in B} \big(\nabla f_{i,s}(x) - \phi_{i,s}\big) + \bar\phi_i ,
    \qquad \phi_{i,s} \leftarrow \nabla f_{i,s}(x) \ (s \in B).

The table starts as the papers start it: every sample's gradient at the
starting point, :math:`\phi^0_{i,j} = \nabla f_{i,j}(x^0)` (Byrd-SAGA's
Algorithm 1 initialises the stored points to :math:`x^0`; SAGA's paper
likewise), so the first estimate is already unbiased and :math:`\bar\phi_i^0 =
\nabla f_i(x^0)` costs one pass over the local data before the run. An index
drawn twice in one minibatch counts twice in the estimate and once in the
average's update (its new gradient is the same number both times).

For a generalised linear model the per-sample gradient is a residual times
the sample, :math:`\nabla f_{i,j}(x) = r_{i,j} \otimes a_j` (softmax regression:
:math:`r = \mathrm{softmax}(W a) - e_y`, ``classes`` numbers); the table then
stores residuals, ``J * classes`` numbers per worker instead of ``J * d``, and
the correction of the whole minibatch is one product
:math:`\frac1b \sum_s (r_s - r^{\phi}_s) \otimes a_s`, the cost of the gradient's
own. Other models (networks) store full per-sample gradients, computed with
``torch.func.vmap`` (``model.sample_grads``): ``J * d`` numbers per worker, which
:func:`table_bytes` estimates before a run.

LSVRG (Kovalev, Horváth, Richtárik, ALT 2020; with RSA in decentralized form:
Peng, Li, Ling). A snapshot :math:`w_i` and its full local gradient:

.. math::  g_i = \nabla f_{i,B}(x) - \nabla f_{i,B}(w_i) + \nabla f_i(w_i), \qquad
    w_i \leftarrow x \text{ with probability } p \ (\text{one draw per iteration}),

with :math:`w_i^0 = x^0`, and a full pass over the local data each time the
snapshot moves. ``p`` defaults to :math:`1/J_i` (the paper's choice), so one
pass per :math:`J_i` iterations on average; the coins come from the worker's
own stream (``derive_generator(seed, "vr", worker)``).

Both are unbiased: :math:`\mathbb E_B\, g_i = \nabla f_i(x)`.

Engines call :func:`estimate` per block of worker rows: the state of all rows
lives in one :class:`VRState`, made once by :func:`init_state`, and a call
reads and updates only the rows it is given (a dist worker holds one row).
Models with dropout are refused: their per-sample gradients are random, so
neither the table nor the snapshot's correction would cancel the noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from byzrsa.errors import ConfigError
from byzrsa.registry import Entry, Option, Registry, in_range

__all__ = [
    "Estimator",
    "ESTIMATORS",
    "LocalData",
    "VRState",
    "init_state",
    "estimate",
    "check_estimator",
    "table_bytes",
    "full_gradient",
]

#: samples per call when a full local gradient or the initial table is computed
FULL_CHUNK = 1024


@dataclass(frozen=True)
class Estimator(Entry):
    """A variance-reduced estimator: ``fn`` is its per-block update; ``start`` fills a fresh state.

    ``table``: whether it keeps a per-sample table (its memory grows with the data).
    """

    start: Callable[..., None] | None = None
    table: bool = False


@dataclass
class LocalData:
    """Where an estimator finds its rows' samples.

    ``shards[i]`` are row i's sample ids, as its minibatch indices name them
    (global indices in the simulator, ``arange(J)`` in a dist worker);
    ``samples(i)`` returns row i's samples and labels in that order (featurised,
    on the run's device, the labels a data attack trains on).
    """

    model: Any
    shards: Sequence[Tensor]
    samples: Callable[[int], tuple[Tensor, Tensor]]


@dataclass
class VRState:
    """The estimator state of every row: tensors on the run's device, the rows' coin streams.

    SAGA: ``table`` (rows' samples concatenated, ``(sum J_i, k)`` with k the
    residual width or d) and ``average`` ``(rows, d)``. LSVRG: ``snapshot`` and
    ``full`` ``(rows, d)``, ``p`` per row. ``keys``/``order`` locate a (row, id)
    pair in the table (a sorted search, so shards may hold any ids).
    """

    name: str
    sizes: Tensor  # (rows,) J_i, float, on device
    keys: Tensor  # sorted row * span + id
    order: Tensor  # table position of each sorted key
    span: int
    residual: bool = False
    table: Tensor | None = None
    average: Tensor | None = None
    snapshot: Tensor | None = None
    full: Tensor | None = None
    p: Tensor | None = None
    generators: list[torch.Generator] = field(default_factory=list)

    def positions(self, rows: slice | Tensor, ids: Tensor) -> Tensor:
        """Table positions ``(a, b)`` of minibatch ids ``(a, b)`` of ``rows``."""
        index = torch.arange(len(self.sizes), device=ids.device)[rows]
        return self.order[torch.searchsorted(self.keys, index.unsqueeze(1) * self.span + ids)]

    def state_dict(self) -> dict[str, Any]:
        """Tensors and lists only (loadable with ``torch.load(weights_only=True)``)."""
        out = {"name": self.name, "generators": [g.get_state() for g in self.generators]}
        for key in ("table", "average", "snapshot", "full"):
            value = getattr(self, key)
            out[key] = value.cpu() if value is not None else None
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["name"] != self.name:
            raise ValueError(f"the saved estimator is {state['name']!r}, this run's is {self.name!r}")
        for key in ("table", "average", "snapshot", "full"):
            mine, saved = getattr(self, key), state[key]
            if (mine is None) != (saved is None) or (mine is not None and mine.shape != saved.shape):
                raise ValueError(f"the saved estimator's {key} has another shape")
            if mine is not None:
                setattr(self, key, saved.to(mine.device, mine.dtype))
        for g, saved in zip(self.generators, state["generators"]):
            g.set_state(saved)


# --------------------------------------------------------------------------- helpers


def _dense(x: Any) -> Tensor:
    return x.materialize() if hasattr(x, "materialize") else x


def _first_occurrences(ids: Tensor) -> Tensor:
    """``(a, b)`` True where an id appears for the first time in its row (duplicates count once)."""
    sorted_ids, perm = torch.sort(ids, dim=1, stable=True)
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    return torch.empty_like(first).scatter_(1, perm, first)


def _uses_residuals(model: Any) -> bool:
    return hasattr(model, "sample_residuals") and hasattr(model, "combine_rows")


def full_gradient(model: Any, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    r""":math:`\nabla f_i(w) = \frac1J \sum_j \nabla f_{i,j}(w)` of one row ``w (d,)`` on its samples ``x (J, ...)``."""
    total = torch.zeros_like(w)
    n = x.shape[0]
    for lo in range(0, n, FULL_CHUNK):
        hi = min(lo + FULL_CHUNK, n)
        part = model.grad(w.unsqueeze(0), x[lo:hi].unsqueeze(0), y[lo:hi].unsqueeze(0))[0]
        total.add_(part, alpha=(hi - lo) / n)
    return total


def _sample_rows(model: Any, residual: bool, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Per-sample residuals ``(J, k)`` or gradients ``(J, d)`` of one row at ``w (d,)``."""
    parts = []
    for lo in range(0, x.shape[0], FULL_CHUNK if residual else 64):
        hi = lo + (FULL_CHUNK if residual else 64)
        xb, yb = x[lo:hi].unsqueeze(0), y[lo:hi].unsqueeze(0)
        out = model.sample_residuals(w.unsqueeze(0), xb, yb) if residual else model.sample_grads(w.unsqueeze(0), xb, yb)
        parts.append(out[0])
    return torch.cat(parts)


# --------------------------------------------------------------------------- SAGA


def _saga_start(state: VRState, data: LocalData, start: Tensor) -> None:
    rows = []
    average = torch.empty(len(data.shards), start.shape[0], dtype=start.dtype, device=start.device)
    for i in range(len(data.shards)):
        x, y = data.samples(i)
        table = _sample_rows(data.model, state.residual, start, x, y)
        rows.append(table)
        if state.residual:
            average[i] = data.model.combine(x.unsqueeze(0), table.unsqueeze(0))[0].div_(x.shape[0])
        else:
            average[i] = table.mean(dim=0)
    state.table = torch.cat(rows)
    state.average = average


def saga(state: VRState, data: LocalData, rows: slice | Tensor, w: Tensor, x: Any, y: Tensor, ids: Tensor) -> Tensor:
    """SAGA's estimate for ``rows`` at ``w (a, d)`` on minibatch ``x, y (a, b)`` with ids ``(a, b)``; updates their table rows."""
    b = y.shape[1]
    pos = state.positions(rows, ids)
    first = _first_occurrences(ids).to(w.dtype)
    sizes = state.sizes[rows].unsqueeze(1)
    model = data.model
    average = state.average[rows]
    if state.residual:
        xs = _dense(x)
        new = model.sample_residuals(w, xs, y)  # (a, b, k)
        delta = new - state.table[pos]
        # the estimate's sum (every draw, / b) and the average's (each sample once, / J) in one
        # product: two coefficient sets over the same samples cost little more than one
        k = delta.shape[2]
        both = torch.cat([delta / b, delta * (first / sizes).unsqueeze(2)], dim=2)
        sums = model.combine_rows(xs, both)  # (a, 2k, n), the samples read once
        out = sums[:, :k].reshape(average.shape) + average  # before the average moves: the old table's mean
        state.average[rows] = average + sums[:, k:].reshape(average.shape)
    else:
        new = model.sample_grads(w, x, y)  # (a, b, d)
        # both sums (every draw / b; each sample once / J) as one (a, 2, b) product with the new rows
        # and one with the old ones: the (a, b, d) rows are read once each, no difference is written
        weights = torch.stack([torch.full_like(sizes.expand(-1, b), 1.0 / b), first / sizes], dim=1)
        sums = torch.bmm(weights, new).sub_(torch.bmm(weights, state.table[pos]))
        out = sums[:, 0] + average  # before the average moves: the old table's mean
        state.average[rows] = average + sums[:, 1]
    state.table[pos] = new  # duplicates write the same numbers
    return out


# --------------------------------------------------------------------------- LSVRG


def _lsvrg_start(state: VRState, data: LocalData, start: Tensor) -> None:
    n = len(data.shards)
    state.snapshot = start.expand(n, -1).clone()
    full = torch.empty_like(state.snapshot)
    for i in range(n):
        full[i] = full_gradient(data.model, start, *data.samples(i))
    state.full = full


def lsvrg(state: VRState, data: LocalData, rows: slice | Tensor, w: Tensor, x: Any, y: Tensor, ids: Tensor) -> Tensor:
    """LSVRG's estimate for ``rows`` at ``w (a, d)``; each row's snapshot moves to its ``w`` with probability p."""
    model = data.model
    snapshot = state.snapshot[rows]
    out = model.grad(w, x, y).sub_(model.grad(snapshot, x, y)).add_(state.full[rows])
    index = list(range(len(state.sizes)))[rows] if isinstance(rows, slice) else rows.tolist()
    for k, i in enumerate(index):  # one coin per row and iteration, from the row's own stream
        coin = float(torch.rand(1, generator=state.generators[i], dtype=torch.float64))
        if coin < float(state.p[i]):
            state.snapshot[i] = w[k]
            state.full[i] = full_gradient(model, w[k], *data.samples(i))
    return out


# --------------------------------------------------------------------------- registry and entry points


def _none(state: VRState, data: LocalData, rows: slice | Tensor, w: Tensor, x: Any, y: Tensor, ids: Tensor) -> Tensor:
    return data.model.grad(w, x, y)


ESTIMATORS: Registry[Estimator] = Registry("estimator")
ESTIMATORS.register(Estimator("none", _none, "", "plain minibatch gradients"))
ESTIMATORS.register(Estimator(
    "saga", saga, "SAGA", "a table of per-sample gradients (residuals for softmax), started at x0 (Byrd-SAGA)",
    start=_saga_start, table=True,
))
ESTIMATORS.register(Estimator(
    "lsvrg", lsvrg, "LSVRG", "loopless SVRG: a snapshot and its full local gradient, moved with probability p",
    options=(Option("p", float, None, "snapshot probability per iteration (default 1/J, J = local samples)",
                    in_range(0.0, 1.0, open_low=True), optional=True),),
    start=_lsvrg_start,
))


def check_estimator(name: str, model: Any) -> None:
    """Raise :class:`ConfigError` if estimator ``name`` cannot run with ``model``."""
    entry = ESTIMATORS[name]
    if entry.name == "none":
        return
    if getattr(model, "stochastic", False):
        raise ConfigError(
            f"--vr {name} needs a model without dropout (its per-sample gradients are random): use softmax, mlp "
            f"or lenet5, or --vr none"
        )
    if entry.table and not (_uses_residuals(model) or hasattr(model, "sample_grads")):
        raise ConfigError(f"--vr {name}: this model offers no per-sample gradients; use --vr lsvrg")


def table_bytes(name: str, model: Any, samples: int, rows: int, itemsize: int) -> int:
    """Memory of the estimator state for ``rows`` workers holding ``samples`` samples in all."""
    entry = ESTIMATORS[name]
    if entry.name == "none":
        return 0
    if not entry.table:
        return 2 * rows * model.dim * itemsize
    width = model.num_classes if _uses_residuals(model) else model.dim
    # the table and each row's average of it
    return (samples * width + rows * model.dim) * itemsize


def init_state(
    name: str, options: dict[str, Any], data: LocalData, start: Tensor, generators: Sequence[torch.Generator],
    *, residual: bool | None = None,
) -> VRState | None:
    """A fresh state of estimator ``name`` for the rows of ``data``, every row started at ``start (d,)``.

    ``generators``: one stream per row (LSVRG's coins). ``residual`` forces the
    table's form (default: residuals where the model offers them).
    """
    entry = ESTIMATORS[name]
    if entry.name == "none":
        return None
    check_estimator(name, data.model)
    device = start.device
    sizes = [len(s) for s in data.shards]
    if min(sizes, default=1) == 0:
        raise ConfigError(f"--vr {name}: a worker holds no samples; use another split or fewer workers")
    span = max(int(s.max()) + 1 for s in data.shards)
    keys = torch.cat([i * span + s.to(torch.long) for i, s in enumerate(data.shards)])
    keys, order = torch.sort(keys)
    state = VRState(
        name, torch.tensor(sizes, dtype=start.dtype, device=device), keys.to(device), order.to(device), span,
        residual=_uses_residuals(data.model) if residual is None else residual, generators=list(generators),
    )
    if name == "lsvrg":
        p = options.get("p")
        state.p = torch.tensor([p if p is not None else 1.0 / n for n in sizes], dtype=torch.float64)
    entry.start(state, data, start)
    return state


def estimate(
    state: VRState | None, data: LocalData, rows: slice | Tensor, w: Tensor, x: Any, y: Tensor, ids: Tensor
) -> Tensor:
    """The rows' estimates ``(a, d)`` at ``w (a, d)`` on minibatch ``x, y (a, b)`` whose sample ids are ``ids (a, b)``.

    Updates the state of ``rows`` only; with no state (``--vr none``) it is the model's minibatch gradient.
    """
    if state is None:
        return data.model.grad(w, x, y)
    return ESTIMATORS[state.name].fn(state, data, rows, w, x, y, ids)
