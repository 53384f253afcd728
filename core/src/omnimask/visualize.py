"""`omnimask visualize`: a run's reconstructions as a PNG, drawn by the recipe's plugin."""

from __future__ import annotations

from pathlib import Path

import torch

from omnimask.data import EngineDataset, engine_collate
from omnimask.runs import load_run


class FigureError(ValueError):
    """A figure that cannot be drawn as asked."""


def sample_batch(recipe, config, dataset, count: int, seed: int = 0) -> dict:  # noqa: ANN001
    """The first `count` samples as an engine batch (with `sample_id`), augmentation seeded."""
    wrapped = EngineDataset(dataset, seed, "skip")
    count = min(count, len(wrapped))
    batch, _ = engine_collate(recipe.collate)([wrapped[(i, 0)] for i in range(count)])
    if batch is None:
        raise FigureError("none of the first samples could be read")
    return batch


def visualize_run(run_dir: Path, out: Path | None = None, count: int = 4, seed: int = 0) -> Path:
    run = load_run(run_dir)
    batch = sample_batch(run.recipe, run.config, run.recipe.build_dataset(run.config), count, seed)
    path = out or run.run_dir / "figures" / f"reconstruction_step{run.step:08d}.png"
    if path.suffix.lower() != ".png":
        raise FigureError(f"figures are written as PNG; {path} does not end in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        return run.recipe.visualize(run.model, batch, path)
