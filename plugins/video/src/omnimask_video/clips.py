"""Clip sampling: which frames a clip is made of, decided before anything is decoded.

A clip is `num_frames` frames taken every `stride` frames of the source's nominal (average) frame
rate. Positions are expressed in time, so a variable-frame-rate file is resampled at its average
rate: clip frame i is the frame on screen at `(start + i * stride) / fps`. For a constant-rate
file that is exactly frame `start + i * stride`.

A source too short for the clip's span `(num_frames - 1) * stride + 1` is handled by the
`short_clip` policy: `loop` wraps around to the first frame, `pad` repeats the last frame,
`error` refuses the sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SHORT_CLIP_POLICIES = ("loop", "pad", "error")


class ShortClipError(ValueError):
    """The source has fewer nominal frames than the clip spans and the policy is `error`."""


@dataclass(frozen=True)
class ClipPlan:
    """The source frame index of every clip frame (`frames`), and whether it had to wrap/pad."""

    frames: np.ndarray
    shortened: bool


def clip_span(num_frames: int, stride: int) -> int:
    """Nominal frames a clip covers, first to last inclusive."""
    return (num_frames - 1) * stride + 1


def nominal_length(times: np.ndarray, fps: float) -> int:
    """Frames the source holds at its nominal rate: the last frame's slot, plus one."""
    return int(np.floor(float(times[-1]) * fps + 1e-6)) + 1


def frames_at(times: np.ndarray, query: np.ndarray, fps: float) -> np.ndarray:
    """Index of the frame on screen at each query time (the latest frame starting at or before
    it); a tolerance of a thousandth of a frame absorbs timestamp rounding."""
    index = np.searchsorted(times, query + 1e-3 / fps, side="right") - 1
    return np.clip(index, 0, len(times) - 1)


def plan_clip(
    times: np.ndarray,
    fps: float,
    num_frames: int,
    stride: int,
    random_start: bool,
    short_clip: str = "loop",
) -> ClipPlan:
    """Choose the clip's start (uniform with torch's global RNG when `random_start`, else the
    centred clip, for evaluation) and map its nominal positions to source frame indices.

    Args:
        times: presentation time (seconds from the first frame) of every source frame, sorted.
        fps: the nominal frame rate the stride is counted in.
    """
    if short_clip not in SHORT_CLIP_POLICIES:
        raise ValueError(f"short_clip must be one of {SHORT_CLIP_POLICIES}, got {short_clip!r}")
    length = nominal_length(times, fps)
    span = clip_span(num_frames, stride)
    offsets = np.arange(num_frames) * stride
    if span <= length:
        room = length - span
        start = int(torch.randint(0, room + 1, ())) if random_start else room // 2
        positions, shortened = start + offsets, False
    elif short_clip == "loop":
        positions, shortened = offsets % length, True
    elif short_clip == "pad":
        positions, shortened = np.minimum(offsets, length - 1), True
    else:
        raise ShortClipError(
            f"has {length} frames at {fps:g} fps but a clip of {num_frames} frames at stride "
            f"{stride} spans {span} (clip.short_clip='error')"
        )
    return ClipPlan(frames_at(times, positions / fps, fps), shortened)
