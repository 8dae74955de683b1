"""The decentralized papers' experiments as benchmark grids (``byzrsa bench ios-tsp2023``, ``byzrsa bench drsa-sp2021``).

Each level is a topology with a split; every method name means its
decentralized counterpart (docs/decentralized.md). The settings are the
papers' where they publish them; where they do not (or where byzrsa has no
equivalent), the grid's notes say what was chosen instead. The step sizes are
the papers' starting points and the bench tunes them on a validation split as
for every grid (``--untuned`` keeps them).
"""

from __future__ import annotations

import math
from typing import Any

from byzrsa.experiments.bench_grid import AttackSpec, Grid, Level, MethodSpec, Tuning

__all__ = ["IOS_TSP2023", "DRSA_SP2021", "GRAPH_PRESETS"]


def _attack(label: str, name: str, **options: Any) -> AttackSpec:
    return AttackSpec(label, {"attack": name, **{f"attack.{k}": v for k, v in options.items()}})


def _m(label: str, method: str, lr: float, **settings: Any) -> MethodSpec:
    return MethodSpec(label, {"method": method, "lr": lr, **settings})


_SEEDS = (0, 1, 2, 3, 4)

# IOS: Wu, Chen, Ling, "Byzantine-resilient decentralized stochastic optimization with robust aggregation rules",
# IEEE TSP 2023 (code github.com/Zhaoxian-Wu/IOS): softmax regression, 12 nodes of which 2 Byzantine, lr
# 0.9/sqrt(k+1) (= byzrsa's a/sqrt(k) with a = 0.9, k from 1), weight decay 0.01.
IOS_TSP2023 = Grid(
    name="ios-tsp2023",
    description="the IOS paper's decentralized experiment: softmax regression, 12 nodes of which 2 Byzantine on an "
    "Erdos-Renyi graph (p = 0.7) and on two-castle, iid and one class per regular node, every neighbour rule",
    base={"dataset": "mnist-sample", "pixels": "unit", "model": "softmax", "workers": 12, "batch_size": 32,
          "iterations": 2000, "eval_every": 100, "lr_schedule": "sqrt", "mu": 0.01},
    levels=(
        Level("er iid", {"topology": "er", "split": "iid"}),
        Level("er one class", {"topology": "er", "split": "label-separated"}),
        Level("two-castle iid", {"topology": "two-castle", "split": "iid"}),
        Level("two-castle one class", {"topology": "two-castle", "split": "label-separated"}),
    ),
    methods=(
        _m("Mean (gossip)", "mean", 0.9),
        _m("Median", "median", 0.9),
        _m("GeoMed", "geomed", 0.9),
        _m("Krum", "krum", 0.9),
        _m("Trimmed mean (BRIDGE)", "trimmed-mean", 0.9),
        _m("DRSA l1", "rsa", 0.9, norm="l1", lam=0.05),
        _m("DRSA l2", "rsa", 0.9, norm="l2", lam=0.5),
        _m("ClippedGossip", "cclip", 0.9, **{"method.tau": 1.0}),
        _m("IOS", "ios", 0.9),
    ),
    attacks=(
        _attack("none", "none"),
        _attack("gaussian", "gaussian", std=math.sqrt(30.0), around="mean"),
        _attack("sign-flip", "sign-flip", sigma=-4.0),
        _attack("isolation", "isolation"),
        _attack("copy", "copy", copy_from=0),
        _attack("ALIE", "alie"),
    ),
    byzantine=(2,),
    seeds=_SEEDS,
    tuning=Tuning(validation=0.2, seeds=(0,), iterations=500),
    notes=(
        "Data: mnist-sample (5000 digits, offline) instead of full MNIST; --dataset mnist runs the full set.",
        "Iterations: 2000 (shorter than the paper's runs, affordable on 2 cores); the report's convergence column "
        "says whether each cell had settled.",
        "Gaussian: the receiver's honest neighbours' mean plus N(0, 30) per coordinate (the paper's variance 30).",
        "Sample-duplicating: the paper's Byzantine nodes train on a regular node's samples; here 'copy' sends the "
        "receiver's first regular neighbour's model, which is what such a node converges to.",
        "DRSA and ClippedGossip are the paper's baselines; their lambda and tau are starting points for tuning "
        "(DRSA's from 300-iteration runs without attack on the by-label split of drsa-sp2021: lambda 0.005, 0.05, "
        "0.2 reached 0.51, 0.82, 0.75).",
    ),
)

# DRSA: Peng, Ling, "Byzantine-robust decentralized stochastic optimization over static and time-varying
# networks", Signal Processing 2021: softmax regression, 30 nodes, Erdos-Renyi p = 0.7, batch 32, a/sqrt(k),
# f0 = 0.01/2 ||x||^2, 5000 iterations, label-sorted data.
DRSA_SP2021 = Grid(
    name="drsa-sp2021",
    description="the DRSA paper's experiment: softmax regression, 30 nodes on an Erdos-Renyi graph (p = 0.7), "
    "label-sorted data, DRSA against gossip (DPSGD) and BRIDGE (trimmed mean)",
    base={"dataset": "mnist-sample", "pixels": "unit", "model": "softmax", "workers": 30, "batch_size": 32,
          "iterations": 5000, "eval_every": 250, "lr_schedule": "sqrt", "mu": 0.01, "topology": "er"},
    levels=(Level("er by-label", {"split": "by-label"}), Level("er iid", {"split": "iid"})),
    methods=(
        _m("DRSA l1", "rsa", 0.5, norm="l1", lam=0.05),
        _m("DRSA l2", "rsa", 0.5, norm="l2", lam=0.5),
        _m("DPSGD (gossip)", "mean", 0.5),
        _m("BRIDGE (trimmed mean)", "trimmed-mean", 0.5),
    ),
    attacks=(
        _attack("none", "none"),
        _attack("same-value", "same-value", c=100.0),
        _attack("sign-flip", "sign-flip", sigma=-4.0),
        _attack("copy", "copy", copy_from=0),
    ),
    byzantine=(3,),
    seeds=_SEEDS,
    tuning=Tuning(validation=0.2, seeds=(0,), iterations=1000),
    notes=(
        "Data: mnist-sample instead of full MNIST; 'by-label' gives three nodes each class (the Byzantine nodes the "
        "last class), the paper's label-sorted split.",
        "Byzantine nodes: 3 of 30 (10%); the paper varies their number.",
        "Sample-duplicating: 'copy' sends the receiver's first regular neighbour's model (see ios-tsp2023).",
    ),
)

GRAPH_PRESETS: tuple[Grid, ...] = (IOS_TSP2023, DRSA_SP2021)
