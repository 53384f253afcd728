"""The embedded default data: synthetic co-registered S1/S2 tiles written as real GeoTIFFs.

Every 32 px tile holds the same four land covers (water, vegetation, bare soil, urban) as smooth
random regions of about a quarter of the tile each. Optically each cover has its Sentinel-2
reflectance spectrum (12 bands, B1..B12 without B10, stored as uint16 reflectance x 10000 like
L2A products); to the radar all covers look alike (dim Sentinel-1 VV/VH backscatter, float32 dB)
except one, whose returns are 8 dB stronger, as flooded vegetation or wet soil stand out. That
bright cover is the tile's label. Neither sensor alone tells it: the covers' areas, hence the
optical band means, are the same in every class, and the radar shows a bright region of the same
size and kind of shape whatever lies under it; only where the bright returns fall on the optical
cover map does. Nuisances vary per tile: illumination gain, incidence-angle offset of the radar,
SAR speckle (multiplicative gamma noise on linear intensity, 4 looks), texture and sensor noise.

The pretraining scenes are mosaics of unlabelled tiles from the same generator (a random bright
cover each) on a UTM grid at 10 m with a real CRS and transform; one scene has a nodata strip, as
swath edges do. The labelled tiles for `omnimask eval` are separate files listed in a manifest.
Everything is deterministic, so the folder can be deleted and regenerated at any time.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from omnimask.data import default_data_dir, generate_once
from rasterio.crs import CRS
from rasterio.transform import from_origin

from omnimask_remote_sensing.geotiff import write_geotiff

COVERS = ("water", "vegetation", "bare_soil", "urban")
#: Sentinel-2 surface reflectance per cover, bands B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B11 B12.
S2_SIGNATURES = np.array(
    [
        [0.07, 0.06, 0.05, 0.03, 0.025, 0.02, 0.018, 0.015, 0.012, 0.010, 0.005, 0.003],
        [0.04, 0.05, 0.08, 0.04, 0.12, 0.30, 0.38, 0.42, 0.44, 0.40, 0.22, 0.10],
        [0.10, 0.12, 0.16, 0.20, 0.23, 0.26, 0.28, 0.30, 0.31, 0.30, 0.36, 0.30],
        [0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.20, 0.19, 0.22, 0.20],
    ]
)
#: Sentinel-1 backscatter (VV, VH) in dB of every cover but the bright one.
S1_DIM_DB = np.array([-14.0, -20.0])
S1_BRIGHT_DB = 8.0  # how much stronger the bright cover returns
S2_NODATA = 0
S1_NODATA = -9999.0
CRS_UTM33N = CRS.from_epsg(32633)
PIXEL_M = 10.0
LOOKS = 4
VERSION = "2"  # bump when the generator changes, so stale folders are regenerated

TILE = 32
#: correlation length (px) of the cover regions: regions span several 4 px patches
TILE_BLUR = 6.0
SCENES = 4
SCENE_TILES = 20  # scenes of 20 x 20 tiles (640 px): 1580 pretraining chips of 32 px
EVAL_CHIPS_PER_CLASS = 100
EVAL_TRAIN_PER_CLASS = 60


def _smooth_field(rng: np.random.Generator, size: int, blur: float) -> np.ndarray:
    """Gaussian-blurred white noise `[size, size]` (an FFT low-pass: no SciPy needed)."""
    noise = rng.standard_normal((size, size))
    freq = np.fft.fftfreq(size)
    kernel = np.exp(-2 * (np.pi * blur) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    return np.fft.ifft2(np.fft.fft2(noise) * kernel).real


def land_cover(rng: np.random.Generator, size: int, blur: float = TILE_BLUR) -> np.ndarray:
    """`[size, size]` cover map: the strongest of four smooth random fields wins each pixel.

    Per-cover offsets are nudged until each cover holds about a quarter of the map, so that
    cover areas (and with them band means) carry no information about the label.
    """
    fields = np.stack([_smooth_field(rng, size, blur) for _ in COVERS])
    fields /= fields.std(axis=(1, 2), keepdims=True)
    offsets = np.zeros((len(COVERS), 1, 1))
    for _ in range(30):
        area = np.bincount((fields + offsets).argmax(0).ravel(), minlength=len(COVERS))
        offsets -= 0.5 * (area / area.sum() - 1 / len(COVERS))[:, None, None]
    return (fields + offsets).argmax(axis=0)


def render(
    covers: np.ndarray, bright: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(S1 dB `[2, H, W]` float32, S2 reflectance x 10000 `[12, H, W]` uint16) of a cover map
    whose cover `bright` returns strongly to the radar.

    Per-tile nuisances: an illumination gain (0.7-1.3) on every optical band and an
    incidence-angle offset (+-3 dB) on the radar, on top of texture, noise and speckle.
    """
    size = covers.shape[0]
    texture = np.clip(1.0 + 0.75 * _smooth_field(rng, size, 1.0), 0.6, 1.4)
    reflectance = S2_SIGNATURES[covers].transpose(2, 0, 1) * texture * rng.uniform(0.7, 1.3)
    reflectance *= 1.0 + 0.03 * rng.standard_normal(reflectance.shape)
    s2 = np.clip(reflectance * 10000, 1, 65535).astype(np.uint16)
    decibels = S1_DIM_DB[:, None, None] + S1_BRIGHT_DB * (covers == bright) + rng.uniform(-3, 3)
    speckle = rng.gamma(shape=LOOKS, scale=1.0 / LOOKS, size=decibels.shape)
    s1 = (decibels + 10.0 * np.log10(speckle)).astype(np.float32)
    return s1, s2


def tile(rng: np.random.Generator, bright: int) -> tuple[np.ndarray, np.ndarray]:
    """One `TILE` px (S1, S2) tile whose label (bright cover) is `bright`."""
    return render(land_cover(rng, TILE), bright, rng)


def _write_pair(
    folder: Path, name: str, s1: np.ndarray, s2: np.ndarray, x0: float, y0: float
) -> None:
    transform = from_origin(x0, y0, PIXEL_M, PIXEL_M)
    write_geotiff(folder / "s1" / f"{name}.tif", s1, CRS_UTM33N, transform, S1_NODATA)
    write_geotiff(folder / "s2" / f"{name}.tif", s2, CRS_UTM33N, transform, S2_NODATA)


def _write_scenes(folder: Path, rng: np.random.Generator) -> None:
    """Pretraining scenes, paired by file name (`s1/scene_k.tif` with `s2/scene_k.tif`): each a
    mosaic of unlabelled tiles, the bright cover of each drawn at random."""
    for sensor in ("s1", "s2"):
        (folder / sensor).mkdir(parents=True)
    size = SCENE_TILES * TILE
    for index in range(SCENES):
        s1 = np.empty((len(S1_DIM_DB), size, size), np.float32)
        s2 = np.empty((S2_SIGNATURES.shape[1], size, size), np.uint16)
        for row in range(SCENE_TILES):
            for col in range(SCENE_TILES):
                window = np.s_[:, row * TILE : (row + 1) * TILE, col * TILE : (col + 1) * TILE]
                s1[window], s2[window] = tile(rng, int(rng.integers(len(COVERS))))
        if index == SCENES - 1:  # a swath edge: the first tile column holds no data
            s1[:, :, :TILE] = S1_NODATA
            s2[:, :, :TILE] = S2_NODATA
        x0, y0 = 400_000.0 + index * 10_000.0, 5_000_000.0
        _write_pair(folder, f"scene_{index:02d}", s1, s2, x0, y0)


def _write_labelled_chips(folder: Path, rng: np.random.Generator) -> None:
    """Labelled tiles for `omnimask eval`, listed in a manifest (label = the bright cover),
    `EVAL_TRAIN_PER_CLASS` of each class for training and the rest for testing."""
    for sensor in ("s1", "s2"):
        (folder / sensor).mkdir(parents=True)
    rows = []
    for index in range(EVAL_CHIPS_PER_CLASS):
        for label in range(len(COVERS)):
            s1, s2 = tile(rng, label)
            name = f"chip_{label}_{index:03d}"
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
    """The embedded data folder, generated on first use (`omnimask.data.generate_once`: staged
    and renamed, so concurrent processes never see a half-written folder)."""
    return generate_once(default_data_dir("remote_sensing") / f"v{VERSION}", generate)
