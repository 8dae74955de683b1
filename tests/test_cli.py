"""End to end: `byzrsa run` on real MNIST digits, its files, and every bad input's one-line error."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from byzrsa.cli import main
from byzrsa.config import KEYS, load_config


def byzrsa(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "byzrsa.cli", *args], capture_output=True, text=True, timeout=120, **kwargs
    )


@pytest.mark.slow
def test_run_writes_its_results(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main([
        "run", "--method", "rsa", "--norm", "l1", "--attack", "same-value", "--byzantine", "4",
        "--dataset", "mnist-sample", "--pixels", "raw", "--iterations", "300", "--eval-every", "100",
        "--lam", "0.07", "--lr", "0.001", "--out", str(out), "--quiet",
    ])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    config = load_config(out / "config.json")
    assert (config.method, config.attack, config.byzantine, config.pixels) == ("rsa", "same-value", 4, "raw")
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["iteration"]) for r in rows] == [0, 100, 200, 300]
    assert float(rows[0]["accuracy"]) < 0.2 < 0.6 < float(rows[-1]["accuracy"])  # it learns
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_accuracy", "best_accuracy", "iterations", "wall_seconds", "method", "attack", "byzantine"):
        assert key in summary
    assert summary["iterations"] == 300 and summary["final_accuracy"] == pytest.approx(float(rows[-1]["accuracy"]))
    assert printed["final_accuracy"] == summary["final_accuracy"]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_file_flags_and_set_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('method = "median"\nbyzantine = 2\niterations = 40\neval_every = 20\nworkers = 6\nlr = 0.5\n')
    code = main(["run", "--config", str(toml), "--dataset", "digits", "--set", "iterations=20", "--out",
                 str(tmp_path / "r"), "--quiet"])
    assert code == 0
    config = load_config(tmp_path / "r" / "config.json")
    assert (config.method, config.byzantine, config.iterations, config.dataset) == ("median", 2, 20, "digits")


def test_help_documents_every_flag():
    from byzrsa.aggregators import RULES
    from byzrsa.attacks import ATTACKS
    from byzrsa.models import MODELS

    text = byzrsa("run", "--help").stdout
    for key in KEYS:
        assert "--" + key.replace("_", "-") in text
    for flag in ("--config", "--set", "--out", "--quiet"):
        assert flag in text
    # every component option has a flag, derived from its registry entry
    for rule in RULES.values():
        for opt in rule.options:
            assert f"--{rule.name}-{opt.name.replace('_', '-')}" in text
    for attack in ATTACKS.values():
        for opt in attack.options:
            assert f"--attack-{opt.name.replace('_', '-')}" in text
    for model in MODELS.values():
        for opt in model.options:
            assert f"--{model.name}-{opt.name.replace('_', '-')}" in text
    for flag in ("--sigma", "--copy-from", "--hidden", "--geomed-tol", "--multi-krum-k"):  # first-release flags
        assert flag in text


def test_list_prints_every_component_with_options():
    from byzrsa.attacks import ATTACKS
    from byzrsa.methods import method_names
    from byzrsa.preaggregators import PRE_AGGREGATORS

    text = byzrsa("list").stdout
    for name in (*method_names(), *ATTACKS.names(), *PRE_AGGREGATORS.names()):
        assert f"  {name} " in text
    assert "tol = 1e-07" in text and "sigma = -4.0" in text


def test_component_options_from_flags_toml_and_set(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('method = "geomed"\nbyzantine = 2\niterations = 10\neval_every = 10\nworkers = 6\n'
                    '[attack]\nname = "sign-flip"\nsigma = -2.5\n')
    code = main(["run", "--config", str(toml), "--dataset", "digits", "--geomed-tol", "1e-5", "--set",
                 "method.max_iter=50", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["attack"] == {"name": "sign-flip", "sigma": -2.5}
    assert saved["method"] == {"name": "geomed", "tol": 1e-5, "max_iter": 50}  # every option resolved
    config = load_config(tmp_path / "r" / "config.json")
    assert config.attack_options == {"sigma": -2.5} and config.method_options["max_iter"] == 50


BAD_INPUTS = {
    "q >= m": (["--byzantine", "20"], "q < m"),
    "krum needs m >= 2q + 3": (["--method", "krum", "--workers", "10", "--byzantine", "4"], "2f + 3"),
    "unknown method": (["--method", "teleport"], "unknown method"),
    "option of another component": (["--method", "krum", "--geomed-tol", "1e-3"], "geomed"),
    "unknown option of the attack": (["--attack", "sign-flip", "--set", "attack.c=3"], "no option 'c'"),
    "bad option value": (["--method", "geomed", "--set", "method.tol=-1"], "tol"),
    "unknown attack": (["--attack", "teleport"], "unknown attack"),
    "negative lambda": (["--lam", "-0.1"], "lam"),
    "missing dataset": (["--dataset", "mnist", "--data-dir", "{empty}"], "{empty}"),
    "corrupt dataset": (["--dataset", "mnist", "--data-dir", "{corrupt}"], "{corrupt}"),
    "unknown --set key": (["--set", "learning_rate=0.1"], "learning_rate"),
    "non-numeric value": (["--iterations", "many"], "iterations"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.slow
def test_bad_input_gives_one_clear_line(case, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (corrupt / name).write_bytes(b"\x00\x00\x08\x03not an idx file")
    args, expected = BAD_INPUTS[case]
    args = [a.format(empty=empty, corrupt=corrupt) for a in args]
    out = tmp_path / "out"
    result = byzrsa("run", *args, "--iterations", "5", "--out", str(out), "--quiet") if "--iterations" not in args \
        else byzrsa("run", *args, "--out", str(out), "--quiet")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("byzrsa: error:"), result.stderr
    assert expected.format(empty=empty, corrupt=corrupt) in lines[0]
    assert "Traceback" not in result.stderr
    assert not (out / "metrics.csv").exists()  # stopped before any training


@pytest.mark.slow
def test_interrupted_run_leaves_valid_metrics(tmp_path):
    out = tmp_path / "long"
    proc = subprocess.Popen(
        [sys.executable, "-m", "byzrsa.cli", "run", "--dataset", "digits", "--iterations", "10000000",
         "--eval-every", "20", "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            metrics = out / "metrics.csv"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 3 and all(float(r["accuracy"]) >= 0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["iterations"] == int(rows[-1]["iteration"])
