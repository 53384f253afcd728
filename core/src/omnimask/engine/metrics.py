"""Metrics to `metrics.jsonl` (append-only) and TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Appends one JSON object per line; readers take the last record of each step, so a run
    resumed from an older checkpoint never rewrites what was already written."""

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.file = self.path.open("a", buffering=1)
        self.tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)
        if resume_step:
            self.event("resume", step=resume_step)

    def event(self, name: str, **fields: Any) -> None:
        self.file.write(json.dumps({"event": name, **fields}) + "\n")

    def log(self, step: int, values: dict[str, float]) -> None:
        clean = {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        if self.tensorboard is not None:
            for key, value in values.items():
                if math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(path: Path) -> dict[int, dict[str, Any]]:
    """step -> the last metrics record written for it."""
    records: dict[int, dict[str, Any]] = {}
    with path.open() as file:
        for line in file:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            if "step" in record and "event" not in record:
                records[record["step"]] = record
    return records
