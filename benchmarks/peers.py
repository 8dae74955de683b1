"""The peer libraries' aggregation rules, called through their documented APIs (never copied).

Peers: ByzFL (``pip install byzfl``: ``byzfl.Median()(x)``, ...), ByzPy
(``pip install byzpy``: ``CoordinateWiseMedian().aggregate(list_of_rows)``, ...),
and NumPy's mean and median as the floor. A peer that is not installed, or does
not import, is skipped with the reason recorded.

ByzFL's top-level ``import byzfl`` also imports its training framework, which
needs torchvision; PyPI has no torchvision build for a CPU-only torch 2.13, so
when that import fails we load ``byzfl.aggregators`` (the rules themselves, which
need only NumPy and torch) without running ``byzfl/__init__.py``. Install peers
with ``pip install --no-deps byzfl byzpy`` so that pip does not replace torch.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_peers"]

Rule = Callable[[Tensor], Any]


@functools.lru_cache(maxsize=None)  # the second call would find the bare package stand-in below
def _byzfl_aggregators() -> tuple[Any, str]:
    try:
        import byzfl  # noqa: F401

        return importlib.import_module("byzfl"), "import byzfl"
    except ModuleNotFoundError as err:
        if err.name != "torchvision":
            raise
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("byzfl")
    for name in [m for m in sys.modules if m == "byzfl" or m.startswith("byzfl.")]:
        del sys.modules[name]  # the half-imported package from the failed attempt
    package = types.ModuleType("byzfl")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = package
    return importlib.import_module("byzfl.aggregators"), "byzfl.aggregators (byzfl/__init__ needs torchvision)"


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def load_peers(
    m: int, f: int, *, geomed_iters: int | None = None, geomed_tol: float | None = None, big: bool = False
) -> dict[str, Any]:
    """``{peer: {"rules": {rule: fn(x) -> output}, "note": str}}`` and ``{peer: reason}`` for skipped ones.

    ``geomed_iters``: also run ByzFL's geometric median for that many iterations
    (its default is 3). ``geomed_tol``: also run ByzPy's with that absolute
    tolerance (its default is 1e-6 absolute, at most 256 iterations). ``big``: leave out
    ByzPy's default geometric median, whose absolute 1e-6 is 1e-9 of the data scale at
    (100, 1e6) and ran 414 s there (full run of 2026-11-28).
    """
    peers: dict[str, Any] = {}
    skipped: dict[str, str] = {}

    peers["numpy"] = {
        "note": f"numpy {np.__version__} (the floor: np.mean / np.median over axis 0, float32 in)",
        "rules": {
            "mean": lambda x: np.mean(x.numpy(), axis=0),
            "median": lambda x: np.median(x.numpy(), axis=0),
        },
    }

    try:
        agg, how = _byzfl_aggregators()
        rules: dict[str, Rule] = {
            "mean": agg.Average(),
            "median": agg.Median(),
            "trimmed-mean": agg.TrMean(f=f),
            "geomed (T=3, default)": agg.GeometricMedian(),
            "krum": agg.Krum(f=f),
            "multi-krum": agg.MultiKrum(f=f),
        }
        if geomed_iters:
            rules[f"geomed (T={geomed_iters})"] = agg.GeometricMedian(T=int(geomed_iters))
        peers["byzfl"] = {"note": f"byzfl {_version('byzfl')} via {how}; torch tensors in", "rules": rules}
    except Exception as err:  # noqa: BLE001 - any failure to import means: skip this peer
        skipped["byzfl"] = f"{type(err).__name__}: {err}"

    try:
        from byzpy.aggregators.coordinate_wise import CoordinateWiseMedian, CoordinateWiseTrimmedMean
        from byzpy.aggregators.geometric_wise import GeometricMedian, Krum, MultiKrum

        def rows(rule: Any) -> Rule:
            return lambda x: rule.aggregate(list(x))  # its documented input: a sequence of gradients

        rules = {
            "median": rows(CoordinateWiseMedian()),
            "trimmed-mean": rows(CoordinateWiseTrimmedMean(f=f)),
            "krum": rows(Krum(f=f)),
            "multi-krum": rows(MultiKrum(f=f, q=m - f)),
        }
        if not big:
            rules["geomed (tol=1e-6 abs, default)"] = rows(GeometricMedian())
        if geomed_tol:
            rules[f"geomed (tol={geomed_tol:.2g} abs)"] = rows(GeometricMedian(tol=geomed_tol, max_iter=1000))
        peers["byzpy"] = {"note": f"byzpy {_version('byzpy')}; a list of row tensors in", "rules": rules}
    except Exception as err:  # noqa: BLE001
        skipped["byzpy"] = f"{type(err).__name__}: {err}"
    return {"peers": peers, "skipped": skipped}


def as_tensor(out: Any) -> Tensor:
    """A peer's output as a float64 tensor (they return NumPy arrays or tensors)."""
    if isinstance(out, Tensor):
        return out.detach().double().cpu()
    return torch.from_numpy(np.asarray(out, dtype=np.float64))
