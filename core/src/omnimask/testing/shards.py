"""Plugin tests of shard sets (`omnimask prepare --out`): a run on a recipe's shards must be the
run on its files, step for step."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from omnimask.cli import main
from omnimask.engine.metrics import read_metrics


class ShardedAndRaw(NamedTuple):
    shards: Path  # the shard set written from the embedded data
    on_files: Path  # run directory of the run on the files
    on_shards: Path  # run directory of the same run on the shards


def logged_losses(run_dir: Path) -> list[float]:
    """The per-step losses a run logged (`metrics.jsonl`), in step order."""
    metrics = read_metrics(Path(run_dir) / "metrics.jsonl")
    return [metrics[step]["loss"] for step in sorted(metrics)]


def train_on_files_and_on_shards(recipe: str, folder: Path, *overrides: str) -> ShardedAndRaw:
    """Write the recipe's embedded data as shards in `folder`, then pretrain on the files and on
    the shards with the same `overrides` (both through the CLI, as a user runs them); the
    caller compares the runs (`logged_losses`)."""
    runs = ShardedAndRaw(folder / "shards", folder / "on_files", folder / "on_shards")
    assert main(["prepare", recipe, "--out", str(runs.shards), *overrides]) == 0
    assert main(["pretrain", recipe, "--run-dir", str(runs.on_files), *overrides]) == 0
    on_shards = ["--data", str(runs.shards), "--run-dir", str(runs.on_shards)]
    assert main(["pretrain", recipe, *on_shards, *overrides]) == 0
    return runs
