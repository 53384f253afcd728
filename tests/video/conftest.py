"""Shared fixtures of the video plugin tests: small real video files written with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omnimask.plugins import get_recipe
from omnimask_video.synthetic import render_clip, write_video

FRAMES = 40  # long enough for several GOPs of 8 frames


@pytest.fixture(scope="session")
def videomae_recipe():  # noqa: ANN201
    return get_recipe("video/videomae")


@pytest.fixture(scope="session")
def frames() -> np.ndarray:
    """`[40, 64, 64, 3]` uint8: a square moving right, then a disc spinning."""
    rng = np.random.default_rng(3)
    return np.concatenate([render_clip("right", rng), render_clip("spin", rng)])[:FRAMES]


@pytest.fixture(scope="session")
def video_files(tmp_path_factory, frames) -> dict[str, Path]:  # noqa: ANN001
    """The same 40 frames as H.264 MP4 (B-frames), VP9 WebM, MPEG-4 AVI and MKV; GOP 8."""
    folder = tmp_path_factory.mktemp("videos")
    codecs = {"mp4": "libx264", "webm": "libvpx-vp9", "avi": "mpeg4", "mkv": "libx264"}
    files = {}
    for suffix, codec in codecs.items():
        files[suffix] = folder / f"clip.{suffix}"
        write_video(files[suffix], frames, codec=codec, gop=8)
    return files
