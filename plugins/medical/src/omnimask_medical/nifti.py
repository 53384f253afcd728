"""NIfTI CT (and MR) volumes -> model-ready arrays: read, reorient, resample, normalise, crop,
cache.

Every volume goes through the same steps (`prepare`):

1. read with nibabel (`.nii`, `.nii.gz`); a 4-D file needs `channel` (or has a single one);
2. reorient to the closest canonical (RAS+) orientation: axis 0 runs left to right, 1 posterior
   to anterior, 2 inferior to superior, whatever orientation the scanner wrote;
3. choose its modality (`choose_modality`): `modality="auto"` takes a volume with air (values
   at or below -500) as CT in Hounsfield units and any other as MR, in arbitrary units;
4. resample to the target spacing in millimetres (trilinear);
5. crop to the body: the bounding box of voxels above `foreground_hu` (CT) or above the body
   threshold (MR, `body_threshold`);
6. CT: clip to the Hounsfield window and scale to [0, 1]; MR: clip to the 0.5th-99.5th
   percentiles of the body's voxels and scale to [0, 1], so the background stays at 0.

The result is cached as a `.npy` file keyed by the file's path, size and modification time and
by the preprocessing settings, and read back memory-mapped: decoding gzip and resampling happen
once per file, not once per epoch. The modality chosen, with its reason, and the warnings given
are kept beside it (`<cache>.json`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from omnimask.config import ConfigError
from omnimask.data import BadSampleError

NIFTI_PATTERNS = ("*.nii", "*.nii.gz")
#: `data.ct.modality`: `auto` decides per volume (`choose_modality`), `ct` and `mr` force one.
MODALITIES = ("auto", "ct", "mr")
#: Hounsfield units at or below this are air (about -1000) or outside the scanner's field of
#: view (-1024 to -3024): values no MR or normalised volume holds.
AIR_HU = -500.0
#: MR intensities are clipped to these percentiles of the body's voxels, then scaled to [0, 1].
MR_PERCENTILES = (0.5, 99.5)


@dataclass
class CTConfig:
    """How volumes are preprocessed (`data.ct.*`)."""

    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)  # target voxel size, mm (x, y, z)
    window: tuple[float, float] = (-175.0, 250.0)  # Hounsfield units mapped to [0, 1]
    foreground_hu: float = -500.0  # voxels above this are body (for the foreground crop)
    channel: int | None = None  # which volume of a 4-D file to use; None: refuse 4-D files
    modality: str = "auto"  # auto: per volume, from its intensities; ct or mr: every volume
    cache: bool = True
    cache_dir: str | None = None  # default: a `.omnimask-cache` folder beside each file's folder

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ConfigError(
                f"data.ct.modality={self.modality!r} is out of range: it must be one of "
                f"{', '.join(MODALITIES)}"
            )


@dataclass(frozen=True)
class Modality:
    """How a volume is normalised (`name`: "ct" or "mr") and why; kept with its cache entry."""

    name: str
    reason: str


class Prepared(NamedTuple):
    """A model-ready array (a volume, or a label map on its image's grid) and the modality its
    image was normalised as."""

    array: np.ndarray
    modality: Modality


def read_canonical(path: Path, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 volume `[X, Y, Z]` in RAS+ orientation, voxel spacing in mm `[3]`)."""
    volume, spacing, _ = read_canonical_with_affine(path, channel)
    return volume, spacing


def read_canonical_with_affine(
    path: Path, channel: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`read_canonical` and the RAS+ affine (voxel -> mm), to check that two files share a grid."""
    try:
        image = nib.load(str(path))
        if len(image.shape) == 4:
            image = _one_channel(image, path, channel)
        elif len(image.shape) != 3:
            raise BadSampleError(path, f"expected a 3-D volume, got shape {image.shape}")
        image = nib.as_closest_canonical(image)
        volume = np.asarray(image.get_fdata(dtype=np.float32))
    except BadSampleError:
        raise
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as error:
        raise BadSampleError(
            path, f"unreadable NIfTI file ({type(error).__name__}: {error})"
        ) from error
    except nib.filebasedimages.ImageFileError as error:
        raise BadSampleError(path, f"not a NIfTI file ({error})") from error
    spacing = np.asarray(image.header.get_zooms()[:3], dtype=np.float64)
    if not np.isfinite(volume).all():
        bad = int((~np.isfinite(volume)).sum())
        raise BadSampleError(path, f"{bad} NaN or infinite voxels")
    return volume, spacing, np.asarray(image.affine, dtype=np.float64)


def _one_channel(image: nib.Nifti1Image, path: Path, channel: int | None) -> nib.Nifti1Image:
    count = image.shape[3]
    if count == 1:
        channel = 0
    if channel is None:
        raise BadSampleError(
            path, f"4-D volume with {count} channels; choose one with data.ct.channel=N"
        )
    if not 0 <= channel < count:
        raise BadSampleError(path, f"data.ct.channel={channel} but the file has {count} channels")
    return image.slicer[..., channel]


def resample(
    volume: np.ndarray, spacing: np.ndarray, target: tuple[float, ...], mode: str = "trilinear"
) -> np.ndarray:
    """Resampling from `spacing` to `target` mm per voxel (at least one voxel): trilinear for
    intensities, `nearest-exact` for label maps (voxel centres map as trilinear's do)."""
    shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(volume.shape, spacing, target))
    if shape == volume.shape:
        return volume
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    corners = {"align_corners": False} if mode == "trilinear" else {}
    return F.interpolate(tensor, size=shape, mode=mode, **corners)[0, 0].numpy()


def foreground_box(volume: np.ndarray, threshold: float) -> tuple[slice, ...]:
    """The bounding box of voxels above `threshold` (the whole volume when there are none)."""
    inside = np.argwhere(volume > threshold)
    if len(inside) == 0:
        return tuple(slice(0, n) for n in volume.shape)
    low, high = inside.min(0), inside.max(0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def foreground_crop(volume: np.ndarray, threshold: float) -> np.ndarray:
    """The bounding box of voxels above `threshold` (the whole volume when there are none)."""
    return volume[foreground_box(volume, threshold)]


def window(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip Hounsfield units to [low, high] and scale linearly to [0, 1]."""
    return ((np.clip(volume, low, high) - low) / (high - low)).astype(np.float32)


def warn_if_not_ct(volume: np.ndarray, path: Path) -> None:
    """CT holds air near -1000 HU and tissue around 0-100 HU; other ranges (MR, PET, an already
    normalised volume) normalised as CT go through the same window, but the user should know."""
    low, high = float(volume.min()), float(volume.max())
    if low > AIR_HU or high < 0 or high > 10000:
        warnings.warn(
            f"{path}: intensities span [{low:.4g}, {high:.4g}], not a CT range in Hounsfield units "
            "(air ~ -1000, soft tissue ~ 40); windowing may discard everything",
            stacklevel=2,
        )


def choose_modality(volume: np.ndarray, setting: str, path: Path) -> Modality:
    """The modality `volume` is normalised as. `setting` "ct" or "mr" decides; "auto" decides
    by the intensities: CT when some voxels are air (at or below `AIR_HU`: every CT has air
    around or inside the body, or a padding value below -1000, and no MR does) and some are
    tissue (at least 0 HU), MR otherwise, with a warning naming the file, as an MR windowed as
    CT would be near-white. The NIfTI header is not used: it has no modality field, and its
    free-text `descrip` is not written the same way by every converter."""
    if setting != "auto":
        return Modality(setting, f"data.ct.modality={setting}")
    low, high = float(volume.min()), float(volume.max())
    if low <= AIR_HU and high >= 0:
        return Modality("ct", f"air at or below {AIR_HU:g} HU (minimum {low:.4g})")
    reason = (
        f"intensities span [{low:.4g}, {high:.4g}], not a CT range in Hounsfield units (no air "
        f"at or below {AIR_HU:g})"
    )
    warnings.warn(
        f"{path}: {reason}: normalised as MR, clipped to the {MR_PERCENTILES[0]:g}-"
        f"{MR_PERCENTILES[1]:g}th percentiles of the body and scaled to [0, 1] "
        "(data.ct.modality=ct windows it as CT)",
        stacklevel=2,
    )
    return Modality("mr", reason)


def body_threshold(volume: np.ndarray, modality: Modality, foreground_hu: float) -> float:
    """Voxels above this are body: `foreground_hu` for CT; for MR, whose units are arbitrary,
    FSL BET's robust threshold, 10% of the way from the 2nd to the 98th percentile, which sits
    above the background's noise and below the tissue in any MR contrast with a dark
    background."""
    if modality.name == "ct":
        return foreground_hu
    low, high = np.percentile(volume, (2, 98))
    return float(low + 0.1 * (high - low))


def normalise_mr(volume: np.ndarray, threshold: float) -> np.ndarray:
    """Clip to the `MR_PERCENTILES` of the body's voxels (those above `threshold`; all voxels
    when none is) and scale to [0, 1]: the background, below the body, lands at 0 as CT's air
    does, and the few brightest voxels (vessels, fat) do not squeeze the rest into a narrow
    range."""
    body = volume[volume > threshold]
    low, high = np.percentile(body if body.size else volume, MR_PERCENTILES)
    return window(volume, float(low), max(float(high), float(low) + 1e-6))


#: at most this many distinct non-negative integer values (on a strided sample) make a label map
LABEL_MAP_VALUES = 32


def check_not_label_map(volume: np.ndarray, path: Path) -> None:
    """Raise `BadSampleError` for a label map (a few non-negative integers: organ ids) found
    among the images: windowed as CT it would train as a near-black volume. Under
    `data.on_bad_sample=skip` it is left out and counted. A CT has hundreds of distinct values
    in any sample of its voxels, so a strided sample decides without sorting the volume."""
    sample = volume.ravel()[:: max(1, volume.size // 200_000)]
    values = np.unique(sample)
    if len(values) <= LABEL_MAP_VALUES and values.min() >= 0 and np.all(values == np.round(values)):
        raise BadSampleError(
            path,
            f"looks like a label map ({len(values)} integer values, {values.min():g} to "
            f"{values.max():g}), not an image: put label maps in a `labels/` folder",
        )


def prepare(path: Path, config: CTConfig) -> Prepared:
    """The model-ready volume of one file (see the module docstring), float32 in [0, 1], and
    the modality it was normalised as."""
    volume, spacing = read_canonical(path, config.channel)
    check_not_label_map(volume, path)
    modality = choose_modality(volume, config.modality, path)
    if modality.name == "ct":
        warn_if_not_ct(volume, path)
    volume = resample(volume, spacing, tuple(config.spacing))
    threshold = body_threshold(volume, modality, config.foreground_hu)
    volume = foreground_crop(volume, threshold)
    if modality.name == "mr":
        return Prepared(normalise_mr(volume, threshold), modality)
    return Prepared(window(volume, *config.window), modality)


def preprocess(path: Path, config: CTConfig) -> np.ndarray:
    """`prepare(path, config)`'s volume."""
    return prepare(path, config).array


def preprocess_label_map(
    image_path: Path, label_path: Path, config: CTConfig, modality: Modality | None = None
) -> np.ndarray:
    """The label map of `image_path` on the grid `preprocess(image_path)` gives: the same
    reorientation, resampling (nearest neighbour) and body crop (found on the image, as
    `modality` finds it: the image's cached decision; chosen again when None), as uint8 class
    indices. A label map on another grid than its image, or not of small non-negative integers,
    is a `BadSampleError` naming the label file."""
    image, spacing, affine = read_canonical_with_affine(image_path, config.channel)
    if modality is None:
        with warnings.catch_warnings():  # the image's own load gives them
            warnings.simplefilter("ignore")
            modality = choose_modality(image, config.modality, image_path)
    labels, _, label_affine = read_canonical_with_affine(label_path)
    if labels.shape != image.shape:
        raise BadSampleError(
            label_path,
            f"is not on the grid of its image {image_path.name}: shape {labels.shape}, "
            f"the image's {image.shape}",
        )
    if not np.allclose(label_affine, affine, atol=1e-3):
        raise BadSampleError(
            label_path,
            f"is not on the grid of its image {image_path.name}: its affine differs "
            f"(origin {label_affine[:3, 3].round(2).tolist()} mm, the image's "
            f"{affine[:3, 3].round(2).tolist()})",
        )
    if labels.min() < 0 or labels.max() > 255 or not np.array_equal(labels, np.round(labels)):
        raise BadSampleError(
            label_path, "is not a label map: expected integer class indices in [0, 255]"
        )
    image = resample(image, spacing, tuple(config.spacing))
    labels = resample(labels, spacing, tuple(config.spacing), mode="nearest-exact")
    box = foreground_box(image, body_threshold(image, modality, config.foreground_hu))
    return labels[box].astype(np.uint8)


def cache_path(path: Path, config: CTConfig, tag: str = "", *extra: Path) -> Path:
    """The cache file of `path` preprocessed under `config` (`tag` and `extra` files, e.g. the
    label map's image, are part of the key)."""
    files = [path, *extra]
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    settings = {k: v for k, v in asdict(config).items() if k not in ("cache", "cache_dir")}
    key = json.dumps([stats, settings, tag], default=list)
    digest = hashlib.sha1(key.encode()).hexdigest()[:20]
    folder = Path(config.cache_dir) if config.cache_dir else path.parent / ".omnimask-cache"
    return folder / f"{path.name.split('.')[0]}-{tag}{digest}.npy"


def _through_cache(cached: Path, compute: Callable[[], Prepared]) -> Prepared:
    """`compute()`, saved at `cached` the first time and read back memory-mapped after. The
    modality chosen (and why) and the warnings `compute` gave (an MR found under `auto`, a range
    that is not CT) are kept beside it, in `<cache>.json`, and the warnings given again on every
    read: a cached volume is what a fresh one would be, and warns like it."""
    notes = cached.with_name(f"{cached.name}.json")
    if cached.exists():
        try:
            array = np.load(cached, mmap_mode="r")
            record = json.loads(notes.read_text())
            modality = Modality(record["modality"], record["reason"])
            lines = record["warnings"]
        except (OSError, ValueError, KeyError, TypeError):
            cached.unlink(missing_ok=True)  # a damaged cache entry is rebuilt
        else:
            for line in lines:
                warnings.warn(line, stacklevel=3)
            return Prepared(array, modality)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = compute()
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=3)
    cached.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "modality": prepared.modality.name,
        "reason": prepared.modality.reason,
        "warnings": [str(w.message) for w in caught],
    }
    notes.write_text(json.dumps(record))  # written before the array: a cache hit finds it
    handle, temporary = tempfile.mkstemp(dir=cached.parent, suffix=".npy.tmp")
    with os.fdopen(handle, "wb") as file:
        np.save(file, prepared.array)
    os.replace(temporary, cached)  # atomic: concurrent workers never read half a file
    return prepared


def load_prepared(path: Path, config: CTConfig) -> Prepared:
    """`prepare(path)`, through the cache when `config.cache` (memory-mapped, read-only)."""
    if not config.cache:
        return prepare(path, config)
    return _through_cache(cache_path(path, config), lambda: prepare(path, config))


def load_volume(path: Path, config: CTConfig) -> np.ndarray:
    """`load_prepared(path)`'s volume."""
    return load_prepared(path, config).array


def load_label_map(image_path: Path, label_path: Path, config: CTConfig) -> np.ndarray:
    """`preprocess_label_map`, through the cache when `config.cache`, cropped as the image's
    cache entry was (its modality is in the label map's key)."""
    if not config.cache:
        return preprocess_label_map(image_path, label_path, config)
    with warnings.catch_warnings():  # the image's own load gives them
        warnings.simplefilter("ignore")
        modality = load_prepared(image_path, config).modality
    compute = lambda: Prepared(  # noqa: E731
        preprocess_label_map(image_path, label_path, config, modality), modality
    )
    tag = f"labels-{modality.name}-"
    return _through_cache(cache_path(label_path, config, tag, image_path), compute).array


def random_crop(
    volume: np.ndarray, size: int, generator: torch.Generator | None = None
) -> np.ndarray:
    """A `size`^3 crop at a random position; smaller volumes are padded with 0 (the window's
    lower bound, MR's background) evenly on both sides first. Without a generator, torch's
    default one is used, which the engine seeds per sample."""
    pads = [max(0, size - n) for n in volume.shape]
    if any(pads):
        volume = np.pad(np.asarray(volume), [(p // 2, p - p // 2) for p in pads])
    starts = [int(torch.randint(0, n - size + 1, (1,), generator=generator)) for n in volume.shape]
    return np.array(volume[tuple(slice(s, s + size) for s in starts)], dtype=np.float32)


def center_crop(volume: np.ndarray, size: int) -> np.ndarray:
    pads = [max(0, size - n) for n in volume.shape]
    if any(pads):
        volume = np.pad(np.asarray(volume), [(p // 2, p - p // 2) for p in pads])
    starts = [(n - size) // 2 for n in volume.shape]
    return np.array(volume[tuple(slice(s, s + size) for s in starts)], dtype=np.float32)
