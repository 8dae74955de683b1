r"""RSA and robust aggregation on Flower's Message API (``pip install 'byzrsa[flower]'``).

The same algorithm as :mod:`byzrsa.engines.sim`, with every worker a Flower
SuperNode (virtual ones on the simulation engine, real ones in a deployment):

* :func:`server_app` / :func:`client_app`: the ServerApp and ClientApp of a
  Flower app (``examples/flower``, run with ``flwr run``);
* :class:`RSAStrategy`: the master keeps :math:`x_0` and steps it with
  :func:`byzrsa.methods.rsa_master_step` over the models that arrived; each
  client keeps :math:`x_i` in its node's ``context.state`` and steps it with
  :func:`byzrsa.methods.rsa_worker_step`;
* :class:`RobustStrategy`: any byzrsa rule (and pre-aggregator chain) over the
  clients' gradients, with the rule's validity check on the replies that arrived;
* :class:`OmniscientAdversary`: the server-side simulation of attacks that
  read the regular messages of the round.

Settings come from the Flower run config: byzrsa's own keys (``method``,
``lam``, ``attack``, ``"attack.sigma"``, ...) and the engine's hyphenated
ones (:class:`FlowerSettings`). With the same config and seed, worker i draws
exactly the minibatches and random numbers of the simulator's worker i, so in
float64 with every client taking part the Flower run's x0 trajectory equals
the simulator's (``tests/test_flower.py``). See docs/flower.md.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "byzrsa's Flower engine needs Flower: pip install 'byzrsa[flower]' (or 'flwr[simulation]>=1.42,<2')"
    ) from exc

from byzrsa.engines.flower.adversary import OmniscientAdversary
from byzrsa.engines.flower.build import FlowerSettings, Job, flower_run_config, load_job, split_run_config
from byzrsa.engines.flower.client import ClientWorker, client_app
from byzrsa.engines.flower.server import discover, exchange, run_server, server_app
from byzrsa.engines.flower.strategy import ByzrsaStrategy, RobustStrategy, RSAStrategy, make_strategy

__all__ = [
    "server_app",
    "client_app",
    "run_server",
    "RSAStrategy",
    "RobustStrategy",
    "ByzrsaStrategy",
    "OmniscientAdversary",
    "make_strategy",
    "FlowerSettings",
    "Job",
    "load_job",
    "split_run_config",
    "flower_run_config",
    "ClientWorker",
    "discover",
    "exchange",
]
