"""Metrics to `metrics.jsonl` (append-only) and TensorBoard."""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The module of the thread that writes TensorBoard's event files.
TENSORBOARD_WRITER_MODULE = "tensorboard.summary.writer.event_file_writer"


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
    """Appends one JSON object per line, and the same scalars to TensorBoard. On resume from step
    `resume_step`, the records of that step and later, left by the run that was killed, are
    dropped first (`drop_records_from`), so every step appears once.

    A write that fails raises `OSError` naming the file or folder that could not be written
    (`metrics.jsonl` or `tensorboard/`), at the log step where it happened: TensorBoard's writer
    is flushed at every log, because it writes from a thread of its own and would otherwise
    report a full disk only at some later call, or never."""

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.tensorboard_dir = run_dir / "tensorboard"
        if resume_step and self.path.exists():
            drop_records_from(self.path, resume_step)
        self.file = self.path.open("a", buffering=1)
        self.tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with _naming(self.tensorboard_dir):
                _quiet_tensorboard_threads()
                self.tensorboard = SummaryWriter(str(self.tensorboard_dir), purge_step=resume_step)
        if resume_step:
            self.event("resume", step=resume_step)

    def event(self, name: str, **fields: Any) -> None:
        self.file.write(json.dumps({"event": name, **fields}) + "\n")

    def log(self, step: int, values: dict[str, float]) -> None:
        clean = {k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}
        self.file.write(json.dumps({"step": step, **clean}) + "\n")
        if self.tensorboard is not None:
            with _naming(self.tensorboard_dir):
                for key, value in values.items():
                    if math.isfinite(value):
                        self.tensorboard.add_scalar(key, value, step)
                self.tensorboard.flush()

    def close(self) -> None:
        """Close both files; the first failure is raised after both were tried."""
        failure: OSError | None = None
        try:
            self.file.close()
        except OSError as error:
            failure = error
        if self.tensorboard is not None:
            try:
                with _naming(self.tensorboard_dir):
                    self.tensorboard.flush()  # raises what the writer's thread met
                    self.tensorboard.close()
            except OSError as error:
                failure = failure or error
        if failure is not None:
            raise failure


@contextmanager
def _naming(folder: Path) -> Iterator[None]:
    """Re-raise an `OSError` without a file name (a failed `write`) as one naming `folder`, so
    that the user's one line says which of the run's files could not be written."""
    try:
        yield
    except OSError as error:
        if error.filename:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(folder)) from error


def _quiet_tensorboard_threads() -> None:
    """Keep a failed TensorBoard write from printing a thread traceback to stderr.

    TensorBoard's event writer stores its thread's exception and raises it again at the next
    write or flush in the caller's thread, where `MetricsWriter` turns it into one line; the
    traceback that `threading` prints as the thread dies would only bury that line. Other
    threads' exceptions still go to the previous hook."""
    previous = threading.excepthook
    if getattr(previous, "omnimask_quiet_tensorboard", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__module__ != TENSORBOARD_WRITER_MODULE:
            previous(args)

    hook.omnimask_quiet_tensorboard = True  # type: ignore[attr-defined]
    threading.excepthook = hook


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
