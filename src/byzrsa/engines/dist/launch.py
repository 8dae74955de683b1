"""Starting a distributed run: local worker processes on 127.0.0.1, or torchrun's, and the floor benchmark."""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from byzrsa.config import RunConfig
from byzrsa.engines.checkpoint_io import read_checkpoint
from byzrsa.engines.common import Problem, build_parts
from byzrsa.engines.cpu import subnormals_flushed
from byzrsa.engines.dist.faults import FaultPlan
from byzrsa.engines.dist.master import Master
from byzrsa.engines.dist.transport import (
    STARTUP_TIMEOUT,
    DistError,
    Kind,
    capacity_to_master,
    capacity_to_worker,
    encode,
    log,
    pg_timeout,
    shard_fingerprint,
)
from byzrsa.engines.dist.wire import BIND_ENV, TOKEN_ENV, token_from_env
from byzrsa.engines.dist.worker import WorkerSpec, process_device, spec_from_problem, worker_main

# ------------------------------------------------------------------------------------------- launching

__all__ = ["LocalLaunch", "attached", "run_local", "measure_floor"]


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


def _local_worker_process(spec_blob: bytes, rank: int, world: int, store_path: str, env: dict[str, str],
                          parent: Any, peers: bool = False) -> None:
    """Entry of a locally launched worker process (forked by multiprocessing's forkserver).

    ``peers``: a node of a decentralized run (:mod:`byzrsa.engines.dist.peer`), which needs no process group.
    """
    os.environ.update(env)
    code = 1
    try:
        spec = WorkerSpec.from_bytes(spec_blob)
        torch.set_num_threads(spec.config.threads or 1)
        torch.set_flush_denormal(True)  # this process's arithmetic is the simulator's (engines.cpu.subnormals_flushed)

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
        if peers:
            from byzrsa.engines.dist.peer import node_main

            code = node_main(spec, store, device)
        else:
            dist.init_process_group(spec.config.backend, store=store, rank=rank, world_size=world,
                                    timeout=pg_timeout(spec.config))
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


# A forked worker's own memory beyond the pages it shares with the forkserver (torch and byzrsa, imported
# once there): measured about 14 MiB private and 44 MiB proportional on Linux for a softmax run; rounded up.
PROCESS_BYTES = 48 << 20
FDS_PER_WORKER = 4  # the master's socket, pipe and process sentinel per worker, and slack


def check_local_launch(problem: Problem) -> None:
    """Refuse, with the estimate, a local launch whose worker processes cannot fit in memory or file descriptors."""
    import resource

    from byzrsa.engines.common import _available_bytes

    c = problem.config
    d = problem.model.dim
    data = problem.dataset.train_x
    shard = data.numel() * data.element_size() // max(c.workers, 1) + data[:1].numel() * data.element_size()
    buffers = capacity_to_worker(problem.parts, d, c.workers - 1) + capacity_to_master(c, d)
    each = PROCESS_BYTES + 4 * d * 8 + shard + 2 * buffers
    need, available = c.workers * each, _available_bytes()
    if available is not None and need > available:
        raise DistError(
            f"the local launch needs about {need / 2**30:.1f} GiB for its {c.workers} worker processes (about "
            f"{each / 2**20:.0f} MiB each) but {available / 2**30:.1f} GiB are available: reduce workers, or use the "
            "simulator (--engine sim), which holds every worker in one (m, d) tensor"
        )
    fds = FDS_PER_WORKER * c.workers + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and fds > soft:
        if hard != resource.RLIM_INFINITY and fds > hard:
            raise DistError(f"the local launch needs about {fds} open files for {c.workers} workers but this process "
                            f"may open {hard} (ulimit -n): reduce workers, or use --engine sim")
        resource.setrlimit(resource.RLIMIT_NOFILE, (fds, hard))


class LocalLaunch:
    """The master (this process, rank 0) and one process per worker on this machine, on 127.0.0.1.

    Worker processes are forked from multiprocessing's forkserver (which
    imports torch once); the rendezvous is a FileStore in a private temporary
    folder (no listening socket), and gloo binds the loopback interface. Every
    process started here is ended on exit, also on error or Ctrl-C; each worker
    also ends itself when this process dies.
    """

    def __init__(self, problem: Problem, faults: FaultPlan, *, echo: bool = False, peers: bool = False) -> None:
        self.problem = problem
        self.peers = peers  # the nodes of a decentralized run: no process group, this process only collects
        self.store: Any = None
        self.faults = faults
        self.echo = echo
        self.procs: dict[int, Any] = {}
        self.pipes: list[Any] = []
        self.tmp: str | None = None
        self.initialised = False
        self.host = "127.0.0.1"
        self.token = secrets.token_hex(16)  # only this launch's workers can greet its master

    def __enter__(self) -> LocalLaunch:
        c = self.problem.config
        check_local_launch(self.problem)  # before the first fork: 10 000 workers are refused here
        if dist.is_available() and dist.is_initialized():
            raise DistError("a torch.distributed process group already exists in this process; "
                            "run byzrsa's local launch from a plain process, or use torchrun with python -m byzrsa.dist")
        world = c.workers + 1
        self.tmp = tempfile.mkdtemp(prefix="byzrsa-dist-")
        store_path = os.path.join(self.tmp, "store")
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["byzrsa.engines.dist.launch"])
        iface = _loopback_interface()
        env = {"GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME") or iface or ""}
        env = {k: v for k, v in env.items() if v}
        worker_env = {**env, TOKEN_ENV: self.token}
        try:
            for w in range(c.workers):
                spec = spec_from_problem(self.problem, w, self.faults.of(w))
                spec.echo = self.echo
                reader, writer = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_local_worker_process,
                    args=(spec.to_bytes(), w + 1, world, store_path, worker_env, reader, self.peers),
                    name=f"byzrsa-worker-{w}",
                    daemon=True,
                )
                with _without_main():
                    proc.start()
                reader.close()
                self.pipes.append(writer)
                self.procs[w] = proc
            store = self.store = dist.FileStore(store_path, world)
            self._await_ready(store, c)
            if self.peers:
                return self
            self.excepthook = sys.excepthook  # init_process_group wraps it for good; put it back on exit
            with _env(**env):
                dist.init_process_group(c.backend, store=store, rank=0, world_size=world, timeout=pg_timeout(c))
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
        self.token = token_from_env()
        one_node = os.environ.get("WORLD_SIZE") == os.environ.get("LOCAL_WORLD_SIZE")
        # The master listens where it is told, else on the loopback interface when every process is on its node.
        self.host = os.environ.get(BIND_ENV) or ("127.0.0.1" if one_node else os.environ.get("MASTER_ADDR", "127.0.0.1"))

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
    faults: FaultPlan | None = None,
) -> Iterator[dict[str, float]]:
    """Run ``problem`` on real processes; yield the same metric rows as :func:`byzrsa.engines.sim.simulate`.

    Launches the workers on this machine (or, inside :func:`attached`, uses
    torchrun's processes) with this process as the master. ``extra`` receives
    facts for the summary: ``dead_workers``, ``malformed_messages``,
    ``resumed_from`` and ``dist`` (timings). ``checkpoint_dir`` is where
    ``checkpoint.pt`` is written every ``checkpoint_every`` iterations;
    ``resume`` a folder (or file) holding one to continue from. ``faults`` is
    a test's fault plan (default: the one in :data:`FAULTS_ENV`, read here once).
    """
    c = problem.config
    faults = FaultPlan.from_env() if faults is None else faults
    if problem.topology is not None:  # a decentralized run: one process per node, no master
        from byzrsa.engines.dist.peer import run_peers

        if resume is not None:
            raise DistError("--topology with --engine dist has no checkpoints to resume from yet: use --engine sim")
        if _ATTACHED is not None:
            raise DistError("--topology with --engine dist is launched by byzrsa on this machine, not by torchrun, for now")
        yield from run_peers(problem, extra, faults)
        return
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if c.checkpoint_every and checkpoint_dir is None:
        log.warning("checkpoint_every=%d but no results folder was given: no checkpoints are written", c.checkpoint_every)
    resume = Path(resume) if resume is not None else None
    if resume is not None:  # a foreign or damaged file is refused before any process starts
        read_checkpoint(resume, "dist")
    session = _ATTACHED
    device = problem.device
    with contextlib.ExitStack() as stack:
        if device.type == "cpu":
            stack.enter_context(subnormals_flushed())  # as the simulator and the workers: the same numbers
        if session is None:
            session = stack.enter_context(LocalLaunch(problem, faults))
            fingerprints = None  # the master handed out the shards itself
        else:
            if dist.get_world_size() != c.workers + 1:
                raise DistError(
                    f"torchrun started {dist.get_world_size()} processes but the config has workers={c.workers}: "
                    f"start workers + 1 = {c.workers + 1} (nnodes x nproc-per-node)"
                )
            fingerprints = {w: shard_fingerprint(*_shard(problem, w)) for w in range(c.workers)}
        master = Master(problem, extra, checkpoint_dir=checkpoint_dir, resume=resume, kill=session.kill, device=device,
                        faults=faults, host=session.host, token=session.token)
        try:
            master.handshake(fingerprints)
            yield from master.run()
        finally:
            master._summarise()
            master.close()


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
    floor_problem = dataclasses.replace(problem, parts=build_parts(c, tuple(problem.dataset.train_x.shape[1:]),
                                                                   problem.dataset.num_classes))
    with LocalLaunch(floor_problem, FaultPlan(), echo=True) as launch:
        master = Master(floor_problem, {}, checkpoint_dir=None, resume=None, device=problem.device, token=launch.token)
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
        master.close()
    return seconds

