"""Segmentation of organ label maps: Dice against scikit-learn's F1 (the same formula for one
label), label maps that stay on their image's grid through reorientation, resampling and the
body crop, bad label maps named, label folders kept out of pretraining, and the CLI protocols."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omnimask.cli import main
from omnimask.data import BadSampleError, DataPathError
from omnimask_medical.data import (
    CTSegmentation,
    image_label_pairs,
    pretraining_files,
    segmentation_splits,
)
from omnimask_medical.nifti import CTConfig, preprocess_label_map, window
from omnimask_medical.phantoms import BONE, LIVER, LUNG, ORGANS, default_dataset
from omnimask_medical.segmentation import dice_scores, soft_dice_loss
from sklearn.metrics import f1_score

CT = CTConfig(spacing=(4.0, 4.0, 4.0), cache=False)


def test_dice_equals_f1_of_each_label_and_is_nan_where_absent() -> None:
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (3, 6, 6, 6), generator=generator)
    prediction = torch.where(torch.rand(3, 6, 6, 6, generator=generator) < 0.7, truth, 2)
    prediction[1][prediction[1] == 3] = 1  # label 3 never predicted in volume 1
    scores = dice_scores(prediction, truth, num_classes=5)
    for volume in range(3):
        t, p = truth[volume].flatten().numpy(), prediction[volume].flatten().numpy()
        for label in range(1, 4):
            expected = f1_score(t == label, p == label)
            assert scores[volume, label - 1].item() == pytest.approx(expected)
        assert math.isnan(scores[volume, 3].item())  # label 4: in neither


def test_soft_dice_loss_vanishes_on_a_confident_right_answer() -> None:
    truth = torch.randint(0, 3, (2, 4, 4, 4))
    right = 50.0 * torch.nn.functional.one_hot(truth, 3).movedim(-1, 1).float()
    assert soft_dice_loss(right, truth).item() < 1e-6
    assert soft_dice_loss(-right, truth).item() > 0.9


@pytest.fixture(scope="module")
def pair() -> tuple[Path, Path]:
    return image_label_pairs(default_dataset() / "seg_train")[0]


def test_label_maps_stay_on_the_grid_of_their_image(pair: tuple[Path, Path]) -> None:
    """After reorientation (the files are stored LPS), resampling and the body crop, each organ
    label sits on voxels of that organ's intensity."""
    image, labels = pair
    sample = CTSegmentation([pair], CT, 32)[0]
    volume, organs = sample["volume"][0], sample["segmentation"]
    assert volume.shape == organs.shape == (32, 32, 32)
    assert set(organs.unique().tolist()) <= set(range(len(ORGANS)))

    def windowed(hu: float) -> float:
        return float(window(np.array([hu]), *CT.window)[0])

    for organ, hu, tolerance in (
        ("liver", LIVER, 0.06),
        ("lung", LUNG, 0.06),
        ("spine", BONE, 0.3),
    ):
        inside = organs == ORGANS.index(organ)
        if inside.sum() > 20:  # the organ is in this crop
            assert abs(volume[inside].median().item() - windowed(hu)) < tolerance, organ
    assert volume[organs == 0].median() < windowed(LIVER)  # background: air, fat, soft tissue
    full = preprocess_label_map(image, labels, CT)
    assert full.dtype == np.uint8 and full.max() == len(ORGANS) - 1


def test_a_label_map_on_another_grid_or_not_of_labels_is_named(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    image, labels = pair
    loaded = nib.load(labels)
    shifted = loaded.affine.copy()
    shifted[:3, 3] += 10.0
    moved = tmp_path / "moved.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(loaded.dataobj), shifted), str(moved))
    with pytest.raises(BadSampleError, match=r"moved\.nii\.gz: is not on the grid of its image"):
        preprocess_label_map(image, moved, CT)
    fractional = tmp_path / "fractional.nii.gz"
    data = np.asarray(loaded.dataobj).astype(np.float32) + 0.5
    nib.save(nib.Nifti1Image(data, loaded.affine), str(fractional))
    with pytest.raises(BadSampleError, match=r"fractional\.nii\.gz: is not a label map"):
        preprocess_label_map(image, fractional, CT)


def test_label_maps_are_never_pretraining_images(tmp_path: Path) -> None:
    shutil.copytree(default_dataset() / "seg_test", tmp_path / "scans")
    files = pretraining_files(str(tmp_path / "scans"))
    assert files and all("labels" not in f.parts for f in files)
    with pytest.raises(DataPathError, match="label maps only"):
        pretraining_files(str(tmp_path / "scans" / "labels"))


def test_user_folders_pair_images_and_labels_by_name(tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(default_dataset() / "seg_test", root)
    train, test = segmentation_splits(str(root))
    assert len(train) + len(test) == 8 and len(test) == 1
    assert all(image.name == labels.name for image, labels in train + test)
    next((root / "labels").iterdir()).unlink()
    with pytest.raises(DataPathError, match="has no label map of the same name"):
        segmentation_splits(str(root))


def test_cli_segmentation_protocols_score_both_sides(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fast = ["train.steps=2", "train.batch_size=4", "train.progress=false"]
    assert main(["pretrain", "medical/mambamim", "--run-dir", str(run), *fast]) == 0
    protocols = "segmentation_probe,segmentation_finetune"
    assert main(["eval", str(run), "--protocol", protocols, "segmentation.steps=3"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["segmentation"]["steps"] == 3
    for side in ("pretrained", "random_init"):
        for protocol in protocols.split(","):
            dice = result[side][f"{protocol}/dice_mean"]
            assert 0.0 <= dice <= 1.0
            assert {f"{protocol}/dice/{organ}" for organ in ORGANS[1:]} <= set(result[side])
