"""Image data: folders of JPEG/PNG/WebP files, WebDataset tar shards, and the embedded sets.

Every sample is decoded inside `__getitem__`, so a DataLoader with workers decodes in parallel.
Grayscale, palette and RGBA images are converted to RGB; a file that cannot be decoded raises
`BadSampleError` naming it, which the engine turns into the run's bad-sample policy.

The labelled set for `omnimask eval` is scikit-learn's bundled 8x8 digits, upscaled; the embedded
default pretraining set (no download) is the train split of those digits without labels, written
as real PNG and WebP files, so pretraining sees the evaluation's domain (an earlier set of
photograph crops never did: see the plugin README, "Does pretraining help?").
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from omnimask.data import (
    CACHE_FOLDER,
    BadSampleError,
    DataPathError,
    check_data_path,
    default_data_dir,
    generate_once,
    write_atomically,
)
from omnimask.shards import open_shard_set
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

logger = logging.getLogger("omnimask")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
IMAGE_PATTERNS = tuple(f"*{s}" for s in IMAGE_SUFFIXES) + tuple(
    f"*{s.upper()}" for s in IMAGE_SUFFIXES
)
SHARD_PATTERNS = ("*.tar",)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: bump when the generator changes, so an old cache is not reused.
DEFAULT_DATA_VERSION = "v2"  # v1: 160 crops of scikit-image photographs


@dataclass
class ImageConfig:
    """Input size and augmentation (torchvision v2)."""

    size: int = 224
    min_scale: float = 0.2  # RandomResizedCrop scale range (min_scale, 1)
    flip: bool = True


def decode_image(data: bytes, source: str) -> Image.Image:
    """Bytes -> RGB PIL image; any decoding problem becomes a `BadSampleError` naming `source`."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, not later inside a transform
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError...)
        reason = f"cannot decode image ({type(error).__name__}: {error})"
        raise BadSampleError(source, reason) from error
    if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
        # Composite on black rather than dropping alpha, so transparent pixels do not show
        # whatever colour the file happened to store under them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def train_transform(config: ImageConfig) -> Callable[[Image.Image], Tensor]:
    """Random resized crop (+ flip), then ImageNet-normalised float tensor `[3, S, S]`.

    The crop is resized to `size` whatever the source size, so an image smaller than the crop is
    upsampled rather than rejected.
    """
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(config.size, scale=(config.min_scale, 1.0), antialias=True),
    ]
    if config.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def eval_transform(size: int) -> Callable[[Image.Image], Tensor]:
    """Deterministic resize to `size` x `size`, normalised as in training."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((size, size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def denormalize(images: Tensor) -> Tensor:
    """ImageNet-normalised `[..., 3, H, W]` -> RGB in [0, 1] (for figures)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (images * std + mean).clamp(0, 1)


class EncodedImages(Dataset):
    """What every image set shares: a record is the image file's bytes as stored (PNG, JPEG,
    WebP), so a shard of it is as small as the file; `sample` decodes and transforms it (the
    random crop and flip of pretraining), under the engine's per-sample seed."""

    #: the record layout in shards (`omnimask.shards`); bump when it changes
    record_kind = "vision.encoded_image/1"

    def __init__(self, transform: Callable[[Image.Image], Tensor]) -> None:
        self.transform = transform

    def sample(self, record: dict[str, Any]) -> dict[str, Tensor]:
        sample = {"image": self.transform(decode_image(record["image"], record["source"]))}
        if "label" in record:
            sample["label"] = torch.tensor(record["label"])
        return sample

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.sample(self.record(index))  # type: ignore[attr-defined]  # subclasses read


class ImageFileDataset(EncodedImages):
    """Image files -> `{"image": [3, S, S]}` (plus `"label"` when labels are given)."""

    def __init__(
        self,
        files: list[Path],
        transform: Callable[[Image.Image], Tensor],
        labels: list[int] | None = None,
    ) -> None:
        super().__init__(transform)
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def record(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        try:
            data = path.read_bytes()
        except OSError as error:
            raise BadSampleError(path, f"cannot read file ({error.strerror or error})") from error
        record: dict[str, Any] = {"image": data, "source": str(path)}
        if self.labels is not None:
            record["label"] = self.labels[index]
        return record


#: bump when the index layout changes, so older indices are rebuilt rather than misread.
TAR_INDEX_FORMAT = 1


def tar_index_path(shard: Path) -> Path:
    """Where the member index of `shard` is kept: `.omnimask-cache/<shard>.index.json` in the
    shard's folder (the medical plugin's cache folder), shared by every process and node that
    reads the shard."""
    return shard.parent / CACHE_FOLDER / f"{shard.name}.index.json"


class ShardIndex(NamedTuple):
    """The regular-file members of a tar shard, one column per field: a few lists load and
    keep far lighter than one tuple per member, which Python's cycle collector walks again and
    again at the size of a real corpus."""

    names: list[str]
    offsets: list[int]  # where each member's data starts, in bytes
    sizes: list[int]


def scan_tar(shard: Path) -> ShardIndex:
    """The members of `shard`, every tar header read: what the saved index spares later starts."""
    index = ShardIndex([], [], [])
    with tarfile.open(shard) as archive:
        for member in archive:
            if member.isfile():
                index.names.append(member.name)
                index.offsets.append(member.offset_data)
                index.sizes.append(member.size)
    return index


@dataclass
class TarIndexReport:
    """What happened to the shard indices while a dataset was built: one log line per kind,
    not one per shard."""

    stale: int = 0
    damaged: list[str] = field(default_factory=list)
    unwritable: list[str] = field(default_factory=list)

    def log(self) -> None:
        if self.stale:
            logger.info("re-indexed %d tar shard(s) changed since they were indexed", self.stale)
        if self.damaged:
            logger.warning(
                "rebuilt %d unreadable tar shard index(es), e.g. %s",
                len(self.damaged),
                self.damaged[0],
            )
        if self.unwritable:
            logger.warning(
                "cannot save the index of %d tar shard(s), e.g. %s: kept in memory for this run, "
                "so the next start reads every header of these shards again",
                len(self.unwritable),
                self.unwritable[0],
            )


def shard_members(shard: Path, report: TarIndexReport) -> ShardIndex:
    """The members of `shard`, from its saved index when that was written for this very file
    (same resolved path, size and modification time), else read from the tar and saved.

    A damaged index is rebuilt; one that cannot be saved (a read-only data folder) costs the
    next start a re-read, never this run. The index is written through a renamed temporary
    file, so processes that start together each write a whole one and none reads half of one.
    """
    stat = shard.stat()  # before the scan: a shard rewritten meanwhile is re-indexed next time
    key = {"path": str(shard.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    path = tar_index_path(shard)
    try:
        saved = json.loads(path.read_bytes())
        if saved["format"] == TAR_INDEX_FORMAT and {k: saved[k] for k in key} == key:
            index = ShardIndex(saved["names"], saved["offsets"], saved["sizes"])
            if len(index.names) == len(index.offsets) == len(index.sizes):
                return index
            raise ValueError("columns of different lengths")
        report.stale += 1
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as error:
        report.damaged.append(f"{path} ({type(error).__name__}: {error})")
    index = scan_tar(shard)
    record = {"format": TAR_INDEX_FORMAT, **key, **index._asdict()}
    try:
        write_atomically(path, json.dumps(record, separators=(",", ":")).encode())
    except OSError as error:
        report.unwritable.append(f"{path} ({error.strerror or error})")
    return index


class TarShardDataset(EncodedImages):
    """WebDataset tar shards (`key.jpg`, `key.png`, `key.webp` members) with random access.

    The engine needs a map-style dataset (resumable index order, per-sample seeds), while the
    `webdataset` library streams and keeps no index; so each shard's members (name, offset,
    size) are listed once with `tarfile` and saved beside it (`shard_members`), and each sample
    is read by seeking to its bytes. A later start, or another process, reads the saved index
    instead of every tar header. Files are opened lazily per worker process.
    """

    def __init__(self, shards: list[Path], transform: Callable[[Image.Image], Tensor]) -> None:
        super().__init__(transform)
        self.shards = list(shards)
        # Per sample: its shard's position in `shards`, member name, data offset and size;
        # arrays and a list of strings, not tuples, so a million samples stay cheap to hold and
        # to send to DataLoader workers.
        shard_of, self.names, offsets, sizes = [], [], [], []
        report = TarIndexReport()
        for number, shard in enumerate(self.shards):
            try:
                index = shard_members(shard, report)
            except (tarfile.TarError, OSError) as error:
                raise DataPathError(f"{shard}: not a readable tar shard ({error})") from error
            images = [i for i, n in enumerate(index.names) if n.lower().endswith(IMAGE_SUFFIXES)]
            shard_of += [number] * len(images)
            self.names += [index.names[i] for i in images]
            offsets += [index.offsets[i] for i in images]
            sizes += [index.sizes[i] for i in images]
        report.log()
        if not self.names:
            names = ", ".join(str(s) for s in shards[:3])
            raise DataPathError(f"tar shards {names} hold no {'/'.join(IMAGE_SUFFIXES)} images")
        self.shard_of = np.asarray(shard_of, dtype=np.int32)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)

    def member(self, index: int) -> tuple[Path, str, int, int]:
        """(shard, member name, data offset, size) of sample `index`."""
        shard = self.shards[self.shard_of[index]]
        return shard, self.names[index], int(self.offsets[index]), int(self.sizes[index])

    def __len__(self) -> int:
        return len(self.names)

    def record(self, index: int) -> dict[str, Any]:
        shard, name, offset, size = self.member(index)
        source = f"{shard}:{name}"
        try:
            with open(shard, "rb") as handle:
                handle.seek(offset)
                data = handle.read(size)
        except OSError as error:
            raise BadSampleError(source, f"cannot read member ({error})") from error
        if len(data) != size:
            raise BadSampleError(source, f"truncated: {len(data)} of {size} bytes")
        return {"image": data, "source": source}


def pretraining_dataset(
    path: str | None, image: ImageConfig, shard_cache: str | None = None
) -> Dataset:
    """The unlabelled set at `path` (image folder, a folder/file of .tar shards, or a shard set
    of `omnimask prepare --out`), or the embedded default images."""
    transform = train_transform(image)
    shards = open_shard_set(path, EncodedImages.record_kind, shard_cache)
    if shards is not None:  # written by `omnimask prepare --out`
        return shards.dataset(EncodedImages(transform).sample)
    root = Path(path) if path is not None else ensure_default_images()
    if root.is_file() and root.suffix == ".tar" or root.is_dir() and any(root.rglob("*.tar")):
        return TarShardDataset(check_data_path(root, SHARD_PATTERNS), transform)
    return ImageFileDataset(check_data_path(root, IMAGE_PATTERNS), transform)


def labelled_datasets(path: str | None, size: int) -> tuple[Dataset, Dataset]:
    """(train, test) for `omnimask eval`: `root/<class>/*.png` folders (every fifth file of a
    class is held out), or the embedded digits when `path` is None."""
    transform = eval_transform(size)
    if path is None:
        return DigitsDataset("train", transform), DigitsDataset("test", transform)
    root = Path(path)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DataPathError(f"labelled data {root} needs one sub-folder of images per class")
    splits: dict[str, tuple[list[Path], list[int]]] = {"train": ([], []), "test": ([], [])}
    for label, name in enumerate(classes):
        for position, file in enumerate(check_data_path(root / name, IMAGE_PATTERNS)):
            files, labels = splits["test" if position % 5 == 4 else "train"]
            files.append(file)
            labels.append(label)
    train = ImageFileDataset(splits["train"][0], transform, splits["train"][1])
    test = ImageFileDataset(splits["test"][0], transform, splits["test"][1])
    return train, test


class DigitsDataset(Dataset):
    """scikit-learn's bundled handwritten digits (8x8, ten classes), as RGB images.

    The first 1200 images are the train split, the rest (597) the test split.
    """

    SPLIT_AT = 1200

    def __init__(self, split: str, transform: Callable[[Image.Image], Tensor]) -> None:
        self.images = self.split_images(split)
        self.labels = self.split_labels(split)
        self.transform = transform

    @classmethod
    def _part(cls, split: str) -> slice:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return slice(None, cls.SPLIT_AT) if split == "train" else slice(cls.SPLIT_AT, None)

    @classmethod
    def split_images(cls, split: str) -> np.ndarray:
        """uint8 `[n, 8, 8]` grey images of `split`."""
        from sklearn.datasets import load_digits

        return (load_digits().images[cls._part(split)] * (255.0 / 16.0)).astype(np.uint8)

    @classmethod
    def split_labels(cls, split: str) -> np.ndarray:
        from sklearn.datasets import load_digits

        return load_digits().target[cls._part(split)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        image = Image.fromarray(self.images[index]).convert("RGB")
        return {"image": self.transform(image), "label": torch.tensor(int(self.labels[index]))}


def ensure_default_images() -> Path:
    """The embedded default (unlabelled) image folder, generated on first use.

    The train split of the labelled set (`DigitsDataset("train")`, 1200 digits) without its
    labels, each image the same 8x8 pixels the evaluation reads, saved alternately as PNG and
    lossless WebP. Pretraining thus sees the evaluation's domain but never its labels or its
    test images (the usual self-supervised protocol: pretrain on the train images, probe on
    frozen features). Written by `omnimask.data.generate_once` (staged and renamed), so
    concurrent processes never see a half-written set.
    """
    target = default_data_dir("vision") / f"digits-{DEFAULT_DATA_VERSION}"
    return generate_once(target, _write_default_images)


def _write_default_images(folder: Path) -> None:
    images = DigitsDataset.split_images("train")
    for index, pixels in enumerate(images):
        image = Image.fromarray(pixels).convert("RGB")
        if index % 2:
            image.save(folder / f"{index:04d}.webp", format="WEBP", lossless=True)
        else:
            image.save(folder / f"{index:04d}.png", format="PNG")
