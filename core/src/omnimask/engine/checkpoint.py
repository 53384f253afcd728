"""Atomic, self-validating training checkpoints.

A checkpoint is a directory `checkpoints/step_00000100/` holding `model.safetensors` (and
`ema.safetensors`), `state.pt` (optimiser, scheduler, step, data position; loaded with
`weights_only=True`), `rng_rank<r>.pt` (every RNG of every process) and `config.yaml`. It is
written under a temporary name, every file fsynced, then renamed: a run killed mid-write leaves
either the previous checkpoint or the new one, never half of one. If the newest checkpoint is
unreadable anyway (a truncated copy, a full disk), loading warns and falls back to the previous.

We write this instead of `Accelerator.save_state` because we need the atomic rename, the
fallback, safetensors for weights, and `weights_only` loading for everything else.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_model

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})$")
TEMP_PREFIX = ".tmp-"


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
    path: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]
    rng: dict[str, Any] | None


def read_checkpoint(path: Path, rank: int = 0) -> LoadedCheckpoint:
    """Read and validate every file of one checkpoint (raises if any is unreadable)."""
    model = load_file(str(path / "model.safetensors"))
    ema_path = path / "ema.safetensors"
    ema = load_file(str(ema_path)) if ema_path.exists() else None
    state = torch.load(path / "state.pt", weights_only=True)
    rng_path = path / f"rng_rank{rank}.pt"
    rng = torch.load(rng_path, weights_only=True) if rng_path.exists() else None
    return LoadedCheckpoint(path, model, ema, state, rng)


def load_latest(directory: Path, rank: int = 0) -> LoadedCheckpoint | None:
    """The newest readable checkpoint, warning about (and skipping) unreadable newer ones."""
    for _, path in list_checkpoints(directory):
        try:
            return read_checkpoint(path, rank)
        except Exception as error:  # any decoding failure means: not usable
            logger.warning(
                "checkpoint %s is unreadable (%s: %s); falling back to the previous one",
                path,
                type(error).__name__,
                error,
            )
    return None
