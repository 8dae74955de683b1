"""Side-by-side tables of a decentralized bench report: byzrsa's accuracy beside the paper's, and who survives.

    python examples/graph_tables.py OUT [--margin 0.05]

``OUT`` is a ``byzrsa bench ios-tsp2023`` (or ``drsa-sp2021``) results folder. For each level, one row per method
and one column per attack: byzrsa's final accuracy (mean over seeds), the published one after a slash where the
preset carries it, and a mark: a method *survives* an attack when its accuracy under it is within ``margin`` of
its own no-attack accuracy (the same rule applied to the published numbers). The last lines count, per level,
where byzrsa's survival verdict and the paper's agree. Markdown on standard output, for docs/decentralized.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from byzrsa.experiments.bench.presets import PRESETS


def survives(accuracy: float, clean: float, margin: float) -> bool:
    return accuracy >= clean - margin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--margin", type=float, default=0.05)
    args = parser.parse_args()
    data = json.loads((args.out / "cells.json").read_text())
    grid = PRESETS[data["grid"]]
    published = {(p.level, p.attack): p.values for p in grid.published}
    cells = {(c["level"], c["method"], c["attack"]): c for c in data["cells"]}
    attacks = [a.label for a in grid.attacks]
    methods = [m.label for m in grid.methods]
    for level in (lv.label for lv in grid.levels):
        print(f"\n**{level}** (byzrsa / paper; survives = within {args.margin:g} of the method's own no-attack "
              "accuracy: yes, no)\n")
        print("| method | " + " | ".join(attacks) + " |")
        print("|---|" + "---|" * len(attacks))
        agree = disagree = 0
        for method in methods:
            clean = cells[(level, method, "none")]["mean"]
            paper_clean = published.get((level, "none"), {}).get(method)
            row = []
            for attack in attacks:
                cell = cells[(level, method, attack)]
                ours = cell["mean"]
                text = f"{ours:.3f}" + ("" if cell["converged"] else "*")
                paper = published.get((level, attack), {}).get(method)
                if paper is not None:
                    text += f" / {paper:.3f}"
                if attack != "none":
                    mine = survives(ours, clean, args.margin)
                    text += " yes" if mine else " no"
                    if paper is not None and paper_clean is not None:
                        theirs = survives(paper, paper_clean, args.margin)
                        text += "" if theirs == mine else " (paper: " + ("yes" if theirs else "no") + ")"
                        agree, disagree = agree + (theirs == mine), disagree + (theirs != mine)
                row.append(text)
            print(f"| {method} | " + " | ".join(row) + " |")
        if agree + disagree:
            print(f"\nSurvival verdicts that agree with the paper's at this level: {agree} of {agree + disagree}.")
    print("\n(* = not converged by the report's rule: moved by more than max(seed spread, 0.01) over the last 20%.)")


if __name__ == "__main__":
    main()
