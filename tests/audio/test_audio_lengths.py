"""Clip lengths from file headers (for length-bucketed batches) against the features actually
loaded, the header cache, and the padding bucketing saves on the embedded corpus."""

from __future__ import annotations

import json
import logging

import soundfile
import torch
import torchaudio
from conftest import tone
from omnimask.data import EngineDataset, engine_collate
from omnimask.engine.sampler import BucketedBatchSampler, ResumableBatchSampler
from omnimask.plugins import get_recipe
from omnimask_audio import lengths as lengths_module
from omnimask_audio.audio import AudioConfig, AudioFolder
from omnimask_audio.lengths import fbank_frames, read_headers, resampled_samples

RECIPE = "audio/w2v_bert"


def test_frame_arithmetic_matches_torchaudio() -> None:
    config = AudioConfig()
    for samples in (400, 401, 559, 560, 561, 16000, 20800):
        fbank = torchaudio.compliance.kaldi.fbank(
            torch.randn(1, samples), num_mel_bins=80, sample_frequency=16000, dither=0.0
        )
        assert fbank_frames(samples, config) == fbank.shape[0], samples
    pairs = ((44100, 44100), (32193, 44100), (16097, 22050), (5841, 8000), (999, 48000))
    for frames, rate in pairs:
        resampled = torchaudio.functional.resample(torch.zeros(frames), rate, 16000)
        assert resampled_samples(frames, rate, 16000) == resampled.numel(), (frames, rate)


def test_header_lengths_equal_loaded_features_of_the_embedded_corpus() -> None:
    """Every clip of the embedded pre-training corpus, whole and cropped to 1.5 s."""
    recipe = get_recipe(RECIPE)
    config = recipe.config("demo")
    config.audio.max_seconds = 1.5
    dataset = recipe.build_dataset(config)
    from_headers = recipe.sample_lengths(dataset, config)
    loaded = [dataset[i]["features"].shape[0] for i in range(len(dataset))]
    assert from_headers == loaded
    cropped = loaded.count(max(loaded))
    assert 0 < cropped < len(loaded) and max(loaded) == 148  # 1.5 s: 1 + (24000 - 400) // 160
    whole = AudioFolder(dataset.files[0].parents[1], config.audio, crop=False)
    assert recipe.sample_lengths(whole, config) == [
        whole[i]["features"].shape[0] for i in range(len(whole))
    ]


def test_header_lengths_of_other_rates_channels_and_formats(write_audio) -> None:
    clips = [
        ("mixed/a.wav", tone(1.3, rate=44100, channels=2), 44100),
        ("mixed/b.flac", tone(0.9, rate=22050), 22050),
        ("mixed/c.ogg", tone(1.1, rate=8000), 8000),
        ("mixed/d.mp3", tone(0.8, rate=48000), 48000),
        ("mixed/e.wav", tone(2.4), 16000),
    ]
    for name, data, rate in clips:
        path = write_audio(name, data, rate)
    folder = AudioFolder(path.parent, AudioConfig(max_seconds=2.0))
    recipe = get_recipe(RECIPE)
    loaded = [folder[i]["features"].shape[0] for i in range(len(folder))]
    assert recipe.sample_lengths(folder, recipe.config("demo")) == loaded


def test_header_cache_reuses_unchanged_files_and_rereads_changed_ones(
    write_audio, tmp_path, monkeypatch, caplog
) -> None:
    files = [write_audio(f"c/{i}.wav", tone(0.6 + 0.1 * i)) for i in range(3)]
    corrupt = tmp_path / "c" / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not audio")
    files.append(corrupt)
    cache = tmp_path / "cache" / "headers.json"
    first = read_headers(files, cache)
    assert first[:3] == [(round((0.6 + 0.1 * i) * 16000), 16000) for i in range(3)]
    assert first[3] == (0, 1)  # unreadable: its sample fails with a named error when loaded
    assert set(json.loads(cache.read_text())["files"]) == {str(f) for f in files[:3]}

    opened = []
    real_info = soundfile.info
    counting = lambda path: opened.append(path) or real_info(path)  # noqa: E731
    monkeypatch.setattr(lengths_module.soundfile, "info", counting)
    assert read_headers(files, cache) == first
    assert opened == [str(corrupt)]  # only the file the cache could not hold
    soundfile.write(str(files[1]), tone(1.7, rate=22050), 22050)
    opened.clear()
    assert read_headers(files, cache)[1] == (round(1.7 * 22050), 22050)
    assert opened == [str(files[1]), str(corrupt)]

    cache.write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert read_headers(files, cache)[1] == (round(1.7 * 22050), 22050)
    assert "ignoring unreadable audio header cache" in caplog.text
    assert json.loads(cache.read_text())["format"] == lengths_module.CACHE_FORMAT


def test_large_corpora_cache_headers_under_the_data_dir(write_audio, tmp_path, monkeypatch):
    monkeypatch.setenv("OMNIMASK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(lengths_module, "CACHE_MIN_FILES", 2)
    for i in range(2):
        write_audio(f"corpus/{i}.flac", tone(0.7))
    folder = AudioFolder(tmp_path / "corpus", AudioConfig())
    recipe = get_recipe(RECIPE)
    loaded = [folder[i]["features"].shape[0] for i in range(2)]
    assert recipe.sample_lengths(folder, recipe.config("demo")) == loaded
    assert lengths_module.cache_path(tmp_path / "corpus").exists()
    assert lengths_module.cache_path(tmp_path / "corpus").is_relative_to(tmp_path / "data")


def padded_share(recipe, dataset, sampler) -> float:  # noqa: ANN001
    """Share of padded frames in the batches the engine's loader would collate."""
    wrapped = EngineDataset(dataset, seed=0)
    collate = engine_collate(recipe.collate)
    padded = real = 0
    for keys in sampler:
        batch, _ = collate([wrapped[key] for key in keys])
        padded += batch["features"].shape[0] * batch["features"].shape[1]
        real += int(batch["lengths"].sum())
    return 1.0 - real / padded


def test_bucketing_cuts_the_padding_of_collated_batches_on_the_embedded_corpus() -> None:
    recipe = get_recipe(RECIPE)
    config = recipe.config("demo")
    assert config.data.bucket_batches > 0  # the presets bucket
    dataset = recipe.build_dataset(config)
    batch, epoch = config.train.batch_size, len(dataset) // config.train.batch_size
    plain = ResumableBatchSampler(len(dataset), batch, seed=0, start=0, stop=epoch)
    bucketed = BucketedBatchSampler(
        recipe.sample_lengths(dataset, config),
        batch,
        bucket_batches=config.data.bucket_batches,
        seed=0,
        start=0,
        stop=epoch,
    )
    plain_share = padded_share(recipe, dataset, plain)
    bucketed_share = padded_share(recipe, dataset, bucketed)
    assert plain_share > 0.15  # clips of 0.7-2.6 s batched at random
    assert bucketed_share < 0.5 * plain_share, (bucketed_share, plain_share)
