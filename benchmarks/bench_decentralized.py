"""The decentralized simulator's step against a per-node loop written like the research codes.

    python benchmarks/bench_decentralized.py [--nodes 12,30,100,1000] [--graphs er,ring] [--rounds 3]

Softmax regression on mnist-sample (unit pixels), batch 32, no Byzantine node
(the cost of the graph itself), one torch thread, float32. Two methods: DRSA
(l1) and gossip (the mean over the neighbourhood with Metropolis weights).

* ``sim``: :meth:`byzrsa.engines.decentralized.GraphSimulator.step`;
* ``loop``: what the DRSA/IOS research scripts do: a Python loop over the
  nodes, each computing its own minibatch gradient with torch on its own
  ``(C, n)`` model, then a loop over the nodes, each looping over its
  neighbours' models (the penalty's sign per edge, or the weighted sum).

Both step the same models on the same minibatches; ratio = loop time / sim
time per step in CPU time (medians of interleaved rounds, ``timing.py``). Goal: >= 5x at
m >= 30. Results go to ``DIR/decentralized-<stamp>.json`` (default
``benchmarks/results/``). Never part of the test run.
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
from timing import fmt_time, machine, measure  # noqa: E402


class NodeLoop:
    """One node at a time, in torch, like the research scripts: per-node gradient, per-edge penalty or sum."""

    def __init__(self, sim: Any) -> None:
        pb = sim.problem
        self.sim, self.pb = sim, pb
        topology = pb.topology
        self.neighbours = [list(topology.neighbours(i)) for i in range(topology.m)]
        self.w = topology.mixing(pb.dtype)
        c = pb.config
        self.classes = pb.model.num_classes
        self.models = [row.clone().view(self.classes, -1) for row in sim.workers]
        self.samplers = [pb.sampler(i) for i in range(c.workers)]
        self.x = pb.train_x  # featurised already: flattened, with the bias feature

    def _grad(self, i: int) -> torch.Tensor:
        batch = self.samplers[i].next()
        x = self.x[batch]
        probs = torch.softmax(x @ self.models[i].T, dim=1)
        probs[torch.arange(len(batch)), self.pb.train_y[batch]] -= 1.0
        return probs.T @ x / len(batch)

    def step(self, method: str, alpha: float, lam: float, mu: float) -> None:
        grads = [self._grad(i) for i in range(len(self.models))]
        if method != "rsa":
            half = [x - alpha * (g + mu * x) for x, g in zip(self.models, grads)]
        new = []
        for i, x_i in enumerate(self.models):
            if method == "rsa":
                pull = torch.zeros_like(x_i)
                for j in self.neighbours[i]:
                    pull += torch.sign(x_i - self.models[j])
                new.append(x_i - alpha * (grads[i] + mu * x_i + lam * pull))
            else:
                total = self.w[i, i] * half[i]
                for j in self.neighbours[i]:
                    total = total + self.w[i, j] * half[j]
                new.append(total)
        self.models = new


def bench(m: int, graph: str, rounds: int) -> dict[str, Any]:
    from byzrsa.config import RunConfig
    from byzrsa.engines.common import build_problem
    from byzrsa.engines.decentralized import GraphSimulator

    out: dict[str, Any] = {"nodes": m, "graph": graph}
    for method in ("rsa", "mean"):
        config = RunConfig(method=method, topology=graph, workers=m, byzantine=0, pixels="unit", lr=0.5, lam=0.005,
                           iterations=10**9, threads=1)
        sim = GraphSimulator(build_problem(config))
        loop = NodeLoop(sim)
        k = [0]

        def sim_step() -> None:
            with torch.no_grad():
                sim.step()

        def loop_step() -> None:
            k[0] += 1
            with torch.no_grad():
                loop.step(method, 0.5 / k[0] ** 0.5, 0.005, 0.01)

        calls = 1 if m >= 1000 else (3 if m >= 100 else 10)
        times = measure({"sim": sim_step, "loop": loop_step}, rounds=rounds, calls=calls, warmup=1)
        # CPU time per step: the machine may be shared, and one thread makes CPU time the work done
        out[method] = {"sim": times["sim"].to_dict(), "loop": times["loop"].to_dict(),
                       "ratio": times["loop"].cpu / times["sim"].cpu}
        print(f"m={m:5d} {graph:5s} {method:5s}: sim {fmt_time(times['sim'].cpu)}, loop "
              f"{fmt_time(times['loop'].cpu)}, loop/sim {out[method]['ratio']:.1f}x", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="12,30,100,1000")
    parser.add_argument("--graphs", default="er,ring")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [bench(m, g, args.rounds) for g in args.graphs.split(",") for m in map(int, args.nodes.split(","))]
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"decentralized-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
