"""Datasets of CT volumes: NIfTI files (any folder layout) and the embedded phantoms."""

from __future__ import annotations

from pathlib import Path

import torch
from omnimask.data import check_data_path
from torch.utils.data import Dataset

from omnimask_medical.nifti import NIFTI_PATTERNS, CTConfig, center_crop, load_volume, random_crop
from omnimask_medical.phantoms import default_dataset


class CTVolumes(Dataset):
    """`{"volume": [1, S, S, S]}` crops of preprocessed volumes (random crops for pretraining,
    centred ones for evaluation), with `"label"` when labels are given."""

    def __init__(
        self, files: list[Path], ct: CTConfig, crop: int, *, random: bool = True,
        labels: list[int] | None = None,
    ) -> None:  # fmt: skip
        self.files, self.ct, self.crop, self.random, self.labels = files, ct, crop, random, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        volume = load_volume(self.files[index], self.ct)
        crop = random_crop(volume, self.crop) if self.random else center_crop(volume, self.crop)
        sample = {"volume": torch.from_numpy(crop).unsqueeze(0)}
        if self.labels is not None:
            sample["label"] = torch.tensor(self.labels[index])
        return sample


def pretraining_files(path: str | None) -> list[Path]:
    """NIfTI files under `path` (a file or a folder, searched recursively; cache folders are
    skipped), or the embedded phantoms' pretraining split."""
    root = Path(path) if path else default_dataset() / "pretrain"
    files = check_data_path(root, NIFTI_PATTERNS)
    return [f for f in files if ".omnimask-cache" not in f.parts]


def labelled_split(folder: Path) -> tuple[list[Path], list[int]]:
    """Files of `folder/<class>/...`, labelled by class folder in sorted order."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels = [], []
    for label, name in enumerate(classes):
        found = [
            f
            for f in check_data_path(folder / name, NIFTI_PATTERNS)
            if ".omnimask-cache" not in f.parts
        ]
        files += found
        labels += [label] * len(found)
    return files, labels


def labelled_datasets(path: str | None, ct: CTConfig, crop: int) -> tuple[CTVolumes, CTVolumes]:
    """(train, test) for `omnimask eval`: `path/train/<class>/*.nii.gz` and `path/test/...`, or the
    embedded phantoms (classes: `omnimask_medical.phantoms.CLASSES`)."""
    if path:
        root = Path(path)
        train_dir, test_dir = root / "train", root / "test"
    else:
        root = default_dataset()
        train_dir, test_dir = root / "eval_train", root / "eval_test"
    train, test = labelled_split(train_dir), labelled_split(test_dir)
    return (
        CTVolumes(train[0], ct, crop, random=False, labels=train[1]),
        CTVolumes(test[0], ct, crop, random=False, labels=test[1]),
    )
