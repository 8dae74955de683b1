"""The master of the distributed engine: rounds with deadlines, dead and malformed workers, metrics."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from byzrsa.engines.common import Problem
from byzrsa.engines.dist.checkpoint import load_checkpoint, save_checkpoint
from byzrsa.engines.dist.faults import FaultPlan
from byzrsa.engines.dist.transport import (
    STARTUP_TIMEOUT,
    DistError,
    Frame,
    Kind,
    Link,
    Malformed,
    PeerLost,
    capacity_to_master,
    capacity_to_worker,
    config_differences,
    config_identity,
    encode,
    encode_blob,
    forwards,
    log,
    pair_groups,
    sends_x0,
)
from byzrsa.engines.dist.wire import Unconnected, accept_links, check_frame, listen, publish, uses_sockets
from byzrsa.engines.dist.worker import role_of
from byzrsa.errors import ConfigError
from byzrsa.methods import aggregation_step, rsa_master_step, step_size

# ------------------------------------------------------------------------------------------- master

__all__ = ["Master"]


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
        faults: FaultPlan | None = None,
        host: str = "127.0.0.1",
        token: str = "",
    ) -> None:
        c = self.config = problem.config
        self.problem = problem
        self.extra = extra
        self.checkpoint_dir = checkpoint_dir
        self.kill = kill  # callable(worker) that ends a worker process we own, or None
        self.d = problem.model.dim
        self.comm_device = device if c.backend == "nccl" else torch.device("cpu")
        self.links: dict[int, Any] = {}
        self.listener = None
        self.token = token
        if uses_sockets(c):  # the workers connect in handshake(); engines/dist/wire.py says why sockets
            self.listener = listen(host)
            publish(dist.distributed_c10d._get_default_store(), self.listener, token)
        else:
            groups = pair_groups(c)
            for w in range(c.workers):
                self.links[w] = Link(w + 1, groups[w], capacity_to_master(c, self.d),
                                     capacity_to_worker(problem.parts, self.d, w), self.comm_device, True, settle=c.timeout)
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
        self.aggregator = problem.aggregator_state()
        self.last_regular: dict[int, Tensor] = {}
        self.master_fault = (faults or FaultPlan()).master_exit
        if resume is not None:
            load_checkpoint(self, resume)

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
            why = check_frame(frame, kind=kind, iteration=iteration)
            if why is not None:
                self._drop(w, why)
                continue
            got[w] = frame
        return got

    def _vectors(self, frames: dict[int, Frame]) -> dict[int, Tensor]:
        """The well-formed ``(d,)`` vectors among ``frames``, copied out of the receive buffers."""
        out = {}
        for w, frame in frames.items():
            why = check_frame(frame, kind=Kind(frame.kind), iteration=frame.iteration, dtype=self.problem.dtype,
                              numel=self.d, rows=1)
            if why is not None:
                self._drop(w, why)
            else:
                out[w] = frame.tensor().to(self.problem.device)
        return out

    # start-up ----------------------------------------------------------------------------------
    def handshake(self, worker_fingerprints: dict[int, str] | None = None) -> None:
        """Check every worker's config; refuse mismatches; send START (with restored state) or EXIT."""
        c = self.config
        mine = {**config_identity(c), "model_dim": self.d}
        deadline = time.monotonic() + max(STARTUP_TIMEOUT, c.timeout)
        if self.listener is not None:
            self.links = accept_links(self.listener, c.workers, capacity_to_master(c, self.d),
                                      lambda w: capacity_to_worker(self.problem.parts, self.d, w), self.token, deadline,
                                      c.timeout)
            for w in range(c.workers):
                self.links.setdefault(w, Unconnected())
        frames = self._gather(list(range(c.workers)), Kind.HELLO, deadline=deadline, iteration=0)
        refused = []
        for w, frame in frames.items():
            try:
                hello = json.loads(frame.blob().decode())
                theirs = hello["identity"]
            except (ValueError, KeyError, UnicodeDecodeError):
                refused.append((w, "its greeting is not a byzrsa greeting"))
                continue
            diff = config_differences(mine, theirs)
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
        # A worker whose greeting is wrong is treated as Byzantine: refused, dropped, and the run goes on
        # without it, unless no regular worker is left to train.
        for w, why in refused:
            self._send(w, encode_blob(Kind.REFUSE, 0, why.encode()))
            self.links[w].flush(time.monotonic() + 2.0)
            self._declare_dead(w, f"refused at start-up: {why}")
        if refused and not any(w < c.regular and w not in self.exiled for w in self.live):
            for w in sorted(self.live):
                self._send(w, encode(Kind.EXIT, 0))
            lines = "; ".join(f"worker {w} (rank {w + 1}): {why}" for w, why in refused)
            raise DistError(f"refused at start-up: {lines}. Start every process with the same config file and data.")
        for w in range(c.workers):
            if w not in self.live:
                continue
            if role_of(self.problem.parts, w) == "idle" or w in self.exiled:
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
        forward = forwards(pb.parts)
        first = regular + ([] if forward else byzantine)
        self._post(first + (byzantine if forward else []))
        full = encode(Kind.STEP, k, self.x0)
        blind = full if sends_x0(pb.parts) else encode(Kind.STEP, k)
        for w in regular:
            self._send(w, full)
        for w in byzantine:
            self._send(w, blind)
        messages = self._vectors(self._gather(first, Kind.MSG))
        if forward and byzantine:
            stacked = self._regular_view(messages)
            frame = encode(Kind.ATTACK, k, stacked, rows=max(stacked.shape[0], 1))
            for w in byzantine:
                self._send(w, frame)
            messages.update(self._vectors(self._gather(byzantine, Kind.MSG)))
        if not any(w < c.regular for w in self.live):
            raise DistError(f"every regular worker is dead (iteration {k}); see the log for which and why")
        order = [w for w in range(c.workers) if w in messages]
        start, cpu = time.perf_counter(), time.thread_time()
        stacked = torch.stack([messages[w] for w in order]) if order else torch.empty(0, self.d, dtype=pb.dtype)
        # amax propagates NaN and inf, and is far cheaper than isfinite(...).all(dim=1) over (m, d)
        finite = torch.isfinite(stacked.abs().amax(dim=1)) if order else stacked.new_ones(0, dtype=torch.bool)
        if not bool(finite.all()):  # kept: the rules are built to take it (docs/protocol.md, convention 6); counted
            for w, ok in zip(order, finite.tolist()):
                if not ok:
                    self.non_finite[str(w)] = self.non_finite.get(str(w), 0) + 1
        if pb.is_rsa:
            self.x0 = rsa_master_step(self.x0, stacked, lam=c.lam, p=pb.p, alpha=alpha, mu=c.mu)
        elif order:
            try:
                pb.check_rows(len(order))
            except ConfigError as exc:  # too few rows for the rule (dead workers): the documented skip
                self.skipped_steps += 1
                if len(order) not in self._skip_logged:  # once per number of rows, not every iteration
                    self._skip_logged.add(len(order))
                    log.warning("iteration %d: the rule cannot aggregate the %d messages that arrived (%s): "
                                "model unchanged while this lasts", k, len(order), exc)
            else:  # any other error is a bug, and is raised
                self.x0 = aggregation_step(self.x0, stacked, lambda rows: pb.aggregate(rows, self.aggregator), alpha=alpha)
        self.step_seconds += time.perf_counter() - start
        self.step_cpu += time.thread_time() - cpu

    def _regular_view(self, messages: dict[int, Tensor]) -> Tensor:
        """The regular messages an omniscient attacker sees, one row per regular worker in worker order.

        A dead or silent regular worker keeps its row with the last message it
        sent (zeros before its first), so that an attack addressing worker r
        (copy) always reads worker r, never whichever worker arrived r-th. The
        mean and deviation the statistical attacks use then count that stale row;
        the simulator never has dead workers, so both engines agree when all are alive.
        """
        c = self.config
        for w in range(c.regular):
            if w in messages:
                self.last_regular[w] = messages[w]
        rows = [self.last_regular.get(w) for w in range(c.regular)]
        zero = torch.zeros(self.d, dtype=self.problem.dtype, device=self.problem.device)
        return torch.stack([r if r is not None else zero for r in rows])

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
                save_checkpoint(self)
        self._finish()

    # end ---------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close byzrsa's own sockets (the listener and the links to the workers)."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            for link in self.links.values():
                link.close()
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
            "computing_workers": sum(1 for w in range(c.workers) if self.problem.computes(w) and role_of(self.problem.parts, w) != "idle"),
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
