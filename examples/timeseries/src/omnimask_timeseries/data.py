"""Reading users' time series, and the embedded default data set.

A data path is a file or a folder of series files, searched recursively:

- `.npy`: one array `[channels, time]` of numbers;
- `.csv`: a table with one row per time step and one column per channel, header row optional.

A folder may also hold `labels.csv` (`file,label,split`: path relative to the folder, int label,
`train` or `test`): that is what `omnimask eval` reads, and it is never taken for a series.

A series that cannot be used raises `BadSampleError` naming the file and the problem; the engine
then applies `data.on_bad_sample`.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omnimask.data import (
    BadSampleError,
    DataPathError,
    check_data_path,
    default_data_dir,
    generate_once,
)
from torch import Tensor
from torch.utils.data import Dataset

SERIES_PATTERNS = ("*.npy", "*.csv")
LABELS_FILE = "labels.csv"

#: The embedded data set: 4 classes of 3-channel series, 512 steps long. Bump the version when
#: the generator changes, so that stale copies in the cache are not reused.
DEFAULT_DATA_VERSION = "v1"
DEFAULT_CHANNELS = 3
DEFAULT_LENGTH = 512
DEFAULT_SEED = 20240611
CLASS_NAMES = ("sinusoids", "chirp", "square", "red_noise")
SPLIT_SIZES = {"train": 96, "test": 32}  # series per class


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises ValueError, OSError, EOFError... for bad files
        raise BadSampleError(
            path, f"unreadable .npy file ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(array, np.ndarray):
        raise BadSampleError(path, f"expected one array, found {type(array).__name__}")
    return array


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    try:
        with open(path, newline="", encoding="utf-8") as file:
            first = next(csv.reader(file), None)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise BadSampleError(
            path, f"unreadable .csv file ({type(error).__name__}: {error})"
        ) from error
    if not first:
        raise BadSampleError(path, "empty .csv file")
    has_header = not all(_is_number(cell) for cell in first)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on an empty table; we raise instead
            table = np.loadtxt(
                path,
                delimiter=",",
                skiprows=int(has_header),
                dtype=np.float64,
                ndmin=2,
                encoding="utf-8",
            )
    except (ValueError, UnicodeDecodeError) as error:
        raise BadSampleError(path, f"not a numeric CSV table ({error})") from error
    if table.size == 0:
        raise BadSampleError(path, "the .csv file has a header but no data rows")
    return table.T


def _read_any(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path)
    if suffix == ".csv":
        return _read_csv(path)
    raise BadSampleError(path, f"unsupported file type {suffix!r} (expected .npy or .csv)")


def series_channels(path: str | os.PathLike[str]) -> int:
    """The channel count of one series file (its rows / columns), for `model.channels=0`."""
    array = _read_any(Path(path))
    if array.ndim != 2:
        raise BadSampleError(
            path, f"expected a 2-D [channels, time] array, got shape {tuple(array.shape)}"
        )
    return int(array.shape[0])


def read_series(path: str | os.PathLike[str], channels: int, min_length: int) -> np.ndarray:
    """One series file -> float32 `[channels, time]`, checked; `BadSampleError` otherwise."""
    path = Path(path)
    array = _read_any(path)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise BadSampleError(path, f"values of dtype {array.dtype} are not numbers")
    if array.ndim != 2:
        raise BadSampleError(
            path, f"expected a 2-D [channels, time] array, got shape {tuple(array.shape)}"
        )
    if array.shape[0] != channels:
        raise BadSampleError(
            path,
            f"expected {channels} channels, got {array.shape[0]} (shape {tuple(array.shape)}; "
            ".npy files are [channels, time], .csv files have one column per channel)",
        )
    finite = np.isfinite(array)
    if not finite.all():
        channel, step = np.argwhere(~finite)[0]
        count = int((~finite).sum())
        raise BadSampleError(
            path,
            f"{count} non-finite value(s) (NaN or inf), first at channel {channel}, step {step}",
        )
    if array.shape[1] < min_length:
        raise BadSampleError(
            path, f"series has {array.shape[1]} steps, shorter than the window of {min_length}"
        )
    return array.astype(np.float32, copy=False)


def series_files(path: str | os.PathLike[str]) -> list[Path]:
    """The series files under `path` (`labels.csv` excluded), sorted."""
    files = [f for f in check_data_path(path, SERIES_PATTERNS) if f.name != LABELS_FILE]
    if not files:
        raise DataPathError(f"data path {path} holds no series files (.npy or .csv)")
    return files


def peek_channels(path: str | os.PathLike[str]) -> int:
    """The channel count of the first series file under `path` (to size a model to the data)."""
    first = series_files(path)[0]
    array = _read_any(first)
    if array.ndim != 2:
        raise BadSampleError(
            first, f"expected a 2-D [channels, time] array, got shape {tuple(array.shape)}"
        )
    return array.shape[0]


class SeriesDataset(Dataset):
    """Series files -> `{"series": [channels, window]}` (plus an int `"label"` when labelled).

    `crop="random"` takes a random window with torch's global RNG, which the engine seeds per
    sample (so a resumed run sees the same crops); `crop="center"` is deterministic, for eval.
    """

    def __init__(
        self,
        files: list[Path],
        channels: int,
        window: int,
        labels: list[int] | None = None,
        crop: str = "random",
    ) -> None:
        if crop not in ("random", "center"):
            raise ValueError(f"crop must be 'random' or 'center', got {crop!r}")
        if labels is not None and len(labels) != len(files):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files, self.labels = files, labels
        self.channels, self.window, self.crop = channels, window, crop

    def __len__(self) -> int:
        return len(self.files)

    #: the record layout in shards (`omnimask prepare --out`, `omnimask.shards`): a plugin
    #: whose training set splits reading (`record`) from random augmentation (`sample`) gets
    #: shards for corpora beyond one disk from the core, with no code of its own
    record_kind = "timeseries.series/1"

    def record(self, index: int) -> dict[str, Any]:
        """The whole checked series: what a shard keeps (the window is drawn at access)."""
        record: dict[str, Any] = {
            "series": read_series(self.files[index], self.channels, self.window)
        }
        if self.labels is not None:
            record["label"] = self.labels[index]
        return record

    def shard_attributes(self) -> dict[str, Any]:
        return {"model.channels": self.channels}

    def sample(self, record: dict[str, Any]) -> dict[str, Tensor]:
        series = record["series"]
        slack = series.shape[1] - self.window
        if slack < 0:  # shards written for a shorter window
            raise BadSampleError("shard record", f"{series.shape[1]} steps < window {self.window}")
        if self.crop == "random":
            start = int(torch.randint(0, slack + 1, ()))
        else:
            start = slack // 2
        item = {"series": torch.from_numpy(series[:, start : start + self.window].copy())}
        if "label" in record:
            item["label"] = torch.tensor(record["label"])
        return item

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.sample(self.record(index))


def read_labels(root: str | os.PathLike[str]) -> dict[str, tuple[list[Path], list[int]]]:
    """`root/labels.csv` -> {"train": (files, labels), "test": (files, labels)}."""
    root = Path(root)
    labels_path = root / LABELS_FILE
    if not labels_path.is_file():
        raise DataPathError(
            f"{root} has no {LABELS_FILE}: labelled evaluation needs one, with a header "
            "`file,label,split` and one row per series (split is train or test)"
        )
    splits: dict[str, tuple[list[Path], list[int]]] = {"train": ([], []), "test": ([], [])}
    with open(labels_path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = {"file", "label", "split"} - set(reader.fieldnames or ())
        if missing:
            raise DataPathError(f"{labels_path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            if row["split"] not in splits or not row["label"].strip().lstrip("-").isdigit():
                raise DataPathError(
                    f"{labels_path}, line {line}: need an int label and split train|test, "
                    f"got label={row['label']!r} split={row['split']!r}"
                )
            files, labels = splits[row["split"]]
            files.append(root / row["file"])
            labels.append(int(row["label"]))
    for name, (files, _) in splits.items():
        if not files:
            raise DataPathError(f"{labels_path}: no {name} rows")
    return splits


def synthetic_series(label: int, rng: np.random.Generator) -> np.ndarray:
    """One series of class `label` (see `CLASS_NAMES`), float32 `[3, 512]`.

    Every channel has its own amplitude, offset and phase, and white noise on top, so a class is
    recognisable by its shape over time, not by its scale.
    """
    steps = np.arange(DEFAULT_LENGTH) / DEFAULT_LENGTH  # [0, 1): cycles per series below
    channels = []
    for _ in range(DEFAULT_CHANNELS):
        phase = rng.uniform(0, 2 * np.pi)
        if label == 0:  # sum of sinusoids from a fixed frequency set
            frequencies = rng.choice([9.0, 14.0, 23.0], size=2, replace=False)
            signal = sum(np.sin(2 * np.pi * f * steps + phase * f) for f in frequencies)
        elif label == 1:  # linear chirp, frequency rising across the series
            start, end = rng.uniform(3, 8), rng.uniform(30, 45)
            signal = np.sin(2 * np.pi * (start * steps + 0.5 * (end - start) * steps**2) + phase)
        elif label == 2:  # square wave
            signal = np.sign(np.sin(2 * np.pi * rng.uniform(5, 12) * steps + phase))
        elif label == 3:  # AR(1) red noise
            shocks = rng.normal(0, 1, DEFAULT_LENGTH)
            signal = np.empty(DEFAULT_LENGTH)
            signal[0] = shocks[0]
            for t in range(1, DEFAULT_LENGTH):
                signal[t] = 0.95 * signal[t - 1] + 0.3 * shocks[t]
        else:
            raise ValueError(f"label must be in 0..{len(CLASS_NAMES) - 1}, got {label}")
        signal = rng.uniform(0.5, 2.0) * signal + rng.normal(0, 1)
        channels.append(signal + rng.normal(0, 0.1, DEFAULT_LENGTH))
    return np.stack(channels).astype(np.float32)


def write_default_data(folder: Path) -> None:
    """Generate the embedded data set into `folder`: `train/`, `test/` and `labels.csv`.

    Deterministic: each series has its own seed from (split, class, index)."""
    rows = []
    for split_code, (split, per_class) in enumerate(SPLIT_SIZES.items()):
        (folder / split).mkdir(parents=True, exist_ok=True)
        for label, name in enumerate(CLASS_NAMES):
            for index in range(per_class):
                rng = np.random.default_rng([DEFAULT_SEED, split_code, label, index])
                relative = f"{split}/{name}_{index:04d}.npy"
                np.save(folder / relative, synthetic_series(label, rng))
                rows.append((relative, label, split))
    with open(folder / LABELS_FILE, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(("file", "label", "split"))
        writer.writerows(rows)


def default_data(root: str | os.PathLike[str] | None = None) -> Path:
    """The embedded data set's folder, generated on first use (`omnimask.data.generate_once`:
    staged and renamed, so processes starting at the same time never see a half-written set)."""
    base = Path(root) if root is not None else default_data_dir("timeseries")
    return generate_once(base / DEFAULT_DATA_VERSION, write_default_data)
