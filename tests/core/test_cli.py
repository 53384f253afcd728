"""The `omnimask` CLI end to end on the toy plugin, as a user runs it (in-process for speed)."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from omnimask import plugins
from omnimask.cli import main
from omnimask.export import load_safetensors_export
from omnimask.plugins import discover
from omnimask.runs import load_run
from PIL import Image

TOY = EntryPoint(name="toy", value="fake_plugins:toy", group=plugins.ENTRY_POINT_GROUP)
BROKEN = EntryPoint(name="broken", value="broken_plugin:spec", group=plugins.ENTRY_POINT_GROUP)
FAST = ["train.steps=6", "train.progress=false", "train.checkpoint_every=3"]


@pytest.fixture(autouse=True)
def toy_plugin(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(plugins, "_entry_points", lambda: [TOY, BROKEN])
    discover.cache_clear()
    yield
    discover.cache_clear()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    assert main(["pretrain", "toy/mim", "--run-dir", str(path), *FAST]) == 0
    return path


def test_plugins_lists_the_good_and_explains_the_broken(capsys) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "toy/mim" in out
    assert "broken" in out and "FAILED" in out and "libfoo.so" in out
    assert "--check" in out  # says that recipe modules were not imported


def test_plugins_check_imports_every_recipe_and_names_the_failure(monkeypatch, capsys) -> None:  # noqa: ANN001
    half = EntryPoint(
        name="half", value="fake_plugins:half_broken", group=plugins.ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(plugins, "_entry_points", lambda: [TOY, half])
    discover.cache_clear()
    assert main(["plugins"]) == 0  # the cheap listing imports no recipe
    assert "half             1.0        found" in capsys.readouterr().out
    assert main(["plugins", "--check"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("toy ") and " ok " in line for line in lines)
    assert any(line.startswith("half ") and " FAILED " in line for line in lines)
    failure = next(line for line in lines if "half/mim" in line)
    assert "failed to import (broken_plugin:Recipe)" in failure and "libfoo.so" in failure


def test_strict_mode_keeps_the_original_traceback(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("OMNIMASK_STRICT_PLUGINS", "1")
    discover.cache_clear()
    with pytest.raises(plugins.PluginError, match="libfoo.so") as raised:
        discover()
    assert isinstance(raised.value.__cause__, ImportError)


def test_recipes_lists_presets_and_shows_a_config(capsys) -> None:
    main(["recipes"])
    listed = capsys.readouterr().out
    assert "toy/mim" in listed and "presets: demo" in listed
    main(["recipes", "--show", "toy/mim"])
    shown = capsys.readouterr().out
    assert "recipe: toy/mim" in shown and "batch_size: 8" in shown


def test_pretrain_eval_visualize_export(run_dir: Path, capsys) -> None:
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock",  # the run-directory lock, released (empty) at the end of the run
        "checkpoints",
        "config.yaml",
        "figures",
        "metrics.jsonl",
        "tensorboard",
    ]
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == [
        "step_00000003",
        "step_00000006",
    ]
    assert main(["eval", str(run_dir)]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    # the toy's two clusters are separable from the pretrained features
    assert result["pretrained"]["linear_probe_accuracy"] >= 0.9
    assert 0 <= result["random_init"]["knn_accuracy"] <= 1

    assert main(["visualize", str(run_dir)]) == 0
    figure = run_dir / "figures" / "reconstruction_step00000006.png"
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 200

    assert main(["export", str(run_dir), "--format", "safetensors"]) == 0
    exported = run_dir / "exports" / "safetensors" / "encoder.safetensors"
    _, _, model = load_safetensors_export(exported)
    run = load_run(run_dir)
    batch = {"values": torch.randn(3, 8, 4)}
    torch.testing.assert_close(model.embed(batch), run.model.embed(batch))

    assert main(["export", str(run_dir), "--format", "onnx"]) == 2
    assert "cannot export 'onnx'; formats: safetensors" in capsys.readouterr().err


def test_bench_prints_json_lines(capsys) -> None:
    assert main(["bench", "toy/mim", "--steps", "2", "--warmup", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    metrics = {r["metric"]: r["value"] for r in records}
    assert metrics["step_time_s"] > 0 and metrics["samples_per_s"] > 0
    assert metrics["flops_per_step"] > 0 and 0 < metrics["fraction_of_matmul_peak"] < 10


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["pretrain", "toy/mmi"], "unknown recipe 'toy/mmi'; did you mean toy/mim"),
        (
            ["pretrain", "toy/mim", "train.stepz=3"],
            "unknown config key 'train.stepz'; did you mean train.steps",
        ),
        (["pretrain", "toy/mim", "train.steps=lots"], "bad value for 'train.steps'"),
        (["pretrain", "toy/mim", "--preset", "huge"], "has no preset 'huge'; presets: demo"),
        (
            ["pretrain", "toy/mim", "--data", "/no/such/dir"],
            "data path /no/such/dir does not exist",
        ),
        (["pretrain", "toy/mim", "bad=[2]"], "toy/2.npy: corrupt"),
        (["eval", "/no/such/run"], "is not a run directory"),
        *[
            (["pretrain", "toy/mim", override], f"{override} is out of range: it must be {wanted}")
            for override, wanted in [
                ("train.checkpoint_every=0", "at least 1"),
                ("train.log_every=0", "at least 1"),
                ("train.grad_accum=0", "at least 1"),
                ("train.batch_size=0", "at least 1"),
                ("train.steps=-5", "at least 1"),
                ("train.lr=-1.0", "greater than 0"),
                ("train.ema_decay=1.0", "in [0, 1)"),
                ("train.optimizer='sgd'", "one of adamw, lamb, lion"),
                ("data.on_bad_sample='ignore'", "one of raise, skip"),
                ("finetune.layer_decay=0.0", "in (0, 1]"),
            ]
        ],
    ],
)
def test_bad_input_gets_one_clear_message(arguments, message, capsys, tmp_path) -> None:
    code = main(
        [*arguments, *(["--run-dir", str(tmp_path / "r")] if arguments[0] == "pretrain" else [])]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("omnimask: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    if "out of range" in message:
        assert not (tmp_path / "r").exists()  # refused before a run directory is made


def test_empty_data_folder_is_named(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code = main(
        ["pretrain", "toy/mim", "--data", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "r")]
    )
    assert code == 2
    assert (
        f"data path {tmp_path / 'empty'} holds no files matching *.npy" in capsys.readouterr().err
    )
    assert not (tmp_path / "r").exists()  # no run directory for a run that could not start


def test_a_config_the_recipe_cannot_build_is_one_message_and_no_run(tmp_path, capsys) -> None:
    code = main(["pretrain", "toy/mim", "model.width=0", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    assert capsys.readouterr().err == (
        "omnimask: error: recipe 'toy/mim' cannot build a model from this config: "
        "model.width must be positive, got 0\n"
    )
    assert not (tmp_path / "r").exists()


def test_skip_policy_through_the_cli(tmp_path) -> None:
    run = tmp_path / "run"
    assert (
        main(
            [
                "pretrain",
                "toy/mim",
                "--run-dir",
                str(run),
                "bad=[2]",
                "data.on_bad_sample=skip",
                *FAST,
                "train.steps=8",
            ]
        )
        == 0
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["skipped_samples"] >= 1


def test_resume_with_another_model_is_refused_and_keeps_the_run(run_dir, capsys) -> None:
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    code = main(["pretrain", "toy/mim", "--run-dir", str(run_dir), "model.width=32", *FAST])
    assert code == 2
    assert "model.width: saved 16, now 32" in capsys.readouterr().err
    assert before == {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def test_figures_are_png_only(run_dir, capsys) -> None:
    assert main(["visualize", str(run_dir), "--out", str(run_dir / "figure.jpg")]) == 2
    assert "does not end in .png" in capsys.readouterr().err


def test_eval_falls_back_when_the_newest_weights_are_truncated(run_dir, caplog) -> None:
    weights = run_dir / "checkpoints" / "step_00000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["eval", str(run_dir)]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["step"] == 3
    assert "step_00000006/model.safetensors is unreadable" in caplog.text


def test_eval_limit_scores_a_seeded_subset_of_each_split(run_dir, capsys) -> None:
    assert main(["eval", str(run_dir)]) == 0
    full = json.loads((run_dir / "eval.json").read_text())
    assert full["train_samples"] > 5 and full["test_samples"] > 5

    scores = []
    for _ in range(2):
        assert main(["eval", str(run_dir), "--limit", "5"]) == 0
        limited = json.loads((run_dir / "eval.json").read_text())
        assert limited["train_samples"] == limited["test_samples"] == 5
        scores.append(limited["pretrained"])
    assert scores[0] == scores[1]  # the same subset, so the same scores

    with pytest.raises(SystemExit):
        main(["eval", str(run_dir), "--limit", "0"])
    assert "must be a positive integer" in capsys.readouterr().err


def test_resume_of_a_run_whose_checkpoints_are_all_unreadable_is_one_line(run_dir, capsys) -> None:
    for state in (run_dir / "checkpoints").glob("step_*/state.pt"):
        state.write_bytes(b"")
    code = main(["pretrain", "toy/mim", "--run-dir", str(run_dir), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("omnimask: error: no checkpoint in ") and "step_00000006" in err[-1]


FAST_COMMANDS = """
import sys
from omnimask.cli import main
for argv in (["plugins"], ["recipes"], ["--help"]):
    try:
        main(argv)
    except SystemExit:
        pass
heavy = [m for m in ("torch", "omegaconf") if m in sys.modules]
recipes = [m for m in sys.modules if m.startswith("omnimask_") and ".recipe" in m]
print("IMPORTED", heavy + recipes)
"""


def test_fast_commands_import_neither_torch_nor_recipe_modules() -> None:
    """`--help`, `plugins` and `recipes` over every installed plugin answer from the specs."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", FAST_COMMANDS], capture_output=True, text=True, check=True
    )
    assert "vision/spark" in done.stdout and "presets: demo, paper, proof" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "IMPORTED []"


def test_a_missing_data_path_is_reported_before_the_recipe_is_imported(
    monkeypatch,
    capsys,  # noqa: ANN001
) -> None:
    from omnimask import cli

    monkeypatch.setattr(cli, "get_recipe", lambda name: pytest.fail("the recipe was imported"))
    assert main(["pretrain", "toy/mim", "--data", "/no/such/folder"]) == 2
    assert "data path /no/such/folder does not exist" in capsys.readouterr().err


def test_prepare_builds_the_training_set_once_and_says_its_size(capsys) -> None:  # noqa: ANN001
    assert main(["prepare", "toy/mim"]) == 0
    assert capsys.readouterr().out.strip() == "toy/mim: 64 training samples ready"
