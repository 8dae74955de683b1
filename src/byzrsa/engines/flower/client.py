r"""The client side: one byzrsa worker per Flower SuperNode, its state in the node's ``context.state``.

A node is worker ``i = node_config["partition-id"]`` (the simulation engine
numbers its virtual nodes 0..m-1; a deployed SuperNode is started with
``--node-config "partition-id=i num-partitions=m"``). Workers ``0..r-1`` are
regular and the last q Byzantine, as in the simulator: designating a node
Byzantine is giving it one of the last q partition ids.

Round k (``train``), RSA::

    regular i:   reads x_i^k from context.state, draws its next minibatch,
                 x_i^{k+1} = rsa_worker_step(x_i^k, x0^k, grad, ...)      (equation 10)
                 sends x_i^k (jacobi) or x_i^{k+1} (gauss-seidel), keeps x_i^{k+1}
    Byzantine j: computes its own true iterate if the attack needs it (sign-flip,
                 label-flip) and sends attack(own) with its own random stream;
                 an omniscient attack's lie is made by the server (adversary.py),
                 so it sends its true value (or nothing) and the server replaces it.

Baselines: the message is ``grad F(x; batch) + mu x`` (with worker momentum
if configured) at the server's model. A worker's minibatches come from
:meth:`byzrsa.engines.common.Problem.sampler`, so worker i draws exactly what
the simulator's row i draws; its sampler and attack streams are saved in
``context.state`` after every round, so it does not matter which process runs
the ClientApp next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from torch import Tensor

from byzrsa.engines.flower.build import Job, load_job
from byzrsa.engines.flower.wire import META, MODEL, REPLY, ROUND, load_worker, read_vector, save_worker, vector_record
from byzrsa.errors import ByzrsaError, ConfigError
from byzrsa.methods import baseline_message, momentum_step, rsa_worker_step, step_size

__all__ = ["client_app", "ClientWorker", "worker_of"]


def worker_of(context: Context, job: Job) -> int:
    """The worker index of this node: its ``partition-id``, checked against the run's m."""
    config = context.node_config
    if "partition-id" not in config:
        raise ConfigError(
            "this SuperNode has no partition-id: start it with --node-config \"partition-id=I num-partitions=M\""
        )
    # The federation's size first: when it is wrong every node says so, whichever reply the server reads first.
    partitions = config.get("num-partitions")
    if partitions is not None and int(partitions) != job.workers:
        raise ConfigError(f"num-partitions {partitions} differs from the run's {job.workers} workers")
    worker = int(config["partition-id"])
    if not 0 <= worker < job.workers:
        raise ConfigError(f"partition-id {worker} is not a worker of this run (0..{job.workers - 1})")
    return worker


class ClientWorker:
    """Worker ``worker``'s state and step, loaded from and saved to a node's ``context.state``."""

    def __init__(self, job: Job, worker: int, state: RecordDict) -> None:
        self.job, self.worker, self.state = job, worker, state
        self.role = job.role(worker)
        self.computes = job.computes(worker)
        self.sampler = job.sampler(worker) if self.computes else None
        self.attack_generator = job.attack_generator(worker) if self.role == "byzantine" else None
        loaded = load_worker(state, sampler=self.sampler, attack=self.attack_generator, dtype=job.dtype,
                             device=job.device)
        self.x: Tensor | None = None
        self.momentum: Tensor | None = None
        self.last_round = 0
        if loaded is None:
            if job.is_rsa and self.computes:
                self.x = job.init_vector()
        else:
            self.x, self.momentum, meta = loaded
            if meta.get("fingerprint") != job.fingerprint:
                raise ConfigError("this node's saved state belongs to another run config")
            self.last_round = int(meta["round"])

    def save(self) -> None:
        save_worker(self.state, x=self.x, momentum=self.momentum, sampler=self.sampler, attack=self.attack_generator,
                    meta={"round": self.last_round, "fingerprint": self.job.fingerprint, "worker": self.worker})

    def honest(self, k: int, model: Tensor) -> Tensor | None:
        """Do this worker's honest work of round k; return what an honest worker sends (None if it computes nothing)."""
        job, c = self.job, self.job.config
        if not self.computes:
            return None
        alpha = step_size(c.lr, k, c.lr_schedule)
        if job.is_rsa:
            current = self.x
            grad = job.gradient(self.worker, current, self.sampler)
            self.x = rsa_worker_step(current, model, grad, lam=c.lam, p=job.p, alpha=alpha, m=c.workers)
            return self.x if c.master_order == "gauss-seidel" else current
        message = baseline_message(job.gradient(self.worker, model, self.sampler), model, c.mu)
        self.momentum = momentum_step(self.momentum, message, c.momentum)
        return self.momentum

    def lie(self, k: int, own: Tensor | None, model: Tensor) -> Tensor:
        """A non-omniscient attack's message, made here with this worker's own random stream."""
        job = self.job
        if own is None:  # a placeholder: the attack does not read it
            own = torch.zeros(job.d, dtype=job.dtype, device=job.device)
        ctx = job.attack_context([self.attack_generator], state={})
        ctx.x0 = model
        if job.needs_defence:
            ctx.defence = job.defence(model, step_size(job.config.lr, k, job.config.lr_schedule), None)
        regular = own.new_empty(0, job.d)
        return job.forge(regular, own.unsqueeze(0), ctx)[0]

    def train(self, k: int, model: Tensor, report: bool) -> tuple[Tensor | None, Tensor | None]:
        """Round k: ``(message, local)``; ``local`` is RSA's iterate after the step when ``report`` asks for it."""
        if k <= self.last_round:
            raise ValueError(f"worker {self.worker} was asked for round {k} after round {self.last_round}")
        own = self.honest(k, model)
        if self.role == "regular":
            message = own
        elif self.role == "byzantine" and not self.job.omniscient:
            message = self.lie(k, own, model)
        else:  # the server-side adversary replaces it (or an idle worker under Ideal SGD)
            message = own
        self.last_round = k
        local = self.x if (report and self.job.is_rsa and self.role == "regular") else None
        return message, local


def _threads(job: Job) -> None:
    # Many ClientApps share the machine's cores; one thread each, unless the config says otherwise.
    torch.set_num_threads(job.config.threads or 1)
    torch.set_flush_denormal(True)  # the simulator's arithmetic (engines.cpu.subnormals_flushed)


def _hello(message: Message, context: Context, run_config: Mapping[str, Any]) -> Message:
    job = load_job(run_config)
    worker = worker_of(context, job)
    reply = ConfigRecord({
        "worker": worker, "fingerprint": job.fingerprint, "shard": job.shard_fingerprint(worker),
        "role": job.role(worker),
    })
    return Message(RecordDict({META: reply}), reply_to=message)


def _train(message: Message, context: Context, run_config: Mapping[str, Any]) -> Message:
    job = load_job(run_config)
    _threads(job)
    worker = worker_of(context, job)
    settings = message.content.config_records[ROUND]
    if int(settings["worker"]) != worker:
        raise ValueError(f"a message for worker {settings['worker']} reached worker {worker}")
    k = int(settings["k"])
    model = read_vector(message.content.array_records[MODEL], "x", job.d, job.dtype, job.device)
    state = ClientWorker(job, worker, context.state)
    with torch.no_grad():
        sent, local = state.train(k, model, bool(settings["report"]))
    state.save()
    content = RecordDict({
        REPLY: vector_record(message=sent, local=local),
        META: ConfigRecord({"worker": worker, "k": k}),
    })
    return Message(content, reply_to=message)


def _report(message: Message, context: Context, run_config: Mapping[str, Any]) -> Message:
    """RSA: the node's current iterate (for the variance metric of a round it sat out)."""
    job = load_job(run_config)
    worker = worker_of(context, job)
    state = ClientWorker(job, worker, context.state)
    local = state.x if job.is_rsa and job.role(worker) == "regular" else None
    content = RecordDict({REPLY: vector_record(local=local), META: ConfigRecord({"worker": worker, "k": state.last_round})})
    return Message(content, reply_to=message)


def client_app(run_config: Mapping[str, Any] | None = None) -> ClientApp:
    """The byzrsa ClientApp: ``query.hello`` (who am I), ``train`` (a round), ``query.report`` (my iterate).

    ``run_config`` (a flat Flower run config, see
    :func:`~byzrsa.engines.flower.build.flower_run_config`) holds defaults
    under the run's own ``context.run_config``: what ``run_simulation``,
    which passes no run config, needs.
    """
    app = ClientApp()
    defaults = dict(run_config or {})

    def bind(handler: Callable[[Message, Context, Mapping[str, Any]], Message]) -> Callable[[Message, Context], Message]:
        def call(message: Message, context: Context) -> Message:
            try:
                return handler(message, context, {**defaults, **context.run_config})
            except ByzrsaError as exc:
                # A user's mistake (a partition-id that does not fit, a refused run config) goes back to the
                # ServerApp as an error reply, which names it in one line: raised here, Flower (and Ray, on the
                # simulation engine) would print a traceback per node and the cause would drown in them.
                reason = f"{type(exc).__name__}: {exc}"
                return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)

        return call

    app.query("hello")(bind(_hello))
    app.train()(bind(_train))
    app.query("report")(bind(_report))
    return app
