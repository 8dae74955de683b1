"""Checkpoints of the distributed engine: the master's state and every live worker's, in one file.

Every ``config.checkpoint_every`` iterations the master asks every live worker
for its state (local iterate, momentum, minibatch sampler and attack
generator) and writes ``checkpoint.pt`` (x0 or the model, iteration, worker
states, the aggregator's streams and centre, metrics so far, dead workers)
atomically into the results folder. ``resume=DIR`` starts a fresh set of
processes from it; the rest of the trajectory is the one the uninterrupted run
would have followed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from byzrsa.engines.checkpoint_io import read_checkpoint, require, write_checkpoint
from byzrsa.engines.dist.transport import Kind, config_differences, config_identity, encode, log
from byzrsa.engines.dist.worker import role_of
from byzrsa.errors import ConfigError

if TYPE_CHECKING:
    from byzrsa.engines.dist.master import Master

__all__ = ["save_checkpoint", "load_checkpoint"]


def save_checkpoint(master: Master) -> None:
    """Ask every live worker for its state and write ``checkpoint.pt`` atomically into the results folder."""
    c = master.config
    live = sorted(master.live)
    master._post(live)
    frame = encode(Kind.SNAPSHOT, master.k)
    for w in live:
        master._send(w, frame)
    got = master._gather(live, Kind.STATE)
    blobs = {}
    for w in sorted(master.live):
        if w in got and got[w].dtype == torch.uint8:
            blobs[str(w)] = got[w].tensor().cpu()
        elif w in master.live:
            # Without its state the worker cannot be restored: a resumed run goes on without it.
            master._drop(w, "no usable state for the checkpoint")
    state = {
        "identity": config_identity(c),
        "k": master.k,
        "x0": master.x0.cpu(),
        "rows": master.rows,
        "train_seconds": master.train_seconds,
        "dead": master.dead,
        "malformed": master.malformed,
        "non_finite": master.non_finite,
        "workers": blobs,
        "aggregator": master.aggregator.state_dict(),
        "live": sorted(int(w) for w in blobs),
    }
    write_checkpoint(state, master.checkpoint_dir, "dist")
    master._summarise()

def load_checkpoint(master: Master, directory: Path) -> None:
    """Restore ``master`` from a checkpoint; refuse another run's, another engine's or a damaged one (one line)."""
    state, path = read_checkpoint(directory, "dist")
    identity = require(state, "identity", dict, path)
    diff = config_differences(config_identity(master.config), identity)
    if diff:
        raise ConfigError(f"--resume: the checkpoint in {directory} is of a different run: {diff}")
    try:
        k = require(state, "k", int, path)
        x0 = require(state, "x0", torch.Tensor, path)
        if x0.shape != master.x0.shape:
            raise ConfigError(f"--resume: {path} is damaged: its model has shape {tuple(x0.shape)}, "
                              f"this run's {tuple(master.x0.shape)}")
        rows = [dict(r) for r in require(state, "rows", list, path)]
        train_seconds = float(require(state, "train_seconds", (int, float), path))
        dead = [dict(e) for e in require(state, "dead", list, path)]
        malformed = {str(k): dict(v) for k, v in require(state, "malformed", dict, path).items()}
        non_finite = {str(k): int(v) for k, v in require(state, "non_finite", dict, path).items()}
        blobs = {int(w): t.numpy().tobytes() for w, t in require(state, "workers", dict, path).items()}
        live = {int(w) for w in require(state, "live", list, path)}
        if "aggregator" in state:
            master.aggregator.load_state_dict(state["aggregator"])
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise ConfigError(f"--resume: {path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    master.k = master.resumed_from = k
    master.x0 = x0.to(master.problem.device, master.problem.dtype)
    master.rows, master.train_seconds, master.dead = rows, train_seconds, dead
    master.malformed, master.non_finite, master.worker_blobs = malformed, non_finite, blobs
    # Workers dead (or without a saved state) at the checkpoint stay out, as in the uninterrupted run.
    master.exiled = {w for w in range(master.config.workers) if role_of(master.problem.parts, w) != "idle" and w not in live}
    for w in sorted(master.exiled):
        if not any(e["worker"] == w for e in master.dead):
            master.dead.append({"worker": w, "rank": w + 1, "iteration": master.k, "reason": "no state in the checkpoint"})
    log.info("resuming from iteration %d (%s)", master.k, path)
