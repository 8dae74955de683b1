"""The robustness benchmark's named grids, as plain data (``byzrsa bench --list``).

Each preset is a :class:`~byzrsa.experiments.bench.grid.Grid`: what every run
shares (``base``) and the axes crossed (levels, methods with their starting
hyper-parameters, attacks, q, declared f, seeds). docs/bench.md describes each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from byzrsa.experiments.bench.grid import (
    BY_LABEL,
    DIR01,
    DIR1,
    IID,
    LEVELS,
    SORTED,
    AttackSpec,
    Grid,
    Level,
    MethodSpec,
    Tuning,
    describe_grid,
    grid_from_dict,
    load_grid,
    resolve_f,
)
from byzrsa.experiments.bench.published import EXP3_PUBLISHED, RSA_PAPER_PUBLISHED
from byzrsa.experiments.graph_presets import GRAPH_PRESETS

__all__ = ["PRESETS", "QUICK", "PAPER_PLUS", "FMNIST_CNN", "BUCKETING_EXP3", "describe_presets",
           # the grid's types, for convenience
           "MethodSpec", "AttackSpec", "Level", "Tuning", "Grid", "LEVELS", "IID", "DIR1", "DIR01", "BY_LABEL",
           "SORTED", "load_grid", "grid_from_dict", "resolve_f", "describe_grid"]

# --------------------------------------------------------------------------- building blocks

_attack = AttackSpec.of


NONE = _attack("none", "none")
SIGN_FLIP = _attack("sign-flip", "sign-flip", sigma=-4.0)
BIT_FLIP = _attack("sign-flip", "sign-flip", sigma=-1.0)  # the bucketing paper's "bit flipping"
ALIE = _attack("ALIE", "alie")
IPM = _attack("IPM 0.1", "ipm", epsilon=0.1)
MIMIC = _attack("mimic", "mimic")
LABEL_FLIP = _attack("label-flip", "label-flip")
ZERO = _attack("zero", "same-value", c=0.0)  # every Byzantine worker sends the zero vector
NEGATED_COPY = _attack("negated copy", "negated-copy")

#: named presets publish with at least five seeds: paired comparisons over 5 seeds have 4 degrees of freedom
SEEDS = (0, 1, 2, 3, 4)


_m = MethodSpec.of


def _bucketing(spec: MethodSpec, s: int = 2) -> MethodSpec:
    return MethodSpec(f"Bucketing + {spec.label}", {**spec.settings, "pre": [{"name": "bucketing", "s": s}]},
                      spec.tune)


def _nnm(spec: MethodSpec) -> MethodSpec:
    return MethodSpec(f"NNM + {spec.label}", {**spec.settings, "pre": ["nnm"]}, spec.tune)


# --------------------------------------------------------------------------- presets

# quick: step sizes are a/sqrt(k) on [0, 1] pixels; the starting points come from short sweeps on
# mnist-sample and were then moved up by 3x where the first full `bench quick` chose the upper edge of the
# searched range at most levels (docs/bench.md, "Starting points"); tuning searches a factor 3 either side.
_QUICK_CCLIP = _m("CClip (momentum 0.9)", "cclip", 3.0, momentum=0.9, **{"method.tau": 0.3333})
QUICK = Grid(
    name="quick",
    description="softmax regression on mnist-sample, 20 workers of which 4 Byzantine, 200 iterations: "
    "the whole table (tuning included) in minutes on 2 cores",
    base={"dataset": "mnist-sample", "pixels": "unit", "model": "softmax", "workers": 20, "batch_size": 32,
          "iterations": 200, "eval_every": 20, "lr_schedule": "sqrt", "mu": 0.01},
    levels=LEVELS,
    methods=(
        # RSA l1's worst case (sign-flip) wants a small lambda at 200 iterations: a sweep on a validation split
        # (docs/bench.md, "Starting points") found it near 1e-4..3e-4; the default factors 1/3, 1, 3 and the
        # extension past an edge replace the earlier fixed 3e-5..2.7e-3 range
        MethodSpec("RSA l1", {"method": "rsa", "lr": 9.0, "norm": "l1", "lam": 3e-4}),
        # l2's penalty acts on the whole vector, so its lambda is larger: Theorem 1's lambda0 is 8-12x l1's on
        # these splits (byzrsa lambda0), and the paper's l2 lambda is 20x its l1 lambda (1.4 vs 0.07, raw pixels)
        MethodSpec("RSA l2", {"method": "rsa", "lr": 9.0, "norm": "l2", "lam": 3e-3}),
        _m("Ideal SGD", "ideal-sgd", 3.0),
        _m("SGD", "sgd", 3.0),
        _m("Median", "median", 0.9),
        _m("Trimmed mean", "trimmed-mean", 3.0),
        _m("GeoMed", "geomed", 3.0),
        _m("Krum", "krum", 0.9),
        _QUICK_CCLIP,
        _bucketing(_QUICK_CCLIP),
    ),
    attacks=(NONE, SIGN_FLIP, ALIE, IPM, MIMIC, LABEL_FLIP),
    byzantine=(4,),
    seeds=SEEDS,
    tuning=Tuning(validation=0.2, seeds=(0,)),
)

# paper-plus: the paper's setting (raw pixels, softmax, m = 20, batch 32, 5000 iterations, a/sqrt(k),
# f0 = 0.01/2 |x|^2) with the authors' step sizes as starting points and every defence and attack added.
_PP_CCLIP = _m("CClip", "cclip", 1e-4, **{"method.tau": 100.0})
_PP_KRUM = _m("Krum", "krum", 1e-4)
PAPER_PLUS = Grid(
    name="paper-plus",
    description="the RSA paper's setting (softmax, raw pixels, m=20, 5000 iterations, q=4 and 8) "
    "with today's defences and attacks added",
    base={"dataset": "mnist-sample", "pixels": "raw", "model": "softmax", "workers": 20, "batch_size": 32,
          "iterations": 5000, "eval_every": 100, "lr_schedule": "sqrt", "mu": 0.01},
    levels=LEVELS,
    methods=(
        _m("RSA l1", "rsa", 0.001, norm="l1", lam=0.07),
        _m("RSA l2", "rsa", 0.001, norm="l2", lam=1.4),  # the paper's fig 8 values
        _m("Ideal SGD", "ideal-sgd", 1e-4),
        _m("SGD", "sgd", 1e-4),
        _m("GeoMed", "geomed", 1e-4),
        _PP_KRUM,
        _m("Median", "median", 5e-5),
        _m("Trimmed mean", "trimmed-mean", 1e-4),
        _m("Multi-Krum", "multi-krum", 1e-4),
        _m("Bulyan", "bulyan", 1e-4),
        _m("signSGD", "signsgd", 1e-3),
        _PP_CCLIP,
        _m("CClip (momentum 0.9)", "cclip", 1e-4, momentum=0.9, **{"method.tau": 100.0}),
        _bucketing(_PP_KRUM),
        _nnm(_PP_KRUM),
        _nnm(_PP_CCLIP),
    ),
    attacks=(NONE, _attack("same-value", "same-value", c=100.0), SIGN_FLIP, ALIE, IPM,
             _attack("min-max", "min-max"), _attack("min-sum", "min-sum"), MIMIC, LABEL_FLIP,
             _attack("ALIE-opt", "alie-opt"), _attack("IPM-opt", "ipm-opt"), _attack("RSA-aware", "rsa-aware"),
             ZERO, NEGATED_COPY, _attack("copy", "copy", copy_from=1)),
    byzantine=(4, 8),
    seeds=SEEDS,
    published=RSA_PAPER_PUBLISHED,
    notes=("Bulyan needs m >= 4f + 3: its q = 8 cells are not applicable with m = 20.",),
)

# fmnist-cnn: LeNet-5 on the full Fashion-MNIST (Debian's dataset-fashion-mnist or a download).
_FM_CCLIP = _m("CClip (momentum 0.9)", "cclip", 0.05, momentum=0.9, **{"method.tau": 10.0})
FMNIST_CNN = Grid(
    name="fmnist-cnn",
    description="LeNet-5 on the full Fashion-MNIST, 20 workers of which 4 Byzantine, 2000 iterations, "
    "constant step, worker momentum 0.9 (a GPU or a patient CPU)",
    base={"dataset": "fashion-mnist", "pixels": "unit", "model": "lenet5", "workers": 20, "batch_size": 32,
          "iterations": 2000, "eval_every": 100, "lr_schedule": "constant", "mu": 0.0},
    levels=LEVELS,
    methods=(
        _m("RSA l1", "rsa", 1.0, norm="l1", lam=0.01),
        _m("RSA l2", "rsa", 1.0, norm="l2", lam=0.1),  # l2's lambda about 10x l1's, as on mnist-sample
        _m("Ideal SGD", "ideal-sgd", 0.05, momentum=0.9),
        _m("SGD", "sgd", 0.05, momentum=0.9),
        _m("Median", "median", 0.05, momentum=0.9),
        _m("Trimmed mean", "trimmed-mean", 0.05, momentum=0.9),
        _m("GeoMed", "geomed", 0.05, momentum=0.9),
        _m("Krum", "krum", 0.05, momentum=0.9),
        _m("Bulyan", "bulyan", 0.05, momentum=0.9),
        _FM_CCLIP,
        _bucketing(_FM_CCLIP),
        _nnm(_FM_CCLIP),
    ),
    attacks=(NONE, SIGN_FLIP, ALIE, IPM, _attack("min-max", "min-max"), MIMIC, LABEL_FLIP, ZERO, NEGATED_COPY),
    byzantine=(4,),
    seeds=SEEDS,
)

# bucketing-exp3: Karimireddy, He, Jaggi (ICLR 2022), experiment 3. Their workers keep a momentum
# buffer m = beta m + g and step lr = 0.01 along it; byzrsa's worker momentum is m = beta m + (1 - beta) g,
# so the same steps take lr = 0.01 / (1 - beta) = 0.1, and their tau = 10 / (1 - beta) is tau = 10 here.
# The baselines keep the paper's values (tune {"lr": ()}: not tuned); RSA, which the paper does not run,
# is tuned around a start from a short sweep (lenet5 on mnist-sample, 200 iterations, no attack: lr 2.5 with
# lambda 1e-4 reached 0.43, lambda 3e-5 and 1e-3 failed; its workers step along grad/m, m = 25).
_E3 = {"momentum": 0.9}
_PAPERS = {"lr": ()}


def _e3(label: str, method: str, **settings: Any) -> MethodSpec:
    return MethodSpec(label, {"method": method, "lr": 0.1, **_E3, **settings}, _PAPERS)


_E3_AGGS = (
    _e3("Krum", "krum"),
    _e3("Median", "median"),
    _e3("GeoMed (RFA, 8 iterations)", "geomed", **{"method.max_iter": 8}),
    _e3("CClip", "cclip", **{"method.tau": 10.0, "method.iters": 3}),
)
BUCKETING_EXP3 = Grid(
    name="bucketing-exp3",
    description="Karimireddy et al.'s heterogeneity experiment: 25 workers of which 5 Byzantine holding iid data, "
    "the regular ones on sorted-label shards, the PyTorch-example CNN, batch 32, lr 0.01 (their momentum form), "
    "600 iterations, momentum 0.9, with and without bucketing s=2; plus RSA",
    base={"dataset": "mnist", "pixels": "unit", "model": "cnn", "workers": 25, "batch_size": 32,
          "iterations": 600, "eval_every": 30, "lr_schedule": "constant", "mu": 0.0},
    levels=(SORTED,),
    methods=(
        _m("RSA l1", "rsa", 2.5, norm="l1", lam=1e-4),
        _m("RSA l2", "rsa", 2.5, norm="l2", lam=1e-3),  # l2's lambda about 10x l1's, as on mnist-sample
        _e3("Ideal SGD", "ideal-sgd"),
        _e3("SGD", "sgd"),
        *_E3_AGGS,
        *(_bucketing(spec) for spec in _E3_AGGS),
    ),
    attacks=(NONE, ALIE, IPM, LABEL_FLIP, MIMIC, BIT_FLIP),
    byzantine=(5,),
    seeds=SEEDS,
    published=EXP3_PUBLISHED,
    tuning=Tuning(validation=0.1, seeds=(0,), lr=(0.5, 1.0, 2.0), lam=(1 / 3, 1.0, 3.0), tau=(1.0,)),
    notes=(
        "Momentum: the paper's lr 0.01 with m = 0.9 m + g equals lr 0.1 with byzrsa's m = 0.9 m + 0.1 g.",
        "Data: each Byzantine worker holds floor(n/25) iid samples, the regular workers sorted-label shards of "
        "the rest (the split 'sorted-shards'); in the authors' code the Byzantine samples overlap the regular ones.",
        "The baselines run at the paper's values (not tuned); only RSA, absent from the paper, is tuned. "
        "--untuned runs RSA at its starting point too.",
    ),
)

#: Named grids, as listed by ``byzrsa bench --list``.
PRESETS: dict[str, Grid] = {g.name: g for g in (QUICK, PAPER_PLUS, FMNIST_CNN, BUCKETING_EXP3, *GRAPH_PRESETS)}


def describe_presets(presets: Sequence[Grid] | None = None) -> str:
    return "\n\n".join(describe_grid(g) for g in (presets or PRESETS.values()))
