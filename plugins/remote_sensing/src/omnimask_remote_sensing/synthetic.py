"""The embedded default data: synthetic co-registered S1/S2 scenes written as real GeoTIFFs.

Land cover (water, vegetation, bare soil, urban) is drawn as smooth random regions; each class
has a typical Sentinel-2 reflectance spectrum (12 bands, B1..B12 without B10, stored as uint16
reflectance x 10000 like L2A products) and typical Sentinel-1 VV/VH backscatter (float32 dB).
SAR speckle is multiplicative gamma noise on linear intensity (4 looks). Scenes sit on a UTM
grid at 10 m with a real CRS and transform; one scene has a nodata strip, as swath edges do.
Everything is deterministic, so the folder can be deleted and regenerated at any time.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from omnimask.data import default_data_dir
from rasterio.crs import CRS
from rasterio.transform import from_origin

from omnimask_remote_sensing.geotiff import write_geotiff

CLASSES = ("water", "vegetation", "bare_soil", "urban")
#: Sentinel-2 surface reflectance per class, bands B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B11 B12.
S2_SIGNATURES = np.array(
    [
        [0.07, 0.06, 0.05, 0.03, 0.025, 0.02, 0.018, 0.015, 0.012, 0.010, 0.005, 0.003],
        [0.04, 0.05, 0.08, 0.04, 0.12, 0.30, 0.38, 0.42, 0.44, 0.40, 0.22, 0.10],
        [0.10, 0.12, 0.16, 0.20, 0.23, 0.26, 0.28, 0.30, 0.31, 0.30, 0.36, 0.30],
        [0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.20, 0.19, 0.22, 0.20],
    ]
)
#: Sentinel-1 backscatter per class in dB: (VV, VH).
S1_SIGNATURES_DB = np.array([[-22.0, -28.0], [-9.0, -15.0], [-13.0, -21.0], [-4.0, -11.0]])
S2_NODATA = 0
S1_NODATA = -9999.0
CRS_UTM33N = CRS.from_epsg(32633)
PIXEL_M = 10.0
LOOKS = 4
VERSION = "1"  # bump when the generator changes, so stale folders are regenerated

SCENES = 4
SCENE_SIZE = 128
EVAL_CHIPS_PER_CLASS = 15
EVAL_TRAIN_PER_CLASS = 10
EVAL_CHIP_SIZE = 32


def _smooth_field(rng: np.random.Generator, size: int, blur: float) -> np.ndarray:
    """Gaussian-blurred white noise `[size, size]` (an FFT low-pass: no SciPy needed)."""
    noise = rng.standard_normal((size, size))
    freq = np.fft.fftfreq(size)
    kernel = np.exp(-2 * (np.pi * blur) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    return np.fft.ifft2(np.fft.fft2(noise) * kernel).real


def land_cover(rng: np.random.Generator, size: int, blur: float = 6.0) -> np.ndarray:
    """`[size, size]` class map: the strongest of four smooth random fields wins each pixel."""
    fields = np.stack([_smooth_field(rng, size, blur) for _ in CLASSES])
    return fields.argmax(axis=0)


def render(classes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(S1 dB `[2, H, W]` float32, S2 reflectance x 10000 `[12, H, W]` uint16) of a class map."""
    size = classes.shape[0]
    texture = 1.0 + 0.08 * _smooth_field(rng, size, 2.0) / 0.1
    reflectance = S2_SIGNATURES[classes].transpose(2, 0, 1) * np.clip(texture, 0.7, 1.3)
    reflectance *= 1.0 + 0.02 * rng.standard_normal(reflectance.shape)
    s2 = np.clip(reflectance * 10000, 1, 65535).astype(np.uint16)
    intensity = 10.0 ** (S1_SIGNATURES_DB[classes].transpose(2, 0, 1) / 10.0)
    speckle = rng.gamma(shape=LOOKS, scale=1.0 / LOOKS, size=intensity.shape)
    s1 = (10.0 * np.log10(intensity * speckle)).astype(np.float32)
    return s1, s2


def _write_pair(
    folder: Path, name: str, s1: np.ndarray, s2: np.ndarray, x0: float, y0: float
) -> None:
    transform = from_origin(x0, y0, PIXEL_M, PIXEL_M)
    write_geotiff(folder / "s1" / f"{name}.tif", s1, CRS_UTM33N, transform, S1_NODATA)
    write_geotiff(folder / "s2" / f"{name}.tif", s2, CRS_UTM33N, transform, S2_NODATA)


def _write_scenes(folder: Path, rng: np.random.Generator) -> None:
    """Training scenes, paired by file name (`s1/scene_k.tif` with `s2/scene_k.tif`)."""
    for sensor in ("s1", "s2"):
        (folder / sensor).mkdir(parents=True)
    for index in range(SCENES):
        s1, s2 = render(land_cover(rng, SCENE_SIZE), rng)
        if index == SCENES - 1:  # a swath edge: the first 32 columns hold no data
            s1[:, :, :32] = S1_NODATA
            s2[:, :, :32] = S2_NODATA
        x0, y0 = 400_000.0 + index * 5_000.0, 5_000_000.0
        _write_pair(folder, f"scene_{index:02d}", s1, s2, x0, y0)


def _write_labelled_chips(folder: Path, rng: np.random.Generator) -> None:
    """Labelled chips for `omnimask eval`, listed in a manifest (label = dominant class)."""
    for sensor in ("s1", "s2"):
        (folder / sensor).mkdir(parents=True)
    rows = []
    for label in range(len(CLASSES)):
        for index in range(EVAL_CHIPS_PER_CLASS):
            classes = land_cover(rng, EVAL_CHIP_SIZE, blur=3.0)
            # the labelled class covers the chip except for a blob of mixed cover
            blob = (
                _smooth_field(rng, EVAL_CHIP_SIZE, 3.0)
                > 0.6 * _smooth_field(rng, EVAL_CHIP_SIZE, 3.0).std()
            )
            classes = np.where(blob, classes, label)
            s1, s2 = render(classes, rng)
            name = f"chip_{label}_{index:02d}"
            x0 = 600_000.0 + index * 1_000.0
            y0 = 5_100_000.0 + label * 1_000.0
            _write_pair(folder, name, s1, s2, x0, y0)
            split = "train" if index < EVAL_TRAIN_PER_CLASS else "test"
            rows.append(
                {"s1": f"s1/{name}.tif", "s2": f"s2/{name}.tif", "label": label, "split": split}
            )
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["s1", "s2", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)


def generate(root: Path, seed: int = 0) -> None:
    """Write the whole default data set under `root` (`scenes/` and `labelled/`)."""
    rng = np.random.default_rng(seed)
    _write_scenes(root / "scenes", rng)
    _write_labelled_chips(root / "labelled", rng)
    (root / "VERSION").write_text(VERSION)


def default_data() -> Path:
    """The embedded data folder, generated on first use.

    Written into a temporary sibling and renamed into place, so concurrent processes never see
    a half-written folder; a process that loses the race uses the winner's identical copy.
    """
    root = default_data_dir("remote_sensing") / f"v{VERSION}"
    if (root / "VERSION").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=".generating-", dir=root.parent))
    try:
        generate(temp)
        try:
            os.rename(temp, root)
        except OSError:
            if not (root / "VERSION").is_file():
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return root
