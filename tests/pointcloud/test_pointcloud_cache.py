"""The decoded cache: each mesh or point file is parsed (and a mesh sampled) once, not at every
access; a changed file is decoded again; augmentation and subsets stay per access."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import torch
from omnimask.data import EngineDataset
from omnimask_pointcloud import readers
from omnimask_pointcloud.data import PointCloudDataset, pretraining_files

NUM_POINTS, GROUP = 64, 8


def write_mesh(path: Path, width: float = 2.0) -> Path:
    box = o3d.geometry.TriangleMesh.create_box(width, 1.0, 1.0)
    box.compute_triangle_normals()
    assert o3d.io.write_triangle_mesh(str(path), box)
    return path


def write_point_ply(path: Path, seed: int = 0) -> Path:
    points = np.random.default_rng(seed).uniform(-1, 1, (300, 3))
    assert o3d.io.write_point_cloud(
        str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    )
    return path


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Every mesh and open3d point-file parse from now on, by file name."""
    calls: dict[str, list[str]] = {"mesh": [], "points": []}
    read_mesh, read_cloud = readers._read_mesh, readers._read_open3d_points

    def counting_mesh(path: Path):  # noqa: ANN202
        calls["mesh"].append(path.name)
        return read_mesh(path)

    def counting_cloud(path: Path) -> np.ndarray:
        calls["points"].append(path.name)
        return read_cloud(path)

    monkeypatch.setattr(readers, "_read_mesh", counting_mesh)
    monkeypatch.setattr(readers, "_read_open3d_points", counting_cloud)
    monkeypatch.setattr(readers, "_UNWRITABLE", set(), raising=False)
    return calls


def dataset(files: list[Path], augment: bool = True) -> PointCloudDataset:
    return PointCloudDataset(files, None, NUM_POINTS, GROUP, augment=augment)


@pytest.mark.parametrize("suffix", [".ply", ".off", ".obj", ".stl"])
def test_a_mesh_is_parsed_once_then_read_from_the_cache(
    tmp_path: Path, parses: dict[str, list[str]], suffix: str
) -> None:
    mesh = write_mesh(tmp_path / f"box{suffix}")
    data = dataset([mesh])
    np.random.seed(0)
    first = data[0]["points"]
    np.random.seed(0)
    second = data[0]["points"]
    assert parses["mesh"] == [mesh.name]  # the second access parsed nothing
    assert np.array_equal(first, second)  # and a cache hit is what a fresh decode was
    np.random.seed(1)
    assert not np.array_equal(data[0]["points"], first)  # subset and augmentation per access
    (entry,) = (tmp_path / ".omnimask-cache").iterdir()
    assert entry.name.startswith(f"box{suffix}-") and np.load(entry).shape == (
        readers.MESH_SAMPLES,
        3,
    )


def test_point_files_are_decoded_once(tmp_path: Path, parses: dict[str, list[str]]) -> None:
    cloud = write_point_ply(tmp_path / "cloud.ply")
    data = dataset([cloud], augment=False)
    first, second = data[0]["points"], data[0]["points"]
    assert parses["points"] == ["cloud.ply"] and np.array_equal(first, second)


def test_a_touched_or_edited_file_is_decoded_again(
    tmp_path: Path, parses: dict[str, list[str]]
) -> None:
    mesh = write_mesh(tmp_path / "box.ply")
    data = dataset([mesh], augment=False)
    before = data[0]["points"]
    stat = mesh.stat()
    os.utime(mesh, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert np.array_equal(data[0]["points"], before)  # same bytes: the same surface sample
    assert parses["mesh"] == ["box.ply", "box.ply"]
    write_mesh(mesh, width=5.0)
    after = data[0]["points"]
    assert parses["mesh"] == ["box.ply"] * 3
    raw = readers.load_points(mesh)
    assert np.ptp(raw[:, 0]) > 4.9 and parses["mesh"] == ["box.ply"] * 3  # the new box, cached
    assert not np.array_equal(after, before)


def test_a_mesh_samples_the_same_points_wherever_it_is_read(tmp_path: Path) -> None:
    """The sampling is seeded by the file's bytes: a copy elsewhere, a fresh process or a
    cleared cache give the same points, so runs stay reproducible whatever is cached."""
    mesh = write_mesh(tmp_path / "box.off")
    (tmp_path / "copy").mkdir()
    copy = Path(shutil.copy(mesh, tmp_path / "copy" / "other.off"))
    np.random.seed(0)
    first = readers.read_points(mesh, 256)
    np.random.seed(1)  # the global RNG plays no part
    assert np.array_equal(readers.read_points(copy, 256), first)
    assert np.array_equal(readers.load_points(copy, 256), first)


def test_damaged_cache_entry_is_decoded_again(
    tmp_path: Path, parses: dict[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    mesh = write_mesh(tmp_path / "box.stl")
    expected = readers.load_points(mesh)
    (entry,) = (tmp_path / ".omnimask-cache").iterdir()
    entry.write_bytes(entry.read_bytes()[:100])  # cut short
    with caplog.at_level("WARNING", logger="omnimask"):
        assert np.array_equal(readers.load_points(mesh), expected)
    assert "its cache entry" in caplog.text and "unreadable" in caplog.text
    assert parses["mesh"] == ["box.stl", "box.stl"]
    assert np.array_equal(readers.load_points(mesh), expected) and len(parses["mesh"]) == 2


def test_an_unwritable_folder_is_reported_once_and_still_reads(
    tmp_path: Path,
    parses: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def read_only(path: Path, data: bytes) -> None:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(readers, "write_atomically", read_only)
    files = [write_mesh(tmp_path / "a.off"), write_mesh(tmp_path / "b.off", width=3.0)]
    data = dataset(files)
    with caplog.at_level("WARNING", logger="omnimask"):
        shapes = [tuple(data[i % 2]["points"].shape) for i in range(4)]
    assert shapes == [(NUM_POINTS, 3)] * 4
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "Read-only file system" in warnings[0]
    assert "decoded again at every access" in warnings[0]


def test_cache_entries_are_never_listed_as_samples(tmp_path: Path) -> None:
    (tmp_path / "chair").mkdir()
    cloud = write_point_ply(tmp_path / "chair" / "cloud.ply")
    readers.load_points(cloud)
    assert list((tmp_path / "chair" / ".omnimask-cache").glob("*.npy"))
    assert pretraining_files(str(tmp_path)) == [cloud]


def test_a_resumed_run_reading_the_cache_sees_the_samples_the_first_run_decoded(
    tmp_path: Path, parses: dict[str, list[str]]
) -> None:
    """Exact resume across the cache: under the engine's per-sample seeds, a run that decodes
    every file (cold cache) and one that starts later and reads every file from the cache
    load the same points for every (index, epoch)."""
    files = [write_mesh(tmp_path / f"m{i}.off", width=1.0 + i) for i in range(3)]
    files.append(write_point_ply(tmp_path / "cloud.ply"))
    keys = [(index, epoch) for epoch in range(2) for index in range(4)]
    first = EngineDataset(dataset(files), seed=7)
    cold = [first[key].sample["points"] for key in keys]
    assert len(parses["mesh"]) == 3 and len(parses["points"]) == 1
    resumed = EngineDataset(dataset(files), seed=7)
    warm = [resumed[key].sample["points"] for key in keys]
    assert len(parses["mesh"]) == 3 and len(parses["points"]) == 1  # all from the cache
    for a, b in zip(cold, warm, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(cold[0], cold[4])  # epochs draw different subsets
