"""What a new user meets first: defaults that train, a fast command line, suggestions for typos, warnings.

The command-line cases run ``byzrsa`` as a subprocess (what a user types) or
through ``main([...])``; runs are a few hundred iterations at most.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from byzrsa.cli import main
from byzrsa.config import RunConfig, config_from_dict, load_config
from byzrsa.errors import ConfigError, did_you_mean

# Runs byzrsa's main() in a fresh interpreter and reports whether torch was imported.
PROBE = (
    "import sys\n"
    "from byzrsa.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('TORCH=%d' % ('torch' in sys.modules), file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _probe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- defaults that train


@pytest.mark.parametrize("settings", [{}, {"method": "trimmed-mean", "pre": "nnm"}], ids=["rsa", "trimmed-mean+nnm"])
@pytest.mark.slow
def test_defaults_train(settings):
    """The default pixels suit the default step size: 300 iterations of a bare run already reach 0.85.

    With [0, 1] pixels and a = 0.001 (the defaults before) the same runs ended at 0.52 and 0.65.
    """
    import byzrsa

    summary = byzrsa.run({**settings, "iterations": 300, "eval_every": 300, "threads": 1})
    assert summary["final_accuracy"] >= 0.85, summary["final_accuracy"]


def test_default_setting_is_the_papers():
    c = RunConfig()
    assert (c.pixels, c.lr, c.lam, c.mu, c.workers, c.batch_size, c.iterations) == ("raw", 0.001, 0.07, 0.01, 20, 32, 5000)


# ----------------------------------------------------------------------------- a fast command line


@pytest.fixture()
def warm_cache(tmp_path, monkeypatch):
    """A catalog cache written from this process (torch is loaded here anyway), and the env that points at it."""
    from byzrsa.cli import catalog

    monkeypatch.setenv("BYZRSA_CACHE", str(tmp_path / "cache"))
    catalog.store()
    return {**os.environ, "BYZRSA_CACHE": str(tmp_path / "cache")}


@pytest.mark.parametrize("args, expected, code", [
    (["--help"], "COMMAND", 0),
    (["run", "--help"], "--attack-z", 0),
    (["list"], "sign-flip", 0),
    (["--version"], "byzrsa ", 0),
    (["run", "--no-such-flag"], "unrecognized arguments", 2),
    (["run", "--lamda", "0.1"], "did you mean '--lam'", 2),
])
def test_help_list_and_usage_errors_do_not_import_torch(warm_cache, args, expected, code):
    from byzrsa.cli import catalog

    result = _probe(args, warm_cache)
    if "TORCH=1" in result.stderr:  # a source file changed between the fixture and the call: the cache is rebuilt
        catalog.store()
        result = _probe(args, warm_cache)
    assert result.returncode == code, result.stderr
    assert expected in result.stdout + result.stderr
    assert "TORCH=0" in result.stderr, "torch was imported"


@pytest.mark.slow
def test_catalog_cache_matches_the_registries_and_survives_damage(warm_cache, tmp_path):
    from byzrsa.cli import catalog

    cached = json.loads(catalog.cache_path().read_text())
    assert cached["catalog"] == json.loads(json.dumps(catalog.live()))
    catalog.cache_path().write_text("{not json")
    result = _probe(["list"], warm_cache)  # a damaged cache is rebuilt from the registries
    assert result.returncode == 0 and "sign-flip" in result.stdout
    assert json.loads(catalog.cache_path().read_text())["catalog"]["attacks"]


def test_python_dash_m_byzrsa_and_version():
    from byzrsa import __version__

    result = subprocess.run([sys.executable, "-m", "byzrsa", "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"byzrsa {__version__}"
    result = subprocess.run([sys.executable, "-m", "byzrsa", "run", "--pixels"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("byzrsa: error:")


def test_list_shows_no_mlp_only_option_under_other_models(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "MLP only" not in out
    models = out[out.index("\nmodels"):]
    assert "batching" in models[models.index("  cnn"):]


# ----------------------------------------------------------------------------- suggestions


def test_did_you_mean():
    assert did_you_mean("sign_flip", ["same-value", "sign-flip"]) == " (did you mean 'sign-flip'?)"
    assert did_you_mean("lamda", ["lam", "lr", "mu"]) == " (did you mean 'lam'?)"
    assert did_you_mean("Krum", ["krum", "median"]) == " (did you mean 'krum'?)"
    assert did_you_mean("zzz", ["krum", "median"]) == ""
    assert did_you_mean(None, ["krum"]) == ""


@pytest.mark.parametrize("flags, suggestion", [
    (["--attack", "sign_flip", "--byzantine", "4"], "'sign-flip'"),
    (["--method", "krumm"], "'krum'"),
    (["--method", "trimmed_mean"], "'trimmed-mean'"),
    (["--method", "median", "--pre", "bucketting"], "'bucketing'"),
    (["--model", "lenet"], "'lenet5'"),
    (["--split", "by_label"], "'by-label'"),
    (["--dataset", "mnist_sample"], "'mnist-sample'"),
    (["--pixels", "raww"], "'raw'"),
    (["--topology", "rng"], "'ring'"),
    (["--set", "lamda=0.1"], "'lam'"),
    (["--attack", "alie", "--byzantine", "2", "--set", "attack.zz=1"], "'z'"),
])
def test_unknown_names_get_the_closest_valid_one(flags, suggestion, capsys):
    code = main(["run", *flags, "--dataset", "digits", "--iterations", "1", "--quiet"]
                if "--dataset" not in flags else ["run", *flags, "--iterations", "1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert f"did you mean {suggestion}?" in err[0]


def test_toml_key_typo_and_first_release_keys_name_their_new_place(tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text("lamda = 0.1\n")
    with pytest.raises(ConfigError, match=r"did you mean 'lam'\?"):
        load_config(typo)
    old = tmp_path / "old.toml"
    old.write_text('attack = "same-value"\nbyzantine = 4\nattack_c = 5\n')
    with pytest.raises(ConfigError, match=r"'attack_c' of the first release is now attack\.c.*c = 5"):
        load_config(old)
    for key, new in (("geomed_tol", "method.tol"), ("multi_krum_k", "method.k"), ("hidden", "model.hidden"),
                     ("attack_sigma", "attack.sigma"), ("attack_copy_from", "attack.copy_from")):
        with pytest.raises(ConfigError, match=rf"is now {new}"):
            config_from_dict({key: 1})


def test_first_release_key_on_the_command_line(capsys):
    assert main(["run", "--set", "attack_c=5", "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert "is now attack.c" in err and "--set attack.c=5" in err


# ----------------------------------------------------------------------------- warnings


@pytest.mark.parametrize("flags, warning", [
    (["--byzantine", "2"], "byzantine = 2 with attack none"),
    (["--attack", "sign-flip"], "attack sign-flip with byzantine = 0"),
])
def test_byzantine_count_and_attack_that_do_not_match_warn_once(flags, warning, capsys):
    code = main(["run", *flags, "--dataset", "digits", "--workers", "5", "--iterations", "1", "--eval-every", "1",
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0
    assert len(err) == 1 and err[0].startswith("byzrsa: warning: ") and warning in err[0], err


def test_matching_settings_do_not_warn(capsys):
    code = main(["run", "--attack", "sign-flip", "--byzantine", "1", "--dataset", "digits", "--workers", "5",
                 "--iterations", "1", "--eval-every", "1", "--quiet"])
    assert code == 0 and capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- provenance


def test_run_folder_records_what_produced_it(tmp_path):
    import platform
    import re

    import torch

    import byzrsa

    out = tmp_path / "r"
    assert main(["run", "--dataset", "digits", "--workers", "4", "--iterations", "4", "--eval-every", "2",
                 "--quiet", "--out", str(out)]) == 0
    recorded = json.loads((out / "config.json").read_text())["provenance"]
    summary = json.loads((out / "summary.json").read_text())["provenance"]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    for origin in (recorded, summary):
        assert origin["byzrsa"] == byzrsa.__version__
        assert origin["python"] == platform.python_version() and origin["torch"] == torch.__version__
        assert origin["cpu"] and origin["gpu"] is None
        assert re.fullmatch(stamp, origin["started"])
        assert origin["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", origin["commit"])
    assert re.fullmatch(stamp, summary["finished"]) and summary["finished"] >= summary["started"]
    assert load_config(out / "config.json") == load_config(out / "config.json").replace()  # provenance is no setting


def test_git_commit_is_recorded_from_a_checkout_and_fails_silently_without_git(monkeypatch):
    import subprocess as sp

    from byzrsa import folders

    repo = sp.run(["git", "-C", os.path.dirname(folders.__file__), "rev-parse", "HEAD"], capture_output=True, text=True)
    if repo.returncode == 0:
        assert folders._git_commit().startswith(repo.stdout.strip())
    monkeypatch.setenv("PATH", "")  # no git to be found
    assert folders._git_commit() is None


def test_reproduce_report_maps_every_run_folder_to_its_lines():
    from byzrsa.experiments.paper.plan import base_settings, plan
    from byzrsa.experiments.paper.report import folders_section

    the_plan = plan(["fig4a", "fig3"], base_settings("mnist-sample", iterations=10))
    table = folders_section(the_plan)
    for figure, lines in the_plan.lines.items():
        for label, key in lines.items():
            row = next(line for line in table.splitlines() if line.startswith(f"| `runs/{key}` |"))
            assert f"{figure}: {label}" in row
    assert table.count("| `runs/") == len(the_plan.runs)


# ----------------------------------------------------------------------------- readable output


def test_bench_list_prints_settings_not_python_reprs(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for repr_mark in ("{'", "['", "[0", "()", "tune {", "0000000"):
        assert repr_mark not in out, repr_mark
    assert "pre=bucketing(s=2)" in out and "lr not tuned" in out and "factors: lr x 0.3333, 1, 3" in out


def test_tune_table_prints_its_grid_as_numbers():
    from byzrsa.config import RunConfig
    from byzrsa.experiments.tune import format_table

    grid = [0.001, 0.003, 0.009, 0.003 * 9]  # 0.026999999999999996 in binary
    rows = [{"key": str(i), "lr": lr, "lam": 0.07, "final_accuracy": 0.5} for i, lr in enumerate(grid)]
    result = {"config": json.loads(RunConfig().to_json()), "grid": {"lr": grid, "lam": [0.07]}, "rows": rows,
              "best": rows[0], "scored_on": "validation", "extensions": 3, "extended": {"lr": 1}}
    text = format_table(result)
    assert "Final grid: lr 0.001, 0.003, 0.009, 0.027; lam 0.07;" in text
    assert "[" not in text.split("\n\n")[0] and "999" not in text


@pytest.mark.slow
def test_list_with_a_plugin_shows_its_components_whatever_the_cache_holds(warm_cache, tmp_path):
    """The cached catalog is of the built-in components; a plugin's are read from the live registries."""
    (tmp_path / "toy_attack_plugin.py").write_text(
        "from byzrsa.attacks import ATTACKS, Attack\n"
        "from byzrsa.registry import Option\n"
        "ATTACKS.register(Attack('toy-zero-shift', lambda regular, own, ctx, *, shift=0.0: own * 0 + shift,\n"
        "                        'toy', 'a plugin attack', options=(Option('shift', float, 0.0, 'added'),)))\n"
    )
    env = {**warm_cache, "PYTHONPATH": os.pathsep.join([str(tmp_path), warm_cache.get("PYTHONPATH", "")])}
    result = _probe(["run", "--plugins", "toy_attack_plugin", "--list"], env)
    assert result.returncode == 0 and "toy-zero-shift" in result.stdout and "shift = 0.0" in result.stdout
