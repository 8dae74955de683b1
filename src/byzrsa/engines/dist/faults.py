"""Fault injection for tests: an explicit plan of which process misbehaves when, passed into the engine.

A plan is written ``"WORKER:ITERATION:KIND,..."``: worker WORKER misbehaves at
ITERATION (KIND: exit, hang, size, dtype, nan, slow, and frames no byzrsa
worker sends: oversize, larger than the master's buffer and sent past the
sender's own check; kind, a LOCAL frame where a MSG is due; foreign, the
message of a model of another size); ``"WORKER:0:config"``
greets with another seed; ``"WORKER:stop:hang"`` hangs at the end instead of
leaving; ``"master:ITERATION:exit"`` kills the master at that iteration. The
environment variable :data:`FAULTS_ENV` is read once, where a run starts
(:func:`FaultPlan.from_env`), never in the hot paths.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["FAULTS_ENV", "FaultPlan", "faulty", "send_message"]

FAULTS_ENV = "BYZRSA_DIST_FAULTS"


@dataclass(frozen=True)
class FaultPlan:
    """``workers[w][k]`` is what worker w does wrong at iteration k (-1: at the end); ``master_exit`` an iteration."""

    workers: dict[int, dict[int, str]] = field(default_factory=dict)
    master_exit: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> FaultPlan:
        workers: dict[int, dict[int, str]] = {}
        master = None
        for item in filter(None, (text or "").split(",")):
            who, it, kind = item.strip().split(":")
            iteration = -1 if it == "stop" else int(it)
            if who == "master":
                master = iteration
            else:
                workers.setdefault(int(who), {})[iteration] = kind
        return cls(workers, master)

    @classmethod
    def from_env(cls) -> FaultPlan:
        return cls.parse(os.environ.get(FAULTS_ENV))

    def of(self, worker: int) -> dict[int, str]:
        return dict(self.workers.get(worker, {}))


def faulty(message: Tensor, fault: str | None) -> Tensor:
    """Corrupt a message the way a faulty worker would."""
    if fault == "size":
        return message[:-1]
    if fault == "dtype":
        return message.to(torch.float32 if message.dtype == torch.float64 else torch.float64)
    if fault == "nan":
        return torch.full_like(message, math.nan)
    return message


def send_message(link: Any, k: int, message: Tensor, fault: str | None) -> None:
    """Send the MSG of iteration k, or the faulty frame a Byzantine worker would send instead."""
    from byzrsa.engines.dist.transport import HEADER_BYTES, Kind, encode

    if fault == "oversize":  # a frame past the master's buffer, written straight to the socket
        frame = encode(Kind.MSG, k, torch.zeros(link.peer_capacity + (1 << 20), dtype=torch.uint8))
        link.sock.sendall(memoryview(frame.numpy()).cast("B"))
        return
    if fault == "kind":
        link.send(encode(Kind.LOCAL, k, message))
        return
    if fault == "foreign":  # another config's model: a few more coordinates than this run's
        link.send(encode(Kind.MSG, k, torch.cat([message, message[: min(7, (link.peer_capacity - HEADER_BYTES) // 8)]])))
        return
    link.send(encode(Kind.MSG, k, faulty(message, fault)))
