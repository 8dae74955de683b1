"""Where a simulator step would wait for the device: every host read of a tensor, counted per call site.

    python benchmarks/host_syncs.py [--methods rsa-l1,ideal-sgd,...] [--steps 20] [--device cpu]

On a GPU each ``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``.tolist()``,
``.numpy()``/``.cpu()`` of a device tensor, and ``nonzero`` (whose output size the
host must learn) stops the host until the device has caught up. They are found
here on the CPU, where they are cheap but countable: the functions are wrapped,
one step runs, and each read is charged to the first frame inside ``byzrsa``
that made it. The table lists reads per step by call site, per method, in the
paper's setting (m = 20, q = 8 same-value unless the method needs another attack).
Never part of the test run.
"""

from __future__ import annotations

import argparse
import collections
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_sim import METHODS, make_sim  # noqa: E402

EXTRA = {
    "cclip": dict(method="cclip", lr=1e-4),
    "trimmed-mean": dict(method="trimmed-mean", lr=1e-4),
    "multi-krum": dict(method="multi-krum", lr=1e-4),
    "bulyan": dict(method="bulyan", lr=1e-4, workers=20, byzantine=4),
    "signsgd": dict(method="signsgd", lr=1e-5),
    "rsa-l1 alie": dict(method="rsa", norm="l1", lam=0.07, lr=1e-3, attack={"name": "alie"}),
}
READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


def _site() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/byzrsa/" in frame.filename and "host_syncs" not in frame.filename:
            path = frame.filename.split("/byzrsa/", 1)[1]
            return f"{path}:{frame.lineno} ({frame.name})"
    return "(outside byzrsa)"


@contextmanager
def counting() -> Iterator[collections.Counter]:
    """Count host reads of tensors by call site while the block runs."""
    counts: collections.Counter = collections.Counter()
    saved: dict[str, Any] = {}

    def wrap(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def reader(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if name != "cpu" or self.device.type != "cpu":
                counts[f"{name}: {_site()}"] += 1
            return original(self, *args, **kwargs)

        return reader

    for name in READS:
        saved[name] = getattr(torch.Tensor, name)
        setattr(torch.Tensor, name, wrap(name, saved[name]))
    saved_nonzero = torch.nonzero
    saved_method = torch.Tensor.nonzero

    def nonzero(*args: Any, **kwargs: Any) -> Any:
        counts[f"nonzero: {_site()}"] += 1
        return saved_nonzero(*args, **kwargs)

    def nonzero_method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counts[f"nonzero: {_site()}"] += 1
        return saved_method(self, *args, **kwargs)

    torch.nonzero, torch.Tensor.nonzero = nonzero, nonzero_method
    try:
        yield counts
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)
        torch.nonzero, torch.Tensor.nonzero = saved_nonzero, saved_method


def count_method(name: str, settings: dict[str, Any], steps: int, device: str) -> collections.Counter:
    settings = dict(settings)
    workers = settings.pop("workers", 20)
    byzantine = settings.pop("byzantine", 8)
    sim = make_sim(workers, byzantine, device, warm=3, **settings)
    with torch.no_grad(), counting() as counts:
        for _ in range(steps):
            sim.step()
    return collections.Counter({k: v / steps for k, v in counts.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    every = {**METHODS, **EXTRA}
    ap.add_argument("--methods", default=",".join(every))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--as-gpu", action="store_true",
                    help="on the CPU, take the rules' device paths (what a GPU runs: Krum's and the median's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.as_gpu:
        import byzrsa.aggregators  # noqa: F401

        krum_module = sys.modules["byzrsa.aggregators.krum"]
        coordinate = sys.modules["byzrsa.aggregators.coordinate"]
        geomed = sys.modules["byzrsa.aggregators.geomed"]
        krum_module._sync_free = lambda x: True
        from byzrsa.aggregators import RULES

        entry = RULES["median"]
        object.__setattr__(entry, "fn", coordinate._median_on_device)
        geomed.median = coordinate._median_on_device
    print(f"host reads of tensors per step (device {args.device}; on a GPU each one is a synchronisation)\n")
    print("| method | reads / step | where (reads / step) |\n|---|---|---|")
    for name in args.methods.split(","):
        counts = count_method(name, every[name], args.steps, args.device)
        where = "; ".join(f"{site} x{n:g}" for site, n in counts.most_common())
        print(f"| {name} | {sum(counts.values()):g} | {where or 'none'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
