"""FPS, kNN and Chamfer distance against trusted references: a NumPy brute force (same formula,
same tie rule), fpsample, open3d and scipy; both backends, ties included."""

import fpsample
import numpy as np
import open3d as o3d
import pytest
import torch
from omnimask_pointcloud.geometry import chamfer_distance, farthest_point_sample, group_points, knn
from scipy.spatial import cKDTree

BACKENDS = ["auto", "torch"]


def clouds(batch: int, count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, count, 3)).astype(np.float32)


def grid_clouds(batch: int, side: int, seed: int = 0) -> np.ndarray:
    """Shuffled integer grids with repeated points: FPS and kNN meet ties at every step."""
    axis = np.arange(side, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    grid = np.concatenate([grid, grid[: len(grid) // 4]])  # a quarter of the points twice
    rng = np.random.default_rng(seed)
    return np.stack([grid[rng.permutation(len(grid))] for _ in range(batch)])


def squared(queries: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """`[Q, N]` squared distances as (dx*dx + dy*dy) + dz*dz in the inputs' precision."""
    diff = queries[:, None, :] - cloud[None]
    return diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1] + diff[..., 2] * diff[..., 2]


def reference_fps(cloud: np.ndarray, samples: int, start: int) -> np.ndarray:
    """Vanilla FPS, lowest index winning a tie (np.argmax returns the first maximum)."""
    nearest = np.full(len(cloud), np.inf, cloud.dtype)
    picked = [start]
    for _ in range(samples - 1):
        nearest = np.minimum(nearest, squared(cloud[picked[-1]][None], cloud)[0])
        picked.append(int(nearest.argmax()))
    return np.array(picked)


def reference_knn(queries: np.ndarray, cloud: np.ndarray, k: int) -> np.ndarray:
    """The k smallest (squared distance, index): a stable sort of the brute-force distances."""
    return np.argsort(squared(queries, cloud), axis=1, kind="stable")[:, :k]


def assert_neighbours(
    found: np.ndarray, queries: np.ndarray, cloud: np.ndarray, exact: bool
) -> None:
    """`found` `[Q, k]` against the brute force. `exact`: equal to the stable sort. Otherwise
    ties may go either way: the distances must match the reference's in order, each index must
    be a distinct point at its listed distance, and every point strictly nearer than the k-th
    distance must be among them."""
    reference = reference_knn(queries, cloud, found.shape[1])
    if exact:
        np.testing.assert_array_equal(found, reference)
        return
    distances = squared(queries, cloud)
    rows = np.arange(len(queries))[:, None]
    np.testing.assert_array_equal(distances[rows, found], distances[rows, reference])
    for row, ours, theirs in zip(distances, found, reference):
        assert len(set(ours)) == len(ours)
        kth = row[theirs[-1]]
        assert set(np.flatnonzero(row < kth)) <= set(ours)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("name", "points", "samples", "start"),
    [
        ("1k", clouds(3, 1000), 64, 17),
        ("8k", clouds(8, 8192), 512, 0),  # cloud 6 meets an exact float32 tie at sample 309
        ("grid", grid_clouds(2, 9), 100, 5),
        ("float64", clouds(2, 700, seed=1).astype(np.float64), 50, 3),
    ],
)
def test_pointcloud_fps_matches_brute_force(
    backend: str, name: str, points: np.ndarray, samples: int, start: int
) -> None:
    ours = farthest_point_sample(
        torch.from_numpy(points), samples, start=start, backend=backend
    ).numpy()
    for row, cloud in zip(ours, points):
        np.testing.assert_array_equal(row, reference_fps(cloud, samples, start))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("start", [0, 17])
def test_pointcloud_fps_matches_fpsample_in_order(backend: str, start: int) -> None:
    """fpsample (>= 1.0.1) gives a tie to the highest index: on reversed clouds that is our
    lowest-index rule, so the grid (ties at every step) checks the tie rule too."""
    for points, tie_free in ((clouds(3, 1000), True), (grid_clouds(2, 8), False)):
        count = points.shape[1]
        ours = farthest_point_sample(
            torch.from_numpy(points), 64, start=start, backend=backend
        ).numpy()
        for row, cloud in zip(ours, points):
            reversed_picks = fpsample.fps_sampling(
                cloud[::-1].copy(), 64, start_idx=count - 1 - start
            )
            np.testing.assert_array_equal(row, count - 1 - reversed_picks.astype(np.int64))
            if tie_free:  # the plain order agrees too
                np.testing.assert_array_equal(
                    row, fpsample.fps_sampling(cloud, 64, start_idx=start)
                )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "points", [clouds(2, 800, seed=1).astype(np.float64), grid_clouds(1, 8).astype(np.float64)]
)
def test_pointcloud_fps_matches_open3d(backend: str, points: np.ndarray) -> None:
    """open3d (lowest index wins, float64) returns the chosen points in index order, not in
    sampling order: compare the sets of indices."""
    ours = farthest_point_sample(torch.from_numpy(points), 50, start=5, backend=backend).numpy()
    for row, cloud in zip(ours, points):
        pcd = o3d.t.geometry.PointCloud(o3d.core.Tensor(cloud))
        pcd.point["index"] = o3d.core.Tensor(np.arange(len(cloud))[:, None])
        chosen = pcd.farthest_point_down_sample(50, 5).point["index"].numpy()[:, 0]
        np.testing.assert_array_equal(np.sort(row), np.sort(chosen))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("points", "queries", "k"),
    [
        (clouds(2, 1500, seed=2), clouds(2, 70, seed=3), 16),
        (clouds(2, 8192, seed=4), clouds(2, 300, seed=5), 32),
        (grid_clouds(2, 8), grid_clouds(2, 6, seed=1)[:, :90] + 0.5, 20),  # equidistant neighbours
        (grid_clouds(1, 8), grid_clouds(1, 8)[:, :50], 7),  # queries on repeated points
    ],
)
def test_pointcloud_knn_matches_brute_force(
    backend: str, points: np.ndarray, queries: np.ndarray, k: int
) -> None:
    ours = knn(
        torch.from_numpy(queries), torch.from_numpy(points), k, chunk=32, backend=backend
    ).numpy()
    for found, cloud, query in zip(ours, points, queries):
        assert_neighbours(found, query, cloud, exact=backend == "auto")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pointcloud_knn_matches_kdtree(backend: str) -> None:
    points, queries = clouds(2, 1500, seed=2), clouds(2, 70, seed=3)
    ours = knn(
        torch.from_numpy(queries), torch.from_numpy(points), 16, chunk=32, backend=backend
    ).numpy()
    for found, cloud, query in zip(ours, points, queries):
        np.testing.assert_array_equal(found, cKDTree(cloud).query(query, 16)[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("points", [clouds(3, 2000, seed=8), grid_clouds(2, 8, seed=2)])
def test_pointcloud_group_points_is_fps_then_knn(backend: str, points: np.ndarray) -> None:
    centres, members = group_points(torch.from_numpy(points), 40, 24, start=2, backend=backend)
    for cloud, centre_row, member_rows in zip(points, centres.numpy(), members.numpy()):
        np.testing.assert_array_equal(centre_row, reference_fps(cloud, 40, 2))
        assert_neighbours(member_rows, cloud[centre_row], cloud, exact=backend == "auto")


def test_pointcloud_kernels_give_the_same_indices_on_any_number_of_workers() -> None:
    """The compiled path splits a batch over `torch.get_num_threads()` workers."""
    points = torch.from_numpy(clouds(5, 3000, seed=9))
    threads = torch.get_num_threads()
    try:
        results = []
        for workers in (1, 2, 3):
            torch.set_num_threads(workers)
            fps = farthest_point_sample(points, 100, start=7)
            results.append(
                (fps, knn(points[:, :60], points, 12), *group_points(points, 100, 12, start=7))
            )
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for mine, theirs in zip(results[0], other):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    np.testing.assert_array_equal(
        results[0][0][4].numpy(), reference_fps(points[4].numpy(), 100, 7)
    )


@pytest.mark.cuda
def test_pointcloud_torch_path_on_cuda_matches_the_kernels() -> None:
    points = clouds(8, 8192)
    on_gpu = torch.from_numpy(points).cuda()
    fps = farthest_point_sample(on_gpu, 512, backend="auto")
    assert fps.is_cuda
    np.testing.assert_array_equal(
        fps.cpu().numpy(), farthest_point_sample(torch.from_numpy(points), 512).numpy()
    )
    centres, members = group_points(on_gpu, 512, 32)
    for cloud, centre_row, member_rows in zip(points, centres.cpu().numpy(), members.cpu().numpy()):
        assert_neighbours(member_rows, cloud[centre_row], cloud, exact=False)


def brute_chamfer(a: np.ndarray, b: np.ndarray, variant: str) -> float:
    distances = ((a[:, None].astype(np.float64) - b[None]) ** 2).sum(-1)
    forward, backward = distances.min(1), distances.min(0)
    if variant == "l2":
        return forward.mean() + backward.mean()
    return (np.sqrt(forward).mean() + np.sqrt(backward).mean()) / 2


@pytest.mark.parametrize("variant", ["l1", "l2"])
def test_pointcloud_chamfer_equals_brute_force(variant: str) -> None:
    a, b = clouds(3, 300, seed=4), clouds(3, 450, seed=5)
    ours = chamfer_distance(
        torch.from_numpy(a), torch.from_numpy(b), variant, chunk=64, reduce=False
    )
    expected = [brute_chamfer(x, y, variant) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5)
    # scipy's KD-tree as a second, independent reference for the nearest distances
    tree_forward = cKDTree(b[0]).query(a[0])[0]
    tree_backward = cKDTree(a[0]).query(b[0])[0]
    if variant == "l2":
        np.testing.assert_allclose(
            float(ours[0]), (tree_forward**2).mean() + (tree_backward**2).mean(), rtol=1e-5
        )


def test_pointcloud_chamfer_gradient_matches_full_matrix() -> None:
    """The chunked, matched-pairs-only backward equals autograd through the full matrix."""
    a = torch.from_numpy(clouds(2, 200, seed=6)).requires_grad_(True)
    b = torch.from_numpy(clouds(2, 150, seed=7))
    chamfer_distance(a, b, "l2", chunk=16).backward()
    reference = a.detach().clone().requires_grad_(True)
    full = torch.cdist(reference, b).square()
    (full.min(2).values.mean(1) + full.min(1).values.mean(1)).mean().backward()
    torch.testing.assert_close(a.grad, reference.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pointcloud_geometry_rejects_bad_input(backend: str) -> None:
    points = torch.zeros(1, 10, 3)
    with pytest.raises(ValueError, match="cannot draw 11"):
        farthest_point_sample(points, 11, backend=backend)
    with pytest.raises(ValueError, match="start index 10"):
        farthest_point_sample(points, 3, start=10, backend=backend)
    with pytest.raises(ValueError, match="cannot take 11 neighbours"):
        knn(points, points, 11, backend=backend)
    with pytest.raises(ValueError, match="cannot take 11 neighbours"):
        group_points(points, 2, 11, backend=backend)
    with pytest.raises(ValueError, match=r"must be \[batch, count, 3\]"):
        farthest_point_sample(torch.zeros(10, 3), 2, backend=backend)
    bad = points.clone()
    bad[0, 4, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        farthest_point_sample(bad, 3, backend=backend)
    with pytest.raises(ValueError, match="queries contain NaN"):
        knn(bad, points, 3, backend=backend)
    with pytest.raises(ValueError, match="unknown backend"):
        knn(points, points, 3, backend="pytorch3d")
