"""The results folder of a Flower run: the same files as ``byzrsa run`` writes, and an honest status.

``config.json`` (the resolved byzrsa config), ``flower.json`` (the engine's
settings and which node was which worker), ``metrics.csv`` (one row per
evaluation, flushed as it goes), ``summary.json`` (written as ``running`` at
the start and rewritten as ``completed``, ``failed`` or ``interrupted``),
``x0.pt`` (the final model) and, if asked, ``trajectory.pt`` (x0 after every
round, ``(rounds + 1, d)``).
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

__all__ = ["Results", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("iteration", "accuracy", "test_loss", "train_loss", "variance", "time")


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
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "config.json").write_text(job.config.to_json() + "\n")
            self._handle = open(self.folder / "metrics.csv", "w", newline="")
            self._writer = csv.DictWriter(self._handle, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            self._writer.writeheader()
            self.summary("running")

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
        final = self.rows[-1] if self.rows else {}
        data = {"status": status, "engine": "flower", "method": self.job.config.method,
                "attack": self.job.config.attack, "byzantine": self.job.config.byzantine,
                "rounds": int(final.get("iteration", 0)), "final": final, **extra}
        if self.folder is not None:
            (self.folder / "summary.json").write_text(json.dumps(_json_safe(data), indent=2) + "\n")
        return data

    def finish(self, status: str, x: Tensor | None, **extra: Any) -> dict[str, Any]:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self.folder is not None and x is not None:
            torch.save(x.detach().cpu(), self.folder / "x0.pt")
            if self.trajectory:
                torch.save(torch.stack(self.trajectory), self.folder / "trajectory.pt")
        return self.summary(status, **extra)
