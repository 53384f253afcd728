"""Shard sets (`omnimask prepare --out`) against the raw data they were written from, one JSON
line per figure: seconds to write them, their size, and the data pipeline's samples/s read from
the raw files, from the shards in a folder, and from the shards as a bucket (`local:`, LitData's
stand-in for object storage: chunks fetched into a cache as from S3), with the same DataLoader
(2 workers, the preset's batch size). Ratios are shards / raw.

    python benchmarks/shards.py [--recipe vision/spark pointcloud/point_mae ...] [--batches 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from omnimask.plugins import get_recipe
from omnimask.shards import write_shard_set

sys.path.insert(0, str(Path(__file__).parent))
from engine import loader_samples_per_s  # noqa: E402

RECIPES = (
    "vision/spark",
    "video/videomae",
    "audio/w2v_bert",
    "pointcloud/point_mae",
    "medical/mambamim",
    "remote_sensing/croma",
    "text/mlm",
    "timeseries/mae",
)


def emit(recipe: str, figure: str, value: float, **extra: object) -> None:
    record = {"bench": "shards", "recipe": recipe, "figure": figure, "value": round(value, 3)}
    print(json.dumps({**record, **extra}), flush=True)


def measure(name: str, batches: int, workers: int) -> None:
    recipe = get_recipe(name)
    config = recipe.config("demo")
    raw = recipe.build_dataset(config)
    recipe.configure(config, raw)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "shards"
        start = time.perf_counter()
        report = write_shard_set(name, raw, out, source=None)
        emit(name, "write_seconds", time.perf_counter() - start, samples=report.samples)
        size = sum(f.stat().st_size for f in out.iterdir())
        emit(name, "shard_mib", size / 2**20, samples=report.samples)
        rates = {"raw": loader_samples_per_s(recipe, config, workers, batches)}
        config.data.path = str(out)
        rates["folder"] = loader_samples_per_s(recipe, config, workers, batches)
        config.data.path, config.data.shard_cache = f"local:{out}", str(Path(folder) / "cache")
        rates["bucket"] = loader_samples_per_s(recipe, config, workers, batches)
    for where, rate in rates.items():
        emit(name, "loader_samples_per_s", rate, read_from=where, workers=workers)
    for where in ("folder", "bucket"):
        emit(name, "shards_over_raw", rates[where] / rates["raw"], read_from=where)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", nargs="+", default=list(RECIPES))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    for name in args.recipe:
        measure(name, args.batches, args.workers)


if __name__ == "__main__":
    main()
