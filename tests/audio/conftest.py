"""Shared fixtures of the audio tests: small audio files written on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile


def tone(seconds: float, rate: int = 16000, channels: int = 1, pitch: float = 220.0) -> np.ndarray:
    """A harmonic tone with a little noise, `[samples, channels]` float32."""
    time = np.arange(round(seconds * rate)) / rate
    wave = sum(np.sin(2 * np.pi * pitch * k * time) / k for k in range(1, 6))
    wave = 0.3 * wave / np.abs(wave).max() + 0.01 * np.random.default_rng(0).standard_normal(
        len(time)
    )
    return np.repeat(wave[:, None], channels, axis=1).astype(np.float32)


@pytest.fixture
def write_audio(tmp_path: Path):
    def write(name: str, data: np.ndarray, rate: int = 16000) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(path), data, rate)
        return path

    return write
