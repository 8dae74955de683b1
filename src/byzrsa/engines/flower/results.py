"""The results folder of a Flower run: the same files as ``byzrsa run`` writes, and an honest status.

``config.json`` (the resolved byzrsa config), ``flower.json`` (the engine's
settings and which node was which worker), ``metrics.csv`` (one row per
evaluation, flushed as it goes), ``summary.json`` (written once, at the end:
``completed``, ``failed`` or ``interrupted``), ``x0.pt`` (the final model) and,
if asked, ``trajectory.pt`` (x0 after every round, ``(rounds + 1, d)``).

The folder is claimed as ``byzrsa run --out`` claims its own
(:func:`byzrsa.folders.claim_folder`): the in-progress marker is
written first and removed after the summary, so a ServerApp killed with
SIGKILL leaves a folder that reads as ``killed``, never as running or
completed; a folder holding a run is refused unless the run config says
``overwrite = true``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from byzrsa.engines.flower.build import Job
from byzrsa.errors import ConfigError
from byzrsa.folders import atomic_write_text, claim_folder, release_folder

__all__ = ["Results", "METRIC_COLUMNS", "claim"]

METRIC_COLUMNS = ("iteration", "accuracy", "test_loss", "train_loss", "variance", "time")
FLOWER_FILES = ("flower.json", "x0.pt", "trajectory.pt")  # beside byzrsa run's own RUN_FILES


def claim(folder: Path, overwrite: bool) -> None:
    """Claim ``folder`` for this ServerApp (marker first) and clear an old run's files, or raise a one-line ConfigError.

    claim_folder words its refusals for ``byzrsa run``'s flags; a Flower
    run is configured by run-config keys, so the refusal names those.
    """
    try:
        stale = claim_folder(folder, overwrite=overwrite)
    except ConfigError as exc:
        text = str(exc).replace(f"--out {folder}", f"results-dir {folder}")
        raise ConfigError(text.replace("add --overwrite", "set overwrite=true in the run config")) from None
    stale += [folder / name for name in FLOWER_FILES if stale and (folder / name).exists()]
    for path in stale:
        path.unlink(missing_ok=True)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class Results:
    """Writes a run's folder as it goes (nothing at all when ``folder`` is empty)."""

    def __init__(self, folder: str, job: Job) -> None:
        self.folder = Path(folder) if folder else None
        self.job = job
        self.rows: list[dict[str, float]] = []
        self.trajectory: list[Tensor] = []
        self._handle = None
        self._writer: csv.DictWriter | None = None
        if self.folder is not None:
            claim(self.folder, job.settings.overwrite)
            try:
                atomic_write_text(self.folder / "config.json", job.config.to_json() + "\n")
                self._handle = open(self.folder / "metrics.csv", "w", newline="")
                self._writer = csv.DictWriter(self._handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
                self._writer.writeheader()
            except BaseException:
                release_folder(self.folder, None)  # no marker left behind by a run that never started
                raise

    def nodes(self, nodes: dict[int, int]) -> None:
        if self.folder is not None:
            data = {"engine": "flower", "settings": asdict(self.job.settings),
                    "nodes": {str(w): n for w, n in sorted(nodes.items())}}
            (self.folder / "flower.json").write_text(json.dumps(data, indent=2) + "\n")

    def row(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        if self._writer is not None:
            self._writer.writerow(row)
            self._handle.flush()

    def point(self, x: Tensor) -> None:
        if self.job.settings.save_trajectory:
            self.trajectory.append(x.detach().cpu().clone())

    def summary(self, status: str, **extra: Any) -> dict[str, Any]:
        """The summary: byzrsa run's fields (so ``run_state`` reads the folder) and the Flower engine's own."""
        final = self.rows[-1] if self.rows else {}
        c = self.job.config
        accuracies = [row["accuracy"] for row in self.rows if math.isfinite(row.get("accuracy", math.nan))]
        return {"status": status, "engine": "flower", "method": c.method, "attack": c.attack, "byzantine": c.byzantine,
                "iterations": int(final.get("iteration", 0)), "planned_iterations": c.iterations,
                "final_accuracy": final.get("accuracy"), "best_accuracy": max(accuracies, default=None),
                "final_train_loss": final.get("train_loss"),
                "rounds": int(final.get("iteration", 0)), "final": final, **extra}

    def finish(self, status: str, x: Tensor | None, **extra: Any) -> dict[str, Any]:
        """Close the metrics, save the model, then write summary.json and remove the marker (even if a save fails)."""
        data = self.summary(status, **extra)
        if self.folder is None:
            return data
        try:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            if x is not None:
                torch.save(x.detach().cpu(), self.folder / "x0.pt")
                if self.trajectory:
                    torch.save(torch.stack(self.trajectory), self.folder / "trajectory.pt")
        finally:
            release_folder(self.folder, _json_safe(data))
        return data
