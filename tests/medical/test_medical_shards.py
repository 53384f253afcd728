"""CT volumes as shards (`omnimask prepare --out`): the preprocessed volumes are stored, so a
run whose `data.ct` would preprocess them differently is refused in one line."""

from pathlib import Path

import pytest
from omnimask.cli import main


def test_shards_of_other_ct_preprocessing_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = tmp_path / "shards"
    assert main(["prepare", "medical/mambamim", "--out", str(shards)]) == 0
    capsys.readouterr()
    assert main(["pretrain", "medical/mambamim", "--data", str(shards),
                 "data.ct.window=[-100,200]", "train.steps=1"]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        f"omnimask: error: {shards}: its records were decoded with data.ct.window=[-175.0, "
        "250.0], this run asks for [-100.0, 200.0]; set it back, or write the shards again "
        "with `omnimask prepare --out`"
    )
