"""``byzrsa topology``: build a communication graph, print its facts and draw it (PNG + SVG)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register", "topology_facts"]

SPECTRUM_MAX_NODES = 2000


def _options(pairs: list[str]) -> dict[str, str]:
    """``--set topology.OPTION=VALUE`` pairs as ``{OPTION: VALUE}`` (coerced later by the entry)."""
    from byzrsa.errors import ConfigError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("topology.") or len(key) == len("topology."):
            raise ConfigError(f"--set takes topology.OPTION=VALUE here, got {pair!r}")
        options[key[len("topology."):]] = value
    return options


def topology_facts(topology: Any) -> dict[str, Any]:
    """What a person wants to know about a graph before training on it."""
    import torch

    m, r = topology.m, topology.regular
    degrees = [topology.degree(i) for i in range(m)]
    gap = None
    if 1 < m <= SPECTRUM_MAX_NODES:  # a dense eigendecomposition: O(m^3)
        eigenvalues = torch.linalg.eigvalsh(topology.mixing()).abs().sort(descending=True).values
        gap = round(float(1 - eigenvalues[1]), 6)
    return {
        "topology": topology.name,
        "m": m,
        "q": topology.q,
        "byzantine": [topology.labels[c] for c in range(r, m)],
        "edges": len(topology.edges),
        "degree_min": min(degrees),
        "degree_max": max(degrees),
        "degree_mean": round(sum(degrees) / m, 4),
        "byzantine_neighbours_max": max((topology.byzantine_neighbours(i) for i in range(r)), default=0),
        "weighting": topology.weighting,
        # 1 - |second largest eigenvalue| of W: how fast plain gossip mixes (0: never; null: graph too large)
        "spectral_gap": gap,
    }


def _cmd_topology(args: argparse.Namespace) -> int:
    from byzrsa.errors import ConfigError
    from byzrsa.topologies import build_topology, draw_topology

    topology = build_topology(args.name, args.workers, args.byzantine, _options(args.set), seed=args.seed)
    facts = topology_facts(topology)
    if args.out is not None:
        try:
            facts["files"] = [str(p) for p in draw_topology(topology, args.out)]
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: cannot write the picture: {exc.strerror or exc}") from None
    print(json.dumps(facts))
    return 0


def _describe() -> str:
    from byzrsa.topologies import SHARED_OPTIONS, TOPOLOGIES

    shared = {opt.name for opt in SHARED_OPTIONS}
    lines = ["topologies and their options (--set topology.OPTION=VALUE):"]
    for entry in TOPOLOGIES.values():
        lines.append(f"  {entry.name}: {entry.help}")
        lines.extend(f"      {o.name} = {o.default!r}: {o.help}" for o in entry.options if o.name not in shared)
    lines.append("every topology also takes:")
    lines.extend(f"      {o.name} = {o.default!r}: {o.help}" for o in SHARED_OPTIONS)
    return "\n".join(lines)


class _HelpListingTopologies(argparse.Action):
    """``--help`` that lists the topologies: imported only then, so the parser is built without torch."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        parser.epilog = _describe()
        parser.print_help()
        parser.exit()


def register(subparsers: Any) -> None:
    """Add ``byzrsa topology`` to the CLI."""
    parser = subparsers.add_parser(
        "topology",
        help="build a decentralized topology, print its facts as JSON and draw it (--out x.png)",
        description="Build topology NAME on --workers nodes of which --byzantine are Byzantine (the last ones, "
        "or --set topology.byzantine=i,j,...), print its degrees, Byzantine neighbours and the spectral gap of its "
        "mixing matrix, and with --out draw it as PNG + SVG with the Byzantine nodes in red.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("-h", "--help", action=_HelpListingTopologies, help="show this help and every topology")
    parser.add_argument("name", metavar="NAME", help="a topology: complete, ring, er, ... (listed below)")
    parser.add_argument("--workers", type=int, default=12, metavar="M", help="number m of nodes [12]")
    parser.add_argument("--byzantine", type=int, default=0, metavar="Q", help="number q of Byzantine nodes [0]")
    parser.add_argument("--seed", type=int, default=0, help="run seed (random graphs whose graph_seed is none) [0]")
    parser.add_argument(
        "--set", action="append", default=[], metavar="topology.OPTION=VALUE", help="a topology option (repeatable)"
    )
    parser.add_argument("--out", metavar="FILE", help="draw the graph to FILE.png and FILE.svg")
    parser.set_defaults(handler=_cmd_topology)
