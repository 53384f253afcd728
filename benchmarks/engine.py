"""Engine overhead and data-loader throughput, one JSON line per figure.

1. Per-step time of `omnimask.engine.Engine` against a bare hand-written PyTorch loop (the loop a
   user would write: DataLoader, forward, backward, AdamW step) on the same recipe, model and batch
   size. Steps are timed in windows of 10 (the engine's default logging interval): the bare loop
   with `perf_counter`, the engine from the throughput it logs for each window (which covers data
   loading, mask drawing, logging, everything). Rounds of both alternate and the medians of the
   window means are compared, so a busy machine slows both alike.
   Target: the engine at most 5% slower.
2. Samples/s of the recipe's data pipeline (through the engine's seeded, indexed dataset wrapper)
   against the training step rate: the loader must outrun the model.
3. `--only loader --recipe R1 R2 ...`: per recipe, at its preset's own batch size, the data
   pipeline's samples/s (0 and 2 workers) against the samples/s of its training steps (the
   engine's logged rate over `--steps` steps after 10 warm-up ones). Target: at least 2x.
4. Start-up, in fresh interpreters, as ratios to `python -c "import torch"`: `omnimask --help`,
   `plugins` and `recipes` (which import no torch), and `omnimask pretrain` until its first
   training step is logged.

    python benchmarks/engine.py [--recipe timeseries/mae] [--steps 30] [--rounds 3]
    python benchmarks/engine.py --only startup
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omnimask.config import apply_overrides
from omnimask.data import EngineDataset, engine_collate
from omnimask.engine import Engine
from omnimask.engine.metrics import read_metrics
from omnimask.engine.optim import build_optimizer
from omnimask.plugins import get_recipe
from torch.utils.data import DataLoader

WARMUP = 10
OMNIMASK = Path(sys.executable).parent / "omnimask"
WINDOW = 10  # the engine's default log_every: it logs the mean step time of each window


def emit(figure: str, value: float, **extra: object) -> None:
    print(json.dumps({"bench": "engine", "figure": figure, "value": value, **extra}), flush=True)


def bare_loop_step_times(recipe, config, steps: int) -> list[float]:  # noqa: ANN001
    """Per-step seconds of a plain PyTorch training loop over the same data and model."""
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
    times: list[float] = []
    while len(times) < steps + WARMUP:
        start = time.perf_counter()
        for batch in loader:
            loss = model(batch, generator)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            now = time.perf_counter()
            times.append(now - start)
            start = now
            if len(times) == steps + WARMUP:
                break
    timed = times[WARMUP:]
    return [sum(timed[i : i + WINDOW]) / WINDOW for i in range(0, len(timed), WINDOW)]


def engine_step_times(recipe, config, steps: int) -> list[float]:  # noqa: ANN001
    """Mean step seconds of each logged window of the engine, from the samples/s it logs."""
    overrides = [
        f"train.steps={steps + WARMUP}",
        "train.checkpoint_every=100000",
        "train.progress=false",
        f"train.log_every={WINDOW}",
    ]
    run_config = apply_overrides(config, overrides)
    with tempfile.TemporaryDirectory() as folder:
        Engine(recipe, run_config, Path(folder) / "run").run()
        metrics = read_metrics(Path(folder) / "run" / "metrics.jsonl")
    batch = config.train.batch_size
    windows = [batch / metrics[step]["samples_per_s"] for step in sorted(metrics)]
    return windows[WARMUP // WINDOW :]


def loader_samples_per_s(recipe, config, workers: int, batches: int) -> float:  # noqa: ANN001
    dataset = EngineDataset(recipe.build_dataset(config), seed=0)
    size = config.train.batch_size
    keys = [
        [(i % len(dataset), 0) for i in range(b * size, (b + 1) * size)] for b in range(batches)
    ]
    loader = DataLoader(
        dataset, batch_sampler=keys, collate_fn=engine_collate(recipe.collate), num_workers=workers
    )
    stream = iter(loader)
    next(stream)  # workers started and warm: a run's steady state, not its start-up
    start = time.perf_counter()
    for _ in stream:
        pass
    return (batches - 1) * size / (time.perf_counter() - start)


def wall_seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def seconds_to_first_step(recipe: str, preset: str) -> float:
    """Wall seconds from starting `omnimask pretrain` to its first line in `metrics.jsonl`."""
    with tempfile.TemporaryDirectory() as folder:
        metrics = Path(folder) / "run" / "metrics.jsonl"
        command = [OMNIMASK, "pretrain", recipe, "--preset", preset, "--run-dir", metrics.parent]
        command += ["train.steps=2", "train.log_every=1", "train.progress=false"]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (metrics.exists() and metrics.read_text().strip()):
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(map(str, command))} ended before its first step")
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        process.wait()
    return elapsed


def startup(recipe: str, preset: str, rounds: int) -> None:
    """Medians over `rounds` fresh interpreters; the demo data is generated before timing."""
    seconds_to_first_step(recipe, preset)  # makes the default data and warms the file cache
    torch_import = statistics.median(
        wall_seconds([sys.executable, "-c", "import torch"]) for _ in range(rounds)
    )
    info = {"rounds": rounds, "statistic": "median"}
    emit("import_torch_s", torch_import, **info)
    for command in (["--help"], ["plugins"], ["recipes"]):
        seconds = statistics.median(wall_seconds([OMNIMASK, *command]) for _ in range(rounds))
        name = command[0].lstrip("-")
        emit(f"cli_{name}_s", seconds, **info)
        emit(f"cli_{name}_over_import_torch", seconds / torch_import, target="< 1", **info)
    first = statistics.median(seconds_to_first_step(recipe, preset) for _ in range(rounds))
    emit("pretrain_first_step_s", first, recipe=recipe, preset=preset, **info)
    emit("pretrain_first_step_over_import_torch", first / torch_import, recipe=recipe, **info)


def loader_headroom(recipe_name: str, preset: str, steps: int) -> None:
    """The data pipeline's rate against the training step rate, at the preset's batch size."""
    recipe = get_recipe(recipe_name)
    config = apply_overrides(recipe.config(preset), ["train.warmup_steps=1"])
    batch = config.train.batch_size
    step_rate = batch / statistics.median(engine_step_times(recipe, config, steps))
    info = {"recipe": recipe_name, "preset": preset, "batch": batch}
    emit("train_samples_per_s", step_rate, **info)
    for workers in (0, 2):
        rate = loader_samples_per_s(recipe, config, workers, batches=40)
        emit("loader_samples_per_s", rate, workers=workers, **info)
        emit("loader_over_train_ratio", rate / step_rate, workers=workers, target=">= 2", **info)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", nargs="+", default=["timeseries/mae"])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per round (x10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--only", choices=("steps", "startup", "loader"), help="one part")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only == "loader":
        for name in args.recipe:
            loader_headroom(name, args.preset, args.steps)
        return
    args.recipe = args.recipe[0]
    if args.only != "steps":
        startup(args.recipe, args.preset, args.rounds)
    if args.only == "startup":
        return
    recipe = get_recipe(args.recipe)
    config = apply_overrides(
        recipe.config(args.preset),
        [f"train.batch_size={args.batch_size}", "train.warmup_steps=1"],
    )
    info = {
        "recipe": args.recipe,
        "batch": args.batch_size,
        "steps": args.steps * args.rounds,
        "threads": torch.get_num_threads(),
    }
    bare: list[float] = []
    engine: list[float] = []
    for _ in range(args.rounds):
        bare += bare_loop_step_times(recipe, config, args.steps)
        engine += engine_step_times(recipe, config, args.steps)
    bare_step, engine_step = statistics.median(bare), statistics.median(engine)
    emit("bare_loop_step_s", bare_step, statistic="median", **info)
    emit("engine_step_s", engine_step, statistic="median", **info)
    emit("engine_over_bare_ratio", engine_step / bare_step, target="<= 1.05", **info)
    step_rate = args.batch_size / engine_step
    emit("train_samples_per_s", step_rate, **info)
    for workers in (0, 2):
        rate = loader_samples_per_s(recipe, config, workers, batches=20)
        emit("loader_samples_per_s", rate, workers=workers, **info)
        emit("loader_over_train_ratio", rate / step_rate, workers=workers, target="> 1", **info)


if __name__ == "__main__":
    main()
