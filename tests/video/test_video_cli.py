"""The CLI end to end on the embedded moving-shape MP4s (pretrain -> eval -> visualize -> export),
with the Hugging Face export read back by `AutoModel` giving identical features, and a user
data folder holding a bad file."""

from __future__ import annotations

import json

import pytest
import torch
from omnimask.cli import main
from omnimask.runs import load_run
from omnimask.visualize import sample_batch
from omnimask_video.data import to_tensor
from omnimask_video.synthetic import MOTIONS
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

SHORT = [
    "train.steps=2", "train.batch_size=4", "train.checkpoint_every=2", "train.progress=false",
    "model.dim=32", "model.depth=1", "model.heads=2", "model.decoder_dim=16",
    "model.decoder_depth=1", "model.decoder_heads=2",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):  # noqa: ANN001, ANN201
    run_dir = tmp_path_factory.mktemp("videomae") / "run"
    assert main(["pretrain", "video/videomae", "--run-dir", str(run_dir), *SHORT]) == 0
    return run_dir


def test_pretrain_logs_finite_losses(run_dir) -> None:  # noqa: ANN001
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 1
    assert all(0 < r["loss"] < 10 for r in records)
    assert all(r["tokens_per_s"] > 0 for r in records)


def test_eval_probes_the_motion_labels(run_dir) -> None:  # noqa: ANN001
    assert main(["eval", str(run_dir)]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert (result["train_samples"], result["test_samples"]) == (35, 20)
    for model in ("pretrained", "random_init"):
        assert 0.0 <= result[model]["linear_probe_accuracy"] <= 1.0
        assert result[model]["feature_dim"] == 32
    train, _ = load_run(run_dir).recipe.build_eval_datasets(load_run(run_dir).config)
    assert sorted({int(train[i]["label"]) for i in range(len(train))}) == list(range(len(MOTIONS)))


def test_visualize_writes_a_frame_strip(run_dir, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "strip.png"
    assert main(["visualize", str(run_dir), "--out", str(out)]) == 0
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        # 8 frames across; original | masked | reconstruction for 2 clips down.
        assert image.width >= 600 and image.height >= 500


def test_hf_export_loads_with_automodel_and_gives_identical_features(run_dir, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    assert (
        main(["export", str(run_dir), "--format", "safetensors", "--out", str(tmp_path / "st")])
        == 0
    )
    run = load_run(run_dir)
    hf = AutoModel.from_pretrained(out).eval()
    batch = sample_batch(run.recipe, run.config, run.recipe.build_dataset(run.config), 2)
    with torch.no_grad():
        ours = run.model.encoder.forward_features(run.model.tokenizer(batch))
        theirs = hf(pixel_values=batch["video"].transpose(1, 2)).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run.model.embed(batch), theirs.mean(1), rtol=1e-5, atol=1e-5)
    # the processor beside it prepares frames as pretraining did
    processor = AutoImageProcessor.from_pretrained(out)
    spec = run.config.clip
    reader = run.recipe.build_dataset(run.config).readers[0]
    clip = reader.read(spec.num_frames, spec.stride, spec.size, False, "loop")
    prepared = processor(list(clip.frames), return_tensors="pt")["pixel_values"][0]
    ours = to_tensor(clip.frames, spec.mean, spec.std).transpose(0, 1)  # [T, C, H, W]
    torch.testing.assert_close(prepared, ours, rtol=0, atol=1e-5)


def test_bad_file_in_user_data_is_named_or_skipped(tmp_path, video_files, capsys) -> None:  # noqa: ANN001
    data = tmp_path / "data"
    data.mkdir()
    for suffix in ("mp4", "webm", "avi"):
        (data / f"good.{suffix}").write_bytes(video_files[suffix].read_bytes())
    (data / "broken.mp4").write_bytes(video_files["mp4"].read_bytes()[:300])
    args = ["pretrain", "video/videomae", "--data", str(data), *SHORT, "train.steps=1"]
    assert main([*args, "--run-dir", str(tmp_path / "a"), "data.num_workers=0"]) == 2
    assert "broken.mp4: not a readable video file" in capsys.readouterr().err
    skip = [*args, "--run-dir", str(tmp_path / "b"), "data.on_bad_sample=skip"]
    assert main(skip) == 0
