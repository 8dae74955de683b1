"""Decentralized RSA with variance reduction (DRSA, DRSA-SAGA, DRSA-LSVRG) in the setting of the BRAVO code.

    python examples/drsa_vr.py [--dataset fashion-mnist] [--iterations 100000] [--lr 0.05] [--lam 0.005] [--out DIR]

The setting (Peng, Li, Ling's decentralized RSA with SAGA and loopless SVRG):
softmax regression, 10 nodes on ``two-castle`` (2 Byzantine), batch 32, a
constant step, weight decay 0.01 (``mu``). Methods: DRSA (``rsa`` with a
topology, l1 penalty on the edges) with ``--vr none``, ``saga`` and ``lsvrg``,
and two baselines over the neighbourhood: gossip (the mean) and BRIDGE (the
trimmed mean). Attacks: none, same-value, gaussian N(0, 100), ALIE and
sign-flip (the published list also has sample-duplicating and zero-sum, which
byzrsa does not offer as attacks).

The step and lambda are arguments (defaults: a short probe on mnist-sample,
not tuned). Prints the final accuracy of every cell (the run's ``accuracy``
column; docs/decentralized.md says what it averages) as a Markdown table and,
per attack, whether SAGA and LSVRG beat plain DRSA. Writes ``DIR/drsa-vr.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from byzrsa.config import config_from_dict
from byzrsa.data import load_dataset
from byzrsa.engines.common import build_problem
from byzrsa.engines.sim import simulate

NODES, BYZANTINE = 10, 2
# label -> (method, estimator)
METHODS = {
    "DRSA": ("rsa", "none"), "DRSA-SAGA": ("rsa", "saga"), "DRSA-LSVRG": ("rsa", "lsvrg"),
    "gossip": ("mean", "none"), "BRIDGE": ("trimmed-mean", "none"),
}
ATTACKS = {
    "none": {"name": "none"},
    "same-value": {"name": "same-value"},
    "gaussian": {"name": "gaussian", "std": 10.0},
    "alie": {"name": "alie"},
    "sign-flip": {"name": "sign-flip"},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--lam", type=float, default=0.005)
    parser.add_argument("--out", default="drsa-vr")
    args = parser.parse_args(argv)
    dataset = load_dataset(args.dataset, workers=NODES, quiet=True)
    accuracy: dict[tuple[str, str], float] = {}
    results = []
    for attack, attack_table in ATTACKS.items():
        for label, (method, vr) in METHODS.items():
            config = config_from_dict({
                "dataset": args.dataset, "pixels": "unit", "workers": NODES, "byzantine": BYZANTINE,
                "topology": "two-castle", "method": method, "norm": "l1", "lam": args.lam, "lr": args.lr,
                "lr_schedule": "constant", "mu": 0.01, "batch_size": 32, "vr": vr, "attack": attack_table,
                "iterations": args.iterations, "eval_every": args.eval_every, "seed": 0,
            })
            start = time.perf_counter()
            rows = list(simulate(build_problem(config, dataset)))
            accuracy[(attack, label)] = rows[-1]["accuracy"]
            results.append({"attack": attack, "method": label, "rows": rows, "seconds": time.perf_counter() - start})
            print(f"{attack:>11} {label:>11}: accuracy {rows[-1]['accuracy']:.4f} ({results[-1]['seconds']:.0f} s)",
                  flush=True)
    print(f"\nFinal accuracy, {args.dataset}, {args.iterations} iterations, two-castle, {NODES} nodes "
          f"({BYZANTINE} Byzantine), lr {args.lr}, lambda {args.lam}:\n")
    header = "| attack | " + " | ".join(METHODS) + " | SAGA beats DRSA | LSVRG beats DRSA |"
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for attack in ATTACKS:
        cells = [f"{accuracy[(attack, m)]:.4f}" for m in METHODS]
        saga = "yes" if accuracy[(attack, "DRSA-SAGA")] > accuracy[(attack, "DRSA")] else "no"
        lsvrg = "yes" if accuracy[(attack, "DRSA-LSVRG")] > accuracy[(attack, "DRSA")] else "no"
        print(f"| {attack} | " + " | ".join(cells) + f" | {saga} | {lsvrg} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "drsa-vr.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(f"\nwritten {out / 'drsa-vr.json'}")


if __name__ == "__main__":
    main()
