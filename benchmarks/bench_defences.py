"""Today's defences on (m, d) float32 inputs: byzrsa against the peers that have them, at stated accuracy.

    python benchmarks/bench_defences.py [--quick] [--no-peers] [--threads N] [--out benchmarks/results]

Input: the same as ``bench_aggregators.py`` (``m`` rows, ``f = m // 10`` of them
Byzantine with every entry 100, the others ``3 + N(0, 1)``; seeded, float32, CPU).
Defences and settings (the same for every library):

* cclip: ``tau = 10``, ``L = 1`` and ``L = 3``, started at 0 (``previous = 0``;
  ByzFL's and ByzPy's first call starts at 0 too);
* bulyan (``f``), signsgd: no installable peer has them (ByzFL 0.0.11 and ByzPy
  0.1.4 do not); signsgd is timed against NumPy's ``sign(sum(sign(x)))`` as a floor;
* bucketing ``s = 2`` (ByzPy is handed byzrsa's permutation, ByzFL draws its own,
  so for ByzFL only the mean of the bucket means is compared), nnm (``f``),
  arc (``f``), clip with ``tau`` = the median row norm (half the rows clipped).

ByzFL's ARC and Clipping overwrite their input, so they are timed on a fresh
``x.clone()`` per call, and the row ``clone`` gives that copy's own time. byzrsa's
pre-aggregators return a new (n', d) tensor, whose allocation is part of its time.

Every output is compared with a float64 reference computed here from the
definition (full-size float64 arrays, differences never the Gram identity except
for the neighbour selections, which recentre first). The error column is
``max |out - ref| / max |ref|``. Times are medians of interleaved rounds
(``timing.py``), wall and process CPU; the machine is shared, so read the
ratios of one run rather than the absolute times.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_aggregators import make_input  # noqa: E402
from peers import _byzfl_aggregators, _version, as_tensor  # noqa: E402
from timing import fmt_time, machine, measure  # noqa: E402

from byzrsa.aggregators import bulyan, centered_clipping, sign_majority  # noqa: E402
from byzrsa.preaggregators import (  # noqa: E402
    adaptive_robust_clipping,
    arc_count,
    bucketing,
    nearest_neighbour_mixing,
    norm_clipping,
)

SHAPES = [(20, 7850), (100, 100_000), (100, 1_000_000)]
TAU = 10.0
SEED = 0


# ----------------------------------------------------------------------------- float64 references


def ref_cclip(x64: Tensor, tau: float, iters: int) -> Tensor:
    v = torch.zeros(x64.shape[1], dtype=torch.float64)
    for _ in range(iters):
        diff = x64 - v
        r = torch.linalg.vector_norm(diff, dim=1)
        c = torch.where(r > tau, tau / r, torch.ones_like(r))
        v = v + (c @ diff) / x64.shape[0]
    return v


def _exact_sq_dists(x64: Tensor) -> Tensor:
    y = x64 - x64.mean(dim=0)  # float64 and centred: the identity's error is ~1e-16 of the spread
    sq = (y * y).sum(dim=1)
    return (sq[:, None] + sq[None, :] - 2 * (y @ y.T)).clamp_min(0)


def ref_bulyan(x64: Tensor, f: int) -> Tensor:
    m = x64.shape[0]
    theta, beta = m - 2 * f, m - 4 * f
    d2 = _exact_sq_dists(x64)
    remaining, chosen = list(range(m)), []
    while len(chosen) < theta:
        k = max(len(remaining) - f - 2, 1)
        sub = d2[remaining][:, remaining].clone().fill_diagonal_(math.inf)
        scores = sub.sort(dim=1).values[:, :k].sum(dim=1).tolist()
        best = min(range(len(remaining)), key=lambda r: (scores[r], r))
        chosen.append(remaining.pop(best))
    s = x64[chosen].sort(dim=0).values
    mu = s[theta // 2] if theta % 2 else (s[theta // 2 - 1] + s[theta // 2]) / 2
    # stable sort by |v - mu| of the ascending values: ties keep the smaller value first
    order = (s - mu).abs().sort(dim=0, stable=True).indices[:beta]
    return s.gather(0, order).mean(dim=0)


def ref_nnm(x64: Tensor, f: int) -> Tensor:
    m = x64.shape[0]
    d2 = _exact_sq_dists(x64).fill_diagonal_(-1.0)  # itself first
    order = torch.stack([torch.tensor(sorted(range(m), key=lambda j: (float(d2[i, j]), j))) for i in range(m)])
    w = torch.zeros(m, m, dtype=torch.float64).scatter_(1, order[:, : m - f], 1.0 / (m - f))
    return w @ x64


def ref_clip(x64: Tensor, tau: float) -> Tensor:
    r = torch.linalg.vector_norm(x64, dim=1)
    return x64 * torch.where(r > tau, tau / r, torch.ones_like(r))[:, None]


def ref_arc(x64: Tensor, f: int) -> Tensor:
    k = arc_count(x64.shape[0], f)
    c = float(torch.linalg.vector_norm(x64, dim=1).sort(descending=True).values[k])
    return ref_clip(x64, c)


def ref_bucketing(x64: Tensor, perm: Tensor, s: int) -> Tensor:
    return torch.stack([x64[perm[b : b + s]].mean(dim=0) for b in range(0, x64.shape[0], s)])


def ref_sign(x64: Tensor) -> Tensor:
    return torch.sign(torch.sign(x64).sum(dim=0))


# ----------------------------------------------------------------------------- cases


def _stack(out: Any) -> Tensor:
    if isinstance(out, (list, tuple)):
        return torch.stack([as_tensor(o) for o in out])
    return as_tensor(out)


Cases = dict[str, dict[str, Callable[[], Any]]]


def build(x: Tensor, f: int, peers: bool) -> tuple[Cases, dict[str, str], dict[str, Any]]:
    """``{defence: {library: call}}``, notes, and the settings the references need."""
    m, d = x.shape
    zero = torch.zeros(d)
    tau_clip = float(torch.linalg.vector_norm(x.double(), dim=1).median())
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(SEED))
    settings = {"tau_clip": tau_clip, "perm": perm}
    cases: dict[str, dict[str, Callable[[], Any]]] = {
        "cclip L=1": {"byzrsa": lambda: centered_clipping(x, TAU, 1, previous=zero)},
        "cclip L=3": {"byzrsa": lambda: centered_clipping(x, TAU, 3, previous=zero)},
        "bulyan": {"byzrsa": lambda: bulyan(x, f)},
        "signsgd": {
            "byzrsa": lambda: sign_majority(x),
            "numpy": lambda: np.sign(np.sign(x.numpy()).sum(axis=0)),
        },
        "bucketing s=2": {"byzrsa": lambda: bucketing(x, f, torch.Generator().manual_seed(SEED), s=2)},
        "nnm": {"byzrsa": lambda: nearest_neighbour_mixing(x, f)},
        "arc": {"byzrsa": lambda: adaptive_robust_clipping(x, f)},
        "clip": {"byzrsa": lambda: norm_clipping(x, f, None, tau=tau_clip)},
        "clone": {"torch": lambda: x.clone()},
    }
    notes: dict[str, str] = {}
    if not peers:
        return cases, notes, settings
    try:
        agg, how = _byzfl_aggregators()
        from byzfl.aggregators import preaggregators as byzfl_pre

        notes["byzfl"] = f"byzfl {_version('byzfl')} via {how}; torch tensors in"
        # CenteredClipping keeps its centre between calls: a fresh instance starts at 0 each time.
        cases["cclip L=1"]["byzfl"] = lambda: agg.CenteredClipping(L=1, tau=TAU)(x)
        cases["cclip L=3"]["byzfl"] = lambda: agg.CenteredClipping(L=3, tau=TAU)(x)
        cases["bucketing s=2"]["byzfl"] = lambda: byzfl_pre.Bucketing(s=2)(x)
        if m * (m - f) * d * 4 <= 8e9:  # it gathers an (m, m - f, d) tensor: 36 GB at (100, 1e6)
            cases["nnm"]["byzfl"] = lambda: byzfl_pre.NNM(f=f)(x)
        else:
            size = m * (m - f) * d * 4 / 1e9
            notes["byzfl nnm"] = f"left out: x[indices] is an ({m}, {m - f}, {d}) tensor ({size:.0f} GB)"
        cases["arc"]["byzfl"] = lambda: byzfl_pre.ARC(f=f)(x.clone())
        cases["clip"]["byzfl"] = lambda: byzfl_pre.Clipping(c=tau_clip)(x.clone())
    except Exception as err:  # noqa: BLE001 - not installed or not importable: skip, saying why
        notes["byzfl"] = f"skipped: {type(err).__name__}: {err}"
    try:
        from byzpy.aggregators.norm_wise.center_clipping import CenteredClipping
        from byzpy.pre_aggregators.arc import ARC
        from byzpy.pre_aggregators.bucketing import Bucketing
        from byzpy.pre_aggregators.clipping import Clipping
        from byzpy.pre_aggregators.nnm import NearestNeighborMixing

        notes["byzpy"] = f"byzpy {_version('byzpy')}; a list of row tensors in (its documented input)"
        rows = list(x)
        cases["cclip L=1"]["byzpy"] = lambda: CenteredClipping(c_tau=TAU, M=1, init="zero").aggregate(rows)
        cases["cclip L=3"]["byzpy"] = lambda: CenteredClipping(c_tau=TAU, M=3, init="zero").aggregate(rows)
        cases["bucketing s=2"]["byzpy"] = lambda: Bucketing(2, perm=perm.tolist()).pre_aggregate(rows)
        cases["nnm"]["byzpy"] = lambda: NearestNeighborMixing(f=f).pre_aggregate(rows)
        cases["arc"]["byzpy"] = lambda: ARC(f=f).pre_aggregate(rows)
        cases["clip"]["byzpy"] = lambda: Clipping(threshold=tau_clip).pre_aggregate(rows)
    except Exception as err:  # noqa: BLE001
        notes["byzpy"] = f"skipped: {type(err).__name__}: {err}"
    return cases, notes, settings


def references(x: Tensor, f: int, settings: dict[str, Any]) -> dict[str, Tensor]:
    x64 = x.double()
    return {
        "cclip L=1": ref_cclip(x64, TAU, 1),
        "cclip L=3": ref_cclip(x64, TAU, 3),
        "bulyan": ref_bulyan(x64, f),
        "signsgd": ref_sign(x64),
        "bucketing s=2": ref_bucketing(x64, settings["perm"], 2),
        "nnm": ref_nnm(x64, f),
        "arc": ref_arc(x64, f),
        "clip": ref_clip(x64, settings["tau_clip"]),
        "clone": x64,
    }


def error(defence: str, library: str, out: Any, ref: Tensor, x: Tensor) -> tuple[float, str]:
    z = _stack(out)
    if defence.startswith("bucketing") and library == "byzfl":
        # its own permutation: compare what every permutation shares, the mean of the bucket means (s | m)
        z, ref, what = z.mean(dim=0), x.double().mean(dim=0), "mean of the bucket means"
    else:
        what = ""
    return float((z - ref).abs().max() / ref.abs().max().clamp_min(1e-300)), what


def bench_shape(m: int, d: int, *, peers: bool, quick: bool) -> dict[str, Any]:
    x, f = make_input(m, d)
    cases, notes, settings = build(x, f, peers)
    t0 = time.perf_counter()
    refs = references(x, f, settings)
    ref_time = time.perf_counter() - t0
    flat = {f"{lib} {defence}": fn for defence, libs in cases.items() for lib, fn in libs.items()}
    big = m * d >= 10**8
    rounds, calls = (3, 1) if big else ((3, 5) if quick else (5, 10))
    times = measure(flat, rounds=rounds, calls=calls, warmup=1, target=None if big else (0.3 if quick else 1.0))
    rows: dict[str, Any] = {}
    for defence, libs in cases.items():
        for lib, fn in libs.items():
            err, what = error(defence, lib, fn(), refs[defence], x)
            rows[f"{lib} {defence}"] = {**times[f"{lib} {defence}"].to_dict(), "rel_error": err, "compared": what}
    return {"m": m, "d": d, "f": f, "rows": rows, "notes": notes, "reference_seconds": ref_time,
            "tau_clip": settings["tau_clip"], "arc_k": arc_count(m, f)}


def markdown(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    out = ["# Defences: byzrsa against ByzFL and ByzPy (CPU, float32)\n",
           f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
           f"load average {info.get('load_average')}. A shared machine: compare ratios within one run.\n"]
    for res in results:
        out.append(f"## (m, d) = ({res['m']}, {res['d']:_}), f = {res['f']}, ARC k = {res['arc_k']}, "
                   f"clip tau = {res['tau_clip']:.4g}\n")
        out.append("| defence | library | wall | cpu | rel. error | fastest peer / byzrsa |")
        out.append("|---|---|---|---|---|---|")
        by_defence: dict[str, dict[str, Any]] = {}
        for name, r in res["rows"].items():
            lib, defence = name.split(" ", 1)
            by_defence.setdefault(defence, {})[lib] = r
        for defence, libs in by_defence.items():
            peer_walls = [r["wall"] for lib, r in libs.items() if lib not in ("byzrsa", "numpy", "torch")]
            for lib, r in libs.items():
                ratio = f"{min(peer_walls) / r['wall']:.2f}x" if lib == "byzrsa" and peer_walls else ""
                err = f"{r['rel_error']:.1e}" + (f" ({r['compared']})" if r["compared"] else "")
                out.append(f"| {defence} | {lib} | {fmt_time(r['wall'])} | {fmt_time(r['cpu'])} | {err} | {ratio} |")
        for key, note in res["notes"].items():
            out.append(f"\n- {key}: {note}")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first two shapes, fewer rounds")
    parser.add_argument("--no-peers", action="store_true", help="byzrsa only")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    results = []
    for m, d in SHAPES[:2] if args.quick else SHAPES:
        print(f"(m, d) = ({m}, {d}) ...", file=sys.stderr, flush=True)
        results.append(bench_shape(m, d, peers=not args.no_peers, quick=args.quick))
    text = markdown(results, info)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"defences-{stamp}.json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    (args.out / f"defences-{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
