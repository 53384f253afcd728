"""Audio reading and features against torchaudio/soundfile, and every kind of bad input."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from conftest import tone
from omnimask.data import BadSampleError, DataPathError
from omnimask_audio.audio import (
    AudioConfig,
    AudioFolder,
    load_audio,
    normalize_utterance,
    pad_collate,
)

CONFIG = AudioConfig()


@pytest.mark.parametrize("suffix", ["wav", "flac", "ogg", "mp3"])
def test_audio_formats_decode_to_16k_mono(write_audio, suffix: str) -> None:
    path = write_audio(f"clip.{suffix}", tone(1.0))
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(wave.numel() - 16000) <= 1200  # lossy codecs may pad by a frame
    assert 0.05 < float(wave.abs().max()) < 1.0


def test_audio_features_equal_kaldi_fbank(write_audio) -> None:
    """The dataset's features are exactly torchaudio's Kaldi filterbanks of the decoded clip at
    int16 scale (25 ms / 10 ms, 80 bins), normalised per utterance and bin."""
    data = tone(1.3)
    path = write_audio("speech/clip.wav", data)
    sample = AudioFolder(path.parent, CONFIG)[0]
    decoded, _ = soundfile.read(str(path), dtype="float32")
    reference = torchaudio.compliance.kaldi.fbank(
        torch.from_numpy(decoded).unsqueeze(0) * 32768.0,
        num_mel_bins=80,
        frame_length=25.0,
        frame_shift=10.0,
        dither=0.0,
        sample_frequency=16000,
    )
    assert sample["features"].shape == (128, 80) == reference.shape  # 1 + (20800 - 400) // 160
    mean, std = reference.mean(0), reference.std(0, unbiased=False)
    torch.testing.assert_close(sample["features"], (reference - mean) / (std + 1e-5))
    torch.testing.assert_close(sample["features"].mean(0), torch.zeros(80), atol=1e-3, rtol=0)


def test_audio_rate_and_channels_are_converted(write_audio) -> None:
    mono = tone(1.0, rate=16000)
    stereo = write_audio("stereo_44k.wav", tone(1.0, rate=44100, channels=2), rate=44100)
    wave = load_audio(stereo)
    expected = torchaudio.functional.resample(
        torch.from_numpy(tone(1.0, rate=44100)[:, 0]), 44100, 16000
    )
    assert wave.numel() == 16000
    torch.testing.assert_close(wave, expected, atol=1e-4, rtol=0)  # 16-bit file quantisation
    assert np.corrcoef(wave.numpy(), mono[:, 0])[0, 1] > 0.99
    left_right = np.stack([tone(1.0)[:, 0], np.zeros(16000, np.float32)], axis=1)
    downmixed = load_audio(write_audio("half.wav", left_right))
    torch.testing.assert_close(downmixed, torch.from_numpy(tone(1.0)[:, 0]) / 2, atol=1e-4, rtol=0)


def test_audio_bad_files_are_named(write_audio, tmp_path: Path) -> None:
    corrupt = tmp_path / "bad" / "corrupt.wav"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"RIFF\x00\x00not really a wave file")
    empty = write_audio("bad/empty.wav", np.zeros((0, 1), np.float32))  # a header, no samples
    zero_bytes = tmp_path / "bad" / "zero_bytes.flac"
    zero_bytes.touch()
    nan = tmp_path / "bad" / "nan.wav"
    samples = tone(1.0)
    samples[100] = np.nan
    soundfile.write(str(nan), samples, 16000, subtype="FLOAT")
    short = write_audio("bad/short.wav", tone(0.2))
    silent = write_audio("bad/silent.wav", np.zeros((16000, 1), np.float32))
    cases = {
        corrupt: "cannot decode audio",
        empty: "zero-length audio",
        zero_bytes: "zero-length file",
        nan: "NaN or infinite samples",
        short: "shorter than the minimum 0.5 s",
        silent: "silent clip",
    }
    folder = AudioFolder(tmp_path / "bad", CONFIG)
    for index, path in enumerate(folder.files):
        with pytest.raises(BadSampleError) as error:
            folder[index]
        assert error.value.source == str(path)
        assert cases[path] in error.value.reason


def test_audio_missing_or_empty_data_path(tmp_path: Path) -> None:
    with pytest.raises(DataPathError, match="does not exist"):
        AudioFolder(tmp_path / "nowhere", CONFIG)
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(DataPathError, match="holds no files"):
        AudioFolder(tmp_path, CONFIG)


def test_audio_long_clips_are_cropped_reproducibly(write_audio) -> None:
    path = write_audio("long/clip.wav", tone(3.0))
    folder = AudioFolder(path.parent, AudioConfig(max_seconds=1.0))
    torch.manual_seed(3)
    first = folder[0]["features"]
    torch.manual_seed(3)
    assert torch.equal(first, folder[0]["features"])
    assert first.shape[0] == 98  # 1 s: 1 + (16000 - 400) // 160


def test_audio_collate_pads_to_the_longest_clip_of_the_batch() -> None:
    samples = [{"features": normalize_utterance(torch.randn(n, 80))} for n in (50, 120, 80)]
    batch = pad_collate(samples)
    assert batch["features"].shape == (3, 120, 80)
    assert batch["lengths"].tolist() == [50, 120, 80]
    for row, sample in enumerate(samples):
        length = len(sample["features"])
        assert torch.equal(batch["features"][row, :length], sample["features"])
        assert batch["features"][row, length:].abs().sum() == 0


def test_embedded_labels_are_vowel_orders_invisible_to_the_average_spectrum() -> None:
    """The six classes hold the same vowels; only their order differs. A probe on each clip's
    average log-mel spectrum stays near chance (1/6), one on the difference between the first
    and second half of the clip (which knows the order) does not: the label is temporal."""
    from omnimask.plugins import get_recipe
    from omnimask_audio.synth import ORDERS
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    recipe = get_recipe("audio/w2v_bert")
    train, test = recipe.build_eval_datasets(recipe.config("demo"))

    def features(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001
        means, halves, labels = [], [], []
        for index in range(len(dataset)):
            sample = dataset[index]
            frames = sample["features"].numpy()
            middle = len(frames) // 2
            means.append(frames.mean(0))
            halves.append(frames[:middle].mean(0) - frames[middle:].mean(0))
            labels.append(int(sample["label"]))
        return np.array(means), np.array(halves), np.array(labels)

    train_mean, train_halves, train_labels = features(train)
    test_mean, test_halves, test_labels = features(test)
    assert sorted(set(train_labels)) == list(range(len(ORDERS)))
    assert np.bincount(test_labels).min() == np.bincount(test_labels).max()  # balanced

    def probe(train_x: np.ndarray, test_x: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        return model.fit(train_x, train_labels).score(test_x, test_labels)

    assert probe(train_mean, test_mean) < 0.35
    assert probe(train_halves, test_halves) > 0.7


def test_pretraining_vowels_depend_on_the_vowel_before() -> None:
    """The pretraining clips' vowels follow each other as a language's sounds do, so a masked
    vowel can be inferred from its neighbours (what w2v-BERT's MLM module learns). Independent
    vowels (corpus v2) left the next vowel at chance given the one before: pretraining then
    learned no context and probed below random init (plugin README)."""
    from omnimask_audio.synth import PHONOTACTICS, VOWELS, synthesize

    rng = np.random.default_rng(0)
    pairs = [pair for _ in range(60) for pair in itertools.pairwise(synthesize(0, rng).vowels)]
    preferred = sum(PHONOTACTICS[before] == after for before, after in pairs) / len(pairs)
    assert len(pairs) > 150
    assert preferred > 2 / len(VOWELS)  # chance: 1/5
