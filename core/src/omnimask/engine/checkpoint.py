"""Atomic, self-validating training checkpoints.

A checkpoint is a directory `checkpoints/step_00000100/` holding `model.safetensors` (and
`ema.safetensors`), `state.pt` (optimiser, scheduler, step, data position; loaded with
`weights_only=True`), `rng_rank<r>.pt` (every RNG of every process) and `config.yaml`. It is
written under a temporary name, every file fsynced, then renamed: a run killed mid-write leaves
either the previous checkpoint or the new one, never half of one. If the newest checkpoint is
unreadable anyway (a truncated copy, a full disk) or incomplete (a file missing, weights of another
shape), loading warns, falls back to the previous one and moves the bad ones into
`checkpoints/unreadable/` (kept for inspection, out of the way of pruning). When checkpoints exist
and none can be resumed from, loading stops with `CheckpointError` instead of starting over.

We write this instead of `Accelerator.save_state` because we need the atomic rename, the
fallback, safetensors for weights, and `weights_only` loading for everything else.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")
TEMP_PREFIX = ".tmp-"
UNREADABLE_DIR = "unreadable"
#: what `state.pt` must hold to continue the optimisation where it stopped.
STATE_KEYS = ("step", "optimizer", "scheduler")


class CheckpointError(RuntimeError):
    """Checkpoints exist and none of them can be resumed from."""


class RunWriteError(RuntimeError):
    """A file of the run (checkpoint, metrics) could not be written: full disk, no permission."""


def write_problem(error: OSError | None, path: Path) -> str:
    """One line for a failed write of `path`: the file, the system's reason and, when the disk
    is full, the space left; `error` is None on a process that saw another one fail."""
    if error is None:
        return f"cannot write {path}: another process failed to write its part (see its error)"
    where = error.filename or path
    text = f"cannot write {where}: {error.strerror or error}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        existing = next(p for p in (path, *path.parents) if p.exists())
        free = shutil.disk_usage(existing).free
        text += f" ({free / 2**20:.0f} MiB free there)"
    return text


class ResumeError(ValueError):
    """The run directory holds a run that this config cannot continue. Raised by the engine, and
    by a model's own `_load_from_state_dict` when it recognises weights it must not take (the
    text plugin's vocabulary guard): such a refusal is the answer, not a damaged checkpoint."""


@dataclass(frozen=True)
class Expected:
    """What a checkpoint must fit to continue this run exactly: the modules its weights are
    loaded into (the model, and the EMA copy when the run keeps one) and the number of processes
    that wrote it."""

    model: torch.nn.Module
    ema: torch.nn.Module | None = None
    num_processes: int = 1


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints under `directory`, newest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def fsync_path(path: Path) -> None:
    """Flush a file or directory entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng_state() -> dict[str, Any]:
    """Every RNG this process uses, in types `torch.load(weights_only=True)` accepts."""
    version, keys, gauss = random.getstate()
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(keys), gauss],
        "numpy": [
            numpy_state[0],
            torch.from_numpy(numpy_state[1].copy()),
            *[float(x) if isinstance(x, float) else int(x) for x in numpy_state[2:]],
        ],
        "torch": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys_array, *rest = state["numpy"]
    np.random.set_state((name, keys_array.numpy().astype(np.uint32), *rest))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def begin_checkpoint(directory: Path, step: int) -> Path:
    """Create (empty) the temporary directory a checkpoint is written into (main process)."""
    temp = directory / f"{TEMP_PREFIX}{checkpoint_name(step)}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir(parents=True)
    return temp


def write_rng(temp: Path, rank: int) -> None:
    """Each process writes its own RNG state into the temporary checkpoint directory."""
    path = temp / f"rng_rank{rank}.pt"
    torch.save(capture_rng_state(), path)
    fsync_path(path)


def finish_checkpoint(
    temp: Path,
    *,
    model: torch.nn.Module,
    ema: torch.nn.Module | None,
    state: dict[str, Any],
    config_yaml: str,
    keep_last: int,
) -> Path:
    """Write the main process's files, fsync, rename into place, prune old checkpoints."""
    save_model(model, str(temp / "model.safetensors"))
    if ema is not None:
        save_model(ema, str(temp / "ema.safetensors"))
    torch.save(state, temp / "state.pt")
    (temp / "config.yaml").write_text(config_yaml)
    for path in temp.iterdir():
        fsync_path(path)
    final = temp.parent / temp.name.removeprefix(TEMP_PREFIX)
    if final.exists():  # a re-run of the same step after a resume: replace it atomically
        stale = temp.parent / f"{TEMP_PREFIX}stale-{final.name}"
        shutil.rmtree(stale, ignore_errors=True)
        final.rename(stale)
        temp.rename(final)
        shutil.rmtree(stale)
    else:
        temp.rename(final)
    fsync_path(final.parent)
    for _, old in list_checkpoints(final.parent)[max(keep_last, 1) :]:
        shutil.rmtree(old)
    return final


@dataclass
class LoadedCheckpoint:
    """A checkpoint's state and this process's RNG state (its weights are in the modules it was
    validated against)."""

    path: Path
    state: dict[str, Any]
    rng: dict[str, Any] | None
    #: newer checkpoints that were skipped as unusable
    unusable: list[Path] = field(default_factory=list)


def read_checkpoint(path: Path, rank: int, expected: Expected) -> LoadedCheckpoint:
    """Read and validate every file of one checkpoint and load its weights into `expected`'s
    modules. Raises if a file is unreadable or the checkpoint could not continue this run
    exactly (optimiser or scheduler state or this process's RNG missing, no EMA weights for a
    run with an EMA, weights that do not fit the model); `ResumeError` if another number of
    processes wrote it or the model refuses its weights."""
    state = torch.load(path / "state.pt", weights_only=True)
    rng_path = path / f"rng_rank{rank}.pt"
    rng = torch.load(rng_path, weights_only=True) if rng_path.exists() else None
    check_complete(path, state, rng, expected)
    load_weights(expected.model, path / "model.safetensors")
    if expected.ema is not None:
        load_weights(expected.ema, path / "ema.safetensors")
    return LoadedCheckpoint(path, state, rng)


def check_complete(
    path: Path, state: dict[str, Any], rng: dict[str, Any] | None, expected: Expected
) -> None:
    """Raise naming what `path` lacks to continue the run exactly."""
    saved_processes = int(state.get("num_processes", 1))
    if saved_processes != expected.num_processes:
        raise ResumeError(
            f"{path} was written by {saved_processes} process(es) and {expected.num_processes} "
            f"are resuming it: the data order and random streams would not continue exactly; "
            f"resume with {saved_processes} process(es), or start a new run directory"
        )
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"state.pt has no {missing[0]!r}")
    if rng is None:
        raise ValueError(f"no rng_rank*.pt for this process in {path.name}: not an exact resume")
    if expected.ema is not None and not (path / "ema.safetensors").exists():
        raise ValueError("no ema.safetensors, and the run keeps an EMA")


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load `path` into `module` through safetensors (strict: every key, every shape; tied
    weights saved once are restored to both). A mismatch becomes one line naming the first
    problem; a `ResumeError` from the module's own loading hooks passes through."""
    try:
        load_model(module, str(path))
    except RuntimeError as error:
        # torch lists every mismatch, one per line, under a header line: keep the first
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
        raise ValueError(f"{path.name} does not fit the model ({first})") from None


def load_latest(directory: Path, rank: int, expected: Expected) -> LoadedCheckpoint | None:
    """The newest checkpoint that can be resumed from (its weights loaded into `expected`'s
    modules), warning about (and skipping) newer ones that cannot; None when there is no
    checkpoint. Raises `CheckpointError` when there are checkpoints and none can be used:
    starting over would silently discard the run."""
    unusable: list[Path] = []
    reasons: list[str] = []
    for _, path in list_checkpoints(directory):
        try:
            loaded = read_checkpoint(path, rank, expected)
        except ResumeError:
            raise
        except Exception as error:  # any decoding failure or gap means: not usable
            # the first line only: torch's unpickling errors run to a dozen lines
            reason = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
            logger.warning(
                "checkpoint %s is unreadable (%s); falling back to the previous one", path, reason
            )
            unusable.append(path)
            reasons.append(reason)
            continue
        loaded.unusable = unusable
        return loaded
    if unusable:
        raise CheckpointError(
            f"no checkpoint in {directory} is readable ({len(unusable)} found; the newest, "
            f"{unusable[0].name}: {reasons[0]}); nothing was changed: repair or move them "
            "away to start the run afresh"
        )
    return None


def set_aside(paths: list[Path]) -> list[Path]:
    """Move unusable checkpoints into `checkpoints/unreadable/` (main process, after a fallback):
    kept for inspection, but no longer counted by pruning or found by loading."""
    moved = []
    for path in paths:
        target = path.parent / UNREADABLE_DIR / path.name
        suffix = 1
        while target.exists():
            target = path.parent / UNREADABLE_DIR / f"{path.name}-{suffix}"
            suffix += 1
        target.parent.mkdir(exist_ok=True)
        path.rename(target)
        moved.append(target)
    return moved
