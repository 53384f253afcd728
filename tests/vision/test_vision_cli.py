"""The CLI end to end on the embedded images, as a user runs it: pretrain, eval, visualize,
export, then the export loaded by timm alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from omnimask.cli import main
from PIL import Image
from safetensors.torch import load_file


def labelled_folder(root: Path) -> Path:
    """Two classes of 10 tiny images (dark / bright); every fifth is held out for testing."""
    generator = torch.Generator().manual_seed(0)
    for label, base in (("dark", 40), ("bright", 200)):
        (root / label).mkdir(parents=True)
        for index in range(10):
            noise = torch.randint(-30, 30, (24, 24, 3), generator=generator)
            pixels = (base + noise).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    return root


@pytest.mark.parametrize("recipe", ["vision/spark", "vision/mae"])
def test_pretrain_eval_visualize_export_on_embedded_data(
    recipe: str, tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    overrides = ["train.steps=2", "train.batch_size=4", "train.progress=false"]
    assert main(["pretrain", recipe, "--preset", "demo", "--run-dir", str(run), *overrides]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows]
    assert losses and all(torch.isfinite(torch.tensor(losses)))

    assert main(["eval", str(run), "--data", str(labelled_folder(tmp_path / "labels"))]) == 0
    scores = json.loads((run / "eval.json").read_text())
    assert 0.0 <= scores["pretrained"]["linear_probe_accuracy"] <= 1.0
    assert scores["test_samples"] == 4

    figure = tmp_path / "figure.png"
    assert main(["visualize", str(run), "--out", str(figure)]) == 0
    with Image.open(figure) as image:
        image.verify()
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width >= 300 and image.height >= 200

    exported = tmp_path / "timm"
    assert main(["export", str(run), "--format", "timm", "--out", str(exported)]) == 0
    config = json.loads((exported / "timm_config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, **config["kwargs"])
    result = model.load_state_dict(load_file(str(exported / "model.safetensors")), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_bad_data_path_is_one_clear_error(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["pretrain", "vision/spark", "--data", str(empty), "train.steps=1"])
    assert code == 2
    assert f"data path {empty} holds no files matching" in capsys.readouterr().err
