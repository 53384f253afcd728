"""Shard sets (`omnimask prepare --out`, `omnimask.shards`) on the toy recipe: a run on shards is
the run on the raw data, resumes exactly, reads them from a (locally emulated) bucket, and every
way of writing or reading them wrong ends in one line with nothing lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
from omnimask import plugins
from omnimask.cli import main
from omnimask.data import BadSampleError
from omnimask.engine.checkpoint import list_checkpoints
from omnimask.engine.metrics import read_metrics
from omnimask.plugins import discover
from omnimask.shards import MANIFEST, ShardDataset, open_shard_set, write_shard_set
from test_engine import RUN_TOY, losses, train
from toy_recipe import ToyData

TOY = EntryPoint(name="toy", value="fake_plugins:toy", group=plugins.ENTRY_POINT_GROUP)


@pytest.fixture(autouse=True, scope="module")
def toy_plugin():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plugins, "_entry_points", lambda: [TOY])
        discover.cache_clear()
        yield
    discover.cache_clear()


@pytest.fixture(scope="module")
def shards(toy_plugin: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("written") / "shards"
    assert main(["prepare", "toy/mim", "--out", str(out)]) == 0
    return out


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_prepare_writes_a_manifest_and_litdata_chunks_others_can_read(shards: Path) -> None:
    manifest = json.loads((shards / MANIFEST).read_text())
    assert manifest["recipe"] == "toy/mim" and manifest["record_kind"] == "toy.values/1"
    assert manifest["samples"] == 64 and manifest["skipped"] == 0
    assert {p.name for p in shards.iterdir()} >= {MANIFEST, "index.json", "chunk-0-0.bin"}
    # other users and nodes of a shared file system can read them (not a temporary folder's 0700)
    umask = os.umask(0)
    os.umask(umask)
    assert shards.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (shards / MANIFEST).stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_run_on_shards_is_the_run_on_the_raw_data_and_resumes_exactly(
    shards: Path, tmp_path: Path
) -> None:
    raw = losses(train(tmp_path / "raw"))
    assert losses(train(tmp_path / "shards", f"data.path={shards}")) == raw
    # killed (SIGKILL) past its step-4 checkpoint, then started again
    killed = tmp_path / "killed"
    args = [f"data.path={shards}", "delay=0.01"]
    process = subprocess.Popen([sys.executable, RUN_TOY, killed, *args])
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120

    def past_the_first_checkpoint() -> bool:
        checkpoints = [step for step, _ in list_checkpoints(killed / "checkpoints")]
        return checkpoints == [4] and len(read_metrics(metrics)) >= 6

    while time.time() < deadline and not (metrics.exists() and past_the_first_checkpoint()):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [step for step, _ in list_checkpoints(killed / "checkpoints")] == [4]
    subprocess.run([sys.executable, RUN_TOY, killed, *args], check=True)
    assert losses(read_metrics(metrics)) == raw


def test_shards_in_a_bucket_are_read_through_a_local_cache_by_several_workers(
    shards: Path, tmp_path: Path
) -> None:
    """`local:` is LitData's stand-in for object storage: chunks are fetched into the cache as
    from S3. Two DataLoader workers fetch the same chunk at once (one waits for the other)."""
    raw = losses(train(tmp_path / "raw"))
    cache = tmp_path / "cache"
    bucket = [f"data.path=local:{shards}", f"data.shard_cache={cache}", "data.num_workers=2"]
    assert losses(train(tmp_path / "bucket", *bucket)) == raw
    assert (cache / "chunk-0-0.bin").read_bytes() == (shards / "chunk-0-0.bin").read_bytes()


def test_strings_and_bytes_come_back_as_they_were_written(tmp_path: Path) -> None:
    """LitData would store a string naming a .ply file as that file, and decode bytes that look
    like an image; a record's fields must come back unchanged."""
    mesh = tmp_path / "cube.ply"
    mesh.write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(40))

    class Records:
        record_kind = "test.mixed/1"

        def __len__(self) -> int:
            return 2

        def record(self, index: int) -> dict:
            return {"source": str(mesh), "png": png, "n": index, "x": np.arange(3.0) * index}

        def sample(self, record: dict) -> dict:
            return record

    write_shard_set("test/mixed", Records(), tmp_path / "out", source=None)
    shard_set = open_shard_set(str(tmp_path / "out"), "test.mixed/1")
    read = shard_set.dataset(lambda record: record)[1]
    assert read["source"] == str(mesh) and read["png"] == png and read["n"] == 1
    np.testing.assert_array_equal(read["x"], [0.0, 1.0, 2.0])


def test_records_of_bytes_and_strings_only_are_read_from_a_bucket(tmp_path: Path) -> None:
    """Encoded images and their names: LitData's per-sample range reads return such records
    empty, so remote chunks are fetched whole."""

    class Images:
        record_kind = "test.images/1"

        def __len__(self) -> int:
            return 3

        def record(self, index: int) -> dict:
            return {"image": bytes([index]) * (10 + index), "source": f"img{index}.png"}

        def sample(self, record: dict) -> dict:
            return record

    write_shard_set("test/images", Images(), tmp_path / "out", source=None)
    bucket = open_shard_set(f"local:{tmp_path / 'out'}", "test.images/1", str(tmp_path / "c"))
    dataset = bucket.dataset(lambda record: record)
    assert [dataset[i] for i in range(3)] == [Images().record(i) for i in range(3)]


def test_bad_samples_stop_prepare_in_one_line_or_are_left_out_and_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shards"
    assert main(["prepare", "toy/mim", "--out", str(out), "bad=[5]"]) == 2
    assert error_line(capsys) == "omnimask: error: toy/5.npy: corrupt"
    assert list(tmp_path.iterdir()) == []  # no folder, no staging copy left behind

    overrides = ["bad=[5,9]", "data.on_bad_sample=skip"]
    assert main(["prepare", "toy/mim", "--out", str(out), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "62 samples written" in printed and "2 bad inputs left out, e.g. toy/5.npy" in printed
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["samples"] == 62 and manifest["skipped"] == 2


def test_prepare_refuses_a_folder_that_holds_files_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["prepare", "toy/mim", "--out", str(out)]) == 2
    assert error_line(capsys) == (
        f"omnimask: error: {out} already exists and is not empty: give a new folder to --out"
    )
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


def test_a_full_disk_while_writing_is_one_line_and_keeps_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from litdata.streaming.writer import BinaryWriter

    def full(self, index, items) -> None:  # noqa: ANN001
        if index == 40:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(BinaryWriter, "__setitem__", full)
    out = tmp_path / "shards"
    assert main(["prepare", "toy/mim", "--out", str(out)]) == 2
    assert error_line(capsys) == (
        f"omnimask: error: cannot write shards to {out}: No space left on device (nothing was kept)"
    )
    assert list(tmp_path.iterdir()) == []


def test_unfinished_foreign_or_missing_shard_sets_are_one_line(
    shards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "index.json").write_text((shards / "index.json").read_text())
    assert main(["pretrain", "toy/mim", "--data", str(unfinished)]) == 2
    assert error_line(capsys).startswith(
        f"omnimask: error: {unfinished}: not a finished shard set (LitData chunks without "
        "omnimask.json"
    )

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    manifest = json.loads((shards / MANIFEST).read_text())
    manifest.update(record_kind="pointcloud.points/1", recipe="pointcloud/point_mae")
    (foreign / MANIFEST).write_text(json.dumps(manifest))
    assert main(["pretrain", "toy/mim", "--data", str(foreign)]) == 2
    assert error_line(capsys) == (
        f"omnimask: error: {foreign}: its shards hold 'pointcloud.points/1' records (written "
        "for pointcloud/point_mae), this recipe reads 'toy.values/1'; prepare shards for it"
    )

    missing = f"local:{tmp_path / 'no_bucket'}"
    overrides = [f"data.shard_cache={tmp_path / 'cache'}"]
    assert main(["pretrain", "toy/mim", "--data", missing, *overrides]) == 2
    assert error_line(capsys).startswith(
        f"omnimask: error: {missing}: no shard set there (omnimask.json cannot be read"
    )


def test_a_damaged_chunk_names_the_shard_set_and_the_sample(shards: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for file in shards.iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    chunk = damaged / "chunk-0-0.bin"
    chunk.write_bytes(chunk.read_bytes()[:1000])  # cut short
    dataset = open_shard_set(str(damaged), ToyData.record_kind).dataset(ToyData().sample)
    assert isinstance(dataset, ShardDataset)
    with pytest.raises(BadSampleError, match=rf"^{damaged} \(sample 60\): cannot be read"):
        dataset[60]


def test_a_training_set_that_cannot_be_sharded_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(ToyData, "record")
    assert main(["prepare", "toy/mim", "--out", str(tmp_path / "out")]) == 2
    assert error_line(capsys) == (
        "omnimask: error: recipe toy/mim cannot write shards: its training set (ToyData) does "
        "not split reading from augmentation (`omnimask.shards.ShardableDataset`)"
    )
    assert list(tmp_path.iterdir()) == []


def test_record_sizes_are_kept_for_length_buckets_and_fetched_from_a_bucket(
    tmp_path: Path,
) -> None:
    class Clips:
        record_kind = "test.clips/1"

        def __len__(self) -> int:
            return 4

        def record(self, index: int) -> dict:
            return {"wave": np.zeros(10 * (index + 1), dtype=np.float32)}

        def record_size(self, record: dict) -> int:
            return len(record["wave"])

        def sample(self, record: dict) -> dict:
            return record

    write_shard_set("test/clips", Clips(), tmp_path / "out", source=None)
    local = open_shard_set(str(tmp_path / "out"), "test.clips/1")
    bucket = open_shard_set(f"local:{tmp_path / 'out'}", "test.clips/1", str(tmp_path / "c"))
    for shard_set in (local, bucket):
        np.testing.assert_array_equal(shard_set.sizes(), [10, 20, 30, 40])
