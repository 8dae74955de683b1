"""Byzantine attacks: what the q Byzantine workers send instead of the truth.

An attack is a pure function of what an omniscient attacker may see:

* ``regular``: the messages of the regular workers this iteration, ``(r, d)``,
  one row per regular worker in worker order;
* ``own``: the Byzantine workers' own true values, ``(k, d)`` (the model a
  Byzantine worker would have sent had it been honest, or its true gradient);
  ``k <= q``: one Byzantine process of the dist engine computes only its row;
* ``ctx``: an :class:`AttackContext`: one ``torch.Generator`` per row of ``own``
  (for random attacks), the numbers of workers, the defence's declared f, and,
  for attacks whose entry asks for them, the defence itself, the master's state
  (RSA) and a state dict kept across rounds,

and returns the ``(k, d)`` messages actually sent (one per row of ``own``). The
same attacks apply to models (RSA, where messages are local iterates) and to
gradients (the gradient-aggregation baselines). A deterministic attack sends the
same row whatever k is, and a random one draws row j from generator j only, so a
Byzantine *process* of the distributed engine sends exactly what the simulator
sends for its row. mu and sigma are always the coordinate-wise mean and
population standard deviation of the round's regular messages.

Every attack is one :class:`Attack` entry of ``ATTACKS``: the function, its
options, and the facts the engines act on (does it read the regular messages,
does it need the Byzantine workers' true values, the defence, the master's
model, or does it poison the labels instead of forging messages). The
functions live in the modules of this package: :mod:`.basic` (the RSA paper's
and the classic ones, label flipping), :mod:`.statistical` (ALIE, IPM),
:mod:`.optimised` (min-max, min-sum), :mod:`.mimic`, :mod:`.adaptive`
(defence-aware ALIE and IPM) and :mod:`.rsa_aware`. ``docs/attacks.md`` has one
section per attack.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from byzrsa.attacks.adaptive import alie_opt, ipm_opt, search_check
from byzrsa.attacks.base import Attack, AttackContext
from byzrsa.attacks.basic import (
    copy_check,
    copy_worker,
    flip_labels,
    gaussian,
    honest,
    negated_copy,
    negative_sum,
    non_finite,
    non_finite_check,
    same_value,
    sign_flip,
)
from byzrsa.attacks.graph import dissensus, isolation
from byzrsa.attacks.mimic import mimic
from byzrsa.attacks.optimised import DIRECTIONS, min_max, min_sum
from byzrsa.attacks.rsa_aware import TARGETS, rsa_aware
from byzrsa.attacks.statistical import alie, alie_check, ipm
from byzrsa.registry import Option, Registry, at_least, finite, in_range, non_negative, one_of, positive

__all__ = [
    "Attack",
    "AttackContext",
    "ATTACKS",
    "get_attack",
    "check_attack",
    "same_value",
    "sign_flip",
    "copy_worker",
    "negated_copy",
    "gaussian",
    "non_finite",
    "negative_sum",
    "honest",
    "flip_labels",
    "alie",
    "ipm",
    "min_max",
    "min_sum",
    "mimic",
    "alie_opt",
    "ipm_opt",
    "rsa_aware",
    "dissensus",
    "isolation",
]


def _search_options(what: str) -> tuple[Option, ...]:
    return (
        Option("low", float, 0.01, f"smallest {what} searched (> 0)", positive),
        Option("high", float, 100.0, f"largest {what} searched (> low)", positive),
        Option("grid", int, 17, "grid points, geometric over [low, high]", at_least(2)),
        Option("refine", int, 10, "golden-section steps after the grid", at_least(0)),
    )


_AGNOSTIC_OPTIONS = (
    Option("direction", str, "std", "perturbation p: std (-sigma), unit (-mu/|mu|) or sign (-sign mu)",
           one_of(*DIRECTIONS)),
    Option("gamma_init", float, 10.0, "first factor gamma tried by the search", positive),
    Option("tol", float, 1e-5, "relative width of the final bisection bracket",
           in_range(0.0, 1.0, open_low=True, open_high=True)),
)

ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register(Attack(
    "none", honest, "no attack", "the Byzantine workers behave", reads_regular=False, needs_own=True,
))
ATTACKS.register(Attack(
    "same-value", same_value, "same-value", "send c * 1",
    options=(Option("c", float, 100.0, "the value sent in every entry", aliases=("--c",)),), reads_regular=False,
))
ATTACKS.register(Attack(
    "sign-flip", sign_flip, "sign-flip", "send sigma times the true value",
    options=(Option("sigma", float, -4.0, "multiplier of the true value", aliases=("--sigma",)),),
    reads_regular=False, needs_own=True,
))
ATTACKS.register(Attack(
    "copy", copy_worker, "copy", "send regular worker r's message",
    options=(Option("copy_from", int, 0, "index of the regular worker copied (0 = first)", aliases=("--copy-from",)),),
    check=copy_check,
))
ATTACKS.register(Attack(
    "negated-copy", negated_copy, "negated copy", "send minus regular worker r's message",
    options=(Option("copy_from", int, 0, "index of the regular worker negated (0 = first)"),),
    check=copy_check,
))
ATTACKS.register(Attack(
    "gaussian", gaussian, "gaussian", "send N(0, std^2) noise",
    options=(
        Option("std", float, 200.0, "standard deviation", non_negative),
        Option("around", str, "zero", "centre of the noise: zero, or mean (of the regular messages)",
               one_of("zero", "mean")),
    ),
))
ATTACKS.register(Attack(
    "non-finite", non_finite, "non-finite", "send NaN or inf",
    options=(Option("value", float, math.nan, "nan, inf or -inf"),), reads_regular=False, check=non_finite_check,
))
ATTACKS.register(Attack("negative-sum", negative_sum, "negative-sum", "send minus the sum of the regular messages"))
ATTACKS.register(Attack(
    "alie", alie, "ALIE", "a little is enough: send mu - z sigma (Baruch et al. 2019)",
    options=(Option("z", float, None, "the factor z (default: the paper's z_max from n and q)", finite,
                    optional=True),),
    check=alie_check,
))
ATTACKS.register(Attack(
    "ipm", ipm, "IPM", "inner-product manipulation: send -epsilon mu (Xie et al. 2019)",
    options=(Option("epsilon", float, 0.1, "the factor epsilon (> 0)", positive),),
))
ATTACKS.register(Attack(
    "min-max", min_max, "min-max", "mu + gamma p, no farther from any regular message than the farthest pair",
    options=_AGNOSTIC_OPTIONS,
))
ATTACKS.register(Attack(
    "min-sum", min_sum, "min-sum", "mu + gamma p, squared distances summing no more than any regular message's",
    options=_AGNOSTIC_OPTIONS,
))
ATTACKS.register(Attack(
    "mimic", mimic, "mimic", "send the regular worker farthest along the top principal direction (Karimireddy et al.)",
    options=(Option("warmup", int, 1, "rounds during which the mimicked worker is re-chosen", at_least(1)),),
))
ATTACKS.register(Attack(
    "label-flip", honest, "label-flip", "train honestly on labels y -> C - 1 - y",
    reads_regular=False, needs_own=True, label_map=flip_labels,
))
ATTACKS.register(Attack(
    "alie-opt", alie_opt, "ALIE (opt.)", "mu - z sigma with z searched to move the defence's output most",
    options=_search_options("factor z"), needs_defence=True, check=partial(search_check, "alie-opt"),
))
ATTACKS.register(Attack(
    "ipm-opt", ipm_opt, "IPM (opt.)", "-epsilon mu with epsilon searched to move the defence's output most",
    options=_search_options("factor epsilon"), needs_defence=True, check=partial(search_check, "ipm-opt"),
))
ATTACKS.register(Attack(
    "rsa-aware", rsa_aware, "RSA-aware", "spend the q alpha lambda budget of RSA's master step along a target",
    options=(Option("target", str, "against-pull", "direction pushed: against-pull, negative-x0 or ones",
                    one_of(*TARGETS)),),
    needs_master=True,
))

ATTACKS.register(Attack(
    "dissensus", dissensus, "dissensus",
    "graph only: x_i - eps sum_j W_ij (x_j - x_i) / sum_b W_ib, pushing regular nodes apart (He et al. 2022)",
    options=(Option("eps", float, 1.5, "strength epsilon (1 = isolation)", finite),), needs_graph=True,
))
ATTACKS.register(Attack(
    "isolation", isolation, "isolation",
    "graph only: what makes the receiver's weighted average its own model (Wu, Chen, Ling 2023)", needs_graph=True,
))


def get_attack(name: str) -> Attack:
    """The attack called ``name``; :class:`ConfigError` listing the valid names otherwise."""
    return ATTACKS[name]


def check_attack(name: str, regular: int, byzantine: int, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate an attack's settings before training; return its resolved options."""
    attack = get_attack(name)
    resolved = attack.resolve(options, "attack")
    if attack.check is not None:
        attack.check(regular, byzantine, resolved)
    return resolved
