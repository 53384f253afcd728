"""The NIfTI pipeline: reorientation, resampling, windowing, cache and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.testing import data_path
from omnimask.data import BadSampleError
from omnimask_medical.nifti import (
    CTConfig,
    cache_path,
    load_volume,
    preprocess,
    random_crop,
    read_canonical,
    resample,
    window,
)
from omnimask_medical.phantoms import SHAPE, SPACING, default_dataset

NIBABEL_FILES = ["anatomical.nii", "standard.nii.gz", "reoriented_anat_moved.nii"]


@pytest.mark.parametrize("name", NIBABEL_FILES)
def test_reorientation_matches_nibabel_canonical(name: str) -> None:
    path = Path(data_path) / name
    canonical = nib.as_closest_canonical(nib.load(path))
    volume, spacing = read_canonical(path)
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(volume, canonical.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(spacing, canonical.header.get_zooms()[:3])


def test_lps_phantoms_come_out_in_ras_order() -> None:
    path = next((default_dataset() / "pretrain" / "normal").glob("*.nii.gz"))
    image = nib.load(path)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    volume, spacing = read_canonical(path)
    np.testing.assert_array_equal(volume, np.asarray(image.dataobj)[::-1, ::-1, :])
    np.testing.assert_allclose(spacing, SPACING)
    # The spine is posterior: low y indices in RAS order.
    bone = np.argwhere(volume > 500)
    assert bone[:, 1].mean() < SHAPE[1] / 2


def test_resampling_reaches_the_target_spacing() -> None:
    volume = np.random.default_rng(0).normal(size=(40, 30, 20)).astype(np.float32)
    out = resample(volume, np.array([1.0, 2.0, 4.0]), (2.0, 2.0, 2.0))
    assert out.shape == (20, 30, 40)
    constant = resample(np.full((10, 10, 10), 7.0, np.float32), np.ones(3), (0.5, 0.5, 0.5))
    np.testing.assert_allclose(constant, 7.0)


def test_window_formula() -> None:
    hu = np.array([-1000.0, -175.0, 37.5, 250.0, 1500.0], dtype=np.float32)
    np.testing.assert_allclose(window(hu, -175.0, 250.0), [0.0, 0.0, 0.5, 1.0, 1.0])


def test_cache_returns_the_same_volume_and_follows_changes(tmp_path: Path) -> None:
    source = next((default_dataset() / "pretrain" / "normal").glob("*.nii.gz"))
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(source.read_bytes())
    config = CTConfig(spacing=(4.0, 4.0, 4.0), cache_dir=str(tmp_path / "cache"))
    first = load_volume(path, config)
    assert isinstance(first, np.ndarray) and cache_path(path, config).exists()
    cached = load_volume(path, config)
    assert isinstance(cached, np.memmap)
    np.testing.assert_array_equal(cached, preprocess(path, config))
    other = CTConfig(spacing=(4.0, 4.0, 4.0), window=(-1000.0, 1000.0), cache_dir=config.cache_dir)
    assert cache_path(path, other) != cache_path(path, config)  # settings are in the key
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file "changed"
    assert not cache_path(path, config).exists()


def test_small_volumes_are_padded_to_the_crop() -> None:
    volume = np.ones((10, 40, 5), dtype=np.float32)
    crop = random_crop(volume, 16, torch.Generator().manual_seed(0))
    assert crop.shape == (16, 16, 16)
    # 5 -> 16 along z: 5 zeros before, 6 after (10 -> 16 along x: 3 and 3), centred.
    assert (crop[3:13, :, 5:10] == 1).all()
    assert crop[:, :, :5].sum() == 0 and crop[:, :, 10:].sum() == 0 and crop[:3].sum() == 0


def save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    four_d = save(tmp_path / "fmri.nii.gz", np.zeros((8, 8, 8, 3), np.float32))
    with pytest.raises(BadSampleError, match="fmri.nii.gz: 4-D volume with 3 channels"):
        read_canonical(four_d)
    assert read_canonical(four_d, channel=2)[0].shape == (8, 8, 8)

    corrupt = tmp_path / "corrupt.nii.gz"
    noise = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    good = save(tmp_path / "good.nii.gz", noise).read_bytes()
    corrupt.write_bytes(good[: len(good) // 2])  # the header is intact, the data cut short
    with pytest.raises(BadSampleError, match="corrupt.nii.gz: unreadable"):
        read_canonical(corrupt)
    not_gzip = tmp_path / "plain.nii.gz"
    not_gzip.write_bytes(b"this is not a NIfTI file at all" * 20)
    with pytest.raises(BadSampleError, match="plain.nii.gz: not a NIfTI file"):
        read_canonical(not_gzip)

    nan = np.zeros((8, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(BadSampleError, match="nan.nii.gz: 1 NaN or infinite voxels"):
        read_canonical(save(tmp_path / "nan.nii.gz", nan))

    mri = save(tmp_path / "mri.nii.gz", np.random.default_rng(0).uniform(0, 1, (8, 8, 8)))
    with pytest.warns(UserWarning, match="mri.nii.gz: intensities span"):
        preprocess(mri, CTConfig(cache=False))


def test_a_label_map_among_the_images_is_a_bad_sample(tmp_path: Path) -> None:
    organs = np.zeros((24, 24, 24), np.uint8)
    organs[4:12, 4:12, 4:12], organs[14:20, 6:18, 10:14] = 1, 3
    labels = save(tmp_path / "case_001_seg.nii.gz", organs)
    with pytest.raises(BadSampleError, match=r"case_001_seg.nii.gz: looks like a label map \(3"):
        preprocess(labels, CTConfig(cache=False))
    ct = np.random.default_rng(0).integers(-1000, 400, (24, 24, 24)).astype(np.int16)
    assert preprocess(save(tmp_path / "ct.nii.gz", ct), CTConfig(cache=False)).size > 0


def test_the_range_warning_survives_the_cache(tmp_path: Path) -> None:
    mri = save(tmp_path / "mri.nii.gz", np.random.default_rng(0).uniform(0, 1, (8, 8, 8)))
    config = CTConfig(cache=True, cache_dir=str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="mri.nii.gz: intensities span"):
        load_volume(mri, config)
    with pytest.warns(UserWarning, match="mri.nii.gz: intensities span"):  # read from the cache
        cached = load_volume(mri, config)
    assert isinstance(cached, np.memmap)
