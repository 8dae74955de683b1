"""``--device cuda``: the tables on a GPU, plus the memory-bound steps at a ResNet-18 size against the peak.

Without a CUDA device every function here returns ``{"skipped": reason}`` and
the report says so; nothing fails. With one:

* the aggregation-rule table at (20, 7850), (100, 100_000), (100, 1_000_000)
  (byzrsa only; the peers are CPU libraries) and the simulator tables;
* at (m, d) = (100, 11_200_000) float32 (a ResNet-18-sized model): the RSA
  master step (l1) and every rule, with the achieved memory bandwidth
  ``bytes / time``. The bytes are the minimum a rule must move: ``m d`` floats
  read once (the RSA master's sign-sum, the mean, Krum's Gram matrix, one
  Weiszfeld iteration per iteration); the peak is the device's theoretical
  bandwidth from its memory clock and bus width when torch reports them, and
  the bandwidth of a plain device-to-device copy either way.
"""

from __future__ import annotations

from typing import Any

import torch

from byzrsa.aggregators import geometric_median_with_info, krum, mean, median, multi_krum, trimmed_mean
from byzrsa.methods import rsa_master_step
from timing import fmt_time, measure

BIG = (100, 11_200_000)


def available() -> str | None:
    """None if a CUDA device can be used, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device on this machine (torch.cuda.is_available() is False); GPU tables not measured"
    return None


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else None


def peak_bandwidth(device: str = "cuda", size: int = 1 << 28) -> dict[str, float | None]:
    """Theoretical peak (bytes/s, if torch reports the memory clock and bus width) and a measured copy's."""
    theoretical = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        clock_khz = getattr(props, "memory_clock_rate", None)
        bus_bits = getattr(props, "memory_bus_width", None)
        theoretical = 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None
    a = torch.empty(size, dtype=torch.float32, device=device)  # 1 GiB by default
    b = torch.empty_like(a)
    t = measure({"copy": lambda: b.copy_(a)}, rounds=5, calls=5, sync=_sync(device))["copy"]
    del a, b
    return {"theoretical": theoretical, "copy": 2 * 4 * size / t.wall}


@torch.no_grad()
def big_table(quick: bool, device: str = "cuda", shape: tuple[int, int] = BIG) -> dict[str, Any]:
    m, d = shape
    if quick:
        d //= 10
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, d, device=device, generator=gen).add_(3.0)
    f = m // 10
    x[m - f :] = 100.0
    x0 = torch.zeros(d, device=device)
    _, iters = geometric_median_with_info(x, tol=1e-6)
    cases = {
        "rsa master step (l1)": lambda: rsa_master_step(x0, x, lam=0.07, p=1.0, alpha=1e-3, mu=0.01),
        "mean": lambda: mean(x),
        "median": lambda: median(x),
        "trimmed-mean": lambda: trimmed_mean(x, f),
        "geomed (tol 1e-6)": lambda: geometric_median_with_info(x, tol=1e-6)[0],
        "krum": lambda: krum(x, f),
        "multi-krum": lambda: multi_krum(x, f),
    }
    times = measure(cases, rounds=3 if quick else 5, calls=3, warmup=1, sync=_sync(device))
    bw = peak_bandwidth(device, size=1 << 28 if device == "cuda" else 1 << 20)
    peak = bw["theoretical"] or bw["copy"]
    rows = {}
    for name, t in times.items():
        passes = iters if name.startswith("geomed") else 1
        achieved = passes * m * d * 4 / t.wall
        rows[name] = {**t.to_dict(), "bytes_min": passes * m * d * 4, "bandwidth": achieved, "of_peak": achieved / peak}
    return {"m": m, "d": d, "geomed_iterations": iters, "peak": bw, "rows": rows}


def run(quick: bool) -> dict[str, Any]:
    why = available()
    if why:
        return {"skipped": why}
    import bench_aggregators
    import bench_sim

    shapes = [(20, 7850), (100, 100_000)] if quick else [(20, 7850), (100, 100_000), (100, 1_000_000)]
    return {
        "device": torch.cuda.get_device_name(),
        "aggregators": [bench_aggregators.bench_shape(m, d, peers=False, device="cuda", quick=quick) for m, d in shapes],
        "sim": bench_sim.bench_steps(quick, device="cuda"),
        "scaling": bench_sim.bench_scaling(quick, device="cuda"),
        "big": big_table(quick),
    }


def markdown(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"## GPU\n\nSkipped: {res['skipped']}.\n"
    import run as runner

    out = [f"## GPU: {res['device']}\n"]
    out.append(runner.aggregator_section(res["aggregators"], "cuda"))
    out.append(runner.sim_section(res["sim"], "cuda"))
    out.append(runner.scaling_section(res["scaling"], None))
    big = res["big"]
    peak = big["peak"]
    theo = f"{peak['theoretical'] / 1e9:.0f} GB/s theoretical" if peak["theoretical"] else "theoretical not reported"
    out.append(f"\n### Memory-bound steps at (m, d) = ({big['m']}, {big['d']:_}) float32; peak {theo}, "
               f"copy {peak['copy'] / 1e9:.0f} GB/s\n")
    rows = [[k, fmt_time(v["wall"]), f"{v['bandwidth'] / 1e9:.0f} GB/s", f"{100 * v['of_peak']:.0f}%"] for k, v in big["rows"].items()]
    out.append(runner._table(["step", "time", "bytes_min / time", "of peak"], rows))
    out.append(f"\n(geometric median: {big['geomed_iterations']} iterations, each reading m d floats at least once)")
    return "\n".join(out)
