"""Clip lengths in filterbank frames from file headers, for length-bucketed batches.

The engine groups clips of similar length when `data.bucket_batches > 0`; it needs every clip's
length before training, and decoding a corpus for that would cost as much as an epoch of feature
extraction. A header (`soundfile.info`: frame count and sample rate) is enough: the frame count
after resampling, cropping and Kaldi framing follows from it by arithmetic. Headers of large
corpora are cached on disk (keyed by path, size and modification time), so a second run, a
resumed one, or each process of a multi-process run reads only what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import soundfile
from omnimask.data import default_data_dir

from omnimask_audio.audio import AudioConfig

logger = logging.getLogger("omnimask")

#: Below this many files the headers are read afresh each time (well under a second).
CACHE_MIN_FILES = 1000
CACHE_FORMAT = 1


def resampled_samples(frames: int, rate: int, target_rate: int) -> int:
    """Length of `torchaudio.functional.resample` output: ceil(frames x target / rate), which is
    how torchaudio trims its polyphase output."""
    return -(-frames * target_rate // rate)


def fbank_frames(samples: int, config: AudioConfig) -> int:
    """Frames of `torchaudio.compliance.kaldi.fbank` (snip_edges) over `samples` samples at
    `config.sample_rate`: 1 + (samples - window) // shift, window and shift truncated to samples
    as torchaudio truncates them."""
    window = int(config.sample_rate * config.frame_length_ms * 0.001)
    shift = int(config.sample_rate * config.frame_shift_ms * 0.001)
    return 1 + (samples - window) // shift if samples >= window else 0


def feature_frames(frames: int, rate: int, config: AudioConfig, crop: bool) -> int:
    """Filterbank frames that `AudioFolder` produces for a clip of `frames` samples at `rate`."""
    samples = resampled_samples(frames, rate, config.sample_rate)
    if crop:
        samples = min(samples, round(config.max_seconds * config.sample_rate))
    return fbank_frames(samples, config)


def cache_path(root: Path) -> Path:
    """Where the header cache of the corpus under `root` lives (one file per corpus folder)."""
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return default_data_dir("audio") / "header-cache" / f"{key}.json"


def read_headers(files: Sequence[Path], cache: Path | None = None) -> list[tuple[int, int]]:
    """`(frames, sample rate)` of each file from its header; `(0, 1)` for a file whose header
    cannot be read (it fails with a named error when the sample is loaded, where the bad-sample
    policy applies). With `cache`, entries whose size and mtime match are reused, and the cache
    is rewritten atomically when anything changed."""
    cached: dict[str, list[int]] = {}
    if cache is not None and cache.exists():
        try:
            content = json.loads(cache.read_text())
            if content.get("format") == CACHE_FORMAT:
                cached = content["files"]
        except (OSError, ValueError, KeyError, AttributeError) as error:
            logger.warning("ignoring unreadable audio header cache %s (%s)", cache, error)
    fresh: dict[str, list[int]] = {}
    headers = []
    for path in files:
        entry = header_entry(path, cached.get(str(path)))
        if entry is None:
            headers.append((0, 1))
            continue
        fresh[str(path)] = entry
        headers.append((entry[2], entry[3]))
    if cache is not None and fresh != cached:
        write_cache(cache, fresh)
    return headers


def header_entry(path: Path, cached: list[int] | None) -> list[int] | None:
    """`[size, mtime_ns, frames, rate]` of `path`, the cached entry when size and modification
    time still match; None when the file or its header cannot be read."""
    try:
        stat = path.stat()
        if cached is not None and cached[:2] == [stat.st_size, stat.st_mtime_ns]:
            return cached
        info = soundfile.info(str(path))
    except Exception:  # libsndfile raises several types for corrupt input
        return None
    return [stat.st_size, stat.st_mtime_ns, int(info.frames), int(info.samplerate)]


def write_cache(cache: Path, entries: dict[str, list[int]]) -> None:
    """Write the cache through a temporary file renamed into place: processes that race to write
    it never leave a half-written one."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".headers-", dir=cache.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump({"format": CACHE_FORMAT, "files": entries}, file)
        os.replace(temp, cache)
    except OSError as error:  # a read-only cache folder slows the next run; it breaks nothing
        logger.warning("cannot write the audio header cache %s (%s)", cache, error)
        Path(temp).unlink(missing_ok=True)


def clip_feature_lengths(
    files: Sequence[Path], config: AudioConfig, crop: bool, root: Path | None = None
) -> list[int]:
    """Filterbank frames of each clip, from headers only (cached under `cache_path(root)` when
    there are at least `CACHE_MIN_FILES` files)."""
    cache = cache_path(root) if root is not None and len(files) >= CACHE_MIN_FILES else None
    return [
        feature_frames(frames, rate, config, crop) for frames, rate in read_headers(files, cache)
    ]
