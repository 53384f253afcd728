"""Reading speech the way users store it, and turning it into normalised log-mel filterbanks.

Decoding goes through soundfile (libsndfile), which reads WAV, FLAC, OGG/Vorbis and MP3 here.
torchaudio 2.11's `load` delegates to torchcodec, which needs FFmpeg libraries this environment does
not ship, so torchaudio is used only for what it computes: resampling and Kaldi filterbanks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio
from omnimask.data import BadSampleError, check_data_path
from torch import Tensor
from torch.utils.data import Dataset

AUDIO_PATTERNS = ("*.wav", "*.flac", "*.ogg", "*.mp3")
#: Kaldi filterbanks expect 16-bit integer amplitudes; float audio in [-1, 1] is scaled up so the
#: log energies (and the energy floor) mean what they mean in Kaldi.
INT16_SCALE = 32768.0


@dataclass
class AudioConfig:
    """How audio becomes features: target rate, filterbank shape and what counts as unusable."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    min_seconds: float = 0.5  # shorter clips give too few frames to mask a span in
    max_seconds: float = 16.0  # longer clips are randomly cropped (seeded by the engine)
    silence_peak: float = 1e-4  # peak |amplitude| below this (-80 dBFS) is silence: no signal


def load_audio(path: str | Path, sample_rate: int = 16000) -> Tensor:
    """Mono float32 waveform `[T]` at `sample_rate` from an audio file.

    Several channels are averaged (down-mix), another rate is resampled with
    `torchaudio.functional.resample`. Unreadable, empty and non-finite files raise
    `BadSampleError` naming the file.
    """
    if Path(path).stat().st_size == 0:
        raise BadSampleError(path, "zero-length file (0 bytes)")
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile raises several types for corrupt input
        raise BadSampleError(path, f"cannot decode audio ({error})") from error
    if data.shape[0] == 0:
        raise BadSampleError(path, "zero-length audio (no samples)")
    if not np.isfinite(data).all():
        raise BadSampleError(path, "audio contains NaN or infinite samples")
    wave = torch.from_numpy(data).mean(dim=1)
    if rate != sample_rate:
        wave = torchaudio.functional.resample(wave, rate, sample_rate)
    return wave


def kaldi_fbank(wave: Tensor, config: AudioConfig) -> Tensor:
    """Log-mel filterbanks `[frames, num_mel_bins]` of a mono waveform, exactly Kaldi's."""
    return torchaudio.compliance.kaldi.fbank(
        wave.unsqueeze(0) * INT16_SCALE,
        num_mel_bins=config.num_mel_bins,
        frame_length=config.frame_length_ms,
        frame_shift=config.frame_shift_ms,
        sample_frequency=config.sample_rate,
        dither=0.0,
    )


def normalize_utterance(features: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-utterance mean/variance normalisation of each mel bin: removes channel and loudness
    differences between recordings, which would otherwise be the easiest thing to predict."""
    mean = features.mean(dim=0, keepdim=True)
    std = features.std(dim=0, keepdim=True, unbiased=False)
    return (features - mean) / (std + eps)


def speech_features(wave: Tensor, config: AudioConfig, source: str | Path) -> Tensor:
    """Checked, normalised filterbanks `[frames, bins]` of a 16 kHz mono waveform from `source`."""
    seconds = wave.numel() / config.sample_rate
    if seconds < config.min_seconds:
        raise BadSampleError(
            source, f"clip of {seconds:.3f} s is shorter than the minimum {config.min_seconds} s"
        )
    peak = float(wave.abs().max())
    if peak < config.silence_peak:
        raise BadSampleError(source, f"silent clip (peak amplitude {peak:.2e})")
    return normalize_utterance(kaldi_fbank(wave, config))


def random_crop(wave: Tensor, max_samples: int) -> Tensor:
    """A random window of at most `max_samples` (torch's global RNG, seeded per sample by the
    engine, so a crop is reproducible)."""
    if wave.numel() <= max_samples:
        return wave
    start = int(torch.randint(0, wave.numel() - max_samples + 1, ()))
    return wave[start : start + max_samples]


class AudioFolder(Dataset):
    """Audio files under a folder (or one file) -> `{"features": [frames, bins]}` samples.

    With `labelled=True` each file's label is the index of its parent folder's name among the
    sorted class folders (the image-folder layout `root/<class>/<clip>`), for `omnimask eval`.
    """

    def __init__(
        self, path: str | Path, config: AudioConfig, labelled: bool = False, crop: bool = True
    ) -> None:
        self.root = Path(path)
        self.files = check_data_path(path, AUDIO_PATTERNS)
        self.config = config
        self.crop = crop
        self.labels: list[int] | None = None
        if labelled:
            classes = sorted({file.parent.name for file in self.files})
            self.classes = classes
            self.labels = [classes.index(file.parent.name) for file in self.files]

    #: the record layout in shards (`omnimask.shards`); bump when it changes
    record_kind = "audio.waveform/1"

    def __len__(self) -> int:
        return len(self.files)

    def record(self, index: int) -> dict[str, Any]:
        """The clip decoded and resampled to `audio.sample_rate`: what a shard keeps."""
        path = self.files[index]
        record = {"wave": load_audio(path, self.config.sample_rate).numpy(), "source": str(path)}
        if self.labels is not None:
            record["label"] = self.labels[index]
        return record

    def shard_attributes(self) -> dict[str, Any]:
        return {"audio.sample_rate": self.config.sample_rate}

    def record_size(self, record: dict[str, Any]) -> int:
        """Samples of the waveform: what `sample_lengths` needs to bucket shards by length."""
        return len(record["wave"])

    def sample(self, record: dict[str, Any]) -> dict[str, Any]:
        return clip_sample(record, self.config, self.crop)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(self.record(index))


def clip_sample(record: dict[str, Any], config: AudioConfig, crop: bool) -> dict[str, Any]:
    """A clip's record -> `{"features": [frames, bins]}`, from a random crop of at most
    `audio.max_seconds` when `crop` (drawn under the engine's per-sample seed)."""
    wave = torch.as_tensor(record["wave"])
    if crop:
        wave = random_crop(wave, round(config.max_seconds * config.sample_rate))
    sample: dict[str, Any] = {"features": speech_features(wave, config, record["source"])}
    if "label" in record:
        sample["label"] = record["label"]
    return sample


def pad_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad `features` to the longest clip of the batch (not a fixed maximum) and keep the lengths:
    with length-bucketed batches (`data.bucket_batches`) the padding is then small."""
    lengths = torch.tensor([s["features"].shape[0] for s in samples], dtype=torch.long)
    bins = samples[0]["features"].shape[1]
    features = torch.zeros(len(samples), int(lengths.max()), bins)
    for row, sample in enumerate(samples):
        features[row, : lengths[row]] = sample["features"]
    batch: dict[str, Any] = {"features": features, "lengths": lengths}
    if "label" in samples[0]:
        batch["label"] = torch.tensor([int(s["label"]) for s in samples], dtype=torch.long)
    return batch
