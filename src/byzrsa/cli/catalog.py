"""What the command line needs to know about the registered components, without importing torch.

The registries (:mod:`byzrsa.registry`) stay the only place that lists
components; their modules import torch, which takes seconds, while
``byzrsa --help``, ``byzrsa run --help``, ``byzrsa list`` and argparse's own
errors need only names, options and help. :func:`catalog` reads those from the
live registries when they are already imported (a plugin or a test may have
added entries), and otherwise from a cache file derived from them: written the
first time the registries are imported, and keyed by byzrsa's version and the
size and modification time of every source file of the package, so that an
edited or upgraded package rebuilds it. A cache that cannot be read or written
is ignored (the registries are then imported, as before).

The cache lives in ``$BYZRSA_CACHE`` (default ``~/.cache/byzrsa``), beside the
datasets.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["catalog", "live", "store", "cache_path"]

# The modules that hold the registries the command line reads.
REGISTRY_MODULES = (
    "byzrsa.aggregators", "byzrsa.attacks", "byzrsa.models", "byzrsa.preaggregators", "byzrsa.methods", "byzrsa.estimators",
)
_FORMAT = 1  # bump when the catalog's layout changes


def _entry(entry: Any) -> dict[str, Any]:
    return {
        "name": entry.name,
        "help": entry.help,
        "options": [
            {"name": o.name, "type": o.type.__name__, "default": str(o.default), "repr": repr(o.default),
             "help": o.help, "aliases": list(o.aliases)}
            for o in entry.options
        ],
    }


def live() -> dict[str, list[dict[str, Any]]]:
    """The catalog read from the registries themselves (imports them, and so torch)."""
    from byzrsa.aggregators import RULES
    from byzrsa.attacks import ATTACKS
    from byzrsa.estimators import ESTIMATORS
    from byzrsa.methods import get_method, method_names
    from byzrsa.models import MODELS
    from byzrsa.preaggregators import PRE_AGGREGATORS

    return {
        "methods": [_entry(get_method(n)) for n in method_names()],
        "rules": [_entry(e) for e in RULES.values()],
        "pre": [_entry(e) for e in PRE_AGGREGATORS.values()],
        "attacks": [_entry(e) for e in ATTACKS.values()],
        "models": [_entry(e) for e in MODELS.values()],
        "estimators": [_entry(e) for e in ESTIMATORS.values()],
    }


def _fingerprint() -> str:
    """byzrsa's version and the size and mtime of each of its source files: any edit changes it."""
    import byzrsa

    root = Path(byzrsa.__file__).parent
    digest = hashlib.sha256(f"{_FORMAT} {byzrsa.__version__} {root}".encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                stat = os.stat(os.path.join(dirpath, name))
                digest.update(f"{dirpath}/{name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def cache_path() -> Path:
    root = os.environ.get("BYZRSA_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "byzrsa"
    return base / "cli-catalog.json"


def catalog() -> dict[str, list[dict[str, Any]]]:
    """Methods, rules, pre-aggregators, attacks and models, each with its options (see the module's text)."""
    if any(m in sys.modules for m in REGISTRY_MODULES):  # a plugin may have registered entries: read them all
        return live()
    try:
        key = _fingerprint()
    except OSError:
        return live()
    cached = _load(key)
    if cached is not None:
        return cached
    result = live()
    store(result, key)
    return result


def _load(key: str) -> dict[str, list[dict[str, Any]]] | None:
    try:
        cached = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("catalog"), dict):
        return cached["catalog"]
    return None


def store(result: dict[str, list[dict[str, Any]]] | None = None, key: str | None = None) -> None:
    """Write the catalog cache (``result`` defaults to :func:`live`); a folder that cannot be written is skipped."""
    path = cache_path()
    try:
        key = key if key is not None else _fingerprint()
        result = result if result is not None else live()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written atomically: a concurrent reader sees the old file or the new one.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cli-catalog-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump({"key": key, "catalog": result}, handle)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        pass
