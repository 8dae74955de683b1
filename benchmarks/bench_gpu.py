"""``--device cuda``: the GPU tables of issue 11 (deep models against the per-worker loop, memory-bound steps).

    python benchmarks/run.py --device cuda            # the tables below, then the CPU sections' tables on the GPU
    python benchmarks/bench_gpu.py --smoke            # the same code at toy sizes on the CPU (a check, not a measure)

Without a CUDA device :func:`run` returns ``{"skipped": reason}`` and the report
says so; nothing fails. With one:

1. **Deep models**: lenet5 and cnn at m = 25, 100, 1000 workers, batch 32 of
   (1, 28, 28) images, float32: byzrsa's gradient of m distinct models
   (``model.grad``, the path ``batching="auto"`` picks: vmap on a GPU) against
   the per-worker autograd loop of ``per_worker_loop.py`` on the same GPU (goal:
   at least 10x at m = 100), and the whole simulator step (``Simulator.step``,
   RSA l1 and Ideal SGD, mnist-sample, no attack) with its device-side dropout
   masks and minibatches.
2. **Memory-bound steps** at (m, d) = (100, 11_200_000) float32 (a ResNet-18-sized
   model, f = 10 same-value rows): the RSA master step (l1) and every registered
   rule, with ``bytes / time`` where bytes = ``m d`` floats read once (the least any
   of them must move), against the device's theoretical bandwidth (memory clock x
   bus width, when torch reports them) and a measured device-to-device copy. Goal:
   at least 60% of the peak for the memory-bound steps (the master step, mean,
   and the one-pass rules).
3. The CPU sections (rules at three shapes, simulator steps, scaling) on the GPU.

Each case is timed with ``torch.cuda.synchronize`` around the clock reads (``timing.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from timing import fmt_time, measure  # noqa: E402

from byzrsa.aggregators import RULES  # noqa: E402
from byzrsa.methods import rsa_master_step  # noqa: E402

BIG = (100, 11_200_000)
NET_WORKERS = (25, 100, 1000)


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
    t = measure({"copy": lambda a=a, b=b: b.copy_(a)}, rounds=5, calls=5, sync=_sync(device))["copy"]
    del a, b
    return {"theoretical": theoretical, "copy": 2 * 4 * size / t.wall}


def _rule_call(name: str, x: torch.Tensor, f: int):
    rule = RULES[name]
    options: dict[str, Any] = {}
    if rule.uses_previous:
        options["previous"] = None
    return lambda: rule(x, f, **options)


@torch.no_grad()
def big_table(device: str = "cuda", shape: tuple[int, int] = BIG, rounds: int = 5) -> dict[str, Any]:
    """The RSA master step and every rule at ``shape``, with the bandwidth each achieves."""
    m, d = shape
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, d, device=device, generator=gen).add_(3.0)
    f = m // 10
    x[m - f :] = 100.0
    x0 = torch.zeros(d, device=device)
    cases = {"rsa master step (l1)": lambda: rsa_master_step(x0, x, lam=0.07, p=1.0, alpha=1e-3, mu=0.01)}
    skipped = {}
    for name in RULES.names():
        try:
            RULES[name].check and RULES[name].check(m, f, RULES[name].defaults())
        except Exception as exc:  # a rule that cannot run at this m, f
            skipped[name] = str(exc)
            continue
        cases[name] = _rule_call(name, x, f)
    times = measure(cases, rounds=rounds, calls=3, warmup=1, sync=_sync(device))
    bw = peak_bandwidth(device, size=1 << 28 if device == "cuda" else 1 << 20)
    peak = bw["theoretical"] or bw["copy"]
    rows = {}
    for name, t in times.items():
        achieved = m * d * 4 / t.wall
        rows[name] = {**t.to_dict(), "bytes_min": m * d * 4, "bandwidth": achieved, "of_peak": achieved / peak}
    return {"m": m, "d": d, "f": f, "peak": bw, "rows": rows, "skipped": skipped}


@torch.no_grad()
def nets_table(device: str = "cuda", workers: tuple[int, ...] = NET_WORKERS, rounds: int = 3,
               steps: bool = True) -> list[dict[str, Any]]:
    """lenet5 and cnn: byzrsa's batched gradient against the per-worker loop, and whole simulator steps."""
    from bench_models import MODELS as BENCH_MODELS
    from per_worker_loop import PerWorkerLoop

    from byzrsa.config import config_from_dict
    from byzrsa.data import load_dataset
    from byzrsa.engines.common import build_problem
    from byzrsa.engines.sim import Simulator
    from byzrsa.models import build_model

    shape = (1, 28, 28)
    rows = []
    for name in ("lenet5", "cnn"):
        registered, options, plain = BENCH_MODELS[name]
        for m in workers:
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.rand(m, 32, *shape, device=device, generator=gen)
            y = torch.randint(0, 10, (m, 32), device=device, generator=gen)
            model = build_model(registered, shape, 10, options)
            w0 = model.init(torch.Generator().manual_seed(1), torch.float32).to(device)
            w = w0 + 0.01 * torch.randn(m, model.dim, device=device, generator=gen)
            gens = [torch.Generator(device=device).manual_seed(100 + i) for i in range(m)]
            loop = PerWorkerLoop(plain().to(device))
            cases: dict[str, Any] = {
                "byzrsa gradient": lambda model=model, w=w, x=x, y=y, gens=gens: model.grad(w, x, y, gens),
                "loop gradient": lambda loop=loop, w=w, x=x, y=y: loop.grad(w, x, y),
            }
            if steps:
                dataset = load_dataset("mnist-sample", workers=m, quiet=True)
                base = dict(dataset="mnist-sample", workers=m, byzantine=0, attack="none", iterations=10**9,
                            model={"name": registered, **options}, device=device)
                for method, kw in (("rsa-l1 step", dict(method="rsa", norm="l1", lam=0.1, lr=1e-3)),
                                   ("ideal-sgd step", dict(method="ideal-sgd", lr=1e-2))):
                    sim = Simulator(build_problem(config_from_dict({**base, **kw}), dataset))
                    sim.step()
                    cases[method] = sim.step
            got = measure(cases, rounds=rounds, calls=3, warmup=1, sync=_sync(device), target=2.0)
            row = {"model": name, "m": m, "d": model.dim, "path": model._path(torch.device(device)),
                   **{k: t.to_dict() for k, t in got.items()}}
            row["loop / byzrsa"] = got["loop gradient"].wall / got["byzrsa gradient"].wall
            rows.append(row)
            del w, x, y, loop, model
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def run(quick: bool, device: str = "cuda", smoke: bool = False) -> dict[str, Any]:
    """All GPU tables (``smoke``: toy sizes, any device, to check the code runs)."""
    if device == "cuda":
        why = available()
        if why:
            return {"skipped": why}
    if smoke:
        return {"device": device, "smoke": True, "nets": nets_table(device, (2, 3), rounds=1),
                "big": big_table(device, (12, 50_000), rounds=1)}
    import bench_aggregators
    import bench_sim

    shapes = [(20, 7850), (100, 100_000)] if quick else [(20, 7850), (100, 100_000), (100, 1_000_000)]
    return {
        "device": torch.cuda.get_device_name(),
        "nets": nets_table(device, NET_WORKERS[:2] if quick else NET_WORKERS),
        "big": big_table(device, (BIG[0], BIG[1] // 10) if quick else BIG),
        "aggregators": [bench_aggregators.bench_shape(m, d, peers=False, device="cuda", quick=quick) for m, d in shapes],
        "sim": bench_sim.bench_steps(quick, device="cuda"),
        "scaling": bench_sim.bench_scaling(quick, device="cuda"),
    }


def nets_markdown(rows: list[dict[str, Any]]) -> str:
    header = ["model", "m", "d", "path", "byzrsa gradient", "per-worker loop", "loop / byzrsa", "rsa-l1 step",
              "ideal-sgd step"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cell = lambda k: fmt_time(r[k]["wall"]) if k in r else "-"  # noqa: E731
        out.append("| " + " | ".join(str(c) for c in [
            r["model"], r["m"], f"{r['d']:_}", r["path"], cell("byzrsa gradient"), cell("loop gradient"),
            f"{r['loop / byzrsa']:.1f}x", cell("rsa-l1 step"), cell("ideal-sgd step")]) + " |")
    return "\n".join(out)


def big_markdown(big: dict[str, Any]) -> str:
    peak = big["peak"]
    theo = f"{peak['theoretical'] / 1e9:.0f} GB/s theoretical" if peak["theoretical"] else "theoretical not reported"
    out = [f"### Memory-bound steps at (m, d) = ({big['m']}, {big['d']:_}) float32, f = {big['f']}; peak {theo}, "
           f"copy {peak['copy'] / 1e9:.0f} GB/s\n"]
    rows = [[k, fmt_time(v["wall"]), f"{v['bandwidth'] / 1e9:.0f} GB/s", f"{100 * v['of_peak']:.0f}%"]
            for k, v in big["rows"].items()]
    out.append("| step | time | m d floats read once / time | of peak |\n|---|---|---|---|")
    out += ["| " + " | ".join(r) + " |" for r in rows]
    for name, why in big.get("skipped", {}).items():
        out.append(f"- {name}: skipped ({why})")
    return "\n".join(out)


def markdown(res: dict[str, Any]) -> str:
    if "skipped" in res:
        return f"## GPU\n\nSkipped: {res['skipped']}.\n"
    smoke = " (smoke sizes: a check that the code runs, not a measurement)" if res.get("smoke") else ""
    out = [f"## GPU: {res['device']}{smoke}\n"]
    out.append("### lenet5 and cnn: batched gradient against the per-worker loop, and simulator steps (wall)\n")
    out.append(nets_markdown(res["nets"]))
    out.append("")
    out.append(big_markdown(res["big"]))
    if "aggregators" in res:
        import run as runner

        out.append(runner.aggregator_section(res["aggregators"], "cuda"))
        out.append(runner.sim_section(res["sim"], "cuda"))
        out.append(runner.scaling_section(res["scaling"], None))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: check the code path")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    res = run(args.quick, device="cpu" if args.smoke else "cuda", smoke=args.smoke)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
