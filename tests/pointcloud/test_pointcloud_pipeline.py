"""The recipes end to end through the CLI on the embedded data (dVAE -> MPM by run path,
Point-MAE), and the behaviours the issue asks to see: the dVAE's reconstruction falls, the MPM
scores masked patches only, block masks are contiguous, schedules follow the engine's progress."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omnimask.cli import main
from omnimask.engine.engine import set_progress
from omnimask.export import load_safetensors_export
from omnimask.plugins import get_recipe
from omnimask.runs import load_run
from omnimask.visualize import sample_batch
from omnimask_pointcloud.data import ensure_default_data
from PIL import Image

FAST = ["train.log_every=1", "train.progress=false", "train.batch_size=8", "train.warmup_steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    dirs = {name: root / name for name in ("dvae", "mpm", "mae")}
    assert main(["pretrain", "pointcloud/point_bert_dvae", "--run-dir", str(dirs["dvae"]),
                 "train.steps=30", *FAST]) == 0  # fmt: skip
    here = Path.cwd()
    os.chdir(root)  # dvae_run typed relative to the working directory, as a user would
    try:
        assert main(["pretrain", "pointcloud/point_bert", "--run-dir", str(dirs["mpm"]),
                     "dvae_run=dvae", "train.steps=3", *FAST]) == 0  # fmt: skip
    finally:
        os.chdir(here)
    assert main(["pretrain", "pointcloud/point_mae", "--run-dir", str(dirs["mae"]),
                 "train.steps=3", *FAST]) == 0  # fmt: skip
    return dirs


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pointcloud_dvae_reconstruction_falls_on_embedded_data(runs: dict[str, Path]) -> None:
    history = [record["reconstruction"] for record in metrics(runs["dvae"])]
    assert len(history) == 30
    assert sum(history[-5:]) / 5 < 0.7 * sum(history[:3]) / 3, history


def test_pointcloud_mpm_loads_the_frozen_dvae_by_run_path(runs: dict[str, Path]) -> None:
    # stored resolved, so the run is rebuilt from another working directory (this one)
    assert load_run(runs["mpm"]).config.dvae_run == str(runs["dvae"].resolve())
    dvae, mpm = load_run(runs["dvae"]).model, load_run(runs["mpm"]).model
    for name, value in dvae.encoder.state_dict().items():
        assert torch.equal(mpm.target.dvae.encoder.state_dict()[name], value), name
    assert not any(p.requires_grad for p in mpm.target.dvae.parameters())
    mpm.train()
    assert not mpm.target.dvae.training  # stays in eval mode (BatchNorm statistics frozen)


def test_pointcloud_mpm_refuses_a_mismatched_dvae_run(runs: dict[str, Path]) -> None:
    recipe = get_recipe("pointcloud/point_bert")
    config = recipe.config("demo")
    config.dvae_run = str(runs["dvae"])
    config.dvae.vocab_size = 99
    with pytest.raises(ValueError, match="dvae.vocab_size: run has 256, config has 99"):
        recipe.build_model(config)


def small_labelled_copy(root: Path) -> Path:
    """Three classes of the embedded set, 6 train PLY + 2 test OFF each (keeps the test fast)."""
    source = ensure_default_data()
    for name in ("bumps", "dimples", "ridges"):
        for split, count in (("train", 6), ("test", 2)):
            (root / name / split).mkdir(parents=True)
            clouds = [p for p in sorted((source / name / split).iterdir()) if p.is_file()]
            for path in clouds[:count]:
                shutil.copy(path, root / name / split / path.name)
    return root


def test_pointcloud_eval_visualize_export(runs: dict[str, Path], tmp_path: Path) -> None:
    data = small_labelled_copy(tmp_path / "labelled")
    assert main(["eval", str(runs["mpm"]), "--data", str(data), "--k", "3"]) == 0
    result = json.loads((runs["mpm"] / "eval.json").read_text())
    assert result["train_samples"] == 18 and result["test_samples"] == 6
    assert 0.0 <= result["pretrained"]["linear_probe_accuracy"] <= 1.0
    for name, run in runs.items():
        out = run / "figure.png"
        assert main(["visualize", str(run), "--out", str(out)]) == 0
        with Image.open(out) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 600, name
            assert len(np.unique(np.asarray(image.convert("L")))) > 10, f"{name}: blank figure"
    assert main(["export", str(runs["mae"]), "--format", "safetensors"]) == 0
    _, config, model = load_safetensors_export(runs["mae"] / "exports" / "safetensors")
    recipe = get_recipe("pointcloud/point_mae")
    batch = sample_batch(recipe, config, recipe.build_dataset(config), 2)
    torch.testing.assert_close(model.embed(batch), load_run(runs["mae"]).model.embed(batch))


@pytest.fixture(scope="module")
def mpm_output() -> tuple:
    recipe = get_recipe("pointcloud/point_bert")
    config = recipe.config("demo")
    batch = sample_batch(recipe, config, recipe.build_dataset(config), 4)
    model = recipe.build_model(config).train()
    output = model.predict(batch, torch.Generator().manual_seed(3))
    return model, output


def test_pointcloud_mpm_scores_masked_patches_only(mpm_output: tuple) -> None:
    model, output = mpm_output
    logits, mask = output.prediction, output.mask
    assert torch.equal(output.target, model.target.dvae.encoder.codes(output.tokens))
    expected = F.cross_entropy(logits[mask], output.target[mask])
    torch.testing.assert_close(output.losses["code_loss"], expected)
    (gradient,) = torch.autograd.grad(output.losses["loss"], logits, retain_graph=True)
    assert gradient[~mask].abs().max() == 0  # visible patches do not enter the loss
    assert gradient[mask].abs().sum(-1).min() > 0  # every masked patch does


def test_pointcloud_block_masks_are_contiguous_neighbourhoods(mpm_output: tuple) -> None:
    _, output = mpm_output
    groups = output.mask.shape[1]
    for centres, hidden in zip(output.tokens.positions, output.mask):
        count = int(hidden.sum())
        assert round(0.25 * groups) <= count <= round(0.45 * groups)
        distances = torch.cdist(centres, centres)
        nearest = distances.argsort(1)[:, :count]
        neighbourhoods = [set(row.tolist()) for row in nearest]
        assert set(hidden.nonzero().flatten().tolist()) in neighbourhoods


def test_pointcloud_demo_dvae_fallback_is_seeded() -> None:
    recipe = get_recipe("pointcloud/point_bert")
    config = recipe.config("demo")
    torch.manual_seed(1)
    first = recipe.build_model(config).target.dvae.state_dict()
    torch.manual_seed(2)
    second = recipe.build_model(config).target.dvae.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_pointcloud_dvae_schedules_follow_engine_progress() -> None:
    """Point-BERT's schedules, in steps: temperature a half cosine 1 -> 1/16 over
    `temperature_steps`; KL weight 0 for `kl_delay_steps`, then a half cosine to 0.1."""
    recipe = get_recipe("pointcloud/point_bert_dvae")
    config = recipe.config("demo")
    config.train.steps = 1000
    # the paper's temperatures (the demo preset scales them with its logits' gain)
    config.loss.temperature_start, config.loss.temperature_end = 1.0, 1 / 16
    config.loss.temperature_steps, config.loss.kl_delay_steps, config.loss.kl_ramp_steps = (
        500,
        100,
        400,
    )
    model = recipe.build_model(config)
    set_progress(model, 0.0)
    assert model.quantizer.temperature == 1.0 and model.target.kl_weight == 0.0
    set_progress(model, 0.1)  # step 100: end of the KL delay
    assert model.target.kl_weight == 0.0
    set_progress(model, 0.25)  # step 250: half-way through both ramps
    assert model.quantizer.temperature == pytest.approx((1 + 1 / 16) / 2)
    assert model.target.kl_weight == pytest.approx((1 - np.cos(np.pi * 150 / 400)) / 2 * 0.1)
    set_progress(model, 0.3)  # step 300: KL half-way
    assert model.target.kl_weight == pytest.approx(0.05)
    set_progress(model, 0.6)
    assert model.quantizer.temperature == pytest.approx(1 / 16)
    assert model.target.kl_weight == pytest.approx(0.1)


def test_pointcloud_dvae_paper_preset_follows_point_bert() -> None:
    """The paper preset is Point-BERT's `cfgs/ShapeNet55_models/dvae.yaml` and `models/dvae.py`."""
    config = get_recipe("pointcloud/point_bert_dvae").config("paper")
    arch, loss = config.model, config.loss
    assert (arch.vocab_size, arch.dim, arch.token_dim, arch.decoder_dim) == (8192, 256, 256, 256)
    assert tuple(arch.graph_widths) == (256, 512, 512, 1024) and arch.graph_input == 128
    assert (arch.graph_neighbours, arch.graph_groups, arch.decoder_graph_groups) == (4, 4, 4)
    assert arch.logit_scale == 1.0
    assert (config.patches.num_groups, config.patches.group_size) == (64, 32)
    assert (loss.temperature_start, loss.temperature_end, loss.temperature_steps) == (
        1.0, 0.0625, 100_000
    )  # fmt: skip
    assert (loss.kl_weight, loss.kl_delay_steps, loss.kl_ramp_steps) == (0.1, 10_000, 100_000)
