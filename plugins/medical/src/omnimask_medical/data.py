"""Datasets of CT volumes: NIfTI files (any folder layout) and the embedded phantoms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omnimask.data import DataPathError, check_data_path
from torch.utils.data import Dataset

from omnimask_medical.nifti import (
    NIFTI_PATTERNS,
    CTConfig,
    center_crop,
    load_label_map,
    load_volume,
    random_crop,
)
from omnimask_medical.phantoms import default_dataset


def decoding_settings(ct: CTConfig) -> dict[str, Any]:
    """The `data.ct` values that change a preprocessed volume (not where it is cached)."""
    return {
        f"data.ct.{name}": getattr(ct, name)
        for name in ("spacing", "window", "foreground_hu", "channel", "modality")
    }


class CTVolumes(Dataset):
    """`{"volume": [1, S, S, S]}` crops of preprocessed volumes (random crops for pretraining,
    centred ones for evaluation), with `"label"` when labels are given."""

    #: the record layout in shards (`omnimask.shards`); bump when it changes
    record_kind = "medical.volume/1"

    def __init__(
        self, files: list[Path], ct: CTConfig, crop: int, *, random: bool = True,
        labels: list[int] | None = None,
    ) -> None:  # fmt: skip
        self.files, self.ct, self.crop, self.random, self.labels = files, ct, crop, random, labels

    def __len__(self) -> int:
        return len(self.files)

    def record(self, index: int) -> dict[str, Any]:
        """The whole volume, reoriented, resampled and windowed (`load_volume`): what a shard
        keeps, so the crop is still drawn afresh at each access."""
        record: dict[str, Any] = {"volume": np.asarray(load_volume(self.files[index], self.ct))}
        if self.labels is not None:
            record["label"] = self.labels[index]
        return record

    def shard_attributes(self) -> dict[str, Any]:
        return decoding_settings(self.ct)

    def sample(self, record: dict[str, Any]) -> dict[str, torch.Tensor]:
        volume = record["volume"]
        crop = random_crop(volume, self.crop) if self.random else center_crop(volume, self.crop)
        sample = {"volume": torch.from_numpy(crop).unsqueeze(0)}
        if "label" in record:
            sample["label"] = torch.tensor(record["label"])
        return sample

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.sample(self.record(index))


#: Folders whose NIfTI files are label maps, never training images (`images/` + `labels/`).
LABEL_FOLDERS = ("labels", "labelsTr", "labelsTs")


def pretraining_files(path: str | None) -> list[Path]:
    """NIfTI files under `path` (a file or a folder, searched recursively; cache folders and
    label-map folders, `LABEL_FOLDERS`, are skipped), or the embedded phantoms' pretraining
    split."""
    root = Path(path) if path else default_dataset() / "pretrain"
    files = check_data_path(root, NIFTI_PATTERNS)
    skipped = {".omnimask-cache", *LABEL_FOLDERS}
    folders = lambda f: {root.name, *f.relative_to(root).parts[:-1]}  # noqa: E731
    images = [f for f in files if not skipped & folders(f)]
    if not images:
        raise DataPathError(f"data path {root} holds label maps only, no images to pretrain on")
    return images


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


class CTSegmentation(Dataset):
    """`{"volume": [1, S, S, S], "segmentation": [S, S, S]}`: centred crops of each image and
    of its label map, on the same preprocessed grid (label maps padded with background)."""

    def __init__(self, pairs: list[tuple[Path, Path]], ct: CTConfig, crop: int) -> None:
        self.pairs, self.ct, self.crop = pairs, ct, crop

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, labels = self.pairs[index]
        volume = center_crop(load_volume(image, self.ct), self.crop)
        organs = center_crop(load_label_map(image, labels, self.ct), self.crop)
        return {
            "volume": torch.from_numpy(volume).unsqueeze(0),
            "segmentation": torch.from_numpy(organs.astype("int64")),
        }


def image_label_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """(image, label map) pairs of `folder/images/*` and `folder/labels/*`, matched by name."""
    images, labels = folder / "images", folder / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise DataPathError(f"{folder} needs images/ and labels/ folders of NIfTI files")
    by_name = {_stem(f): f for f in check_data_path(labels, NIFTI_PATTERNS)}
    pairs = []
    for image in check_data_path(images, NIFTI_PATTERNS):
        if ".omnimask-cache" in image.parts:
            continue
        if _stem(image) not in by_name:
            raise DataPathError(f"{image} has no label map of the same name in {labels}")
        pairs.append((image, by_name[_stem(image)]))
    return pairs


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def segmentation_splits(
    path: str | None,
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """(train, test) image/label-map pairs: `path/train/` and `path/test/` (each with `images/`
    and `labels/`), or `path/images/` + `path/labels/` with every fifth pair held out for
    testing (the last one when there are fewer than five), or the embedded phantoms'
    `seg_train` / `seg_test`."""
    if not path:
        root = default_dataset()
        return image_label_pairs(root / "seg_train"), image_label_pairs(root / "seg_test")
    root = Path(path)
    if (root / "train").is_dir() and (root / "test").is_dir():
        return image_label_pairs(root / "train"), image_label_pairs(root / "test")
    pairs = image_label_pairs(root)
    test = pairs[4::5] or pairs[-1:]
    train = [p for p in pairs if p not in test]
    if not train:
        raise DataPathError(f"{root} needs at least 2 image/label pairs (one to test on)")
    return train, test
