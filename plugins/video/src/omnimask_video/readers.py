"""Reading clips from video files (PyAV) and from folders of frame images (Pillow).

A video file is indexed once per process by demuxing its packets, which reads timestamps and
keyframe flags without decoding a single frame. A clip then decodes only what it needs: it seeks
to the keyframe before each wanted frame (unless decoding on from the current position is
shorter) and stops at the last wanted frame. The index gives the exact frame count and every
timestamp, which is what variable-frame-rate files need, and what a header's frame count
(absent in WebM, wrong in some AVI) cannot give.

Every failure to read raises `BadSampleError` naming the file and the problem.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from omnimask.data import BadSampleError
from PIL import Image, UnidentifiedImageError

from omnimask_video.clips import ClipPlan, ShortClipError, plan_clip

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class CropBox:
    """Resize the source to (`width`, `height`), then keep `size`x`size` from (`left`, `top`)."""

    width: int
    height: int
    left: int
    top: int
    size: int

    @classmethod
    def choose(cls, source_width: int, source_height: int, size: int, random: bool) -> CropBox:
        """Short side scaled to `size`, then a random (training) or centred square crop."""
        scale = size / min(source_width, source_height)
        width = max(size, round(source_width * scale))
        height = max(size, round(source_height * scale))
        if random:
            left = int(torch.randint(0, width - size + 1, ()))
            top = int(torch.randint(0, height - size + 1, ()))
        else:
            left, top = (width - size) // 2, (height - size) // 2
        return cls(width, height, left, top, size)

    def crop(self, rgb: np.ndarray) -> np.ndarray:
        return rgb[self.top : self.top + self.size, self.left : self.left + self.size]


@dataclass
class Clip:
    """Decoded frames `[T, size, size, 3]` uint8, the source indices and the decode count."""

    frames: np.ndarray
    plan: ClipPlan
    decoded: int


@dataclass(frozen=True)
class StreamIndex:
    """Timestamps (sorted, in the stream's time base) and keyframe flags of every frame."""

    pts: np.ndarray
    keyframe: np.ndarray
    time_base: Fraction
    fps: float
    width: int
    height: int
    position: dict[int, int] = field(repr=False, compare=False, default_factory=dict)

    @property
    def times(self) -> np.ndarray:
        return (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)

    def keyframe_before(self, index: int) -> int:
        keys = np.flatnonzero(self.keyframe[: index + 1])
        return int(keys[-1]) if len(keys) else 0


@dataclass(frozen=True)
class Encoded:
    """A file's bytes held in memory (a shard record), named as the file was: readers take it
    where they take a path, and errors name the file it came from."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


def _open(path: Path | Encoded) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(path.data) if isinstance(path, Encoded) else str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise BadSampleError(path, f"not a readable video file ({error})") from None


def _video_stream(path: Path, container: av.container.InputContainer) -> av.video.VideoStream:
    if not container.streams.video:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise BadSampleError(path, f"has no video stream (streams: {kinds})")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"  # no frame threading: frames come out as soon as decoded
    stream.codec_context.thread_count = 1  # decoding runs in DataLoader workers, one core each
    return stream


def check_timestamps(path: Path, pts_sorted: np.ndarray) -> None:
    """Raise `BadSampleError` when frames share a timestamp: frames are found by timestamp, so
    such a stream (all zero, say) would hand back one frame where the sampler asked for
    another."""
    distinct = len(np.unique(pts_sorted))
    if distinct < len(pts_sorted):
        raise BadSampleError(
            path,
            f"{len(pts_sorted)} frames but {distinct} distinct timestamps: the stream's timing "
            "is broken (re-encode it, e.g. `ffmpeg -i IN -vf setpts=N/FRAME_RATE/TB OUT`)",
        )


def index_stream(path: Path) -> StreamIndex:
    """Demux (not decode) the first video stream: every packet's pts and keyframe flag."""
    with _open(path) as container:
        stream = _video_stream(path, container)
        pts, keys = [], []
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0 or stamp is None:
                    continue  # the demuxer's end-of-stream marker
                pts.append(stamp)
                keys.append(packet.is_keyframe)
        except av.error.FFmpegError as error:
            raise BadSampleError(path, f"corrupt video data ({error})") from None
        if not pts:
            raise BadSampleError(path, "video stream holds no frames")
        order = np.argsort(pts, kind="stable")
        pts_sorted = np.asarray(pts, dtype=np.int64)[order]
        check_timestamps(path, pts_sorted)
        keyframe = np.asarray(keys, dtype=bool)[order]
        keyframe[0] = True  # decoding always starts somewhere; seeking to 0 means the start
        time_base = stream.time_base or Fraction(1, 1)
        rate = stream.average_rate or stream.guessed_rate
        if rate is None or float(rate) <= 0:
            span = float((pts_sorted[-1] - pts_sorted[0]) * time_base)
            rate = (len(pts_sorted) - 1) / span if span > 0 else 1.0
        return StreamIndex(
            pts_sorted,
            keyframe,
            time_base,
            float(rate),
            stream.codec_context.width,
            stream.codec_context.height,
            {int(p): i for i, p in enumerate(pts_sorted)},
        )


def decode_frames(
    path: Path, index: StreamIndex, wanted: Sequence[int], box: CropBox
) -> tuple[dict[int, np.ndarray], int]:
    """Decode the frames `wanted` (source indices) -> ({index: RGB crop}, frames decoded)."""
    targets = sorted(set(int(i) for i in wanted))
    out: dict[int, np.ndarray] = {}
    decoded = 0
    with _open(path) as container:
        stream = _video_stream(path, container)
        frames = None
        position = -1  # index of the last decoded frame
        try:
            for target in targets:
                key = index.keyframe_before(target)
                if frames is None or key > position:
                    container.seek(
                        int(index.pts[key]), stream=stream, backward=True, any_frame=False
                    )
                    frames = container.decode(stream)
                for frame in frames:
                    decoded += 1
                    stamp = frame.pts if frame.pts is not None else frame.dts
                    position = (
                        index.position.get(int(stamp), position) if stamp is not None else position
                    )
                    if position == target:
                        rgb = frame.to_ndarray(
                            format="rgb24",
                            width=box.width,
                            height=box.height,
                            # one thread, like the decoder: swscale's default pool of one
                            # thread per core, set up for each frame, cost 5-500x the
                            # conversion itself in DataLoader workers on a busy machine
                            threads=1,
                        )
                        out[target] = box.crop(rgb)
                        break
                    if position > target:
                        raise BadSampleError(
                            path, f"seeking overshot frame {target} (landed on {position})"
                        )
                else:
                    raise BadSampleError(
                        path, f"truncated: frame {target} of {len(index.pts)} could not be decoded"
                    )
        except av.error.FFmpegError as error:
            raise BadSampleError(path, f"corrupt video data ({error})") from None
    return out, decoded


class VideoFileReader:
    """Clips from one video file; the stream index is built on first use and kept."""

    def __init__(self, path: str | os.PathLike[str] | Encoded) -> None:
        self.path = path if isinstance(path, Encoded) else Path(path)
        self._index: StreamIndex | None = None

    @property
    def index(self) -> StreamIndex:
        if self._index is None:
            self._index = index_stream(self.path)
        return self._index

    def __getstate__(self) -> dict:
        # DataLoader workers each build their own index rather than pickling arrays around.
        return {"path": self.path, "_index": None}

    def read(self, num_frames: int, stride: int, size: int, train: bool, short_clip: str) -> Clip:
        index = self.index
        try:
            plan = plan_clip(index.times, index.fps, num_frames, stride, train, short_clip)
        except ShortClipError as error:
            raise BadSampleError(self.path, str(error)) from None
        box = CropBox.choose(index.width, index.height, size, train)
        frames, decoded = decode_frames(self.path, index, plan.frames, box)
        return Clip(np.stack([frames[int(i)] for i in plan.frames]), plan, decoded)


class FrameFolderReader:
    """Clips from a folder of frame images, sorted by name; frames are read only when needed.

    A folder has no timestamps, so its frames count as one per nominal frame (fps 1).
    """

    def __init__(
        self, path: str | os.PathLike[str], frames: Sequence[Encoded] | None = None
    ) -> None:
        """The images in folder `path`, or `frames` read from it before (a shard record)."""
        self.path = Path(path)
        self.files: Sequence[Path | Encoded] = (
            frames
            if frames is not None
            else sorted(f for f in self.path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        )
        if not self.files:
            raise BadSampleError(self.path, "frame folder holds no images")

    def _load(self, file: Path | Encoded) -> Image.Image:
        try:
            with Image.open(io.BytesIO(file.data) if isinstance(file, Encoded) else file) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise BadSampleError(file, f"unreadable frame image ({error})") from None

    def read(self, num_frames: int, stride: int, size: int, train: bool, short_clip: str) -> Clip:
        times = np.arange(len(self.files), dtype=np.float64)
        try:
            plan = plan_clip(times, 1.0, num_frames, stride, train, short_clip)
        except ShortClipError as error:
            raise BadSampleError(self.path, str(error)) from None
        first = self._load(self.files[int(plan.frames[0])])
        box = CropBox.choose(first.width, first.height, size, train)
        cache: dict[int, np.ndarray] = {}
        for i in sorted(set(plan.frames.tolist())):
            image = first if i == int(plan.frames[0]) else self._load(self.files[i])
            if image.size != first.size:
                raise BadSampleError(
                    self.files[i], f"frame size {image.size} differs from {first.size}"
                )
            resized = image.resize((box.width, box.height), Image.Resampling.BILINEAR)
            cache[i] = box.crop(np.asarray(resized))
        return Clip(np.stack([cache[int(i)] for i in plan.frames]), plan, len(cache))


def open_source(path: Path) -> VideoFileReader | FrameFolderReader:
    return FrameFolderReader(path) if path.is_dir() else VideoFileReader(path)
