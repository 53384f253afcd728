"""Engine overhead and data-loader throughput, one JSON line per figure.

1. Per-step time of `omnimask.engine.Engine` against a bare hand-written PyTorch loop (the loop a
   user would write: DataLoader, forward, backward, AdamW step) on the same recipe, model and batch
   size. The engine's per-step time is measured by differencing two runs of different lengths, so
   start-up (imports, model build, run-directory creation) cancels out. Target: at most 5% slower.
2. Samples/s of the recipe's data pipeline (through the engine's seeded, indexed dataset wrapper)
   against the training step rate: the loader must outrun the model.

    python benchmarks/engine.py [--recipe timeseries/mae] [--steps 60] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from omnimask.config import apply_overrides
from omnimask.data import EngineDataset, engine_collate
from omnimask.engine import Engine
from omnimask.engine.optim import build_optimizer
from omnimask.plugins import get_recipe
from torch.utils.data import DataLoader


def emit(figure: str, value: float, **extra: object) -> None:
    print(json.dumps({"bench": "engine", "figure": figure, "value": value, **extra}), flush=True)


def bare_loop_step_time(recipe, config, steps: int) -> float:  # noqa: ANN001
    """Seconds per step of a plain PyTorch training loop over the same data and model."""
    torch.manual_seed(0)
    model = recipe.build_model(config).train()
    optimizer = build_optimizer(model, config.train)
    loader = DataLoader(
        recipe.build_dataset(config),
        batch_size=config.train.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=recipe.collate,
    )
    generator = torch.Generator().manual_seed(0)
    done, start = 0, None
    while done < steps + 5:
        for batch in loader:
            if done == 5:  # warm-up steps excluded, as for the engine
                start = time.perf_counter()
            loss = model(batch, generator)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps + 5:
                break
    return (time.perf_counter() - start) / steps


def engine_step_time(recipe, config, steps: int) -> float:  # noqa: ANN001
    """Seconds per step of the engine, from two runs of 5 and 5 + `steps` steps."""

    def run(total: int) -> float:
        run_config = apply_overrides(
            config,
            [f"train.steps={total}", "train.checkpoint_every=100000", "train.progress=false"],
        )
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            Engine(recipe, run_config, Path(folder) / "run").run()
            return time.perf_counter() - start

    short, long = run(5), run(5 + steps)
    return (long - short) / steps


def loader_samples_per_s(recipe, config, workers: int, batches: int) -> float:  # noqa: ANN001
    dataset = EngineDataset(recipe.build_dataset(config), seed=0)
    size = config.train.batch_size
    keys = [
        [(i % len(dataset), 0) for i in range(b * size, (b + 1) * size)] for b in range(batches)
    ]
    loader = DataLoader(
        dataset, batch_sampler=keys, collate_fn=engine_collate(recipe.collate), num_workers=workers
    )
    start = time.perf_counter()
    for _ in loader:
        pass
    return batches * size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default="timeseries/mae")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    recipe = get_recipe(args.recipe)
    config = apply_overrides(
        recipe.config(args.preset),
        [f"train.batch_size={args.batch_size}", "train.warmup_steps=1"],
    )
    info = {"recipe": args.recipe, "batch": args.batch_size, "steps": args.steps}
    bare = bare_loop_step_time(recipe, config, args.steps)
    engine = engine_step_time(recipe, config, args.steps)
    emit("bare_loop_step_s", bare, **info)
    emit("engine_step_s", engine, **info)
    emit("engine_over_bare_ratio", engine / bare, target="<= 1.05", **info)
    step_rate = args.batch_size / engine
    emit("train_samples_per_s", step_rate, **info)
    for workers in (0, 2):
        rate = loader_samples_per_s(recipe, config, workers, batches=20)
        emit("loader_samples_per_s", rate, workers=workers, **info)
        emit("loader_over_train_ratio", rate / step_rate, workers=workers, target="> 1", **info)


if __name__ == "__main__":
    main()
