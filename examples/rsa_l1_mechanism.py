"""Why l1 RSA breaks on by-label data: where its master settles, and how far q votes move it.

    python examples/rsa_l1_mechanism.py [--iterations 2000] [--seeds 0,1,2] [--out FILE.png]

The l1 master's step is ``x0 <- x0 - a (lam sum_i sign(x0 - z_i) + mu x0)``: at rest, each coordinate of x0
sits where as many received messages z_i lie above it as below (up to mu x0 / lam), that is at a
coordinate-wise median of the m messages, the q Byzantine ones included. How far q aligned messages can move
that median depends on how widely the r honest local models spread in each coordinate, and the spread depends
on lam: below the consensus threshold lambda0 of the paper's Theorem 1 (``byzrsa lambda0``) the penalty cannot
hold the local models together.

For each lam (quick's setting on by-label data: softmax, mnist-sample, unit pixels, m = 20, q = 4, lr 3,
sqrt schedule, mu 0.01), with no attack and with sign-flip (-4), this trains RSA l1 and then reads the final
state:

* ``median gap``: ||x0 - coordinate-wise median of the m messages|| / ||x0|| (small: x0 is that median);
* ``mean gap``: the same against the messages' mean (for contrast);
* ``spread``: the honest local models' interquartile range, averaged over coordinates, over ||x0|| / sqrt(d);
* ``vote shift``: ||median(all m) - median(the r honest ones)|| / ||x0||, how far the q lies move the median;
* ``||x0||``, and the test accuracy of x0.

Markdown on standard output (mean over seeds), and a figure: accuracy, median gap, vote shift and ||x0|| against lam, with
lambda0 marked. The state is read through the simulator's own attack path (``Simulator._byzantine_messages``),
so the lies are the ones the master received at the last step.
"""

from __future__ import annotations

import argparse
import math

import torch

from byzrsa.config import config_from_dict
from byzrsa.engines.common import build_problem
from byzrsa.engines.sim import Simulator

LAMS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
BASE = dict(dataset="mnist-sample", pixels="unit", model="softmax", split="by-label", workers=20, byzantine=4,
            batch_size=32, lr=3.0, lr_schedule="sqrt", mu=0.01, method="rsa", norm="l1", eval_every=10**9)
ATTACKS = {"none": {"name": "none"}, "sign-flip": {"name": "sign-flip", "sigma": -4.0}}


@torch.no_grad()
def measure(lam: float, attack: str, seed: int, iterations: int) -> dict[str, float]:
    c = config_from_dict({**BASE, "lam": lam, "seed": seed, "iterations": iterations,
                          "attack": ATTACKS[attack]})
    sim = Simulator(build_problem(c))
    for _ in range(iterations):
        sim.step()
    r = c.regular
    honest = sim.workers[:r].double()
    lies = sim._byzantine_messages(sim.workers[:r], sim.workers[r:], sim.x0).double()
    received = torch.cat([honest, lies])
    x0 = sim.x0.double()
    scale = x0.norm().item()
    median = received.quantile(0.5, dim=0)  # the midpoint of the two middle values for even m
    q1, q3 = honest.quantile(0.25, dim=0), honest.quantile(0.75, dim=0)
    return {
        "accuracy": sim.metrics()["accuracy"],
        "median_gap": (x0 - median).norm().item() / scale,
        "mean_gap": (x0 - received.mean(dim=0)).norm().item() / scale,
        "spread": (q3 - q1).mean().item() / (scale / math.sqrt(x0.numel())),
        "vote_shift": (median - honest.quantile(0.5, dim=0)).norm().item() / scale,
        "norm": scale,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--lambda0", type=float, default=None, help="mark this lambda0 (byzrsa lambda0 prints it)")
    ap.add_argument("--out", default=None, help="write the figure here (PNG)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: dict[tuple[float, str], dict[str, float]] = {}
    for lam in LAMS:
        for attack in ATTACKS:
            runs = [measure(lam, attack, s, args.iterations) for s in seeds]
            rows[lam, attack] = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    print(f"RSA l1, by-label, m = 20, q = 4, {args.iterations} iterations, mean over seeds {seeds}\n")
    print("| lam | attack | accuracy | median gap | mean gap | honest spread | vote shift | norm of x0 |")
    print("|---|---|---|---|---|---|---|---|")
    for (lam, attack), v in rows.items():
        print(f"| {lam:g} | {attack} | {v['accuracy']:.3f} | {v['median_gap']:.3f} | {v['mean_gap']:.3f} | "
              f"{v['spread']:.3f} | {v['vote_shift']:.3f} | {v['norm']:.2f} |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
        for ax, key, title in zip(axes, ("accuracy", "median_gap", "vote_shift", "norm"),
                                  ("test accuracy", "||x0 - median of messages|| / ||x0||", "vote shift / ||x0||",
                                   "||x0||")):
            for attack, style in (("none", "o-"), ("sign-flip", "s--")):
                ax.plot(LAMS, [rows[lam, attack][key] for lam in LAMS], style, label=attack)
            if args.lambda0:
                ax.axvline(args.lambda0, color="grey", lw=1, ls=":", label="lambda0")
            ax.set_xscale("log")
            ax.set_xlabel("lambda")
            ax.set_title(title)
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=110)
        print(f"\nfigure: {args.out}")


if __name__ == "__main__":
    main()
