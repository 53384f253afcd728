"""Metrics to `metrics.jsonl` (append-only) and TensorBoard."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def drop_records_from(path: Path, step: int) -> None:
    """Rewrite `path` without the records (and events) of steps >= `step`, and without a line
    cut short by a kill. A run resumed from its checkpoint at
    `step` computes those steps again, identically, so their first copies, written by the run
    that was killed past the checkpoint, would only appear twice. Written to a temporary file
    and renamed: a kill during the rewrite leaves the old file."""
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("step", -1) >= step:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        temp = path.with_name(f".{path.name}.tmp")
        with temp.open("w") as file:
            file.writelines(kept)
            file.flush()
            os.fsync(file.fileno())
        temp.replace(path)


class MetricsWriter:
    """Appends one JSON object per line. On resume from step `resume_step`, the records of that
    step and later, left by the run that was killed, are dropped first (`drop_records_from`),
    so every step appears once."""

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_step and self.path.exists():
            drop_records_from(self.path, resume_step)
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
