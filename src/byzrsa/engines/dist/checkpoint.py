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

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from byzrsa.engines.dist.transport import CHECKPOINT_NAME, Kind, config_differences, config_identity, encode, log
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
        "format": 1,
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
    path = master.checkpoint_dir / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    master.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp)
    os.replace(tmp, path)
    master._summarise()

def load_checkpoint(master: Master, directory: Path) -> None:
    """Restore ``master`` from a checkpoint; refuse another run's."""
    path = directory / CHECKPOINT_NAME if directory.is_dir() else directory
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"--resume: no {CHECKPOINT_NAME} in {directory} (was checkpoint_every set?)") from None
    except Exception as exc:  # a truncated or foreign file
        raise ConfigError(f"--resume: cannot read {path}: {exc}") from None
    diff = config_differences(config_identity(master.config), state["identity"])
    if diff:
        raise ConfigError(f"--resume: the checkpoint in {directory} is of a different run: {diff}")
    master.k = master.resumed_from = int(state["k"])
    master.x0 = state["x0"].to(master.problem.device, master.problem.dtype)
    master.rows = [dict(r) for r in state["rows"]]
    master.train_seconds = float(state["train_seconds"])
    master.dead = [dict(e) for e in state["dead"]]
    master.malformed = {k: dict(v) for k, v in state["malformed"].items()}
    master.non_finite = {k: int(v) for k, v in state["non_finite"].items()}
    if "aggregator" in state:
        master.aggregator.load_state_dict(state["aggregator"])
    master.worker_blobs = {int(w): t.numpy().tobytes() for w, t in state["workers"].items()}
    live = {int(w) for w in state["live"]}
    # Workers dead (or without a saved state) at the checkpoint stay out, as in the uninterrupted run.
    master.exiled = {w for w in range(master.config.workers) if role_of(master.problem.parts, w) != "idle" and w not in live}
    for w in sorted(master.exiled):
        if not any(e["worker"] == w for e in master.dead):
            master.dead.append({"worker": w, "rank": w + 1, "iteration": master.k, "reason": "no state in the checkpoint"})
    log.info("resuming from iteration %d (%s)", master.k, path)


