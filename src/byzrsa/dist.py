"""``python -m byzrsa.dist``: one process of a distributed run, for torchrun (or any launcher that sets its env).

Every process gets the same arguments::

    torchrun --nnodes 1 --nproc-per-node 5 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:29400 \\
        -m byzrsa.dist --config run.toml --out results/run1

and reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` from the environment. Rank 0 is the master: it runs
:func:`byzrsa.experiments.runner.run` (same outputs as ``byzrsa run``, written
by rank 0 only) on the process group torchrun set up. Ranks 1..m are the
workers; each builds the problem from the config and keeps only its own shard.
The world size must be ``workers + 1``. ``--resume DIR`` is read by rank 0 only
(the checkpoint holds the workers' states); give every rank the same
``--config``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from byzrsa.errors import ByzrsaError

__all__ = ["main"]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _single_node() -> bool:
    world, local = _env_int("WORLD_SIZE"), _env_int("LOCAL_WORLD_SIZE")
    return world is not None and world == local


DONE_KEY = "byzrsa/done"


def _launcher_store() -> Any:
    """A client of the launcher's key-value store (torchrun's, at MASTER_ADDR:MASTER_PORT)."""
    from datetime import timedelta

    import torch.distributed as dist

    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=30))


def _done_value() -> str:
    """What the master writes under :data:`DONE_KEY`: signed with the run's token (BYZRSA_TOKEN) when there is one."""
    from byzrsa.engines.dist.wire import sign, token_from_env

    return sign(token_from_env(), DONE_KEY) or "1"


def _announce_done() -> None:
    """Master: tell every worker the run is over (a hung worker would otherwise keep torchrun waiting)."""
    try:
        _launcher_store().set(DONE_KEY, _done_value())
    except Exception:  # no store to tell: the launcher ends the workers itself
        pass


def _watch_done() -> None:
    """Worker: leave once the master has announced the end, or the launcher's store is gone."""
    import threading
    import time

    def watch() -> None:
        import hmac

        expected, warned = _done_value(), False
        try:
            store = _launcher_store()
            while True:
                if store.check([DONE_KEY]):
                    if hmac.compare_digest(store.get(DONE_KEY).decode(errors="replace"), expected):
                        break
                    if not warned:  # written by a process without the run's token: not the master
                        print(f"byzrsa worker: ignored a {DONE_KEY} key not signed with this run's token",
                              file=sys.stderr)
                        warned = True
                time.sleep(1.0)
            time.sleep(2.0)  # a worker that is still working normally gets to leave by itself
        except Exception:
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="byzrsa-done-watch").start()


def build_parser() -> argparse.ArgumentParser:
    from byzrsa.cli import add_config_flags

    parser = argparse.ArgumentParser(
        prog="python -m byzrsa.dist",
        description="One process of a distributed byzrsa run (rank 0 master, ranks 1..m workers). "
        "Start it with torchrun; for one machine, `byzrsa run --engine dist` is simpler.",
    )
    add_config_flags(parser)
    parser.add_argument("--out", metavar="DIR", help="results folder, written by rank 0")
    parser.add_argument("--resume", metavar="DIR", help="rank 0: continue the checkpointed run in DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _init(config: Any, rank: int, world: int) -> None:
    import torch.distributed as dist

    from byzrsa.engines.dist.launch import _loopback_interface
    from byzrsa.engines.dist.transport import pg_timeout as _pg_timeout

    # One machine: keep gloo on the loopback interface unless the user chose one.
    if config.backend == "gloo" and _single_node() and not os.environ.get("GLOO_SOCKET_IFNAME"):
        iface = _loopback_interface()
        if iface:
            os.environ["GLOO_SOCKET_IFNAME"] = iface
    dist.init_process_group(config.backend, init_method="env://", rank=rank, world_size=world,
                            timeout=_pg_timeout(config))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    try:
        if rank is None or world is None or not os.environ.get("MASTER_ADDR"):
            raise ByzrsaError(
                "RANK, WORLD_SIZE and MASTER_ADDR are not set: start this module with torchrun "
                "(see docs/distributed.md), or use `byzrsa run --engine dist` on one machine"
            )
        from byzrsa.cli import config_from_args, resume_base

        config = config_from_args(args, resume_base(args.resume) if rank == 0 else None).replace(engine="dist")
        if world != config.workers + 1:
            raise ByzrsaError(
                f"the launcher started {world} processes but the config has workers={config.workers}: "
                f"start workers + 1 = {config.workers + 1} (nnodes x nproc-per-node)"
            )
        return _run(config, args, rank, world)
    except ByzrsaError as exc:
        print(f"byzrsa.dist[rank {rank}]: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(config: Any, args: argparse.Namespace, rank: int, world: int) -> int:
    import contextlib

    import torch
    import torch.distributed as dist

    from byzrsa.engines import dist as engine
    from byzrsa.engines.common import build_problem, validate

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = engine.process_device(config, _env_int("LOCAL_RANK") or 0)
    config = config.replace(device=str(device))
    if rank == 0:
        from byzrsa.experiments.runner import run

        validate(config)  # a bad config fails here, before the other processes are waited for
        _init(config, rank, world)
        try:
            with engine.attached(device):
                summary = run(config, args.out, quiet=args.quiet, resume=args.resume)
        finally:
            _announce_done()
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        keys = ("method", "attack", "byzantine", "iterations", "final_accuracy", "best_accuracy", "wall_seconds",
                "dead_workers")
        print(json.dumps({k: summary.get(k) for k in keys}))
        return 0
    if config.threads is None:
        torch.set_num_threads(1)  # one process per worker: threads would only compete
    torch.set_flush_denormal(True)  # the simulator's arithmetic (engines.cpu.subnormals_flushed)
    problem = build_problem(config)
    faults = engine.FaultPlan.from_env()  # a test's fault plan, read once here
    spec = engine.spec_from_problem(problem, rank - 1, faults.of(rank - 1))
    del problem  # keep only this worker's shard
    _init(config, rank, world)
    _watch_done()
    code = engine.worker_main(spec, rank, device)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the orderly teardown: the master may be gone, and gloo's teardown would wait for it.
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
