r"""The decentralized run on real processes (``--engine dist --topology ...``): one process per node, no master.

Each node process holds its node's model, its shard and its streams (the
:class:`~byzrsa.engines.dist.worker.Worker` of the master/worker engine
supplies the gradient, the minibatch, dropout and ``--vr`` streams), and
applies the update rules of :mod:`byzrsa.decentralized`, the functions the
simulator (:class:`~byzrsa.engines.decentralized.GraphSimulator`) calls; the
Byzantine messages come from :func:`~byzrsa.engines.decentralized.receiver_lies`,
the simulator's own forging step. So in float64 a run follows the simulator's
trajectory.

One iteration ``k`` at node ``u``::

    u computes its gradient; its true message t_u = x_u^k (DRSA) or x_u' (a rule's half step)
    regular u:    sends t_u to every out-peer, then reads its neighbours' messages
    Byzantine u:  sends t_u to its Byzantine out-peers, reads every in-peer's message,
                  forges its message to each regular neighbour i (in i's order, its own
                  stream), sends it; then steps on its neighbours' true values
    u steps: DRSA's step, or its rule over (t_u, the messages that arrived)

The omniscient attacker. A Byzantine node's message to a regular neighbour
``i`` is computed, as in the simulator, from ``i``'s own message, the messages
of ``i``'s regular neighbours and the true values of ``i``'s Byzantine
neighbours. So node ``v`` sends to ``u`` when ``u`` is its neighbour, and also
when ``u`` is Byzantine and within two hops (:func:`peer_plan`). Every attack
the simulator runs is available (the Byzantine nodes forge per receiver).

Transport. Every directed pair that talks has its own TCP connection (the
sender's thread writes, the receiver's main thread reads), byzrsa's frames
(:class:`~byzrsa.engines.dist.wire.SocketLink`), bound to 127.0.0.1; the
addresses meet in the launch's store, signed with the launch's token. The
frames are byzrsa's own and not gloo's point-to-point, for the reason the
master/worker engine's CPU runs use them: gloo aborts a process that receives
more than it posted, and a Byzantine neighbour may send anything.

Faults. A neighbour that closes its connection (died) or sends nothing within
``timeout`` seconds of the receiver starting to read is dropped for the rest
of the run (logged, reported in ``dead_workers``). A frame that is not the
expected one (kind, iteration, dtype, size; oversized frames are read and
thrown away) is a Byzantine message: dropped for that round, logged, counted
in ``malformed_messages``. The receiver then works on a smaller neighbourhood:
DRSA sums its penalty over the messages that arrived; gossip, self-centred
clipping and IOS move the missing messages' mixing weight onto the node's own
model (the weights still sum to 1); the other rules run on the rows that
arrived with the same ``b_i``, and a node whose smaller neighbourhood no longer
satisfies its rule keeps its half-stepped model for that round (logged).

Metrics. At every evaluation (k = 0, every ``eval_every``, the last) each node
sends its model to the launching process, which computes the simulator's rows
(:func:`~byzrsa.engines.decentralized.graph_metrics`) over the live regular
nodes.
"""

from __future__ import annotations

import json
import math
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from byzrsa.attacks.basic import honest
from byzrsa.decentralized import (
    GRAPH_FORMS,
    aggregate_neighbourhoods,
    drsa_step,
    edge_pull,
    gossip_mean,
    graph_edges,
    half_step,
    neighbourhood_requirement,
)
from byzrsa.engines.common import Problem, derive_generator
from byzrsa.engines.cpu import subnormals_flushed
from byzrsa.engines.decentralized import graph_metrics, receiver_lies
from byzrsa.engines.dist.faults import FaultPlan, send_message
from byzrsa.engines.dist.transport import (
    HEADER_BYTES,
    STARTUP_TIMEOUT,
    DistError,
    Kind,
    Malformed,
    PeerLost,
    encode,
    encode_blob,
    log,
    master_silence,
)
from byzrsa.engines.dist.wire import (
    SocketLink,
    accept_links,
    check_frame,
    connect,
    listen,
    publish,
    sign,
    token_from_env,
)
from byzrsa.engines.dist.worker import Worker, WorkerSpec
from byzrsa.errors import ConfigError
from byzrsa.methods import step_size

__all__ = ["PeerPlan", "peer_plan", "node_main", "run_peers", "evaluations"]

_STATS_BYTES = 1 << 16
HOLD_CAP = 4  # a peer's HOLDs extend the wait for it to this many timeouts per round at most


@dataclass(frozen=True)
class PeerPlan:
    """Who node ``node`` hears and tells, from the topology alone (every process computes every plan the same).

    ``neighbours`` are its senders in the simulator's edge order (by sender),
    ``weights`` their mixing weights; ``receivers`` (a Byzantine node) its regular
    neighbours in receiver order, each with that receiver's neighbours.
    """

    node: int
    byzantine: bool
    neighbours: tuple[int, ...]
    weights: tuple[float, ...]
    self_weight: float
    b: int
    sends_to: tuple[int, ...]
    hears_from: tuple[int, ...]
    receivers: tuple[tuple[int, tuple[int, ...], tuple[float, ...], int], ...]


def peer_plan(edges: Any, node: int, lies: bool) -> PeerPlan:
    """Node ``node``'s :class:`PeerPlan`; ``lies``: whether Byzantine nodes forge (then they hear two hops)."""
    m, r = edges.m, edges.regular
    ptr = edges.ptr.tolist()
    src, weight = edges.src.tolist(), edges.weight.tolist()
    into = [src[ptr[i] : ptr[i + 1]] for i in range(m)]
    w_into = [weight[ptr[i] : ptr[i + 1]] for i in range(m)]
    near = [set(into[i]) for i in range(m)]

    def two_hops(u: int) -> set[int]:
        return (near[u] | {w for v in near[u] for w in near[v]}) - {u}

    def tells(v: int, u: int) -> bool:  # does v send to u?
        return u in near[v] or (lies and u >= r and u in two_hops(v))

    sends = tuple(u for u in range(m) if u != node and tells(node, u))
    hears = tuple(v for v in range(m) if v != node and tells(v, node))
    receivers = tuple(
        (i, tuple(into[i]), tuple(w_into[i]), edges.b[i]) for i in range(r) if lies and node >= r and node in near[i]
    )
    return PeerPlan(node, node >= r, tuple(into[node]), tuple(w_into[node]), float(edges.self_weight[node]),
                    edges.b[node], sends, hears, receivers)


def evaluations(iterations: int, eval_every: int) -> list[int]:
    """The iterations with a metrics row: 0, every ``eval_every``, and the last (as the simulator)."""
    return sorted({0, iterations, *range(eval_every, iterations + 1, eval_every)})


def _capacity(d: int) -> int:
    return HEADER_BYTES + max(8 * d, _STATS_BYTES)


class _Sender:
    """One thread that writes every frame this node sends, so that a full socket never blocks its reads."""

    def __init__(self) -> None:
        self.queue: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True, name="byzrsa-peer-sender")
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            link, k, message, fault = item
            try:
                if fault is None and message.dtype != torch.uint8:
                    link.send(encode(Kind.MSG, k, message))
                elif message.dtype == torch.uint8:
                    link.send(message)  # an already encoded frame (LOCAL, STATS)
                else:
                    send_message(link, k, message, fault)
            except (PeerLost, ValueError, OSError):
                pass  # the reader of that link finds it gone

    def put(self, link: Any, k: int, message: Tensor, fault: str | None = None) -> None:
        if link.closed is None:
            self.queue.put((link, k, message, fault))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(30.0)


class Node:
    """One node's state and its rounds."""

    def __init__(self, spec: WorkerSpec, device: torch.device) -> None:
        self.worker = Worker(spec, device)  # shard, sampler, dropout and --vr streams, as the simulator's row
        self.parts = self.worker.parts
        c = self.config = self.parts.config
        self.node = spec.worker
        self.faults = spec.faults
        self.edges = graph_edges(self.parts.topology, c.agg_f)
        self.lies = self.parts.attacked and self.parts.attack.fn is not honest
        self.plan = peer_plan(self.edges, self.node, self.lies)
        self.x = self.worker.model.init(derive_generator(c.seed, "init"), self.worker.dtype).to(device)
        self.computes = self.worker.computes
        self.forges = self.plan.byzantine and self.lies
        # A Byzantine node's copy of every Byzantine stream: the attack call for receiver i takes one per
        # Byzantine neighbour of i; only this node's row is sent, and it draws from this node's stream alone.
        self.generators = {j: derive_generator(c.seed, "attack", j) for j in range(c.regular, c.workers)}
        self.attack_state: dict[str, Any] = {}
        self.last: dict[int, Tensor] = {}  # each receiver's last message
        self.dead: dict[int, str] = {}
        self.malformed: dict[int, dict[str, Any]] = {}
        self.skipped = 0
        self._next_hold = math.inf  # when this node, waiting, tells its out-peers it is alive

    # one round ---------------------------------------------------------------------------------
    def step(self, k: int, out: dict[int, Any], inp: dict[int, Any], sender: _Sender) -> None:
        c, plan = self.config, self.plan
        fault = self.faults.get(k)
        alpha = step_size(c.lr, k, c.lr_schedule)
        grad = self.worker._grad(self.x) if self.computes else None
        rsa = self.parts.is_rsa
        true = self.x if rsa or grad is None else half_step(self.x, grad, alpha=alpha, mu=c.mu)
        r = c.regular
        for v in plan.sends_to:
            if not self.forges or v >= r:
                sender.put(out[v], k, true.clone(), fault)
        self._next_hold = time.monotonic() + c.timeout / 2
        got = self._read(k, inp, out, sender)
        if self.forges:
            for i, rows in self._lies(got, true):
                sender.put(out[i], k, rows, fault)
        if grad is None:
            return
        present = [j for j in plan.neighbours if j in got]
        messages = torch.stack([got[j] for j in present]) if present else true.new_zeros(0, true.shape[0])
        at = torch.zeros(len(present), dtype=torch.int64, device=true.device)
        if rsa:
            pull = edge_pull(self.x.unsqueeze(0), messages, at, self.parts.p)[0]
            drsa_step(self.x, grad, pull, alpha=alpha, lam=c.lam, mu=c.mu)
            return
        weights = torch.tensor([w for j, w in zip(plan.neighbours, plan.weights) if j in got], dtype=true.dtype)
        # a missing neighbour's mixing weight stays with the node (the weights still sum to one)
        self_weight = torch.tensor([1.0 - float(weights.sum())] if len(present) < len(plan.neighbours)
                                   else [plan.self_weight], dtype=true.dtype)
        args = (true.unsqueeze(0), messages, at, self_weight, weights, (plan.b,))
        if plan.byzantine:  # true values: plain gossip (the rule binds the regular nodes only)
            self.x = gossip_mean(*args)[0]
            return
        rule = self.parts.rule.name
        if len(present) < len(plan.neighbours) and rule not in GRAPH_FORMS:
            try:
                neighbourhood_requirement(rule, self.parts.rule_options)(len(present) + 1, plan.b)
            except ConfigError as exc:
                self.skipped += 1
                log.warning("node %d at iteration %d: %s; it keeps its own half step", self.node, k, exc)
                self.x = true
                return
        self.x = aggregate_neighbourhoods(rule, *args, self.parts.rule_options)[0]

    def _read(self, k: int, inp: dict[int, Any], out: dict[int, Any], sender: _Sender) -> dict[int, Tensor]:
        """This round's messages from every live in-peer: dead ones dropped for good, malformed ones for the round.

        A peer is dropped after ``timeout`` seconds without a frame from it. A
        node that waits sends a HOLD to its out-peers every ``timeout / 2``
        seconds, each of which grants ``timeout`` more seconds (up to
        ``HOLD_CAP`` timeouts in all per peer and round): a node held up by a hung
        neighbour is late, not dead, and its own neighbours must not drop it.
        """
        t = self.config.timeout
        d, dtype = self.x.shape[0], self.worker.dtype
        got = {}
        for v in self.plan.hears_from:
            if v in self.dead:
                continue
            link = inp[v]
            start = time.monotonic()
            deadline, cap = start + t, start + HOLD_CAP * t
            try:
                while True:
                    now = time.monotonic()
                    if now >= self._next_hold:
                        self._hold(k, out, sender)
                    if not select.select([link.sock], [], [], max(min(deadline, self._next_hold) - now, 0))[0]:
                        if time.monotonic() >= deadline:
                            link._close("timed out")  # raises PeerLost
                        continue
                    frame = link.receive(max(deadline, time.monotonic() + t))
                    if frame.kind == Kind.HOLD and frame.iteration <= k:
                        deadline = min(cap, time.monotonic() + t)
                        continue
                    break
                why = check_frame(frame, kind=Kind.MSG, iteration=k, dtype=dtype, numel=d)
                if why is None:
                    got[v] = frame.tensor().to(self.x.device)
                    continue
            except PeerLost as exc:
                self.dead[v] = f"iteration {k}: {exc}"
                log.warning("node %d dropped neighbour %d at iteration %d (%s)", self.node, v, k, exc)
                continue
            except Malformed as exc:
                why = str(exc)
            entry = self.malformed.setdefault(v, {"count": 0, "first": f"iteration {k}: {why}"})
            entry["count"] += 1
            log.warning("node %d: neighbour %d sent an unusable message at iteration %d (%s): dropped",
                        self.node, v, k, why)
        self._next_hold = math.inf
        return got

    def _hold(self, k: int, out: dict[int, Any], sender: _Sender) -> None:
        frame = encode(Kind.HOLD, k)
        for v in self.plan.sends_to:
            sender.put(out[v], k, frame)
        self._next_hold = time.monotonic() + self.config.timeout / 2

    def _lies(self, got: dict[int, Tensor], true: Tensor) -> Iterator[tuple[int, Tensor]]:
        """This Byzantine node's message to each regular neighbour, receiver by receiver (the simulator's order)."""
        r, d = self.config.regular, true.shape[0]
        for i, senders, weights, b in self.plan.receivers:
            if i in self.dead:
                continue
            # a receiver whose frame was malformed this round still waits for a message: forge on its last one
            receiver = self.last[i] = got.get(i, self.last.get(i, true))
            regular = [j for j in senders if j < r and j in got]
            byz = [j for j in senders if j >= r]
            own = torch.stack([true if j == self.node else got.get(j, torch.zeros_like(true)) for j in byz])
            rows = receiver_lies(
                self.parts, torch.stack([got[j] for j in regular]) if regular else true.new_zeros(0, d),
                own if self.parts.needs_own else None, receiver, generators=[self.generators[j] for j in byz], f=b,
                regular_weights=torch.tensor([w for j, w in zip(senders, weights) if j in regular], dtype=true.dtype),
                byzantine_weight=float(sum(w for j, w in zip(senders, weights) if j >= r)),
                state=self.attack_state.setdefault(f"receiver {i}", {}),
            )
            yield i, rows[byz.index(self.node)].contiguous()


def _key(node: int) -> str:
    return f"byzrsa/peer/{node}"


def node_main(spec: WorkerSpec, store: Any, device: torch.device) -> int:
    """A node process: meet its peers, run every round, report to the launcher. Returns the exit status."""
    c = spec.config
    node = Node(spec, device)
    u, token, d = spec.worker, token_from_env(), node.x.shape[0]
    silence = master_silence(c)
    start = time.monotonic() + max(STARTUP_TIMEOUT, silence)
    hello = encode_blob(Kind.HELLO, 0, json.dumps({"worker": u, "token": sign(token, f"worker {u}")}).encode())
    listener = listen("127.0.0.1")
    publish(store, listener, token, _key(u))
    try:
        out = {}
        for v in node.plan.sends_to:
            out[v] = SocketLink(connect(store, token, start, _key(v)), 0, _capacity(d), settle=silence)
            out[v].send(hello)
        inp = accept_links(listener, c.workers, _capacity(d), lambda w: 0, token, start, silence,
                           expected=set(node.plan.hears_from))
        for v in node.plan.hears_from:
            if v in inp:
                inp[v].receive(start)  # its greeting, read while accepting
            else:
                node.dead[v] = "never connected"
        collector = SocketLink(connect(store, token, start), 0, _capacity(d), settle=silence)
        collector.send(hello)
    except PeerLost as exc:
        print(f"byzrsa node {u}: {exc}; exiting", file=sys.stderr)
        return 1
    listener.close()
    sender = _Sender()
    evals = set(evaluations(c.iterations, c.eval_every))
    with torch.no_grad():
        sender.put(collector, 0, encode(Kind.LOCAL, 0, node.x))
        for k in range(1, c.iterations + 1):
            if node.faults.get(k) == "exit":  # dies at the start of round k, its earlier frames sent
                sender.close()
                os._exit(1)
            if node.faults.get(k) == "hang":
                while True:
                    time.sleep(3600)
            node.step(k, out, inp, sender)
            if k in evals:
                sender.put(collector, k, encode(Kind.LOCAL, k, node.x))
    report = {"dead": {str(v): why for v, why in node.dead.items()},
              "malformed": {str(v): e for v, e in node.malformed.items()}, "skipped": node.skipped}
    sender.put(collector, c.iterations, encode_blob(Kind.STATS, c.iterations, json.dumps(report).encode()))
    sender.close()
    # the neighbours may still be reading this node's last messages: leave once the launcher has read them all
    try:
        collector.sock.settimeout(silence)
        collector.sock.recv(1)
    except OSError:
        pass
    return 0


def _gather(links: dict[int, SocketLink], live: set[int], k: int, deadline: float, lag: float,
            dead: list[dict[str, Any]], kill: Any) -> dict[int, Any]:
    """Every live node's next frame, in arrival order; a node more than ``lag`` s behind the first is dropped.

    The nodes move in step (each waits for its neighbours), so a node that has not
    reported ``lag`` seconds after the first one has hung: it is declared dead
    and ended, as its neighbours have already dropped it.
    """
    frames: dict[int, Any] = {}
    pending = set(live)
    while pending:
        remaining = deadline - time.monotonic()
        ready = select.select([links[w].sock for w in pending], [], [], max(remaining, 0))[0] if remaining > 0 else []
        if not ready:
            for w in sorted(pending):
                reason = f"did not report within {lag:g} s of the others" if frames else "did not report"
                live.discard(w)
                dead.append({"worker": w, "iteration": k, "reason": reason})
                log.warning("node %d lost at iteration %d (%s): continuing without it", w, k, reason)
                kill(w)
            break
        for w in sorted(pending):
            if links[w].sock not in ready:
                continue
            pending.discard(w)
            try:
                frames[w] = links[w].receive(time.monotonic() + lag)
            except (PeerLost, Malformed) as exc:
                live.discard(w)
                dead.append({"worker": w, "iteration": k, "reason": str(exc)})
                log.warning("node %d lost at iteration %d (%s): continuing without it", w, k, exc)
                continue
            deadline = min(deadline, time.monotonic() + lag)
    return frames


def run_peers(problem: Problem, extra: dict[str, Any], faults: FaultPlan | None = None) -> Iterator[dict[str, float]]:
    """Run the decentralized ``problem`` on one process per node; yield the simulator's metric rows.

    ``extra`` receives ``dead_workers`` (nodes the launcher lost, and each
    node's dropped neighbours), ``malformed_messages`` (by sender: how many of
    its frames were dropped, and the first reason) and ``dist``.
    """
    from byzrsa.engines.dist.launch import LocalLaunch

    c = problem.config
    faults = FaultPlan.from_env() if faults is None else faults
    d = problem.model.dim
    dead: list[dict[str, Any]] = extra.setdefault("dead_workers", [])  # filled as it happens (an interrupted run too)
    malformed: dict[str, dict[str, Any]] = extra.setdefault("malformed_messages", {})
    with subnormals_flushed(), LocalLaunch(problem, faults, peers=True) as launch:
        listener = listen("127.0.0.1")
        publish(launch.store, listener, launch.token)
        deadline = time.monotonic() + max(STARTUP_TIMEOUT, c.timeout)
        links = accept_links(listener, c.workers, _capacity(d), lambda w: 0, launch.token, deadline,
                             master_silence(c))
        listener.close()
        for w in range(c.workers):
            if w in links:
                links[w].receive(deadline)
            else:
                dead.append({"worker": w, "iteration": 0, "reason": "never connected"})
        live = set(links)
        previous, start = 0, None
        for k in evaluations(c.iterations, c.eval_every):
            wait = master_silence(c) + (k - previous) * c.timeout
            models = _gather(links, live, k, time.monotonic() + wait, HOLD_CAP * c.timeout, dead, launch.kill)
            models = {w: f.tensor().to(problem.device) for w, f in models.items()
                      if check_frame(f, kind=Kind.LOCAL, iteration=k, dtype=problem.dtype, numel=d) is None}
            start = time.perf_counter() if start is None else start  # the nodes train from their k = 0 report on
            train = time.perf_counter() - start
            regular = [models[w] for w in range(c.regular) if w in models]
            if not regular:
                raise DistError(f"no regular node reported at iteration {k}")
            with torch.no_grad():
                row = {"iteration": k, **graph_metrics(problem, torch.stack(regular)), "time": train}
            previous = k
            yield row
        for w in sorted(live):
            try:
                frame = links[w].receive(time.monotonic() + master_silence(c))
            except (PeerLost, Malformed):
                continue
            if check_frame(frame, kind=Kind.STATS, iteration=c.iterations, dtype=torch.uint8) is not None:
                continue
            report = json.loads(frame.blob().decode())
            for v, why in report["dead"].items():
                dead.append({"worker": int(v), "dropped_by": w, "reason": why})
            for v, entry in report["malformed"].items():
                total = malformed.setdefault(v, {"count": 0, "first": f"to node {w}, {entry['first']}"})
                total["count"] += entry["count"]
        for link in links.values():
            link.close()  # the nodes leave
    extra["dist"] = {"backend": "sockets", "world_size": c.workers + 1, "peers": True,
                     "timing": {"iterations": c.iterations, "seconds_per_iteration": train / max(c.iterations, 1)}}
