"""`omnimask bench`: step time, throughput, peak memory and achieved FLOP/s of a recipe.

FLOPs come from `torch.utils.flop_counter` on one training step; they are reported as a fraction
of a matmul peak measured in the same process, so the figure means the same on any machine.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from omnimask.engine.engine import step_generator
from omnimask.engine.optim import build_optimizer
from omnimask.recipe import Recipe, RecipeConfig
from omnimask.visualize import sample_batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: torch.device, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a square matmul in the dtype training uses (bf16 on CUDA, fp32 on CPU)."""
    size = size or (8192 if device.type == "cuda" else 1024)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench_recipe(
    recipe: Recipe,
    config: RecipeConfig,
    *,
    steps: int = 10,
    warmup: int = 3,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Time `steps` optimizer steps on one fixed batch; returns one record per figure."""
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = recipe.build_model(config).to(target).train()
    optimizer = build_optimizer(model, config.train)
    batch = sample_batch(recipe, config, recipe.build_dataset(config), config.train.batch_size)
    batch = {k: v.to(target) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    autocast = torch.autocast(target.type, dtype=torch.bfloat16, enabled=target.type == "cuda")

    def one_step(step: int) -> dict[str, torch.Tensor]:
        with autocast:
            losses = model(batch, step_generator(config.train.seed, step))
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return losses

    for step in range(warmup):
        one_step(step)
    with FlopCounterMode(display=False) as counter:
        losses = one_step(warmup)
    flops_per_step = counter.get_total_flops()
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    synchronize(target)
    start = time.perf_counter()
    for step in range(steps):
        losses = one_step(warmup + 1 + step)
    synchronize(target)
    step_time = (time.perf_counter() - start) / steps
    samples = len(batch["sample_id"])
    tokens = float(losses["num_tokens"])
    peak = matmul_peak_flops(target)
    base = {"bench": "omnimask", "recipe": recipe.name, "device": str(target), "batch": samples}
    figures = {
        "step_time_s": step_time,
        "samples_per_s": samples / step_time,
        "tokens_per_s": tokens / step_time,
        "peak_memory_mb": peak_memory_mb(target),
        "flops_per_step": float(flops_per_step),
        "achieved_flops_per_s": flops_per_step / step_time,
        "matmul_peak_flops_per_s": peak,
        "fraction_of_matmul_peak": flops_per_step / step_time / peak,
    }
    return [{**base, "metric": name, "value": value} for name, value in figures.items()]
