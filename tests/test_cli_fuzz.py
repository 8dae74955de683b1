"""Every bad input a one-line error: hostile values for every option of every registry entry and every run setting.

The cases are generated from the registries (``RULES``, ``PRE_AGGREGATORS``,
``ATTACKS``, ``MODELS``) and from :data:`byzrsa.config.KEYS`, so a component or
setting added later is covered automatically. Each case drives ``main()`` in
process and must end in one of two ways: exit status 2 with one line on stderr
starting ``byzrsa: error:`` and no results folder left behind, or (a hostile
value the run accepts, such as an infinite attack constant) exit status 0 with
a folder whose state is ``completed``. Anything else (a traceback, another
status, a folder that misreports its state) fails the case.
"""

from __future__ import annotations

import json
import typing

import pytest
import torch

from byzrsa.aggregators import RULES
from byzrsa.attacks import ATTACKS
from byzrsa.cli import main
from byzrsa.config import KEYS, RunConfig
from byzrsa.errors import ConfigError
from byzrsa.folders import run_state
from byzrsa.models import MODELS
from byzrsa.preaggregators import PRE_AGGREGATORS

# Small enough that an accepted case costs a fraction of a second.
BASE = ["run", "--dataset", "mnist-sample", "--workers", "7", "--iterations", "1", "--eval-every", "1", "--quiet"]

FLOATS = ["abc", "1,5", "", "nan", "inf", "-inf", "-1", "0", "1e400", "3.5e38"]
INTS = ["abc", "2.5", "", "-1", "0", "true", "99999999999999999999"]
STRINGS = ["zz-not-a-choice", ""]


def _hostile(kind: type) -> list[str]:
    return {float: FLOATS, int: INTS, bool: ["maybe", "2"]}.get(kind, STRINGS)


def _flag(owner: str, option: str) -> str:
    return f"--{owner}-{option.replace('_', '-')}"


def _component_cases() -> list[tuple[str, list[str]]]:
    """(id, arguments) for every hostile value of every option of every registered component."""
    cases: list[tuple[str, list[str]]] = []

    def add(kind: str, name: str, opt, context: list[str], key: str, owner: str) -> None:
        for i, bad in enumerate(_hostile(opt.type)):
            # the derived flag (what users type), and once per option the --set path as well
            cases.append((f"{kind} {name}.{opt.name}={bad!r}", [*context, _flag(owner, opt.name), bad]))
            if i == 0:
                cases.append((f"{kind} {name}.{opt.name}={bad!r} (--set)", [*context, "--set", f"{key}={bad}"]))

    for name, rule in RULES.items():
        for opt in rule.options:
            add("rule", name, opt, ["--method", name, "--byzantine", "1"], f"method.{opt.name}", name)
    for name, attack in ATTACKS.items():
        for opt in attack.options:
            add("attack", name, opt, ["--attack", name, "--byzantine", "2"], f"attack.{opt.name}", "attack")
        cases.append((f"attack {name} unknown option", ["--attack", name, "--set", "attack.no_such_option=1"]))
    for name, pre in PRE_AGGREGATORS.items():
        for opt in pre.options:
            add("pre", name, opt, ["--method", "median", "--byzantine", "1", "--pre", name], f"pre.{name}.{opt.name}", name)
    for name, model in MODELS.items():
        for opt in model.options:
            add("model", name, opt, ["--model", name], f"model.{opt.name}", name)
    return cases


def _setting_kind(key: str) -> type:
    hint = typing.get_type_hints(RunConfig)[key]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _setting_cases() -> list[tuple[str, list[str]]]:
    """Hostile values of every run setting (RunConfig's own keys), by the field's type."""
    cases = []
    for key in KEYS:
        kind = _setting_kind(key)
        values = _hostile(kind if kind in (int, float) else str)
        if kind in (int, float):
            values = [*values, "1e3"] if kind is int else values
        for value in values:
            cases.append((f"{key}={value!r}", ["--set", f"{key}={value}"]))
    return cases


# Combinations no single value shows, and strings the type check lets through.
IMPOSSIBLE = [
    ("krum too many outliers", ["--method", "krum", "--byzantine", "3"]),
    ("bulyan too many outliers", ["--method", "bulyan", "--byzantine", "2"]),
    ("pre-aggregator on rsa", ["--pre", "nnm"]),
    ("momentum on rsa", ["--momentum", "0.9"]),
    ("option of another component", ["--method", "krum", "--geomed-tol", "1e-3"]),
    ("attack constant overflows float32", ["--attack", "same-value", "--byzantine", "2", "--attack-c", "1e39"]),
    ("attack sigma overflows float32", ["--attack", "sign-flip", "--byzantine", "2", "--sigma", "-1e39"]),
    ("dotted key of no component", ["--set", "network.depth=3"]),
    ("pre option of a pre-aggregator not in the chain", ["--method", "median", "--set", "pre.nnm.x=1"]),
    ("the same pre-aggregator twice", ["--method", "median", "--pre", "nnm,nnm"]),
    ("device cudafoo", ["--device", "cudafoo"]),
    ("device cuda:-1", ["--device", "cuda:-1"]),
    ("nccl on cpu", ["--engine", "dist", "--backend", "nccl"]),
    ("threads beyond the machine", ["--threads", "100000"]),
    ("relative plugin path", ["--plugins", "../../x"]),
    ("plugin with a shell character", ["--plugins", "os;rm"]),
    ("a plugin that is not installed", ["--plugins", "no_such_plugin_module_xyz"]),
    ("10^4 dist workers", ["--engine", "dist", "--workers", "10000"]),
    ("batch of 10^10", ["--batch-size", "10000000000"]),
    ("10^8 workers", ["--workers", "100000000"]),
    ("a 10^9-unit hidden layer", ["--model", "mlp", "--mlp-hidden", "1000000000"]),
    ("an option's integer beyond 64 bits", ["--method", "cclip", "--cclip-iters", "99999999999999999999"]),
    ("copy from a Byzantine worker", ["--attack", "copy", "--byzantine", "2", "--copy-from", "6"]),
    ("checkpoints without a folder", ["--checkpoint-every", "1", "--no-out"]),
    ("unknown flag", ["--no-such-flag", "1"]),
    ("flag without its value", ["--lr"]),
    ("--set without =", ["--set", "lr"]),
]

CASES = _component_cases() + _setting_cases() + IMPOSSIBLE


def _drive(args: list[str], tmp_path, capsys) -> tuple[int, list[str], object]:
    out = tmp_path / "out"
    where = [] if "--no-out" in args else ["--out", str(out)]
    code = main([*BASE, *where, *(a for a in args if a != "--no-out")])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err, out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_hostile_value_is_a_one_line_error_or_a_clean_run(case, tmp_path, capsys):
    _, args = case
    threads = torch.get_num_threads()
    code, err, out = _drive(args, tmp_path, capsys)
    assert torch.get_num_threads() == threads  # the caller's thread count, whatever happened
    if code == 0:
        assert "--no-out" in args or run_state(out) == "completed", (case, err)
        return
    assert code == 2, (case, err)
    assert len(err) == 1 and err[0].startswith("byzrsa: error:"), err
    assert "Traceback" not in err[0]
    assert not out.exists()  # nothing half-written


def test_known_bad_values_are_refused(tmp_path, capsys):
    """The values the issue named (and their kin) must be errors, not accepted."""
    refused = [
        ["--threads", "0"], ["--seed", "-1"], ["--lr", "inf"], ["--lr", "nan"], ["--lam", "inf"], ["--mu", "nan"],
        ["--timeout", "inf"], ["--batch-size", "10000000000"], ["--device", "cudafoo"], ["--iterations", "0"],
        ["--method", "geomed", "--geomed-tol", "inf"], ["--seed", "99999999999999999999"],
        ["--attack", "same-value", "--byzantine", "2", "--attack-c", "1e39"],
        ["--attack", "gaussian", "--byzantine", "2", "--attack-std", "inf"],
        ["--model", "mlp", "--mlp-hidden", "1000000000"],
    ]
    for args in refused:
        code, err, out = _drive(args, tmp_path, capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("byzrsa: error:"), (args, err)
        assert not out.exists()


def test_bad_files_and_paths_are_one_line_errors(tmp_path, capsys):
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\x00\xff\xfe binary \x89PNG")
    latin = tmp_path / "latin.toml"
    latin.write_bytes('dataset = "caf\xe9"\n'.encode("latin-1"))
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2]))
    scalar = tmp_path / "scalar.json"
    scalar.write_text("3")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("lr = = 3\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    run_args = ["run", "--dataset", "mnist-sample", "--iterations", "2", "--quiet"]
    cases = [
        [*run_args, "--config", str(binary)], [*run_args, "--config", str(latin)],
        [*run_args, "--config", str(listed)], [*run_args, "--config", str(scalar)],
        [*run_args, "--config", str(bad_toml)], [*run_args, "--config", str(tmp_path)],
        [*run_args, "--config", str(tmp_path / "missing.toml")],
        [*run_args, "--out", str(a_file)], [*run_args, "--out", str(a_file / "under")], [*run_args, "--out", "/proc/x"],
        [*run_args, "--resume", str(tmp_path / "nothing-here")], [*run_args, "--resume", str(tmp_path)],
        [*run_args, "--data-dir", str(a_file), "--dataset", "mnist"],
        ["reproduce", "fig3", "--quick", "--out", str(a_file)], ["reproduce", "fig3", "--quick", "--out", "/proc/x"],
        ["reproduce", "fig3", "--quick", "--jobs", "0", "--out", str(tmp_path / "r")],
        ["reproduce", "fig3", "--quick", "--jobs", "-1", "--out", str(tmp_path / "r")],
        ["reproduce", "fig3", "--quick", "--jobs", "x", "--out", str(tmp_path / "r")],
        ["reproduce", "fig3", "--iterations", "0", "--out", str(tmp_path / "r")],
        ["reproduce", "fig3", "--quick", "--set", "lr=inf", "--out", str(tmp_path / "r")],
        ["reproduce", "fig99", "--out", str(tmp_path / "r")],
        ["tune", "--grid", "inf", "--out", str(tmp_path / "t")], ["tune", "--grid", "1e-3,nan", "--out", str(tmp_path / "t")],
        ["tune", "--grid", "1e-3", "--out", str(a_file)], ["tune", "--grid", "1e-3", "--out", "/proc/x"],
        ["tune", "--grid", "1e-3", "--jobs", "0", "--out", str(tmp_path / "t")],
        ["tune", "--grid", "1e-3", "--threads", "0", "--out", str(tmp_path / "t")],
        ["tune", "--grid", "1e-3", "--lam-grid", "0.1", "--method", "median", "--out", str(tmp_path / "t")],
        ["no-such-command"], [],
    ]
    for args in cases:
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("byzrsa: error:"), (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (binary, latin, listed, scalar, bad_toml, a_file)
    )  # no results folder was created by any refused command


def test_python_api_rejects_what_is_not_a_config(tmp_path):
    from byzrsa.experiments.runner import run
    from byzrsa.experiments.tune import tune

    for bad in ([("lr", 1)], "lr=1", 3, None, b"{}"):
        with pytest.raises(ConfigError, match="RunConfig or a mapping"):
            run(bad, tmp_path / "r")
        with pytest.raises(ConfigError, match="RunConfig or a mapping"):
            tune(bad, [1e-3], out=tmp_path / "t")
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()


def test_the_caller_keeps_its_thread_count(tmp_path):
    from byzrsa.experiments.runner import run

    before = torch.get_num_threads()
    run({"dataset": "digits", "workers": 3, "iterations": 2, "threads": 2})
    with pytest.raises(ConfigError):
        run({"dataset": "digits", "workers": 3, "iterations": 2, "threads": 0})
    assert torch.get_num_threads() == before


def test_the_fuzz_covers_every_registered_component_and_setting():
    names = " ".join(name for name, _ in CASES)
    for registry, kind in ((RULES, "rule"), (ATTACKS, "attack"), (PRE_AGGREGATORS, "pre"), (MODELS, "model")):
        for name, entry in registry.items():
            for opt in entry.options:
                assert f"{kind} {name}.{opt.name}=" in names
    for key in KEYS:
        assert f" {key}=" in f" {names}" or names.startswith(f"{key}=")


def _misspelled() -> list[tuple[str, list[str], str]]:
    """(id, flags, the name to suggest) for every registered name, written in capitals with underscores.

    A user who types ``SIGN_FLIP`` or ``Trimmed_Mean`` must be told the name byzrsa knows, whatever the kind.
    """
    from byzrsa.data.partition import SCHEMES
    from byzrsa.data.sources import SOURCES
    from byzrsa.methods import method_names
    from byzrsa.topologies import TOPOLOGIES

    def typo(name: str) -> str:
        return name.upper().replace("-", "_")

    cases = [(f"method {n}", ["--method", typo(n)], n) for n in method_names()]
    cases += [(f"attack {n}", ["--attack", typo(n), "--byzantine", "2"], n) for n in ATTACKS.names() if n != "none"]
    cases += [(f"pre {n}", ["--method", "median", "--byzantine", "1", "--pre", typo(n)], n) for n in PRE_AGGREGATORS]
    cases += [(f"model {n}", ["--model", typo(n)], n) for n in MODELS.names()]
    cases += [(f"dataset {n}", ["--dataset", typo(n)], n) for n in SOURCES]
    cases += [(f"split {n}", ["--split", typo(n)], n) for n in SCHEMES]
    cases += [(f"topology {n}", ["--topology", typo(n)], n) for n in TOPOLOGIES.names()]
    cases += [(f"key {k}", ["--set", f"{typo(k)}=1"], k) for k in KEYS]
    return cases


@pytest.mark.parametrize("case", _misspelled(), ids=lambda c: c[0])
def test_every_unknown_name_suggests_the_valid_one(case, tmp_path, capsys):
    _, args, name = case
    code, err, out = _drive(args, tmp_path, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("byzrsa: error:"), err
    assert f"(did you mean {name!r}?)" in err[0], err[0]
    assert not out.exists()


def test_every_first_release_key_names_an_option_that_exists(tmp_path, capsys):
    """Each migrated flat key points at a real option of the component it names, and the error says so."""
    from byzrsa.config import MOVED
    from byzrsa.methods import get_method

    owners = {"attack": ATTACKS.__getitem__, "method": get_method, "model": MODELS.__getitem__}
    for old, (new, owner) in MOVED.items():
        kind, option = new.split(".")
        assert option in [o.name for o in owners[kind](owner).options], (old, new, owner)
        code, err, _ = _drive(["--set", f"{old}=1"], tmp_path, capsys)
        assert code == 2 and len(err) == 1 and f"is now {new}" in err[0] and f'name = "{owner}"' in err[0], err
