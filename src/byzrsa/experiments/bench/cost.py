"""The cost of a benchmark, estimated before it starts from short runs measured on this machine."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from byzrsa.config import RunConfig
from byzrsa.errors import ByzrsaError
from byzrsa.experiments.paper.plan import run_key

__all__ = ["estimate", "minutes"]



def _probe(config: RunConfig, k: int, datasets: dict[Any, Any], out: Path | None = None) -> tuple[float, float]:
    """(seconds per iteration, seconds per evaluation) of ``config``, measured on ``k`` iterations here.

    With ``out``, the run writes its folder there and the second number is the whole run's wall time.
    """
    from byzrsa.data import load_dataset
    from byzrsa.experiments.runner import run

    key = (config.dataset, config.pixels, config.data_dir, config.seed, config.workers, config.heterogeneity)
    if key not in datasets:
        datasets[key] = load_dataset(config.dataset, pixels=config.pixels, data_dir=config.data_dir, seed=config.seed,
                                     workers=config.workers, heterogeneity=config.heterogeneity, quiet=True)
    started = time.perf_counter()
    summary = run(config.replace(iterations=k, eval_every=k, validation=0.0, threads=1), out,
                  dataset=datasets[key])
    train = float(summary["train_seconds"])
    if out is not None:
        return train / k, time.perf_counter() - started
    return train / k, max(0.0, float(summary["wall_seconds"]) - train) / 2


def estimate(runs: Mapping[str, RunConfig], *, calibrate: bool = True, k: int | None = None,
             budget: float = 20.0) -> dict[str, float]:
    """Rough seconds of one process for each run (key -> seconds), from short runs measured on this machine.

    Each distinct method (with attack none) and each attack (with the first
    method) is timed for ``k`` iterations; a run's estimate is the method's time
    per iteration, times the attack's ratio to no attack, times its
    iterations, plus its evaluations, plus the cost of writing a run folder
    (measured once). ``k`` defaults to what takes about half a second (2 to 20
    iterations); once the probes have taken ``budget`` seconds, the methods and
    attacks left are costed like the first one. Without ``calibrate``: 1 ms per
    iteration, a rough figure for softmax regression.
    """
    if not runs:
        return {}
    if not calibrate:
        return {key: 1e-3 * c.iterations for key, c in runs.items()}
    datasets: dict[Any, Any] = {}

    def method_sig(c: RunConfig) -> str:
        return run_key(c.replace(attack="none", seed=0, validation=0.0, split="iid", iterations=1, eval_every=1))

    reps: dict[str, RunConfig] = {}
    attacks: dict[str, RunConfig] = {}
    for c in runs.values():
        reps.setdefault(method_sig(c), c)
        attacks.setdefault(json_key(c.attack, c.attack_options), c)
    started = time.perf_counter()
    first = next(iter(reps.values()))
    warm = _probe(first.replace(attack="none", split="iid"), 2, datasets)  # also pays the first-call costs
    steps = k or max(2, min(20, min(c.iterations for c in runs.values()), int(0.5 / max(warm[0], 1e-6))))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # the cost of a run folder: config, metrics, summary, plot
        with_folder = _probe(first.replace(attack="none", split="iid"), 2, datasets, Path(tmp) / "run")[1]
    bare = _probe(first.replace(attack="none", split="iid"), 2, datasets)
    folder = max(0.0, with_folder - 2 * bare[0] - 3 * bare[1])
    per: dict[str, tuple[float, float]] = {method_sig(first): bare}

    def spent() -> bool:
        return time.perf_counter() - started > budget

    for sig, c in reps.items():
        per[sig] = bare if spent() else _probe(c.replace(attack="none", split="iid"), steps, datasets)
    ratio: dict[str, float] = {}
    ref = next((r for r in reps.values() if r.method != "rsa" and r.method != "ideal-sgd"), first)
    for sig, c in attacks.items():
        probe_config = ref.replace(attack=c.attack, **{f"attack.{k}": v for k, v in c.attack_options.items()},
                                   byzantine=c.byzantine, split="iid")
        try:
            attacked = per[method_sig(ref)][0] if spent() else _probe(probe_config, steps, datasets)[0]
        except ByzrsaError:
            attacked = per[method_sig(ref)][0]
        ratio[sig] = attacked / max(per[method_sig(ref)][0], 1e-9)
    out = {}
    for key, c in runs.items():
        it, ev = per[method_sig(c)]
        out[key] = folder + it * ratio[json_key(c.attack, c.attack_options)] * c.iterations + ev * (
            c.iterations / c.eval_every + 1)
    return out


def json_key(name: str, options: Mapping[str, Any]) -> str:
    return name + repr(sorted(options.items()))


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
