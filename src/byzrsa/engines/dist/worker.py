"""A worker process of the distributed engine: its spec, its state and its side of the protocol."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from byzrsa.config import RunConfig, config_from_dict
from byzrsa.engines.common import BatchSampler, Parts, Problem, build_parts, derive_generator
from byzrsa.engines.dist.faults import send_message
from byzrsa.engines.dist.transport import (
    STARTUP_TIMEOUT,
    Frame,
    Kind,
    Link,
    Malformed,
    PeerLost,
    capacity_to_master,
    capacity_to_worker,
    config_identity,
    encode,
    encode_blob,
    forwards,
    master_silence,
    pair_groups,
    shard_fingerprint,
)
from byzrsa.engines.dist.wire import SocketLink, connect, sign, token_from_env, uses_sockets
from byzrsa.errors import ConfigError
from byzrsa.estimators import LocalData, estimate, init_state
from byzrsa.methods import (
    baseline_message,
    momentum_step,
    rsa_worker_step,
    step_size,
)

# ------------------------------------------------------------------------------------------- worker

__all__ = ["WorkerSpec", "Worker", "role_of", "spec_from_problem", "process_device", "worker_main"]


@dataclasses.dataclass
class WorkerSpec:
    """What one worker process needs: the config and its own shard, nothing else."""

    config: RunConfig
    worker: int
    input_shape: tuple[int, ...]  # one sample's shape, as the model is built for it
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
            "input_shape": list(self.input_shape),
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
            input_shape=tuple(int(n) for n in data["input_shape"]),
            num_classes=int(data["num_classes"]),
            x=data["x"],
            y=data["y"],
            faults={int(k): v for k, v in data["faults"].items()},
            echo=bool(data["echo"]),
        )


def role_of(parts: Parts, worker: int) -> str:
    """regular, byzantine, or idle (a Byzantine worker under Ideal SGD, which never hears from it)."""
    if worker < parts.config.regular:
        return "regular"
    return "byzantine" if parts.attacked else "idle"


def spec_from_problem(problem: Problem, worker: int, faults: dict[int, str] | None = None) -> WorkerSpec:
    """Worker ``worker``'s spec: its shard of the featurised training data, if it computes."""
    x = y = None
    if problem.computes(worker) and role_of(problem.parts, worker) != "idle":
        index = problem.shards[worker].to(problem.device)
        x = problem.train_x.index_select(0, index).cpu()
        y = problem.train_y.index_select(0, index).cpu()
    shape = tuple(problem.dataset.train_x.shape[1:])
    return WorkerSpec(problem.config, worker, shape, problem.dataset.num_classes, x, y, dict(faults or {}))


class Worker:
    """One worker's state and its replies to the master's frames."""

    def __init__(self, spec: WorkerSpec, device: torch.device) -> None:
        self.parts = build_parts(spec.config, spec.input_shape, spec.num_classes)  # the simulator's builder
        c = self.config = self.parts.config
        self.spec = spec
        self.index = spec.worker
        self.device = device
        self.dtype = torch.float64 if c.dtype == "float64" else torch.float32
        self.model = self.parts.model
        self.d = self.model.dim
        self.p = self.parts.p
        self.role = role_of(self.parts, self.index)
        self.computes = self.parts.computes(self.index) and self.role != "idle"
        self.x_shard = spec.x.to(device) if spec.x is not None else None
        # A data attack trains on poisoned labels (elementwise, so mapping the shard = mapping each batch).
        self.y_shard = self.parts.labels(self.index, spec.y.to(device)) if spec.y is not None else None
        self.momentum: Tensor | None = None
        self.dropout = self.parts.dropout_generators([self.index]) if self.computes else None
        self.sampler = None
        if self.computes:
            gen = derive_generator(c.seed, "batches", self.index)
            self.sampler = BatchSampler(torch.arange(len(spec.y)), c.batch_size, gen)
        self.attack_gen = derive_generator(c.seed, "attack", self.index) if self.role == "byzantine" else None
        self.attack_context = self.parts.attack_context([self.attack_gen] if self.attack_gen else [], state={})
        start = self.model.init(derive_generator(c.seed, "init"), self.dtype).to(device)
        self.x = start.clone() if c.method == "rsa" and self.computes else None
        # --vr: this worker's row of the estimator state, as the simulator's row `index` (byzrsa.estimators)
        self.vr_data = LocalData(self.model, [torch.arange(len(spec.y))] if self.computes else [],
                                 lambda _row: (self.x_shard, self.y_shard))
        self.vr = (init_state(c.vr, c.vr_options, self.vr_data, start, [derive_generator(c.seed, "vr", self.index)])
                   if self.computes else None)
        self.compute_seconds = 0.0  # wall clock
        self.compute_cpu = 0.0  # CPU time of this thread (what an oversubscribed machine cannot hide)
        self.steps = 0

    # state -------------------------------------------------------------------------------------
    def state_blob(self) -> bytes:
        state = {
            "x": self.x.cpu() if self.x is not None else None,
            "sampler": self.sampler.state_dict() if self.sampler is not None else None,
            "momentum": self.momentum.cpu() if self.momentum is not None else None,
            "dropout": [g.get_state() for g in self.dropout] if self.dropout else None,
            "attack": self.attack_gen.get_state() if self.attack_gen is not None else None,
            "vr": self.vr.state_dict() if self.vr is not None else None,
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def load_blob(self, blob: bytes) -> None:
        state = torch.load(io.BytesIO(blob), weights_only=True)
        if state["x"] is not None and self.x is not None:
            self.x = state["x"].to(self.device, self.dtype)
        if state.get("dropout") and self.dropout:
            for g, saved in zip(self.dropout, state["dropout"]):
                g.set_state(saved)
        if state.get("momentum") is not None:
            self.momentum = state["momentum"].to(self.device, self.dtype)
        if state["sampler"] is not None and self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])
        if state["attack"] is not None and self.attack_gen is not None:
            self.attack_gen.set_state(state["attack"])
        if state.get("vr") is not None and self.vr is not None:
            self.vr.load_state_dict(state["vr"])

    # compute -----------------------------------------------------------------------------------
    def _grad(self, w: Tensor) -> Tensor:
        idx = self.sampler.next().to(self.device)
        xb = self.x_shard.index_select(0, idx).unsqueeze(0)
        yb = self.y_shard.index_select(0, idx).unsqueeze(0)
        if self.vr is not None:
            return estimate(self.vr, self.vr_data, slice(0, 1), w.unsqueeze(0), xb, yb, idx.unsqueeze(0))[0]
        return self.model.grad(w.unsqueeze(0), xb, yb, self.dropout)[0]

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
        if self.parts.is_rsa:
            current = self.x
            grad = self._grad(current)
            self.x = rsa_worker_step(current, x0, grad, lam=c.lam, p=self.p, alpha=alpha, m=c.workers)
            return self.x if c.master_order == "gauss-seidel" else current
        message = baseline_message(self._grad(x0), x0, c.mu)
        self.momentum = momentum_step(self.momentum, message, c.momentum)
        return self.momentum

    def byzantine_message(self, k: int, regular: Tensor, own: Tensor | None, x0: Tensor | None) -> Tensor:
        if own is None:  # a placeholder of the right shape: the attack does not read it
            own = torch.zeros(self.d, dtype=self.dtype, device=self.device)
        ctx = self.attack_context
        ctx.x0 = x0
        if self.parts.attack.needs_defence:
            # The worker probes with fresh pre-aggregator streams: equal to the master's for rules
            # without random pre-aggregators or a remembered centre (see docs/distributed.md).
            ctx.defence = self.parts.defence(x0, step_size(self.config.lr, k, self.config.lr_schedule), None)
        return self.parts.attack(regular, own.unsqueeze(0), ctx, **self.parts.attack_options)[0]


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
    silence = master_silence(c)
    token = token_from_env()
    if uses_sockets(c):
        try:
            sock = connect(dist.distributed_c10d._get_default_store(), token,
                           time.monotonic() + max(STARTUP_TIMEOUT, silence))
        except PeerLost as exc:
            print(f"byzrsa worker {spec.worker}: {exc}; exiting", file=sys.stderr)
            return 1
        link: Any = SocketLink(sock, capacity_to_worker(worker.parts, d, spec.worker), capacity_to_master(c, d),
                               settle=silence)
    else:
        group = pair_groups(c)[spec.worker]
        link = Link(0, group, capacity_to_worker(worker.parts, d, spec.worker), capacity_to_master(c, d), comm_device,
                    True, settle=silence)
    faults = spec.faults

    def receive(timeout: float = silence) -> Frame:
        return link.receive(time.monotonic() + timeout)

    identity = {**config_identity(c), "model_dim": d}
    if faults.get(0) == "config":  # testing hook: a worker started with another seed
        identity["seed"] += 1
    hello = {"identity": identity, "fingerprint": shard_fingerprint(spec.x, spec.y), "worker": spec.worker,
             "host": socket.gethostname(), "pid": os.getpid(), "token": sign(token, f"worker {spec.worker}")}
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
                        send_message(link, k, worker.x, fault)
                        start, cpu = time.perf_counter(), time.thread_time()  # the send is communication
                        worker.advance(k, x0)
                        message = None
                    else:
                        message = worker.advance(k, x0)
                else:
                    own = worker.advance(k, x0)
                    if forwards(worker.parts):
                        worker.compute_seconds += time.perf_counter() - start
                        worker.compute_cpu += time.thread_time() - cpu
                        attack_frame = receive()
                        if attack_frame.kind != Kind.ATTACK or attack_frame.iteration != k:
                            raise Malformed(f"expected ATTACK of iteration {k}, got {Kind(attack_frame.kind).name}")
                        regular = attack_frame.tensor().to(device).view(-1, d)[: attack_frame.rows if attack_frame.numel else 0]
                        start, cpu = time.perf_counter(), time.thread_time()
                    else:
                        regular = torch.empty(0, d, dtype=worker.dtype, device=device)
                    message = worker.byzantine_message(k, regular, own, x0)
                worker.compute_seconds += time.perf_counter() - start
                worker.compute_cpu += time.thread_time() - cpu
                worker.steps += 1
                if message is not None:
                    send_message(link, k, message, fault)
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
