"""The distributed engine: same trajectory as the simulator, launch paths, faults, checkpoints.

Worker processes are forked from multiprocessing's forkserver, so after the
first launch (which imports torch once) a launch costs about a second. Every
test ends the processes it started: the engine kills its workers on exit, and
the tests that kill a master check that its workers are gone.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from byzrsa.engines import dist as engine
from byzrsa.engines.dist import transport
from byzrsa.engines.common import build_problem
from byzrsa.engines.plugins import PluginError
from byzrsa.engines.sim import simulate
from byzrsa.errors import ByzrsaError
from byzrsa.config import RunConfig
from byzrsa.experiments.runner import read_metrics, run
from processes import wait_gone
from reference import make_config

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

ITERATIONS = 30
BASE = dict(
    dataset="synthetic", workers=4, byzantine=1, batch_size=4, iterations=ITERATIONS, eval_every=10,
    dtype="float64", seed=5, lr=0.05, lam=0.05, attack_std=3.0, geomed_tol=1e-15, geomed_max_iter=5000,
)
METRICS = ("accuracy", "test_loss", "train_loss", "variance")


def config(**settings) -> RunConfig:
    return make_config(**{**BASE, **settings})


def assert_rows_equal(expected: list[dict], got: list[dict]) -> None:
    assert [r["iteration"] for r in got] == [r["iteration"] for r in expected]
    for a, b in zip(expected, got):
        for key in METRICS:
            if math.isnan(a[key]):
                assert math.isnan(b[key]), (key, a, b)
            else:
                assert abs(a[key] - b[key]) <= 1e-10, (key, a, b)


def final_x0(folder: Path) -> torch.Tensor:
    return torch.load(folder / engine.CHECKPOINT_NAME, weights_only=True)["x0"]


def sim_run(c: RunConfig) -> tuple[list[dict], torch.Tensor]:
    from byzrsa.engines.sim import Simulator

    problem = build_problem(c.replace(engine="sim"))
    rows = list(simulate(problem))
    sim = Simulator(problem)
    with torch.no_grad():
        for _ in range(c.iterations):
            sim.step()
    return rows, sim.x0


def dist_matches_sim(tmp_path: Path, c: RunConfig) -> dict:
    out = tmp_path / "run"
    summary = run(c.replace(engine="dist", checkpoint_every=c.iterations), out)
    rows, x0 = sim_run(c)
    assert_rows_equal(rows, read_metrics(out))
    torch.testing.assert_close(final_x0(out), x0, rtol=0, atol=1e-10)
    assert summary["dead_workers"] == [] and summary["malformed_messages"] == {}
    return summary


def write_toml(c: RunConfig, path: Path) -> Path:
    path.write_text("".join(line + "\n" for line in c.to_toml().splitlines() if not line.startswith("engine =")))
    return path


# ----------------------------------------------------------------------------- frames (no processes)


def test_frames_roundtrip_and_reject_garbage():
    x = torch.arange(6, dtype=torch.float64)
    frame = transport.encode(transport.Kind.MSG, 7, x)
    buffer = torch.zeros(frame.numel() + 100, dtype=torch.uint8)
    buffer[: frame.numel()] = frame
    got = transport.decode(buffer)
    assert (got.kind, got.iteration, got.dtype, got.numel) == (transport.Kind.MSG, 7, torch.float64, 6)
    assert torch.equal(got.tensor(), x)
    with pytest.raises(transport.Malformed):
        transport.decode(torch.zeros(200, dtype=torch.uint8))  # no magic
    too_big = transport.encode(transport.Kind.MSG, 7, torch.zeros(100, dtype=torch.float64))
    with pytest.raises(transport.Malformed):
        transport.decode(too_big[:200].clone())  # announces more than the buffer holds


def test_identity_ignores_local_fields():
    a = engine.config_identity(config(timeout=5, device="cpu", iterations=3))
    b = engine.config_identity(config(timeout=9, iterations=7, threads=2))
    assert a == b
    assert transport.config_differences(a, engine.config_identity(config(seed=6))) == "seed=6 (master: 5)"


# ----------------------------------------------------------------------------- same trajectory


@pytest.mark.parametrize(
    "norm, attack, order",
    [("l1", "copy", "jacobi"), ("l2", "sign-flip", "jacobi"), ("linf", "gaussian", "jacobi"),
     ("3", "non-finite", "jacobi"), ("l1", "negative-sum", "gauss-seidel")],
)
@pytest.mark.slow
def test_rsa_matches_simulator(tmp_path, norm, attack, order):
    summary = dist_matches_sim(tmp_path, config(method="rsa", norm=norm, attack=attack, master_order=order,
                                                attack_value=math.inf))
    if attack == "non-finite":
        assert summary["non_finite_messages"] == {"3": ITERATIONS}  # kept, and harmless


@pytest.mark.parametrize(
    "method, attack",
    [("sgd", "negative-sum"), ("ideal-sgd", "same-value"), ("geomed", "gaussian"), ("krum", "copy"),
     ("median", "sign-flip"), ("trimmed-mean", "same-value"), ("multi-krum", "negative-sum")],
)
@pytest.mark.slow
def test_baselines_match_simulator(tmp_path, method, attack):
    dist_matches_sim(tmp_path, config(method=method, attack=attack, workers=5))


@pytest.mark.slow
def test_cli_engine_dist_matches_simulator(tmp_path):
    from byzrsa.cli import main

    c = config(method="rsa", norm="l2", attack="negative-sum", checkpoint_every=ITERATIONS)
    out = tmp_path / "cli"
    assert main(["run", "--config", str(write_toml(c, tmp_path / "run.toml")), "--engine", "dist", "--quiet",
                 "--out", str(out)]) == 0
    rows, x0 = sim_run(c)
    assert_rows_equal(rows, read_metrics(out))
    torch.testing.assert_close(final_x0(out), x0, rtol=0, atol=1e-10)
    assert json.loads((out / "config.json").read_text())["engine"] == "dist"


@pytest.mark.slow
def test_torchrun_one_node_matches_simulator(tmp_path):
    """Also: a worker that hangs at the end is dropped, and does not keep torchrun waiting."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    c = config(method="rsa", attack="copy", workers=3, checkpoint_every=ITERATIONS, timeout=3)
    write_toml(c, tmp_path / "run.toml")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = ["torchrun", "--nnodes", "1", "--nproc-per-node", "4", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", f"127.0.0.1:{port}", "-m", "byzrsa.dist", "--config", str(tmp_path / "run.toml"),
           "--out", str(tmp_path / "out"), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", engine.FAULTS_ENV: "1:stop:hang"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(d["worker"], d["iteration"]) for d in summary["dead_workers"]] == [(1, ITERATIONS)]
    rows, x0 = sim_run(c)
    assert_rows_equal(rows, read_metrics(tmp_path / "out"))
    torch.testing.assert_close(final_x0(tmp_path / "out"), x0, rtol=0, atol=1e-10)


def test_entry_point_checks_world_size(monkeypatch, capsys):
    from byzrsa.dist import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    assert main(["--workers", "4", "--dataset", "synthetic"]) == 2
    assert "workers + 1 = 5" in capsys.readouterr().err
    monkeypatch.delenv("RANK")
    assert main([]) == 2
    assert "torchrun" in capsys.readouterr().err


# ----------------------------------------------------------------------------- faults


@pytest.mark.slow
def test_dead_and_hung_workers_are_dropped(tmp_path, monkeypatch):
    monkeypatch.setenv(engine.FAULTS_ENV, "1:4:exit,3:6:hang")
    summary = run(config(method="rsa", attack="copy", timeout=1.5, engine="dist"), tmp_path / "run")
    dead = {d["worker"]: d for d in summary["dead_workers"]}
    assert sorted(dead) == [1, 3]
    assert dead[1]["iteration"] == 4 and "closed" in dead[1]["reason"]
    assert dead[3]["iteration"] == 6 and "did not answer within 1.5 s" in dead[3]["reason"]
    assert summary["iterations"] == ITERATIONS and math.isfinite(summary["final_train_loss"])
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dead_workers"] == summary["dead_workers"]


@pytest.mark.slow
def test_gradient_rule_aggregates_what_arrived(tmp_path, monkeypatch):
    monkeypatch.setenv(engine.FAULTS_ENV, "0:3:exit")
    summary = run(config(method="median", attack="same-value", engine="dist"), None)
    assert [d["worker"] for d in summary["dead_workers"]] == [0]
    assert summary["iterations"] == ITERATIONS and math.isfinite(summary["final_train_loss"])


def test_malformed_messages_are_byzantine_not_a_crash(monkeypatch):
    monkeypatch.setenv(engine.FAULTS_ENV, "1:5:size,2:6:dtype,0:7:nan,0:8:size")
    summary = run(config(method="rsa", attack="same-value", engine="dist"), None)
    bad = summary["malformed_messages"]
    assert bad["1"]["count"] == 1 and "entries" in bad["1"]["first"]
    assert bad["2"]["count"] == 1 and "dtype" in bad["2"]["first"]
    assert bad["0"]["count"] == 1 and summary["non_finite_messages"] == {"0": 1}
    assert summary["dead_workers"] == [] and math.isfinite(summary["final_train_loss"])


@pytest.mark.slow
def test_worker_with_another_config_is_dropped_as_byzantine(monkeypatch):
    monkeypatch.setenv(engine.FAULTS_ENV, "2:0:config")
    summary = run(config(method="rsa", engine="dist"), None)
    assert [(d["worker"], d["iteration"]) for d in summary["dead_workers"]] == [(2, 0)]
    assert "different config: seed=6 (master: 5)" in summary["dead_workers"][0]["reason"]
    assert summary["iterations"] == ITERATIONS and math.isfinite(summary["final_train_loss"])
    monkeypatch.setenv(engine.FAULTS_ENV, "0:0:config,1:0:config,2:0:config")  # no regular worker left to train
    with pytest.raises(ByzrsaError, match=r"worker 2 \(rank 3\): different config: seed=6 \(master: 5\)"):
        run(config(method="rsa", engine="dist"), None)


def test_interrupted_run_ends_its_workers():
    import multiprocessing

    problem = build_problem(config(method="rsa", engine="dist", iterations=10_000, eval_every=5))
    stream = engine.run_local(problem, {})
    next(stream), next(stream)  # Ctrl-C arrives in the middle of training
    workers = [p for p in multiprocessing.active_children() if p.name.startswith("byzrsa-worker")]
    assert len(workers) == 4
    with pytest.raises(KeyboardInterrupt):
        stream.throw(KeyboardInterrupt)
    assert not any(p.is_alive() for p in workers)
    assert not torch.distributed.is_initialized()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
@pytest.mark.slow
def test_crashed_master_ends_workers_and_resume_reaches_the_same_result(tmp_path, monkeypatch):
    c = config(method="rsa", attack="gaussian", iterations=20, eval_every=5, checkpoint_every=10)
    toml = write_toml(c, tmp_path / "run.toml")
    marker = f"BYZRSA_TEST_{uuid.uuid4().hex}"
    # Worker 1 dies at iteration 3, before the checkpoint at 10; the master dies at 15.
    env = {**os.environ, engine.FAULTS_ENV: "1:3:exit,master:15:exit", "BYZRSA_TEST_MARK": marker}
    out = tmp_path / "crashed"
    cmd = [sys.executable, "-m", "byzrsa.cli", "run", "--config", str(toml), "--engine", "dist", "--quiet", "--out",
           str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 17, done.stderr[-3000:]
    assert wait_gone(marker, seconds=15) == [], "workers outlived their master"
    assert [r["iteration"] for r in read_metrics(out)] == [0, 5, 10]
    assert torch.load(out / engine.CHECKPOINT_NAME, weights_only=True)["k"] == 10

    from byzrsa.cli import main

    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["resumed_from"] == 10
    assert [(d["worker"], d["iteration"]) for d in resumed["dead_workers"]] == [(1, 3)]  # stays out
    whole = tmp_path / "whole"
    monkeypatch.setenv(engine.FAULTS_ENV, "1:3:exit")
    run(c.replace(engine="dist"), whole)
    assert_rows_equal(read_metrics(whole), read_metrics(out))
    torch.testing.assert_close(final_x0(out), final_x0(whole), rtol=0, atol=0)


@pytest.mark.slow
def test_resume_refuses_another_run(tmp_path):
    out = tmp_path / "run"
    run(config(method="rsa", engine="dist", iterations=10, checkpoint_every=10), out)
    with pytest.raises(ByzrsaError, match="different run: lam"):
        run(config(method="rsa", engine="dist", iterations=20, checkpoint_every=10, lam=0.5), out, resume=out)
    with pytest.raises(ByzrsaError, match="--engine dist"):
        run(config(method="rsa", iterations=20), out, resume=out)


def test_nccl_needs_cuda():
    from byzrsa.engines.common import validate

    with pytest.raises(ByzrsaError, match="nccl"):
        validate(config(engine="dist", backend="nccl", device="cpu"))


# ----------------------------------------------------------------------------- issue 8 regressions


def test_forwarded_rows_follow_worker_indices_when_a_worker_is_missing():
    """The copy attack names a regular worker; after worker 0 dies, row r must still be worker r's message."""
    from byzrsa.engines.dist.master import Master

    master = Master.__new__(Master)  # only the forwarding view, no processes
    master.config = config(workers=5, byzantine=1)
    master.problem = build_problem(master.config.replace(engine="sim"))
    master.d = 3
    master.last_regular = {}
    rows = {w: torch.full((3,), float(w + 1), dtype=torch.float64) for w in range(4)}
    assert master._regular_view(rows)[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    del rows[0]  # worker 0 is dead: its row keeps its last message, the others stay in place
    rows = {w: v + 10 for w, v in rows.items()}
    assert master._regular_view(rows)[:, 0].tolist() == [1.0, 12.0, 13.0, 14.0]


@pytest.mark.slow
def test_copy_attack_with_a_dead_worker_copies_the_named_worker(tmp_path, monkeypatch):
    monkeypatch.setenv(engine.FAULTS_ENV, "0:3:exit")
    c = config(method="rsa", attack="copy", **{"attack.copy_from": 2}, workers=5, byzantine=1, timeout=5)
    summary = run(c.replace(engine="dist"), tmp_path / "copy")
    assert [d["worker"] for d in summary["dead_workers"]] == [0] and summary["iterations"] == ITERATIONS


BROKEN_RULE = '''
from byzrsa.aggregators import RULES, Rule


def broken(x):
    raise RuntimeError("a bug inside the rule")


if "toy-broken" not in RULES:
    RULES.register(Rule("toy-broken", broken, "Broken", "raises"))
'''


def test_a_rule_bug_is_raised_not_skipped(tmp_path, monkeypatch):
    """Only the rule's documented too-few-rows ConfigError skips a step; any other error ends the run."""
    (tmp_path / "toy_broken.py").write_text(BROKEN_RULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    import toy_broken  # noqa: F401  (registers the rule here; the workers import it through `plugins`)

    c = config(method="toy-broken", plugins="toy_broken", attack="none")
    try:
        # the plugin's error ends the run, named as the plugin's (docs/trust.md), with the bug as its cause
        with pytest.raises(PluginError, match="plugin 'toy_broken' failed during the run: RuntimeError: a bug") as info:
            run(c.replace(engine="dist"))
        assert isinstance(info.value.__cause__, RuntimeError)
    finally:
        from byzrsa.aggregators import RULES

        RULES.unregister("toy-broken")
