"""byzrsa: Byzantine-robust stochastic aggregation (RSA) and robust baselines.

Quick start::

    import byzrsa
    summary = byzrsa.run({"method": "rsa", "attack": "same-value", "byzantine": 4,
                          "pixels": "raw", "iterations": 500}, out="runs/demo")
"""

from __future__ import annotations

from typing import Any

from byzrsa.errors import ByzrsaError, ConfigError, DataError

__all__ = ["run", "RunConfig", "load_config", "ByzrsaError", "ConfigError", "DataError", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that `import byzrsa.penalties` does not pull in data loaders and matplotlib.
    if name == "run":
        from byzrsa.experiments.runner import run

        return run
    if name in ("RunConfig", "load_config"):
        from byzrsa import config

        return getattr(config, name)
    raise AttributeError(f"module 'byzrsa' has no attribute {name!r}")
