"""Point-cloud benchmark, one JSON line per figure, omnimask side by side with its peers:

1. FPS + kNN grouping throughput (clouds/s) on batches of 1k- and 8k-point clouds: ours (the
   `auto` backend: compiled fpsample/cKDTree on CPU; and the pure PyTorch path, which is what
   runs on CUDA) against fpsample + scipy cKDTree and open3d (farthest_point_down_sample +
   KDTreeFlann). Ratios are ours / peer (> 1: ours faster).
2. Chamfer distance peak memory (forward + backward) at 16k x 16k points: chunked vs a full
   distance matrix, each measured in a fresh subprocess (peak RSS on CPU, CUDA allocator peak
   on GPU).
3. Step time of `pointcloud/point_mae` with the paper model (12 x 384, 64 x 32 patches);
   on CPU at a small batch (`--batch`, default 8), at 128 with `--paper` (use a GPU).

    python benchmarks/pointcloud.py [--paper] [--device cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

CASES = ((1024, 32, 64), (8192, 8, 512))  # (points per cloud, clouds per batch, centres)
NEIGHBOURS = 32


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def timed(function, repeats: int) -> float:  # noqa: ANN001
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def grouping_figures(device: str, repeats: int) -> None:
    import fpsample
    import open3d as o3d
    from omnimask_pointcloud.geometry import farthest_point_sample, gather_points, knn
    from scipy.spatial import cKDTree

    for count, batch, centres in CASES:
        clouds = np.random.default_rng(0).standard_normal((batch, count, 3)).astype(np.float32)
        tensor = torch.from_numpy(clouds)

        def ours(backend: str, on: torch.Tensor, centres: int = centres) -> None:
            index = farthest_point_sample(on, centres, backend=backend).to(on.device)
            knn(gather_points(on, index), on, NEIGHBOURS, backend=backend)
            if on.device.type == "cuda":
                torch.cuda.synchronize()

        def with_fpsample(clouds: np.ndarray = clouds, centres: int = centres) -> None:
            for cloud in clouds:
                index = fpsample.fps_sampling(cloud, centres, start_idx=0)
                cKDTree(cloud).query(cloud[index], NEIGHBOURS)

        def with_open3d(clouds: np.ndarray = clouds, centres: int = centres) -> None:
            for cloud in clouds:
                pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.astype(np.float64)))
                chosen = np.asarray(pcd.farthest_point_down_sample(centres, 0).points)
                tree = o3d.geometry.KDTreeFlann(pcd)
                for query in chosen:
                    tree.search_knn_vector_3d(query, NEIGHBOURS)

        times = {
            "omnimask_auto_cpu": timed(lambda t=tensor: ours("auto", t), repeats),
            "omnimask_torch_cpu": timed(lambda t=tensor: ours("torch", t), max(1, repeats // 3)),
            "fpsample+cKDTree": timed(with_fpsample, repeats),
            "open3d": timed(with_open3d, repeats),
        }
        if device == "cuda":
            on_gpu = tensor.cuda()
            times["omnimask_torch_cuda"] = timed(lambda t=on_gpu: ours("torch", t), repeats)
        for name, seconds in times.items():
            emit(
                figure="fps_knn_throughput", impl=name, points=count, batch=batch, centres=centres,
                k=NEIGHBOURS, clouds_per_s=round(batch / seconds, 2),
                ms_per_batch=round(1e3 * seconds, 2),
                ratio_vs_fpsample=round(times["fpsample+cKDTree"] / seconds, 3),
                ratio_vs_open3d=round(times["open3d"] / seconds, 3),
            )  # fmt: skip


CHAMFER_CHILD = """
import sys, torch
from omnimask_pointcloud.geometry import chamfer_distance
mode, count, device, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
a = torch.randn(1, count, 3, device=device, requires_grad=True)
b = torch.randn(1, count, 3, device=device)

def rss(field):
    line = next(l for l in open("/proc/self/status") if l.startswith(field))
    return int(line.split()[1]) * 1024

if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.max_memory_allocated()
else:
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
    base = rss("VmRSS")
if mode == "chunked":
    loss = chamfer_distance(a, b, "l2")
else:
    full = torch.cdist(a, b).square()
    loss = full.min(2).values.mean() + full.min(1).values.mean()
loss.backward()
peak = torch.cuda.max_memory_allocated() if device == "cuda" else rss("VmHWM")
print((peak - base) / 2**20, float(loss))
"""


def chamfer_figures(device: str, count: int, threads: int) -> None:
    results = {}
    for mode in ("chunked", "full_matrix"):
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHAMFER_CHILD, mode, str(count), device, str(threads)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        peak_mb, loss = map(float, out.stdout.split())
        results[mode] = (peak_mb, loss, time.perf_counter() - start)
    for mode, (peak_mb, loss, seconds) in results.items():
        emit(
            figure="chamfer_peak_memory", impl=mode, points=count, device=device,
            extra_peak_mb=round(peak_mb, 1), loss=round(loss, 6),
            wall_s_incl_startup=round(seconds, 2),
            memory_ratio_full_over_this=round(results["full_matrix"][0] / max(peak_mb, 1e-3), 1),
        )  # fmt: skip


def step_figures(device: str, batch_size: int, steps: int) -> None:
    from omnimask.engine.engine import step_generator
    from omnimask.engine.optim import build_optimizer
    from omnimask.plugins import get_recipe
    from omnimask.visualize import sample_batch

    recipe = get_recipe("pointcloud/point_mae")
    config = recipe.config("paper")
    config.train.batch_size = batch_size
    model = recipe.build_model(config).to(device).train()
    optimizer = build_optimizer(model, config.train)
    batch = sample_batch(recipe, config, recipe.build_dataset(config), batch_size)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step(index: int) -> None:
        with autocast:
            loss = model(batch, step_generator(0, index))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = timed(lambda: step(0), steps)
    emit(
        figure="point_mae_step_time", preset="paper", device=device, batch=batch_size,
        paper_batch=128, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        step_s=round(seconds, 3), samples_per_s=round(batch_size / seconds, 2),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        threads=torch.get_num_threads(),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--paper", action="store_true", help="point_mae step at batch 128")
    parser.add_argument("--batch", type=int, default=8, help="point_mae batch without --paper")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chamfer-points", type=int, default=16384)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        emit(figure="note", cuda_available=torch.cuda.is_available(),
             text="CUDA path (omnimask_torch_cuda) is timed only with --device cuda")  # fmt: skip
    grouping_figures(args.device, args.repeats)
    chamfer_figures(args.device, args.chamfer_points, args.threads)
    step_figures(args.device, 128 if args.paper else args.batch, args.steps)


if __name__ == "__main__":
    main()
