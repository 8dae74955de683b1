"""The decentralized papers' experiments as benchmark grids (``byzrsa bench ios-tsp2023``, ``byzrsa bench drsa-sp2021``).

Each level is a topology with a split; every method name means its
decentralized counterpart (docs/decentralized.md). The settings are the
papers' where they publish them; where they do not (or where byzrsa has no
equivalent), the grid's notes say what was chosen instead. The step sizes are
the papers' starting points and the bench tunes them on a validation split as
for every grid (``--untuned`` keeps them).
"""

from __future__ import annotations


from byzrsa.experiments.bench.grid import AttackSpec, Grid, Level, MethodSpec, Published, Tuning

__all__ = ["IOS_TSP2023", "IOS_PUBLISHED", "DRSA_SP2021", "GRAPH_PRESETS"]


_attack, _m = AttackSpec.of, MethodSpec.of


_SEEDS = (0, 1, 2, 3, 4)

# IOS: Wu, Chen, Ling, "Byzantine-resilient decentralized stochastic optimization with robust aggregation rules",
# IEEE TSP 2023 (code github.com/Zhaoxian-Wu/IOS): softmax regression, 12 nodes of which 2 Byzantine, lr
# 0.9/sqrt(k+1) (= byzrsa's a/sqrt(k) with a = 0.9, k from 1), weight decay 0.01.
# The IOS paper's tables (softmax regression on MNIST, 12 nodes, b = 2: Erdos-Renyi p = 0.7 with graph seed 300,
# and two castles k = 6 with seed 40), top-1 test accuracy in %, as released in the authors' repository
# (github.com/Zhaoxian-Wu/IOS, draw_table/table/dec_SR_mnist_*.tex). Columns: no attack, Gaussian, sign-flipping,
# isolation, sample-duplicating; rows as byzrsa names them (WeiMean = gossip, CooMed = median, TriMean = trimmed
# mean, SCC = self-centred clipping = ClippedGossip; their CC and FABA have no entry here).
_IOS_TABLES = {
    "er iid": {
        "Mean (gossip)": (91.48, 15.79, 21.69, 89.66, 91.47), "Median": (91.23, 91.45, 86.52, 91.21, 91.24),
        "GeoMed": (91.35, 91.45, 86.31, 89.66, 91.35), "Krum": (90.13, 91.45, 90.12, 90.11, 90.48),
        "Trimmed mean (BRIDGE)": (91.47, 91.45, 85.46, 91.29, 91.35), "DRSA l1": (91.45, 91.44, 89.82, 91.33, 91.45),
        "ClippedGossip": (91.49, 91.48, 24.78, 91.29, 91.47), "IOS": (91.47, 91.47, 91.47, 91.47, 91.40),
    },
    "er one class": {
        "Mean (gossip)": (91.43, 17.00, 36.99, 9.87, 91.40), "Median": (73.81, 77.11, 65.80, 34.38, 78.15),
        "GeoMed": (87.28, 87.99, 9.75, 9.87, 87.96), "Krum": (19.44, 19.91, 19.91, 19.91, 29.87),
        "Trimmed mean (BRIDGE)": (91.31, 90.03, 70.60, 53.93, 87.00), "DRSA l1": (65.17, 89.55, 10.84, 88.36, 79.88),
        "ClippedGossip": (91.47, 91.35, 44.20, 85.99, 91.39), "IOS": (91.28, 91.42, 91.42, 91.38, 87.49),
    },
    "two-castle iid": {
        "Mean (gossip)": (91.41, 10.27, 14.88, 89.66, 91.50), "Median": (91.13, 91.45, 86.20, 91.12, 91.16),
        "GeoMed": (91.33, 91.45, 86.21, 89.66, 91.38), "Krum": (89.78, 91.48, 89.72, 89.87, 90.15),
        "Trimmed mean (BRIDGE)": (91.45, 91.48, 85.19, 91.30, 91.35), "DRSA l1": (91.46, 91.47, 89.48, 91.37, 91.47),
        "ClippedGossip": (91.49, 91.49, 23.71, 91.38, 91.50), "IOS": (91.48, 91.50, 91.50, 91.50, 91.39),
    },
    "two-castle one class": {
        "Mean (gossip)": (91.45, 21.16, 34.86, 9.87, 91.49), "Median": (77.06, 73.24, 73.35, 32.74, 80.07),
        "GeoMed": (89.11, 73.19, 9.86, 9.87, 89.86), "Krum": (18.82, 19.88, 19.00, 19.88, 28.71),
        "Trimmed mean (BRIDGE)": (91.47, 73.21, 71.56, 57.87, 86.65), "DRSA l1": (78.86, 89.66, 9.87, 79.99, 87.71),
        "ClippedGossip": (91.50, 91.41, 44.79, 86.90, 91.50), "IOS": (91.48, 91.52, 91.52, 91.48, 88.47),
    },
}
_IOS_SOURCE = ("Wu, Chen, Ling, IEEE TSP 2023, tables of accuracy and consensus error (released as "
               "github.com/Zhaoxian-Wu/IOS draw_table/table/dec_SR_mnist_{ER_n=12_b=2_p=0.7_seed=300,"
               "TwoCastle_k=6_b=2_seed=40}_{iidPartition,LabelSeperation}.tex)")
_IOS_DIFF = ("paper: full MNIST, its graph draws (ER seed 300), its iterations and Byzantine nodes, sample-duplicating "
             "as a data attack; byzrsa: mnist-sample, the preset's iterations and seeds, 'copy' for sample-duplicating")
IOS_PUBLISHED = tuple(
    Published(level, 2, attack, _IOS_SOURCE, {m: v[i] / 100 for m, v in table.items()}, (), _IOS_DIFF)
    for level, table in _IOS_TABLES.items()
    for i, attack in enumerate(("none", "gaussian", "sign-flip", "isolation", "copy"))
)

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
        _attack("gaussian", "gaussian", std=30.0, around="mean"),
        _attack("sign-flip", "ipm", epsilon=1.0),
        _attack("isolation", "isolation"),
        _attack("copy", "copy", copy_from=0),
        _attack("ALIE", "alie"),
    ),
    byzantine=(2,),
    seeds=_SEEDS,
    tuning=Tuning(validation=0.2, seeds=(0,), iterations=500),
    published=IOS_PUBLISHED,
    notes=(
        "Data: mnist-sample (5000 digits, offline) instead of full MNIST; --dataset mnist runs the full set.",
        "Iterations: 2000 (shorter than the paper's runs, affordable on 2 cores); the report's convergence column "
        "says whether each cell had settled.",
        "Gaussian: the receiver's honest neighbours' mean plus noise of standard deviation 30 per coordinate "
        "(the authors' code: D_gaussian, scale 30).",
        "Sign-flip: minus the mean of the receiver's honest neighbours (the authors' D_sign_flipping, scale 1, "
        "which also averages the receiver itself in), i.e. byzrsa's IPM with epsilon 1.",
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
