r"""The distributed engine: the master and every worker are separate processes that exchange only messages.

Rank 0 is the master, rank ``i + 1`` is worker ``i`` (workers ``0..r-1`` are
regular, the last q Byzantine, as in the simulator). Each worker process holds
only its own shard of the training data and its own state; the master holds
``x0`` (RSA) or the shared model (the gradient-aggregation baselines) and the
test data. The update rules are those of :mod:`byzrsa.methods`, the functions
the simulator calls, so with the same config and seed both engines follow the
same trajectory (the random streams are per purpose and worker, see
:func:`byzrsa.engines.common.derive_generator`).

One iteration ``k``
-------------------
RSA::

    master --STEP(k, x0)--> every live worker
    regular worker i: sends x_i^k (jacobi) and steps x_i^{k+1} = rsa_worker_step(...)
                      (gauss-seidel: steps first, sends x_i^{k+1})
    Byzantine worker j: computes its own true iterate if its attack needs it,
                        and sends attack(regular, own, [its generator])
    master: x0 <- rsa_master_step(x0, messages that arrived)

Baselines: the master sends the model, every worker sends ``grad F + mu x`` (or
its attack), the master steps with ``aggregation_step(x, messages,
problem.aggregate)``.

The omniscient attacker
-----------------------
Attacks that read the regular workers' messages (``copy``, ``negative-sum``
and any attack not known to ignore them) get them from the master: once the
regular messages of iteration k have arrived, the master forwards them, stacked
``(n, d)``, to each Byzantine process (an ATTACK frame), which then answers.
Attacks that do not read them (same-value, sign-flip, gaussian, non-finite)
answer in the same round as the regular workers. Only the messages that
actually arrived (live, well-formed) are forwarded.

Transport and faults
--------------------
Messages are point-to-point ``isend`` / ``irecv`` (gloo on CPU, or NCCL), never
collectives: a collective hangs when one rank dies, a point-to-point wait can
time out. Each master-worker pair has a process group of its own, because gloo
closes every connection of a group when one wait in it times out; this way a
hung worker costs only its own link. Every message is a *frame*: a 64-byte
header (magic, kind, iteration, dtype, number of entries, rows) followed by the
payload bytes, received into a buffer of fixed capacity. The master

* waits for each round at most ``config.timeout`` seconds; a worker that has not
  answered by then, or whose connection closed (it died), is declared dead,
  logged, recorded in the summary (``dead_workers``) and never contacted again.
  RSA simply loses its term; a gradient rule aggregates what arrived (if the
  rule cannot run on that many rows, e.g. Krum with m < 2f + 3, the step is
  skipped and logged);
* treats a frame of the wrong kind, iteration, size or dtype as a Byzantine
  message that cannot be used: it is dropped for that round, logged and counted
  (``malformed_messages``), never a crash. Non-finite entries are not dropped:
  they are what a Byzantine worker may send, and the master's rules handle them
  (PROTOCOL.md, convention 6).

gloo aborts the receiving process when a peer sends more bytes than the posted
buffer holds; byzrsa's own processes never do (frames are bounded by the
receiver's capacity), but a foreign process speaking gloo directly could. Like
torch.distributed as a whole this engine has no authentication: run it on a
trusted network only.

Workers end when the master says STOP, when the master's connection closes
(it crashed, or it declared them dead), when the master stays silent for
:func:`master_silence` seconds, or (local launch) when the launching process
dies.

Checkpoints
-----------
Every ``config.checkpoint_every`` iterations the master asks every live worker
for its state (local iterate, minibatch sampler and attack generator) and
writes ``checkpoint.pt`` (x0 or the model, iteration, worker states, metrics
so far, dead workers) atomically into the results folder. ``resume=DIR`` starts
a fresh set of processes from it; the rest of the trajectory is the one the
uninterrupted run would have followed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from byzrsa.attacks import get_attack
from byzrsa.engines.common import BATCH_BLOCK, BatchSampler, Problem, derive_generator
from byzrsa.errors import ByzrsaError, ConfigError
from byzrsa.experiments.config import RunConfig, attack_params, config_from_dict
from byzrsa.methods import aggregation_step, rsa_master_step, rsa_worker_step, step_size
from byzrsa.models import build_model
from byzrsa.penalties import parse_norm

__all__ = [
    "DistError",
    "run_local",
    "attached",
    "worker_main",
    "spec_from_problem",
    "process_device",
    "config_identity",
    "master_silence",
    "measure_floor",
    "CHECKPOINT_NAME",
    "FAULTS_ENV",
]

log = logging.getLogger("byzrsa.dist")

CHECKPOINT_NAME = "checkpoint.pt"
# Testing hook: "WORKER:ITERATION:KIND,..." makes worker WORKER misbehave at ITERATION
# (KIND: exit, hang, size, dtype, nan, slow; "WORKER:0:config" greets with another seed;
# "WORKER:stop:hang" hangs at the end instead of leaving);
# "master:ITERATION:exit" kills the master at that iteration.
FAULTS_ENV = "BYZRSA_DIST_FAULTS"
# Attacks known not to read the regular workers' messages: they answer without a forward.
BLIND_ATTACKS = frozenset({"none", "same-value", "sign-flip", "gaussian", "non-finite"})
# Config fields that do not change the trajectory (or may differ between machines).
LOCAL_FIELDS = frozenset(
    {"data_dir", "device", "threads", "engine", "timeout", "checkpoint_every", "eval_every", "iterations"}
)
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


def _forwards(config: RunConfig) -> bool:
    """Whether Byzantine workers need the regular messages forwarded (an omniscient attack)."""
    return config.byzantine > 0 and config.method != "ideal-sgd" and config.attack not in BLIND_ATTACKS


def _capacity_to_worker(config: RunConfig, d: int, worker: int) -> int:
    rows = config.regular if _forwards(config) and worker >= config.regular else 1
    return HEADER_BYTES + max(8 * d * rows, _blob_bound(config, d))


def _capacity_to_master(config: RunConfig, d: int) -> int:
    return HEADER_BYTES + max(8 * d, _blob_bound(config, d))


def pair_groups(config: RunConfig) -> list[Any]:
    """One process group per (master, worker) pair; every rank creates all of them, in the same order."""
    timeout = _pg_timeout(config)
    return [dist.new_group([0, w + 1], timeout=timeout, backend=config.backend) for w in range(config.workers)]


def master_silence(config: RunConfig) -> float:
    """Seconds a worker waits for the master before it gives up (two rounds, evaluation and slack)."""
    return 3 * config.timeout + 60.0


# ------------------------------------------------------------------------------------------- identity


def config_identity(config: RunConfig) -> dict[str, Any]:
    """The config fields that define the trajectory (every field but :data:`LOCAL_FIELDS`), JSON-safe."""
    from byzrsa import __version__

    out: dict[str, Any] = {"byzrsa": __version__}
    for key, value in sorted(config.to_dict().items()):
        if key in LOCAL_FIELDS:
            continue
        out[key] = str(value) if isinstance(value, float) and not math.isfinite(value) else value
    return out


def _fingerprint(x: Tensor | None, y: Tensor | None) -> str:
    if x is None:
        return ""
    digest = hashlib.sha256()
    digest.update(x.detach().cpu().contiguous().numpy().tobytes())
    digest.update(y.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _differences(mine: dict[str, Any], theirs: dict[str, Any]) -> str:
    keys = sorted(set(mine) | set(theirs))
    diffs = [f"{k}={theirs.get(k)!r} (master: {mine.get(k)!r})" for k in keys if mine.get(k) != theirs.get(k)]
    return ", ".join(diffs)


# ------------------------------------------------------------------------------------------- worker


@dataclasses.dataclass
class WorkerSpec:
    """What one worker process needs: the config and its own shard, nothing else."""

    config: RunConfig
    worker: int
    num_features: int
    num_classes: int
    x: Tensor | None  # featurised shard, run dtype (None: the worker never computes)
    y: Tensor | None
    faults: dict[int, str] = dataclasses.field(default_factory=dict)
    echo: bool = False  # benchmark floor: answer every STEP with its payload, compute nothing

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        data = {
            "config": json.loads(self.config.to_json()),
            "worker": self.worker,
            "num_features": self.num_features,
            "num_classes": self.num_classes,
            "x": self.x,
            "y": self.y,
            "faults": {str(k): v for k, v in self.faults.items()},
            "echo": self.echo,
        }
        torch.save(data, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> WorkerSpec:
        data = torch.load(io.BytesIO(blob), weights_only=True)
        return cls(
            config=config_from_dict(data["config"]),
            worker=int(data["worker"]),
            num_features=int(data["num_features"]),
            num_classes=int(data["num_classes"]),
            x=data["x"],
            y=data["y"],
            faults={int(k): v for k, v in data["faults"].items()},
            echo=bool(data["echo"]),
        )


def _computes(config: RunConfig, worker: int) -> bool:
    """Whether worker ``worker`` evaluates gradients (regular, or Byzantine whose attack needs its own values)."""
    if worker < config.regular:
        return True
    return config.byzantine > 0 and config.method != "ideal-sgd" and get_attack(config.attack).needs_own


def _role(config: RunConfig, worker: int) -> str:
    if worker < config.regular:
        return "regular"
    return "idle" if config.method == "ideal-sgd" else "byzantine"


def spec_from_problem(problem: Problem, worker: int, faults: dict[int, str] | None = None) -> WorkerSpec:
    """Worker ``worker``'s spec: its shard of the featurised training data, if it computes."""
    c = problem.config
    x = y = None
    if _computes(c, worker):
        index = problem.shards[worker]
        x = problem.train_x.index_select(0, index.to(problem.device)).cpu()
        y = problem.train_y.index_select(0, index.to(problem.device)).cpu()
    num_features = int(np.prod(problem.dataset.train_x.shape[1:]))
    return WorkerSpec(c, worker, num_features, problem.dataset.num_classes, x, y, dict(faults or {}))


class Worker:
    """One worker's state and its replies to the master's frames."""

    def __init__(self, spec: WorkerSpec, device: torch.device) -> None:
        c = self.config = spec.config
        self.spec = spec
        self.index = spec.worker
        self.device = device
        self.dtype = torch.float64 if c.dtype == "float64" else torch.float32
        self.model = build_model(c.model, spec.num_features, spec.num_classes, hidden=c.hidden)
        self.d = self.model.dim
        self.p = parse_norm(c.norm)
        self.role = _role(c, self.index)
        self.computes = _computes(c, self.index) and self.role != "idle"
        self.attack = get_attack(c.attack)
        self.attack_kwargs = attack_params(c)
        self.x_shard = spec.x.to(device) if spec.x is not None else None
        self.y_shard = spec.y.to(device) if spec.y is not None else None
        self.sampler = None
        if self.computes:
            gen = derive_generator(c.seed, "batches", self.index)
            self.sampler = BatchSampler(torch.arange(len(spec.y)), c.batch_size, gen)
        self.attack_gen = derive_generator(c.seed, "attack", self.index) if self.role == "byzantine" else None
        start = self.model.init(derive_generator(c.seed, "init"), self.dtype).to(device)
        self.x = start.clone() if c.method == "rsa" and self.computes else None
        self.compute_seconds = 0.0  # wall clock
        self.compute_cpu = 0.0  # CPU time of this thread (what an oversubscribed machine cannot hide)
        self.steps = 0

    # state -------------------------------------------------------------------------------------
    def state_blob(self) -> bytes:
        state = {
            "x": self.x.cpu() if self.x is not None else None,
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
            "attack": self.attack_gen.get_state() if self.attack_gen is not None else None,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def load_blob(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), weights_only=True)
        if state["x"] is not None and self.x is not None:
            self.x = state["x"].to(self.device, self.dtype)
        if state["sampler"] is not None and self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        if state["attack"] is not None and self.attack_gen is not None:
            self.attack_gen.set_state(state["attack"])

    # compute -----------------------------------------------------------------------------------
    def _grad(self, w: Tensor) -> Tensor:
        idx = self.sampler.next().to(self.device)
        xb = self.x_shard.index_select(0, idx).unsqueeze(0)
        yb = self.y_shard.index_select(0, idx).unsqueeze(0)
        _, grad = self.model.loss_grad(w.unsqueeze(0), xb, yb)
        return grad[0]

    @property
    def sends_first(self) -> bool:
        """RSA with the jacobi order: the message x_i^k is known before computing, so it goes out first."""
        return self.config.method == "rsa" and self.config.master_order == "jacobi"

    def advance(self, k: int, x0: Tensor | None) -> Tensor | None:
        """Do this worker's honest work of iteration k; return the message an honest worker sends.

        RSA: step the local iterate (equation 10) and return x_i^k (jacobi) or
        x_i^{k+1} (gauss-seidel). Baselines: return ``grad F(x; batch) + mu x``
        at the master's model ``x0``. None if this worker does not compute.
        """
        c = self.config
        if not self.computes:
            return None
        alpha = step_size(c.lr, k, c.lr_schedule)
        if c.method == "rsa":
            current = self.x
            grad = self._grad(current)
            self.x = rsa_worker_step(current, x0, grad, lam=c.lam, p=self.p, alpha=alpha, m=c.workers)
            return self.x if c.master_order == "gauss-seidel" else current
        return self._grad(x0) + c.mu * x0

    def byzantine_message(self, regular: Tensor, own: Tensor | None) -> Tensor:
        if own is None:  # a placeholder of the right shape: the attack does not read it
            own = torch.zeros(self.d, dtype=self.dtype, device=self.device)
        return self.attack(regular, own.unsqueeze(0), [self.attack_gen], **self.attack_kwargs)[0]


def process_device(config: RunConfig, local_rank: int) -> torch.device:
    """The device of the process with this local rank: one GPU per process, round robin, for ``cuda``."""
    if not config.device.startswith("cuda"):
        return torch.device(config.device)
    if not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but this machine has no CUDA device")
    if config.device == "cuda" or config.backend == "nccl":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(config.device)


def worker_main(spec: WorkerSpec, rank: int, device: torch.device) -> int:
    """The worker's side of the protocol, once the process group is up. Returns the exit status."""
    c = spec.config
    worker = Worker(spec, device)
    comm_device = device if c.backend == "nccl" else torch.device("cpu")
    d = worker.d
    group = pair_groups(c)[spec.worker]
    link = Link(0, group, _capacity_to_worker(c, d, spec.worker), _capacity_to_master(c, d), comm_device,
                c.backend == "nccl", settle=master_silence(c))
    silence = master_silence(c)
    faults = spec.faults

    def receive(timeout: float = silence) -> Frame:
        return link.receive(time.monotonic() + timeout)

    identity = {**config_identity(c), "model_dim": d}
    if faults.get(0) == "config":  # testing hook: a worker started with another seed
        identity["seed"] += 1
    hello = {"identity": identity, "fingerprint": _fingerprint(spec.x, spec.y), "worker": spec.worker,
             "host": socket.gethostname(), "pid": os.getpid()}
    try:
        link.send(encode_blob(Kind.HELLO, 0, json.dumps(hello).encode()))
        frame = receive(max(STARTUP_TIMEOUT, silence))
        if frame.kind == Kind.REFUSE:
            print(f"byzrsa worker {spec.worker}: refused by the master: {frame.blob().decode()}", file=sys.stderr)
            return 3
        if frame.kind == Kind.EXIT:
            return 0
        if frame.kind != Kind.START:
            raise Malformed(f"expected START, got {Kind(frame.kind).name}")
        blob = frame.blob()
        if blob:
            worker.load_blob(blob)
        while True:
            frame = receive()
            kind, k = frame.kind, frame.iteration
            if kind == Kind.STEP:
                fault = faults.get(k)
                if fault == "exit":
                    os._exit(1)
                if fault == "hang":
                    while True:
                        time.sleep(3600)
                if fault == "slow":
                    time.sleep(2 * c.timeout)
                if spec.echo:  # the communication floor: answer at once, compute nothing
                    link.send(encode(Kind.MSG, k, frame.data))
                    continue
                x0 = frame.tensor().to(device) if frame.numel else None
                start, cpu = time.perf_counter(), time.thread_time()
                if worker.role == "regular":
                    if worker.sends_first:
                        link.send(encode(Kind.MSG, k, _faulty(worker.x, fault)))
                        start, cpu = time.perf_counter(), time.thread_time()  # the send is communication
                        worker.advance(k, x0)
                        message = None
                    else:
                        message = worker.advance(k, x0)
                else:
                    own = worker.advance(k, x0)
                    if _forwards(c):
                        worker.compute_seconds += time.perf_counter() - start
                        worker.compute_cpu += time.thread_time() - cpu
                        attack_frame = receive()
                        if attack_frame.kind != Kind.ATTACK or attack_frame.iteration != k:
                            raise Malformed(f"expected ATTACK of iteration {k}, got {Kind(attack_frame.kind).name}")
                        regular = attack_frame.tensor().to(device).view(-1, d)[: attack_frame.rows if attack_frame.numel else 0]
                        start, cpu = time.perf_counter(), time.thread_time()
                    else:
                        regular = torch.empty(0, d, dtype=worker.dtype, device=device)
                    message = worker.byzantine_message(regular, own)
                worker.compute_seconds += time.perf_counter() - start
                worker.compute_cpu += time.thread_time() - cpu
                worker.steps += 1
                if message is not None:
                    link.send(encode(Kind.MSG, k, _faulty(message, fault)))
            elif kind == Kind.REPORT:
                link.send(encode(Kind.LOCAL, k, worker.x))
            elif kind == Kind.SNAPSHOT:
                link.send(encode_blob(Kind.STATE, k, worker.state_blob()))
            elif kind == Kind.STOP:
                if faults.get(-1) == "hang":  # testing hook: hang instead of leaving
                    while True:
                        time.sleep(3600)
                stats = torch.tensor([worker.steps, worker.compute_seconds, worker.compute_cpu], dtype=torch.float64)
                link.send(encode(Kind.STATS, k, stats))
                link.flush(time.monotonic() + 10.0)
                return 0
            else:
                raise Malformed(f"unexpected frame {Kind(kind).name}")
    except PeerLost as exc:
        print(f"byzrsa worker {spec.worker}: lost the master ({exc}); exiting", file=sys.stderr)
        return 1
    except Malformed as exc:
        print(f"byzrsa worker {spec.worker}: protocol error ({exc}); exiting", file=sys.stderr)
        return 1


def _faulty(message: Tensor, fault: str | None) -> Tensor:
    """Testing hook: corrupt a message the way a faulty worker would."""
    if fault == "size":
        return message[:-1]
    if fault == "dtype":
        return message.to(torch.float32 if message.dtype == torch.float64 else torch.float64)
    if fault == "nan":
        return torch.full_like(message, math.nan)
    return message


def parse_faults(text: str | None) -> tuple[dict[int, dict[int, str]], int | None]:
    """``"2:5:hang,master:9:exit"`` -> ({worker: {iteration: kind}}, master's exit iteration)."""
    workers: dict[int, dict[int, str]] = {}
    master = None
    for item in filter(None, (text or "").split(",")):
        who, it, kind = item.strip().split(":")
        iteration = -1 if it == "stop" else int(it)
        if who == "master":
            master = iteration
        else:
            workers.setdefault(int(who), {})[iteration] = kind
    return workers, master


# ------------------------------------------------------------------------------------------- master


class Master:
    """The master's side: state, rounds with deadlines, metrics and checkpoints."""

    def __init__(
        self,
        problem: Problem,
        extra: dict[str, Any],
        *,
        checkpoint_dir: Path | None,
        resume: Path | None,
        kill: Any = None,
        device: torch.device | None = None,
    ) -> None:
        c = self.config = problem.config
        self.problem = problem
        self.extra = extra
        self.checkpoint_dir = checkpoint_dir
        self.kill = kill  # callable(worker) that ends a worker process we own, or None
        self.d = problem.model.dim
        self.comm_device = device if c.backend == "nccl" else torch.device("cpu")
        self.links = {}
        groups = pair_groups(c)
        for w in range(c.workers):
            self.links[w] = Link(w + 1, groups[w], _capacity_to_master(c, self.d), _capacity_to_worker(c, self.d, w),
                                 self.comm_device, c.backend == "nccl", settle=c.timeout)
        self.live = set(range(c.workers))
        self.dead: list[dict[str, Any]] = []
        self.malformed: dict[str, dict[str, Any]] = {}
        self.k = 0
        self.x0 = problem.init_vector()
        self.rows: list[dict[str, float]] = []
        self.train_seconds = 0.0
        self.step_seconds = 0.0
        self.step_cpu = 0.0
        self.worker_blobs: dict[int, bytes] = {}
        self.exiled: set[int] = set()
        self.skipped_steps = 0
        self._skip_logged: set[int] = set()
        self.non_finite: dict[str, int] = {}
        self.resumed_from: int | None = None
        if resume is not None:
            self._load_checkpoint(resume)
        _, self.master_fault = parse_faults(os.environ.get(FAULTS_ENV))

    # bookkeeping -------------------------------------------------------------------------------
    def _declare_dead(self, w: int, reason: str) -> None:
        if w not in self.live:
            return
        self.live.discard(w)
        kind = "Byzantine" if w >= self.config.regular else "regular"
        log.warning("worker %d (%s, rank %d) %s at iteration %d: continuing without it", w, kind, w + 1, reason, self.k)
        self.dead.append({"worker": w, "rank": w + 1, "iteration": self.k, "reason": reason})
        if self.kill is not None:
            self.kill(w)

    def _drop(self, w: int, reason: str) -> None:
        entry = self.malformed.setdefault(str(w), {"count": 0, "first": f"iteration {self.k}: {reason}"})
        entry["count"] += 1
        if entry["count"] == 1:
            log.warning("worker %d sent an unusable message at iteration %d (%s): treated as Byzantine, dropped",
                        w, self.k, reason)

    def _send(self, w: int, frame: Tensor) -> None:
        if w not in self.live:
            return
        try:
            self.links[w].send(frame)
        except PeerLost as exc:
            self._declare_dead(w, str(exc))

    def _post(self, workers: list[int]) -> None:
        for w in workers:
            if w in self.live:
                try:
                    self.links[w].post()
                except PeerLost as exc:
                    self._declare_dead(w, str(exc))

    def _gather(
        self, workers: list[int], kind: Kind, *, deadline: float | None = None, iteration: int | None = None
    ) -> dict[int, Frame]:
        """Frames of ``kind`` for iteration k from ``workers``, each waited for until the round's deadline."""
        if deadline is None:
            deadline = time.monotonic() + self.config.timeout
        if iteration is None:
            iteration = self.k
        got: dict[int, Frame] = {}
        for w in workers:
            if w not in self.live:
                continue
            try:
                frame = self.links[w].receive(deadline)
            except PeerLost as exc:
                reason = str(exc)
                if reason == "timed out":
                    reason = f"did not answer within {self.config.timeout:g} s"
                self._declare_dead(w, reason)
                continue
            except Malformed as exc:
                self._drop(w, str(exc))
                continue
            if frame.kind != kind or frame.iteration != iteration:
                self._drop(w, f"expected {kind.name} of iteration {iteration}, got {Kind(frame.kind).name} of {frame.iteration}")
                continue
            got[w] = frame
        return got

    def _vectors(self, frames: dict[int, Frame]) -> dict[int, Tensor]:
        """The well-formed ``(d,)`` vectors among ``frames``, copied out of the receive buffers."""
        out = {}
        for w, frame in frames.items():
            if frame.dtype != self.problem.dtype:
                self._drop(w, f"dtype {frame.dtype}, expected {self.problem.dtype}")
            elif frame.numel != self.d or frame.rows != 1:
                self._drop(w, f"{frame.numel} entries, expected {self.d}")
            else:
                out[w] = frame.tensor().to(self.problem.device)
        return out

    # start-up ----------------------------------------------------------------------------------
    def handshake(self, worker_fingerprints: dict[int, str] | None = None) -> None:
        """Check every worker's config; refuse mismatches; send START (with restored state) or EXIT."""
        c = self.config
        mine = {**config_identity(c), "model_dim": self.d}
        deadline = time.monotonic() + max(STARTUP_TIMEOUT, c.timeout)
        frames = self._gather(list(range(c.workers)), Kind.HELLO, deadline=deadline, iteration=0)
        refused = []
        for w, frame in frames.items():
            try:
                hello = json.loads(frame.blob().decode())
                theirs = hello["identity"]
            except (ValueError, KeyError, UnicodeDecodeError):
                refused.append((w, "its greeting is not a byzrsa greeting"))
                continue
            diff = _differences(mine, theirs)
            if diff:
                refused.append((w, f"different config: {diff}"))
                continue
            if hello.get("worker") != w:
                refused.append((w, f"it thinks it is worker {hello.get('worker')}"))
                continue
            expected = (worker_fingerprints or {}).get(w)
            if expected is not None and hello.get("fingerprint") != expected:
                refused.append((w, "its training shard differs from the master's (different dataset files or version?)"))
        refused += [(w, "no valid greeting") for w in sorted(self.live) if w not in frames]
        if refused:
            for w, why in refused:
                self._send(w, encode_blob(Kind.REFUSE, 0, why.encode()))
            for w in sorted(self.live):
                if w not in dict(refused):
                    self._send(w, encode(Kind.EXIT, 0))
            for link in self.links.values():
                link.flush(time.monotonic() + 2.0)
            lines = "; ".join(f"worker {w} (rank {w + 1}): {why}" for w, why in refused)
            raise DistError(f"refused at start-up: {lines}. Start every process with the same config file and data.")
        for w in range(c.workers):
            if w not in self.live:
                continue
            if _role(c, w) == "idle" or w in self.exiled:
                self._send(w, encode(Kind.EXIT, 0))
                self.live.discard(w)
            else:
                self._send(w, encode_blob(Kind.START, 0, self.worker_blobs.get(w, b"")))

    # the run -----------------------------------------------------------------------------------
    def step(self) -> None:
        c, pb = self.config, self.problem
        self.k += 1
        k = self.k
        if self.master_fault == k:
            os._exit(17)
        alpha = step_size(c.lr, k, c.lr_schedule)
        regular = [w for w in range(c.regular) if w in self.live]
        byzantine = [w for w in range(c.regular, c.workers) if w in self.live]
        forwards = _forwards(c)
        first = regular + ([] if forwards else byzantine)
        self._post(first + (byzantine if forwards else []))
        full = encode(Kind.STEP, k, self.x0)
        needs_x0 = get_attack(c.attack).needs_own
        blind = full if needs_x0 else encode(Kind.STEP, k)
        for w in regular:
            self._send(w, full)
        for w in byzantine:
            self._send(w, blind)
        messages = self._vectors(self._gather(first, Kind.MSG))
        if forwards and byzantine:
            rows = [messages[w] for w in regular if w in messages]
            stacked = torch.stack(rows) if rows else torch.empty(0, self.d, dtype=pb.dtype)
            forward = encode(Kind.ATTACK, k, stacked, rows=max(len(rows), 1))
            for w in byzantine:
                self._send(w, forward)
            messages.update(self._vectors(self._gather(byzantine, Kind.MSG)))
        if not any(w < c.regular for w in self.live):
            raise DistError(f"every regular worker is dead (iteration {k}); see the log for which and why")
        order = [w for w in range(c.workers) if w in messages]
        start, cpu = time.perf_counter(), time.thread_time()
        stacked = torch.stack([messages[w] for w in order]) if order else torch.empty(0, self.d, dtype=pb.dtype)
        # amax propagates NaN and inf, and is far cheaper than isfinite(...).all(dim=1) over (m, d)
        finite = torch.isfinite(stacked.abs().amax(dim=1)) if order else stacked.new_ones(0, dtype=torch.bool)
        if not bool(finite.all()):  # kept: the rules are built to take it (PROTOCOL.md, convention 6); counted
            for w, ok in zip(order, finite.tolist()):
                if not ok:
                    self.non_finite[str(w)] = self.non_finite.get(str(w), 0) + 1
        if pb.is_rsa:
            self.x0 = rsa_master_step(self.x0, stacked, lam=c.lam, p=pb.p, alpha=alpha, mu=c.mu)
        elif order:
            try:
                self.x0 = aggregation_step(self.x0, stacked, pb.aggregate, alpha=alpha)
            except (ByzrsaError, ValueError, RuntimeError) as exc:
                self.skipped_steps += 1
                if len(order) not in self._skip_logged:  # once per number of rows, not every iteration
                    self._skip_logged.add(len(order))
                    log.warning("iteration %d: the rule cannot aggregate the %d messages that arrived (%s): "
                                "model unchanged while this lasts", k, len(order), exc)
        self.step_seconds += time.perf_counter() - start
        self.step_cpu += time.thread_time() - cpu

    def locals_(self) -> Tensor | None:
        """The live regular workers' iterates (RSA), asked for with a REPORT round."""
        if not self.problem.is_rsa:
            return None
        c = self.config
        regular = [w for w in range(c.regular) if w in self.live]
        if self.k == 0:
            return self.x0.expand(len(regular), -1)
        self._post(regular)
        frame = encode(Kind.REPORT, self.k)
        for w in regular:
            self._send(w, frame)
        got = self._vectors(self._gather(regular, Kind.LOCAL))
        rows = [got[w] for w in regular if w in got]
        return torch.stack(rows) if rows else None

    def metrics(self) -> dict[str, float]:
        locals_ = self.locals_()
        if self.problem.is_rsa and locals_ is None:
            row = self.problem.metrics(self.x0)
        else:
            row = self.problem.metrics(self.x0, locals_)
        return {"iteration": self.k, **row, "time": self.train_seconds}

    def run(self) -> Iterator[dict[str, float]]:
        c = self.config
        if self.resumed_from is None:
            self.rows.append(self.metrics())
        yield from self.rows
        while self.k < c.iterations:
            stop = min(self.k + c.eval_every - self.k % c.eval_every, c.iterations)
            if c.checkpoint_every and self.checkpoint_dir is not None:
                stop = min(stop, self.k + c.checkpoint_every - self.k % c.checkpoint_every)
            start = time.perf_counter()
            with torch.no_grad():
                while self.k < stop:
                    self.step()
            if self.problem.device.type == "cuda":
                torch.cuda.synchronize(self.problem.device)
            self.train_seconds += time.perf_counter() - start
            if self.k % c.eval_every == 0 or self.k == c.iterations:
                with torch.no_grad():
                    row = self.metrics()
                self.rows.append(row)
                yield row
            if c.checkpoint_every and self.checkpoint_dir is not None and self.k % c.checkpoint_every == 0:
                self._checkpoint()
        self._finish()

    # end ---------------------------------------------------------------------------------------
    def _finish(self) -> None:
        c = self.config
        live = sorted(self.live)
        self._post(live)
        frame = encode(Kind.STOP, self.k)
        for w in live:
            self._send(w, frame)
        stats = self._gather(live, Kind.STATS)
        per_worker = {w: f.tensor().tolist() for w, f in stats.items() if f.dtype == torch.float64 and f.numel == 3}
        wall = [s[1] / max(s[0], 1) for w, s in per_worker.items() if w < c.regular]
        cpu = [s[2] / max(s[0], 1) for w, s in per_worker.items() if w < c.regular]
        done = self.k - (self.resumed_from or 0)
        mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
        timing = {
            "iterations": done,
            "seconds_per_iteration": self.train_seconds / self.k if self.k else None,
            "master_step_per_iteration": self.step_seconds / done if done else None,
            "master_step_cpu_per_iteration": self.step_cpu / done if done else None,
            "worker_compute_per_iteration_mean": mean(wall),
            "worker_compute_per_iteration_max": float(np.max(wall)) if wall else None,
            "worker_compute_cpu_per_iteration_mean": mean(cpu),
            "computing_workers": sum(1 for w in range(c.workers) if _computes(c, w) and _role(c, w) != "idle"),
        }
        self.extra["dist"] = {"backend": c.backend, "world_size": c.workers + 1, "timing": timing}
        self._summarise()

    def _summarise(self) -> None:
        self.extra["dead_workers"] = list(self.dead)
        self.extra["malformed_messages"] = dict(self.malformed)
        self.extra["non_finite_messages"] = dict(self.non_finite)
        if self.skipped_steps:
            self.extra["skipped_steps"] = self.skipped_steps
        if self.resumed_from is not None:
            self.extra["resumed_from"] = self.resumed_from

    # checkpoints -------------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        c = self.config
        live = sorted(self.live)
        self._post(live)
        frame = encode(Kind.SNAPSHOT, self.k)
        for w in live:
            self._send(w, frame)
        got = self._gather(live, Kind.STATE)
        blobs = {}
        for w in sorted(self.live):
            if w in got and got[w].dtype == torch.uint8:
                blobs[str(w)] = got[w].tensor().cpu()
            elif w in self.live:
                # Without its state the worker cannot be restored: a resumed run goes on without it.
                self._drop(w, "no usable state for the checkpoint")
        state = {
            "format": 1,
            "identity": config_identity(c),
            "k": self.k,
            "x0": self.x0.cpu(),
            "rows": self.rows,
            "train_seconds": self.train_seconds,
            "dead": self.dead,
            "malformed": self.malformed,
            "non_finite": self.non_finite,
            "workers": blobs,
            "live": sorted(int(w) for w in blobs),
        }
        path = self.checkpoint_dir / CHECKPOINT_NAME
        tmp = path.with_suffix(".tmp")
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
        self._summarise()

    def _load_checkpoint(self, directory: Path) -> None:
        path = directory / CHECKPOINT_NAME if directory.is_dir() else directory
        try:
            state = torch.load(path, weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"--resume: no {CHECKPOINT_NAME} in {directory} (was checkpoint_every set?)") from None
        except Exception as exc:  # a truncated or foreign file
            raise ConfigError(f"--resume: cannot read {path}: {exc}") from None
        diff = _differences(config_identity(self.config), state["identity"])
        if diff:
            raise ConfigError(f"--resume: the checkpoint in {directory} is of a different run: {diff}")
        self.k = self.resumed_from = int(state["k"])
        self.x0 = state["x0"].to(self.problem.device, self.problem.dtype)
        self.rows = [dict(r) for r in state["rows"]]
        self.train_seconds = float(state["train_seconds"])
        self.dead = [dict(e) for e in state["dead"]]
        self.malformed = {k: dict(v) for k, v in state["malformed"].items()}
        self.non_finite = {k: int(v) for k, v in state["non_finite"].items()}
        self.worker_blobs = {int(w): t.numpy().tobytes() for w, t in state["workers"].items()}
        live = {int(w) for w in state["live"]}
        # Workers dead (or without a saved state) at the checkpoint stay out, as in the uninterrupted run.
        self.exiled = {w for w in range(self.config.workers) if _role(self.config, w) != "idle" and w not in live}
        for w in sorted(self.exiled):
            if not any(e["worker"] == w for e in self.dead):
                self.dead.append({"worker": w, "rank": w + 1, "iteration": self.k, "reason": "no state in the checkpoint"})
        log.info("resuming from iteration %d (%s)", self.k, path)


# ------------------------------------------------------------------------------------------- launching


def _loopback_interface() -> str | None:
    names = [name for _, name in socket.if_nameindex()] if hasattr(socket, "if_nameindex") else []
    for name in ("lo", "lo0"):
        if name in names:
            return name
    return None


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pg_timeout(config: RunConfig) -> timedelta:
    return timedelta(seconds=max(STARTUP_TIMEOUT, master_silence(config)))


def _local_worker_process(spec_blob: bytes, rank: int, world: int, store_path: str, env: dict[str, str],
                          parent: Any) -> None:
    """Entry of a locally launched worker process (forked by multiprocessing's forkserver)."""
    os.environ.update(env)
    code = 1
    try:
        spec = WorkerSpec.from_bytes(spec_blob)
        torch.set_num_threads(spec.config.threads or 1)

        def watch() -> None:  # the launching process died: nothing will ever stop us
            try:
                parent.recv()
            except (EOFError, OSError):
                pass
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="byzrsa-parent-watch").start()
        store = dist.FileStore(store_path, world)
        store.set(f"byzrsa/ready/{rank}", "1")
        device = process_device(spec.config, rank)
        dist.init_process_group(spec.config.backend, store=store, rank=rank, world_size=world,
                                timeout=_pg_timeout(spec.config))
        code = worker_main(spec, rank, device)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # a bug: say where, since os._exit below skips Python's own report
        import traceback

        print(f"byzrsa worker process (rank {rank}) failed:", file=sys.stderr)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip interpreter teardown: gloo's threads and pending requests to dead peers make it slow or noisy.
        os._exit(code)


@contextlib.contextmanager
def _without_main() -> Iterator[None]:
    """Start processes without re-importing the caller's ``__main__`` in them.

    multiprocessing (spawn, forkserver) imports the parent's main script in
    each child so that pickled functions of it resolve; our workers run a
    function of this module on bytes, so that import is useless, and harmful
    for a script that calls :func:`byzrsa.run` without an
    ``if __name__ == "__main__"`` guard (it would run again in every child).
    """
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def preparation_data(name: str) -> dict[str, Any]:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = preparation_data
    try:
        yield
    finally:
        spawn.get_preparation_data = original


class LocalLaunch:
    """The master (this process, rank 0) and one process per worker on this machine, on 127.0.0.1.

    Worker processes are forked from multiprocessing's forkserver (which
    imports torch once); the rendezvous is a FileStore in a private temporary
    folder (no listening socket), and gloo binds the loopback interface. Every
    process started here is ended on exit, also on error or Ctrl-C; each worker
    also ends itself when this process dies.
    """

    def __init__(self, problem: Problem, faults: dict[int, dict[int, str]], *, echo: bool = False) -> None:
        self.problem = problem
        self.faults = faults
        self.echo = echo
        self.procs: dict[int, Any] = {}
        self.pipes: list[Any] = []
        self.tmp: str | None = None
        self.initialised = False

    def __enter__(self) -> LocalLaunch:
        c = self.problem.config
        if dist.is_available() and dist.is_initialized():
            raise DistError("a torch.distributed process group already exists in this process; "
                            "run byzrsa's local launch from a plain process, or use torchrun with python -m byzrsa.dist")
        world = c.workers + 1
        self.tmp = tempfile.mkdtemp(prefix="byzrsa-dist-")
        store_path = os.path.join(self.tmp, "store")
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["byzrsa.engines.dist"])
        iface = _loopback_interface()
        env = {"GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME") or iface or ""}
        env = {k: v for k, v in env.items() if v}
        try:
            for w in range(c.workers):
                spec = spec_from_problem(self.problem, w, self.faults.get(w))
                spec.echo = self.echo
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_local_worker_process,
                    args=(spec.to_bytes(), w + 1, world, store_path, env, reader),
                    name=f"byzrsa-worker-{w}",
                    daemon=True,
                )
                with _without_main():
                    proc.start()
                reader.close()
                self.pipes.append(writer)
                self.procs[w] = proc
            store = dist.FileStore(store_path, world)
            self._await_ready(store, c)
            self.excepthook = sys.excepthook  # init_process_group wraps it for good; put it back on exit
            with _env(**env):
                dist.init_process_group(c.backend, store=store, rank=0, world_size=world, timeout=_pg_timeout(c))
            self.initialised = True
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def _await_ready(self, store: Any, c: RunConfig) -> None:
        keys = [f"byzrsa/ready/{w + 1}" for w in range(c.workers)]
        deadline = time.monotonic() + max(STARTUP_TIMEOUT, c.timeout)
        while True:
            try:
                store.wait(keys, timedelta(seconds=0.2))
                return
            except Exception:  # the store's timeout error: check that the processes are still there
                pass
            for w, proc in self.procs.items():
                if proc.exitcode is not None:
                    raise DistError(f"worker process {w} exited with status {proc.exitcode} during start-up")
            if time.monotonic() > deadline:
                raise DistError(f"the worker processes did not start within {max(STARTUP_TIMEOUT, c.timeout):g} s")

    def kill(self, w: int) -> None:
        proc = self.procs.get(w)
        if proc is not None and proc.is_alive():
            proc.kill()

    def __exit__(self, *exc: Any) -> None:
        # Give the workers a moment to leave after STOP; then end whatever is left.
        deadline = time.monotonic() + (5.0 if exc[0] is None else 0.0)
        for proc in self.procs.values():
            proc.join(max(deadline - time.monotonic(), 0))
        for proc in self.procs.values():
            if proc.is_alive():
                proc.kill()
        for proc in self.procs.values():
            proc.join(5.0)
        for pipe in self.pipes:
            pipe.close()
        if self.initialised:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            sys.excepthook = self.excepthook
            self.initialised = False
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


class _Attached:
    """The process group was set up by torchrun (``python -m byzrsa.dist``); this process is rank 0."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def kill(self, w: int) -> None:  # torchrun owns the processes
        return None


_ATTACHED: _Attached | None = None


@contextlib.contextmanager
def attached(device: torch.device) -> Iterator[None]:
    """Within this block :func:`run_local` uses the existing process group (torchrun) instead of launching."""
    global _ATTACHED
    previous, _ATTACHED = _ATTACHED, _Attached(device)
    try:
        yield
    finally:
        _ATTACHED = previous


def run_local(
    problem: Problem,
    extra: dict[str, Any],
    *,
    checkpoint_dir: str | Path | None = None,
    resume: str | Path | None = None,
) -> Iterator[dict[str, float]]:
    """Run ``problem`` on real processes; yield the same metric rows as :func:`byzrsa.engines.sim.simulate`.

    Launches the workers on this machine (or, inside :func:`attached`, uses
    torchrun's processes) with this process as the master. ``extra`` receives
    facts for the summary: ``dead_workers``, ``malformed_messages``,
    ``resumed_from`` and ``dist`` (timings). ``checkpoint_dir`` is where
    ``checkpoint.pt`` is written every ``checkpoint_every`` iterations;
    ``resume`` a folder (or file) holding one to continue from.
    """
    c = problem.config
    worker_faults, _ = parse_faults(os.environ.get(FAULTS_ENV))
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if c.checkpoint_every and checkpoint_dir is None:
        log.warning("checkpoint_every=%d but no results folder was given: no checkpoints are written", c.checkpoint_every)
    resume = Path(resume) if resume is not None else None
    session = _ATTACHED
    device = problem.device
    with contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(LocalLaunch(problem, worker_faults))
            fingerprints = None  # the master handed out the shards itself
        else:
            if dist.get_world_size() != c.workers + 1:
                raise DistError(
                    f"torchrun started {dist.get_world_size()} processes but the config has workers={c.workers}: "
                    f"start workers + 1 = {c.workers + 1} (nnodes x nproc-per-node)"
                )
            fingerprints = {w: _fingerprint(*_shard(problem, w)) for w in range(c.workers)}
        master = Master(problem, extra, checkpoint_dir=checkpoint_dir, resume=resume, kill=session.kill, device=device)
        try:
            master.handshake(fingerprints)
            yield from master.run()
        finally:
            master._summarise()


def _shard(problem: Problem, w: int) -> tuple[Tensor | None, Tensor | None]:
    spec = spec_from_problem(problem, w)
    return spec.x, spec.y


# ------------------------------------------------------------------------------------------- floor


def measure_floor(problem: Problem, iterations: int) -> float:
    """Seconds per iteration of the bare broadcast-and-gather loop (no gradients, no aggregation).

    The master sends a d-vector STEP to every worker and waits for a d-vector
    answer from each, exactly as an RSA round does, with Byzantine workers
    disabled and nothing computed: the communication floor of the engine.
    """
    c = problem.config.replace(method="ideal-sgd", byzantine=0, attack="none", iterations=iterations)
    floor_problem = dataclasses.replace(problem, config=c)
    with LocalLaunch(floor_problem, {}, echo=True):
        master = Master(floor_problem, {}, checkpoint_dir=None, resume=None, device=problem.device)
        master.handshake()
        workers = list(range(c.workers))
        start = time.perf_counter()
        for k in range(1, iterations + 1):
            master.k = k
            master._post(workers)
            frame = encode(Kind.STEP, k, master.x0)
            for w in workers:
                master._send(w, frame)
            master._vectors(master._gather(workers, Kind.MSG))
        seconds = (time.perf_counter() - start) / iterations
        master.k = iterations
        master._finish()
    return seconds
