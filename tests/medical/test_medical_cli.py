"""The CLI end to end on the embedded CT phantoms: pretrain, eval, visualize, export; user data
folders and bad data."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import nibabel as nib
import pytest
import torch
from omnimask.cli import main
from omnimask.export import load_safetensors_export
from omnimask.runs import load_run
from omnimask_medical.phantoms import default_dataset

RECIPE = "medical/mambamim"
FAST = ["train.steps=4", "train.batch_size=4", "train.progress=false", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("mambamim") / "run"
    assert main(["pretrain", RECIPE, "--run-dir", str(run), *FAST]) == 0
    return run


@pytest.mark.slow
def test_eval_visualize_export(run_dir: Path, tmp_path: Path) -> None:
    assert main(["eval", str(run_dir)]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["train_samples"] == 24 and result["test_samples"] == 16
    assert result["pretrained"]["feature_dim"] == 48

    figure = tmp_path / "slices.png"
    assert main(["visualize", str(run_dir), "--out", str(figure), "--num", "2"]) == 0
    image = matplotlib.image.imread(figure)
    assert image.shape[0] == 2 * image.shape[1]  # 6 rows (2 volumes x 3 views) of 3 columns
    assert image[..., :3].std() > 0.05

    assert main(["export", str(run_dir), "--out", str(tmp_path / "st")]) == 0
    _, _, exported = load_safetensors_export(tmp_path / "st")
    run = load_run(run_dir)
    batch = {"volume": torch.rand(2, 1, 32, 32, 32)}
    torch.testing.assert_close(exported.embed(batch), run.model.eval().embed(batch))


@pytest.mark.slow
def test_pretrains_on_a_user_folder_of_mixed_nifti(tmp_path: Path, capsys) -> None:
    data = tmp_path / "scans" / "nested"
    data.mkdir(parents=True)
    phantoms = sorted((default_dataset() / "pretrain").rglob("*.nii.gz"))[:3]
    for index, path in enumerate(phantoms):
        image = nib.load(path)
        if index == 0:  # uncompressed .nii too
            nib.save(image, str(data / "a.nii"))
        else:
            (data / f"{index}.nii.gz").write_bytes(path.read_bytes())
    run = tmp_path / "run"
    args = ["pretrain", RECIPE, "--data", str(tmp_path / "scans"), "--run-dir", str(run), *FAST]
    assert main(args) == 0
    assert list((data / ".omnimask-cache").glob("*.npy"))  # preprocessed once, cached

    (data / "broken.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 50)
    assert main([*args[:-4], "--run-dir", str(tmp_path / "run2"), *FAST]) != 0
    assert "broken.nii.gz" in capsys.readouterr().err
    skip = ["data.on_bad_sample=skip"]
    assert main([*args[:-4], "--run-dir", str(tmp_path / "run3"), *FAST, *skip]) == 0


def test_crop_must_fit_the_coarse_grid(capsys) -> None:
    assert main(["pretrain", RECIPE, "data.crop=36", "train.steps=1"]) == 2
    assert "data.crop=36 must be a multiple of the coarse cell (8" in capsys.readouterr().err


def test_empty_folder_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["pretrain", RECIPE, "--data", str(tmp_path), "train.steps=1"]) == 2
    assert "holds no files matching *.nii, *.nii.gz" in capsys.readouterr().err
