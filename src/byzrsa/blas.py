"""Batched matrix products on the CPU through the faster of the two BLAS libraries at hand.

torch's CPU wheels link Intel's MKL, which on other vendors' processors runs a
slower code path; NumPy's wheels link OpenBLAS, which picks its kernels by the
processor it finds. On the AMD EPYC these benchmarks ran on, the softmax
gradient's per-worker products (``(C, n + 1) @ (n + 1, b)`` and
``(C, b) @ (b, n + 1)``, C = 10, b = 32, n + 1 = 785) took 1.6-1.7x longer
through torch's ``bmm`` than through ``numpy.matmul`` (docs/performance.md).

:func:`bmm` is ``torch.bmm`` except on the CPU where :func:`numpy_products`
holds: torch's BLAS is MKL, the processor is not Intel's and torch runs one
thread, or the environment variable ``BYZRSA_BLAS`` is ``numpy`` (``torch``
forces torch's). With more torch threads the products stay in torch: NumPy's
OpenBLAS threads and torch's OpenMP threads wait for each other's cores (on 2
quiet cores at m = 20: 11 ms a step against 0.65 ms with torch alone, 0.8 ms
with one thread through NumPy; docs/performance.md, "Threads"). The choice
depends only on the machine and the thread count, so a run with a given
``threads`` is deterministic on one machine; the two libraries' results differ
in the last bits. NumPy's BLAS threads are set with the torch threads by the
engines (:func:`byzrsa.engines.cpu.blas_threads`).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import Tensor

from byzrsa.errors import ConfigError

__all__ = ["BLAS_ENV", "bmm", "library", "numpy_products"]

BLAS_ENV = "BYZRSA_BLAS"


def _vendor() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=1)
def library() -> str:
    """``numpy`` or ``torch`` when ``BYZRSA_BLAS`` forces one, else ``auto`` where NumPy's BLAS is the faster
    one-thread library (torch's is MKL on another vendor's processor), else ``torch``; decided once per process."""
    forced = os.environ.get(BLAS_ENV, "").strip().lower()
    if forced not in ("", "torch", "numpy"):
        raise ConfigError(f"{BLAS_ENV} must be 'torch' or 'numpy', got {forced!r}")
    if forced:
        return forced
    mkl = "mkl" in torch.__config__.show().lower()
    return "auto" if mkl and _vendor() not in ("", "GenuineIntel") else "torch"


def numpy_products() -> bool:
    """Whether CPU products go through NumPy's BLAS now (see the module docstring)."""
    choice = library()
    return choice == "numpy" or (choice == "auto" and torch.get_num_threads() == 1)


def _blasable(t: Tensor) -> bool:
    # One unit stride per matrix: BLAS reads it as it is (else NumPy falls back to a slow loop).
    return t.stride(-1) == 1 or t.stride(-2) == 1


def bmm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a @ b`` for ``a (k, p, q)``, ``b (k, q, r)`` -> ``(k, p, r)``, into ``out`` if given (see the module docstring)."""
    if (a.device.type != "cpu" or a.requires_grad or b.requires_grad or a.dtype not in (torch.float32, torch.float64)
            or not numpy_products()):
        return torch.bmm(a, b, out=out)
    a = a if _blasable(a) else a.contiguous()
    b = b if _blasable(b) else b.contiguous()
    if out is None:
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    np.matmul(a.numpy(), b.numpy(), out=out.numpy())
    return out
