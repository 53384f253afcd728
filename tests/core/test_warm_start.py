"""`train.init_from`: a fresh run starts from another run's newest weights (the encoder whole,
the rest where names and shapes match); a misfit is one line; a resumed run ignores it."""

from __future__ import annotations

import shutil
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from omnimask import plugins
from omnimask.cli import main
from omnimask.engine.checkpoint import list_checkpoints
from omnimask.plugins import discover
from safetensors.torch import load_file

TOY = EntryPoint(name="toy", value="fake_plugins:toy", group=plugins.ENTRY_POINT_GROUP)
FAST = ["train.steps=4", "train.progress=false", "train.checkpoint_every=2"]


@pytest.fixture(autouse=True)
def toy_plugin(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(plugins, "_entry_points", lambda: [TOY])
    discover.cache_clear()
    yield
    discover.cache_clear()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:  # noqa: ANN001
    path = tmp_path_factory.mktemp("source") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plugins, "_entry_points", lambda: [TOY])
        discover.cache_clear()
        assert main(["pretrain", "toy/mim", "--run-dir", str(path), *FAST]) == 0
    return path


def weights(run_dir: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    found = dict(list_checkpoints(run_dir / "checkpoints"))
    return load_file(found[step if step is not None else max(found)] / "model.safetensors")


def test_a_fresh_run_starts_from_the_source_weights(source: Path, tmp_path: Path) -> None:
    """At lr 1e-12 (Adam moves each weight by about the lr per step) the new run's first
    checkpoint holds the source's newest weights; the same run without `init_from` does not."""
    run_dir = tmp_path / "warm"
    args = ["pretrain", "toy/mim", "--run-dir", str(run_dir), *FAST, "train.lr=1e-12"]
    assert main([*args, f"train.init_from={source}"]) == 0
    started, theirs = weights(run_dir, 2), weights(source)
    assert started.keys() == theirs.keys()
    for key, value in theirs.items():
        torch.testing.assert_close(started[key], value, rtol=0, atol=1e-10, msg=key)
    cold_dir = tmp_path / "cold"
    assert main(["pretrain", "toy/mim", "--run-dir", str(cold_dir), *FAST, "train.lr=1e-12"]) == 0
    cold = weights(cold_dir, 2)
    assert not torch.equal(cold["encoder.body.0.weight"], theirs["encoder.body.0.weight"])


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("model.width=8", "encoder.body.0.weight is shaped (16, 4) there, (8, 4) here"),
        ("model.depth=1", "encoder.blocks.0.linear.weight is absent there"),
    ],
)
def test_an_encoder_that_does_not_fit_is_one_line_and_makes_no_run(
    source: Path,
    tmp_path: Path,
    capsys,
    override: str,
    problem: str,  # noqa: ANN001
) -> None:
    run_dir = tmp_path / "warm"
    args = ["pretrain", "toy/mim", "--run-dir", str(run_dir), *FAST, override]
    assert main([*args, f"train.init_from={source}"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0
    assert f"train.init_from {source}: its encoder does not fit this one: {problem}" in message
    assert not run_dir.exists()


def test_a_source_that_is_not_a_run_is_one_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    args = ["pretrain", "toy/mim", "--run-dir", str(tmp_path / "warm"), *FAST]
    assert main([*args, f"train.init_from={tmp_path}"]) == 2
    message = capsys.readouterr().err.strip()
    assert message == (
        f"omnimask: error: train.init_from: {tmp_path} is not a run directory (no config.yaml)"
    )


def test_a_resumed_run_continues_from_its_own_checkpoint(source: Path, tmp_path: Path) -> None:
    """The source is read at step 0 only: resuming after it is gone continues exactly."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    copy = tmp_path / "source"
    shutil.copytree(source, copy)
    for run_dir in (whole, split):
        args = ["pretrain", "toy/mim", "--run-dir", str(run_dir), *FAST, f"train.init_from={copy}"]
        if run_dir == split:
            assert main([*args, "train.steps=2"]) == 0
            shutil.rmtree(copy)
        assert main(args) == 0
    for key, value in weights(whole).items():
        assert torch.equal(weights(split)[key], value), key
