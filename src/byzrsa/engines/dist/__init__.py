r"""The distributed engine: the master and every worker are separate processes that exchange only messages.

Rank 0 is the master, rank ``i + 1`` is worker ``i`` (workers ``0..r-1`` are
regular, the last q Byzantine, as in the simulator). Each worker process holds
only its own shard of the training data and its own state; the master holds
``x0`` (RSA) or the shared model (the gradient-aggregation baselines) and the
test data. The update rules are those of :mod:`byzrsa.methods`, the functions
the simulator calls, so with the same config and seed both engines follow the
same trajectory (the random streams are per purpose and worker, see
:func:`byzrsa.engines.common.derive_generator`).

One iteration ``k``
-------------------
RSA::

    master --STEP(k, x0)--> every live worker
    regular worker i: sends x_i^k (jacobi) and steps x_i^{k+1} = rsa_worker_step(...)
                      (gauss-seidel: steps first, sends x_i^{k+1})
    Byzantine worker j: computes its own true iterate if its attack needs it,
                        and sends attack(regular, own, [its generator])
    master: x0 <- rsa_master_step(x0, messages that arrived)

Baselines: the master sends the model, every worker sends ``grad F + mu x`` (or
its attack), the master steps with ``aggregation_step(x, messages,
problem.aggregate)``.

The omniscient attacker
-----------------------
Attacks whose registry entry reads the regular workers' messages
(``reads_regular``: copy, negative-sum, alie, ...) get them from the master: once the
regular messages of iteration k have arrived, the master forwards them, stacked
``(n, d)``, to each Byzantine process (an ATTACK frame), which then answers.
Attacks that do not read them (same-value, sign-flip, gaussian, non-finite,
label-flip) answer in the same round as the regular workers. The forward has
one row per regular worker; a dead worker's row repeats its last message
(see :meth:`Master._regular_view`).

Transport and faults
--------------------
Messages are point-to-point ``isend`` / ``irecv`` (gloo on CPU, or NCCL), never
collectives: a collective hangs when one rank dies, a point-to-point wait can
time out. Each master-worker pair has a process group of its own, because gloo
closes every connection of a group when one wait in it times out; this way a
hung worker costs only its own link. Every message is a *frame*: a 64-byte
header (magic, kind, iteration, dtype, number of entries, rows) followed by the
payload bytes, received into a buffer of fixed capacity. The master

* waits for each round at most ``config.timeout`` seconds; a worker that has not
  answered by then, or whose connection closed (it died), is declared dead,
  logged, recorded in the summary (``dead_workers``) and never contacted again.
  RSA simply loses its term; a gradient rule aggregates what arrived (if the
  rule cannot run on that many rows, e.g. Krum with m < 2f + 3, the step is
  skipped and logged);
* treats a frame of the wrong kind, iteration, size or dtype as a Byzantine
  message that cannot be used: it is dropped for that round, logged and counted
  (``malformed_messages``), never a crash. Non-finite entries are not dropped:
  they are what a Byzantine worker may send, and the master's rules handle them
  (docs/protocol.md, convention 6).

gloo aborts the receiving process when a peer sends more bytes than the posted
buffer holds; byzrsa's own processes never do (frames are bounded by the
receiver's capacity), but a foreign process speaking gloo directly could. Like
torch.distributed as a whole this engine has no authentication: run it on a
trusted network only.

Workers end when the master says STOP, when the master's connection closes
(it crashed, or it declared them dead), when the master stays silent for
:func:`master_silence` seconds, or (local launch) when the launching process
dies.

Checkpoints: see :mod:`byzrsa.engines.dist.checkpoint`.

Modules: ``transport`` (frames, links, sizes, identity), ``worker``,
``master``, ``checkpoint``, ``faults`` (a test's fault plan), ``launch`` (local
processes or torchrun's, and the floor benchmark).
"""

from byzrsa.engines.dist.faults import FAULTS_ENV, FaultPlan
from byzrsa.engines.dist.launch import attached, measure_floor, run_local
from byzrsa.engines.dist.master import Master
from byzrsa.engines.dist.transport import CHECKPOINT_NAME, DistError, config_identity, master_silence
from byzrsa.engines.dist.worker import WorkerSpec, process_device, spec_from_problem, worker_main

__all__ = [
    "DistError",
    "FaultPlan",
    "Master",
    "WorkerSpec",
    "run_local",
    "attached",
    "worker_main",
    "spec_from_problem",
    "process_device",
    "config_identity",
    "master_silence",
    "measure_floor",
    "CHECKPOINT_NAME",
    "FAULTS_ENV",
]
