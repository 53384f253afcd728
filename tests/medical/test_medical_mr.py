"""MR volumes among the CT: found by their intensities (or `data.ct.modality`) and normalised as
MR, on the body's percentiles, instead of through the Hounsfield window."""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from omnimask.config import ConfigError, apply_overrides
from omnimask_medical.config import mambamim_demo
from omnimask_medical.nifti import (
    MODALITIES,
    CTConfig,
    Modality,
    cache_path,
    foreground_crop,
    load_label_map,
    load_prepared,
    load_volume,
    prepare,
    preprocess,
    read_canonical,
    resample,
    window,
)
from omnimask_medical.phantoms import default_dataset

SHAPE = (40, 36, 32)


def mr_volume(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a T1-like MR volume in arbitrary units, its body mask): an ellipsoid touching every
    face of the grid (so the body's bounding box is the whole volume) of muscle (~400), fat
    (~900) and a little fluid (~150), in a dark background of Rician-like noise."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[(np.arange(n) + 0.5) / n * 2 - 1 for n in SHAPE], indexing="ij")
    radius = np.sqrt(sum(a**2 for a in axes))
    body = radius <= 1.0
    volume = np.abs(rng.normal(0, 8, SHAPE))  # background: the magnitude of complex noise
    tissue = np.where(radius > 0.8, 900.0, 400.0)  # subcutaneous fat around muscle
    tissue[radius < 0.15] = 150.0  # fluid
    volume[body] = tissue[body] + rng.normal(0, 20, int(body.sum()))
    return volume.astype(np.float32), body


def save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_an_mr_volume_is_not_clipped_by_the_ct_window(tmp_path: Path) -> None:
    volume, body = mr_volume()
    path = save(tmp_path / "t1.nii.gz", volume)
    with pytest.warns(UserWarning, match="t1.nii.gz: intensities span"):
        out = preprocess(path, CTConfig(spacing=(1.0, 1.0, 1.0), cache=False))
    assert out.shape == body.shape  # no resampling, and the body's box is the whole grid
    assert (out[body] >= 1.0).mean() < 0.01  # the CT window clips almost all of it
    assert (out[~body] == out.min()).all()  # the background is the darkest value
    assert out[body].mean() > 0.2


def test_ct_is_windowed_exactly_as_before(tmp_path: Path) -> None:
    path = next((default_dataset() / "pretrain" / "normal").glob("*.nii.gz"))
    config = CTConfig(spacing=(4.0, 4.0, 4.0), cache=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a CT under auto warns of nothing
        prepared = prepare(path, config)
    assert prepared.modality.name == "ct" and "air" in prepared.modality.reason
    volume, spacing = read_canonical(path)
    volume = foreground_crop(resample(volume, spacing, config.spacing), config.foreground_hu)
    np.testing.assert_array_equal(prepared.array, window(volume, *config.window))
    forced = CTConfig(spacing=(4.0, 4.0, 4.0), modality="ct", cache=False)
    np.testing.assert_array_equal(preprocess(path, forced), prepared.array)


def test_the_modality_setting_decides_and_is_range_checked(tmp_path: Path) -> None:
    volume, body = mr_volume()
    path = save(tmp_path / "t1.nii.gz", volume)
    spacing = (1.0, 1.0, 1.0)
    with pytest.warns(UserWarning, match="t1.nii.gz: intensities span .* windowing may discard"):
        as_ct = preprocess(path, CTConfig(spacing=spacing, modality="ct", cache=False))
    assert (as_ct[body] >= 1.0).mean() > 0.3  # what `ct` asks for: the window, as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for, so nothing to warn of
        as_mr = prepare(path, CTConfig(spacing=spacing, modality="mr", cache=False))
    assert as_mr.modality == Modality("mr", "data.ct.modality=mr")
    assert (as_mr.array[body] >= 1.0).mean() < 0.01
    with pytest.raises(ConfigError, match="data.ct.modality='xray' is out of range: it must be"):
        apply_overrides(mambamim_demo(), ["data.ct.modality=xray"])
    assert apply_overrides(mambamim_demo(), ["data.ct.modality=mr"]).data.ct.modality == "mr"


def test_the_decision_is_cached_with_the_volume_and_warned_once_per_read(tmp_path: Path) -> None:
    volume, _ = mr_volume()
    path = save(tmp_path / "t1.nii.gz", volume)
    config = CTConfig(spacing=(2.0, 2.0, 2.0), cache_dir=str(tmp_path / "cache"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = load_prepared(path, config)
        cached = load_prepared(path, config)
    assert isinstance(cached.array, np.memmap) and cached.modality == fresh.modality
    assert fresh.modality.name == "mr" and "no air" in fresh.modality.reason
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and messages[0] == messages[1]  # once fresh, once from the cache
    assert "t1.nii.gz: intensities span" in messages[0] and "normalised as MR" in messages[0]
    np.testing.assert_array_equal(cached.array, fresh.array)
    keys = {cache_path(path, CTConfig(modality=m, cache_dir=config.cache_dir)) for m in MODALITIES}
    assert len(keys) == 3  # the setting is in the key
    sidecar = cache_path(path, config).with_name(cache_path(path, config).name + ".json")
    sidecar.unlink()  # a cache entry without its decision is rebuilt
    with pytest.warns(UserWarning, match="normalised as MR"):
        rebuilt = load_prepared(path, config)
    assert not isinstance(rebuilt.array, np.memmap) and sidecar.exists()


def test_an_mr_label_map_is_cropped_as_its_image(tmp_path: Path) -> None:
    volume, body = mr_volume()
    padded = np.zeros((60, 50, 44), np.float32)  # background around the body: a crop to find
    padded[10:50, 7:43, 6:38] = volume
    organs = np.zeros(padded.shape, np.uint8)
    organs[10:50, 7:43, 6:38][body] = 1
    image = save(
        tmp_path / "t1.nii.gz",
        padded + np.abs(np.random.default_rng(1).normal(0, 8, padded.shape)).astype(np.float32),
    )
    labels = save(tmp_path / "t1_seg.nii.gz", organs)
    for cache in (False, True):
        config = CTConfig(spacing=(1.0, 1.0, 1.0), cache=cache, cache_dir=str(tmp_path / "c"))
        with pytest.warns(UserWarning, match="normalised as MR"):
            volume_out = load_volume(image, config)
        cropped = load_label_map(image, labels, config)
        assert volume_out.shape == cropped.shape == body.shape
        assert (volume_out[cropped == 0] == 0).all()  # the background is dark
