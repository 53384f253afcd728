"""Point clouds as shards (`omnimask prepare --out`): one shard set of decoded points serves
every point-cloud recipe, a run on it is the run on the files, and a config that would decode
the files differently is refused in one line."""

from pathlib import Path

import pytest
from omnimask.cli import main
from omnimask.testing import logged_losses, train_on_files_and_on_shards

FAST = ["train.steps=3", "train.log_every=1", "train.progress=false", "train.batch_size=8"]


def test_a_run_on_point_shards_is_the_run_on_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = train_on_files_and_on_shards("pointcloud/point_mae", tmp_path, *FAST)
    assert f"192 samples written to {runs.shards}" in capsys.readouterr().out
    assert logged_losses(runs.on_shards) == logged_losses(runs.on_files)
    assert len(logged_losses(runs.on_files)) == 3

    # the dVAE of Point-BERT reads the same records
    dvae = tmp_path / "dvae"
    assert main(["pretrain", "pointcloud/point_bert_dvae", "--data", str(runs.shards),
                 "--run-dir", str(dvae), *FAST]) == 0  # fmt: skip
    capsys.readouterr()
    # more points per cloud than the shards' meshes were sampled for: refused
    assert main(["pretrain", "pointcloud/point_mae", "--data", str(runs.shards),
                 "patches.num_points=16384", *FAST]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        f"omnimask: error: {runs.shards}: its records were decoded with mesh_samples=8192, this "
        "run asks for 16384; set it back, or write the shards again with `omnimask prepare --out`"
    )
