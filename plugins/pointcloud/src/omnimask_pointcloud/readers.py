"""Reading the point-cloud and mesh files users have into `[N, 3]` float32 arrays.

Point files: PLY, PCD (open3d), XYZ/TXT/PTS (plain text, the first three columns; ModelNet's
resampled `.txt` files are comma-separated), NPY/NPZ. Meshes: OFF, OBJ, STL (and PLY files that
hold faces) are read with open3d and sampled uniformly over their area. Every problem raises
`BadSampleError` naming the file.

Decoding is the slow part (40-70 ms for a mesh, parsing and sampling), so `load_points`
keeps each file's decoded points as a `.npy` in a `.omnimask-cache` folder beside it, keyed by
the file's path, size and modification time and by the settings that change the result: each
file is parsed once, not once per epoch. What a cache entry holds is deterministic (a mesh is
sampled with a generator seeded by the file's bytes); the randomness of training lies in the
subset each access draws from it (`resample`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omnimask.data import CACHE_FOLDER, BadSampleError, write_atomically

logger = logging.getLogger("omnimask")

POINT_SUFFIXES = (".pcd", ".xyz", ".txt", ".pts", ".npy", ".npz")
MESH_SUFFIXES = (".off", ".obj", ".stl")
#: PLY holds either a point cloud or a mesh; the reader looks for faces.
SUFFIXES = (".ply", *POINT_SUFFIXES, *MESH_SUFFIXES)
PATTERNS = tuple(f"*{suffix}" for suffix in SUFFIXES)
#: points sampled on a mesh's surface, from which each access draws its subset: as many as the
#: ModelNet clouds resampled from meshes that Point-BERT and Point-MAE pretrain on.
MESH_SAMPLES = 8192
#: bump when reading or sampling changes, so older decoded-cache entries are not reused.
DECODED_CACHE_FORMAT = 1


def read_points(path: str | Path, mesh_samples: int = MESH_SAMPLES) -> np.ndarray:
    """The points of `path` as a finite, non-empty `[N, 3]` float32 array.

    Meshes are sampled to `mesh_samples` points with a generator seeded by the file's bytes
    (`file_seed`), so a file always gives the same points, whichever process reads it, and the
    result can be cached (`load_points`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise BadSampleError(
            path, f"unsupported file type {suffix!r}; known: {', '.join(SUFFIXES)}"
        )
    if not path.is_file():
        raise BadSampleError(path, "file does not exist")
    try:
        ply = _ply_header(path) if suffix == ".ply" else None
        if ply is not None:
            _check_ply_complete(path, ply)
        if suffix in MESH_SUFFIXES or (ply is not None and ply.has_faces):
            rng = np.random.RandomState(file_seed(path))
            points = sample_mesh(*_read_mesh(path), mesh_samples, path, rng)
        elif suffix in (".ply", ".pcd"):
            points = _read_open3d_points(path)
        elif suffix in (".npy", ".npz"):
            points = _read_numpy(path)
        else:
            points = np.loadtxt(path, delimiter="," if _comma_separated(path) else None, ndmin=2)
    except BadSampleError:
        raise
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise BadSampleError(path, f"unreadable: {error}") from None
    return check_points(points, path)


def file_seed(path: Path) -> int:
    """A 32-bit seed from the bytes of `path`: the same mesh samples the same points wherever
    it is copied to, and an edited one samples anew."""
    return int.from_bytes(hashlib.sha1(path.read_bytes()).digest()[:4], "little")


#: cache folders a write failed in, this process: warned about once, not tried again.
_UNWRITABLE: set[Path] = set()


def decoded_cache_path(path: Path, mesh_samples: int) -> Path:
    """Where `load_points` keeps the decoded points of `path`: `.omnimask-cache/` beside it,
    named by a digest of the resolved path, size, modification time and the read settings
    (`mesh_samples` counts only for files that can hold a mesh), as the medical plugin keys
    its NIfTI cache. A changed file gets a new name, so a stale entry is never read."""
    stat = path.stat()
    samples = mesh_samples if path.suffix.lower() in (".ply", *MESH_SUFFIXES) else None
    key = [DECODED_CACHE_FORMAT, str(path.resolve()), stat.st_size, stat.st_mtime_ns, samples]
    digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:20]
    return path.parent / CACHE_FOLDER / f"{path.name}-{digest}.npy"


def load_points(path: str | Path, mesh_samples: int = MESH_SAMPLES) -> np.ndarray:
    """`read_points(path, mesh_samples)`, decoded once and read back from the cache after
    (`decoded_cache_path`); `.npy` files are already that fast and are read directly.

    The cache is written through a renamed temporary file, so DataLoader workers and processes
    that decode the same file at once each leave a whole entry. A damaged entry is decoded
    again; a folder where entries cannot be written (read-only data) is reported once per
    process, and its files are then decoded at every access as without a cache.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy" or not path.is_file():
        return read_points(path, mesh_samples)  # which names a missing file
    cached = decoded_cache_path(path, mesh_samples)
    try:
        points = np.load(cached, allow_pickle=False)
        if points.dtype == np.float32 and points.ndim == 2 and points.shape[1] == 3:
            return points
        raise ValueError(f"holds a {points.dtype} array of shape {points.shape}")
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as error:
        logger.warning(
            "decoding %s again: its cache entry %s is unreadable (%s)", path, cached, error
        )
    points = read_points(path, mesh_samples)
    if cached.parent not in _UNWRITABLE:
        buffer = io.BytesIO()
        np.save(buffer, points)
        try:
            write_atomically(cached, buffer.getvalue())
        except OSError as error:
            _UNWRITABLE.add(cached.parent)
            logger.warning(
                "cannot cache decoded point clouds in %s (%s): files there are decoded again "
                "at every access",
                cached.parent,
                error.strerror or error,
            )
    return points


def check_points(points: np.ndarray, source: str | Path) -> np.ndarray:
    """`points[:, :3]` as float32 after checking shape, emptiness and finiteness."""
    points = np.asarray(points)
    if points.size == 0:
        raise BadSampleError(source, "the cloud is empty (no points)")
    if points.ndim != 2 or points.shape[1] < 3:
        raise BadSampleError(
            source, f"expected an [N, 3+] array of points, got shape {points.shape}"
        )
    points = points[:, :3].astype(np.float32)
    bad = ~np.isfinite(points).all(1)
    if bad.any():
        raise BadSampleError(
            source, f"{int(bad.sum())} of {len(points)} points have NaN or infinite coordinates"
        )
    return points


def normalize_unit_sphere(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point is at distance 1 (Point-BERT/MAE)."""
    centred = points - points.mean(0, keepdims=True)
    radius = float(np.linalg.norm(centred, axis=1).max())
    return centred / radius if radius > 0 else centred


def resample(points: np.ndarray, count: int, minimum: int, source: str | Path) -> np.ndarray:
    """Exactly `count` points: a random subset, or every point plus random repeats when the
    cloud is smaller. Fewer than `minimum` points (the group size) is a bad sample, so
    `data.on_bad_sample` decides (stop with the file named, or skip and count it): every patch
    of such a cloud would repeat points."""
    have = len(points)
    if have < minimum:
        raise BadSampleError(source, f"only {have} points, fewer than the group size {minimum}")
    if have >= count:
        return points[np.random.permutation(have)[:count]]
    extra = np.random.randint(0, have, size=count - have)
    return np.concatenate([points, points[extra]])[np.random.permutation(count)]


def sample_mesh(
    vertices: np.ndarray,
    faces: np.ndarray,
    count: int,
    source: str | Path,
    rng: np.random.RandomState,
) -> np.ndarray:
    """`count` points uniformly over a triangle mesh's area, drawn from `rng`.

    Written here instead of open3d's `sample_points_uniformly` because that one draws from
    open3d's own global RNG, which no seed of ours can reach. `rng` is a legacy `RandomState`
    because its stream is the one the embedded set's files were generated with (the global
    NumPy RNG, seeded), so they need not be regenerated.
    """
    if len(faces) == 0:
        raise BadSampleError(source, "the mesh has no faces to sample points from")
    check_points(vertices, source)
    corners = vertices[faces].astype(np.float64)  # [F, 3, 3]
    areas = np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
    )
    if not areas.sum() > 0:
        raise BadSampleError(source, "the mesh's faces all have zero area")
    chosen = rng.choice(len(faces), size=count, p=areas / areas.sum())
    u, v = rng.rand(2, count)
    flip = u + v > 1  # reflect into the triangle so the barycentric draw stays uniform
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    tri = corners[chosen]
    points = tri[:, 0] + u[:, None] * (tri[:, 1] - tri[:, 0]) + v[:, None] * (tri[:, 2] - tri[:, 0])
    return points.astype(np.float32)


#: bytes of each PLY scalar type
PLY_SIZES = {
    **dict.fromkeys((b"char", b"uchar", b"int8", b"uint8"), 1),
    **dict.fromkeys((b"short", b"ushort", b"int16", b"uint16"), 2),
    **dict.fromkeys((b"int", b"uint", b"int32", b"uint32", b"float", b"float32"), 4),
    **dict.fromkeys((b"double", b"float64"), 8),
}


@dataclass(frozen=True)
class PlyHeader:
    """A PLY header, read once per file: its format (`ascii`, `binary_little_endian`, ...),
    its length in bytes and its elements as (name, count, least bytes per item)."""

    form: bytes
    length: int
    elements: list[tuple[str, int, int]]

    @property
    def has_faces(self) -> bool:
        return any(name == "face" and count > 0 for name, count, _ in self.elements)


def _ply_header(path: Path) -> PlyHeader:
    """The header of a PLY file. A list property (a face's vertex indices) counts as its length
    field plus three indices."""
    with path.open("rb") as handle:
        head = handle.read(65536)
    end = head.find(b"end_header")
    if end < 0:
        raise BadSampleError(path, "not a PLY file (no end_header in its first 64 KiB)")
    length = head.index(b"\n", end) + 1 if b"\n" in head[end:] else len(head)
    form, elements = b"", []
    for line in head[:end].splitlines():
        words = line.split()
        if words[:1] == [b"format"] and len(words) > 1:
            form = words[1]
        elif words[:1] == [b"element"] and len(words) >= 3 and words[2].isdigit():
            elements.append([words[1].decode("ascii", "replace"), int(words[2]), 0])
        elif words[:1] == [b"property"] and elements:
            if words[1:2] == [b"list"] and len(words) >= 4:
                least = PLY_SIZES.get(words[2], 1) + 3 * PLY_SIZES.get(words[3], 4)
            else:
                least = PLY_SIZES.get(words[1] if len(words) > 1 else b"", 4)
            elements[-1][2] += least
    return PlyHeader(form, length, [(name, count, size) for name, count, size in elements])


def _check_ply_complete(path: Path, header: PlyHeader) -> None:
    """Raise `BadSampleError` when a binary PLY is shorter than its header's elements need:
    open3d returns what it got from a file cut short (the missing faces dropped, the missing
    points as NaN) and only prints to stderr, so a partial surface would train silently."""
    if not header.form.startswith(b"binary"):
        return
    needed = header.length + sum(count * size for _, count, size in header.elements)
    size = path.stat().st_size
    if size < needed:
        declared = ", ".join(f"{count} {name}" for name, count, _ in header.elements)
        raise BadSampleError(
            path, f"cut short: {size} bytes, its header ({declared}) needs at least {needed}"
        )


def _read_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix.lower() == ".off":
        return _read_off(path)
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(str(path))
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    if len(vertices) == 0:
        raise BadSampleError(path, "unreadable mesh (open3d read no vertices)")
    return vertices, faces


def _read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """OFF parsed directly: ModelNet's files often glue the counts to the keyword
    (`OFF490 518 0`), which open3d's reader rejects."""
    words = path.read_text().split()
    if not words or not words[0].startswith("OFF"):
        raise BadSampleError(path, "not an OFF file (no OFF header)")
    rest = words[1:] if words[0] == "OFF" else [words[0][3:], *words[1:]]
    num_vertices, num_faces = int(rest[0]), int(rest[1])
    numbers = rest[3:]
    vertices = np.array(numbers[: 3 * num_vertices], dtype=np.float64).reshape(num_vertices, 3)
    faces: list[list[int]] = []
    cursor = 3 * num_vertices
    for _ in range(num_faces):
        size = int(numbers[cursor])
        polygon = [int(i) for i in numbers[cursor + 1 : cursor + 1 + size]]
        faces += [[polygon[0], polygon[i], polygon[i + 1]] for i in range(1, size - 1)]
        cursor += 1 + size
    return vertices, np.array(faces, dtype=np.int64).reshape(-1, 3)


def _read_open3d_points(path: Path) -> np.ndarray:
    import open3d as o3d

    cloud = o3d.io.read_point_cloud(str(path))
    points = np.asarray(cloud.points)

    if len(points) == 0 and path.stat().st_size > 0 and not _declares_no_points(path):
        raise BadSampleError(path, "unreadable point cloud (open3d read no points)")
    return points.reshape(-1, 3)


def _declares_no_points(path: Path) -> bool:
    """True when the header says the cloud is empty, to tell 'empty' from 'unreadable'."""
    with path.open("rb") as handle:
        header = handle.read(4096)
    for line in header.splitlines():
        words = line.split()
        if path.suffix.lower() == ".ply" and words[:2] == [b"element", b"vertex"]:
            return words[2:3] == [b"0"]
        if words[:1] == [b"POINTS"]:
            return words[1:2] == [b"0"]
    return False


def _read_numpy(path: Path) -> np.ndarray:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            key = "points" if "points" in loaded.files else (loaded.files or [None])[0]
            if key is None:
                raise BadSampleError(path, "the NPZ archive holds no arrays")
            return loaded[key]
    return loaded


def _comma_separated(path: Path) -> bool:
    with path.open() as handle:
        return "," in handle.readline()
