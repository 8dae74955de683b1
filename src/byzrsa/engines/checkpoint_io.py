"""Checkpoint files of both engines: plain data written atomically, read without running any code.

A checkpoint holds tensors, numbers, strings, booleans, ``None``, lists,
tuples and dicts with string or integer keys, nothing else: :func:`write_checkpoint`
refuses anything more (an attack plugin that keeps, say, a NumPy array in its
state is told which entry to convert), and :func:`read_checkpoint` loads with
``torch.load(weights_only=True)``, whose unpickler builds only those types and
never calls a constructor named by the file. A crafted ``checkpoint.pt``
(a pickle whose ``__reduce__`` runs a command) is therefore refused, not run.

Both engines mark their files with ``engine`` ("sim" or "dist") and
``format``; a file of the other engine, of an unknown format, or with a missing
or mistyped entry is one :class:`~byzrsa.errors.ConfigError` line.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from byzrsa.engines.common import CHECKPOINT_NAME
from byzrsa.errors import ConfigError, WriteError

__all__ = ["FORMAT", "check_plain", "write_checkpoint", "read_checkpoint", "require", "save_simulator", "load_simulator"]

FORMAT = 1
_LEAVES = (Tensor, bool, int, float, str, type(None))


def check_plain(value: Any, where: str = "state") -> None:
    """Raise :class:`ConfigError` naming the first entry of ``value`` that is not plain checkpoint data."""
    if isinstance(value, _LEAVES):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise ConfigError(f"checkpoint: {where} has a key of type {type(key).__name__}; keys must be strings or integers")
            check_plain(item, f"{where}.{key}")
        return
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    raise ConfigError(
        f"checkpoint: {where} holds a {kind}; a checkpoint holds only tensors, numbers, strings, lists and dicts "
        "(a plugin's state must be converted to those)"
    )


def write_checkpoint(state: dict[str, Any], folder: Path, engine: str) -> Path:
    """Write ``state`` (plain data, checked) to ``folder/checkpoint.pt`` through a temporary file and a rename.

    The temporary file is removed if the write fails (a full disk, a file-size
    limit): the old checkpoint, if any, stays whole, and the error is a
    :class:`~byzrsa.errors.WriteError` naming the file.
    """
    state = {"format": FORMAT, "engine": engine, **state}
    check_plain(state)
    path = folder / CHECKPOINT_NAME
    tmp = path.with_name(f".{CHECKPOINT_NAME}.tmp-{os.getpid()}")
    # Serialised in memory first: torch's own file writer reports a full disk as a RuntimeError
    # without the path or the cause; Python's write gives the OSError (ENOSPC, EFBIG, ...).
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError.from_os(exc, path) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def read_checkpoint(where: Path, engine: str) -> tuple[dict[str, Any], Path]:
    """The checkpoint in folder (or file) ``where``, as plain data, checked to be one of ``engine``'s.

    Returns the state and the file's path. Every way a file can be wrong is a
    one-line :class:`ConfigError`: missing, unreadable, truncated, a pickle of
    anything but plain data, not a dict, another engine's, an unknown format.
    """
    path = where / CHECKPOINT_NAME if where.is_dir() else where
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ConfigError(f"--resume: no {CHECKPOINT_NAME} in {where} (was checkpoint_every set?)") from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise ConfigError(
                f"--resume: {path} holds objects other than tensors, numbers, strings, lists and dicts; "
                "refused without running them (not a byzrsa checkpoint, or a crafted one)"
            ) from None
        raise ConfigError(f"--resume: cannot read {path}: {_first_line(exc)}") from None
    except Exception as exc:  # truncated, not a zip or pickle at all, unreadable
        raise ConfigError(f"--resume: cannot read {path}: {_first_line(exc)}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"--resume: {path} is not a byzrsa checkpoint (it holds a {type(state).__name__}, not a dict)")
    # dist checkpoints written before the engine was recorded carry its keys but no "engine" entry
    found = state.get("engine", "dist" if "workers" in state and "identity" in state else None)
    if found is None:
        raise ConfigError(f"--resume: {path} is not a byzrsa checkpoint (no engine or identity recorded)")
    if found != engine:
        flag = "--engine dist" if found == "dist" else "--engine sim (or leave --engine out)"
        raise ConfigError(f"--resume: {path} is a checkpoint of the {found!s:.20} engine; resume it with {flag}")
    if state.get("format", FORMAT) != FORMAT:
        raise ConfigError(f"--resume: {path} has checkpoint format {state.get('format')!r:.20}; this byzrsa reads {FORMAT}")
    return state, path


def require(state: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    """``state[key]``, which must be a ``kind``; else a one-line refusal of the damaged file."""
    if not isinstance(state, Mapping) or key not in state:
        raise ConfigError(f"--resume: {path} is damaged: no '{key}' entry")
    value = state[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))):
        raise ConfigError(f"--resume: {path} is damaged: '{key}' is a {type(value).__name__}")
    return value


def save_simulator(sim: Any, rows: list[dict[str, float]], train_seconds: float, folder: Path) -> None:
    """The simulator's checkpoint: its whole state (:meth:`Simulator.state_dict`), the rows so far, the run's identity."""
    from byzrsa.engines.common import config_identity

    write_checkpoint({"identity": config_identity(sim.problem.config), "rows": rows, "train_seconds": train_seconds,
                      "sim": sim.state_dict()}, folder, "sim")


def load_simulator(sim: Any, folder: Path) -> list[dict[str, float]]:
    """Restore ``sim`` from the checkpoint in ``folder``; return the stored rows. Refuse another run's or a damaged one."""
    from byzrsa.engines.common import config_identity

    state, path = read_checkpoint(folder, "sim")
    saved_identity = require(state, "identity", dict, path)
    mine = config_identity(sim.problem.config)
    if saved_identity != mine:
        diff = sorted(str(k) for k in set(mine) | set(saved_identity) if mine.get(k) != saved_identity.get(k))
        raise ConfigError(f"--resume: the checkpoint in {folder} is of a different run (differs in {', '.join(diff)})")
    saved = require(state, "sim", dict, path)
    reached = require(saved, "k", int, path)
    if reached > sim.problem.config.iterations:
        raise ConfigError(
            f"--resume: the checkpoint in {folder} is at iteration {reached}, beyond this run's "
            f"{sim.problem.config.iterations} iterations; give --iterations {reached} or more"
        )
    rows = require(state, "rows", list, path)
    try:
        sim.load_state_dict(saved)
        return [dict(r) for r in rows]
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:  # damaged or older
        raise ConfigError(f"--resume: {path} is not a usable simulator checkpoint ({type(exc).__name__}: "
                          f"{_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
