"""The registry promise: a rule and an attack written outside byzrsa run through `byzrsa run` on both engines.

The toy components live in a module this test writes; the run names it in
``plugins`` so that every process of the run (the dist engine's workers too)
imports it before looking components up. Nothing in byzrsa is edited.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from byzrsa.cli import main

PLUGIN = textwrap.dedent('''
    """Toy components: a rule (mean of the rows inside a box) and an attack (mean of the regular rows + shift)."""
    import torch

    from byzrsa.aggregators import RULES, Rule
    from byzrsa.attacks import ATTACKS, Attack
    from byzrsa.registry import Option, positive


    def boxed_mean(x, *, bound=1e3):
        inside = (x.abs() <= bound).all(dim=1)
        return x[inside].mean(dim=0) if bool(inside.any()) else torch.zeros_like(x[0])


    def shifted_mean(regular, own, ctx, *, shift=0.5):
        return (regular.mean(dim=0) + shift).expand_as(own).clone()


    if "toy-boxed-mean" not in RULES:
        RULES.register(Rule("toy-boxed-mean", boxed_mean, "Boxed mean", "mean of the rows inside a box",
                            options=(Option("bound", float, 1e3, "box half-width", positive),),
                            scale_equivariant=False, translation_equivariant=False))
    if "toy-shift" not in ATTACKS:
        ATTACKS.register(Attack("toy-shift", shifted_mean, "toy shift", "regular mean plus a shift",
                                options=(Option("shift", float, 0.5, "added to every entry"),)))
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "toy_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # for processes that start a fresh interpreter
    yield "toy_plugin"
    from byzrsa.aggregators import RULES
    from byzrsa.attacks import ATTACKS

    RULES.unregister("toy-boxed-mean")
    ATTACKS.unregister("toy-shift")
    sys.modules.pop("toy_plugin", None)


@pytest.mark.parametrize("method", ["toy-boxed-mean", "rsa"])
@pytest.mark.slow
def test_toy_rule_and_attack_run_on_both_engines(tmp_path, plugin, method):
    finals = {}
    for engine in ("sim", "dist"):
        out = tmp_path / f"{method}-{engine}"
        code = main([
            "run", "--plugins", plugin, "--method", method, "--attack", "toy-shift", "--set", "attack.shift=2.0",
            "--dataset", "synthetic", "--workers", "4", "--byzantine", "1", "--iterations", "12", "--eval-every", "6",
            "--batch-size", "4", "--dtype", "float64", "--lr", "0.05", "--engine", engine, "--quiet", "--out", str(out),
        ] + (["--set", "method.bound=50"] if method != "rsa" else []))
        assert code == 0
        saved = json.loads((out / "config.json").read_text())
        assert saved["attack"] == {"name": "toy-shift", "shift": 2.0}
        if method != "rsa":
            assert saved["method"] == {"name": "toy-boxed-mean", "bound": 50.0}
        finals[engine] = json.loads((out / "summary.json").read_text())
    assert finals["sim"]["label"] == finals["dist"]["label"]
    assert finals["sim"]["final_accuracy"] == pytest.approx(finals["dist"]["final_accuracy"], abs=1e-12)
    assert finals["sim"]["final_train_loss"] == pytest.approx(finals["dist"]["final_train_loss"], abs=1e-10)


def test_toy_rule_joins_the_method_list(plugin, capsys):
    assert main(["run", "--plugins", plugin, "--list"]) == 0
    text = capsys.readouterr().out
    assert "toy-boxed-mean" in text and "toy-shift" in text and "bound = 1000.0" in text


def test_missing_plugin_is_one_line_error(capsys):
    assert main(["run", "--plugins", "no_such_module_xyz", "--iterations", "1"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
    assert torch.get_num_threads() >= 1


DROPOUT_NET = textwrap.dedent('''
    import math
    import torch


    def DropoutNet(input_shape, num_classes, hidden=16):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), hidden),
                                   torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(hidden, num_classes))
''')


@pytest.mark.parametrize("method", ["rsa", "median"])
@pytest.mark.slow
def test_dropout_model_by_import_path_same_on_both_engines(tmp_path, monkeypatch, method):
    """A user's module with dropout: per-worker dropout streams make the dist run equal the simulator's."""
    (tmp_path / "toy_nets.py").write_text(DROPOUT_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    from byzrsa.experiments.runner import run

    settings = dict(dataset="digits", model="toy_nets:DropoutNet", method=method, workers=4, byzantine=1,
                    attack="sign-flip", batch_size=8, iterations=12, eval_every=6, dtype="float64", lr=0.05)
    sim = run({**settings, "engine": "sim"})
    dist = run({**settings, "engine": "dist"})
    assert sim["final_train_loss"] == pytest.approx(dist["final_train_loss"], abs=1e-12)
    other = run({**settings, "engine": "sim", "seed": 1})
    assert other["final_train_loss"] != sim["final_train_loss"]
    sys.modules.pop("toy_nets", None)
