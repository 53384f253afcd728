"""Point-cloud geometry on batched tensors: farthest point sampling, k-nearest neighbours,
grouping and Chamfer distance.

FPS and kNN have two backends that return the same indices:

- `torch`: pure PyTorch, vectorised over the batch (FPS loops over the samples only; kNN is a
  chunked distance matrix + `topk`), so it runs on any device; it is the CUDA path.
- `auto` on CPU tensors: the compiled kernels of `omnimask_pointcloud.kernels` (numba; KD-tree
  pruned, exact), one call per worker over the clouds of a batch, with as many workers as
  `torch.get_num_threads()`. On other devices `auto` is the PyTorch path. `kernels` says why
  fpsample, open3d and scipy are not used for this (start index, tie rule, order).

Both compute squared distances as `(dx*dx + dy*dy) + dz*dz` in the input precision and break
FPS ties by the lowest index, so they agree bit for bit; the tests check both against a NumPy
brute force, fpsample and open3d. kNN neighbours come nearest first; among equidistant points
the compiled kernel takes the lowest indices (so it equals a stable sort), `torch.topk` any.
pytorch3d is not used: it has no wheels for current torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

BACKENDS = ("auto", "torch")

#: queries per chunk when a full [queries, points] distance matrix would be too large.
DEFAULT_CHUNK = 1024
#: cap on the elements of one chunk's [B, chunk, N] distance matrix in the PyTorch kNN.
KNN_CHUNK_ELEMENTS = 1 << 24


def _use_compiled(points: Tensor, backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    return backend == "auto" and points.device.type == "cpu"


def _check_points(points: Tensor, name: str = "points") -> None:
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must be [batch, count, 3], got {list(points.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError(f"{name} contain NaN or infinite coordinates")


def _as_array(points: Tensor) -> np.ndarray:
    """A C-contiguous float32/float64 NumPy view (a copy only where needed) for the kernels."""
    if points.dtype not in (torch.float32, torch.float64):
        points = points.float()
    return np.ascontiguousarray(points.detach().numpy())


def _check_sampling(points: Tensor, num_samples: int, start: int) -> None:
    _check_points(points)
    count = points.shape[1]
    if not 0 < num_samples <= count:
        raise ValueError(f"cannot draw {num_samples} farthest points from a cloud of {count}")
    if not 0 <= start < count:
        raise ValueError(f"FPS start index {start} is outside a cloud of {count} points")


def farthest_point_sample(
    points: Tensor, num_samples: int, start: int = 0, backend: str = "auto"
) -> Tensor:
    """Indices `[B, S]` of `S` farthest-point samples of `points` `[B, N, 3]`, in sampling order.

    The first sample is point `start`; each next one is the point farthest (squared Euclidean)
    from all samples so far, the lowest index winning a tie, as in open3d and `torch.argmax`
    (fpsample >= 1.0.1 picks the highest).
    """
    _check_sampling(points, num_samples, start)
    if _use_compiled(points, backend):
        from omnimask_pointcloud import kernels

        cloud, out = _as_array(points), np.empty((points.shape[0], num_samples), np.int64)
        kernels.run_batch(
            lambda first, stop: kernels.fps_range(cloud, num_samples, start, out, first, stop),
            len(cloud), torch.get_num_threads(),
        )  # fmt: skip
        return torch.from_numpy(out)
    return _torch_fps(points, num_samples, start)


def _torch_fps(points: Tensor, num_samples: int, start: int) -> Tensor:
    """Vectorised over the batch: one iteration per sample, each O(B * N) on coordinate planes."""
    batch, count, _ = points.shape
    planes = points.detach().permute(2, 0, 1).contiguous()  # [3, B, N]
    rows = torch.arange(batch, device=points.device)
    indices = torch.empty(batch, num_samples, dtype=torch.long, device=points.device)
    nearest = torch.full((batch, count), float("inf"), dtype=points.dtype, device=points.device)
    current = torch.full((batch,), start, dtype=torch.long, device=points.device)
    for i in range(num_samples):
        indices[:, i] = current
        squares = (planes - planes[:, rows, current].unsqueeze(-1)).square()
        torch.minimum(nearest, squares[0] + squares[1] + squares[2], out=nearest)
        current = nearest.argmax(1)  # the first maximum: the lowest index wins a tie
    return indices


def squared_distances(queries: Tensor, points: Tensor) -> Tensor:
    """`[B, Q, N]` squared distances via `torch.cdist` (fast; sqrt then square, so only
    approximately squared): for the Chamfer loss, where near-ties do not matter."""
    return torch.cdist(queries, points, compute_mode="donot_use_mm_for_euclid_dist").square()


def exact_squared_distances(queries: Tensor, points: Tensor) -> Tensor:
    """`[B, Q, N]` squared distances as `(dx*dx + dy*dy) + dz*dz`, the kernels' and references'
    formula, so the PyTorch kNN ranks exactly as they do."""
    total = None
    for axis in range(3):
        square = (queries[:, :, None, axis] - points[:, None, :, axis]).square()
        total = square if total is None else total + square
    return total


def knn(
    queries: Tensor, points: Tensor, k: int, chunk: int = DEFAULT_CHUNK, backend: str = "auto"
) -> Tensor:
    """Indices `[B, Q, k]` of the `k` nearest `points` `[B, N, 3]` of each query `[B, Q, 3]`,
    nearest first. The PyTorch path takes at most `chunk` queries at a time (fewer if the
    `[B, chunk, N]` matrix would pass `KNN_CHUNK_ELEMENTS`), so memory stays bounded."""
    _check_points(points)
    _check_points(queries, "queries")
    if k > points.shape[1]:
        raise ValueError(f"cannot take {k} neighbours from a cloud of {points.shape[1]} points")
    if _use_compiled(points, backend):
        from omnimask_pointcloud import kernels

        cloud, wanted = _as_array(points), _as_array(queries.to(points.dtype))
        out = np.empty((*queries.shape[:2], k), np.int64)
        kernels.run_batch(
            lambda first, stop: kernels.knn_range(wanted, cloud, k, out, first, stop),
            len(cloud), torch.get_num_threads(),
        )  # fmt: skip
        return torch.from_numpy(out)
    batch, count = points.shape[:2]
    chunk = max(1, min(chunk, KNN_CHUNK_ELEMENTS // max(1, batch * count)))
    parts = [
        exact_squared_distances(queries[:, start : start + chunk], points)
        .topk(k, dim=-1, largest=False, sorted=True)
        .indices
        for start in range(0, queries.shape[1], chunk)
    ]
    return torch.cat(parts, dim=1)


def group_points(
    points: Tensor, num_groups: int, group_size: int, start: int = 0, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Point patches: FPS centre indices `[B, G]` and each centre's `group_size` nearest
    points `[B, G, k]`; the same as `farthest_point_sample` then `knn` of the centres, but the
    compiled path builds each cloud's KD-tree once for both."""
    _check_sampling(points, num_groups, start)
    if group_size > points.shape[1]:
        raise ValueError(
            f"cannot take {group_size} neighbours from a cloud of {points.shape[1]} points"
        )
    if _use_compiled(points, backend):
        from omnimask_pointcloud import kernels

        cloud = _as_array(points)
        centres = np.empty((len(cloud), num_groups), np.int64)
        members = np.empty((len(cloud), num_groups, group_size), np.int64)
        kernels.run_batch(
            lambda first, stop: kernels.group_range(
                cloud, num_groups, group_size, start, centres, members, first, stop
            ),
            len(cloud), torch.get_num_threads(),
        )  # fmt: skip
        return torch.from_numpy(centres), torch.from_numpy(members)
    centres = _torch_fps(points, num_groups, start)
    return centres, knn(gather_points(points, centres), points, group_size, backend=backend)


def gather_points(points: Tensor, indices: Tensor) -> Tensor:
    """`points[b, indices[b, ...]]` for index tensors of any trailing shape:
    `[B, ...] -> [B, ..., C]`."""
    batch = points.shape[0]
    flat = indices.reshape(batch, -1)
    picked = torch.gather(points, 1, flat.unsqueeze(-1).expand(-1, -1, points.shape[-1]))
    return picked.reshape(*indices.shape, points.shape[-1])


@torch.no_grad()
def _nearest_index(source: Tensor, target: Tensor, chunk: int) -> Tensor:
    """For each source point, the index of its nearest target point `[B, N]` (chunked)."""
    return torch.cat(
        [
            squared_distances(source[:, start : start + chunk], target).argmin(-1)
            for start in range(0, source.shape[1], chunk)
        ],
        dim=1,
    )


def chamfer_distance(
    a: Tensor, b: Tensor, variant: str = "l2", chunk: int = DEFAULT_CHUNK, reduce: bool = True
) -> Tensor:
    """Chamfer distance between clouds `a` `[B, N, 3]` and `b` `[B, M, 3]`.

    `l2` (Point-MAE): mean squared nearest distance a->b plus b->a.
    `l1` (Point-BERT's "CDL1"): the average of the two mean (unsquared) nearest distances.
    Nearest neighbours are found without autograd, `chunk` points at a time, then only the
    matched pairs are differentiated, so memory is O(B * (chunk * M + N + M)) forward and
    backward instead of the O(B * N * M) of a full distance matrix. Returns a scalar, or `[B]`
    when `reduce` is False.
    """
    forward = (a - gather_points(b, _nearest_index(a, b, chunk))).square().sum(-1)
    backward = (b - gather_points(a, _nearest_index(b, a, chunk))).square().sum(-1)
    if variant == "l2":
        per_cloud = forward.mean(1) + backward.mean(1)
    elif variant == "l1":
        # the clamp keeps sqrt's gradient finite where a point sits exactly on its match
        per_cloud = (
            forward.clamp_min(1e-12).sqrt().mean(1) + backward.clamp_min(1e-12).sqrt().mean(1)
        ) / 2
    else:
        raise ValueError(f"unknown Chamfer variant {variant!r}; use 'l1' or 'l2'")
    return per_cloud.mean() if reduce else per_cloud
