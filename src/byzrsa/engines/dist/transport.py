"""Frames, point-to-point links, buffer sizes and run identity of the distributed engine."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from datetime import timedelta
from enum import IntEnum
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from byzrsa.config import RunConfig
from byzrsa.engines.common import BATCH_BLOCK, CHECKPOINT_NAME, Parts, config_identity
from byzrsa.errors import ByzrsaError

__all__ = [
    "DistError",
    "Kind",
    "Malformed",
    "PeerLost",
    "Frame",
    "Link",
    "encode",
    "encode_blob",
    "decode",
    "forwards",
    "sends_x0",
    "capacity_to_master",
    "capacity_to_worker",
    "pair_groups",
    "master_silence",
    "config_identity",
    "shard_fingerprint",
    "config_differences",
    "pg_timeout",
    "CHECKPOINT_NAME",
]

log = logging.getLogger("byzrsa.dist")

STARTUP_TIMEOUT = 120.0  # seconds for the processes to meet, at least (model and data loading)


class DistError(ByzrsaError):
    """A distributed run that cannot start or go on (refused worker, wrong world size, no worker left)."""


# ------------------------------------------------------------------------------------------- frames

HEADER_BYTES = 64
MAGIC = 0x62797A727361  # "byzrsa"
_DTYPES = {1: torch.float32, 2: torch.float64, 3: torch.uint8, 4: torch.int64, 5: torch.float16, 6: torch.bfloat16}
_CODES = {v: k for k, v in _DTYPES.items()}


class Kind(IntEnum):
    HELLO = 1  # worker -> master: identity JSON
    START = 2  # master -> worker: role and state blob
    REFUSE = 3  # master -> worker: reason
    STEP = 4  # master -> worker: x0 or the model (empty for blind Byzantine workers)
    ATTACK = 5  # master -> Byzantine worker: the regular messages (n, d)
    MSG = 6  # worker -> master: its message of iteration k
    REPORT = 7  # master -> worker: send your local iterate
    LOCAL = 8  # worker -> master: local iterate
    SNAPSHOT = 9  # master -> worker: send your state
    STATE = 10  # worker -> master: state blob
    STOP = 11  # master -> worker: the run is over, send your timings
    STATS = 12  # worker -> master: timings
    EXIT = 13  # master -> worker: not needed (idle, dead in the checkpoint): leave
    HOLD = 14  # node -> node (decentralized runs): alive, still waiting on another peer in this round


class Malformed(Exception):
    """A frame that cannot be used (wrong magic, kind, iteration, size or dtype)."""


class PeerLost(Exception):
    """The peer's connection closed or it did not answer in time."""


@dataclasses.dataclass
class Frame:
    kind: int
    iteration: int
    dtype: torch.dtype
    numel: int
    rows: int
    data: Tensor  # a view into the receive buffer: copy it before the next receive

    def tensor(self) -> Tensor:
        return self.data.clone()

    def blob(self) -> bytes:
        return self.data.cpu().numpy().tobytes()


def encode(kind: int, iteration: int, payload: Tensor | None = None, rows: int = 1) -> Tensor:
    """A CPU uint8 frame: header then the payload's bytes."""
    if payload is None:
        payload = torch.empty(0, dtype=torch.uint8)
    payload = payload.detach().reshape(-1).cpu()
    size = payload.numel() * payload.element_size()
    frame = torch.empty(HEADER_BYTES + size, dtype=torch.uint8)
    header = torch.tensor([MAGIC, int(kind), iteration, _CODES[payload.dtype], payload.numel(), rows, 0, 0])
    frame[:HEADER_BYTES].view(torch.int64).copy_(header)
    if size:
        frame[HEADER_BYTES:].view(payload.dtype).copy_(payload)
    return frame


def encode_blob(kind: int, iteration: int, blob: bytes) -> Tensor:
    return encode(kind, iteration, torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else None)


def decode(buffer: Tensor) -> Frame:
    """Read the frame at the start of ``buffer``; :class:`Malformed` if its header is not a valid one."""
    words = buffer[:HEADER_BYTES].view(torch.int64).tolist()
    magic, kind, iteration, code, numel, rows = words[:6]
    if magic != MAGIC:
        raise Malformed("not a byzrsa frame")
    if kind not in Kind._value2member_map_:
        raise Malformed(f"unknown frame kind {kind}")
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise Malformed(f"unknown dtype code {code}")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if numel < 0 or rows < 1 or HEADER_BYTES + numel * itemsize > buffer.numel():
        raise Malformed(f"{numel} entries of {dtype} do not fit the frame")
    data = buffer[HEADER_BYTES : HEADER_BYTES + numel * itemsize].view(dtype)
    return Frame(kind, iteration, dtype, numel, rows, data)


class Link:
    """Frames to and from one peer, over a process group of just the two of them.

    One group per master-worker pair, because gloo closes every connection of
    a group when one receive times out: with a group per pair, a hung worker
    loses only its own link. One receive is outstanding at a time into a
    fixed buffer of ``capacity`` bytes. ``pad`` (NCCL, whose sends and
    receives must have equal sizes) pads every sent frame to the peer's
    capacity.
    """

    def __init__(
        self,
        peer: int,
        group: Any,
        capacity: int,
        peer_capacity: int,
        device: torch.device,
        pad: bool = False,
        settle: float = 60.0,
    ) -> None:
        self.peer = peer
        self.group = group
        self.settle = settle
        self.capacity = capacity
        self.peer_capacity = peer_capacity
        self.device = device
        self.pad = peer_capacity if pad else None
        self.buffer = torch.zeros(capacity, dtype=torch.uint8, device=device)
        self.pending: Any = None
        self.sends: list[tuple[Any, Tensor]] = []
        self.closed: str | None = None

    def post(self) -> None:
        if self.closed:
            raise PeerLost(self.closed)
        if self.pending is None:
            try:
                self.pending = dist.irecv(self.buffer, src=self.peer, group=self.group)
            except RuntimeError as exc:
                self._close(exc)

    def receive(self, deadline: float) -> Frame:
        """The next frame, waiting until ``deadline`` (time.monotonic) at most; :class:`PeerLost` otherwise."""
        self.post()
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            self.pending.wait(timedelta(seconds=remaining))
        except RuntimeError as exc:
            self.pending = None
            self._close(exc)
        self.pending = None
        return decode(self.buffer)

    def send(self, frame: Tensor) -> None:
        if self.closed:
            raise PeerLost(self.closed)
        if self.pad is not None and frame.numel() < self.pad:
            frame = torch.cat([frame, frame.new_zeros(self.pad - frame.numel())])
        if frame.numel() > self.peer_capacity:  # gloo would abort the receiver: never send it
            raise ValueError(f"frame of {frame.numel()} bytes exceeds the peer's buffer ({self.peer_capacity})")
        self._settle()
        frame = frame.to(self.device)
        try:
            work = dist.isend(frame, dst=self.peer, group=self.group)
        except RuntimeError as exc:
            self._close(exc)
        self.sends.append((work, frame))  # the frame must outlive the send

    def _settle(self) -> None:
        """Wait for the earlier sends on this link.

        gloo marks a send complete only once it is waited for. In this
        protocol a peer answers every frame before the next one goes to it, so
        the earlier sends are done by now and the wait returns at once; a peer
        that has not read them within ``settle`` seconds is lost.
        """
        sends, self.sends = self.sends, []
        deadline = time.monotonic() + self.settle
        for work, _ in sends:
            try:
                work.wait(timedelta(seconds=max(deadline - time.monotonic(), 0.001)))
            except RuntimeError as exc:
                self._close(exc)

    def flush(self, deadline: float) -> None:
        """Wait for the frames sent so far (the worker's last STATS before it exits)."""
        for work, _ in self.sends:
            try:
                work.wait(timedelta(seconds=max(deadline - time.monotonic(), 0.001)))
            except RuntimeError:
                pass
        self.sends = []

    def _close(self, exc: BaseException) -> None:
        self.closed = _reason(exc)
        raise PeerLost(self.closed) from None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "Timed out" in text or "timeout" in text.lower():
        return "timed out"
    if "closed" in text or "reset" in text.lower() or "Broken pipe" in text:
        return "connection closed (process ended)"
    return text.splitlines()[0][:200] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------- sizes


def _blob_bound(config: RunConfig, d: int) -> int:
    """Largest state blob a worker sends: its iterate, sampler block and generators, pickled."""
    return 2 * 8 * d + 8 * BATCH_BLOCK * config.batch_size + (64 << 10)


def forwards(parts: Parts) -> bool:
    """Whether Byzantine workers need the regular messages forwarded (an attack whose entry reads them)."""
    return parts.attacked and parts.attack.reads_regular


def sends_x0(parts: Parts) -> bool:
    """Whether Byzantine workers need the master's model (to compute, or for an attack that reads it)."""
    return parts.needs_own or parts.attack.needs_master or parts.attack.needs_defence


def capacity_to_worker(parts: Parts, d: int, worker: int) -> int:
    config = parts.config
    rows = config.regular if forwards(parts) and worker >= config.regular else 1
    return HEADER_BYTES + max(8 * d * rows, _blob_bound(config, d))


def capacity_to_master(config: RunConfig, d: int) -> int:
    return HEADER_BYTES + max(8 * d, _blob_bound(config, d))


def pair_groups(config: RunConfig) -> list[Any]:
    """One process group per (master, worker) pair; every rank creates all of them, in the same order."""
    timeout = pg_timeout(config)
    return [dist.new_group([0, w + 1], timeout=timeout, backend=config.backend) for w in range(config.workers)]


def master_silence(config: RunConfig) -> float:
    """Seconds a worker waits for the master before it gives up (two rounds, evaluation and slack)."""
    return 3 * config.timeout + 60.0


# ------------------------------------------------------------------------------------------- identity


def shard_fingerprint(x: Tensor | None, y: Tensor | None) -> str:
    if x is None:
        return ""
    digest = hashlib.sha256()
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def config_differences(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    keys = sorted(set(mine) | set(theirs))
    diffs = [f"{k}={theirs.get(k)!r} (master: {mine.get(k)!r})" for k in keys if mine.get(k) != theirs.get(k)]
    return ", ".join(diffs)


def pg_timeout(config: RunConfig) -> timedelta:
    return timedelta(seconds=max(STARTUP_TIMEOUT, master_silence(config)))
