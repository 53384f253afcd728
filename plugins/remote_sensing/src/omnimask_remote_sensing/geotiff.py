"""Sentinel-1/2 GeoTIFF pairs: finding them, checking them, and cutting chips with windowed reads.

Pairs come from a manifest CSV (columns `s1`, `s2`, optional `label`, `split`; paths relative to
the CSV) or from file names: `<name>_s1.tif` beside `<name>_s2.tif`, or `s1/<name>.tif` beside
`s2/<name>.tif` (case-insensitive). A chip is a `rasterio.windows.Window` of a scene, read
without loading the scene; every problem raises `BadSampleError` naming the file.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from omnimask.data import BadSampleError, DataPathError, check_data_path
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

logger = logging.getLogger(__name__)

TIFF_PATTERNS = ("*.tif", "*.tiff", "*.TIF", "*.TIFF")
MANIFEST_NAME = "manifest.csv"


@dataclass(frozen=True)
class ScenePair:
    """One co-registered Sentinel-1 / Sentinel-2 scene pair (and its label, when labelled)."""

    s1: Path
    s2: Path
    label: int | None = None
    split: str | None = None


@dataclass(frozen=True)
class SceneInfo:
    """What the header of a checked pair says; both files share grid, CRS and extent."""

    width: int
    height: int
    crs: CRS
    transform: Affine
    s1_nodata: float | None
    s2_nodata: float | None
    s1_integer: bool
    s2_integer: bool


def read_manifest(csv_path: Path) -> list[ScenePair]:
    """Pairs listed in a manifest CSV; relative paths are taken from the CSV's folder."""
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"s1", "s2"} <= set(rows[0]):
        raise DataPathError(f"{csv_path}: a manifest needs the columns 's1' and 's2'")
    pairs = []
    for line, row in enumerate(rows, start=2):
        label = row.get("label")
        try:
            parsed_label = int(label) if label not in (None, "") else None
        except ValueError:
            raise DataPathError(f"{csv_path}:{line}: label {label!r} is not an integer") from None
        pairs.append(
            ScenePair(
                s1=csv_path.parent / row["s1"],
                s2=csv_path.parent / row["s2"],
                label=parsed_label,
                split=row.get("split") or None,
            )
        )
    return pairs


def _sensor_and_key(path: Path, root: Path) -> tuple[str, str] | None:
    """("s1" | "s2", pairing key) from `<key>_s1.tif` or `s1/<key>.tif`; None for other files."""
    relative = path.relative_to(root) if path.is_relative_to(root) else Path(path.name)
    stem = path.stem
    for sensor in ("s1", "s2"):
        if stem.lower().endswith(f"_{sensor}"):
            return sensor, str(relative.parent / stem[: -len(sensor) - 1])
        folders = [part.lower() for part in relative.parts[:-1]]
        if sensor in folders:
            index = folders.index(sensor)
            rest = [*relative.parts[:index], *relative.parts[index + 1 : -1], stem]
            return sensor, str(Path(*rest))
    return None


def find_pairs(
    path: str | Path, on_bad: str = "raise", skipped: list[str] | None = None
) -> list[ScenePair]:
    """Every S1/S2 pair under `path` (a manifest CSV, a folder with one, or a folder of TIFFs).
    A scene without its partner raises `BadSampleError`, or with `on_bad="skip"` is logged,
    left out and listed in `skipped`."""
    root = Path(path)
    if root.is_file() and root.suffix.lower() == ".csv":
        return read_manifest(root)
    if (root / MANIFEST_NAME).is_file():
        return read_manifest(root / MANIFEST_NAME)
    files = check_data_path(root, TIFF_PATTERNS)
    found: dict[str, dict[str, Path]] = {}
    for file in files:
        sensor_key = _sensor_and_key(file, root if root.is_dir() else root.parent)
        if sensor_key is not None:
            found.setdefault(sensor_key[1], {})[sensor_key[0]] = file
    pairs, lonely = [], []
    for key in sorted(found):
        sensors = found[key]
        if len(sensors) == 2:
            pairs.append(ScenePair(sensors["s1"], sensors["s2"]))
        else:
            lonely.extend(sensors.values())
    for file in lonely:
        error = BadSampleError(file, "has no matching S1/S2 partner (same name, other sensor)")
        if on_bad == "raise":
            raise error
        logger.warning("skipped scene: %s", error)
        if skipped is not None:
            skipped.append(str(error))
    if not pairs:
        raise DataPathError(
            f"{root} holds no S1/S2 pairs: name them <name>_s1.tif and <name>_s2.tif, put them in "
            f"s1/ and s2/ folders, or list them in {MANIFEST_NAME} (columns s1, s2)"
        )
    return pairs


def _open(path: Path) -> rasterio.DatasetReader:
    try:
        return rasterio.open(path)
    except (RasterioIOError, OSError) as error:
        raise BadSampleError(path, f"cannot be read as a GeoTIFF ({error})") from None


def inspect_pair(pair: ScenePair, s1_bands: int, s2_bands: int) -> SceneInfo:
    """Check a pair's headers: band counts, CRS, grid and extent; returns the shared geometry."""
    with _open(pair.s1) as s1, _open(pair.s2) as s2:
        for source, expected, what in ((s1, s1_bands, "S1"), (s2, s2_bands, "S2")):
            if source.count != expected:
                raise BadSampleError(
                    source.name, f"has {source.count} bands, expected {expected} for {what}"
                )
        for path, source in ((pair.s1, s1), (pair.s2, s2)):  # before comparing: name the file
            if source.crs is None:
                raise BadSampleError(path, "has no CRS: the pair cannot be checked for alignment")
        if s1.crs != s2.crs:
            raise BadSampleError(
                pair.s2, f"CRS {s2.crs} differs from {s1.crs} of its S1 partner {pair.s1}"
            )
        if (s1.width, s1.height) != (s2.width, s2.height) or not s1.transform.almost_equals(
            s2.transform
        ):
            raise BadSampleError(
                pair.s2,
                f"extent {tuple(s2.bounds)} ({s2.width}x{s2.height} px) differs from "
                f"{tuple(s1.bounds)} ({s1.width}x{s1.height} px) of its S1 partner {pair.s1}; "
                "the pair must be co-registered on one grid",
            )
        return SceneInfo(
            width=s1.width,
            height=s1.height,
            crs=s1.crs,
            transform=s1.transform,
            s1_nodata=s1.nodata,
            s2_nodata=s2.nodata,
            s1_integer=all(np.issubdtype(np.dtype(d), np.integer) for d in s1.dtypes),
            s2_integer=all(np.issubdtype(np.dtype(d), np.integer) for d in s2.dtypes),
        )


def check_dtype_kinds(pairs: list[ScenePair], infos: list[SceneInfo]) -> None:
    """All files of one sensor must be integer or all float.

    Sentinel-2 is stored as scaled integers (reflectance x 10000) or as float reflectance; a data
    set mixing both would be normalised with statistics of two scales at once.
    """
    for sensor in ("s1", "s2"):
        kinds = [getattr(info, f"{sensor}_integer") for info in infos]
        if len(set(kinds)) > 1:
            majority = kinds.count(True) >= kinds.count(False)
            odd = next(i for i, kind in enumerate(kinds) if kind != majority)
            name = "integer" if kinds[odd] else "float"
            other = "float" if kinds[odd] else "integer"
            raise BadSampleError(
                getattr(pairs[odd], sensor),
                f"has {name} pixels while the other {sensor.upper()} files are {other}; "
                "integer and float scenes use different scales, convert them to one",
            )


def chip_windows(info: SceneInfo, chip_size: int) -> list[Window]:
    """Non-overlapping `chip_size` windows tiling the scene row by row (the border remainder,
    narrower than a chip, is left out)."""
    if info.width < chip_size or info.height < chip_size:
        return []
    return [
        Window(col, row, chip_size, chip_size)
        for row in range(0, info.height - chip_size + 1, chip_size)
        for col in range(0, info.width - chip_size + 1, chip_size)
    ]


def _valid(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """`[H, W]` True where every band holds data (neither the nodata value nor NaN)."""
    valid = ~np.isnan(values).any(axis=0)
    if nodata is not None and not math.isnan(nodata):
        valid &= ~(values == nodata).any(axis=0)
    return valid


@dataclass
class Chip:
    """One chip as float32 arrays and where it lies on Earth."""

    s1: np.ndarray  # [C1, H, W], dB
    s2: np.ndarray  # [C2, H, W]
    valid: np.ndarray  # [H, W] bool, data in every band of both sensors
    crs: CRS
    transform: Affine


def read_chip(pair: ScenePair, info: SceneInfo, window: Window, s1_linear: bool) -> Chip:
    """Windowed read of one chip of both sensors (never the whole scene).

    `s1_linear` says the S1 file holds linear backscatter, converted here to dB as CROMA expects.
    """
    arrays = []
    for path in (pair.s1, pair.s2):
        with _open(path) as source:
            try:
                arrays.append(source.read(window=window, out_dtype="float32"))
            except RasterioIOError as error:
                # rasterio's own message is "Read failed. See previous exception for details.";
                # GDAL's reason (e.g. "TIFFReadEncodedStrip() failed") is the chained one.
                raise BadSampleError(
                    path,
                    f"the {window.width}x{window.height} px window at column {window.col_off}, "
                    f"row {window.row_off} cannot be read ({error.__cause__ or error})",
                ) from None
    s1, s2 = arrays
    valid = _valid(s1, info.s1_nodata) & _valid(s2, info.s2_nodata)
    if s1_linear:
        with np.errstate(divide="ignore", invalid="ignore"):
            s1 = 10.0 * np.log10(np.maximum(s1, 1e-10))
    return Chip(s1, s2, valid, info.crs, window_transform(window, info.transform))


def write_geotiff(
    path: Path, array: np.ndarray, crs: CRS, transform: Affine, nodata: float | None = None
) -> Path:
    """Write `[C, H, W]` as a GeoTIFF on the given grid, e.g. a model output back onto its chip."""
    count, height, width = array.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=array.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as target:
        target.write(array)
    return path
