"""The server side: the ServerApp that finds the workers, runs the rounds and evaluates.

``main(grid, context)``:

1. builds the :class:`~byzrsa.engines.flower.build.Job` from ``context.run_config``;
2. ``query.hello`` to every connected node until all m workers have answered
   (each says its partition id, its config fingerprint and a digest of its
   training shard; a mismatch, a duplicate or a missing worker is a
   :class:`~byzrsa.errors.ConfigError` naming it);
3. for k = 1..iterations: the strategy's ``configure_train``, one exchange of
   messages (replies pulled every ``poll-interval`` seconds until all arrived
   or ``round-timeout`` passed), the strategy's ``aggregate_train``;
4. evaluates the model on the server's test split at k = 0, every
   ``eval_every`` rounds and at the end, as the simulator does (RSA's variance
   from the regular clients' iterates, which the round's replies carry or a
   ``query.report`` asks for).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from torch import Tensor

from byzrsa.engines.flower.build import Job, load_job
from byzrsa.engines.flower.results import Results
from byzrsa.engines.flower.strategy import ByzrsaStrategy, make_strategy
from byzrsa.engines.flower.wire import META, REPLY, ROUND, read_vector
from byzrsa.errors import ByzrsaError, ConfigError

__all__ = ["server_app", "run_server", "discover", "exchange", "OneLineErrors"]

log = logging.getLogger("flwr")


class OneLineErrors(logging.Filter):
    """Flower's record of a ServerApp that raised a byzrsa error, as one line instead of a traceback.

    Flower logs an exception from the ServerApp (``ServerApp raised an
    exception``, or the simulation's wrapping ``RuntimeError``) with its
    traceback. When the cause is a :class:`~byzrsa.errors.ByzrsaError` (a
    user's mistake, whose message names the fix) the traceback says nothing
    more, so the record keeps its message and gains the error's one line.
    Other exceptions (byzrsa's bugs, Flower's) keep their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        seen = set()
        while error is not None and not isinstance(error, ByzrsaError) and id(error) not in seen:
            seen.add(id(error))
            error = error.__cause__ or error.__context__
        if isinstance(error, ByzrsaError):
            record.msg, record.args = f"{record.getMessage()}: {type(error).__name__}: {error}", ()
            record.exc_info, record.exc_text = None, None
        return True


def _one_line_errors() -> None:
    if not any(isinstance(f, OneLineErrors) for f in log.filters):
        log.addFilter(OneLineErrors())


def exchange(grid: Grid, messages: Iterable[Message], timeout: float, poll: float) -> list[Message]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` seconds passed."""
    messages = list(messages)
    if not messages:
        return []
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while waiting:
        got = list(grid.pull_messages(list(waiting)))
        replies += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(poll)
    return replies


def discover(grid: Grid, job: Job) -> dict[int, int]:
    """Worker index -> node id, for all m workers (waits up to ``discovery-timeout`` for them to connect).

    Each node is greeted once and its answer awaited until the deadline: a node
    that is slow to start (Ray actors under load) is never greeted twice, since
    Flower's simulation engine writes back the context each message found, and
    a second greeting answered after the first rounds would reset the node's
    saved state (its sampler) to the empty one.
    """
    settings = job.settings
    deadline = time.monotonic() + settings.discovery_timeout
    nodes: dict[int, int] = {}
    greeted: set[int] = set()
    waiting: set[str] = set()  # the ids of the greetings not yet answered
    while len(nodes) < job.workers:
        left = deadline - time.monotonic()
        if left <= 0:
            missing = [w for w in range(job.workers) if w not in nodes]
            raise ConfigError(
                f"workers {missing} never answered within discovery-timeout={settings.discovery_timeout:g} s: "
                f"start one SuperNode per worker with --node-config \"partition-id=I num-partitions={job.workers}\""
                f" (simulation engine: --federation-config \"num-supernodes={job.workers}\")"
            )
        new = [n for n in grid.get_node_ids() if n not in greeted]
        if new:
            greeted.update(new)
            waiting.update(grid.push_messages([
                Message(RecordDict({ROUND: ConfigRecord({"fingerprint": job.fingerprint})}), dst_node_id=n,
                        message_type=f"{MessageType.QUERY}.hello")
                for n in new
            ]))
        replies = list(grid.pull_messages(list(waiting))) if waiting else []
        waiting -= {reply.metadata.reply_to_message_id for reply in replies}
        if not replies:
            time.sleep(min(max(settings.poll_interval, 0.05), left))
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                raise ConfigError(
                    f"node {node} could not join the run: {reply.error.reason}; each SuperNode must be one of the "
                    f"{job.workers} workers (simulation engine: --federation-config \"num-supernodes={job.workers}\"; "
                    f"deployment: --node-config \"partition-id=I num-partitions={job.workers}\", I in 0..{job.workers - 1})"
                )
            meta = reply.content.config_records[META]
            worker = int(meta["worker"])
            if meta["fingerprint"] != job.fingerprint:
                raise ConfigError(f"node {node} (worker {worker}) resolved another config (fingerprint {meta['fingerprint']},"
                                  f" the server's {job.fingerprint}): is the same byzrsa version installed there?")
            if meta["shard"] != job.shard_fingerprint(worker):
                raise ConfigError(f"node {node} (worker {worker}) holds another training shard: same data files?")
            if worker in nodes and nodes[worker] != node:
                raise ConfigError(f"nodes {nodes[worker]} and {node} both say they are worker {worker} (partition-id)")
            nodes[worker] = node
    return nodes


def _base(strategy: Any) -> ByzrsaStrategy:
    return getattr(strategy, "strategy", strategy)


def _locals(grid: Grid, job: Job, strategy: ByzrsaStrategy, k: int) -> Tensor | None:
    """RSA: the regular clients' current iterates, in worker order (those that do not answer left out)."""
    if not job.is_rsa:
        return None
    last = strategy._last
    have = dict(last.locals_) if last is not None and last.k == k else {}
    ask = [w for w in range(job.regular) if w not in have]
    if ask:
        queries = [
            Message(RecordDict({ROUND: ConfigRecord({"k": k})}), dst_node_id=strategy.nodes[w],
                    message_type=f"{MessageType.QUERY}.report")
            for w in ask
        ]
        timeout = job.settings.round_timeout or job.config.timeout
        for reply in exchange(grid, queries, timeout, job.settings.poll_interval):
            worker = strategy.worker_of_node.get(reply.metadata.src_node_id)
            if reply.has_error() or worker not in ask:
                continue
            try:
                local = read_vector(reply.content.array_records[REPLY], "local", job.d, job.dtype, job.device)
            except (KeyError, ValueError):
                continue
            if local is not None:
                have[worker] = local
    rows = [have[w] for w in range(job.regular) if w in have]
    return torch.stack(rows) if rows else None


def run_server(grid: Grid, run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Run the job of ``run_config`` on ``grid``; return the summary (and write the results folder).

    A run config that is refused (a bad value, an unknown key) still leaves a
    ``summary.json`` saying ``failed``, with the one-line error, in the
    results folder it names, when that folder can be written.
    """
    try:
        job = load_job(run_config)
    except Exception as exc:
        _failed_before_start(run_config, exc)
        raise
    c, settings = job.config, job.settings
    if c.threads is not None:
        torch.set_num_threads(c.threads)
    torch.set_flush_denormal(True)  # the simulator's arithmetic (engines.cpu.subnormals_flushed)
    results = Results(settings.results_dir, job)
    strategy = None
    status, error = "failed", ""
    train_seconds, done = 0.0, 0
    try:
        nodes = discover(grid, job)
        results.nodes(nodes)
        strategy = make_strategy(job, nodes)
        base = _base(strategy)
        strategy.summary()
        rounds = c.iterations
        evaluations = set(range(c.eval_every, rounds + 1, c.eval_every)) | {rounds}
        base.report_rounds = evaluations
        timeout = settings.round_timeout or c.timeout
        with torch.no_grad():
            start_locals = base.x.expand(c.regular, -1) if job.is_rsa else None
            results.row({"iteration": 0, **job.metrics(base.x, start_locals), "time": 0.0})
            results.point(base.x)
            for k in range(1, rounds + 1):
                started = time.perf_counter()
                messages = strategy.configure_train(k, ArrayRecord(), ConfigRecord(), grid)
                replies = exchange(grid, messages, timeout, settings.poll_interval)
                _, counts = strategy.aggregate_train(k, replies)
                train_seconds += time.perf_counter() - started
                done = k
                results.point(base.x)
                if k in evaluations:
                    row = {"iteration": k, **job.metrics(base.x, _locals(grid, job, base, k)), "time": train_seconds}
                    results.row(row)
                    log.info("byzrsa round %d/%d: accuracy %.4f, %d of %d messages arrived", k, rounds,
                             row["accuracy"], counts["arrived"], counts["sampled"])
        status = "completed"
    except (KeyboardInterrupt, SystemExit):  # Flower's SIGTERM/SIGINT handler ends the ServerApp with sys.exit
        status = "interrupted"
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        base = _base(strategy) if strategy is not None else None
        extra: dict[str, Any] = {"train_seconds": train_seconds, "seconds_per_round": train_seconds / max(done, 1)}
        if base is not None:
            extra.update(base.stats)
        if error:
            extra["error"] = error
        summary = results.finish(status, base.x if base is not None else None, **extra)
    return summary


def _failed_before_start(run_config: Mapping[str, Any], exc: BaseException) -> None:
    import json
    from pathlib import Path

    from byzrsa.folders import atomic_write_text, run_state

    folder = str(run_config.get("results-dir", "") or "")
    if not folder or run_state(folder) != "missing":  # never written over another run's results
        return
    lines = str(exc).strip().splitlines()
    error = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(folder) / "summary.json",
                          json.dumps({"status": "failed", "engine": "flower", "error": error}, indent=2) + "\n")
    except OSError:  # a results folder that is a file, or cannot be written: the error itself is raised
        pass


def server_app(run_config: Mapping[str, Any] | None = None) -> ServerApp:
    """The byzrsa ServerApp (use with :func:`byzrsa.engines.flower.client_app`).

    ``run_config`` holds defaults under the run's ``context.run_config`` (see
    :func:`~byzrsa.engines.flower.client.client_app`).
    """
    app = ServerApp()
    defaults = dict(run_config or {})
    _one_line_errors()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, {**defaults, **context.run_config})

    return app
