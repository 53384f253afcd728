"""Scene pairs as shards (`omnimask prepare --out`): chips are stored as read and normalised at
access with the band statistics the shard set carries, so a run on shards is the run on the
GeoTIFFs (statistics included), and shards of other chips are refused in one line."""

from pathlib import Path

import pytest
from omnimask.cli import main
from omnimask.runs import load_run
from omnimask.testing import logged_losses, train_on_files_and_on_shards

FAST = ["train.steps=2", "train.log_every=1", "train.progress=false"]


def test_a_run_on_chip_shards_is_the_run_on_the_scenes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = train_on_files_and_on_shards("remote_sensing/croma", tmp_path, *FAST)
    assert logged_losses(runs.on_shards) == logged_losses(runs.on_files)
    assert len(logged_losses(runs.on_files)) == 2
    assert load_run(runs.on_shards).config.stats == load_run(runs.on_files).config.stats
    shards = runs.shards

    capsys.readouterr()
    assert main(["pretrain", "remote_sensing/croma", "--data", str(shards),
                 "chips.size=64", *FAST]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        f"omnimask: error: {shards}: its records were decoded with chips.size=32, this run "
        "asks for 64; set it back, or write the shards again with `omnimask prepare --out`"
    )
