"""Compiled CPU kernels (numba) for exact farthest point sampling and k-nearest neighbours.

Why hand-written: no installed library gives exact vanilla FPS, in sampling order, with a fixed
tie rule, faster than open3d. fpsample's vanilla FPS holds the GIL, is about 2.3x slower than
open3d's, and its tie rule flipped in 1.0.1 (now the highest index wins); its bucket (QuickFPS)
variants read `start_idx` as a position in their internally re-ordered KD-tree (so they start
from another point) and break ties differently. open3d's FPS returns only the sampled set, in
index order and in float64. scipy's cKDTree leaves the order of equidistant neighbours open.

Both kernels walk the same spatial index: the points sorted into Morton-ordered grid cells, cut
into blocks of `BLOCK` consecutive points with a bounding box each. A block whose box is no
nearer than what it could change is skipped. That pruning is exact: distances are computed as
`(dx*dx + dy*dy) + dz*dz` in the input's precision, and the box's lower bound with the same
formula from the box's gaps, so with monotone rounding no point of a skipped block can compute
to a smaller distance than the bound. Results are therefore bit-for-bit those of the brute
force in the input precision:

- FPS: start at `start`; each next sample is the point with the largest squared distance to the
  samples so far, the lowest index winning a tie (open3d's and `torch.argmax`'s rule).
- kNN: the `k` points with the smallest `(squared distance, index)`, nearest first.

Every kernel takes a range of clouds `[first, stop)` and releases the GIL, so a batch runs on a
thread pool (`run_batch`) with one call per worker.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

#: points per block: small enough to prune well, large enough to amortise the box test.
BLOCK = 32


@njit(nogil=True, cache=True, inline="always")
def _middle(first, stop):  # noqa: ANN001, ANN202  # pragma: no cover - compiled
    return first + ((stop - first + BLOCK - 1) // BLOCK // 2) * BLOCK


@njit(nogil=True, cache=True)
def _partition(keys, order, first, stop, pivot, inclusive):  # noqa: ANN001, ANN202  # pragma: no cover
    """Branchless Lomuto pass: move the keys `< pivot` (`<= pivot` if `inclusive`) of
    `[first, stop)` to its front, carrying `order` along; returns where the rest begins.
    Quickselect's comparisons are coin flips on real data, so branching costs a misprediction
    per point; here every point does the same stores."""
    less = first
    for pos in range(first, stop):
        key, index = keys[pos], order[pos]
        keys[pos], order[pos] = keys[less], order[less]
        keys[less], order[less] = key, index
        less += (key <= pivot) if inclusive else (key < pivot)
    return less


@njit(nogil=True, cache=True)
def _select(keys, order, first, stop, nth):  # noqa: ANN001, ANN202  # pragma: no cover - compiled
    """Quickselect: reorder `keys` and `order` over `[first, stop)` so that position `nth` holds
    the nth smallest key, none larger before it and none smaller after it. The pivot (a median
    of three) is one of the keys, so each round removes at least the keys equal to it."""
    while stop - first > 1:
        a, b, c = keys[first], keys[(first + stop) // 2], keys[stop - 1]
        pivot = max(min(a, b), min(max(a, b), c))
        less = _partition(keys, order, first, stop, pivot, False)
        if nth < less:
            stop = less
            continue
        equal = _partition(keys, order, less, stop, pivot, True)
        if nth < equal:
            return
        first = equal


@njit(nogil=True, cache=True)
def _build_index(cloud):  # noqa: ANN001, ANN202  # pragma: no cover - compiled
    """A KD-tree over `cloud` `[N, 3]` whose leaves are runs of `BLOCK` points.

    Node `n` (root 1, children `2n`, `2n + 1`) covering positions `[first, stop)` splits at
    `first + (blocks // 2) * BLOCK` (quickselect) along the widest side of its cell, so every
    leaf but the last holds exactly `BLOCK` points and a node's range follows from the root's.
    Only the partition depends on the split, so it may round keys to float32; the boxes used for
    pruning are tight, from the points in their own precision: leaves from their points, inner
    nodes as the union of their children's.
    Returns (order, xs, ys, zs, box): the original index and coordinates at each position and
    each node's box `(lo_x, lo_y, lo_z, hi_x, hi_y, hi_z)`."""
    count = cloud.shape[0]
    order = np.arange(count)
    keys = np.empty(count, np.float32)
    nodes = 4 * ((count + BLOCK - 1) // BLOCK)
    box = np.empty((nodes, 6), cloud.dtype)
    inner = np.zeros(nodes, np.bool_)
    for axis in range(3):
        box[1, axis], box[1, axis + 3] = cloud[:, axis].min(), cloud[:, axis].max()
    stack = np.empty((64, 3), np.int64)
    stack[0, 0], stack[0, 1], stack[0, 2] = 1, 0, count
    depth = 1
    while depth:
        depth -= 1
        node, first, stop = stack[depth, 0], stack[depth, 1], stack[depth, 2]
        if stop - first <= BLOCK:
            for axis in range(3):
                low = high = cloud[order[first], axis]
                for pos in range(first + 1, stop):
                    low = min(low, cloud[order[pos], axis])
                    high = max(high, cloud[order[pos], axis])
                box[node, axis], box[node, axis + 3] = low, high
            continue
        inner[node] = True
        axis = (box[node, 3:] - box[node, :3]).argmax()  # the cell here; tightened below
        for pos in range(first, stop):
            keys[pos] = cloud[order[pos], axis]
        middle = _middle(first, stop)
        _select(keys, order, first, stop, middle)
        box[2 * node] = box[node]
        box[2 * node + 1] = box[node]
        box[2 * node, axis + 3] = box[2 * node + 1, axis] = keys[middle]
        stack[depth, 0], stack[depth, 1], stack[depth, 2] = 2 * node, first, middle
        stack[depth + 1, 0], stack[depth + 1, 1], stack[depth + 1, 2] = 2 * node + 1, middle, stop
        depth += 2
    for node in range(nodes - 1, 0, -1):  # children come after their parent
        if inner[node]:
            for axis in range(3):
                box[node, axis] = min(box[2 * node, axis], box[2 * node + 1, axis])
                box[node, axis + 3] = max(box[2 * node, axis + 3], box[2 * node + 1, axis + 3])
    xs = np.empty(count, cloud.dtype)
    ys = np.empty(count, cloud.dtype)
    zs = np.empty(count, cloud.dtype)
    for pos in range(count):
        xs[pos], ys[pos], zs[pos] = cloud[order[pos], 0], cloud[order[pos], 1], cloud[order[pos], 2]
    return order, xs, ys, zs, box


@njit(nogil=True, cache=True, inline="always")
def _gap(low, high, at):  # noqa: ANN001, ANN202  # pragma: no cover - compiled
    """Distance along one axis from `at` to [low, high], computed as `point - at` would be."""
    if at < low:
        return low - at
    if at > high:
        return at - high
    return at - at


@njit(nogil=True, cache=True, inline="always")
def _lower_bound(box, node, x, y, z):  # noqa: ANN001, ANN202  # pragma: no cover - compiled
    gx = _gap(box[node, 0], box[node, 3], x)
    gy = _gap(box[node, 1], box[node, 4], y)
    gz = _gap(box[node, 2], box[node, 5], z)
    return gx * gx + gy * gy + gz * gz


@njit(nogil=True, cache=True)
def _fps_cloud(order, xs, ys, zs, box, samples, start, out):  # noqa: ANN001, ANN202  # pragma: no cover
    """Exact FPS of one indexed cloud into `out` `[samples]` (original indices).

    `largest[n]` is the largest nearest-sample distance under node `n`. A new sample updates
    only nodes whose box is nearer than their `largest` (elsewhere the minimum cannot change),
    then the farthest point is found by descending into nodes whose `largest` is the maximum."""
    count = xs.shape[0]
    nearest = np.empty(count, xs.dtype)
    nearest[:] = np.inf
    largest = np.empty(box.shape[0], xs.dtype)
    largest[:] = np.inf
    stack = np.empty((64, 3), np.int64)
    visited = np.empty(box.shape[0], np.int64)
    current = 0
    for pos in range(count):
        if order[pos] == start:
            current = pos
    for sample in range(samples):
        out[sample] = order[current]
        cx, cy, cz = xs[current], ys[current], zs[current]
        stack[0, 0], stack[0, 1], stack[0, 2] = 1, 0, count
        depth, seen = 1, 0
        while depth:
            depth -= 1
            node, first, stop = stack[depth, 0], stack[depth, 1], stack[depth, 2]
            if _lower_bound(box, node, cx, cy, cz) >= largest[node]:
                continue
            if stop - first <= BLOCK:
                top = cx - cx
                for pos in range(first, stop):
                    dx, dy, dz = xs[pos] - cx, ys[pos] - cy, zs[pos] - cz
                    value = min(nearest[pos], dx * dx + dy * dy + dz * dz)
                    nearest[pos] = value
                    top = max(top, value)
                largest[node] = top
                continue
            visited[seen] = node
            seen += 1
            middle = _middle(first, stop)
            stack[depth, 0], stack[depth, 1], stack[depth, 2] = 2 * node, first, middle
            stack[depth + 1, 0], stack[depth + 1, 1], stack[depth + 1, 2] = (
                2 * node + 1,
                middle,
                stop,
            )
            depth += 2
        for step in range(seen - 1, -1, -1):  # children were visited after their parents
            node = visited[step]
            largest[node] = max(largest[2 * node], largest[2 * node + 1])
        farthest, best = largest[1], count
        stack[0, 0], stack[0, 1], stack[0, 2] = 1, 0, count
        depth = 1
        while depth:
            depth -= 1
            node, first, stop = stack[depth, 0], stack[depth, 1], stack[depth, 2]
            if largest[node] != farthest:
                continue
            if stop - first <= BLOCK:
                for pos in range(first, stop):
                    if nearest[pos] == farthest and order[pos] < best:
                        best, current = order[pos], pos
                continue
            middle = _middle(first, stop)
            stack[depth, 0], stack[depth, 1], stack[depth, 2] = 2 * node, first, middle
            stack[depth + 1, 0], stack[depth + 1, 1], stack[depth + 1, 2] = (
                2 * node + 1,
                middle,
                stop,
            )
            depth += 2


@njit(nogil=True, cache=True)
def _knn_cloud(order, xs, ys, zs, box, queries, k, out):  # noqa: ANN001, ANN202  # pragma: no cover
    """Exact kNN of `queries` `[Q, 3]` in one indexed cloud into `out` `[Q, k]`, ordered by
    (squared distance, index): a depth-first walk, nearer child first, that skips nodes whose
    box is farther than the current k-th neighbour; the best k are kept sorted by insertion."""
    count = xs.shape[0]
    distance = np.empty(k, xs.dtype)
    index = np.empty(k, np.int64)
    stack = np.empty((64, 3), np.int64)
    bounds = np.empty(64, xs.dtype)
    for query in range(queries.shape[0]):
        qx, qy, qz = queries[query, 0], queries[query, 1], queries[query, 2]
        distance[:] = np.inf  # (inf, count) entries sort after every real point
        index[:] = count
        stack[0, 0], stack[0, 1], stack[0, 2] = 1, 0, count
        bounds[0] = qx - qx
        depth = 1
        while depth:
            depth -= 1
            if bounds[depth] > distance[k - 1]:
                continue
            node, first, stop = stack[depth, 0], stack[depth, 1], stack[depth, 2]
            if stop - first > BLOCK:
                middle = _middle(first, stop)
                left = _lower_bound(box, 2 * node, qx, qy, qz)
                right = _lower_bound(box, 2 * node + 1, qx, qy, qz)
                if left <= right:  # the nearer child goes on top of the stack
                    stack[depth, 0], stack[depth, 1], stack[depth, 2] = 2 * node + 1, middle, stop
                    stack[depth + 1, 0], stack[depth + 1, 1], stack[depth + 1, 2] = (
                        2 * node,
                        first,
                        middle,
                    )
                    bounds[depth], bounds[depth + 1] = right, left
                else:
                    stack[depth, 0], stack[depth, 1], stack[depth, 2] = 2 * node, first, middle
                    stack[depth + 1, 0], stack[depth + 1, 1], stack[depth + 1, 2] = (
                        2 * node + 1,
                        middle,
                        stop,
                    )
                    bounds[depth], bounds[depth + 1] = left, right
                depth += 2
                continue
            for pos in range(first, stop):
                dx, dy, dz = xs[pos] - qx, ys[pos] - qy, zs[pos] - qz
                value, point = dx * dx + dy * dy + dz * dz, order[pos]
                if value > distance[k - 1] or (value == distance[k - 1] and point > index[k - 1]):
                    continue
                slot = k - 1
                while slot > 0 and (
                    distance[slot - 1] > value
                    or (distance[slot - 1] == value and index[slot - 1] > point)
                ):
                    distance[slot], index[slot] = distance[slot - 1], index[slot - 1]
                    slot -= 1
                distance[slot], index[slot] = value, point
        out[query] = index


@njit(nogil=True, cache=True)
def fps_range(points, samples, start, out, first, stop):  # noqa: ANN001, ANN201  # pragma: no cover
    """FPS indices of clouds `points[first:stop]` `[B, N, 3]` into `out` `[B, samples]`."""
    for cloud in range(first, stop):
        order, xs, ys, zs, box = _build_index(points[cloud])
        _fps_cloud(order, xs, ys, zs, box, samples, start, out[cloud])


@njit(nogil=True, cache=True)
def knn_range(queries, points, k, out, first, stop):  # noqa: ANN001, ANN201  # pragma: no cover
    """kNN indices of `queries[first:stop]` `[B, Q, 3]` in `points` `[B, N, 3]` into `out`."""
    for cloud in range(first, stop):
        order, xs, ys, zs, box = _build_index(points[cloud])
        _knn_cloud(order, xs, ys, zs, box, queries[cloud], k, out[cloud])


@njit(nogil=True, cache=True)
def group_range(points, samples, k, start, centres, members, first, stop):  # noqa: ANN001, ANN201  # pragma: no cover
    """FPS centres and their kNN members of clouds `first:stop`, indexing each cloud once."""
    for cloud in range(first, stop):
        order, xs, ys, zs, box = _build_index(points[cloud])
        _fps_cloud(order, xs, ys, zs, box, samples, start, centres[cloud])
        chosen = np.empty((samples, 3), points.dtype)
        for sample in range(samples):
            chosen[sample] = points[cloud, centres[cloud, sample]]
        _knn_cloud(order, xs, ys, zs, box, chosen, k, members[cloud])


def run_batch(kernel: Callable[[int, int], None], batch: int, workers: int) -> None:
    """Run `kernel(first, stop)` over `batch` clouds split into `workers` contiguous ranges; the
    kernels release the GIL, so the ranges run in parallel."""
    workers = max(1, min(workers, batch))
    if workers == 1:
        kernel(0, batch)
        return
    bounds = np.linspace(0, batch, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(kernel, bounds[:-1].tolist(), bounds[1:].tolist()))
