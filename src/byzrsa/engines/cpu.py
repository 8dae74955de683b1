"""How a CPU process computes: torch and BLAS threads, memory reuse, subnormals (every engine's process settings).

Pure process state, no knowledge of runs: the simulator enters these around a
run, the distributed engine's and Flower's processes set them once.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["blas_threads", "default_threads", "pin_default_threads", "reuse_freed_memory", "subnormals_flushed"]


_DEFAULT_THREADS: int | None = None


def _busy_cores(samples: int = 9, interval: float = 0.005) -> float:
    """Cores the other processes keep busy now: the median over ~40 ms of the runnable count minus this one.

    Not the load average: it trails the machine by minutes, so right after a
    job ends a quiet machine would still read as loaded (measured: 1.7 a minute
    after a reproduction, when 2 threads were 1.5x faster). The median of a
    few samples ignores a process that runs for an instant.
    """
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(interval)
            with open("/proc/loadavg") as handle:  # field 4: runnable / all, this process included
                counts.append(float(handle.read().split()[3].split("/")[0]) - 1.0)
    except (OSError, IndexError, ValueError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    return max(0.0, sorted(counts)[len(counts) // 2])


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pin_default_threads(threads: int) -> None:
    """Make :func:`default_threads` answer ``threads`` in this process (a pool worker of a parallel batch).

    Processes started together cannot see each other's load yet: two of them on
    two idle cores would each take both cores, and oversubscribed OpenMP threads
    are up to 12x slower (docs/performance.md, Threads).
    """
    global _DEFAULT_THREADS
    _DEFAULT_THREADS = max(1, int(threads))


def default_threads(cores: int | None = None, busy: float | None = None) -> int:
    """Torch threads for a CPU simulation when the config leaves ``threads`` unset.

    ``round(cores - busy)`` clamped to ``[1, cores]``: the idle cores, where
    ``busy`` is what the other processes keep busy (:func:`_busy_cores`). With
    both arguments None the answer is computed once per process and kept, so
    that every run of a process (a test session, a reproduction's worker) uses
    the same count. Measured in docs/performance.md ("Threads") on a quiet and
    on a loaded machine.
    """
    global _DEFAULT_THREADS
    if cores is None and busy is None and _DEFAULT_THREADS is not None:
        return _DEFAULT_THREADS
    n = cores if cores is not None else _cores()
    load = busy if busy is not None else _busy_cores()
    threads = max(1, min(n, int(math.floor(n - load + 0.5))))
    if cores is None and busy is None:
        _DEFAULT_THREADS = threads
    return threads


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Within the block, freed memory stays with the process for reuse (glibc only; elsewhere nothing).

    glibc serves large blocks (above 128 KB to 32 MB, adaptively) with fresh
    ``mmap`` pages and returns them on ``free``; every step of a large run then
    page-faults its ``(m, d)`` temporaries in again, which on this VM costs
    ~0.25 ms per MB (m = 1000 softmax: the minibatch gather 62 -> 21 us and the
    RSA step 142 -> 92 us per regular worker). Here ``mallopt`` turns off mmap
    for large blocks and heap trimming; afterwards the defaults are restored and
    the heap is trimmed. The peak resident memory is unchanged (the same blocks
    are live at the peak); memory freed late in the block is returned at its end.
    """
    global _REUSING
    libc = _glibc()
    if libc is None:
        yield
        return
    if not _REUSING:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    _REUSING += 1
    try:
        yield
    finally:
        _REUSING -= 1
        if not _REUSING:  # the last of nested (or interleaved) runs
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)


_REUSING = 0

# glibc's mallopt parameters and their defaults (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # musl and other libcs
        return None


@contextlib.contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Within the block, float subnormals on the CPU are read and written as zero (FTZ/DAZ); restored after.

    Softmax gradients on raw pixels hold entries below 1.2e-38 (probabilities that
    underflow), and products of them are subnormal too: x86 computes those ~10x
    slower, which made Krum's Gram product 1.1 ms instead of 0.13 ms at (20, 7850)
    and a Krum run 2.4x slower (docs/performance.md). Every engine process that
    computes (the simulator, the dist master and workers, Flower's apps) runs in
    this mode, so the engines keep giving the same numbers; values of magnitude
    1e-38 (float32) or 2e-308 (float64) and below become 0.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Within the block, NumPy's BLAS (:mod:`byzrsa.blas`) runs ``threads`` threads, as torch does; restored after.

    OpenBLAS starts one thread per core for a product above ~260 000
    multiply-adds (the baselines' shared softmax forward at m = 21); on a loaded
    machine those threads wait for busy cores (measured 1.43 ms against 0.27 ms
    with one thread). Without threadpoolctl (a dependency of scikit-learn)
    nothing is changed.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        yield
        return
    with threadpool_limits(limits=max(1, int(threads)), user_api="blas"):
        yield
