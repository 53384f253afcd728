"""Scene pairs as shards (`omnimask prepare --out`): chips are stored as read and normalised at
access with the band statistics the shard set carries, so a run on shards is the run on the
GeoTIFFs (statistics included), and shards of other chips are refused in one line."""

import json
from pathlib import Path

import pytest
from omnimask.cli import main
from omnimask.runs import load_run

FAST = ["train.steps=2", "train.log_every=1", "train.progress=false"]


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


def test_a_run_on_chip_shards_is_the_run_on_the_scenes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards, raw, sharded = tmp_path / "shards", tmp_path / "raw", tmp_path / "sharded"
    assert main(["prepare", "remote_sensing/croma", "--out", str(shards)]) == 0
    assert main(["pretrain", "remote_sensing/croma", "--run-dir", str(raw), *FAST]) == 0
    assert main(["pretrain", "remote_sensing/croma", "--data", str(shards),
                 "--run-dir", str(sharded), *FAST]) == 0  # fmt: skip
    assert losses(sharded) == losses(raw) and len(losses(raw)) == 2
    assert load_run(sharded).config.stats == load_run(raw).config.stats

    capsys.readouterr()
    assert main(["pretrain", "remote_sensing/croma", "--data", str(shards),
                 "chips.size=64", *FAST]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        f"omnimask: error: {shards}: its records were decoded with chips.size=32, this run "
        "asks for 64; set it back, or write the shards again with `omnimask prepare --out`"
    )
