"""``byzrsa reproduce``: run the paper's figures (:mod:`~byzrsa.experiments.paper.presets`) and report on them.

The chosen figures become run configs (:mod:`~byzrsa.experiments.paper.plan`); each
distinct config runs once, in parallel processes, skipping runs whose results
already exist, and then the figures are drawn and ``report.md`` written
(:mod:`byzrsa.experiments.paper.report`, with :mod:`.claims` and :mod:`.figures`);
:mod:`.theory` checks the convergence theory and computes lambda0. The parallel
executor here (:func:`execute`) also runs ``byzrsa tune`` and ``byzrsa bench``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from byzrsa.config import RunConfig
from byzrsa.errors import ConfigError, config_int
from byzrsa.folders import atomic_write_text, check_folder, exclusive, run_state
from byzrsa.experiments.paper.plan import Plan, base_settings, plan, resolve_figures
from byzrsa.experiments.paper.presets import FIGURES, PAPER_SETTING

__all__ = ["execute", "is_done", "run_folder", "reproduce"]

_DATASETS: dict[tuple[Any, ...], Any] = {}


def _dataset_for(config: RunConfig) -> Any:
    """Load each dataset once per process (all runs of a reproduction share it)."""
    from byzrsa.data import load_dataset

    key = (config.dataset, config.pixels, config.data_dir, config.seed, config.workers, config.heterogeneity)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(
            config.dataset, pixels=config.pixels, data_dir=config.data_dir, seed=config.seed,
            workers=config.workers, heterogeneity=config.heterogeneity, quiet=True,
        )
    return _DATASETS[key]


_PARENT: int | None = None  # in a pool worker: the process id of the invocation that started it


def _init_process() -> None:
    """Set up a pool worker: one torch thread, and an end when the invocation that started it ends.

    SIGTERM reaches a worker when its parent dies, even by SIGKILL (Linux's
    parent-death signal), so no worker outlives its invocation; and a worker
    whose parent has gone never publishes a run (see :func:`execute_one`).
    """
    global _PARENT
    import torch

    from byzrsa.engines.cpu import pin_default_threads

    torch.set_num_threads(1)
    pin_default_threads(1)  # a run's default would otherwise count idle cores its siblings are about to take
    _PARENT = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover - no libc: the parent check below still holds
            pass
        if os.getppid() != _PARENT:  # the parent died before the signal was armed
            os._exit(1)


def _orphaned() -> bool:
    return _PARENT is not None and os.getppid() != _PARENT


def run_folder(out: Path, key: str) -> Path:
    return out / "runs" / key


def is_done(out: Path, key: str, iterations: int | None = None) -> bool:
    """A stored run is trusted only when :func:`~byzrsa.folders.run_state` says ``completed``.

    A missing, truncated, unparsable or non-completed summary, or a metrics.csv
    that stops short of the run's iterations (``iterations``, else those of
    its config.json), means the run is redone.
    """
    return run_state(run_folder(out, key), iterations) == "completed"


def execute_one(key: str, config_json: str, out: str) -> dict[str, Any]:
    """Run one config into ``out/runs/.tmp-KEY-PID`` and rename it to ``out/runs/KEY`` when complete.

    The rename is what marks a run as finished: an interrupted run leaves only a
    temporary folder, which the next invocation deletes and redoes.
    """
    from byzrsa.config import config_from_dict
    from byzrsa.experiments.runner import run

    config = config_from_dict(json.loads(config_json))
    root = Path(out) / "runs"
    tmp = root / f".tmp-{key}-{os.getpid()}"
    final = root / key
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        summary = run(config, tmp, quiet=True, dataset=_dataset_for(config))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if _orphaned():  # the invocation has ended (killed): it no longer holds the lock, so publish nothing
        shutil.rmtree(tmp, ignore_errors=True)
        os._exit(1)
    if final.exists() and run_state(final) == "completed":  # another process finished the same run first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        if final.exists():  # a corrupt or unfinished copy: this run replaces it
            shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return summary


def _cost(config: RunConfig) -> float:
    """Rough relative cost, used to order the runs."""
    weight = {"geomed": 6.0, "krum": 2.0, "median": 1.5}.get(config.method, 1.0)
    return weight * config.iterations


def _progress_of(root: Path, key: str) -> int:
    """Iterations done by a running run, read from the last line of its temporary metrics.csv."""
    best = 0
    for tmp in root.glob(f".tmp-{key}-*"):
        try:
            with open(tmp / "metrics.csv", "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 400))
                last = handle.read().decode(errors="ignore").strip().splitlines()[-1]
            best = max(best, int(float(last.split(",")[0])))
        except (OSError, IndexError, ValueError):
            continue
    return best


def execute(
    runs: Mapping[str, RunConfig],
    out: str | Path,
    *,
    jobs: int | None = None,
    quiet: bool = False,
    extra: Mapping[str, tuple[Callable[..., Any], tuple[Any, ...]]] | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Run every config of ``runs`` (key -> config) whose results are not in ``out`` yet.

    Runs go to ``jobs`` worker processes (default: the number of CPU cores),
    each with one torch thread, cheapest first. ``extra`` names further jobs
    (a picklable function and its arguments, e.g. the theory checks) that share
    the processes. Returns (key -> error message of failed runs or jobs,
    name -> result of each extra job). One progress bar counts the iterations
    of the whole batch.
    """
    out = check_folder(out)
    if jobs is not None:
        config_int(jobs, "--jobs", minimum=1)
    for key, config in runs.items():
        if not isinstance(config, RunConfig):
            raise ConfigError(f"execute() takes run configs (RunConfig), got {type(config).__name__} for {key}")
    root = out / "runs"
    with _exclusive(out):  # first: a refused invocation writes nothing
        root.mkdir(parents=True, exist_ok=True)
        return _execute(runs, out, root, jobs=jobs, quiet=quiet, extra=extra)


def _exclusive(out: Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``out/.lock`` so that two invocations never share (and clean up) one results folder (re-entrant)."""
    return exclusive(out, ".lock", "byzrsa reproduce/tune")


def _execute(
    runs: Mapping[str, RunConfig],
    out: Path,
    root: Path,
    *,
    jobs: int | None,
    quiet: bool,
    extra: Mapping[str, tuple[Callable[..., Any], tuple[Any, ...]]] | None,
) -> tuple[dict[str, str], dict[str, Any]]:
    for stale in root.glob(".tmp-*"):  # left by an interrupted invocation (the lock rules out a live one)
        shutil.rmtree(stale, ignore_errors=True)
    # Cheapest first: an interrupted reproduction then has as many finished lines as possible.
    pending = sorted((k for k in runs if not is_done(out, k, runs[k].iterations)), key=lambda k: _cost(runs[k]))
    extra = dict(extra or {})
    failures: dict[str, str] = {}
    results: dict[str, Any] = {}
    if not quiet and not pending:
        print(f"all {len(runs)} runs already done in {root}", file=sys.stderr)
    if not pending and not extra:
        return failures, results
    jobs = max(1, jobs or os.cpu_count() or 1)
    total = sum(runs[k].iterations for k in pending)
    bar = None
    if not quiet and pending:
        from tqdm import tqdm

        done_before = len(runs) - len(pending)
        others = f" + {', '.join(extra)}" if extra else ""
        print(
            f"{len(pending)} runs to do{others} ({done_before} already done), {jobs} process{'es' if jobs > 1 else ''}",
            file=sys.stderr,
        )
        bar = tqdm(total=total, unit="it", dynamic_ncols=True, desc="reproduce", smoothing=0.05, mininterval=1.0)
    finished_iters = 0
    finished_runs = len(runs) - len(pending)

    def note(key: str, outcome: Any, error: BaseException | None) -> None:
        nonlocal finished_iters, finished_runs
        if key in runs:
            finished_iters += runs[key].iterations
            finished_runs += 1
        elif error is None:
            results[key] = outcome
        if error is not None:
            failures[key] = f"{type(error).__name__}: {error}"
            what = runs[key].method if key in runs else "job"
            message = f"{key} ({what}) failed: {failures[key]}"
            if bar is not None:
                bar.write(message)
            elif not quiet:
                print(message, file=sys.stderr)

    # (name, function, arguments); the extra jobs first, then the runs.
    tasks: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [(n, f, a) for n, (f, a) in extra.items()]
    tasks += [(key, execute_one, (key, runs[key].to_json(), str(out))) for key in pending]
    def show() -> None:
        if bar is not None:
            bar.set_postfix_str(f"{finished_runs}/{len(runs)} runs")
            bar.refresh()

    try:
        if jobs == 1:
            import torch

            threads = torch.get_num_threads()  # the caller's, restored below
            torch.set_num_threads(1)
            try:
                for name, func, arguments in tasks:
                    try:
                        note(name, func(*arguments), None)
                    except Exception as exc:  # noqa: BLE001 - a failed run must not stop the others
                        note(name, None, exc)
                    if bar is not None:
                        bar.n = finished_iters
                    show()
            finally:
                torch.set_num_threads(threads)
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_process)
            try:
                futures: dict[Future[Any], str] = {pool.submit(func, *arguments): name for name, func, arguments in tasks}
                remaining = set(futures)
                while remaining:
                    done, remaining = wait(remaining, timeout=1.0, return_when=FIRST_COMPLETED)
                    for future in done:
                        error = future.exception()
                        note(futures[future], None if error else future.result(), error)
                    if bar is not None:
                        running = [futures[f] for f in remaining if f.running() and futures[f] in runs]
                        bar.n = finished_iters + sum(_progress_of(root, k) for k in running)
                    show()
            except BaseException:
                # Ctrl-C, SIGTERM or SIGHUP (or an error here): end the workers now. A Ctrl-C from a
                # terminal reaches them too, a signal sent to this process alone does not; their
                # unfinished runs leave only temporary folders, which the next invocation removes.
                _end_pool(pool)
                raise
            pool.shutdown(wait=True)
    finally:
        if bar is not None:
            bar.close()
    return failures, results


def _end_pool(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's workers, wait for them (SIGKILL after 5 s), and shut the pool down."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    deadline = time.monotonic() + 5.0
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(1.0)
    with contextlib.suppress(Exception):
        pool.shutdown(wait=False, cancel_futures=True)
    # Join the pool's manager thread before the interpreter exits: left running, it closes its wake-up pipe while
    # concurrent.futures' exit hook writes to it ("Exception ignored in: <module 'threading'> ... OSError: [Errno 9]
    # Bad file descriptor" after an interrupt). With the workers gone it notices the broken pool and ends.
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:
        with contextlib.suppress(Exception):
            manager.join(5.0)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def describe_presets() -> str:
    """The presets as readable text (``byzrsa reproduce --list``)."""
    lines = ["Shared by every figure: " + ", ".join(f"{k}={v}" for k, v in PAPER_SETTING.items()), ""]
    for fig in FIGURES.values():
        fixed = ", ".join(f"{k}={v}" for k, v in fig.fixed.items())
        lines.append(f"{fig.name}: {fig.caption}")
        lines.append(f"  fixed: {fixed}")
        for line in fig.lines:
            varying = ", ".join(f"{k}={v}" for k, v in line.settings.items())
            tuned = f"  (paper: lr={line.paper_lr:g})" if line.paper_lr is not None else ""
            lines.append(f"  - {line.label}: {varying}{tuned}")
        lines.append(f"  paper: {fig.statement}")
        lines.append("")
    lines.append("theory: Theorems 1-2 and the O(1/k) rate on the synthetic strongly convex problem")
    return "\n".join(lines)


def reproduce(
    figures: Iterable[str] = ("all",),
    *,
    dataset: str = "mnist-sample",
    out: str | Path = "results/mnist-sample",
    data_dir: str | None = None,
    jobs: int | None = None,
    quick: bool = False,
    iterations: int | None = None,
    eval_every: int | None = None,
    overrides: Iterable[str] = (),
    compare_order: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run, draw and report the chosen figures (and the theory checks); return a summary dict."""

    out = check_folder(out)
    if jobs is not None:
        config_int(jobs, "--jobs", minimum=1)
    names = resolve_figures(figures)
    base = base_settings(dataset, data_dir, quick, iterations, eval_every, overrides)
    the_plan = plan(names, base, compare_order=compare_order)
    # Fail on bad settings (unknown dataset, impossible q) before anything runs.
    from byzrsa.engines.common import validate

    for config in the_plan.runs.values():
        validate(config)
    # Load each dataset once here, so a missing dataset is one clear error before any process starts.
    pending = [c for k, c in the_plan.runs.items() if not is_done(out, k, c.iterations)]
    for config in {(c.dataset, c.pixels, c.data_dir): c for c in pending}.values():
        _dataset_for(config)
    _DATASETS.clear()
    with _exclusive(out):  # a refused concurrent invocation writes nothing, not even plan.json
        return _reproduce_locked(the_plan, names, out, dataset=dataset, data_dir=data_dir, quick=quick,
                                 iterations=iterations, jobs=jobs, quiet=quiet)


def _reproduce_locked(
    the_plan: Plan, names: list[str], out: Path, *, dataset: str, data_dir: str | None, quick: bool,
    iterations: int | None, jobs: int | None, quiet: bool,
) -> dict[str, Any]:
    from byzrsa.experiments.paper import report

    atomic_write_text(out / "plan.json", the_plan.to_json() + "\n")
    started = time.perf_counter()
    extra: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
    theory_result = None
    theory_quick = quick or (iterations is not None and iterations < 1000)
    if "theory" in names:
        from byzrsa.experiments.paper import theory

        theory_result = theory.load_cached(out / "theory", quick=theory_quick)
        if theory_result is None:
            extra["theory"] = (theory.run_checks, (str(out / "theory"), theory_quick))
    failures, results = execute(the_plan.runs, out, jobs=jobs, quiet=quiet, extra=extra)
    theory_result = results.get("theory", theory_result)
    timing: dict[str, float] = {"run_seconds": time.perf_counter() - started}
    if theory_result is not None and "theory" in results:
        timing["theory_seconds"] = theory_result["seconds"]
    timing["total_seconds"] = time.perf_counter() - started
    path = report.write_report(out, the_plan, dataset=dataset, quick=quick, theory=theory_result, failures=failures,
                               data_dir=data_dir, timing=timing)
    timing["total_seconds"] = time.perf_counter() - started
    atomic_write_text(out / "timing.json", json.dumps(timing, indent=2) + "\n")
    return {"report": str(path), "failures": failures, "runs": len(the_plan.runs), **timing}
