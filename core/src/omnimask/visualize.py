"""`omnimask visualize`: a run's reconstructions as a PNG, drawn by the recipe's plugin, and its
training curves with the health monitors (`omnimask.monitors`) beside them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from omnimask.data import EngineDataset, engine_collate
from omnimask.engine.metrics import read_metrics
from omnimask.runs import load_run

#: The curves `draw_health` draws, in this order, when the run logged them.
HEALTH_CURVES = ("loss", "health/rankme", "health/embedding_std")


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
        return run.recipe.visualize(run.model, run.config, batch, path)


def draw_health(run_dir: Path, path: Path) -> Path | None:
    """The run's loss, RankMe, normalised-embedding std and code-usage curves against the step,
    one panel each, with the collapse warnings marked; None when nothing was logged."""
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        return None
    records = read_metrics(metrics_path)
    codes = sorted({k for r in records.values() for k in r if k.endswith("_code_perplexity")})
    keys = [k for k in (*HEALTH_CURVES, *codes) if any(k in r for r in records.values())]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = metrics_path.read_text().splitlines()
    collapses = [json.loads(line)["step"] for line in lines if '"event": "collapse"' in line]
    starts = {  # the figures before training, drawn at step 0
        k.removesuffix("_at_start"): v
        for r in records.values()
        for k, v in r.items()
        if k.endswith("_at_start")
    }
    records = {-1: starts, **records} if starts else records
    figure, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for axis, key in zip(axes[0], keys):
        points = [  # the figures before training are drawn at step 0
            (max(s, 0), r[key]) for s, r in sorted(records.items()) if isinstance(r.get(key), float)
        ]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=".")
        for step in collapses:
            axis.axvline(step, color="#d62728", linestyle="--", linewidth=1)
        axis.set_title(key.removeprefix("health/"))
        axis.set_xlabel("step")
    if collapses:
        figure.suptitle("dashed: collapse warning (see metrics.jsonl)", color="#d62728")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
