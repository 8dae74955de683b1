"""Results folders that cannot lie: atomic writes, an in-progress marker, and one function that tells a folder's state.

A run folder holds ``config.json``, ``metrics.csv``, ``summary.json`` (with
``status``: ``completed``, ``interrupted`` with the iteration reached, or
``failed`` with the one-line error) and plots. While a run is in progress the
folder also holds :data:`MARKER` (the process id), written first and removed
last, so a run killed with SIGKILL, which can write nothing, is recognisable
by the marker its dead process left behind. :func:`run_state` is what
``reproduce`` and ``bench`` call before trusting a stored run.

The marker names the process by its id, the machine's boot id and the
process's start time, so a process id reused after a reboot (or by an
unrelated process) is not taken for the run's own.

Below the engines (it depends on nothing of byzrsa but :mod:`byzrsa.errors`): ``byzrsa run``, ``reproduce``,
``bench``, ``tune`` and the Flower engine's ServerApp all claim and release their folders here.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from byzrsa.errors import ConfigError, WriteError

__all__ = [
    "MARKER", "RUN_FILES", "STATES", "atomic_write_text", "atomic_path", "check_folder", "run_state", "claim_folder",
    "release_folder", "remove_temporaries", "SUMMARY_FIELDS", "atomic_savefig", "provenance", "utc_now",
]

MARKER = ".running"
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "accuracy.png", "checkpoint.pt", MARKER)
# Every value run_state returns; only "completed" may be trusted as a finished run.
STATES = ("missing", "running", "killed", "corrupt", "completed", "interrupted", "failed")
# What reports and tables read from a completed run's summary.json: a summary without one of them is corrupt.
SUMMARY_FIELDS = ("status", "method", "attack", "byzantine", "iterations", "final_accuracy", "best_accuracy",
                  "final_train_loss", "planned_iterations")


def atomic_path(path: Path) -> Path:
    """A temporary sibling of ``path`` with the same suffix (for writers that pick the format by suffix)."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it: readers see the old file or the new one."""
    path = Path(path)
    tmp = atomic_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a size limit, a read-only folder: no half-written file stays
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError.from_os(exc, path) from None


def atomic_savefig(fig: Any, path: Path, **kwargs: Any) -> Path:
    """``fig.savefig`` through a temporary file and a rename; a failed write leaves no partial file (WriteError)."""
    tmp = atomic_path(path)
    try:
        fig.savefig(tmp, **kwargs)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError.from_os(exc, path) from None
    return path


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files this process left in ``folder`` (a write that failed half-way)."""
    with contextlib.suppress(OSError):
        for tmp in folder.glob(f".*.tmp-{os.getpid()}*"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or "" off Linux."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[-1].split()[19] if ")" in stat else ""


def _marker_text() -> str:
    pid = os.getpid()
    return f"{pid} {_read('/proc/sys/kernel/random/boot_id') or '-'} {_start_time(pid) or '-'}\n"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _marker_alive(text: str) -> bool:
    """Whether the process a marker names still runs (the same process, not one that reused its id)."""
    words = text.split()
    pid = int(words[0])
    if pid == os.getpid() or not _alive(pid):
        return False
    boot, started = (words[1:3] + ["-", "-"])[:2]
    if boot != "-" and _read("/proc/sys/kernel/random/boot_id") not in ("", boot):
        return False  # written before a reboot
    return started in ("-", "") or _start_time(pid) in ("", started)


def check_folder(out: str | Path, flag: str = "--out") -> Path:
    """Refuse, with one line, a results folder that is a file, lies under a file, or cannot be created.

    Creates nothing; what cannot be created is found by walking up to the
    nearest existing ancestor and checking that it is a writable folder.
    """
    out = Path(out)
    if "\x00" in str(out) or not str(out).strip():
        raise ConfigError(f"{flag} {str(out)!r} is not a folder path")
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{flag} {out}: {parent} is a file, not a folder")
    existing = next((p for p in [out, *out.parents] if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {out}: cannot write there ({existing or out} is not writable)")
    return out


def run_state(folder: str | Path, iterations: int | None = None) -> str:
    """The state of a run folder: ``missing``, ``running``, ``killed``, ``corrupt``, ``completed``, ``interrupted`` or ``failed``.

    ``completed`` needs a parsable ``summary.json`` saying so and a
    ``metrics.csv`` whose last row reaches ``iterations`` (when not given: the
    iterations of the run's ``config.json``, else the summary's own count);
    anything else that claims to be finished is ``corrupt``. ``killed``: the
    marker of a process that no longer exists (SIGKILL, power loss, reboot).
    ``running``: the marker of a live process. A path that is not a folder is
    ``corrupt``. Never raises for what it finds in the folder.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        return "corrupt"
    marker = folder / MARKER
    if marker.exists():
        try:
            return "running" if _marker_alive(marker.read_text()) else "killed"
        except (ValueError, IndexError, OSError):
            return "killed"
    summary_path = folder / "summary.json"
    if not summary_path.exists():
        try:
            return "missing" if not folder.exists() or not any(folder.iterdir()) else "corrupt"
        except OSError:
            return "corrupt"
    try:
        summary = json.loads(summary_path.read_text())
        status = summary["status"]
    except (ValueError, KeyError, TypeError, OSError):
        return "corrupt"
    if status != "completed":
        return status if status in ("interrupted", "failed") else "corrupt"
    if not isinstance(summary, dict) or any(key not in summary for key in SUMMARY_FIELDS) or not _config_ok(folder):
        return "corrupt"  # reproduce and bench would fail reading it: they redo it instead
    target = iterations if iterations is not None else _planned(folder, summary)
    try:
        with open(folder / "metrics.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        last = int(float(rows[-1]["iteration"]))
        return "completed" if target is None or last >= int(target) else "corrupt"
    except (OSError, ValueError, KeyError, IndexError, TypeError, OverflowError, csv.Error):
        return "corrupt"


def _config_ok(folder: Path) -> bool:
    try:
        return isinstance(json.loads((folder / "config.json").read_text()), dict)
    except (OSError, ValueError):
        return False


def _planned(folder: Path, summary: Any) -> Any:
    """The iterations the run was meant to reach: its config.json's, else what its summary says it reached."""
    try:
        return int(json.loads((folder / "config.json").read_text())["iterations"])
    except (OSError, ValueError, KeyError, TypeError):
        return summary.get("iterations") if isinstance(summary, dict) else None


def claim_folder(out: Path, *, overwrite: bool = False, resume: bool = False) -> list[Path]:
    """Make ``out`` a run folder for this process, or raise a one-line :class:`ConfigError`.

    Refuses a path that is a file or lies under one, a folder that cannot be
    created, and a folder that already holds a run (another run's files would
    sit beside this one's) unless ``overwrite`` or ``resume`` (the
    checkpointed run continues there). Writes the marker and returns the old
    run's files, which the caller removes once its own run has started (so a
    run that fails before it starts leaves the old one as it was).
    """
    check_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    try:
        # Claims of one folder by several processes at once are serialised (an exclusive lock on the
        # folder itself), so the state checked below is the state the marker is written over.
        fcntl.flock(fd, fcntl.LOCK_EX)
        state = run_state(out)
        if state == "running":
            raise ConfigError(f"--out {out}: another byzrsa process is writing a run there; wait for it or choose another folder")
        stale: list[Path] = []
        if state != "missing" and not resume:
            if not overwrite:
                raise ConfigError(f"--out {out} already holds a run ({state}); add --overwrite to replace it, or choose another folder")
            stale = [out / name for name in RUN_FILES if name != MARKER and (out / name).exists()]
        try:
            if state == "killed":  # the dead process's marker: ours replaces it
                (out / MARKER).unlink(missing_ok=True)
            marker = os.open(out / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # created by us, or refused
            try:
                os.write(marker, _marker_text().encode())
            finally:
                os.close(marker)
        except FileExistsError:
            raise ConfigError(f"--out {out}: another byzrsa process is writing a run there; wait for it or choose another folder") from None
        except OSError as exc:
            with contextlib.suppress(OSError):
                (out / MARKER).unlink()
            raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    finally:
        os.close(fd)  # releases the lock
    return stale


def release_folder(out: Path, summary: dict[str, Any] | None) -> None:
    """Write the final ``summary.json`` atomically, then remove the marker (in that order).

    The marker and this process's temporary files go also when the summary
    cannot be written (a full disk): the :class:`WriteError` is raised after.
    """
    try:
        if summary is not None:
            atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    finally:
        remove_temporaries(out)
        with contextlib.suppress(OSError):
            (out / MARKER).unlink(missing_ok=True)


def utc_now() -> str:
    """The current time in UTC, ISO 8601 to the second (``2026-12-07T04:30:00Z``)."""
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _git_commit() -> str | None:
    """The commit of the checkout byzrsa runs from (with ``+dirty`` for uncommitted edits), or None outside one."""
    import subprocess

    import byzrsa

    source = Path(byzrsa.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, a slow disk: no commit, no error
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def _cpu_model() -> str:
    import platform

    for line in _read("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def provenance(device: str = "cpu") -> dict[str, Any]:
    """What produced a run, for its ``config.json`` and ``summary.json``.

    byzrsa's version, the git commit when byzrsa runs from a checkout (None
    otherwise), the Python and torch versions, the host's CPU model and, on a
    CUDA device, the GPU's name, and the start time (UTC). Nothing here can
    fail a run: what cannot be found is None.
    """
    import platform

    import torch

    import byzrsa

    gpu = None
    if device.startswith("cuda"):
        with contextlib.suppress(Exception):  # noqa: BLE001 - a name is a nicety, never a reason to fail
            gpu = torch.cuda.get_device_name(torch.device(device))
    return {
        "byzrsa": byzrsa.__version__,
        "commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_model(),
        "gpu": gpu,
        "started": utc_now(),
    }


_HELD: set[tuple[str, str]] = set()  # (lock file, folder) pairs this process holds


@contextlib.contextmanager
def exclusive(out: Path, lock: str, who: str) -> Iterator[None]:
    """Hold ``out/lock`` (an advisory ``flock``) so that two invocations never share one results folder.

    Re-entrant within one process (``bench`` holds its lock from its first line, its phases again). A second
    process is refused with one line naming ``who`` (e.g. "byzrsa bench"). Without ``fcntl`` (not POSIX)
    nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    key = (lock, str(out.resolve()))
    if key in _HELD:
        yield
        return
    check_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / lock, "a")
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"another {who} is running in {out}; wait for it or use another --out") from None
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)
