"""Data plumbing shared by every plugin: bad-sample errors, the embedded-data location, and the
engine-side wrapper that indexes samples, seeds their augmentation and applies the bad-sample
policy."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, get_worker_info

from omnimask.errors import BadSampleError, DataPathError
from omnimask.seeding import mix_seed, seeded_rng

BAD_SAMPLE_POLICIES = ("raise", "skip")
#: The folder beside a user's data where plugins keep what they derive from it (decoded
#: samples, tar indices), keyed by each source file's size and modification time. Data
#: listings skip it, so a cached `.npy` is never taken for a sample.
CACHE_FOLDER = ".omnimask-cache"


def check_data_path(path: str | os.PathLike[str], patterns: tuple[str, ...]) -> list[Path]:
    """The files under `path` matching any glob in `patterns`, sorted; clear errors otherwise."""
    root = Path(path)
    if not root.exists():
        raise DataPathError(f"data path {root} does not exist")
    if root.is_file():
        files = [root] if any(root.match(p) for p in patterns) else []
    else:
        files = sorted(
            {
                f
                for p in patterns
                for f in root.rglob(p)
                if f.is_file() and CACHE_FOLDER not in f.relative_to(root).parts
            }
        )
    if not files:
        raise DataPathError(f"data path {root} holds no files matching {', '.join(patterns)}")
    return files


def default_data_dir(name: str) -> Path:
    """Where a plugin's generated default data lives: `$OMNIMASK_DATA_DIR/<name>`, or under
    `~/.cache/omnimask/`. Generation is deterministic, so the directory can be deleted anytime."""
    base = os.environ.get("OMNIMASK_DATA_DIR") or Path.home() / ".cache" / "omnimask"
    return Path(base) / name


def generate_once(final: Path, write: Callable[[Path], None]) -> Path:
    """`final`, a folder of generated data (default data, a token cache), written by
    `write(staging)` on first use.

    Processes that start at the same time (the ranks of a run) take turns on a lock file beside
    `final` (`filelock`: released by the system if its holder dies), so one writes and the
    others wait for its folder instead of each tokenizing the corpus again. `write` fills a
    staging folder beside `final`, which is then renamed into place: a generation that fails or
    is killed leaves no `final` behind, and where the file system has no working locks the
    first rename still wins. Put a version in `final`'s name so that a changed generator writes
    a new folder."""
    from filelock import FileLock

    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.parent / f".{final.name}.lock"):
        if final.is_dir():  # written by the process that held the lock before
            return final
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-staging-", dir=final.parent))
        try:
            write(staging)
            try:
                staging.rename(final)
            except OSError:  # another process renamed its copy first
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder renamed into place:
    processes that write the same cache entry at the same time leave one whole file (the last
    rename wins), and readers never see half of one. Raises `OSError` (a read-only folder, a
    full disk) with no temporary file left behind; callers decide whether that matters."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass
class LoadedSample:
    """What `EngineDataset` yields: the sample (None when skipped), its id, and the failure."""

    sample_id: int
    sample: dict[str, Any] | None
    error: str | None = None
    #: under `raise`, in a DataLoader worker: the error, for the main process to raise
    failure: BadSampleError | None = None


class EngineDataset(Dataset):
    """Wraps a recipe's dataset for the engine.

    Keys are `(index, epoch)` pairs from `ResumableBatchSampler`. For each it:
    - adds the sample's index (`sample_id`), used for per-sample masks and error reports;
    - seeds Python/NumPy/torch RNGs from (run seed, epoch, index) around `__getitem__`, so random
      augmentation of a sample is the same whichever worker or process loads it and whenever
      (which is what makes a resumed run bit-exact);
    - applies the bad-sample policy: `raise` propagates `BadSampleError` (naming the file),
      `skip` drops the sample and reports it so the engine can count and log it, and remembers
      it: a bad file is read once per process (per DataLoader worker), not once per epoch.
    """

    def __init__(self, dataset: Dataset, seed: int, on_bad_sample: str = "raise") -> None:
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(
                f"data.on_bad_sample must be one of {BAD_SAMPLE_POLICIES}, got {on_bad_sample!r}"
            )
        self.dataset = dataset
        self.seed = seed
        self.on_bad_sample = on_bad_sample
        self.known_bad: dict[int, str] = {}  # index -> why, under `skip`

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> LoadedSample:
        index, epoch = key
        if index in self.known_bad:
            return LoadedSample(index, None, self.known_bad[index])
        with seeded_rng(mix_seed(self.seed, epoch, index)):
            try:
                return LoadedSample(index, self.dataset[index])
            except BadSampleError as error:
                if self.on_bad_sample == "raise":
                    if get_worker_info() is None:
                        raise
                    # Raised in a worker, torch would re-raise it in the main process as a
                    # RuntimeError wrapping the worker's traceback; returned, it is raised
                    # there as itself (`engine_collate`), the same line as without workers.
                    return LoadedSample(index, None, str(error), error)
                self.known_bad[index] = str(error)
                return LoadedSample(index, None, str(error))


def engine_collate(
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> Callable[[list[LoadedSample]], tuple[dict[str, Any] | None, list[str]]]:
    """Collate `LoadedSample`s with the recipe's collate; returns (batch or None, skip reasons).
    A sample that failed under `raise` in a DataLoader worker comes back as the batch itself, a
    `BadSampleError`, for the engine to raise."""
    import torch

    def collate_loaded(
        items: list[LoadedSample],
    ) -> tuple[dict[str, Any] | BadSampleError | None, list[str]]:
        failed = next((item.failure for item in items if item.failure is not None), None)
        if failed is not None:
            return failed, []
        good = [item for item in items if item.sample is not None]
        skipped = [item.error or "" for item in items if item.sample is None]
        if not good:
            return None, skipped
        batch = collate([item.sample for item in good])  # type: ignore[misc]
        batch["sample_id"] = torch.tensor([item.sample_id for item in good], dtype=torch.long)
        return batch, skipped

    return collate_loaded
