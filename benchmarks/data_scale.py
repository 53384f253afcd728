"""What the data path costs at real corpus sizes, one JSON line per figure.

1. The batch samplers (`omnimask.engine.sampler`) at 1M, 10M and 100M samples, the current
   implementation against the one before issue #18 (each epoch a materialised `torch.randperm`,
   read from git at `--old-rev`), side by side: seconds to build the sampler and take its first
   batch, mean milliseconds per batch over the next `--batches`, and peak extra resident memory
   (peak RSS over the RSS after imports and after the lengths exist). Each measurement runs in a
   fresh process, so one's memory does not hide another's; `ratio` is old / new.

2. Text corpora (`data_scale_text.py`): peak RSS of the streaming token cache for a 10 MB and a
   1 GB generated corpus, and its tokens/s against `datasets.Dataset.map`.
3. Tar shards and meshes (`tar_and_mesh_cache.py`): first against later starts over indexed
   shards, and mesh loads decoded every access against the decoded cache.

    python benchmarks/data_scale.py [--parts sampler text cache] [--sizes 1000000 100000000]

Linux only (reads /proc/self/status and resets the peak through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLER = "core/src/omnimask/engine/sampler.py"
OLD_REV = "0e22213"  # the last commit with the materialised permutations


def emit(figure: str, **fields: object) -> None:
    print(json.dumps({"bench": "data_scale", "figure": figure, **fields}), flush=True)


def status_bytes(field: str) -> int:
    """`VmRSS` or `VmHWM` (peak RSS) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def sampler_module(implementation: str, old_rev: str) -> types.ModuleType:
    if implementation == "new":
        return importlib.import_module("omnimask.engine.sampler")
    source = subprocess.run(
        ["git", "show", f"{old_rev}:{SAMPLER}"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    module = types.ModuleType("sampler_before_18")
    exec(compile(source, f"{old_rev}:{SAMPLER}", "exec"), module.__dict__)  # noqa: S102
    return module


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One sampler in this process: start + first batch, later batches, peak extra memory."""
    module = sampler_module(args.implementation, args.old_rev)
    placement = {"seed": 0, "start": 0, "stop": 1 + args.batches, "num_replicas": args.replicas}
    lengths = None
    if args.kind == "bucketed":  # what a corpus index stores: one small integer per sample
        lengths = np.random.default_rng(0).integers(1, 1000, args.samples, dtype=np.int32)
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    baseline = status_bytes("VmRSS")
    start = time.perf_counter()
    if lengths is None:
        sampler = module.ResumableBatchSampler(args.samples, args.batch_size, **placement)
    else:
        sampler = module.BucketedBatchSampler(
            lengths, args.batch_size, bucket_batches=args.bucket_batches, **placement
        )
    batches = iter(sampler)
    next(batches)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in batches:
        pass
    later = (time.perf_counter() - start) / args.batches
    return {
        "first_batch_s": first,
        "batch_ms": 1e3 * later,
        "peak_extra_mb": (status_bytes("VmHWM") - baseline) / 2**20,
    }


def run_child(args: argparse.Namespace, kind: str, samples: int, implementation: str) -> dict:
    command = [sys.executable, __file__, "--child", implementation, kind, str(samples)]
    for option in ("batch_size", "replicas", "bucket_batches", "batches", "old_rev"):
        command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**6, 10**7, 10**8])
    parser.add_argument("--kinds", nargs="+", default=["plain", "bucketed"])
    parser.add_argument("--batch-size", type=int, default=256, help="per process")
    parser.add_argument("--replicas", type=int, default=8, help="processes (this is rank 0)")
    parser.add_argument("--bucket-batches", type=int, default=64)
    parser.add_argument("--batches", type=int, default=100, help="timed after the first")
    parser.add_argument("--old-rev", default=OLD_REV)
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "KIND", "SAMPLES"))
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("sampler", "text", "cache"),
        default=["sampler", "text", "cache"],
    )
    args = parser.parse_args()
    if args.child:
        args.implementation, args.kind, args.samples = (
            args.child[0],
            args.child[1],
            int(args.child[2]),
        )
        print(json.dumps(measure(args)))
        return
    for part, script in (("text", "data_scale_text.py"), ("cache", "tar_and_mesh_cache.py")):
        if part in args.parts:  # their lines go straight to this run's output
            subprocess.run([sys.executable, str(Path(__file__).parent / script)], check=True)
    if "sampler" not in args.parts:
        return
    setting = {
        "batch_size": args.batch_size,
        "replicas": args.replicas,
        "bucket_batches": args.bucket_batches,
    }
    for kind in args.kinds:
        for samples in args.sizes:
            old = run_child(args, kind, samples, "old")
            new = run_child(args, kind, samples, "new")
            for figure, value in new.items():
                emit(
                    f"sampler_{figure}",
                    sampler=kind,
                    samples=samples,
                    old=round(old[figure], 4),
                    new=round(value, 4),
                    ratio=round(old[figure] / value, 2) if value > 0 else None,
                    **setting,
                )


if __name__ == "__main__":
    main()
