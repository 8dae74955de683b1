"""Results folders that cannot lie: atomic writes, an in-progress marker, and one function that tells a folder's state.

A run folder holds ``config.json``, ``metrics.csv``, ``summary.json`` (with
``status``: ``completed``, ``interrupted`` with the iteration reached, or
``failed`` with the one-line error) and plots. While a run is in progress the
folder also holds :data:`MARKER` (the process id), written first and removed
last, so a run killed with SIGKILL, which can write nothing, is recognisable
by the marker its dead process left behind. :func:`run_state` is what
``reproduce`` and ``bench`` call before trusting a stored run.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from byzrsa.errors import ConfigError

__all__ = ["MARKER", "RUN_FILES", "atomic_write_text", "atomic_path", "run_state", "claim_folder", "release_folder"]

MARKER = ".running"
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "accuracy.png", MARKER)


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` with the same suffix (for writers that pick the format by suffix)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it: readers see the old file or the new one."""
    path = Path(path)
    tmp = atomic_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_state(folder: str | Path, iterations: int | None = None) -> str:
    """The state of a run folder: ``missing``, ``running``, ``killed``, ``corrupt``, ``completed``, ``interrupted`` or ``failed``.

    ``completed`` needs a parsable ``summary.json`` saying so and a
    ``metrics.csv`` whose last row reaches ``iterations`` (the summary's own
    count when not given); anything else that claims to be finished is ``corrupt``.
    ``killed``: the marker of a process that no longer exists (SIGKILL, power loss).
    """
    folder = Path(folder)
    marker = folder / MARKER
    if marker.exists():
        try:
            pid = int(marker.read_text().split()[0])
        except (ValueError, IndexError, OSError):
            return "killed"
        return "running" if pid != os.getpid() and _alive(pid) else "killed"
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        return "missing" if not folder.exists() or not any(folder.iterdir()) else "corrupt"
    try:
        summary = json.loads(summary_path.read_text())
        status = summary["status"]
    except (ValueError, KeyError, TypeError, OSError):
        return "corrupt"
    if status != "completed":
        return status if status in ("interrupted", "failed") else "corrupt"
    target = iterations if iterations is not None else summary.get("iterations")
    try:
        with open(folder / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        last = int(float(rows[-1]["iteration"]))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return "corrupt"
    return "completed" if target is None or last >= int(target) else "corrupt"


def claim_folder(out: Path, *, overwrite: bool = False, resume: bool = False) -> None:
    """Make ``out`` a run folder for this process, or raise a one-line :class:`ConfigError`.

    Refuses a path that is a file or lies under one, a folder that cannot be
    created, and a folder that already holds a run (another run's files would
    sit beside this one's) unless ``overwrite`` (its run files are removed) or
    ``resume`` (the checkpointed run continues there). Writes the marker.
    """
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
    state = run_state(out)
    if state == "running":
        raise ConfigError(f"--out {out}: another byzrsa process is writing a run there")
    if state != "missing" and not resume:
        if not overwrite:
            raise ConfigError(f"--out {out} already holds a run ({state}); add --overwrite to replace it, or choose another folder")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / MARKER, f"{os.getpid()}\n")
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None


def release_folder(out: Path, summary: dict[str, Any] | None) -> None:
    """Write the final ``summary.json`` atomically, then remove the marker (in that order)."""
    if summary is not None:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    (out / MARKER).unlink(missing_ok=True)
