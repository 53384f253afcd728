"""Speech as shards (`omnimask prepare --out`): decoded, resampled waveforms are stored and the
crop is drawn at access, and their lengths kept for length-bucketed batches, so a run on shards
is the run on the files."""

import json
from pathlib import Path

from omnimask.cli import main

FAST = ["train.steps=2", "train.log_every=1", "train.progress=false"]


def losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if "loss" in record]


def test_a_run_on_speech_shards_is_the_run_on_the_files(tmp_path: Path) -> None:
    """With the demo's length-bucketed batches (`data.bucket_batches=4`)."""
    shards, raw, sharded = tmp_path / "shards", tmp_path / "raw", tmp_path / "sharded"
    assert main(["prepare", "audio/w2v_bert", "--out", str(shards)]) == 0
    assert main(["pretrain", "audio/w2v_bert", "--run-dir", str(raw), *FAST]) == 0
    assert main(["pretrain", "audio/w2v_bert", "--data", str(shards),
                 "--run-dir", str(sharded), *FAST]) == 0  # fmt: skip
    assert losses(sharded) == losses(raw) and len(losses(raw)) == 2
