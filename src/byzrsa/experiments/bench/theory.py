r"""lambda0 of Theorem 1 beside each RSA row of the benchmark.

Li et al. (AAAI 2019), Theorem 1: with strongly convex losses, RSA's local
models reach consensus with the master when :math:`\lambda \ge \lambda_0 =
\max_i \|\nabla F_i(\tilde x^*)\|_b / m` (b the dual exponent of the penalty's
norm, :math:`\tilde x^*` the solution of the regular workers' problem (3)).
Below it the regular models stay apart, and on heterogeneous data that spread is
what q aligned Byzantine messages exploit. The value depends on the data split,
q, mu and the norm, not on the attack; it is computed once per (level, q, norm)
with :func:`byzrsa.experiments.paper.theory.solve_consensus` (float64 L-BFGS) and kept
in ``OUT/lambda0.json`` so a rerun of the report does not recompute it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from byzrsa.config import RunConfig

__all__ = ["applies", "lambda0_table"]

#: models whose loss is convex in the parameters (with mu > 0 strongly convex): where Theorem 1 holds
CONVEX_MODELS = ("softmax",)


def applies(config: RunConfig) -> bool:
    """Whether Theorem 1's lambda0 is defined for ``config``: a convex model with mu > 0, RSA."""
    return config.method == "rsa" and config.model in CONVEX_MODELS and config.mu > 0


def _key(config: RunConfig) -> str:
    return f"{config.dataset}|{config.pixels}|{config.split}|{config.dirichlet_alpha}|q={config.byzantine}|" \
           f"m={config.workers}|mu={config.mu}|seed={config.seed}|{config.norm}"


def lambda0_table(out: Path, configs: Sequence[RunConfig], *, tol: float = 1e-8) -> dict[str, float]:
    """``_key(config)`` -> lambda0 for every config where it :func:`applies` (cached in ``out/lambda0.json``)."""
    from byzrsa.experiments.paper.theory import lambda0, objective_from_config, solve_consensus
    from byzrsa.penalties import parse_norm

    path = out / "lambda0.json"
    cache: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    todo = [c for c in configs if applies(c) and _key(c) not in cache]
    solved: dict[str, Any] = {}  # one x~* per problem, shared by the norms
    for c in todo:
        problem = _key(c.replace(norm="l1"))
        if problem not in solved:
            objective = objective_from_config(c)
            solved[problem] = (objective, solve_consensus(objective, tol=tol)[0])
        objective, x_star = solved[problem]
        cache[_key(c)] = lambda0(objective, x_star, parse_norm(c.norm))[0]
    if todo:
        path.write_text(json.dumps(cache, indent=2, sort_keys=True) + "\n")
    return {k: cache[k] for k in (_key(c) for c in configs if applies(c))}


def lambda0_of(table: Mapping[str, float], config: RunConfig) -> float | None:
    return table.get(_key(config)) if applies(config) else None
