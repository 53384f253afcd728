"""Speech as shards (`omnimask prepare --out`): decoded, resampled waveforms are stored and the
crop is drawn at access, and their lengths kept for length-bucketed batches, so a run on shards
is the run on the files."""

from pathlib import Path

from omnimask.testing import logged_losses, train_on_files_and_on_shards

FAST = ["train.steps=2", "train.log_every=1", "train.progress=false"]


def test_a_run_on_speech_shards_is_the_run_on_the_files(tmp_path: Path) -> None:
    """With the demo's length-bucketed batches (`data.bucket_batches=4`)."""
    runs = train_on_files_and_on_shards("audio/w2v_bert", tmp_path, *FAST)
    assert logged_losses(runs.on_shards) == logged_losses(runs.on_files)
    assert len(logged_losses(runs.on_files)) == 2
