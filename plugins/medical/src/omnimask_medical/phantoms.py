"""The embedded default data: CT-like abdominal phantoms written as real NIfTI files.

Each phantom is an elliptic body (skin-level fat around soft tissue) with lungs at the top, a
liver, a spleen, two kidneys, a spine with vertebral bodies, and noise, all in Hounsfield units,
on a 3 x 3 x 4.5 mm grid stored in LPS orientation (as DICOM-derived files often are), so that
reorientation to RAS+ matters. Four classes differ in anatomy, for `omnimask eval`:

    0 normal · 1 enlarged liver (hepatomegaly) · 2 hypodense liver lesions · 3 single kidney

Each phantom of the segmentation splits (`seg_train`, `seg_test`: `images/` and `labels/`)
also has its organ label map, a NIfTI on the same grid (`ORGANS`: 0 background, 1 liver, its
lesions included, 2 spleen, 3 kidney, 4 spine, 5 lung), for `--protocol segmentation_*`.

Generation is deterministic and takes a few seconds; the folder can be deleted at any time.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from omnimask.data import default_data_dir, generate_once

CLASSES = ("normal", "hepatomegaly", "liver_lesions", "single_kidney")
SHAPE = (64, 54, 32)  # voxels (x, y, z): 192 x 162 x 144 mm
SPACING = (3.0, 3.0, 4.5)  # mm
ORGANS = ("background", "liver", "spleen", "kidney", "spine", "lung")
VERSION = "2"  # bump when the generator changes, so stale folders are regenerated
SPLITS = {"pretrain": (16, 0), "eval_train": (6, 1), "eval_test": (4, 2)}  # per class, seed
SEGMENTATION_SPLITS = {"seg_train": (4, 3), "seg_test": (2, 4)}  # per class, seed

AIR, FAT, SOFT, LUNG, BONE = -1000.0, -100.0, 40.0, -850.0, 700.0
LIVER, SPLEEN, KIDNEY, LESION = 60.0, 45.0, 30.0, 10.0


def _ellipsoid(grid: tuple[np.ndarray, ...], centre, radii) -> np.ndarray:  # noqa: ANN001
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def phantom(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One `SHAPE` volume in HU, axes (x right, y anterior, z superior) in mm from the centre,
    and its organ label map (indices into `ORGANS`, uint8)."""
    axes = [(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(SHAPE, SPACING)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    jitter = lambda scale: rng.normal(0.0, scale)  # noqa: E731
    size = rng.uniform(0.85, 1.05)
    volume = np.full(SHAPE, AIR, dtype=np.float32)
    organs = np.zeros(SHAPE, dtype=np.uint8)
    body_a, body_b = 85 * size, 62 * size
    body = (x / body_a) ** 2 + (y / body_b) ** 2 <= 1.0
    volume[body] = FAT
    inner = (x / (body_a - 8)) ** 2 + (y / (body_b - 8)) ** 2 <= 1.0
    volume[inner] = SOFT
    lung_top = z > 35 + jitter(4)
    for side in (-1, 1):
        lung = _ellipsoid((x, y, z), (side * 38 * size, 5, 70), (28 * size, 40 * size, 45))
        volume[lung & lung_top & inner] = LUNG
        organs[lung & lung_top & inner] = ORGANS.index("lung")
    liver_scale = 1.3 if label == 1 else 1.0
    liver = _ellipsoid(
        (x, y, z), (-35 * size + jitter(3), 5 + jitter(3), 15 + jitter(3)),
        (38 * size * liver_scale, 35 * size * liver_scale, 30 * liver_scale),
    )  # fmt: skip
    liver &= inner & ~lung_top
    volume[liver] = LIVER
    organs[liver] = ORGANS.index("liver")
    if label == 2:
        for _ in range(int(rng.integers(3, 6))):
            centre = (-35 * size + jitter(12), 5 + jitter(10), 15 + jitter(8))
            volume[_ellipsoid((x, y, z), centre, (rng.uniform(5, 9),) * 3) & liver] = LESION
    spleen = _ellipsoid((x, y, z), (45 * size, -15, 20 + jitter(3)), (14, 20, 18))
    volume[spleen & inner] = SPLEEN
    organs[spleen & inner] = ORGANS.index("spleen")
    for side in (-1, 1) if label != 3 else (int(rng.choice([-1, 1])),):
        kidney = _ellipsoid(
            (x, y, z), (side * 35 * size, -30 * size, -15 + jitter(3)), (12, 16, 28)
        )
        volume[kidney & inner] = KIDNEY
        organs[kidney & inner] = ORGANS.index("kidney")
    spine = _ellipsoid((x, y, 0 * z), (0, -45 * size, 0), (10, 10, 1))
    vertebrae = np.cos(z * 2 * np.pi / 30) > -0.6  # vertebral bodies with discs between them
    volume[spine & vertebrae] = BONE + 300 * np.cos(z[spine & vertebrae] / 7)
    volume[spine & ~vertebrae] = SOFT + 40
    organs[spine] = ORGANS.index("spine")
    volume += rng.normal(0.0, 12.0, SHAPE).astype(np.float32)  # quantum noise
    return np.maximum(volume, AIR), organs


LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_phantom(path: Path, volume: np.ndarray, dtype: type = np.int16) -> None:
    """Store `volume` (RAS axes) as LPS data: x and y flipped in the array, and an affine with
    negative x/y steps that maps them back, as an LPS-ordered scan is."""
    data = volume[::-1, ::-1, :].astype(dtype)
    origin = np.array([(n - 1) * s / 2 for n, s in zip(SHAPE, SPACING)])
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = [origin[0], origin[1], -origin[2]]
    image = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, str(path))


def write_split(folder: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            volume, _ = phantom(label, rng)
            write_phantom(folder / name / f"phantom_{index:03d}.nii.gz", volume)


def write_segmentation_split(folder: Path, per_class: int, seed: int) -> None:
    """`images/<name>.nii.gz` and `labels/<name>.nii.gz` (the organ map) of every phantom."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for label, name in enumerate(CLASSES):
        for index in range(per_class):
            volume, organs = phantom(label, rng)
            file = f"{name}_{index:03d}.nii.gz"
            write_phantom(folder / "images" / file, volume)
            write_phantom(folder / "labels" / file, organs, np.uint8)


def default_dataset() -> Path:
    """The generated folder (`pretrain`, `eval_train`, `eval_test`, each with one folder per
    class; `seg_train`, `seg_test` with `images/` and `labels/`), created on first use by
    `omnimask.data.generate_once` (staged and renamed), so racing processes never see a
    half-written set."""
    return generate_once(default_data_dir("medical") / f"phantoms-v{VERSION}", write_phantoms)


def write_phantoms(folder: Path) -> None:
    """Every split of the embedded phantoms into `folder`."""
    for split, (per_class, seed) in SPLITS.items():
        write_split(folder / split, per_class, seed)
    for split, (per_class, seed) in SEGMENTATION_SPLITS.items():
        write_segmentation_split(folder / split, per_class, seed)
