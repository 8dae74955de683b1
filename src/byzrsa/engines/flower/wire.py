"""What travels in Flower messages and what a client keeps in ``context.state``.

Vectors travel as one :class:`flwr.app.Array` each (NumPy's ``.npy`` bytes:
exact in float32 and float64). A message carries

* server -> client (``train``): ``ArrayRecord "model"`` with ``"x"``: RSA's
  ``x0^k`` or the baselines' shared model (left out for a Byzantine client
  whose attack needs no model), and ``ConfigRecord "round"`` with ``"k"``,
  ``"worker"`` (whom the server thinks it is addressing), ``"report"``;
* client -> server: ``ArrayRecord "reply"`` with ``"message"`` (what the
  client sends: its iterate, its gradient, or a Byzantine lie) and, when the
  server asked for a report, ``"local"`` (RSA: the client's iterate after the
  step), and ``ConfigRecord "meta"`` with ``"worker"`` and ``"k"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from torch import Tensor

from byzrsa.engines.common import BatchSampler

__all__ = [
    "MODEL", "ROUND", "REPLY", "META", "STATE", "STATE_META",
    "to_array", "from_array", "vector_record", "read_vector", "save_worker", "load_worker",
]

MODEL, ROUND, REPLY, META = "model", "round", "reply", "meta"
STATE, STATE_META = "byzrsa.worker", "byzrsa.worker.meta"


def to_array(t: Tensor) -> Array:
    """``t`` as a Flower Array (a CPU copy; the bytes are exact)."""
    return Array(np.ascontiguousarray(t.detach().cpu().numpy()))


def from_array(a: Array, dtype: torch.dtype | None = None, device: torch.device | None = None) -> Tensor:
    t = torch.from_numpy(np.array(a.numpy(), copy=True))
    return t.to(device=device, dtype=dtype) if (dtype is not None or device is not None) else t


def vector_record(**vectors: Tensor | None) -> ArrayRecord:
    """An ArrayRecord of the given vectors (None values left out)."""
    items = {k: to_array(v) for k, v in vectors.items() if v is not None}
    return ArrayRecord(items) if items else ArrayRecord()


def read_vector(record: ArrayRecord, key: str, d: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """The ``(d,)`` vector ``key`` of ``record``; None if absent. ValueError if it has another shape or kind."""
    if key not in record:
        return None
    array = record[key]
    if tuple(array.shape) != (d,):
        raise ValueError(f"{key!r} has shape {tuple(array.shape)}, expected ({d},)")
    if array.dtype not in ("float32", "float64"):
        raise ValueError(f"{key!r} has dtype {array.dtype}, expected a float")
    return from_array(array, dtype, device)


def _generator_state(g: torch.Generator | None) -> Tensor | None:
    return g.get_state() if g is not None else None


def save_worker(
    state: RecordDict,
    *,
    x: Tensor | None,
    momentum: Tensor | None,
    sampler: BatchSampler | None,
    attack: torch.Generator | None,
    meta: dict[str, Any],
) -> None:
    """Store a worker's state in the node's ``context.state`` (it stays on the node)."""
    sampler_state = sampler.state_dict() if sampler is not None else None
    state[STATE] = vector_record(
        x=x,
        momentum=momentum,
        sampler_generator=sampler_state["generator"] if sampler_state else None,
        sampler_block=sampler_state["block"] if sampler_state else None,
        attack_generator=_generator_state(attack),
    )
    state[STATE_META] = ConfigRecord({**meta, "sampler_pos": int(sampler_state["pos"]) if sampler_state else 0})


def load_worker(
    state: RecordDict, *, sampler: BatchSampler | None, attack: torch.Generator | None, dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor | None, Tensor | None, dict[str, Any]] | None:
    """The saved ``(x, momentum, meta)``, with ``sampler`` and ``attack`` restored in place; None if nothing is saved."""
    if STATE not in state.array_records:
        return None
    arrays = state.array_records[STATE]
    meta = dict(state.config_records[STATE_META])
    if sampler is not None and "sampler_generator" in arrays:
        sampler.load_state_dict({
            "generator": from_array(arrays["sampler_generator"]),
            "block": from_array(arrays["sampler_block"]),
            "pos": int(meta["sampler_pos"]),
        })
    if attack is not None and "attack_generator" in arrays:
        attack.set_state(from_array(arrays["attack_generator"]))
    x = from_array(arrays["x"], dtype, device) if "x" in arrays else None
    momentum = from_array(arrays["momentum"], dtype, device) if "momentum" in arrays else None
    return x, momentum, meta
