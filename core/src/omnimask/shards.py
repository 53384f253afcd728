"""Shard sets: a recipe's training set written once as LitData chunks (`omnimask prepare --out`),
then read by `pretrain` from a local or shared folder, or from object storage.

A shard holds each sample's *record*: what the recipe reads and decodes from the user's files,
before any random augmentation (the encoded image, a mesh's surface points, a resampled CT
volume). The random part (crop, point subset, flips) stays in the recipe and is drawn when the
sample is read, under the engine's per-sample seed, so a run on shards augments exactly as one
on the raw folder does, epoch after epoch. A recipe's training set opts in by implementing
`ShardableDataset`; its `build_dataset` then reads a shard set through `open_shard_set`.

Why LitData (root README, "Shards"): its chunks are read by index (`StreamingDataset[i]`), so
the engine's own sampler keeps its (seed, step) -> samples contract, which makes a run exact on
resume and the same for any number of processes; it reads S3, GCS, Azure and Hugging Face
buckets, and serves a local folder as a remote one (`local:`), which the tests use; it is
actively maintained by Lightning AI. Its writer (`BinaryWriter`) stores numpy arrays, bytes,
strings and numbers as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import accumulate
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from omnimask.errors import BadSampleError, DataPathError

#: What marks a folder as a finished shard set: written last, so a `prepare` that was killed or
#: failed leaves no folder that `pretrain` would take for one.
MANIFEST = "omnimask.json"
#: bump when the manifest or record layout changes, so older shard sets are refused, not misread.
MANIFEST_FORMAT = 1
#: each record's `record_size`, when the training set defines one (numpy int64 array)
SIZES = "sizes.npy"
#: Object-storage locations LitData reads (`local:` serves a folder as if it were remote).
REMOTE_PREFIXES = ("s3://", "gs://", "azure://", "r2://", "hf://", "local:")
#: LitData's suggested chunk size: large enough for object-storage throughput
DEFAULT_CHUNK_BYTES = "64MB"
#: LitData's own index of a folder's chunks
LITDATA_INDEX = "index.json"

# LitData asks PyPI for a newer version of itself when it is first used; nothing may download at
# run time (and a cluster node often has no route out), so that check is off unless asked for.
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")


@runtime_checkable
class ShardableDataset(Protocol):
    """A training set that `omnimask prepare --out` can write as shards.

    `dataset[i]` must equal `dataset.sample(dataset.record(i))` under the same seeded RNG:
    `record` reads and decodes, deterministically (it may raise `BadSampleError`); `sample` does
    the random rest. A record is a flat dict of numpy arrays, bytes, strings and numbers.
    `record_kind` names the record layout and its version ("pointcloud.points/1"): every recipe
    whose training set reads that kind can train on the same shards, and a changed layout
    (another version) is refused rather than misread.

    Optional: `shard_attributes()`, JSON values that `sample` needs or that changed how records
    were decoded (checked on reading with `ShardSet.require`); `record_size(record)`, a length
    per record (audio samples...) kept in `sizes.npy` for length-bucketed batches.
    """

    record_kind: str

    def __len__(self) -> int: ...

    def record(self, index: int) -> dict[str, Any]: ...

    def sample(self, record: dict[str, Any]) -> dict[str, Any]: ...


def verbatim_serializers() -> dict[str, Any]:
    """LitData serializers that store strings and bytes as they are.

    LitData's own guess by content: a string naming an existing `.ply` or `.tif` file is stored
    as that file's contents, and bytes that look like an image may be decoded on reading. A
    record's source name or encoded image must come back unchanged, so these two take
    precedence (LitData tries the serializers it is given first), for writing and reading.
    """
    from litdata.streaming.serializers import BytesSerializer, StringSerializer

    class VerbatimString(StringSerializer):
        def can_serialize(self, data: Any) -> bool:
            return isinstance(data, str)

    class VerbatimBytes(BytesSerializer):
        def can_serialize(self, item: Any) -> bool:
            return isinstance(item, (bytes, bytearray))

        def serialize(self, item: bytes) -> tuple[bytes, str | None]:
            return bytes(item), None

    return {"omnimask_str": VerbatimString(), "omnimask_bytes": VerbatimBytes()}


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_PREFIXES)


@dataclass
class ShardSet:
    """A finished shard set: where it is, and what its manifest says."""

    location: str  # a folder, or an object-storage URL (`s3://bucket/prefix`, `local:/folder`)
    record_kind: str
    samples: int
    #: what the recipe's `sample` needs besides the records (normalisation statistics...),
    #: from the training set's `shard_attributes()` when the shards were written
    attributes: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None  # a remote set's chunk cache (None: read from `location`)
    has_sizes: bool = False  # whether `sizes.npy` holds each record's `record_size`

    def require(self, settings: dict[str, Any]) -> None:
        """Refuse shards whose records were decoded under other `settings` (config values that
        change a record, as the training set's `shard_attributes` wrote them) than this run's:
        the run would silently train on other data than its config says."""
        for key, value in settings.items():
            wanted = json.loads(json.dumps(value))  # tuples as the manifest holds them: lists
            written = self.attributes.get(key)
            if written != wanted:
                raise DataPathError(
                    f"{self.location}: its records were decoded with {key}={written}, this run "
                    f"asks for {wanted}; set it back, or write the shards again with "
                    "`omnimask prepare --out`"
                )

    def sizes(self) -> Any:
        """Each record's `record_size` (a numpy array), as written with the shards; raises
        `DataPathError` when the training set that wrote them gave none."""
        import numpy as np

        if not self.has_sizes:
            raise DataPathError(f"{self.location}: its records were written without sizes")
        path = Path(self.location) / SIZES
        if is_remote(self.location):
            path = Path(self.cache_dir or "") / SIZES
            fetch(self.location, SIZES, path)
        sizes = np.load(path)
        if len(sizes) != self.samples:
            raise DataPathError(f"{path}: {len(sizes)} sizes for {self.samples} samples")
        return sizes

    def dataset(self, sample: Callable[[dict[str, Any]], dict[str, Any]]) -> ShardDataset:
        """The training set: record `i` of the shards, through the recipe's `sample`."""
        return ShardDataset(self, sample)


def default_cache_dir(location: str) -> str:
    """Where chunks of a remote shard set are kept: one folder per URL under
    `default_data_dir("shards")`, shared by the runs that read it."""
    from omnimask.data import default_data_dir  # imports torch: not when this module loads

    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    return str(default_data_dir("shards") / digest)


def fetch(location: str, name: str, local: Path) -> None:
    """Copy file `name` of the remote shard set at `location` to `local`, through LitData's
    downloader for that storage. Written to a temporary name and renamed, so processes that
    fetch the same file at once each leave a whole one and none reads half of one."""
    from litdata.streaming.downloader import get_downloader

    local.parent.mkdir(parents=True, exist_ok=True)
    temporary = local.with_name(f".{local.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        get_downloader(location, str(local.parent), []).download_file(
            f"{location.rstrip('/')}/{name}", str(temporary)
        )
        os.replace(temporary, local)
    finally:
        temporary.unlink(missing_ok=True)


def read_manifest(location: str, cache_dir: str) -> dict[str, Any]:
    """The manifest of the shard set at `location`, fetched through LitData's downloader when
    the set is remote. Raises `DataPathError` naming the location when there is none."""
    if is_remote(location):
        local = Path(cache_dir) / MANIFEST
        try:
            fetch(location, MANIFEST, local)
            text = local.read_text()
        except Exception as error:  # noqa: BLE001 - each storage backend raises its own types
            raise DataPathError(
                f"{location}: no shard set there ({MANIFEST} cannot be read: "
                f"{type(error).__name__}: {error})"
            ) from error
    else:
        path = Path(location) / MANIFEST
        try:
            text = path.read_text()
        except OSError as error:
            raise DataPathError(
                f"{location}: not a finished shard set ({MANIFEST} cannot be read: "
                f"{error.strerror or error}; run `omnimask prepare RECIPE --out` again)"
            ) from error
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        raise DataPathError(f"{location}/{MANIFEST}: damaged ({error})") from error
    return manifest


def open_shard_set(
    path: str | None, record_kind: str, cache_dir: str | None = None
) -> ShardSet | None:
    """The shard set at `path` (a folder holding `omnimask.json`, or an object-storage URL),
    checked to hold `record_kind` records; None when `path` is raw data for the recipe to read
    itself."""
    if path is None:
        return None
    if not is_remote(path) and not (Path(path) / MANIFEST).is_file():
        if (Path(path) / LITDATA_INDEX).is_file():  # chunks without the manifest written last
            raise DataPathError(
                f"{path}: not a finished shard set (LitData chunks without {MANIFEST}: its "
                "`omnimask prepare --out` did not complete, or the folder was written by "
                "another tool); write it again with `omnimask prepare RECIPE --out`"
            )
        return None
    location = path if is_remote(path) else str(Path(path).resolve())
    cache = (cache_dir or default_cache_dir(location)) if is_remote(path) else None
    manifest = read_manifest(location, cache or "")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise DataPathError(
            f"{path}: shard format {manifest.get('format')!r}, this omnimask reads format "
            f"{MANIFEST_FORMAT}; write the shards again with `omnimask prepare --out`"
        )
    if manifest.get("record_kind") != record_kind:
        raise DataPathError(
            f"{path}: its shards hold {manifest.get('record_kind')!r} records (written for "
            f"{manifest.get('recipe')}), this recipe reads {record_kind!r}; prepare shards for it"
        )
    attributes = dict(manifest["attributes"])
    samples, sizes = int(manifest["samples"]), bool(manifest.get("sizes"))
    return ShardSet(location, record_kind, samples, attributes, cache, sizes)


class ShardDataset:
    """Record `i` of a shard set, made a training sample by the recipe's `sample`: a map-style
    data set (`__len__`, `__getitem__`), importable without torch like this whole module, so
    the CLI can tell a shard set's URL from a missing folder before its heavy imports.

    Random access (LitData's `StreamingDataset[i]` over a folder, memory-mapped), so the
    engine's sampler decides the order as it does for raw files. A remote set's chunks are
    fetched whole, on first use, into the cache folder (LitData's downloader), which is then
    read as a local set: LitData's own remote reader serves its in-order streaming, and under
    random access from several DataLoader workers one worker deletes the chunk another is
    reading (0.2.76). The reader is opened lazily in each process and worker.
    """

    def __init__(self, shards: ShardSet, sample: Callable[[dict[str, Any]], dict[str, Any]]):
        self.shards, self.sample = shards, sample
        self._reader: Any = None
        self._chunks: list[str] = []  # a remote set's chunk files, in index order
        self._chunk_ends: list[int] = []  # the sample index each chunk ends before

    def __len__(self) -> int:
        return self.shards.samples

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}

    @property
    def folder(self) -> Path:
        """Where the chunks are read from: a remote set's cache, or the set's folder."""
        return Path(self.shards.cache_dir or self.shards.location)

    def reader(self) -> Any:
        if self._reader is None:
            from litdata import StreamingDataset

            location = self.shards.location
            if is_remote(location):
                fetch(location, LITDATA_INDEX, self.folder / LITDATA_INDEX)
                chunks = json.loads((self.folder / LITDATA_INDEX).read_text())["chunks"]
                self._chunks = [chunk["filename"] for chunk in chunks]
                self._chunk_ends = list(accumulate(chunk["chunk_size"] for chunk in chunks))
            # batch_decode=0: one record per read. LitData's default decodes a window of the
            # records that follow, for readers that go through a chunk in order, not ours.
            self._reader = StreamingDataset(
                str(self.folder), serializers=verbatim_serializers(), batch_decode=0
            )
            if len(self._reader) != self.shards.samples:
                raise DataPathError(
                    f"{location}: its chunk index lists {len(self._reader)} samples, its "
                    f"{MANIFEST} {self.shards.samples}; the set was changed after it was written"
                )
        return self._reader

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.read(index)
        # LitData hands bytes back as memoryviews of its chunk buffer
        record = {k: bytes(v) if isinstance(v, memoryview) else v for k, v in record.items()}
        return self.sample(record)

    def read(self, index: int) -> dict[str, Any]:
        """Record `index`, its chunk fetched first when the set is remote."""
        reader = self.reader()
        source = f"{self.shards.location} (sample {index})"
        try:
            if self._chunks:
                name = self._chunks[bisect_right(self._chunk_ends, index)]
                if not (self.folder / name).is_file():
                    fetch(self.shards.location, name, self.folder / name)
            return reader[index]
        except (OSError, ValueError, RuntimeError, struct.error) as error:
            raise BadSampleError(source, f"cannot be read ({error})") from error


def share_like_a_new_folder(folder: Path) -> None:
    """Give `folder` and its files the permissions a plain `mkdir` and `open` would (the
    umask's), not the owner-only ones of a temporary folder and file: the processes of other
    users and nodes read a shard set from a shared file system."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~umask)


@dataclass
class WriteReport:
    """What `write_shard_set` wrote: the number of samples and the bad inputs left out."""

    out: Path
    samples: int
    skipped: list[str]


def write_shard_set(
    recipe: str,
    dataset: Any,
    out: Path,
    *,
    source: str | None,
    on_bad_sample: str = "raise",
    chunk_bytes: str = DEFAULT_CHUNK_BYTES,
) -> WriteReport:
    """Write every record of `dataset` (a `ShardableDataset`) to the new folder `out`.

    The shards are written to a staging folder beside `out`, the manifest last, and the folder
    renamed into place: a write that fails (a bad sample under `raise`, a full disk) or is
    killed leaves no `out` and touches nothing else. An existing non-empty `out` is refused.
    """
    import numpy as np
    from litdata.streaming.writer import BinaryWriter
    from tqdm.auto import tqdm

    from omnimask.data import BAD_SAMPLE_POLICIES, write_atomically

    if not isinstance(dataset, ShardableDataset):
        raise DataPathError(
            f"recipe {recipe} cannot write shards: its training set "
            f"({type(dataset).__name__}) does not split reading from augmentation "
            "(`omnimask.shards.ShardableDataset`)"
        )
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise DataPathError(f"data.on_bad_sample must be one of {BAD_SAMPLE_POLICIES}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataPathError(f"{out} already exists and is not empty: give a new folder to --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-staging-", dir=out.parent))
    except OSError as error:
        raise DataPathError(f"cannot write {out}: {error.strerror or error}") from error
    skipped: list[str] = []
    record_size = getattr(dataset, "record_size", None)
    sizes: list[int] = []
    try:
        writer = BinaryWriter(
            str(staging), chunk_bytes=chunk_bytes, serializers=verbatim_serializers()
        )
        written = 0
        for index in tqdm(range(len(dataset)), f"{recipe}: shards", unit="sample", disable=None):
            try:
                record = dataset.record(index)
            except BadSampleError as error:
                if on_bad_sample == "raise":
                    raise
                skipped.append(str(error))
                continue
            writer[written] = record
            written += 1
            if record_size is not None:
                sizes.append(record_size(record))
        if not written:
            raise DataPathError(f"{source}: no sample could be read, so no shards were written")
        writer.done()
        writer.merge()
        if record_size is not None:
            np.save(staging / SIZES, np.asarray(sizes, dtype=np.int64))
        manifest = {
            "format": MANIFEST_FORMAT,
            "recipe": recipe,
            "record_kind": dataset.record_kind,
            "samples": written,
            "skipped": len(skipped),
            "sizes": record_size is not None,
            "attributes": getattr(dataset, "shard_attributes", dict)(),
            "source": source,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_atomically(staging / MANIFEST, json.dumps(manifest, indent=1).encode())
        share_like_a_new_folder(staging)
        if out.is_dir():
            out.rmdir()  # empty (checked above); a rename cannot replace it
        staging.rename(out)
    except OSError as error:
        raise DataPathError(
            f"cannot write shards to {out}: {error.strerror or error} (nothing was kept)"
        ) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return WriteReport(out, written, skipped)
