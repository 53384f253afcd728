"""The embedded default data: short clips of a moving shape, rendered in code, encoded to MP4.

Each clip shows one shape (square, disc or triangle) of a random colour on a graded background
doing one of five motions, which is its label for `omnimask eval`: moving right, left, down, up,
or spinning in place. Telling them apart needs the temporal dimension, which is what a video
encoder should learn and an image encoder could not. Clips are H.264 (with B-frames and a short
GOP, so seeking and frame reordering are exercised) written by PyAV, in the same file format
users bring.
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
from omnimask.data import default_data_dir, generate_once
from PIL import Image, ImageDraw

MOTIONS = ("right", "left", "down", "up", "spin")
SHAPES = ("square", "disc", "triangle")
VERSION = "v4"  # bump when the generator changes, so stale caches are not reused
FRAMES, SIZE, FPS = 24, 64, 12
SPLITS = {"pretrain": (100, 0), "labelled/train": (35, 1), "labelled/test": (20, 2)}


def render_clip(
    motion: str, rng: np.random.Generator, frames: int = FRAMES, size: int = SIZE
) -> np.ndarray:
    """`[frames, size, size, 3]` uint8: one shape doing `motion`."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = tuple(int(c) for c in rng.integers(90, 256, 3))
    radius = size * rng.uniform(0.12, 0.18)
    speed = rng.uniform(0.8, 1.4) * (size - 2.5 * radius) / frames
    low, high = 1.25 * radius, size - 1.25 * radius - speed * frames
    start = rng.uniform(low, max(low, high), 2)
    direction = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1), "spin": (0, 0)}[
        motion
    ]
    if direction[0] < 0:
        start[0] = size - start[0]
    if direction[1] < 0:
        start[1] = size - start[1]
    if motion == "spin":
        start = rng.uniform(size / 2 - 4, size / 2 + 4, 2)
    spin = rng.choice([-1, 1]) * rng.uniform(0.15, 0.3) if motion == "spin" else 0.0
    angle0 = rng.uniform(0, 2 * math.pi)
    background = np.linspace(rng.integers(0, 60), rng.integers(0, 60), size, dtype=np.float32)
    base = np.broadcast_to(background[:, None, None], (size, size, 3)).astype(np.uint8)
    clip = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        centre = start + speed * t * np.asarray(direction, dtype=np.float64)
        image = Image.fromarray(base.copy())
        _draw(ImageDraw.Draw(image), shape, centre, radius, angle0 + spin * t, colour)
        clip[t] = np.asarray(image)
    return clip


def _draw(
    draw: ImageDraw.ImageDraw,
    shape: str,
    centre: np.ndarray,
    radius: float,
    angle: float,
    colour: tuple[int, ...],
) -> None:
    x, y = float(centre[0]), float(centre[1])
    if shape == "disc":
        # A disc looks the same at every angle; a notch makes its spin visible.
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
        tip = (x + radius * math.cos(angle), y + radius * math.sin(angle))
        draw.line([(x, y), tip], fill=(0, 0, 0), width=3)
        return
    corners = 4 if shape == "square" else 3
    points = [
        (
            x + radius * math.cos(angle + 2 * math.pi * k / corners),
            y + radius * math.sin(angle + 2 * math.pi * k / corners),
        )
        for k in range(corners)
    ]
    draw.polygon(points, fill=colour)


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int = FPS,
    codec: str = "libx264",
    gop: int = 8,
    pts: list[int] | None = None,
) -> None:
    """Encode RGB frames `[T, H, W, 3]` to `path` with PyAV (container chosen by suffix).

    `pts` (in 1/`fps * 100` seconds) writes a variable-frame-rate stream, for tests.
    """
    with av.open(str(path), mode="w") as container:
        # Keyframes exactly every `gop` frames: x264 would add more at scene cuts.
        options = {"x264-params": "scenecut=0"} if codec == "libx264" else {}
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1  # byte-identical output from run to run
        if pts is not None:
            stream.codec_context.time_base = stream.time_base = _vfr_time_base(fps)
        for t, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[t], _vfr_time_base(fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _vfr_time_base(fps: int):  # noqa: ANN202
    from fractions import Fraction

    return Fraction(1, fps * 100)


def embedded_data_dir() -> Path:
    """The generated clips, created on first use by `omnimask.data.generate_once` (staged and
    renamed, so concurrent processes never see a half-written set)."""
    return generate_once(default_data_dir("video") / VERSION, write_clips)


def write_clips(root: Path) -> None:
    """Every split's clips into `root` (labelled splits in one folder per motion)."""
    for split, (count, seed) in SPLITS.items():
        rng = np.random.default_rng(seed)
        for i in range(count):
            motion = MOTIONS[i % len(MOTIONS)]
            folder = root / split / motion if split.startswith("labelled") else root / split
            folder.mkdir(parents=True, exist_ok=True)
            write_video(folder / f"{motion}_{i:04d}.mp4", render_clip(motion, rng))
