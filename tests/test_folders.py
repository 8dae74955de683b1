"""Results folders that cannot lie: status, the in-progress marker, refusal to mix runs, signals, healing."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from processes import lock_held_elsewhere, marked_processes, wait_gone
from byzrsa.cli import main
from byzrsa.errors import ConfigError
from byzrsa.folders import MARKER, run_state
from byzrsa.experiments.runner import run

SMALL = dict(dataset="digits", workers=4, iterations=20, eval_every=10)

FLAKY_ATTACK = '''
from byzrsa.attacks import ATTACKS, Attack


def flaky(regular, own, ctx):
    ctx.state["calls"] = ctx.state.get("calls", 0) + 1
    if ctx.state["calls"] > 5:
        raise RuntimeError("the attack broke at its sixth call")
    return own.clone()


if "toy-flaky" not in ATTACKS:
    ATTACKS.register(Attack("toy-flaky", flaky, "flaky", "breaks after five rounds", reads_regular=False))
'''


def _long_run(out: Path, marker: str) -> subprocess.Popen:
    env = {**os.environ, "BYZRSA_TEST_MARK": marker}
    return subprocess.Popen(
        [sys.executable, "-m", "byzrsa.cli", "run", "--dataset", "digits", "--iterations", "10000000",
         "--eval-every", "20", "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_rows(out: Path, rows: int = 3, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = out / "metrics.csv"
        if metrics.exists() and len(metrics.read_text().splitlines()) > rows:
            return
        time.sleep(0.1)
    raise AssertionError("the run wrote no metrics")


def test_completed_run_says_so(tmp_path):
    summary = run(SMALL, tmp_path / "r")
    assert summary["status"] == "completed" and run_state(tmp_path / "r") == "completed"
    assert not (tmp_path / "r" / MARKER).exists()
    assert not list((tmp_path / "r").glob(".*tmp*"))  # atomic writes leave no temporary files


@pytest.mark.slow
def test_out_holding_a_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "r"
    run(SMALL, out)
    before = (out / "summary.json").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        run({**SMALL, "seed": 1}, out)
    assert (out / "summary.json").read_text() == before  # nothing was touched
    args = ["run", "--dataset", "digits", "--workers", "4", "--iterations", "20", "--out", str(out), "--quiet"]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 1 and run_state(out) == "completed"


def test_out_that_is_a_file_or_under_one_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(ConfigError, match="is a file"):
            run(SMALL, out)


def test_a_bad_config_leaves_no_folder(tmp_path):
    with pytest.raises(ConfigError):
        run({**SMALL, "method": "krum", "byzantine": 3}, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_a_run_that_fails_midway_says_failed(tmp_path, monkeypatch):
    (tmp_path / "toy_flaky.py").write_text(FLAKY_ATTACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    import toy_flaky  # noqa: F401

    out = tmp_path / "r"
    from byzrsa.engines.plugins import PluginError

    with pytest.raises(PluginError, match="plugin 'toy_flaky' failed during the run: RuntimeError: .*sixth call") as info:
        run({**SMALL, "byzantine": 1, "attack": "toy-flaky", "plugins": "toy_flaky", "eval_every": 2}, out)
    assert isinstance(info.value.__cause__, RuntimeError)  # the plugin's own error, for --debug's traceback
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "sixth call" in summary["error"] and not summary["interrupted"]
    assert run_state(out) == "failed" and not (out / MARKER).exists()
    from byzrsa.attacks import ATTACKS

    ATTACKS.unregister("toy-flaky")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
@pytest.mark.slow
def test_termination_signals_end_a_run_like_ctrl_c(tmp_path, sig):
    out, marker = tmp_path / "r", f"byzrsa-test-{uuid.uuid4()}"
    proc = _long_run(out, marker)
    try:
        _wait_for_rows(out)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig and "Traceback" not in stderr, stderr
    summary = json.loads((out / "summary.json").read_text())
    with open(out / "metrics.csv", newline="") as handle:
        last = int(list(csv.DictReader(handle))[-1]["iteration"])
    assert summary["status"] == "interrupted" and summary["iterations"] == last > 0
    assert run_state(out) == "interrupted" and marked_processes(marker) == []


@pytest.mark.slow
def test_a_killed_run_is_never_taken_for_a_finished_one(tmp_path):
    out, marker = tmp_path / "r", f"byzrsa-test-{uuid.uuid4()}"
    proc = _long_run(out, marker)
    try:
        _wait_for_rows(out)
        assert run_state(out) == "running"
        proc.kill()  # SIGKILL: nothing can be written
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert run_state(out) == "killed"
    assert run(SMALL, out, overwrite=True)["status"] == "completed"


@pytest.mark.slow
def test_reproduce_redoes_corrupt_and_truncated_runs(tmp_path):
    from byzrsa.experiments.paper import execute, is_done, run_folder
    from byzrsa.experiments.paper.plan import base_settings, plan

    runs = plan(["fig3"], base_settings("mnist-sample", iterations=10)).runs
    chosen = dict(list(runs.items())[:2])
    assert execute(chosen, tmp_path, jobs=1, quiet=True)[0] == {}
    (first, second) = chosen
    (run_folder(tmp_path, first) / "summary.json").write_text("{not json")
    metrics = run_folder(tmp_path, second) / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))  # the last row lost
    assert not is_done(tmp_path, first) and not is_done(tmp_path, second)
    assert execute(chosen, tmp_path, jobs=1, quiet=True)[0] == {}
    assert is_done(tmp_path, first) and is_done(tmp_path, second)


def test_refused_concurrent_reproduce_writes_nothing(tmp_path):
    from byzrsa.experiments.paper import reproduce

    out = tmp_path / "rep"
    out.mkdir()
    with lock_held_elsewhere(out / ".lock"):
        with pytest.raises(ConfigError, match="another byzrsa"):
            reproduce(["fig3"], dataset="mnist-sample", out=out, iterations=10, jobs=1, quiet=True)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no plan.json, no runs


@pytest.mark.parametrize("settings", [
    dict(method="rsa", norm="l2", attack="mimic"),
    dict(method="cclip", pre="bucketing", momentum=0.9, attack="alie"),
    dict(method="median", attack="gaussian"),
])
@pytest.mark.slow
def test_sim_resume_equals_the_uninterrupted_run(tmp_path, settings):
    """Issue 9: a checkpointed simulator run resumed from its folder follows the uninterrupted trajectory exactly."""
    import torch

    base = dict(dataset="synthetic", workers=6, byzantine=1, batch_size=4, iterations=40, eval_every=10,
                dtype="float64", lr=0.05, checkpoint_every=20, **settings)
    whole = run(base, tmp_path / "whole")
    part = tmp_path / "part"
    run({**base, "iterations": 20}, part)  # stops at the checkpoint of iteration 20 ...
    resumed = run(base, part, resume=part)  # ... and continues to 40
    assert resumed["status"] == "completed" and resumed["iterations"] == 40
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)["sim"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["sim"]
    assert torch.equal(a["x0"], b["x0"]) and a["k"] == b["k"] == 40
    for key in ("final_accuracy", "final_train_loss"):
        assert whole[key] == resumed[key]


@pytest.mark.slow
def test_sigterm_ends_reproduce_and_its_pool(tmp_path):
    """Issue 9: a SIGTERMed reproduction left its pool workers and resource tracker running and writing."""
    out, marker = tmp_path / "rep", f"byzrsa-test-{uuid.uuid4()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "byzrsa.cli", "reproduce", "fig4a", "--quick", "--iterations", "3000", "--quiet",
         "--jobs", "2", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "BYZRSA_TEST_MARK": marker},
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not list((out / "runs").glob(".tmp-*/metrics.csv")):
            time.sleep(0.2)
        assert len(marked_processes(marker)) >= 3  # the command, its pool workers (and the resource tracker)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr
    assert wait_gone(marker) == []
    finished = sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith("."))
    time.sleep(2)  # nothing keeps finishing runs after the command has gone
    assert sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith(".")) == finished


@pytest.mark.slow
def test_sigterm_ends_a_dist_run_and_its_worker_processes(tmp_path):
    out, marker = tmp_path / "d", f"byzrsa-test-{uuid.uuid4()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "byzrsa.cli", "run", "--engine", "dist", "--dataset", "digits", "--workers", "3",
         "--iterations", "10000000", "--eval-every", "20", "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "BYZRSA_TEST_MARK": marker},
    )
    try:
        _wait_for_rows(out, rows=2, timeout=120)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr
    assert run_state(out) == "interrupted"
    assert wait_gone(marker) == []
