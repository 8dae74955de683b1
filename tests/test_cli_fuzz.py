"""Every bad input a one-line error: bad values for every option of every registry entry and every run setting.

The cases are generated from the registries, so a component added later is
covered by its options automatically. Each case must exit with status 2, print
one line on stderr starting ``byzrsa: error:``, raise nothing, and leave no
results folder behind.
"""

from __future__ import annotations

import json

import pytest

from byzrsa.aggregators import RULES
from byzrsa.attacks import ATTACKS
from byzrsa.cli import main
from byzrsa.models import MODELS
from byzrsa.preaggregators import PRE_AGGREGATORS


def _bad_values(opt) -> list[str]:
    if opt.type is int:
        return ["abc", "2.5"]
    if opt.type is float:
        return ["abc", "1,5"]
    if opt.type is bool:
        return ["maybe"]
    return ["zz-not-a-choice"] if opt.check is not None else []


def _component_cases() -> list[tuple[str, list[str]]]:
    cases = []
    for name, rule in RULES.items():
        for opt in rule.options:
            for bad in _bad_values(opt):
                cases.append((f"rule {name}.{opt.name}={bad}", ["--method", name, "--set", f"method.{opt.name}={bad}"]))
    for name, attack in ATTACKS.items():
        for opt in attack.options:
            for bad in _bad_values(opt):
                cases.append((f"attack {name}.{opt.name}={bad}",
                              ["--attack", name, "--byzantine", "2", "--set", f"attack.{opt.name}={bad}"]))
        cases.append((f"attack {name} unknown option", ["--attack", name, "--set", "attack.no_such_option=1"]))
    for name, pre in PRE_AGGREGATORS.items():
        for opt in pre.options:
            for bad in _bad_values(opt):
                cases.append((f"pre {name}.{opt.name}={bad}", ["--method", "median", "--pre", name, "--set",
                                                               f"pre.{name}.{opt.name}={bad}"]))
    for name, model in MODELS.items():
        for opt in model.options:
            for bad in _bad_values(opt):
                cases.append((f"model {name}.{opt.name}={bad}", ["--model", name, "--set", f"model.{opt.name}={bad}"]))
    return cases


SETTINGS = {
    "method": ["teleport"], "attack": ["teleport"], "model": ["teleport"], "pre": ["teleport"],
    "dataset": ["teleport"], "split": ["teleport"], "pixels": ["grey"], "dtype": ["float16"], "engine": ["mpi"],
    "backend": ["mpi"], "lr_schedule": ["cosine"], "master_order": ["random"], "device": ["cudafoo", "gpu"],
    "norm": ["l0", "0.5", "abc"], "workers": ["0", "abc"], "byzantine": ["-1", "20"], "lr": ["0", "inf", "nan", "abc"],
    "lam": ["-1", "inf"], "mu": ["nan", "-0.1"], "momentum": ["1", "-0.5"], "batch_size": ["0", "10000000000"],
    "iterations": ["0", "1.5"], "eval_every": ["0"], "seed": ["-1", "x"], "threads": ["0"], "heterogeneity": ["2"],
    "checkpoint_every": ["-1"], "agg_f": ["-1"], "dirichlet_alpha": ["0", "inf"], "timeout": ["0", "inf"],
    "validation": ["1", "-0.1"], "plugins": ["no_such_module_xyz"],
}
SETTING_CASES = [(f"{key}={value}", ["--set", f"{key}={value}"]) for key, values in SETTINGS.items() for value in values]
IMPOSSIBLE = [
    ("krum too many outliers", ["--method", "krum", "--byzantine", "9"]),
    ("bulyan too many outliers", ["--method", "bulyan", "--byzantine", "5"]),
    ("pre-aggregator on rsa", ["--pre", "nnm"]),
    ("momentum on rsa", ["--momentum", "0.9"]),
    ("option of another component", ["--method", "krum", "--geomed-tol", "1e-3"]),
    ("attack constant overflows float32", ["--attack", "same-value", "--byzantine", "2", "--attack-c", "1e39"]),
    ("dotted key of no component", ["--set", "network.depth=3"]),
    ("pre option of a pre-aggregator not in the chain", ["--method", "median", "--set", "pre.nnm.x=1"]),
]


@pytest.mark.parametrize("case", [c for c in _component_cases() + SETTING_CASES + IMPOSSIBLE], ids=lambda c: c[0])
def test_bad_value_is_one_line_error(case, tmp_path, capsys):
    _, args = case
    out = tmp_path / "out"
    code = main(["run", "--dataset", "mnist-sample", "--iterations", "2", "--quiet", "--out", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (case, err)
    assert len(err) == 1 and err[0].startswith("byzrsa: error:"), err
    assert not out.exists()  # nothing half-written


def test_bad_files_and_paths_are_one_line_errors(tmp_path, capsys):
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\x00\xff\xfe binary \x89PNG")
    latin = tmp_path / "latin.toml"
    latin.write_bytes('dataset = "caf\xe9"\n'.encode("latin-1"))
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2]))
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [
        ["--config", str(binary)], ["--config", str(latin)], ["--config", str(listed)],
        ["--config", str(tmp_path / "missing.toml")], ["--out", str(a_file)], ["--out", str(a_file / "under")],
        ["--resume", str(tmp_path / "nothing-here")],
    ]
    for args in cases:
        code = main(["run", "--dataset", "mnist-sample", "--iterations", "2", "--quiet", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("byzrsa: error:"), (args, err)


def test_the_fuzz_covers_every_registered_component():
    cases = " ".join(name for name, _ in _component_cases())
    for registry, kind in ((RULES, "rule"), (ATTACKS, "attack"), (PRE_AGGREGATORS, "pre"), (MODELS, "model")):
        for name, entry in registry.items():
            for opt in entry.options:
                if _bad_values(opt):
                    assert f"{kind} {name}.{opt.name}=" in cases
