"""How many rows of an ``(m, d)`` state to process at once so that a block stays in the cache.

A step that makes several elementwise passes over the workers' rows (gradient,
penalty, update, the master's pull) reads each row from main memory once per
pass when the passes run over all m rows; run over a block of rows that fits
the cache, every pass after the first reads the block from the cache. The
engines (the simulator's master/worker and decentralized steps) size their
blocks here, so that one budget governs them all.

The budget is the bytes one block may occupy:

1. ``budget`` given to :func:`block_rows` (a config field passes it here);
2. else the environment variable ``BYZRSA_BLOCK_BYTES`` (an integer, or with a
   ``K``/``M``/``G`` suffix: ``512K``, ``2M``);
3. else one core's share of the cache read from
   ``/sys/devices/system/cpu/cpu0/cache`` (:func:`cache_bytes`), or 1 MiB
   where the file system does not say.

Dependency-free (no torch): the decentralized simulator and the estimators
import it too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

from byzrsa.errors import ConfigError

__all__ = ["BLOCK_BYTES_ENV", "block_rows", "cache_bytes", "row_blocks"]

BLOCK_BYTES_ENV = "BYZRSA_BLOCK_BYTES"
_FALLBACK = 1 << 20
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _parse_bytes(text: str, what: str) -> int:
    s = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = s[-1:] if s[-1:] in ("K", "M", "G") else ""
    try:
        value = int(s[: len(s) - len(unit)]) * _SUFFIX[unit]
    except ValueError:
        raise ConfigError(f"{what} must be a byte count such as 1048576, 512K or 2M, got {text!r}") from None
    if value < 1:
        raise ConfigError(f"{what} must be at least 1 byte, got {text!r}")
    return value


@functools.lru_cache(maxsize=1)
def cache_bytes() -> int:
    """One core's share of the cache, in bytes (read once per process); 1 MiB where it cannot be read.

    The larger of the per-core cache (the largest data or unified level
    private to CPU 0, L2 on most x86 parts) and the last level divided by the
    CPUs that share it. Why not the L2 alone: a block of a few rows pays the
    fixed cost of every torch call in the step (5-10 us each on a loaded
    machine, ~20 calls per block), and blocks sized to a 1 MiB L2 (5 softmax
    workers) were measured slower than blocks of 10 to all workers, which
    were alike (docs/performance.md, "The blocked step").
    """
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        caches = []
        for index in sorted(root.glob("index*")):
            if (index / "type").read_text().strip() == "Instruction":
                continue
            size = _parse_bytes((index / "size").read_text(), "cache size")
            sharing = len(_cpu_list((index / "shared_cpu_list").read_text()))
            caches.append((int((index / "level").read_text()), size, sharing))
    except (OSError, ValueError, ConfigError):
        return _FALLBACK
    if not caches:
        return _FALLBACK
    private = [size for _, size, sharing in caches if sharing <= 1]
    last = max(caches)
    return max([*private, last[1] // max(1, last[2])])


def _cpu_list(text: str) -> list[int]:
    """The CPUs of a sysfs list such as ``0-3,8``."""
    cpus: list[int] = []
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def block_rows(row_bytes: int, budget: int | None = None) -> int:
    """Rows of ``row_bytes`` bytes that fit a block of ``budget`` bytes; at least 1.

    Parameters
    ----------
    row_bytes:
        Bytes of every tensor a block keeps live per row (e.g. ``d * itemsize``
        times the number of ``(rows, d)`` tensors the block's passes touch).
    budget:
        Bytes one block may occupy; None reads ``BYZRSA_BLOCK_BYTES``, else
        the per-core cache (:func:`cache_bytes`).

    Returns
    -------
    int
        ``max(1, budget // row_bytes)``.
    """
    if budget is None:
        env = os.environ.get(BLOCK_BYTES_ENV)
        budget = _parse_bytes(env, BLOCK_BYTES_ENV) if env else cache_bytes()
    elif budget < 1:
        raise ConfigError(f"the block budget must be at least 1 byte, got {budget}")
    return max(1, int(budget) // max(1, int(row_bytes)))


def row_blocks(n: int, rows: int) -> Iterator[slice]:
    """Consecutive slices ``[0, rows), [rows, 2 rows), ...`` covering ``range(n)``; the last may be shorter."""
    rows = max(1, int(rows))
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))
