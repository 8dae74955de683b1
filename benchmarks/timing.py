"""Timing helpers shared by the benchmarks: interleaved rounds, medians, machine facts.

The machines these run on are often shared, so one number from one loop is
noise. Every comparison here runs its candidates *interleaved* (A, B, C, A, B,
C, ...) for several rounds and reports the median per call, in wall-clock time
and in CPU time of the process (``time.process_time``, every thread together).
With one torch thread the CPU time is what the step itself costs even when
other processes share the cores; the wall time is what a user waits. Ratios
are taken between candidates of the same run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Timing", "measure", "machine", "fmt_time"]


@dataclass
class Timing:
    wall: float  # median seconds per call
    cpu: float  # median CPU seconds per call (all threads of the process)
    wall_min: float
    rounds: int
    calls: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    cases: dict[str, Callable[[], Any]],
    *,
    rounds: int = 7,
    calls: int = 20,
    warmup: int = 2,
    sync: Callable[[], None] | None = None,
    budget: float | None = None,
    setup: dict[str, Callable[[], Any]] | None = None,
    target: float | None = None,
) -> dict[str, Timing]:
    """Time each case ``calls`` times per round, rounds interleaved; medians per call.

    ``sync`` runs before each clock read (``torch.cuda.synchronize`` on a GPU).
    ``budget`` (seconds) stops adding rounds once spent (at least 3 rounds run).
    ``setup[name]`` runs, untimed, before each round of that case (e.g. set the thread count).
    ``target`` (seconds): fewer calls per round (at least 1) for a case whose warm-up call
    took longer than ``target / calls``, so that slow peers do not take minutes.
    """
    setup = setup or {}
    sync = sync or (lambda: None)
    per_case: dict[str, int] = {}
    for name, fn in cases.items():
        if name in setup:
            setup[name]()
        sync()
        w0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        sync()
        each = (time.perf_counter() - w0) / max(warmup, 1)
        per_case[name] = calls if target is None else max(1, min(calls, int(target / max(each, 1e-9))))
    walls: dict[str, list[float]] = {k: [] for k in cases}
    cpus: dict[str, list[float]] = {k: [] for k in cases}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in cases.items():
            if name in setup:
                setup[name]()
            sync()
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(per_case[name]):
                fn()
            sync()
            walls[name].append((time.perf_counter() - w0) / per_case[name])
            cpus[name].append((time.process_time() - c0) / per_case[name])
        if budget is not None and r >= 2 and time.perf_counter() - start > budget:
            break
    return {
        k: Timing(statistics.median(walls[k]), statistics.median(cpus[k]), min(walls[k]), len(walls[k]), per_case[k])
        for k in cases
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fmt_time(seconds: float) -> str:
    """Seconds as a short human string (us / ms / s)."""
    if seconds != seconds:  # NaN
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"
