"""Run one experiment from a config and write its results folder.

The folder gets ``config.json`` (the full resolved config), ``metrics.csv``
(one row per evaluation, flushed as it goes so an interrupted run still leaves
a valid file), ``summary.json`` and ``accuracy.png``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from byzrsa.config import RunConfig, config_from_dict
from byzrsa.data import Dataset
from byzrsa.engines.common import build_problem, validate
from byzrsa.engines.plugins import blame
from byzrsa.errors import ByzrsaError, ConfigError, WriteError
from byzrsa.folders import atomic_path, atomic_write_text, claim_folder, provenance, release_folder, utc_now
from byzrsa.experiments.plots import plot_curves
from byzrsa.decentralized import GRAPH_METRICS
from byzrsa.methods import get_method
from byzrsa.penalties import norm_name, parse_norm
from byzrsa.preaggregators import PRE_AGGREGATORS

__all__ = ["run", "read_metrics", "METRIC_COLUMNS", "describe"]

METRIC_COLUMNS = ("iteration", "accuracy", "test_loss", "train_loss", "variance", "time")


def describe(config: RunConfig) -> str:
    """A short label from the registries' labels: ``RSA (l1, lambda=0.07)``, ``GeoMed``, ``NNM + Krum (momentum 0.9)``."""
    method = get_method(config.method)
    label = " + ".join([*(PRE_AGGREGATORS[name].label for name in config.pre), method.label])
    if method.is_rsa:
        label += f" ({norm_name(parse_norm(config.norm))}, lambda={config.lam:g})"
    elif config.momentum:
        label += f" (momentum {config.momentum:g})"
    return label


def _rows(
    config: RunConfig, dataset: Dataset | None, extra: dict[str, Any], out_dir: Path | None, resume: Path | None
) -> Iterator[dict[str, float]]:
    problem = build_problem(config, dataset)
    if config.engine == "dist":
        from byzrsa.engines.dist import run_local  # imported lazily: it pulls in torch.distributed

        yield from run_local(problem, extra, checkpoint_dir=out_dir, resume=resume)
    else:
        from byzrsa.engines.sim import simulate

        yield from simulate(problem, checkpoint_dir=out_dir, resume=resume)


def run(
    config: RunConfig | dict[str, Any],
    out: str | Path | None = None,
    *,
    quiet: bool = True,
    dataset: Dataset | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train as ``config`` says; return the summary (and write the results folder if ``out`` is given).

    ``out`` must be new or empty unless ``overwrite`` (replace the run there)
    or it is the ``resume`` folder; its ``summary.json`` says ``completed``,
    ``interrupted`` (with the iteration reached and the signal) or ``failed``
    (with the one-line error), see :mod:`byzrsa.folders`. The
    caller's torch thread count is restored on return.

    Raises :class:`byzrsa.errors.ByzrsaError` for an impossible config or
    missing data, before any training. ``KeyboardInterrupt`` is re-raised after
    the partial results are written. ``resume`` (either engine) is a results
    folder holding a ``checkpoint.pt``: the run continues from it.
    """
    if isinstance(config, Mapping):
        config = config_from_dict(config)
    elif not isinstance(config, RunConfig):
        raise ConfigError(f"run() takes a RunConfig or a mapping of settings, got {type(config).__name__}")
    config = validate(config)  # every component's options filled in: what config.json records
    out_dir = Path(out) if out is not None else None
    resume_dir = Path(resume) if resume is not None else None
    if config.checkpoint_every and out_dir is None:
        raise ConfigError("checkpoint_every needs a results folder (--out): the checkpoints are written there")
    if resume_dir is not None and not (resume_dir.is_dir() or resume_dir.is_file()):
        raise ConfigError(f"--resume {resume_dir}: no such results folder")
    # --resume continues in its own folder; a different --out is a new folder like any other.
    same = out_dir is not None and resume_dir is not None and _same_folder(out_dir, resume_dir)
    extra: dict[str, Any] = {}  # engine-specific facts for the summary (e.g. dead workers)
    rows: list[dict[str, float]] = []
    started = time.perf_counter()
    origin = provenance(config.device)  # versions, commit, host, start time: in config.json and summary.json
    progress = None
    writer = handle = None
    status, error = "completed", None
    stream = None
    created = out_dir is not None and not out_dir.exists()
    stale: list[Path] = []
    threads_before = torch.get_num_threads()  # the caller's thread count is restored at the end
    if out_dir is not None:  # before any work: a folder holding another run is refused here
        stale = claim_folder(out_dir, overwrite=overwrite, resume=same)
    try:
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        stream = _rows(config, dataset, extra, out_dir, resume_dir)
        first = next(stream)  # builds the problem: every input error surfaces here, before training
        if out_dir is not None:
            for path in stale:  # the run replacing them has started (--overwrite)
                path.unlink(missing_ok=True)
            recorded = {**json.loads(config.to_json()), "provenance": origin}  # load_config ignores provenance
            atomic_write_text(out_dir / "config.json", json.dumps(recorded, indent=2, sort_keys=True) + "\n")
            handle = open(out_dir / "metrics.csv", "w", newline="")
            columns = METRIC_COLUMNS + (GRAPH_METRICS if config.topology != "none" else ())
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
        if not quiet:
            from tqdm import tqdm

            progress = tqdm(total=config.iterations, desc=describe(config), unit="it", dynamic_ncols=True)
        for row in _chain(first, stream):
            rows.append(row)
            if writer is not None:
                writer.writerow(row)
                handle.flush()
            if progress is not None:
                progress.update(int(row["iteration"]) - progress.n)
                progress.set_postfix(acc=f"{row['accuracy']:.4f}")
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP through the CLI's handler
        status, error = "interrupted", (str(exc) or "SIGINT")
        raise
    except OSError as exc:
        culprit = blame(exc, config.plugins, config.model)
        if culprit is not None:
            status, error = "failed", _one_line(culprit)
            raise culprit from exc
        if out_dir is None or isinstance(exc, ByzrsaError):
            status, error = "failed", _one_line(exc)
            raise
        # A full disk, a file-size limit, a read-only folder: one line naming the file, not a traceback.
        failure = WriteError.from_os(exc, out_dir)
        status, error = "failed", _one_line(failure)
        raise failure from None
    except BaseException as exc:
        culprit = blame(exc, config.plugins, config.model)  # a user's plugin raised (or called sys.exit)
        status, error = "failed", _one_line(culprit or exc)
        if culprit is not None:
            raise culprit from exc
        raise
    finally:
        in_flight = status != "completed"  # an exception is on its way out: a later error must not replace it
        late: OSError | None = None
        torch.set_num_threads(threads_before)
        if stream is not None:
            stream.close()  # ends the engine now (the dist engine's processes), not at garbage collection
        if progress is not None:
            progress.close()
        if handle is not None:
            try:
                handle.close()
            except OSError as exc:  # the last rows could not be flushed
                late = WriteError.from_os(exc, out_dir / "metrics.csv")
                status, error = ("failed", _one_line(late)) if not in_flight else (status, error)
        extra["provenance"] = {**origin, "finished": utc_now()}
        summary = _summary(config, rows, time.perf_counter() - started, status, error, extra) if rows else None
        if out_dir is not None:
            if rows:
                plot = out_dir / "accuracy.png"
                try:
                    plot_curves({describe(config): rows}, atomic_path(plot), title=_title(config))
                    os.replace(atomic_path(plot), plot)
                except Exception:  # noqa: BLE001 - a plot that cannot be drawn must not lose the summary
                    atomic_path(plot).unlink(missing_ok=True)
            try:
                release_folder(out_dir, summary)  # removes the marker and temporary files whatever happens
            except OSError as exc:
                late = late or WriteError.from_os(exc, out_dir / "summary.json")
            if created and not rows:  # failed before anything was written: leave no folder behind
                shutil.rmtree(out_dir, ignore_errors=True)
        if late is not None and not in_flight:
            raise late
    return summary


def _same_folder(a: Path, b: Path) -> bool:
    b = b.parent if b.is_file() else b  # --resume may name the checkpoint file itself
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def _chain(first: dict[str, float], rest: Iterator[dict[str, float]]) -> Iterator[dict[str, float]]:
    yield first
    yield from rest


def _title(c: RunConfig) -> str:
    attack = "no attack" if c.attack == "none" or c.byzantine == 0 else f"{c.attack} attack, q={c.byzantine}"
    graph = f", {c.topology} graph" if c.topology != "none" else ""
    return f"{c.dataset} ({c.split}), m={c.workers}{graph}, {attack}"


def _summary(
    config: RunConfig, rows: list[dict[str, float]], wall: float, status: str, error: str | None, extra: dict[str, Any]
) -> dict[str, Any]:
    accuracies = [r["accuracy"] for r in rows]
    last = rows[-1]
    done = int(last["iteration"])
    return {
        "method": config.method,
        "label": describe(config),
        "attack": config.attack,
        "byzantine": config.byzantine,
        "workers": config.workers,
        "dataset": config.dataset,
        "split": config.split,
        "iterations": done,
        "final_accuracy": last["accuracy"],
        "best_accuracy": max(accuracies),
        "final_train_loss": last["train_loss"] if math.isfinite(last["train_loss"]) else None,
        "final_variance": last["variance"] if math.isfinite(last["variance"]) else None,
        **{f"final_{key}": last[key] for key in GRAPH_METRICS if key in last},  # a decentralized run's spread
        "train_seconds": last["time"],
        "seconds_per_iteration": last["time"] / done if done else None,
        "wall_seconds": wall,
        "status": status,
        # failed: the one-line error; interrupted: the signal (SIGTERM, SIGHUP or SIGINT)
        **({"error": error} if status == "failed" else {"signal": error} if status == "interrupted" else {}),
        "interrupted": status == "interrupted",
        "planned_iterations": config.iterations,
        "engine": config.engine,
        **extra,
    }


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Read a run's ``metrics.csv`` (or its folder) back as a list of rows of floats."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.csv"
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
