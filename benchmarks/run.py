"""byzrsa's performance suite: one entry point, one table, JSON and Markdown out.

    python benchmarks/run.py [--quick] [--peers] [--device cuda] [--sections ...] [--out benchmarks/results]

Sections (see each module's docstring for what exactly is timed):

1. aggregation rules at (m, d) = (20, 7850), (100, 100_000), (100, 1_000_000)
   (``--quick``: the first two), float32; with ``--peers`` the same rules of
   ByzFL and ByzPy and NumPy's mean/median, each with its error against a
   float64 reference (``bench_aggregators.py``);
2. the simulator step in the paper's setting, split into its parts, against the
   per-worker NumPy loop of the authors' code (``bench_sim.py``, ``authors_loop.py``);
3. scaling with m and d, and torch threads 1 vs 2;
   ``--sections defences`` (not in the default set): issue 10's defences (cclip,
   bulyan, signsgd, bucketing, nnm, arc, clip) at the same shapes, with
   ``--peers`` against ByzFL and ByzPy, each output against a float64
   reference (``bench_defences.py``);
4. ``--device cuda``: sections 1-3 on the GPU plus the RSA master step and the
   rules at m = 100, d = 11_200_000 with the achieved memory bandwidth
   (``bench_gpu.py``). Without a CUDA device this section is skipped, saying so.

Times are medians of interleaved rounds (``timing.py``); "cpu" is the process's
CPU time, the better measure when other processes share the cores. Results go
to ``benchmarks/results/`` (git-ignored) as ``bench-<stamp>.json`` and ``.md``.
Never part of the test run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import bench_aggregators  # noqa: E402
import bench_defences  # noqa: E402
import bench_sim  # noqa: E402
from timing import fmt_time, machine  # noqa: E402

SHAPES = [(20, 7850), (100, 100_000), (100, 1_000_000)]
GOAL_STEP = 0.5e-3  # seconds per RSA iteration (issue 5)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _err(v: float | None) -> str:
    return "-" if v is None else f"{v:.1e}"


def aggregator_section(results: list[dict[str, Any]], device: str) -> str:
    out = [f"## Aggregation rules ({device}, float32)\n"]
    for res in results:
        out.append(f"### (m, d) = ({res['m']}, {res['d']:_}), f = {res['f']}\n")
        rows = []
        fastest_peer: dict[str, float] = {}
        for name, r in res["rows"].items():
            peer, rule = name.split(" ", 1)
            base = rule.split(" (", 1)[0]
            if peer != "byzrsa":
                fastest_peer[base] = min(fastest_peer.get(base, float("inf")), r["wall"])
        for name, r in res["rows"].items():
            peer, rule = name.split(" ", 1)
            base = rule.split(" (", 1)[0]
            extra = []
            if "iterations" in r:
                extra.append(f"{r['iterations']} it")
            if "objective_excess" in r:
                extra.append(f"F/F*-1 = {r['objective_excess']:.1e}, |z-z*|/s = {r['distance_rel']:.1e}")
            vs = ""
            if peer == "byzrsa" and base in fastest_peer:
                vs = f"{fastest_peer[base] / r['wall']:.2f}x"
            rows.append([peer, rule, fmt_time(r["wall"]), fmt_time(r["cpu"]), _err(r["max_error"]), vs, "; ".join(extra)])
        out.append(_table(["library", "rule", "wall", "cpu", "max error", "fastest peer / byzrsa", "notes"], rows))
        out.append(
            f"\nGeometric-median reference: float64 Weiszfeld, {res['geomed_reference_iterations']} iterations "
            f"to a step below 1e-12 s; s = {res['geomed_scale']:.4g}."
        )
        for peer, note in res.get("peer_notes", {}).items():
            out.append(f"- {peer}: {note}")
        for peer, why in res.get("skipped", {}).items():
            out.append(f"- {peer}: skipped ({why})")
        out.append("")
    return "\n".join(out)


def sim_section(steps: dict[str, Any], device: str) -> str:
    st, split = steps["steps"], steps["split"]
    ideal = st["ideal-sgd"]
    loop = st.get("authors-loop rsa-l1")
    rows = []
    for name, t in st.items():
        ratio = f"{t['cpu'] / ideal['cpu']:.2f}" if device == "cpu" else f"{t['wall'] / ideal['wall']:.2f}"
        speedup = ""
        if loop and not name.startswith("authors"):
            key = "authors-loop ideal-sgd" if name == "ideal-sgd" else "authors-loop rsa-l1"
            if name.startswith("rsa") or name == "ideal-sgd":
                speedup = f"{st[key]['cpu'] / t['cpu']:.2f}x"
        rows.append([name, fmt_time(t["wall"]), fmt_time(t["cpu"]), ratio, speedup])
    out = [f"## Simulator step, paper setting ({device}): m = 20, q = 8 same-value, b = 32, softmax d = 7850\n"]
    out.append(_table(["method", "wall / it", "cpu / it", "vs Ideal SGD", "authors' loop / this"], rows))
    parts = sorted({p for row in split.values() for p in row})
    out.append("\nWhere the time goes (cpu per call of each part, measured alone):\n")
    out.append(_table(["method", *parts], [[n, *(fmt_time(row.get(p, float("nan"))) for p in parts)] for n, row in split.items()]))
    return "\n".join(out)


def scaling_section(scaling: dict[str, Any], threads: dict[str, Any] | None) -> str:
    out = ["## Scaling with m and d\n"]
    out.append(_table(["case", "m", "d", "wall / it", "cpu / it"],
                      [[k, v["m"], v["d"], fmt_time(v["wall"]), fmt_time(v["cpu"])] for k, v in scaling.items()]))
    if threads:
        out.append("\n## Threads (wall time per iteration; 1 vs 2 torch threads, interleaved)\n")
        out.append(_table(["case", "wall / it", "cpu / it"],
                          [[k, fmt_time(v["wall"]), fmt_time(v["cpu"])] for k, v in threads.items()]))
    return "\n".join(out)


DEFENCE_GOAL_ERROR = 1e-5  # relative, "at the same output" (issue 10)


def defences_section(results: list[dict[str, Any]]) -> str:
    """bench_defences' tables, one heading level down (they sit under this report's title)."""
    text = bench_defences.markdown(results, machine())
    lines = text.splitlines()[2:]  # its own title and machine line: this report has both already
    return "## Defences (cpu, float32)\n\n" + "\n".join("#" + line if line.startswith("#") else line for line in lines)


def defence_verdicts(results: list[dict[str, Any]]) -> list[str]:
    """Issue 10's goal: at (100, 1e6) each defence at least as fast as its fastest peer, error <= 1e-5 relative."""
    lines = []
    for res in results:
        if res["m"] * res["d"] < 10**8:
            continue
        by_defence: dict[str, dict[str, Any]] = {}
        for name, r in res["rows"].items():
            lib, defence = name.split(" ", 1)
            by_defence.setdefault(defence, {})[lib] = r
        for defence, libs in by_defence.items():
            ours = libs.get("byzrsa")
            if ours is None:
                continue
            peers = {lib: r["wall"] for lib, r in libs.items() if lib not in ("byzrsa", "numpy", "torch")}
            exact = f"error {ours['rel_error']:.1e} ({'met' if ours['rel_error'] <= DEFENCE_GOAL_ERROR else 'not met'})"
            if peers:
                lib = min(peers, key=peers.get)
                speed = (f"byzrsa {fmt_time(ours['wall'])} vs fastest peer {lib} {fmt_time(peers[lib])} "
                         f"({'met' if ours['wall'] <= peers[lib] else 'not met'})")
            else:
                speed = f"byzrsa {fmt_time(ours['wall'])}, no peer timed"
            lines.append(f"- ({res['m']}, {res['d']:_}) {defence}: {speed}; {exact}")
    return lines


def verdicts(steps: dict[str, Any] | None, aggs: list[dict[str, Any]], device: str) -> list[str]:
    lines: list[str] = []
    st = steps["steps"] if steps else {}
    if st:
        rsa, ideal = st["rsa-l1"], st["ideal-sgd"]
        lines += [
            f"- RSA l1 per iteration: {fmt_time(rsa['wall'])} wall, {fmt_time(rsa['cpu'])} cpu "
            f"(goal <= 0.5 ms: {'met' if min(rsa['wall'], rsa['cpu']) <= GOAL_STEP else 'not met'})",
            f"- RSA l1 / Ideal SGD (cpu): {rsa['cpu'] / ideal['cpu']:.2f} (goal <= 1.15: "
            f"{'met' if rsa['cpu'] / ideal['cpu'] <= 1.15 else 'not met'})",
        ]
    if "authors-loop rsa-l1" in st:
        sp = st["authors-loop rsa-l1"]["cpu"] / rsa["cpu"]
        lines.append(f"- authors' per-worker loop / RSA l1 (cpu): {sp:.2f}x (goal >= 4x: {'met' if sp >= 4 else 'not met'})")
    for res in aggs:
        if res["m"] * res["d"] < 10**8:
            continue
        best: dict[str, tuple[float, str]] = {}
        for name, r in res["rows"].items():
            peer, rule = name.split(" ", 1)
            base = rule.split(" (", 1)[0]
            if peer != "byzrsa" and r["wall"] < best.get(base, (float("inf"), ""))[0]:
                best[base] = (r["wall"], peer)
        for rule in ("mean", "median", "trimmed-mean", "geomed", "krum", "multi-krum"):
            ours = res["rows"][f"byzrsa {rule}"]["wall"]
            if rule in best:
                t, peer = best[rule]
                lines.append(f"- ({res['m']}, {res['d']:_}) {rule}: byzrsa {fmt_time(ours)} vs fastest peer {peer} "
                             f"{fmt_time(t)} ({'met' if ours <= t else 'not met'})")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, few rounds (under 2 minutes)")
    ap.add_argument("--peers", action="store_true", help="also time byzfl, byzpy and numpy")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the tables (default 1; see the threads table)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--sections", default="aggregators,sim", help="comma list of: aggregators, sim (= steps, scaling, threads), steps, scaling, threads, defences")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"command": " ".join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
                              "machine": machine(), "quick": args.quick, "device": args.device}
    md = [f"# byzrsa benchmarks\n\n`{report['command']}`\n\nMachine: {json.dumps(report['machine'])}\n"]

    if args.device == "cuda":
        import bench_gpu

        gpu = bench_gpu.run(quick=args.quick)
        report["gpu"] = gpu
        md.append(bench_gpu.markdown(gpu))
        print(bench_gpu.markdown(gpu))
    else:
        wanted = set(args.sections.split(","))
        unknown = wanted - {"aggregators", "sim", "steps", "scaling", "threads", "defences"}
        if unknown:
            ap.error(f"unknown section(s) {', '.join(sorted(unknown))}: choose from aggregators, sim, steps, "
                     "scaling, threads, defences")
        sections, aggs, steps, defs = [], [], None, []
        if "aggregators" in wanted:
            shapes = SHAPES[:2] if args.quick else SHAPES
            for m, d in shapes:
                print(f"aggregation rules at ({m}, {d}) ...", flush=True)
                aggs.append(bench_aggregators.bench_shape(m, d, peers=args.peers, quick=args.quick))
            report["aggregators"] = aggs
            sections.append(aggregator_section(aggs, "cpu"))
        if "sim" in wanted:
            wanted |= {"steps", "scaling", "threads"}
        if "steps" in wanted:
            print("simulator steps ...", flush=True)
            steps = bench_sim.bench_steps(args.quick)
            report["sim"] = steps
            sections.append(sim_section(steps, "cpu"))
        if "scaling" in wanted or "threads" in wanted:
            print("scaling and threads ...", flush=True)
            scaling = bench_sim.bench_scaling(args.quick) if "scaling" in wanted else {}
            threads = bench_sim.bench_threads(args.quick) if "threads" in wanted else None
            torch.set_num_threads(args.threads)
            report["scaling"], report["threads"] = scaling, threads
            sections.append(scaling_section(scaling, threads))
        if "defences" in wanted:
            for m, d in SHAPES[:2] if args.quick else SHAPES:
                print(f"defences at ({m}, {d}) ...", flush=True)
                defs.append(bench_defences.bench_shape(m, d, peers=args.peers, quick=args.quick))
            report["defences"] = defs
            sections.append(defences_section(defs))
        lines = verdicts(steps, aggs, "cpu") + defence_verdicts(defs)
        sections.append("## Goals\n\n" + "\n".join(lines))
        md.extend(sections)
        print("\n\n".join(sections))
    report["seconds"] = time.perf_counter() - started
    md.append(f"\n(total {report['seconds']:.0f} s)\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tag = ("quick-" if args.quick else "") + ("cuda-" if args.device == "cuda" else "")
    (out / f"bench-{tag}{stamp}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / f"bench-{tag}{stamp}.md").write_text("\n".join(md))
    print(f"\nwrote {out}/bench-{tag}{stamp}.json and .md ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
