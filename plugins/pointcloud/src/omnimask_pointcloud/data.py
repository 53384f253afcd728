"""Point-cloud datasets: folders in the ModelNet/ShapeNet layouts, and the embedded default set.

Layouts understood (any of the file types in `readers.SUFFIXES`):
- ModelNet: `root/<class>/{train,test}/<name>.off`: labels from `<class>`, splits from the folder.
- ShapeNet-style: `root/<class>/<name>.ply` or `root/<class>/<model>/.../model.obj`: labels from
  the first folder below the root; `eval` holds out every fifth file of each class.
- Anything else: every readable file below the root, unlabelled (pretraining only).

The embedded default set is four classes of spheres with a relief (bumps, dimples, ridges,
grooves; `relief_mesh`), randomly stretched, rotated and sampled, written as real files: the
train split as PLY point clouds, the test split as OFF meshes (so both readers are exercised).
It is generated on first use, deterministically. Plugin README: why random features cannot
tell its classes apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omnimask.data import (
    BadSampleError,
    DataPathError,
    check_data_path,
    default_data_dir,
    generate_once,
)
from torch import Tensor
from torch.utils.data import Dataset

from omnimask_pointcloud.readers import (
    MESH_SAMPLES,
    PATTERNS,
    load_points,
    normalize_unit_sphere,
    resample,
)

SPLITS = ("train", "test")
#: 128 test meshes per class (v2 had 32, the first 32 of these: each mesh is seeded by its class,
#: split and index): one accuracy's standard error is then at most 2.2 points, not 4.4, against
#: the 10-point learning target (plugin README).
DEFAULT_PER_CLASS = {"train": 48, "test": 128}
DEFAULT_POINTS_PER_FILE = 2048
#: bump when the generator changes, so an old cache is not reused.
DEFAULT_DATA_VERSION = "v3"  # v2: 32 test meshes per class
#: the record layout of `PointCloudDataset` in shards (`omnimask.shards`); bump when it changes
POINTS_RECORD = "pointcloud.points/1"


class PointCloudDataset(Dataset):
    """Files -> `{"points": [num_points, 3] float32, "label": int}` on the unit sphere.

    Each file is decoded once (`readers.load_points`: a mesh becomes a fixed sampling of
    `MESH_SAMPLES` surface points, cached beside it). With `augment` the subset of points drawn
    from it at each access is random (the engine seeds it per sample) and the cloud is randomly
    scaled per axis and shifted, as Point-MAE pretrains; without it the subset depends only on
    the item index, so evaluation features are reproducible.
    """

    record_kind = POINTS_RECORD

    def __init__(
        self,
        files: list[Path],
        labels: list[int] | None,
        num_points: int,
        group_size: int,
        augment: bool,
    ) -> None:
        self.files, self.labels = files, labels
        self.num_points, self.group_size, self.augment = num_points, group_size, augment

    def __len__(self) -> int:
        return len(self.files)

    def record(self, index: int) -> dict[str, Any]:
        """File `index` decoded (`readers.load_points`), before any random draw: what a shard
        keeps (`omnimask.shards`)."""
        path = self.files[index]
        points = load_points(path, mesh_samples=self.mesh_samples)
        if len(points) < self.group_size:  # every patch of it would repeat points
            raise BadSampleError(
                path, f"only {len(points)} points, fewer than the group size {self.group_size}"
            )
        record: dict[str, Any] = {"points": points.astype(np.float32), "source": str(path)}
        if self.labels is not None:
            record["label"] = self.labels[index]
        return record

    def shard_attributes(self) -> dict[str, Any]:
        return {"mesh_samples": self.mesh_samples}

    @property
    def mesh_samples(self) -> int:
        """Surface points a mesh is decoded into (`readers.load_points`)."""
        return max(self.num_points, MESH_SAMPLES)

    def sample(self, record: dict[str, Any]) -> dict[str, Tensor | int]:
        """The random rest: `num_points` of the record's points, on the unit sphere, scaled
        per axis and shifted under `augment`."""
        points = normalize_unit_sphere(
            resample(record["points"], self.num_points, self.group_size, record["source"])
        )
        if self.augment:
            points = points * np.random.uniform(2 / 3, 3 / 2, size=(1, 3)) + np.random.uniform(
                -0.2, 0.2, size=(1, 3)
            )
        sample: dict[str, Tensor | int] = {"points": torch.from_numpy(points.astype(np.float32))}
        if "label" in record:
            sample["label"] = record["label"]
        return sample

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        if self.augment:
            return self.sample(self.record(index))
        state = np.random.get_state()
        np.random.seed(index)
        try:
            return self.sample(self.record(index))
        finally:
            np.random.set_state(state)


def data_root(path: str | None) -> Path:
    """The user's data folder, or the embedded set (generated on first use)."""
    return Path(path) if path is not None else ensure_default_data()


def pretraining_files(path: str | None) -> list[Path]:
    """Every point file under `path` (the embedded set: its train split only)."""
    if path is None:
        return [f for f in check_data_path(data_root(None), PATTERNS) if f.parent.name == "train"]
    return check_data_path(path, PATTERNS)


def labelled_splits(
    path: str | None,
) -> tuple[tuple[list[Path], list[int]], tuple[list[Path], list[int]], list[str]]:
    """((train files, labels), (test files, labels), class names) of a labelled folder."""
    root = data_root(path)
    files = check_data_path(root, PATTERNS)
    if root.is_file():
        raise DataPathError(
            f"{root}: evaluation needs a folder of <class>/ subfolders, not one file"
        )
    classes = sorted(
        {f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1}
    )
    if len(classes) < 2:
        raise DataPathError(
            f"{root}: evaluation needs labelled data, at least two <class>/ subfolders of point "
            f"files, and found {len(classes)} ({', '.join(classes) or 'files without a class'})"
        )
    index = {name: i for i, name in enumerate(classes)}
    split: dict[str, tuple[list[Path], list[int]]] = {"train": ([], []), "test": ([], [])}
    seen: dict[str, int] = {}
    has_split_folders = any(set(f.relative_to(root).parts[1:-1]) & set(SPLITS) for f in files)
    for f in files:
        parts = f.relative_to(root).parts
        if len(parts) < 2:
            continue
        if has_split_folders:
            found = set(parts[1:-1]) & set(SPLITS)
            if not found:
                continue
            name = found.pop()
        else:
            seen[parts[0]] = seen.get(parts[0], 0) + 1
            name = "test" if seen[parts[0]] % 5 == 0 else "train"
        split[name][0].append(f)
        split[name][1].append(index[parts[0]])
    for name in SPLITS:
        if not split[name][0]:
            raise DataPathError(f"{root}: the {name} split of the labelled data is empty")
    return split["train"], split["test"], classes


def ensure_default_data() -> Path:
    """Generate the embedded set once (`omnimask.data.generate_once`: staged and renamed, so
    concurrent first uses are safe)."""
    root = default_data_dir("pointcloud") / f"reliefs-{DEFAULT_DATA_VERSION}"
    return generate_once(root, write_relief_dataset)


#: the relief of each class: `bumps` and `ridges` raise the surface, `dimples` and `grooves`
#: are the same reliefs pressed in.
RELIEFS = {"bumps": ("bumps", 1.0), "dimples": ("bumps", -1.0),
           "ridges": ("ridges", 1.0), "grooves": ("ridges", -1.0)}  # fmt: skip
DEFAULT_CLASSES = tuple(RELIEFS)
#: relief height (share of the radius, each shape's drawn within 20% of it), angular width of
#: a bump or ridge (radians), bumps per shape (centres uniform on the sphere), ridges per shape
#: (along random great circles).
RELIEF_HEIGHT, RELIEF_WIDTH, BUMPS, RIDGES = 0.35, 0.35, 8, 2


def relief_profile(kind: str, directions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Height in [0, 1] at unit `directions` `[n, 3]`: a Gaussian of the angle to the nearest
    bump centre, or of the angular distance to the nearest ridge's great circle."""
    count = BUMPS if kind == "bumps" else RIDGES
    axes = rng.standard_normal((count, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    cosines = np.clip(directions @ axes.T, -1, 1)
    angle = np.arccos(cosines) if kind == "bumps" else np.abs(np.arcsin(cosines))
    return np.exp(-(angle**2) / (2 * RELIEF_WIDTH**2)).max(1)


def relief_mesh(name: str, rng: np.random.Generator):  # noqa: ANN201 (open3d type)
    """A sphere with the relief of class `name`, then stretched per axis (0.75-1.33) and
    rotated at random, so the outline varies more within a class than between classes."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh.create_sphere(1.0, resolution=48)
    directions = np.asarray(mesh.vertices)
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    kind, sign = RELIEFS[name]
    profile = relief_profile(kind, directions, rng)
    height = sign * RELIEF_HEIGHT * rng.uniform(0.8, 1.2)
    vertices = directions * (1 + height * profile)[:, None]
    vertices = vertices * rng.uniform(0.75, 1.33, size=3) @ random_rotation(rng).T
    mesh.vertices = o3d.utility.Vector3dVector(vertices)
    return mesh


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation drawn uniformly (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def write_relief_dataset(root: Path) -> None:
    """`root/<class>/train/*.ply` point clouds and `root/<class>/test/*.off` meshes."""
    import open3d as o3d

    from omnimask_pointcloud.readers import sample_mesh

    for label, name in enumerate(DEFAULT_CLASSES):
        for split, count in DEFAULT_PER_CLASS.items():
            folder = root / name / split
            folder.mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([label, SPLITS.index(split), i])
                mesh = relief_mesh(name, rng)
                stem = folder / f"{name}_{i:04d}"
                if split == "test":
                    o3d.io.write_triangle_mesh(str(stem.with_suffix(".off")), mesh)
                    continue
                draw = np.random.RandomState(int(rng.integers(2**31)))
                vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
                points = sample_mesh(vertices, faces, DEFAULT_POINTS_PER_FILE, stem, draw)
                cloud = o3d.geometry.PointCloud(
                    o3d.utility.Vector3dVector(points.astype(np.float64))
                )
                o3d.io.write_point_cloud(str(stem.with_suffix(".ply")), cloud)
