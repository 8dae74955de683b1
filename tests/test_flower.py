"""The Flower engine: same x0 trajectory as the simulator, on Flower's simulation engine and in a deployment.

Three groups:

* no Flower runtime: the run-config split, client sampling and RSA's sum over
  the replies that arrived, the rule's validity check on them, the omniscient
  adversary's view, a client's state surviving a round trip through
  ``context.state``;
* Flower's simulation engine (``run_simulation``, Ray): RSA under sign-flip
  (run on the Byzantine client), median under ALIE (the server-side
  omniscient adversary) and Krum under gaussian noise, each compared with
  :class:`byzrsa.engines.sim.Simulator` round by round in float64;
* a deployment on 127.0.0.1 (insecure, for the test only): a SuperLink and
  three SuperNodes as processes, ``flwr run examples/flower`` for two rounds,
  and every process the test started is gone at the end.

Skipped with a reason when flwr (or Ray, for the simulation engine) is not
installed: ``pip install -e ".[flower]"``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no events sent from the tests
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

pytest.importorskip("flwr", reason="the Flower engine needs flwr: pip install -e '.[flower]'")

from flwr.app import RecordDict  # noqa: E402

from byzrsa.config import config_from_dict  # noqa: E402
from byzrsa.engines.common import build_problem  # noqa: E402
from byzrsa.engines.flower import (  # noqa: E402
    ClientWorker,
    FlowerSettings,
    OmniscientAdversary,
    RobustStrategy,
    RSAStrategy,
    client_app,
    flower_run_config,
    load_job,
    server_app,
    split_run_config,
)
from byzrsa.engines.flower.strategy import RoundMessages  # noqa: E402
from byzrsa.engines.sim import Simulator  # noqa: E402
from byzrsa.errors import ConfigError  # noqa: E402
from byzrsa.methods import rsa_master_step, step_size  # noqa: E402
from processes import marked_processes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(dataset="synthetic", workers=4, byzantine=1, batch_size=4, iterations=6, eval_every=3,
            dtype="float64", seed=5, lr=0.05, lam=0.05)


def config(**settings):
    return config_from_dict({**BASE, **settings})


def job_of(c, **settings):
    return load_job(flower_run_config(c, FlowerSettings(**settings)))


def sim_trajectory(c) -> torch.Tensor:
    sim = Simulator(build_problem(c))
    points = [sim.x0.clone()]
    with torch.no_grad():
        for _ in range(c.iterations):
            sim.step()
            points.append(sim.x0.clone())
    return torch.stack(points)


# ----------------------------------------------------------------------------- no Flower runtime


def test_run_config_round_trip_and_typos():
    c = config(method="median", attack="alie", pre="nnm", **{"attack.z": 1.5})
    flat = flower_run_config(c, FlowerSettings(fraction_train=0.5))
    assert "attack.z" in flat and flat["fraction-train"] == 0.5 and "agg_f" not in flat  # None is left out
    back, settings = split_run_config(flat)
    assert back.to_dict() == c.to_dict() and settings.fraction_train == 0.5
    with pytest.raises(ConfigError, match="lamda"):
        split_run_config({**flat, "lamda": 0.1})
    with pytest.raises(ConfigError, match="fraction-trian"):
        split_run_config({**flat, "fraction-trian": 0.5})
    with pytest.raises(ConfigError, match="fraction-train"):
        FlowerSettings(fraction_train=0.0)


def test_sampling_is_seeded_and_rsa_sums_over_the_replies_that_arrived():
    job = job_of(config(workers=6, byzantine=0), fraction_train=0.5)
    nodes = {w: 100 + w for w in range(6)}
    a, b = RSAStrategy(job, nodes), RSAStrategy(job, nodes)
    draws = [a.sample(k) for k in range(1, 6)]
    assert draws == [b.sample(k) for k in range(1, 6)]  # the server's own seeded stream
    assert all(len(d) == 3 and d == sorted(d) for d in draws) and len({tuple(d) for d in draws}) > 1
    # Two of the three sampled replies arrive: the master's sum runs over those two, nothing else.
    g = torch.Generator().manual_seed(0)
    z = {w: torch.randn(job.d, generator=g, dtype=torch.float64) for w in (1, 4)}
    x = a.x.clone()
    a.finish(RoundMessages(1, sampled=[1, 3, 4], messages=dict(z), replied={1, 4}))
    c = job.config
    expected = rsa_master_step(x, torch.stack([z[1], z[4]]), lam=c.lam, p=job.p, alpha=step_size(c.lr, 1), mu=c.mu)
    torch.testing.assert_close(a.x, expected, rtol=0, atol=1e-14)
    assert a.stats["failed"] == 0  # the counts are the caller's: collect() fills them from the replies
    # rescale-sum: lambda * m / |arrived|
    scaled = RSAStrategy(job_of(config(workers=6, byzantine=0), fraction_train=0.5, rescale_sum=True), nodes)
    scaled.finish(RoundMessages(1, sampled=[1, 3, 4], messages=dict(z), replied={1, 4}))
    expected = rsa_master_step(x, torch.stack([z[1], z[4]]), lam=c.lam * 3, p=job.p, alpha=step_size(c.lr, 1), mu=c.mu)
    torch.testing.assert_close(scaled.x, expected, rtol=0, atol=1e-14)


def test_rule_validity_is_checked_on_the_replies_that_arrived():
    job = job_of(config(workers=5, byzantine=1, method="krum"))  # Krum needs m >= 2f + 3 = 5 rows
    strategy = RobustStrategy(job, {w: w + 1 for w in range(5)})
    x = strategy.x.clone()
    rows = {w: torch.ones(job.d, dtype=torch.float64) * w for w in range(4)}  # one reply missing
    strategy.finish(RoundMessages(1, sampled=list(range(5)), messages=rows, replied=set(rows)))
    assert torch.equal(strategy.x, x) and strategy.stats["skipped"] == 1  # skipped, model unchanged
    rows[4] = torch.full((job.d,), 4.0, dtype=torch.float64)
    strategy.finish(RoundMessages(2, sampled=list(range(5)), messages=rows, replied=set(rows)))
    assert not torch.equal(strategy.x, x) and strategy.stats["skipped"] == 1
    with pytest.raises(ConfigError, match="mean only"):
        RobustStrategy(job, {}, weighted=True)


def test_omniscient_adversary_reads_each_regular_worker_at_its_row():
    job = job_of(config(workers=4, byzantine=1, attack="copy", **{"attack.copy_from": 1}))
    adversary = OmniscientAdversary(RSAStrategy(job, {w: w + 1 for w in range(4)}))
    v = {w: torch.full((job.d,), float(w + 1), dtype=torch.float64) for w in range(3)}
    rnd = RoundMessages(1, sampled=[0, 1, 2, 3], messages=dict(v), replied={0, 1, 2, 3})
    adversary.forge(rnd)
    assert torch.equal(rnd.messages[3], v[1])  # worker 3 sends worker 1's message
    later = RoundMessages(2, sampled=[0, 2, 3], messages={0: v[0] * 5, 2: v[2] * 5}, replied={0, 2, 3})
    adversary.forge(later)  # worker 1 is absent: its row keeps its last message
    assert torch.equal(later.messages[3], v[1])


def test_client_state_survives_context_state():
    job = job_of(config(attack="sign-flip"))
    x0 = job.init_vector() + 0.1
    kept, fresh = RecordDict(), ClientWorker(job, 3, RecordDict())  # worker 3 is Byzantine
    sent = []
    for k in (1, 2, 3):
        worker = ClientWorker(job, 3, kept)  # a new process each round, as in a deployment
        sent.append(worker.train(k, x0, report=False)[0])
        worker.save()
    for k, message in zip((1, 2, 3), sent):
        assert torch.equal(fresh.train(k, x0, report=False)[0], message)
    with pytest.raises(ValueError, match="round 3"):
        ClientWorker(job, 3, kept).train(3, x0, report=False)


def test_a_serverapp_error_is_one_line_in_flowers_log(capsys):
    import logging

    from byzrsa.engines.flower.server import OneLineErrors

    record = logging.LogRecord("flwr", logging.ERROR, __file__, 1, "%s raised an exception", ("ServerApp",), None)
    try:  # as the simulation wraps it: RuntimeError from the ServerApp's error
        try:
            raise ConfigError("fraction-train must be in (0, 1], got 0.0")
        except ConfigError as exc:
            raise RuntimeError("An error was encountered. Ending simulation.") from exc
    except RuntimeError:
        record.exc_info = sys.exc_info()
    assert OneLineErrors().filter(record)
    text = logging.Formatter().format(record)
    assert text == "ServerApp raised an exception: ConfigError: fraction-train must be in (0, 1], got 0.0"
    bug = logging.LogRecord("flwr", logging.ERROR, __file__, 1, "boom", (), None)
    try:
        raise KeyError("a bug")
    except KeyError:
        bug.exc_info = sys.exc_info()
    OneLineErrors().filter(bug)
    assert "Traceback" in logging.Formatter().format(bug)  # anything else keeps its traceback


def test_results_folder_is_claimed_like_byzrsa_run(tmp_path):
    from byzrsa.engines.flower.results import Results
    from byzrsa.folders import MARKER, run_state

    c = config(iterations=2, eval_every=1)
    out = tmp_path / "run"
    job = job_of(c, results_dir=str(out))
    killed = Results(str(out), job)  # a ServerApp that is then killed (SIGKILL): it writes nothing more
    killed.row({"iteration": 0, "accuracy": 0.5})
    assert (out / MARKER).exists() and not (out / "summary.json").exists() and run_state(out) == "killed"
    results = Results(str(out), job_of(c, results_dir=str(out), overwrite=True))  # a killed run needs overwrite too
    for k in range(3):
        results.row({"iteration": k, "accuracy": 0.5 + k / 10, "train_loss": 1.0 / (k + 1)})
    summary = results.finish("completed", job.init_vector())
    assert run_state(out) == "completed" and not (out / MARKER).exists()
    assert summary["final_accuracy"] == 0.7 and summary["iterations"] == summary["planned_iterations"] == 2
    with pytest.raises(ConfigError, match=r"results-dir .* already holds a run \(completed\); set overwrite=true") as info:
        Results(str(out), job)
    assert len(str(info.value).splitlines()) == 1 and run_state(out) == "completed"  # left as it was
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        Results(str(out / "summary.json"), job)
    again = Results(str(out), job_of(c, results_dir=str(out), overwrite=True))
    assert not (out / "summary.json").exists() and not (out / "x0.pt").exists()  # the old run's files are gone
    again.finish("interrupted", None)
    assert run_state(out) == "interrupted"
    assert split_run_config({**flower_run_config(c), "overwrite": True})[1].overwrite


def test_an_interrupted_serverapp_says_so(tmp_path):
    from byzrsa.engines.flower.server import run_server
    from byzrsa.folders import run_state

    class Stopped:  # Flower's SIGTERM handler ends the ServerApp with sys.exit while it waits for nodes
        def get_node_ids(self):
            raise SystemExit(1)

    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        run_server(Stopped(), {**flower_run_config(config()), "results-dir": str(out)})
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted" and run_state(out) == "interrupted"


class _Grid:
    """A Grid in one process: each pushed message goes straight to the ClientApp of its node (partition ids given)."""

    def __init__(self, app, partitions: list[int], total: int | None = None) -> None:
        from flwr.app import Context

        self.app, self.replies = app, {}
        self.contexts = {10 + i: Context(run_id=1, node_id=10 + i, node_config={"partition-id": p, "num-partitions": total or len(partitions)},
                                         state=RecordDict(), run_config={}) for i, p in enumerate(partitions)}

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for message in messages:  # the SuperLink gives each message its id
            message.metadata.__dict__["_message_id"] = ident = uuid.uuid4().hex
            self.replies[ident] = self.app(message, self.contexts[message.metadata.dst_node_id])
            ids.append(ident)
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in ids if i in self.replies]


def test_a_supernode_that_does_not_fit_is_one_line_naming_the_fix(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from byzrsa.engines.flower.server import discover

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)  # what Flower's runtime sets in a ServerApp process
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    c = config()  # 4 workers
    app, job = client_app(flower_run_config(c)), job_of(c, discovery_timeout=0.3)
    assert discover(_Grid(app, [3, 1, 0, 2]), job) == {3: 10, 1: 11, 0: 12, 2: 13}
    fix = 'num-supernodes=4".*partition-id=I num-partitions=4'
    with pytest.raises(ConfigError, match=f"num-partitions 5 differs from the run's 4 workers; .*{fix}") as info:
        discover(_Grid(app, [0, 1, 2, 3, 4]), job)  # num-supernodes=5: the clients answer with a one-line error
    assert len(str(info.value).splitlines()) == 1 and "<class" not in str(info.value)
    with pytest.raises(ConfigError, match='workers \\[3\\] never answered .*partition-id=I num-partitions=4.*num-supernodes=4'):
        discover(_Grid(app, [0, 1, 2], total=4), job)  # a deployment whose 4th SuperNode never started



def test_a_slow_node_is_greeted_once(monkeypatch):
    # Flower's simulation engine writes back the context each message found: a second greeting answered
    # after the first rounds would reset the node's saved state (seen as a flaky mismatch under load).
    from flwr.supercore.task_identity import TaskIdentity

    from byzrsa.engines.flower import server

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)

    class Clock:  # one second passes at every reading: the nodes answer after a minute, at no cost
        now = 0.0

        def monotonic(self):
            self.now += 1.0
            return self.now

        def sleep(self, seconds):
            pass

    class SlowGrid(_Grid):
        def __init__(self, app, partitions):
            super().__init__(app, partitions)
            self.pushed: list[int] = []
            self.pulls = 0

        def push_messages(self, messages):
            messages = list(messages)
            self.pushed += [m.metadata.dst_node_id for m in messages]
            return super().push_messages(messages)

        def pull_messages(self, ids):
            self.pulls += 1
            return [] if self.pulls <= 60 else super().pull_messages(ids)  # the nodes answer late

    monkeypatch.setattr(server, "time", Clock())
    c = config()
    grid = SlowGrid(client_app(flower_run_config(c)), [2, 0, 3, 1])
    assert server.discover(grid, job_of(c, discovery_timeout=300.0)) == {2: 10, 0: 11, 3: 12, 1: 13}
    assert sorted(grid.pushed) == [10, 11, 12, 13] and grid.pulls > 60


# ----------------------------------------------------------------------------- Flower's simulation engine

def _simulate(tmp_path: Path, c, **settings) -> tuple[dict, torch.Tensor, list[dict]]:
    pytest.importorskip("ray", reason="Flower's simulation engine needs Ray: pip install 'flwr[simulation]'")
    from flwr.simulation import run_simulation

    out = tmp_path / "run"
    run_config = flower_run_config(c, FlowerSettings(results_dir=str(out), save_trajectory=True, **settings))
    backend = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2, "logging_level": "ERROR"}}
    run_simulation(server_app(run_config), client_app(run_config), num_supernodes=c.workers, backend_config=backend)
    summary = json.loads((out / "summary.json").read_text())
    rows = (out / "metrics.csv").read_text().splitlines()
    return summary, torch.load(out / "trajectory.pt"), rows


@pytest.mark.parametrize("settings", [
    dict(attack="sign-flip"),  # RSA, attack on the Byzantine client
    dict(method="median", attack="alie"),  # the server-side omniscient adversary
    dict(method="krum", attack="gaussian", workers=5, **{"attack.std": 3.0}),
], ids=["rsa-sign-flip", "median-alie", "krum-gaussian"])
@pytest.mark.slow
def test_simulation_engine_matches_the_simulator(tmp_path, settings):
    c = config(**settings)
    summary, trajectory, rows = _simulate(tmp_path, c)
    assert summary["status"] == "completed" and summary["failed"] == summary["malformed"] == 0
    assert len(rows) == 1 + 3  # header, k = 0, 3, 6
    torch.testing.assert_close(trajectory, sim_trajectory(c), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- a deployment on 127.0.0.1


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _end(marker: str, started: list[subprocess.Popen]) -> list[int]:
    """End every process carrying ``marker`` (the ones started and what they started); return any left."""
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 3
    for proc in started:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pid in marked_processes(marker):  # children the Flower processes spawned (SuperExec, app processes)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while (left := marked_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process accounting reads /proc")
@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="flower-superlink is not on PATH")
@pytest.mark.slow
def test_deployment_superlink_and_three_supernodes(tmp_path):
    marker = f"BYZRSA_FLOWER_TEST={uuid.uuid4().hex}"
    link, *node_ports = _free_ports(4)
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = {**os.environ, "FLWR_HOME": str(home), marker.split("=")[0]: marker.split("=")[1],
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}
    c = config(workers=3, byzantine=1, iterations=2, eval_every=1, attack="sign-flip")
    out = tmp_path / "run"
    # Overrides of the app's run config, as a TOML file (dotted option keys quoted): only keys the app has.
    overrides = {**flower_run_config(job_of(c).config), "results-dir": str(out), "save-trajectory": True, "discovery-timeout": 60.0}
    run_config = tmp_path / "overrides.toml"
    run_config.write_text("".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in overrides.items() if k in _app_keys()))
    started: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(name: str, *args: str) -> subprocess.Popen:
        handle = open(logs / f"{name}.log", "w")
        proc = subprocess.Popen(list(args), env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=tmp_path)
        started.append(proc)
        return proc

    try:
        start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
              "--disable-runtime-dependency-installation")
        for i, port in enumerate(node_ports):
            start(f"supernode{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                  "--host", "127.0.0.1", "--port", str(port), "--node-config", f"partition-id={i} num-partitions=3")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the SuperLink's HTTP API is up
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", link)) == 0:
                    break
            time.sleep(0.2)
        runner = start("flwr-run", "flwr", "run", str(ROOT / "examples" / "flower"), "test",
                       "--run-config", str(run_config), "--stream")
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            summary_file = out / "summary.json"
            if summary_file.exists() and json.loads(summary_file.read_text())["status"] != "running":
                break
            time.sleep(0.5)
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        assert summary.get("status") == "completed", (summary, (logs / "flwr-run.log").read_text()[-3000:])
        resolved = config_from_dict(json.loads((out / "config.json").read_text()))
        assert resolved.to_dict() == build_problem(c).config.to_dict()  # the app ran the test's config
        torch.testing.assert_close(torch.load(out / "trajectory.pt"), sim_trajectory(c), rtol=0, atol=1e-10)
        runner.wait(30)
    finally:
        left = _end(marker, started)
    assert left == [], f"processes left running: {left}"


def _app_keys() -> set[str]:
    import tomllib

    data = tomllib.loads((ROOT / "examples" / "flower" / "pyproject.toml").read_text())
    return set(data["tool"]["flwr"]["app"]["config"])
