"""Aggregation rules on (m, d) float32 inputs: byzrsa against the peers, at stated accuracy.

Input: ``m`` rows, ``f = m // 10`` of them Byzantine (every entry 100, the
same-value attack), the others ``3 + N(0, 1)``; seeded, float32, CPU (or the
device asked for). Every rule's output is compared with a float64 reference
computed here, plainly:

* mean, median (the true median: mean of the two middle values for even m),
  trimmed mean: float64 sorts;
* Krum / multi-Krum: the rows chosen from float64 scores;
* geometric median: plain Weiszfeld in float64 (distances from differences,
  never the Gram identity) from the mean until the step is below
  ``1e-12 * s``; its objective ``F(z) = sum_i ||x_i - z||`` is the yardstick.
  For every geometric-median candidate we report the relative objective excess
  ``F(z) / F(z*) - 1`` and ``||z - z*|| / s`` (``s`` = median distance of the
  rows to the coordinate-wise median, byzrsa's scale), and for byzrsa its
  iteration count at ``tol = 1e-6``.

The error column is ``max_j |out_j - ref_j|`` (the honest rows' noise has std 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from byzrsa.aggregators import geometric_median_with_info, krum, mean, median, multi_krum, trimmed_mean
from peers import as_tensor, load_peers
from timing import Timing, measure

GEOMED_TOL = 1e-6


def make_input(m: int, d: int, device: str = "cpu", seed: int = 0) -> tuple[Tensor, int]:
    gen = torch.Generator().manual_seed(seed)
    f = m // 10
    x = 3.0 + torch.randn(m, d, generator=gen)
    x[m - f :] = 100.0
    return x.to(device=device, dtype=torch.float32), f


def byzrsa_rules(f: int) -> dict[str, Callable[[Tensor], Tensor]]:
    return {
        "mean": mean,
        "median": median,
        "trimmed-mean": lambda x: trimmed_mean(x, f),
        "geomed": lambda x: geometric_median_with_info(x, tol=GEOMED_TOL, max_iter=1000)[0],
        "krum": lambda x: krum(x, f),
        "multi-krum": lambda x: multi_krum(x, f),
    }


def _weiszfeld64(x: Tensor, scale: float, max_iter: int = 100_000) -> tuple[Tensor, int]:
    z = x.mean(dim=0)
    for it in range(1, max_iter + 1):
        dist = torch.linalg.vector_norm(x - z, dim=1).clamp_min(1e-300)
        w = 1.0 / dist
        new = (w @ x) / w.sum()
        step = float(torch.linalg.vector_norm(new - z))
        z = new
        if step <= 1e-12 * scale:
            return z, it
    return z, max_iter


def _krum_rows64(x: Tensor, f: int, k: int) -> list[int]:
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    d2.fill_diagonal_(math.inf)
    scores = d2.topk(x.shape[0] - f - 2, dim=1, largest=False).values.sum(dim=1)
    return sorted(range(x.shape[0]), key=lambda i: (float(scores[i]), i))[:k]


def references(x: Tensor, f: int) -> dict[str, Any]:
    """Float64 ground truth for every rule, and the geometric median's objective."""
    x64 = x.double().cpu()
    m = x64.shape[0]
    srt = x64.sort(dim=0).values
    med = (srt[(m - 1) // 2] + srt[m // 2]) / 2
    scale = float(torch.linalg.vector_norm(x64 - med, dim=1).median())
    gm, iters = _weiszfeld64(x64, scale)
    return {
        "mean": x64.mean(dim=0),
        "median": med,
        "trimmed-mean": srt[f : m - f].mean(dim=0),
        "krum": x64[_krum_rows64(x64, f, 1)].mean(dim=0),
        "multi-krum": x64[_krum_rows64(x64, f, m - f)].mean(dim=0),
        "geomed": gm,
        "geomed_iterations": iters,
        "scale": scale,
        "x64": x64,
    }


def _objective(x64: Tensor, z: Tensor) -> float:
    return float(torch.linalg.vector_norm(x64 - z, dim=1).sum())


def accuracy(rule: str, out: Any, ref: dict[str, Any]) -> dict[str, float]:
    z = as_tensor(out)
    key = "geomed" if rule.startswith("geomed") else rule
    row = {"max_error": float((z - ref[key]).abs().max())}
    if key == "geomed":
        best = _objective(ref["x64"], ref["geomed"])
        row["objective_excess"] = _objective(ref["x64"], z) / best - 1.0
        row["distance_rel"] = float(torch.linalg.vector_norm(z - ref["geomed"])) / ref["scale"]
    return row


def bench_shape(m: int, d: int, *, peers: bool, device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Times (median of interleaved rounds) and errors of every rule at one shape."""
    x, f = make_input(m, d, device)
    ref = references(x, f)
    ours = byzrsa_rules(f)
    _, iters = geometric_median_with_info(x, tol=GEOMED_TOL, max_iter=1000)
    cases: dict[str, Callable[[], Any]] = {f"byzrsa {k}": (lambda fn=fn: fn(x)) for k, fn in ours.items()}
    notes: dict[str, str] = {}
    skipped: dict[str, str] = {}
    if peers and device == "cpu":
        loaded = load_peers(m, f, geomed_iters=iters, geomed_tol=GEOMED_TOL * ref["scale"], big=m * d >= 10**8)
        skipped = loaded["skipped"]
        for peer, entry in loaded["peers"].items():
            notes[peer] = entry["note"]
            for k, fn in entry["rules"].items():
                cases[f"{peer} {k}"] = lambda fn=fn: fn(x)
    sync = torch.cuda.synchronize if device == "cuda" else None
    rows: dict[str, Any] = {}
    if m * d >= 10**8:
        # One call of a slow peer takes 10 s to minutes here: one timed call per case,
        # whose output is also the one checked.
        for name, fn in cases.items():
            (sync or (lambda: None))()
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            (sync or (lambda: None))()
            t = Timing(time.perf_counter() - w0, time.process_time() - c0, time.perf_counter() - w0, 1, 1)
            rows[name] = {**t.to_dict(), **accuracy(name.split(" ", 1)[1], out, ref)}
            del out
    else:
        rounds, calls = (3, 5) if quick else (5, 10)
        times = measure(cases, rounds=rounds, calls=calls, warmup=1, sync=sync, target=0.3 if quick else 1.0)
        for name, fn in cases.items():
            rows[name] = {**times[name].to_dict(), **accuracy(name.split(" ", 1)[1], fn(), ref)}
    rows["byzrsa geomed"]["iterations"] = iters
    return {
        "m": m, "d": d, "f": f, "device": device, "rows": rows, "peer_notes": notes, "skipped": skipped,
        "geomed_reference_iterations": ref["geomed_iterations"], "geomed_scale": ref["scale"],
    }
