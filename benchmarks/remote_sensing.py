"""CROMA side by side with torchgeo, and the GeoTIFF loader against the training step; one JSON
line per figure.

1. Forward throughput (chips/s) of our optical encoder (patchify + fused-attention ViT with
   2D-ALiBi + pooled FFN) against torchgeo's `CROMA(modalities=["optical"])` holding the same
   weights (exported with `export --format torchgeo`) on the same input; outputs are checked
   equal first. Target: ratio >= 1.0.
2. Chips/s of the GeoTIFF chip loader (windowed rasterio reads, nodata handling,
   standardisation; one process) against the demo model's training step rate (samples/s of
   forward + backward + AdamW). Ratio > 1: one loader process keeps up with training.

    python benchmarks/remote_sensing.py            # small sizes, CPU-friendly
    python benchmarks/remote_sensing.py --paper    # CROMA-B (768 x 12), 120 px chips
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from omnimask.engine.optim import build_optimizer
from omnimask.plugins import get_recipe
from omnimask_remote_sensing.export import torchgeo_croma, torchgeo_state
from torch.utils.data import default_collate


def emit(figure: str, value: float, **extra: object) -> None:
    print(
        json.dumps({"bench": "remote_sensing", "figure": figure, "value": value, **extra}),
        flush=True,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(
    fns: list[Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> list[float]:
    """Median wall time of each of `fns` after warm-up. Calls alternate between the functions,
    so a busy shared machine slows all of them alike; the median drops outliers."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            sync(device)
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def encoder_vs_torchgeo(args: argparse.Namespace, device: torch.device) -> None:
    recipe = get_recipe("remote_sensing/croma")
    config = recipe.config("paper" if args.paper else "demo")
    if not args.paper:
        config.model.dim, config.model.depth = args.dim, args.depth
    size = 120 if args.paper else args.chip_size
    config.chips.size = size
    torch.manual_seed(0)
    ours = recipe.build_model(config).eval().to(device)
    theirs = torchgeo_croma().CROMA(
        modalities=["optical"],
        encoder_dim=config.model.dim,
        encoder_depth=config.model.depth,
        num_heads=config.model.heads,
        patch_size=config.model.patch_size,
        image_size=size,
    )
    state = {k: v for k, v in torchgeo_state(ours.cpu(), config).items() if k.startswith("s2_")}
    missing = theirs.load_state_dict(state, strict=False).missing_keys
    assert missing == ["attn_bias"], missing
    ours.to(device)
    theirs = theirs.eval().to(device)
    batch = {"s2": torch.randn(args.batch_size, 12, size, size, device=device)}
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def run_ours() -> torch.Tensor:
        tokens = ours.tokenizer(batch)
        return ours.encoder.forward_features(tokens).optical_pooled

    def run_theirs() -> torch.Tensor:
        return theirs(x_optical=batch["s2"])["optical_GAP"]

    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
    ):
        a, b = run_ours().float(), run_theirs().float()
        tolerance = 5e-2 if dtype is not None else 1e-4
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)
        t_ours, t_theirs = seconds_per_call(
            [run_ours, run_theirs], device, args.repeats, args.warmup
        )
    shape = {
        "dim": config.model.dim,
        "depth": config.model.depth,
        "chip": size,
        "batch": args.batch_size,
        "device": str(device),
        "precision": "bf16" if dtype is not None else "fp32",
    }
    emit("optical_encoder_chips_per_s", args.batch_size / t_ours, impl="omnimask", **shape)
    emit("optical_encoder_chips_per_s", args.batch_size / t_theirs, impl="torchgeo", **shape)
    emit("optical_encoder_speedup_vs_torchgeo", t_theirs / t_ours, target=1.0, **shape)


def loader_vs_training(args: argparse.Namespace, device: torch.device) -> None:
    recipe = get_recipe("remote_sensing/croma")
    config = recipe.config("demo")
    dataset = recipe.build_dataset(config)  # the one-pass scan (and band stats) happens here
    count = min(len(dataset), args.loader_chips)
    start = time.perf_counter()
    samples = [dataset[i % len(dataset)] for i in range(count)]
    loader_rate = count / (time.perf_counter() - start)

    torch.manual_seed(0)
    model = recipe.build_model(config).train().to(device)
    optimizer = build_optimizer(model, config.train)
    batch = default_collate(samples[: config.train.batch_size])
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = model(batch, generator)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    [step_time] = seconds_per_call([step], device, args.repeats, args.warmup)
    train_rate = config.train.batch_size / step_time
    shape = {"chip": config.chips.size, "batch": config.train.batch_size, "device": str(device)}
    emit("geotiff_loader_chips_per_s", loader_rate, processes=1, **shape)
    emit("train_step_samples_per_s", train_rate, model="demo", **shape)
    emit("loader_over_train_ratio", loader_rate / train_rate, target=1.0, **shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="CROMA-B at 120 px")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--chip-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--loader-chips", type=int, default=120)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    encoder_vs_torchgeo(args, device)
    loader_vs_training(args, device)


if __name__ == "__main__":
    main()
