"""Point-cloud datasets: folders in the ModelNet/ShapeNet layouts, and the embedded default set.

Layouts understood (any of the file types in `readers.SUFFIXES`):
- ModelNet: `root/<class>/{train,test}/<name>.off`: labels from `<class>`, splits from the folder.
- ShapeNet-style: `root/<class>/<name>.ply` or `root/<class>/<model>/.../model.obj`: labels from
  the first folder below the root; `eval` holds out every fifth file of each class.
- Anything else: every readable file below the root, unlabelled (pretraining only).

The embedded default set is ten classes of open3d primitive meshes, randomly scaled, rotated
and sampled, written as real files: the train split as PLY point clouds, the test split as OFF
meshes (so both readers are exercised). It is generated on first use, deterministically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from omnimask.data import DataPathError, check_data_path, default_data_dir
from torch import Tensor
from torch.utils.data import Dataset

from omnimask_pointcloud.readers import PATTERNS, normalize_unit_sphere, read_points, resample

SPLITS = ("train", "test")
DEFAULT_CLASSES = (
    "box", "sphere", "cylinder", "cone", "torus",
    "tetrahedron", "octahedron", "icosahedron", "mobius", "arrow",
)  # fmt: skip
DEFAULT_PER_CLASS = {"train": 24, "test": 8}
DEFAULT_POINTS_PER_FILE = 2048
#: bump when the generator changes, so an old cache is not reused.
DEFAULT_DATA_VERSION = "v1"


class PointCloudDataset(Dataset):
    """Files -> `{"points": [num_points, 3] float32, "label": int}` on the unit sphere.

    With `augment` the subset of points is random (the engine seeds it per sample) and the cloud
    is randomly scaled per axis and shifted, as Point-MAE pretrains; without it the subset
    depends only on the item index, so evaluation features are reproducible.
    """

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

    def __getitem__(self, index: int) -> dict[str, Tensor | int]:
        path = self.files[index]
        if self.augment:
            points = self._load(path)
        else:
            state = np.random.get_state()
            np.random.seed(index)
            try:
                points = self._load(path)
            finally:
                np.random.set_state(state)
        if self.augment:
            points = points * np.random.uniform(2 / 3, 3 / 2, size=(1, 3)) + np.random.uniform(
                -0.2, 0.2, size=(1, 3)
            )
        sample: dict[str, Tensor | int] = {"points": torch.from_numpy(points.astype(np.float32))}
        if self.labels is not None:
            sample["label"] = self.labels[index]
        return sample

    def _load(self, path: Path) -> np.ndarray:
        points = read_points(path, mesh_samples=max(self.num_points, DEFAULT_POINTS_PER_FILE))
        return normalize_unit_sphere(resample(points, self.num_points, self.group_size, path))


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
    """Generate the embedded set once; a temp folder renamed into place keeps concurrent
    first uses safe (the loser of the race discards its copy)."""
    root = default_data_dir("pointcloud") / f"primitives-{DEFAULT_DATA_VERSION}"
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".primitives-", dir=root.parent))
    try:
        write_primitive_dataset(temp)
        os.rename(temp, root)
    except OSError:
        if not root.is_dir():
            raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return root


def primitive_mesh(name: str, rng: np.random.Generator):  # noqa: ANN201 (open3d type)
    """One randomly proportioned, rotated open3d primitive of class `name`."""
    import open3d as o3d

    g = o3d.geometry.TriangleMesh
    size = lambda low, high: float(rng.uniform(low, high))  # noqa: E731
    makers = {
        "box": lambda: g.create_box(size(0.5, 1.5), size(0.5, 1.5), size(0.5, 1.5)),
        "sphere": lambda: g.create_sphere(size(0.5, 1.0), resolution=12),
        "cylinder": lambda: g.create_cylinder(size(0.3, 0.6), size(1.0, 2.0), resolution=16),
        "cone": lambda: g.create_cone(size(0.4, 0.8), size(1.0, 2.0), resolution=16),
        "torus": lambda: g.create_torus(size(0.8, 1.2), size(0.15, 0.4), 20, 10),
        "tetrahedron": lambda: g.create_tetrahedron(size(0.5, 1.0)),
        "octahedron": lambda: g.create_octahedron(size(0.5, 1.0)),
        "icosahedron": lambda: g.create_icosahedron(size(0.5, 1.0)),
        "mobius": lambda: g.create_mobius(40, 6, 1, size(0.8, 1.2), size(0.3, 0.6)),
        "arrow": lambda: g.create_arrow(
            size(0.1, 0.2), size(0.2, 0.35), size(1.0, 1.6), size(0.4, 0.7)
        ),
    }
    mesh = makers[name]()
    mesh.scale(1.0, center=mesh.get_center())
    vertices = np.asarray(mesh.vertices) * rng.uniform(0.8, 1.25, size=3)
    rotation = o3d.geometry.get_rotation_matrix_from_xyz(rng.uniform(-np.pi, np.pi, size=3))
    mesh.vertices = o3d.utility.Vector3dVector(vertices @ rotation.T)
    return mesh


def write_primitive_dataset(root: Path) -> None:
    """`root/<class>/train/*.ply` point clouds and `root/<class>/test/*.off` meshes."""
    import open3d as o3d

    from omnimask_pointcloud.readers import sample_mesh

    for label, name in enumerate(DEFAULT_CLASSES):
        for split, count in DEFAULT_PER_CLASS.items():
            folder = root / name / split
            folder.mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng([label, SPLITS.index(split), i])
                mesh = primitive_mesh(name, rng)
                stem = folder / f"{name}_{i:04d}"
                if split == "test":
                    o3d.io.write_triangle_mesh(str(stem.with_suffix(".off")), mesh)
                    continue
                np.random.seed(int(rng.integers(2**31)))
                vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
                points = sample_mesh(vertices, faces, DEFAULT_POINTS_PER_FILE, stem)
                cloud = o3d.geometry.PointCloud(
                    o3d.utility.Vector3dVector(points.astype(np.float64))
                )
                o3d.io.write_point_cloud(str(stem.with_suffix(".ply")), cloud)
