"""Start-up and per-sample load costs that real-size corpora pay, old way vs cached, one JSON
line per figure (issue #18):

1. `tar_start`: building the vision plugin's `TarShardDataset` over `--shards` WebDataset shards
   of `--per-shard` generated JPEG samples (each with a `.cls` sidecar, as ImageNet shards
   have). `old`: every tar header read at every start (the dataset's code before the index, one
   `tarfile` pass per shard); `first`: the first start now (that
   pass, plus saving each shard's index); `second`: any later start or process (the saved
   indices read). Ratios are old / second and first / second (> 1: the second start faster).
   The shards were just written, so they sit in the page cache: on cold or network storage the
   header pass costs a seek per member and the gain is larger.
2. `mesh_load`: per-sample load of a mesh through the point-cloud plugin, for the embedded
   set's OFF relief and a finer binary PLY sphere: `uncached` parses and samples the file at
   every access (every access before), `cached` reads the decoded `.npy` (`load_points` after the
   first access). `getitem` figures time the whole `PointCloudDataset.__getitem__` (subset,
   normalisation, augmentation included). Ratios are uncached / cached.

    python benchmarks/tar_and_mesh_cache.py [--shards 32] [--per-shard 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def emit(figure: str, **record: object) -> None:
    print(json.dumps({"figure": figure, **record}), flush=True)


def median_time(function: Callable[[], object], repeats: int) -> float:
    """Median seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_shards(folder: Path, shards: int, per_shard: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for _ in range(16):  # a few distinct JPEGs of a few KiB, reused: their bytes are not read
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(buffer, "JPEG")
        images.append(buffer.getvalue())
    paths = []
    for number in range(shards):
        path = folder / f"shard-{number:05d}.tar"
        with tarfile.open(path, "w") as archive:
            for key in range(per_shard):
                for suffix, data in ((".jpg", images[key % 16]), (".cls", str(key % 10).encode())):
                    info = tarfile.TarInfo(f"{number:05d}{key:06d}{suffix}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def bench_tar(args: argparse.Namespace, scratch: Path) -> None:
    from omnimask.data import CACHE_FOLDER
    from omnimask_vision.data import IMAGE_SUFFIXES, TarShardDataset

    shards = write_shards(scratch, args.shards, args.per_shard)
    transform = lambda image: image  # noqa: E731 (only the index is timed)

    def old() -> list[tuple[Path, str, int, int]]:
        """`TarShardDataset.__init__` before the index (0e22213), at every start."""
        members = []
        for shard in shards:
            with tarfile.open(shard) as archive:
                for member in archive:
                    if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                        members.append((shard, member.name, member.offset_data, member.size))
        return members

    def first() -> TarShardDataset:
        shutil.rmtree(scratch / CACHE_FOLDER, ignore_errors=True)
        return TarShardDataset(shards, transform)

    old_s = median_time(old, args.repeats)
    first_s = median_time(first, args.repeats)
    second_s = median_time(lambda: TarShardDataset(shards, transform), args.repeats)
    samples = len(TarShardDataset(shards, transform))
    index_bytes = sum(p.stat().st_size for p in (scratch / CACHE_FOLDER).iterdir())
    emit(
        "tar_start",
        shards=args.shards,
        samples=samples,
        tar_members=2 * samples,
        old_s=round(old_s, 4),
        first_s=round(first_s, 4),
        second_s=round(second_s, 4),
        old_over_second=round(old_s / second_s, 1),
        first_over_second=round(first_s / second_s, 1),
        index_kib_per_shard=round(index_bytes / args.shards / 1024, 1),
    )


def write_meshes(folder: Path) -> dict[str, Path]:
    import open3d as o3d
    from omnimask_pointcloud.data import relief_mesh

    relief = folder / "relief.off"
    o3d.io.write_triangle_mesh(str(relief), relief_mesh("bumps", np.random.default_rng(0)))
    sphere = o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=160)
    fine = folder / "sphere.ply"
    o3d.io.write_triangle_mesh(str(fine), sphere, write_ascii=False)
    return {"relief_off": relief, "sphere_ply": fine}


def bench_mesh(args: argparse.Namespace, scratch: Path) -> None:
    import omnimask_pointcloud.data as data
    import open3d as o3d
    from omnimask_pointcloud.readers import MESH_SAMPLES, load_points, read_points

    for name, path in write_meshes(scratch).items():
        mesh = o3d.io.read_triangle_mesh(str(path))
        load_points(path)  # the first access decodes and caches
        uncached = median_time(lambda path=path: read_points(path, MESH_SAMPLES), args.repeats)
        cached = median_time(lambda path=path: load_points(path, MESH_SAMPLES), args.repeats * 20)
        dataset = data.PointCloudDataset([path], None, 1024, 32, augment=True)
        getitem_cached = median_time(lambda dataset=dataset: dataset[0], args.repeats * 20)
        original = data.load_points
        data.load_points = read_points  # every access decodes, as before
        try:
            getitem_uncached = median_time(lambda dataset=dataset: dataset[0], args.repeats)
        finally:
            data.load_points = original
        emit(
            "mesh_load",
            mesh=name,
            vertices=len(mesh.vertices),
            triangles=len(mesh.triangles),
            file_kib=round(path.stat().st_size / 1024),
            uncached_ms=round(uncached * 1e3, 3),
            cached_ms=round(cached * 1e3, 3),
            uncached_over_cached=round(uncached / cached, 1),
            getitem_uncached_ms=round(getitem_uncached * 1e3, 3),
            getitem_cached_ms=round(getitem_cached * 1e3, 3),
            getitem_uncached_over_cached=round(getitem_uncached / getitem_cached, 1),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=("tar", "mesh"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        if args.only in (None, "tar"):
            (scratch / "tar").mkdir()
            bench_tar(args, scratch / "tar")
        if args.only in (None, "mesh"):
            (scratch / "mesh").mkdir()
            bench_mesh(args, scratch / "mesh")


if __name__ == "__main__":
    main()
