"""Nothing lost, nothing misleading (issue 9), beyond tests/test_folders.py.

Signals to whole process groups and SIGKILL of a reproduction (its pool
workers must not outlive it or publish runs), folders whose markers or files
lie, ``--overwrite`` and ``--resume`` that never mix two runs, and the
simulator's resumed float64 trajectory equal to the uninterrupted one in every
row and every piece of state. Tests that start processes mark them with an
environment variable, end them, and assert that none remain.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from processes import lock_held_elsewhere, marked_processes, wait_gone
from byzrsa.cli import main
from byzrsa.errors import ByzrsaError, ConfigError
from byzrsa.folders import MARKER, run_state
from byzrsa.experiments.runner import run

SMALL = dict(dataset="digits", workers=4, iterations=20, eval_every=10)

DROPOUT_NET = '''
import math
from torch import nn


def Net(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 16), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(16, num_classes))
'''


def _end(marker: str) -> None:
    for pid in marked_processes(marker):  # only processes this test started carry its marker
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start(args: list[str], marker: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "BYZRSA_TEST_MARK": marker}
    return subprocess.Popen([sys.executable, "-m", "byzrsa.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def _wait_for_pool(out: Path, marker: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list((out / "runs").glob(".tmp-*/metrics.csv")) and len(marked_processes(marker)) >= 3:
            return
        time.sleep(0.2)
    raise AssertionError("the pool never started a run")


def _published(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith("."))


# ------------------------------------------------------------------------------- signals


@pytest.mark.slow
def test_tune_ended_by_a_group_sigterm_leaves_no_process_and_valid_folders(tmp_path):
    """A batch scheduler signals the whole process group: the command, its pool workers and the tracker."""
    out, marker = tmp_path / "tune", f"byzrsa-test-{uuid.uuid4()}"
    proc = _start(["tune", "--grid", "1e-4,3e-4,1e-3", "--dataset", "mnist-sample", "--iterations", "3000",
                   "--eval-every", "20", "--jobs", "2", "--out", str(out), "--quiet"], marker, start_new_session=True)
    try:
        _wait_for_pool(out, marker)
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "Traceback" not in stderr, stderr
        assert "interrupted" in stderr and len(stderr.strip().splitlines()) == 1, stderr
        assert wait_gone(marker) == []
        published = _published(out)
        time.sleep(2)  # nothing keeps working after the command has gone
        assert _published(out) == published
        assert all(run_state(out / "runs" / key) == "completed" for key in published)
        assert not (out / "tune.json").exists()
    finally:
        _end(marker)


@pytest.mark.slow
def test_sigkilled_reproduce_takes_its_pool_with_it(tmp_path):
    """SIGKILL cannot be handled: the pool workers notice their parent's death, end, and publish nothing."""
    out, marker = tmp_path / "rep", f"byzrsa-test-{uuid.uuid4()}"
    proc = _start(["reproduce", "fig4a", "--iterations", "1000000", "--eval-every", "20", "--quiet", "--jobs", "2",
                   "--out", str(out)], marker)
    try:
        _wait_for_pool(out, marker)
        proc.kill()
        proc.wait(timeout=30)
        assert wait_gone(marker, seconds=10) == []  # pool workers (mid-run) and the resource tracker
        published = _published(out)
        time.sleep(2)
        assert _published(out) == published
        for tmp in (out / "runs").glob(".tmp-*"):  # what the dead workers left says so by itself
            assert run_state(tmp) in ("killed", "missing")
    finally:
        _end(marker)
    # The next invocation takes the lock the dead one held, and clears its leftovers.
    from byzrsa.experiments.paper import execute
    from byzrsa.experiments.paper.plan import base_settings, plan

    runs = dict(list(plan(["fig4a"], base_settings("mnist-sample", iterations=5)).runs.items())[:1])
    assert execute(runs, out, jobs=1, quiet=True)[0] == {}
    assert not list((out / "runs").glob(".tmp-*"))


# ------------------------------------------------------------------------- folder states


def test_markers_of_other_processes_and_other_boots_read_killed(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    parent = os.getppid()
    for text in (f"{parent} - 1\n", f"{parent} not-this-boot -\n", "999999999\n", "garbage\n", ""):
        (out / MARKER).write_text(text)
        assert run_state(out) == "killed", text
    (out / MARKER).write_text(f"{parent}\n")  # a bare pid of a live process (older markers)
    assert run_state(out) == "running"


def test_every_way_a_summary_can_lie_reads_corrupt(tmp_path):
    run(SMALL, tmp_path / "good")
    good = tmp_path / "good"
    assert run_state(good) == "completed"
    assert run_state(good, iterations=21) == "corrupt"
    texts = {"summary.json": ["", "[1, 2]", '{"status": 3}', '{"status": "finished"}', "\x00\xff"],
             "metrics.csv": ["", "iteration\n", "iteration,accuracy\nten,1\n", "iteration\n10\n"],
             "config.json": ['{"iterations": 30}']}
    for name, variants in texts.items():
        for text in variants:
            folder = tmp_path / f"bad-{uuid.uuid4().hex[:6]}"
            folder.mkdir()
            for other in ("summary.json", "metrics.csv", "config.json"):
                (folder / other).write_bytes((good / other).read_bytes())
            (folder / name).write_text(text, errors="surrogateescape")
            assert run_state(folder) == "corrupt", (name, text)
    (tmp_path / "a-file").write_text("x")
    assert run_state(tmp_path / "a-file") == "corrupt"
    assert run_state(tmp_path / "nothing") == "missing"


def test_interrupted_summary_says_where_and_why(tmp_path, monkeypatch):
    import byzrsa.experiments.runner as runner

    real = runner._rows

    def interrupted(*args, **kwargs):
        for row in real(*args, **kwargs):
            yield row
            if row["iteration"] == 10:
                raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(runner, "_rows", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(SMALL, tmp_path / "r")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert summary["iterations"] == 10 and summary["planned_iterations"] == 20
    assert run_state(tmp_path / "r") == "interrupted" and not (tmp_path / "r" / MARKER).exists()


def test_overwrite_keeps_the_old_run_until_the_new_one_starts(tmp_path):
    out = tmp_path / "r"
    run(SMALL, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ByzrsaError):  # a data error surfaces after the folder was claimed
        run({**SMALL, "dataset": "mnist", "data_dir": str(tmp_path / "no-data")}, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and run_state(out) == "completed"


@pytest.mark.slow
def test_resume_never_writes_into_a_folder_holding_another_run(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    run({**SMALL, "checkpoint_every": 10}, a)
    run({**SMALL, "seed": 3}, b)
    before = (b / "summary.json").read_text()
    args = ["run", "--resume", str(a), "--out", str(b), "--quiet"]
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert (b / "summary.json").read_text() == before
    assert main(["run", "--resume", str(a), "--overwrite", "--quiet"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0 and run_state(b) == "completed"
    assert json.loads((b / "config.json").read_text())["seed"] == 0


def test_refused_concurrent_execute_writes_nothing(tmp_path):
    from byzrsa.experiments.tune import tune

    out = tmp_path / "t"
    out.mkdir()
    with lock_held_elsewhere(out / ".lock"):
        with pytest.raises(ConfigError, match="another byzrsa"):
            tune(SMALL, [1e-3, 1e-2], out=out, jobs=1, quiet=True)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no runs/, no tune.json


def test_float32_overflow_is_refused_for_both_engines_before_any_process(tmp_path):
    for engine in ("sim", "dist"):
        with pytest.raises(ConfigError, match="overflows float32"):
            run({**SMALL, "engine": engine, "byzantine": 1, "attack": "same-value", "attack.c": 1e39}, tmp_path / engine)
        assert not (tmp_path / engine).exists()


# ------------------------------------------------------------------------------- resume

RESUMED = [
    dict(method="rsa", norm="linf", attack="sign-flip", master_order="gauss-seidel"),
    dict(method="cclip", pre="bucketing", momentum=0.5, attack="alie", model="toy_dropout_net:Net",
         plugins="toy_dropout_net"),
    dict(method="krum", attack="ipm"),
]


@pytest.mark.parametrize("settings", RESUMED, ids=["rsa-linf-signflip", "cclip-bucketing-dropout", "krum-ipm"])
@pytest.mark.slow
def test_resumed_trajectory_equals_the_uninterrupted_one_everywhere(tmp_path, monkeypatch, settings):
    """Every metrics row and every piece of saved state equal, bit for bit, in float64 (time aside)."""
    (tmp_path / "toy_dropout_net.py").write_text(DROPOUT_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    base = dict(dataset="digits", workers=5, byzantine=1, batch_size=4, iterations=40, eval_every=5,
                dtype="float64", lr=0.05, checkpoint_every=10, **settings)
    whole, part = tmp_path / "whole", tmp_path / "part"
    run(base, whole)
    run({**base, "iterations": 35}, part)  # last checkpoint at 30, rows up to 35: the resume redoes 31..35
    assert main(["run", "--resume", str(part), "--iterations", "40", "--quiet"]) == 0
    assert run_state(part) == "completed"

    def rows(folder):
        with open(folder / "metrics.csv", newline="") as handle:
            return [{k: v for k, v in r.items() if k != "time"} for r in csv.DictReader(handle)]

    assert rows(whole) == rows(part) and len(rows(whole)) == 9
    a = torch.load(whole / "checkpoint.pt", weights_only=True)["sim"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["sim"]
    _assert_same(a, b)


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resume_refuses_damaged_or_short_checkpoints(tmp_path, capsys):
    out = tmp_path / "r"
    run({**SMALL, "checkpoint_every": 10}, out)
    assert main(["run", "--resume", str(out), "--iterations", "5", "--quiet"]) == 2
    assert "beyond this run's 5 iterations" in capsys.readouterr().err
    (out / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes()[:100])
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read" in err[0]
    assert run_state(out) == "completed"  # the refused resumes left the folder as it was


# --------------------------------------------------------------------------- checkpoints


class _Payload:
    """What an attacker puts in a checkpoint: unpickling it creates a folder (it could run any command)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("engine", ["sim", "dist"])
def test_resume_never_runs_code_from_a_crafted_checkpoint(tmp_path, capsys, engine):
    out, pwned = tmp_path / "r", tmp_path / "pwned"
    run({**SMALL, "checkpoint_every": 10}, out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["identity"] = {"payload": _Payload(str(pwned)), **state["identity"]}  # the checks read it first
    torch.save({**state, "engine": engine}, out / "checkpoint.pt")
    assert main(["run", "--resume", str(out), "--engine", engine, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused without running them" in err[0], err
    assert not pwned.exists() and run_state(out) == "completed"


@pytest.mark.slow
def test_damaged_or_foreign_checkpoints_are_one_line_refusals_on_both_engines(tmp_path, capsys):
    from byzrsa.engines.common import config_identity
    from byzrsa.config import config_from_dict

    out = tmp_path / "r"
    run({**SMALL, "checkpoint_every": 10}, out)
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    identity = config_identity(config_from_dict({**SMALL, "checkpoint_every": 10}))
    dist_like = {"format": 1, "engine": "dist", "identity": identity, "k": 10, "x0": good["sim"]["x0"]}
    cases = [
        ("sim", {}, "not a byzrsa checkpoint"),
        ("dist", {}, "not a byzrsa checkpoint"),
        ("sim", [1, 2], "holds a list"),
        ("dist", [1, 2], "holds a list"),
        ("dist", good, "checkpoint of the sim engine; resume it with --engine sim"),
        ("sim", dist_like, "checkpoint of the dist engine; resume it with --engine dist"),
        ("sim", {**good, "format": 7}, "format 7"),
        ("sim", {**good, "sim": {**good["sim"], "k": "ten"}}, "damaged: 'k' is a str"),
        ("sim", {**good, "sim": {k: v for k, v in good["sim"].items() if k != "samplers"}}, "not a usable"),
        ("sim", {k: v for k, v in good.items() if k != "rows"}, "damaged: no 'rows' entry"),
        ("dist", {k: v for k, v in dist_like.items() if k != "x0"}, "damaged: no 'x0' entry"),
        ("dist", {**dist_like, "x0": "model"}, "damaged: 'x0' is a str"),
    ]
    for engine, state, expected in cases:
        torch.save(state, out / "checkpoint.pt")
        assert main(["run", "--resume", str(out), "--engine", engine, "--quiet"]) == 2, (engine, expected)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and "Traceback" not in err[0], (engine, expected, err)
        assert run_state(out) == "completed", (engine, expected)


def test_checkpoints_hold_plain_data_only():
    from byzrsa.engines.checkpoint_io import check_plain

    check_plain({"a": [1, 2.5, "s", None, True, (torch.zeros(2),)], 3: {"b": torch.tensor(1)}})
    for bad, where in [({"attack_state": {"v": np.zeros(2)}}, "state.attack_state.v"),
                       ({"x": [object()]}, "state.x[0]"), ({(1, 2): 3}, "key of type tuple")]:
        with pytest.raises(ConfigError, match=re.escape(where)):
            check_plain(bad)


NUMPY_STATE_ATTACK = '''
import numpy as np
from byzrsa.attacks import ATTACKS, Attack


def keeps_an_array(regular, own, ctx):
    ctx.state["raw"] = np.zeros(1)
    return regular.mean(dim=0).expand(own.shape[0], -1).clone()


ATTACKS.register(Attack("numpy-state", keeps_an_array, "numpy-state", "keeps a NumPy array in its state"))
'''


def test_an_attack_state_that_is_not_plain_data_fails_the_run_in_one_line(tmp_path, monkeypatch):
    from byzrsa.attacks import ATTACKS

    (tmp_path / "numpy_state_attack.py").write_text(NUMPY_STATE_ATTACK)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ConfigError, match=r"attack_state\.raw holds a numpy\.ndarray"):
            run({**SMALL, "byzantine": 1, "attack": "numpy-state", "plugins": "numpy_state_attack",
                 "checkpoint_every": 10}, tmp_path / "r")
    finally:
        ATTACKS.unregister("numpy-state")
        sys.modules.pop("numpy_state_attack", None)
    assert run_state(tmp_path / "r") == "failed"
    assert not list((tmp_path / "r").glob(".checkpoint.pt.tmp*"))


# ------------------------------------------------------------------ the dist master and its workers


@pytest.mark.slow
def test_no_frame_a_worker_sends_crashes_the_dist_master(tmp_path):
    """Byzantine frames: too large for the master's buffer (gloo used to abort it), of the wrong kind, of another
    model's size, of another dtype, short; and a greeting with another config. Each is dropped and logged."""
    out = tmp_path / "r"
    env = {**os.environ, "BYZRSA_DIST_FAULTS": "3:0:config,1:4:oversize,2:5:kind,0:6:foreign,1:7:dtype,2:8:size"}
    proc = subprocess.run([sys.executable, "-m", "byzrsa.cli", "run", "--engine", "dist", "--dataset", "digits",
                           "--workers", "4", "--byzantine", "1", "--attack", "same-value", "--iterations", "20",
                           "--eval-every", "10", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert run_state(out) == "completed" and not (out / MARKER).exists()
    summary = json.loads((out / "summary.json").read_text())
    assert [(d["worker"], d["iteration"]) for d in summary["dead_workers"]] == [(3, 0)]
    assert "different config" in summary["dead_workers"][0]["reason"]
    bad = summary["malformed_messages"]
    assert bad["1"]["count"] == 2 and "more than the" in bad["1"]["first"] and "iteration 4" in bad["1"]["first"]
    assert bad["2"]["count"] == 2 and "expected MSG of iteration 5, got LOCAL" in bad["2"]["first"]
    assert bad["0"]["count"] == 1 and "entries, expected" in bad["0"]["first"]
    assert "treated as Byzantine" in proc.stderr and "Traceback" not in proc.stderr


def test_frame_check_uses_the_receivers_knowledge():
    from byzrsa.engines.dist.transport import Kind, decode, encode
    from byzrsa.engines.dist.wire import check_frame

    frame = decode(encode(Kind.MSG, 3, torch.zeros(5, dtype=torch.float64)))
    assert check_frame(frame, kind=Kind.MSG, iteration=3, dtype=torch.float64, numel=5, rows=1) is None
    assert "iteration 4" in check_frame(frame, kind=Kind.MSG, iteration=4)
    assert "got MSG" in check_frame(frame, kind=Kind.LOCAL, iteration=3)
    assert "dtype" in check_frame(frame, kind=Kind.MSG, iteration=3, dtype=torch.float32)
    assert "5 entries, expected 6" in check_frame(frame, kind=Kind.MSG, iteration=3, numel=6)


def test_socket_link_drops_oversized_frames_and_stays_in_step():
    import socket as socket_

    from byzrsa.engines.dist.transport import Kind, Malformed, PeerLost, encode
    from byzrsa.engines.dist.wire import SocketLink

    a, b = socket_.socketpair()
    receiver = SocketLink(a, capacity=64 + 8 * 10, peer_capacity=0)
    sender = SocketLink(b, capacity=64, peer_capacity=1 << 30)
    deadline = time.monotonic() + 5
    sender.send(encode(Kind.MSG, 1, torch.zeros(1000, dtype=torch.float64)))  # 8000 bytes into an 80-byte buffer
    sender.send(encode(Kind.MSG, 2, torch.arange(10, dtype=torch.float64)))
    with pytest.raises(Malformed, match="more than the 80 accepted"):
        receiver.receive(deadline)
    frame = receiver.receive(deadline)
    assert frame.iteration == 2 and torch.equal(frame.tensor(), torch.arange(10, dtype=torch.float64))
    b.sendall(b"\x00" * 64)  # not a byzrsa header: where the next frame starts is unknown
    with pytest.raises(PeerLost, match="not a byzrsa frame"):
        receiver.receive(deadline)
    b.close()


# ------------------------------------------------------------------------------ a full disk

SMALL_FLAGS = ["--dataset", "digits", "--workers", "4", "--iterations", "20", "--eval-every", "10", "--quiet"]


def _limited(args: list[str], max_bytes: int, **kwargs) -> subprocess.CompletedProcess:
    """byzrsa in a process that may write no file larger than ``max_bytes`` (EFBIG past it, as on a full quota)."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", "byzrsa.cli", *args], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300, **kwargs)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*tmp*"))


@pytest.mark.slow
def test_a_checkpoint_past_the_file_size_limit_fails_the_run_in_one_line(tmp_path):
    out = tmp_path / "r"
    done = _limited(["run", *SMALL_FLAGS, "--checkpoint-every", "10", "--out", str(out)], 100_000)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "checkpoint.pt" in lines[0] and "File too large" in lines[0] and "Traceback" not in done.stderr
    assert run_state(out) == "failed" and not (out / MARKER).exists() and _temporaries(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "File too large" in summary["error"] and summary["iterations"] == 10
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.slow
def test_results_that_cannot_be_written_leave_no_marker_and_no_temporary_file(tmp_path):
    out = tmp_path / "r"
    done = _limited(["run", *SMALL_FLAGS, "--out", str(out)], 300)  # config.json itself does not fit
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "config.json" in lines[0] and "File too large" in lines[0], done.stderr
    assert not (out / MARKER).exists() and _temporaries(out) == []
    assert run_state(out) != "completed"


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_every_write_error_during_a_run_is_one_line_and_a_failed_summary(tmp_path, monkeypatch, capsys, code):
    import errno

    import byzrsa.experiments.runner as runner

    real = runner._rows

    def full_disk(*args, **kwargs):  # the disk fills up between two evaluations
        for row in real(*args, **kwargs):
            yield row
            if row["iteration"] == 10:
                raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(tmp_path / "r" / "metrics.csv"))

    monkeypatch.setattr(runner, "_rows", full_disk)
    assert main(["run", *SMALL_FLAGS, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.csv" in err[0] and os.strerror(getattr(errno, code)) in err[0], err
    assert run_state(tmp_path / "r") == "failed" and not (tmp_path / "r" / MARKER).exists()


@pytest.mark.slow
def test_reproduce_on_a_full_disk_ends_in_one_line(tmp_path):
    out = tmp_path / "rep"
    done = _limited(["reproduce", "fig4a", "--dataset", "digits", "--iterations", "5", "--eval-every", "5", "--jobs", "1",
                     "--quiet", "--out", str(out)], 10_000)  # the runs fit; the figure does not
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "figures/fig4a.png: File too large" in lines[0]
    assert not list(out.rglob(MARKER)) and _temporaries(out) == []
    assert not (out / "figures" / "fig4a.png").exists()


DISK_GRID = """
name = "disk"
seeds = [0]
byzantine = [2]
levels = ["iid"]
attacks = ["none", "sign-flip"]
[base]
dataset = "digits"
workers = 10
iterations = 20
eval_every = 10
[[methods]]
method = "median"
lr = 0.1
"""


@pytest.mark.slow
def test_bench_on_a_full_disk_ends_in_one_line(tmp_path):
    out = tmp_path / "bench"
    (tmp_path / "g.toml").write_text(DISK_GRID)
    done = _limited(["bench", "--grid", str(tmp_path / "g.toml"), "--untuned", "--jobs", "1", "--quiet", "--out",
                     str(out)], 10_000)  # the runs and the tables fit; the heatmap does not
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "heatmap" in lines[0] and ".png: File too large" in lines[0]
    assert not list(out.rglob(MARKER)) and _temporaries(out) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_out_is_one_line_for_every_command(tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        for args in (["run", *SMALL_FLAGS], ["bench", "quick", "--quiet"],
                     ["reproduce", "fig4a", "--dataset", "digits", "--iterations", "5", "--quiet"]):
            done = subprocess.run([sys.executable, "-m", "byzrsa.cli", *args, "--out", str(out / "x")],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)
    finally:
        out.chmod(0o700)


# ------------------------------------------------------------------- claims and second signals


def _claim(out: str, start, results) -> None:
    from byzrsa.folders import claim_folder

    start.wait()
    try:
        claim_folder(Path(out))
        results.put("won")
    except ConfigError:
        results.put("refused")
    start.wait()  # the winner stays alive (its marker live) until every claim has been decided


def test_six_processes_claiming_one_folder_at_once_give_one_winner(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for attempt in range(3):
        out = tmp_path / f"r{attempt}"
        start, results = context.Barrier(6), context.Queue()
        procs = [context.Process(target=_claim, args=(str(out), start, results)) for _ in range(6)]
        for proc in procs:
            proc.start()
        outcomes = sorted(results.get(timeout=60) for _ in procs)
        for proc in procs:
            proc.join(30)
        assert outcomes == ["refused"] * 5 + ["won"], outcomes


@pytest.mark.parametrize("engine", ["sim", "dist"])
@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c-twice", "ctrl-c-then-sigterm"])
@pytest.mark.slow
def test_a_second_signal_during_clean_up_still_leaves_a_summary(tmp_path, engine, second):
    out, marker = tmp_path / "r", f"byzrsa-test-{uuid.uuid4()}"
    proc = _start(["run", "--dataset", "digits", "--workers", "4", "--iterations", "1000000", "--eval-every", "50",
                   "--engine", engine, "--out", str(out), "--quiet"], marker)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len((out / "metrics.csv").read_text().splitlines() if (out / "metrics.csv").exists() else []) < 3:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(second)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Traceback" not in stderr, stderr
        assert "partial results are in" in stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
        assert run_state(out) == "interrupted" and _temporaries(out) == []
        assert wait_gone(marker) == []
    finally:
        _end(marker)


def test_reproduce_redoes_a_stored_run_it_cannot_read(tmp_path):
    from byzrsa.experiments.paper import execute, run_folder
    from byzrsa.experiments.paper.plan import base_settings, plan

    out = tmp_path / "rep"
    runs = dict(list(plan(["fig4a"], base_settings("digits", iterations=5)).runs.items())[:1])
    (key,) = runs
    assert execute(runs, out, jobs=1, quiet=True)[0] == {}
    folder = run_folder(out, key)
    good_config = (folder / "config.json").read_text()
    damages = [("config.json", good_config[: len(good_config) // 2])]
    summary = json.loads((folder / "summary.json").read_text())
    damages.append(("summary.json", json.dumps({k: v for k, v in summary.items() if k != "final_accuracy"})))
    for name, text in damages:
        (folder / name).write_text(text)
        assert run_state(folder) == "corrupt", name
        assert execute(runs, out, jobs=1, quiet=True)[0] == {}
        assert run_state(folder) == "completed", name
        settings = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if k != "provenance"}
        assert settings == {k: v for k, v in json.loads(good_config).items() if k != "provenance"}


# ------------------------------------------------------------------------------------ plugins

PLUGIN_FAILURES = {
    "raises": ("import math\nraise RuntimeError('the plugin is broken')\n",
               "failed while importing: RuntimeError: the plugin is broken ({}.py, line 2)"),
    "syntax": ("def rule(:\n    pass\n", "failed while importing: SyntaxError: "),
    "needs": ("import a_package_nobody_installed_xyz\n",
              "failed while importing: ModuleNotFoundError: No module named 'a_package_nobody_installed_xyz'"),
    "twice": ("from byzrsa.attacks import ATTACKS, Attack\nfrom byzrsa.attacks.basic import honest\n"
              "ATTACKS.register(Attack('sign-flip', honest, 'x', 'a second sign-flip'))\n",
              "failed while importing: ValueError: attack 'sign-flip' is registered twice"),
    "exits": ("import sys\nsys.exit(3)\n", "failed while importing: called sys.exit(3)"),
}


@pytest.mark.parametrize("case", sorted(PLUGIN_FAILURES))
def test_a_plugin_that_fails_to_import_is_one_line_naming_it(tmp_path, monkeypatch, capsys, case):
    name = f"broken_plugin_{case}_{uuid.uuid4().hex[:6]}"
    source, expected = PLUGIN_FAILURES[case]
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    for argv in (["run", *SMALL_FLAGS, "--plugins", name], ["run", "--list", "--plugins", name]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"plugin {name!r} " in err[0] and expected.format(name) in err[0], err
    monkeypatch.setenv("BYZRSA_DEBUG", "1")
    assert main(["run", *SMALL_FLAGS, "--plugins", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("byzrsa: error: plugin") and "Traceback" in err
    assert main(["run", *SMALL_FLAGS, "--plugins", "no_such_plugin_module_xyz"]) == 2
    assert "plugin 'no_such_plugin_module_xyz' cannot be imported" in capsys.readouterr().err


FAILING_COMPONENT = '''
import sys

from byzrsa.attacks import ATTACKS, Attack


def fails(regular, own, ctx):
    if ctx.state.setdefault("round", 0) == 3:
        {action}
    ctx.state["round"] += 1
    return regular.mean(dim=0).expand(own.shape[0], -1).clone()


ATTACKS.register(Attack("{attack}", fails, "{attack}", "fails at its fourth round"))
'''


@pytest.mark.parametrize("action", ["raise ValueError('no regular messages I like')", "sys.exit(3)"],
                         ids=["raises", "exits"])
def test_a_plugin_component_failing_during_a_run_is_one_line_and_a_failed_summary(tmp_path, monkeypatch, capsys,
                                                                                   action):
    from byzrsa.attacks import ATTACKS

    name, attack = f"failing_attack_{uuid.uuid4().hex[:6]}", f"fails-{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(FAILING_COMPONENT.format(action=action, attack=attack))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "r"
    try:
        code = main(["run", *SMALL_FLAGS, "--plugins", name, "--attack", attack, "--byzantine", "1", "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        expected = "ValueError: no regular messages I like" if "raise" in action else "called sys.exit(3)"
        assert f"plugin {name!r} failed during the run: {expected} ({name}.py, line 9)" in err[0], err
        assert run_state(out) == "failed" and not (out / MARKER).exists()
        assert expected in json.loads((out / "summary.json").read_text())["error"]
        assert main(["--debug", "run", *SMALL_FLAGS, "--plugins", name, "--attack", attack, "--byzantine", "1"]) == 2
        assert "Traceback" in capsys.readouterr().err
    finally:
        ATTACKS.unregister(attack)


# --------------------------------------------------------------------------- input the engines take


@pytest.mark.slow
def test_ten_thousand_dist_workers_are_refused_by_the_estimate_before_any_fork(monkeypatch, capsys):
    import multiprocessing

    import byzrsa.engines.common as common

    monkeypatch.setattr(common, "_available_bytes", lambda: 16 << 30)  # the same verdict on any machine
    started = time.process_time()  # CPU time: forking 10^4 workers would cost minutes of it, a loaded machine none
    assert main(["run", "--engine", "dist", "--workers", "10000", "--dataset", "synthetic", "--iterations", "2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "for its 10000 worker processes" in err[0] and "16.0 GiB are available" in err[0], err
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("byzrsa-worker")]
    assert time.process_time() - started < 60


def test_idx_images_holding_nan_are_refused_naming_the_file(tmp_path, capsys):
    from byzrsa.data.idx import write_idx
    from byzrsa.data.sources import IDX_FILES

    rng = np.random.default_rng(0)
    images = {"train_images": rng.random((60, 28, 28), dtype=np.float32), "test_images": rng.random((20, 28, 28), dtype=np.float32)}
    images["train_images"][7, 3, 4] = np.nan
    for role, stem in IDX_FILES.items():
        array = images.get(role, rng.integers(0, 10, 60 if role.startswith("train") else 20).astype(np.uint8))
        write_idx(tmp_path / stem, array)
    assert main(["run", "--dataset", "mnist", "--data-dir", str(tmp_path), "--workers", "4", "--iterations", "2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-images-idx3-ubyte holds 1 NaN or infinite values" in err[0], err


def test_a_second_bench_on_the_same_out_is_refused_before_it_does_anything(tmp_path, capsys):
    out = tmp_path / "b"
    out.mkdir()
    started = time.perf_counter()
    with lock_held_elsewhere(out / ".bench.lock"):  # a first bench is running there
        assert main(["bench", "quick", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another byzrsa bench is running" in err[0], err
    assert sorted(p.name for p in out.iterdir()) == [".bench.lock"]  # no calibration, no plan, no runs
    assert time.perf_counter() - started < 30


# ---------------------------------------------------------------------------------- the network


@pytest.mark.slow
def test_the_master_accepts_only_greetings_signed_with_the_runs_token(caplog):
    import socket as socket_
    import threading

    from byzrsa.engines.dist.transport import Kind, encode_blob
    from byzrsa.engines.dist.wire import PeerLost, accept_links, connect, listen, publish, sign

    class Store(dict):  # the launcher's key-value store, as far as byzrsa uses it
        def set(self, key, value):
            self[key] = value.encode()

        def get(self, key):
            return self[key]

    token, store = "s3cret", Store()
    listener = listen("127.0.0.1")
    assert listener.getsockname()[0] == "127.0.0.1"
    publish(store, listener, token)
    with pytest.raises(PeerLost, match="not signed with this run's token"):
        connect(store, "another-token", time.monotonic() + 1)

    def greet(worker, signature):
        sock = connect(store, token, time.monotonic() + 5)
        hello = {"worker": worker, "token": signature, "identity": {}}
        sock.sendall(memoryview(encode_blob(Kind.HELLO, 0, json.dumps(hello).encode()).numpy()).cast("B"))
        return sock

    clients = []

    def clients_connect():
        clients.append(greet(1, sign("a-guess", "worker 1")))  # not this run's token
        clients.append(greet(0, sign(token, "worker 0")))
        clients.append(greet(0, sign(token, "worker 0")))  # a second claim on worker 0
        raw = socket_.create_connection(listener.getsockname()[:2])
        raw.sendall(b"GET / HTTP/1.1\r\n" + b"x" * 100)  # not byzrsa at all
        clients.append(raw)

    thread = threading.Thread(target=clients_connect)
    thread.start()
    with caplog.at_level("WARNING", logger="byzrsa.dist"):
        links = accept_links(listener, 2, 4096, lambda w: 4096, token, time.monotonic() + 4, 5.0)
    thread.join()
    assert sorted(links) == [0] and json.loads(links[0].first.blob())["worker"] == 0
    text = caplog.text
    assert "does not carry this run's token" in text and "worker 0 has already connected" in text
    assert "not a byzrsa frame" in text
    for sock in clients:
        sock.close()
    listener.close()


# ------------------------------------------------------------------------------------- Flower


@pytest.mark.parametrize("bad", [{"lr": "fast"}, {"lamda": 0.1}, {"fraction-train": 0.0}, {"workres": 3}])
def test_a_refused_flower_run_config_leaves_a_failed_summary(tmp_path, bad):
    pytest.importorskip("flwr")
    from byzrsa.engines.flower.server import run_server

    out = tmp_path / "flower"
    with pytest.raises(ConfigError) as info:
        run_server(None, {"dataset": "digits", "workers": 4, "results-dir": str(out), **bad})
    assert len(str(info.value).splitlines()) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("ConfigError: ")
    assert run_state(out) == "failed"
