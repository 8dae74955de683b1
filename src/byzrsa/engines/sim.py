"""The vectorised simulator: every worker's model is a row of one ``(m, d)`` tensor.

One iteration is a handful of batched tensor operations, whatever m is: the
regular workers' minibatches are gathered into one ``(r, b, features)`` tensor,
their gradients come from one batched call of the model, and the RSA penalty or
the aggregation rule runs on the stacked messages. The update rules are those
of :mod:`byzrsa.methods`, the same functions the distributed engine calls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import Tensor

from byzrsa.engines.common import Problem
from byzrsa.methods import (
    aggregation_step,
    baseline_message,
    momentum_step,
    rsa_master_step,
    rsa_worker_step,
    step_size,
)
from byzrsa.penalties import subgradient

__all__ = ["Simulator", "simulate"]


class Simulator:
    """State and step of one simulated run.

    Rows ``0..r-1`` of ``workers`` are the regular workers, the last q rows the
    Byzantine ones (PROTOCOL.md). Byzantine rows are only computed when the
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

    def _minibatch(self) -> tuple[Tensor, Tensor]:
        if self._row == self._indices.shape[0]:
            blocks = [s.next_block() for s in self.samplers]  # the samplers move in lockstep
            self._indices, self._row = torch.stack(blocks, dim=1).to(self.problem.device), 0
        self._row += 1
        x, y = self.problem.gather(self._indices[self._row - 1])
        if self.active > self.problem.config.regular and self.problem.attack.label_map is not None:
            r = self.problem.config.regular
            y = torch.cat([y[:r], self.problem.labels(r, y[r:])])
        return x, y

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
        """Advance one iteration (k -> k + 1)."""
        pb, c = self.problem, self.problem.config
        self.k += 1
        alpha = step_size(c.lr, self.k, c.lr_schedule)
        x, y = self._minibatch()
        r = c.regular
        if pb.is_rsa:
            current = self.workers[: self.active]  # stepped in place below
            grad = pb.model.grad(current, x, y, self.dropout)
            penalty = subgradient(current - self.x0, pb.p)  # each worker's pull towards x0
            step = dict(lam=c.lam, p=pb.p, alpha=alpha)
            if c.master_order == "jacobi":
                # The master reads x_i^k, so the Byzantine messages are made before the workers
                # step; its pull towards the regular x_i^k is minus theirs (see rsa_master_step).
                lies = self._byzantine_messages(current[:r], current[r:], self.x0)
                x0 = rsa_master_step(self.x0, lies, mu=c.mu, pull=-penalty[:r].sum(dim=0), **step)
                rsa_worker_step(current, self.x0, grad, m=c.workers, penalty=penalty, out=current, **step)
            else:
                rsa_worker_step(current, self.x0, grad, m=c.workers, penalty=penalty, out=current, **step)
                messages = torch.cat([current[:r], self._byzantine_messages(current[:r], current[r:], self.x0)])
                x0 = rsa_master_step(self.x0, messages, mu=c.mu, **step)
            self.x0 = x0
        else:
            grad = baseline_message(pb.model.grad(self.x0.expand(self.active, -1), x, y, self.dropout), self.x0, c.mu)
            grad = self.momenta = momentum_step(self.momenta, grad, c.momentum)
            lies = self._byzantine_messages(grad[:r], grad[r:], self.x0)
            messages = torch.cat([grad[:r], lies]) if lies.shape[0] else grad[:r]
            self.x0 = aggregation_step(self.x0, messages, lambda m: pb.aggregate(m, self.aggregator), alpha=alpha)

    def metrics(self) -> dict[str, float]:
        locals_ = self.workers[: self.problem.config.regular] if self.problem.is_rsa else None
        return self.problem.metrics(self.x0, locals_)


def simulate(problem: Problem) -> Iterator[dict[str, float]]:
    """Run ``problem`` and yield a metrics row at k = 0, every ``eval_every`` iterations, and at the end.

    ``time`` is the training time so far, evaluations excluded.

    Threads: with ``threads`` unset, a CPU run uses one torch thread (restored
    afterwards). The simulator's tensors are small (the paper's step touches a
    few MB), and on 2 cores 2 threads were never faster and, with other
    processes on the cores, up to 40x slower per step (``benchmarks/run.py``,
    docs/performance.md). Set ``threads`` to override.
    """
    c = problem.config
    previous = torch.get_num_threads()
    if c.threads is None and problem.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        sim = Simulator(problem)
        train_seconds = 0.0
        yield {"iteration": 0, **sim.metrics(), "time": 0.0}
        while sim.k < c.iterations:
            stop = min(sim.k + c.eval_every, c.iterations)
            start = time.perf_counter()
            with torch.no_grad():
                while sim.k < stop:
                    sim.step()
            if problem.device.type == "cuda":
                torch.cuda.synchronize(problem.device)
            train_seconds += time.perf_counter() - start
            yield {"iteration": sim.k, **sim.metrics(), "time": train_seconds}
    finally:
        torch.set_num_threads(previous)
