"""Run directories: `runs/<recipe>/<timestamp>/` with `config.yaml`, `checkpoints/`,
`metrics.jsonl`, `tensorboard/`, `figures/`, `exports/`. Loading a run needs nothing but its
directory."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model

from omnimask.config import load_config_file
from omnimask.engine.checkpoint import list_checkpoints
from omnimask.model import MaskedModel
from omnimask.recipe import Recipe, RecipeConfig

logger = logging.getLogger(__name__)


class RunError(ValueError):
    """A run directory that cannot be used as asked."""


def new_run_dir(recipe: str, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / recipe / stamp
    suffix = 1
    while path.exists():  # two runs started in the same second
        path = root / recipe / f"{stamp}-{suffix}"
        suffix += 1
    return path


def read_run_config(run_dir: Path) -> tuple[Recipe, RecipeConfig]:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    return load_config_file(config_path)


@dataclass
class LoadedRun:
    run_dir: Path
    recipe: Recipe
    config: RecipeConfig
    model: MaskedModel
    step: int
    checkpoint: Path


def load_run(run_dir: str | Path, *, ema: bool = False, device: str = "cpu") -> LoadedRun:
    """Rebuild a run's model from its config and newest readable checkpoint's weights."""
    run_dir = Path(run_dir)
    recipe, config = read_run_config(run_dir)
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        raise RunError(f"{run_dir} has no finished checkpoint yet")
    model = recipe.build_model(config)
    name = "ema.safetensors" if ema else "model.safetensors"
    for step, checkpoint in checkpoints:
        weights = checkpoint / name
        if ema and not weights.exists():
            raise RunError(f"{checkpoint} has no EMA weights (train.ema_decay was 0)")
        try:
            load_model(model, str(weights), device=device)
        except Exception as error:  # a truncated or corrupt file: try the previous checkpoint
            logger.warning("%s is unreadable (%s); trying the previous checkpoint", weights, error)
            continue
        model.to(torch.device(device)).eval()
        return LoadedRun(run_dir, recipe, config, model, step, checkpoint)
    raise RunError(f"no checkpoint of {run_dir} is readable")
