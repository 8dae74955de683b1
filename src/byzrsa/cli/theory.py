"""``byzrsa lambda0``: the argparse side of :mod:`byzrsa.experiments.paper.theory`."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

__all__ = ["register"]


# ---------------------------------------------------------------------------------------------
# byzrsa lambda0
# ---------------------------------------------------------------------------------------------


def _cmd_lambda0(args: argparse.Namespace) -> int:
    from byzrsa.cli import config_from_args
    from byzrsa.experiments.paper.theory import lambda0, objective_from_config, solve_consensus  # imports torch
    from byzrsa.penalties import norm_name, parse_norm

    config = config_from_args(args)
    p = parse_norm(config.norm)
    started = time.perf_counter()
    obj = objective_from_config(config)
    x_star, gnorm = solve_consensus(obj, tol=args.tol)
    lam0, per_worker = lambda0(obj, x_star, p)
    result = {
        "norm": norm_name(p),
        "lambda0": lam0,
        "per_worker": [round(float(v), 6) for v in per_worker],
        "lambda": config.lam,
        "consensus_guaranteed": config.lam >= lam0,
        "x_star_norm": float(x_star.norm()),
        "x_star_grad_norm": gnorm,
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(result))
    return 0


def register(subparsers: Any) -> None:
    """Add ``byzrsa lambda0`` to the CLI."""
    from byzrsa.cli import add_config_flags

    parser = subparsers.add_parser(
        "lambda0",
        help="compute Theorem 1's lambda0 for a config (the smallest lambda that guarantees consensus)",
        description="Solve the consensus problem (3) for the config's regular workers by L-BFGS in float64 (full "
        "batch) and print lambda0 = max_i ||grad F_i(x~*)/m||_dual for the config's norm, as a guide for lambda.",
    )
    add_config_flags(parser)
    parser.add_argument("--tol", type=float, default=1e-9, help="gradient-norm tolerance of L-BFGS [1e-9]")
    parser.set_defaults(handler=_cmd_lambda0)
