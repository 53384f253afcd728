"""FPS, kNN and Chamfer distance against trusted references: fpsample, open3d, scipy."""

import fpsample
import numpy as np
import open3d as o3d
import pytest
import torch
from scipy.spatial import cKDTree

from omnimask_pointcloud.geometry import chamfer_distance, farthest_point_sample, knn


def clouds(batch: int, count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, count, 3)).astype(np.float32)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("start", [0, 17])
def test_pointcloud_fps_matches_fpsample_in_order(backend: str, start: int) -> None:
    points = clouds(3, 1000)
    ours = farthest_point_sample(torch.from_numpy(points), 64, start=start, backend=backend).numpy()
    for row, cloud in zip(ours, points):
        np.testing.assert_array_equal(row, fpsample.fps_sampling(cloud, 64, start_idx=start))


def test_pointcloud_fps_torch_path_matches_open3d() -> None:
    """open3d returns the chosen points (in index order), not the sampling order."""
    points = clouds(2, 800, seed=1).astype(np.float64)
    ours = farthest_point_sample(torch.from_numpy(points), 50, start=5, backend="torch").numpy()
    for row, cloud in zip(ours, points):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud))
        chosen = np.asarray(pcd.farthest_point_down_sample(50, 5).points)
        lookup = {tuple(p): i for i, p in enumerate(cloud)}
        np.testing.assert_array_equal(np.sort(row), np.sort([lookup[tuple(p)] for p in chosen]))


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_pointcloud_knn_matches_kdtree(backend: str) -> None:
    points = clouds(2, 1500, seed=2)
    queries = clouds(2, 70, seed=3)
    ours = knn(torch.from_numpy(queries), torch.from_numpy(points), 16, chunk=32, backend=backend).numpy()
    for found, cloud, query in zip(ours, points, queries):
        np.testing.assert_array_equal(found, cKDTree(cloud).query(query, 16)[1])


def brute_chamfer(a: np.ndarray, b: np.ndarray, variant: str) -> float:
    distances = ((a[:, None].astype(np.float64) - b[None]) ** 2).sum(-1)
    forward, backward = distances.min(1), distances.min(0)
    if variant == "l2":
        return forward.mean() + backward.mean()
    return (np.sqrt(forward).mean() + np.sqrt(backward).mean()) / 2


@pytest.mark.parametrize("variant", ["l1", "l2"])
def test_pointcloud_chamfer_equals_brute_force(variant: str) -> None:
    a, b = clouds(3, 300, seed=4), clouds(3, 450, seed=5)
    ours = chamfer_distance(torch.from_numpy(a), torch.from_numpy(b), variant, chunk=64, reduce=False)
    expected = [brute_chamfer(x, y, variant) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)
    # scipy's KD-tree as a second, independent reference for the nearest distances
    tree_forward = cKDTree(b[0]).query(a[0])[0]
    tree_backward = cKDTree(a[0]).query(b[0])[0]
    if variant == "l2":
        np.testing.assert_allclose(float(ours[0]), (tree_forward**2).mean() + (tree_backward**2).mean(), rtol=1e-5)


def test_pointcloud_chamfer_gradient_matches_full_matrix() -> None:
    """The chunked, matched-pairs-only backward equals autograd through the full matrix."""
    a = torch.from_numpy(clouds(2, 200, seed=6)).requires_grad_(True)
    b = torch.from_numpy(clouds(2, 150, seed=7))
    chamfer_distance(a, b, "l2", chunk=16).backward()
    reference = a.detach().clone().requires_grad_(True)
    full = torch.cdist(reference, b).square()
    (full.min(2).values.mean(1) + full.min(1).values.mean(1)).mean().backward()
    torch.testing.assert_close(a.grad, reference.grad, atol=1e-5, rtol=1e-4)


def test_pointcloud_geometry_rejects_impossible_sizes() -> None:
    points = torch.zeros(1, 10, 3)
    with pytest.raises(ValueError, match="cannot draw 11"):
        farthest_point_sample(points, 11)
    with pytest.raises(ValueError, match="cannot take 11 neighbours"):
        knn(points, points, 11)
