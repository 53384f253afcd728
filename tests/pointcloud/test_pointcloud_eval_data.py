"""`omnimask eval` on a point-cloud run pretrained on an unlabelled folder: it scores the embedded
labelled set by default, and an unlabelled `--data` folder is one line naming the layout."""

import json
import shutil
from pathlib import Path

import pytest
from omnimask.cli import main
from omnimask_pointcloud.data import ensure_default_data


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("unlabelled")
    folder = root / "clouds"
    folder.mkdir()
    clouds = [p for p in sorted(ensure_default_data().rglob("train/*")) if p.is_file()]
    for path in clouds[::25][:8]:
        shutil.copy(path, folder / f"{path.parent.parent.name}_{path.name}")
    run = root / "run"
    overrides = ["train.steps=2", "train.batch_size=4", "train.progress=false"]
    assert main(["pretrain", "pointcloud/point_mae", "--data", str(folder),
                 "--run-dir", str(run), *overrides]) == 0  # fmt: skip
    return run, folder


def test_eval_of_a_run_on_unlabelled_data_scores_the_embedded_set(unlabelled_run) -> None:
    run, _ = unlabelled_run
    assert main(["eval", str(run), "--limit", "20", "--k", "3"]) == 0
    result = json.loads((run / "eval.json").read_text())
    assert result["train_samples"] == 20 and result["test_samples"] == 20


def test_eval_on_an_unlabelled_folder_names_data_and_the_layout(unlabelled_run, capsys) -> None:
    run, folder = unlabelled_run
    assert main(["eval", str(run), "--data", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnimask: error: ") and len(err.splitlines()) == 1
    assert "at least two <class>/ subfolders" in err and "--data expects a folder of" in err
