"""Datasets of clips: video files and frame folders found under a path, or the embedded clips.

Items are `{"video": float [C, T, H, W]}` standardised with the configured mean/std (plus `label`
in labelled sets). Decoding happens in `__getitem__`, so it runs in the DataLoader's workers;
each worker builds its own file indices. Random clip starts and crops use torch's global RNG,
which the engine seeds per sample, so a sample's clip does not depend on the worker loading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omnimask.data import BadSampleError, DataPathError, check_data_path
from torch import Tensor
from torch.utils.data import Dataset

from omnimask_video.readers import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    Encoded,
    FrameFolderReader,
    VideoFileReader,
    open_source,
)
from omnimask_video.synthetic import embedded_data_dir

PATTERNS = tuple(f"*{suffix}" for suffix in VIDEO_SUFFIXES + IMAGE_SUFFIXES)
PATTERNS = PATTERNS + tuple(p.upper() for p in PATTERNS)


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a source and turned into tensors."""

    num_frames: int
    stride: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    short_clip: str = "loop"


def find_sources(path: str | Path) -> list[Path]:
    """Video files, and folders of frame images (one clip each), under `path`, sorted."""
    files = check_data_path(path, PATTERNS)
    videos = [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
    folders = sorted({f.parent for f in files if f.suffix.lower() in IMAGE_SUFFIXES})
    return sorted(videos + folders)


class ClipDataset(Dataset):
    """One clip per source per epoch: random start and crop when `train`, centred otherwise."""

    def __init__(
        self,
        sources: Sequence[Path],
        spec: ClipSpec,
        train: bool,
        labels: Sequence[int] | None = None,
    ) -> None:
        self.readers: list[VideoFileReader | FrameFolderReader] = [open_source(s) for s in sources]
        self.spec = spec
        self.train = train
        self.labels = labels

    def __len__(self) -> int:
        return len(self.readers)

    #: the record layout in shards (`omnimask.shards`); bump when it changes
    record_kind = "video.encoded_clip/1"

    def record(self, index: int) -> dict[str, Any]:
        """The source's encoded bytes: the video file, or a frame folder's images end to end
        (`frame_sizes` cuts them apart). Shards stay the size of the data; frames are decoded
        at access, as from the files."""
        reader = self.readers[index]
        paths = reader.files if isinstance(reader, FrameFolderReader) else [reader.path]
        try:
            blobs = [Path(path).read_bytes() for path in paths]
        except OSError as error:
            raise BadSampleError(reader.path, f"cannot read ({error.strerror or error})") from None
        record: dict[str, Any] = {"source": str(reader.path), "data": b"".join(blobs)}
        if isinstance(reader, FrameFolderReader):
            record["frame_names"] = "\n".join(Path(path).name for path in paths)
            record["frame_sizes"] = np.asarray([len(blob) for blob in blobs], dtype=np.int64)
        if self.labels is not None:
            record["label"] = self.labels[index]
        return record

    def sample(self, record: dict[str, Any]) -> dict[str, Tensor]:
        return clip_sample(record, self.spec, self.train)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        """`sample(record(index))`, from the file through its reader: the stream index is
        built once per worker, not at every access."""
        label = self.labels[index] if self.labels is not None else None
        return clip_item(self.readers[index], self.spec, self.train, label)


def clip_item(
    reader: VideoFileReader | FrameFolderReader,
    spec: ClipSpec,
    train: bool,
    label: int | None,
) -> dict[str, Tensor]:
    """One clip of `reader`'s source as the training (or evaluation) sample."""
    clip = reader.read(spec.num_frames, spec.stride, spec.size, train, spec.short_clip)
    item = {"video": to_tensor(clip.frames, spec.mean, spec.std)}
    if label is not None:
        item["label"] = torch.tensor(label)
    return item


def clip_sample(record: dict[str, Any], spec: ClipSpec, train: bool) -> dict[str, Tensor]:
    """A clip's record (`ClipDataset.record`) -> the training sample."""
    source, data = record["source"], record["data"]
    reader: VideoFileReader | FrameFolderReader
    if "frame_sizes" in record:
        ends = np.cumsum(record["frame_sizes"]).tolist()
        names = record["frame_names"].split("\n")
        frames = [
            Encoded(f"{source}/{name}", data[start:end])
            for name, start, end in zip(names, [0, *ends[:-1]], ends)
        ]
        reader = FrameFolderReader(source, frames)
    else:
        reader = VideoFileReader(Encoded(source, data))
    return clip_item(reader, spec, train, record.get("label"))


def to_tensor(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 `[T, H, W, C]` -> standardised float `[C, T, H, W]`."""
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(255.0)
    shape = (-1, 1, 1, 1)
    return (video - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def pretraining_sources(path: str | None) -> list[Path]:
    return (
        find_sources(path) if path is not None else find_sources(embedded_data_dir() / "pretrain")
    )


def labelled_sources(
    path: str | None,
) -> tuple[tuple[list[Path], list[int]], tuple[list[Path], list[int]], list[str]]:
    """((train sources, labels), (test sources, labels), class names).

    Classes are the folders directly under `path` (or under its `train/` and `test/` when it has
    both); without such a split every fourth clip of each class is held out for testing. The
    embedded data ships its own labelled split (by motion).
    """
    root = embedded_data_dir() / "labelled" if path is None else Path(path)
    if (root / "train").is_dir() and (root / "test").is_dir():
        train, test = _by_class(root / "train"), _by_class(root / "test")
    else:
        everything = _by_class(root)
        train = {
            name: [s for i, s in enumerate(items) if i % 4 != 3]
            for name, items in everything.items()
        }
        test = {
            name: [s for i, s in enumerate(items) if i % 4 == 3]
            for name, items in everything.items()
        }
    names = sorted(set(train) | set(test))
    if len(names) < 2:
        raise DataPathError(f"labelled data {root} needs at least two class folders, found {names}")

    def flatten(split: dict[str, list[Path]]) -> tuple[list[Path], list[int]]:
        pairs = [(s, names.index(name)) for name in names for s in split.get(name, [])]
        return [s for s, _ in pairs], [label for _, label in pairs]

    return flatten(train), flatten(test), names


def _by_class(root: Path) -> dict[str, list[Path]]:
    sources = find_sources(root)
    classes: dict[str, list[Path]] = {}
    for source in sources:
        relative = source.relative_to(root)
        if len(relative.parts) < 2:
            raise DataPathError(f"{source} is not inside a class folder of {root}")
        classes.setdefault(relative.parts[0], []).append(source)
    return classes
