"""MambaMIM benchmark, one JSON line per figure:

1. `scan`: our chunked selective scan against the step-by-step recurrence (what `mamba_ssm`'s
   `selective_scan_ref` does) at sequence lengths 1k-16k, forward and forward + backward, at a
   narrow (32) and a wider (128) channel count, 16 states, batch 1. Target: >= 5x faster on CPU.
   `--threads 1` shows the per-step overhead saved alone; the default threads add the cores
   that the chunked scan's large steps use and the step-by-step loop's small ones cannot.
   Ours and the reference alternate; medians of `--repeats`. The reference backward is timed up
   to `--max-reference-backward` steps (it grows to tens of seconds beyond).
2. `pipeline`: volumes/s of the NIfTI pipeline (gzip decode, reorientation, resampling to the
   demo spacing, windowing, foreground crop, random crop) on the embedded phantoms, without the
   cache and with a warm cache (memory-mapped .npy).
3. `memory`: peak resident memory of one paper-size training step (96^3 crop, batch 1,
   forward + backward + AdamW), measured as the peak RSS of a fresh subprocess minus its RSS
   after building the model and batch (CUDA: the allocator's peak).

    python benchmarks/medical.py [--only scan pipeline memory] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch


def emit(figure: str, **record: object) -> None:
    print(json.dumps({"bench": "medical", "figure": figure, **record}), flush=True)


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def bench_scan(args: argparse.Namespace) -> None:
    from omnimask_medical.ssm.scan import chunked_selective_scan, selective_scan_reference

    for channels in (32, 128):
        for length in (1024, 2048, 4096, 8192, 16384):
            g = torch.Generator().manual_seed(0)
            inputs = [
                torch.randn(1, channels, length, generator=g),
                torch.randn(1, channels, length, generator=g),
                -torch.rand(channels, 16, generator=g) * 3,
                torch.randn(1, 16, length, generator=g),
                torch.randn(1, 16, length, generator=g),
            ]
            for backward in (False, True):
                if backward and length > args.max_reference_backward:
                    continue

                def run(scan, backward=backward, inputs=inputs) -> float:  # noqa: ANN001
                    """Seconds of one scan (and its backward); the leaves are made untimed."""
                    leaves = [x.clone().requires_grad_(backward) for x in inputs]
                    start = time.perf_counter()
                    y = scan(*leaves, delta_softplus=True)
                    if backward:
                        y.sum().backward()
                    return time.perf_counter() - start

                ours, reference = [], []
                for _ in range(args.repeats):
                    ours.append(run(chunked_selective_scan))
                    reference.append(run(selective_scan_reference))
                ours_s, ref_s = statistics.median(ours), statistics.median(reference)
                emit(
                    "selective_scan",
                    channels=channels,
                    states=16,
                    length=length,
                    mode="forward+backward" if backward else "forward",
                    ours_s=round(ours_s, 4),
                    step_by_step_s=round(ref_s, 4),
                    speedup=round(ref_s / ours_s, 2),
                    threads=torch.get_num_threads(),
                )


def bench_pipeline(args: argparse.Namespace) -> None:
    from omnimask_medical.config import mambamim_demo
    from omnimask_medical.data import CTVolumes
    from omnimask_medical.phantoms import default_dataset

    config = mambamim_demo()
    files = sorted((default_dataset() / "pretrain").rglob("*.nii.gz"))[: args.volumes]
    with tempfile.TemporaryDirectory() as cache:
        rates = {}
        for label, use_cache in (("no_cache", False), ("cold_cache", True), ("warm_cache", True)):
            ct = type(config.data.ct)(**{**vars(config.data.ct), "cache": use_cache})
            ct.cache_dir = cache
            dataset = CTVolumes(files, ct, config.data.crop)
            seconds = timed(lambda dataset=dataset: [dataset[i] for i in range(len(dataset))])
            rates[label] = len(files) / seconds
            emit("nifti_pipeline", mode=label, volumes_per_s=round(rates[label], 1))
        emit("cache_speedup", value=round(rates["warm_cache"] / rates["no_cache"], 1))


MEMORY_CHILD = """
import resource, sys, torch
from omnimask.engine.optim import build_optimizer
from omnimask.plugins import get_recipe
recipe = get_recipe("medical/mambamim")
config = recipe.config("paper")
model = recipe.build_model(config)
device = torch.device(sys.argv[1])
model.to(device)
optimizer = build_optimizer(model, config.train)
batch = {"volume": torch.rand(1, 1, 96, 96, 96, device=device),
         "sample_id": torch.tensor([0])}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
loss = model(batch, torch.Generator().manual_seed(0))["loss"]
loss.backward()
optimizer.step()
if device.type == "cuda":
    print(torch.cuda.max_memory_allocated() / 2**20, sum(p.numel() for p in model.parameters()))
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((peak - base) / 1024, sum(p.numel() for p in model.parameters()))
"""


def bench_memory(args: argparse.Namespace) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, device], check=True, capture_output=True, text=True
    ).stdout.split()
    emit(
        "paper_step_peak_memory",
        device=device,
        crop=96,
        batch=1,
        peak_mib=round(float(out[0]), 1),
        parameters=int(out[1]),
        measured="CUDA allocator peak" if device == "cuda" else "peak RSS growth during the step",
    )


SECTIONS = {"scan": bench_scan, "pipeline": bench_pipeline, "memory": bench_memory}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-reference-backward", type=int, default=16384)
    parser.add_argument("--volumes", type=int, default=16)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.only:
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
