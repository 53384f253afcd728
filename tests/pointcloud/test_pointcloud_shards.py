"""Point clouds as shards (`omnimask prepare --out`): one shard set of decoded points serves
every point-cloud recipe, a run on it is the run on the files, and a config that would decode
the files differently is refused in one line."""

import json
from pathlib import Path

import pytest
from omnimask.cli import main

FAST = ["train.steps=3", "train.log_every=1", "train.progress=false", "train.batch_size=8"]


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


def test_a_run_on_point_shards_is_the_run_on_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = tmp_path / "shards"
    assert main(["prepare", "pointcloud/point_mae", "--out", str(shards)]) == 0
    assert f"192 samples written to {shards}" in capsys.readouterr().out
    raw, sharded = tmp_path / "raw", tmp_path / "sharded"
    assert main(["pretrain", "pointcloud/point_mae", "--run-dir", str(raw), *FAST]) == 0
    assert main(["pretrain", "pointcloud/point_mae", "--data", str(shards),
                 "--run-dir", str(sharded), *FAST]) == 0  # fmt: skip
    assert losses(sharded) == losses(raw) and len(losses(raw)) == 3

    # the dVAE of Point-BERT reads the same records
    dvae = tmp_path / "dvae"
    assert main(["pretrain", "pointcloud/point_bert_dvae", "--data", str(shards),
                 "--run-dir", str(dvae), *FAST]) == 0  # fmt: skip
    capsys.readouterr()
    # more points per cloud than the shards' meshes were sampled for: refused
    assert main(["pretrain", "pointcloud/point_mae", "--data", str(shards),
                 "patches.num_points=16384", *FAST]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        f"omnimask: error: {shards}: its records were decoded with mesh_samples=8192, this run "
        "asks for 16384; set it back, or write the shards again with `omnimask prepare --out`"
    )
