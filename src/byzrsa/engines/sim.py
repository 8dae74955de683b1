"""The vectorised simulator: every worker's model is a row of one ``(m, d)`` tensor.

One iteration runs over the workers a block of rows at a time
(:func:`step_block_rows`, sized so that a block's minibatch, rows, gradients
and penalties fit the cache: :mod:`byzrsa.engines.blocking`). For each block
the minibatch is gathered, the gradients come from one batched call of the
model, and, for RSA, the penalty subgradient, the worker update and the block's
share of the master's pull follow while the block is still in cache; the
baselines' messages are written into one reused ``(m, d)`` buffer that the
aggregation rule then reads whole. No ``(m, d)`` temporary is made. The update
rules are those of :mod:`byzrsa.methods`, the same functions the distributed
engine calls.

Reduction order: RSA's master pull is summed within each block (torch's sum
over the block's rows) and the block sums are added in block order, the
regular workers' blocks first, then the Byzantine messages' blocks
(:func:`~byzrsa.methods.rsa_master_pull`, :func:`~byzrsa.methods.rsa_master_step`). For
l1 every term is an integer, so the result is exact and the same bits for any
blocking; for the other norms the last bits depend on the block size (as they
do on the thread count), and the tests hold them to 1e-12 of the unblocked sum.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from byzrsa.engines.checkpoint_io import load_simulator, save_simulator
from byzrsa.engines.blocking import block_rows, row_blocks
from byzrsa.engines.common import Problem, derive_generator
from byzrsa.engines.cpu import blas_threads, default_threads, reuse_freed_memory, subnormals_flushed
from byzrsa.estimators import LocalData, estimate, init_state
from byzrsa.methods import (
    aggregation_step,
    baseline_message,
    momentum_step,
    rsa_master_pull,
    rsa_master_step,
    rsa_worker_step,
    step_size,
)
from byzrsa.penalties import subgradient_of_difference

__all__ = ["Simulator", "simulate", "step_block_rows"]


def step_block_rows(problem: Problem, budget: int | None = None) -> int:
    """Workers per block of :meth:`Simulator.step`: the rows whose state and minibatch fit the block budget.

    Per worker a block holds its minibatch (``b`` samples), its model row, its
    gradient and its penalty subgradient (:func:`byzrsa.engines.blocking.block_rows`
    gives the count; ``budget`` as there: None reads ``BYZRSA_BLOCK_BYTES`` or the cache).
    """
    c = problem.config
    sample = math.prod(problem.train_x.shape[1:])
    return block_rows(problem.dtype.itemsize * (3 * problem.model.dim + c.batch_size * sample), budget)


class Simulator:
    """State and step of one simulated run.

    Rows ``0..r-1`` of ``workers`` are the regular workers, the last q rows the
    Byzantine ones (docs/protocol.md). Byzantine rows are only computed when the
    attack needs their true values (sign-flip, label-flip); otherwise they are
    never touched.
    """

    def __init__(self, problem: Problem) -> None:
        c = problem.config
        self.problem = problem
        self.k = 0
        # Ideal SGD ignores the Byzantine workers altogether.
        self.active = c.workers if problem.needs_own else c.regular
        self.samplers = [problem.sampler(i) for i in range(self.active)]
        self.dropout = problem.dropout_generators(range(self.active))
        self.attack_context = problem.attack_context(problem.attack_generators(), state={})
        self.aggregator = problem.aggregator_state()
        self.momenta: Tensor | None = None  # (active, d) worker momenta, with --momentum
        start = problem.init_vector()
        self.x0 = start.clone()  # RSA's master model, or the baselines' shared model
        self.workers = start.expand(c.workers, -1).clone() if problem.is_rsa else None
        # Every worker's minibatch indices for the rest of the current sampler block,
        # (n, active, b), on the device: one stack (and one host-to-device copy) per block.
        self._indices = torch.empty(0, self.active, c.batch_size, dtype=torch.long)
        self._row = 0
        self._rows = step_block_rows(problem)  # workers per block of the step
        self._messages: Tensor | None = None  # the baselines' (m, d) message buffer, reused every step
        # --vr: every computing worker's estimator state (byzrsa.estimators), started at x^0
        self.vr_data = LocalData(problem.model, problem.shards[: self.active], problem.local_samples)
        vr_streams = [derive_generator(c.seed, "vr", i) for i in range(self.active)]
        self.vr = init_state(c.vr, c.vr_options, self.vr_data, start, vr_streams)

    def _next_indices(self) -> Tensor:
        """This iteration's minibatch indices ``(active, b)``; the samplers move ``BATCH_BLOCK`` iterations at a time."""
        if self._row == self._indices.shape[0]:
            # The samplers move in lockstep. Each hands its block over and it is copied into place
            # at once, so its memory serves the next sampler: the blocks never exist side by side
            # with the stacked copy (98 MB each at m = 10 000), and a used CPU buffer is refilled.
            first = self.samplers[0].next_block()
            shape = (first.shape[0], self.active, first.shape[1])
            cpu = self._indices.device.type == "cpu" and tuple(self._indices.shape) == shape
            stacked = self._indices if cpu else torch.empty(shape, dtype=first.dtype)
            stacked[:, 0] = first
            for i in range(1, self.active):
                stacked[:, i] = self.samplers[i].next_block()
            self._indices, self._row = stacked.to(self.problem.device), 0
        self._row += 1
        return self._indices[self._row - 1]

    def _batch(self, indices: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        """The minibatch of the worker ``rows``: gathered per block, so no ``(m, b, ...)`` copy exists."""
        pb, r = self.problem, self.problem.config.regular
        x, y = pb.gather(indices[rows])
        if rows.stop > r and pb.attack.label_map is not None:  # the Byzantine rows train on poisoned labels
            cut = max(0, r - rows.start)
            y = torch.cat([y[:cut], pb.labels(r, y[cut:])])
        return x, y

    def _gradients(self, rows: slice, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """The gradients of the worker ``rows`` at ``w (rows, d)``: the minibatch's, or the --vr estimate."""
        if self.vr is None:
            return self.problem.model.grad(w, x, y, self.dropout[rows] if self.dropout else None)
        ids = self._indices[self._row - 1, rows]  # this iteration's sample ids, (rows, b)
        return estimate(self.vr, self.vr_data, rows, w, x, y, ids)

    def _byzantine_messages(self, regular: Tensor, own: Tensor, x0: Tensor) -> Tensor:
        c, pb = self.problem.config, self.problem
        if not pb.attacked:
            return regular[:0]
        if not pb.needs_own:  # placeholders of the right shape; the attack does not read them
            own = regular.new_zeros(()).expand(c.byzantine, regular.shape[1])  # (no memory written)
        ctx = self.attack_context
        ctx.x0 = x0
        if pb.attack.needs_defence:
            ctx.defence = pb.defence(x0, step_size(c.lr, self.k, c.lr_schedule), self.aggregator)
        return pb.attack(regular, own, ctx, **pb.attack_options)

    def step(self) -> None:
        """Advance one iteration (k -> k + 1), a block of worker rows at a time (see the module docstring)."""
        pb, c = self.problem, self.problem.config
        self.k += 1
        alpha = step_size(c.lr, self.k, c.lr_schedule)
        indices = self._next_indices()
        if pb.is_rsa:
            self._rsa_step(indices, alpha)
        else:
            self._baseline_step(indices, alpha)

    def _rsa_step(self, indices: Tensor, alpha: float) -> None:
        pb, c, r = self.problem, self.problem.config, self.problem.config.regular
        x0, current = self.x0, self.workers[: self.active]  # the rows are stepped in place
        step = dict(lam=c.lam, p=pb.p, alpha=alpha)
        jacobi = c.master_order == "jacobi"
        lies = None
        if jacobi:  # the master reads x_i^k: the Byzantine messages are made before the workers step
            lies = self._byzantine_messages(current[:r], current[r:], x0)
            if lies.numel() and lies.untyped_storage().data_ptr() == current.untyped_storage().data_ptr():
                lies = lies.clone()  # a copy attack's view of rows that are about to change
        pull = torch.zeros_like(x0)  # the master's sum of subgradients over the regular messages
        for rows in row_blocks(self.active, self._rows):
            block, regular = current[rows], max(0, min(r, rows.stop) - rows.start)
            x, y = self._batch(indices, rows)
            # ---- the single place where a block of workers gets its gradient (or --vr estimate)
            grad = self._gradients(rows, block, x, y)
            penalty = subgradient_of_difference(block, x0, pb.p)  # each worker's pull towards x0
            if jacobi and regular:
                # minus the workers' own subgradients: subgradients are odd (see rsa_master_step)
                pull.sub_(penalty[:regular].sum(dim=0))
            rsa_worker_step(block, x0, grad, m=c.workers, penalty=penalty, out=block, **step)
            if not jacobi and regular:  # gauss-seidel: the master reads x_i^{k+1}, in cache now
                pull.add_(rsa_master_pull(x0, block[:regular], pb.p))
        if lies is None:
            lies = self._byzantine_messages(current[:r], current[r:], x0)
        for rows in row_blocks(lies.shape[0], self._rows):  # no (q, d) subgradient tensor either
            pull.add_(rsa_master_pull(x0, lies[rows], pb.p))
        self.x0 = rsa_master_step(x0, lies[:0], mu=c.mu, pull=pull, **step)

    def _baseline_step(self, indices: Tensor, alpha: float) -> None:
        pb, c, r = self.problem, self.problem.config, self.problem.config.regular
        x0, beta, d = self.x0, c.momentum, self.x0.shape[0]
        shared = x0.expand(self.active, -1)
        # What the server receives: rows 0..active-1 the computing workers' messages, rows r..m-1
        # then overwritten by the Byzantine ones; one buffer for every step (with momentum the
        # momenta are the messages, kept as state).
        if beta and self.momenta is None:
            first, self.momenta = True, torch.empty(self.active, d, dtype=x0.dtype, device=x0.device)
        else:
            first = False
        whole = not beta and not pb.attacked and self._rows >= self.active  # one block: its gradients are sent
        if not beta and not whole and self._messages is None:
            rows = c.workers if pb.attacked else self.active
            self._messages = torch.empty(rows, d, dtype=x0.dtype, device=x0.device)
        sent = self.momenta if beta else self._messages
        for rows in row_blocks(self.active, self._rows):
            x, y = self._batch(indices, rows)
            # ---- the single place where a block of workers gets its gradient (or --vr estimate)
            grad = baseline_message(self._gradients(rows, shared[rows], x, y), x0, c.mu)
            if whole:
                sent = grad
            elif not beta:
                sent[rows] = grad
            elif first:  # m^0 = 0: the first momentum is (1 - beta) g, as momentum_step(None, ...) makes it
                sent[rows] = momentum_step(None, grad, beta)
            else:
                momentum_step(sent[rows], grad, beta)
        messages = sent[:r]
        if pb.attacked:
            lies = self._byzantine_messages(sent[:r], sent[r : self.active], x0)
            if beta:
                messages = torch.cat([messages, lies])
            else:
                if lies.untyped_storage().data_ptr() == sent.untyped_storage().data_ptr():
                    lies = lies.clone()  # a view of rows it is about to be written over
                sent[r:] = lies
                messages = sent
        self.x0 = aggregation_step(x0, messages, lambda m: pb.aggregate(m, self.aggregator), alpha=alpha)

    def state_dict(self) -> dict[str, Any]:
        """Everything the rest of the trajectory depends on (see :func:`simulate`'s checkpoints)."""
        return {
            "k": self.k,
            "x0": self.x0.cpu(),
            "workers": self.workers.cpu() if self.workers is not None else None,
            "momenta": self.momenta.cpu() if self.momenta is not None else None,
            "samplers": [sampler.state_dict() for sampler in self.samplers],
            "indices": self._indices.cpu().clone(),  # a copy: the buffer is refilled in place
            "row": self._row,
            "attack_generators": [g.get_state() for g in self.attack_context.generators],
            "attack_state": self.attack_context.state,
            "aggregator": self.aggregator.state_dict(),
            "dropout": [g.get_state() for g in self.dropout] if self.dropout else None,
            "vr": self.vr.state_dict() if self.vr is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the next :meth:`step` is the one the saved run would have taken."""
        device, dtype = self.problem.device, self.problem.dtype
        self.k, self._row = int(state["k"]), int(state["row"])
        self.x0 = state["x0"].to(device, dtype)
        if state["workers"] is not None:
            self.workers = state["workers"].to(device, dtype)
        self.momenta = state["momenta"].to(device, dtype) if state["momenta"] is not None else None
        for sampler, saved in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(saved)
        self._indices = state["indices"].to(device)
        for g, saved in zip(self.attack_context.generators, state["attack_generators"]):
            g.set_state(saved)
        self.attack_context.state = state["attack_state"]
        self.aggregator.load_state_dict(state["aggregator"])
        for g, saved in zip(self.dropout or [], state["dropout"] or []):
            g.set_state(saved)
        if self.vr is not None:
            self.vr.load_state_dict(state["vr"])

    def metrics(self) -> dict[str, float]:
        locals_ = self.workers[: self.problem.config.regular] if self.problem.is_rsa else None
        return self.problem.metrics(self.x0, locals_)


def simulate(
    problem: Problem, *, checkpoint_dir: Path | None = None, resume: Path | None = None
) -> Iterator[dict[str, float]]:
    """Run ``problem`` and yield a metrics row at k = 0, every ``eval_every`` iterations, and at the end.

    ``time`` is the training time so far, evaluations excluded.

    Checkpoints: with ``checkpoint_every`` set and a ``checkpoint_dir``, the
    whole simulator state (:meth:`Simulator.state_dict`) and the rows so far go
    to ``checkpoint_dir/checkpoint.pt`` (atomically) every that many
    iterations; ``resume`` (a folder holding one) continues from it, first
    yielding the stored rows, and the trajectory is the uninterrupted one.

    Threads: with ``threads`` unset, a CPU run uses :func:`default_threads`
    torch threads (restored afterwards): as many as there are idle cores, at
    least one, where idle = cores available to the process minus the processes
    runnable right now besides this one (a median over ~40 ms), decided once per
    process. OpenMP threads that share a
    core with another process wait for each other at every operation (up to 12x
    slower per step, docs/performance.md), so a loaded machine gets one thread.
    Set ``threads`` to override, and to make a run's last bits independent of
    the machine's load (reductions split over threads round differently).

    Subnormals: a CPU run treats float subnormals as zero
    (:func:`~byzrsa.engines.cpu.subnormals_flushed`), as every engine does.

    Memory: a CPU run keeps the memory its steps free for the next steps
    (:func:`reuse_freed_memory`): fresh pages from the kernel cost more than the
    arithmetic on them once the ``(m, d)`` temporaries outgrow the allocator's
    cache (docs/performance.md, scaling), and every step allocates the same sizes again.
    """
    c = problem.config
    previous = torch.get_num_threads()
    if c.threads is None and problem.device.type == "cpu":
        torch.set_num_threads(default_threads())
    stack = contextlib.ExitStack()
    try:
        if problem.device.type == "cpu":
            stack.enter_context(reuse_freed_memory())
            stack.enter_context(subnormals_flushed())
            stack.enter_context(blas_threads(torch.get_num_threads()))
        if problem.topology is not None:
            from byzrsa.engines.decentralized import GraphSimulator  # it builds on Simulator

            sim: Simulator = GraphSimulator(problem)
        else:
            sim = Simulator(problem)
        rows: list[dict[str, float]] = []
        if resume is not None:
            rows = load_simulator(sim, resume)
        else:
            rows.append({"iteration": 0, **sim.metrics(), "time": 0.0})
        yield from rows
        train_seconds = rows[-1]["time"]
        while sim.k < c.iterations:
            stop = min(sim.k + c.eval_every - sim.k % c.eval_every, c.iterations)
            if c.checkpoint_every and checkpoint_dir is not None:
                stop = min(stop, sim.k + c.checkpoint_every - sim.k % c.checkpoint_every)
            start = time.perf_counter()
            with torch.no_grad():
                while sim.k < stop:
                    sim.step()
            if problem.device.type == "cuda":
                torch.cuda.synchronize(problem.device)
            train_seconds += time.perf_counter() - start
            if sim.k % c.eval_every == 0 or sim.k == c.iterations:
                rows.append({"iteration": sim.k, **sim.metrics(), "time": train_seconds})
                yield rows[-1]
            if c.checkpoint_every and checkpoint_dir is not None and sim.k % c.checkpoint_every == 0:
                save_simulator(sim, rows, train_seconds, checkpoint_dir)
    finally:
        stack.close()
        torch.set_num_threads(previous)

