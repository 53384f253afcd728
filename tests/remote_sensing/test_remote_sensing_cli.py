"""The CLI end to end on the embedded GeoTIFFs, as a user runs it: pretrain, eval, visualize,
export; then the trained run on chips twice the training size."""

from __future__ import annotations

import json

import matplotlib.image
import pytest
import torch
from omnimask.cli import main
from omnimask.export import load_safetensors_export
from omnimask.runs import load_run
from omnimask_remote_sensing.datasets import ChipDataset
from omnimask_remote_sensing.export import torchgeo_embedder
from omnimask_remote_sensing.geotiff import find_pairs
from omnimask_remote_sensing.synthetic import default_data
from torch.utils.data import default_collate

RECIPE = "remote_sensing/croma"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("croma") / "run"
    overrides = ["train.steps=3", "train.batch_size=8", "train.progress=false"]
    assert main(["pretrain", RECIPE, "--run-dir", str(run), *overrides]) == 0
    return run


def test_the_run_directory_alone_rebuilds_the_normalisation(run_dir) -> None:
    run = load_run(run_dir)
    assert len(run.config.stats.s2_mean) == 12 and len(run.config.stats.s1_std) == 2
    assert run.step == 3
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert {"loss", "contrastive", "reconstruction_optical", "reconstruction_radar"} <= set(record)


def test_eval_scores_the_labelled_chips(run_dir) -> None:
    assert main(["eval", str(run_dir)]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["train_samples"] == 240 and result["test_samples"] == 160
    assert 0.0 <= result["pretrained"]["linear_probe_accuracy"] <= 1.0
    assert result["pretrained"]["feature_dim"] == 3 * 64  # optical, radar and joint pooled


def test_visualize_writes_a_png_of_sensible_size(run_dir, tmp_path) -> None:
    out = tmp_path / "figure.png"
    assert main(["visualize", str(run_dir), "--out", str(out), "--num", "2"]) == 0
    image = matplotlib.image.imread(out)
    assert image.shape[0] >= 300 and image.shape[1] >= 1000 and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_export_formats_round_trip(run_dir, tmp_path) -> None:
    assert (
        main(["export", str(run_dir), "--format", "torchgeo", "--out", str(tmp_path / "tg")]) == 0
    )
    assert main(["export", str(run_dir), "--out", str(tmp_path / "st")]) == 0
    run = load_run(run_dir)
    batch = default_collate([run.recipe.build_dataset(run.config)[i] for i in range(3)])
    expected = run.model.embed(batch)
    _, _, reloaded = load_safetensors_export(tmp_path / "st")
    torch.testing.assert_close(reloaded.embed(batch), expected)
    theirs = torchgeo_embedder(tmp_path / "tg")(batch)
    torch.testing.assert_close(theirs, expected, atol=2e-5, rtol=1e-4)


def test_a_model_trained_on_32px_chips_runs_on_64px_chips(run_dir) -> None:
    run = load_run(run_dir)
    assert run.config.chips.size == 32
    config = run.config
    config.chips.size = 64
    chips = ChipDataset(find_pairs(default_data() / "scenes"), config)
    batch = default_collate([chips[i] for i in range(2)])
    assert batch["s2"].shape == (2, 12, 64, 64)
    with torch.no_grad():
        features = run.model.encoder.forward_features(run.model.tokenizer(batch))
        embedding = run.model.embed(batch)
    assert features.optical.shape == features.joint.shape == (2, 64, 64)  # 8 x 8 patches
    assert embedding.shape == (2, 192) and torch.isfinite(embedding).all()


def test_rgb_bands_outside_the_s2_layout_are_refused_before_any_run(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    args = ["pretrain", RECIPE, "--run-dir", str(run), "chips.s2_bands=4"]
    assert main([*args, "chips.rgb_bands=[3,2,4]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "chips.rgb_bands=[3, 2, 4] names S2 band 4, but chips.s2_bands=4" in err
    assert len(err.splitlines()) == 1 and not (run / "checkpoints").exists()


@pytest.mark.parametrize(("s1_bands", "s2_bands", "rgb"), [(1, 4, (2, 1, 0)), (3, 3, (0, 1, 2))])
def test_visualize_draws_any_band_layout(s1_bands, s2_bands, rgb, tmp_path) -> None:  # noqa: ANN001
    from omnimask.config import apply_overrides
    from omnimask.plugins import get_recipe
    from omnimask_remote_sensing.figures import draw

    recipe = get_recipe(RECIPE)
    layout = [f"chips.s1_bands={s1_bands}", f"chips.s2_bands={s2_bands}"]
    config = apply_overrides(recipe.config("demo"), [*layout, f"chips.rgb_bands={list(rgb)}"])
    model = recipe.build_model(config).eval()
    size = config.chips.size
    generator = torch.Generator().manual_seed(0)
    batch = {
        "s1": torch.randn(2, s1_bands, size, size, generator=generator),
        "s2": torch.randn(2, s2_bands, size, size, generator=generator),
    }
    with torch.no_grad():  # as `omnimask visualize` draws
        out = draw(model, batch, tmp_path / "figure.png", config.chips.rgb_bands, rows=2)
    assert matplotlib.image.imread(out)[..., :3].std() > 0.05


def test_a_truncated_scene_ends_a_run_in_one_line_or_is_skipped_and_counted(
    tmp_path, capsys
) -> None:
    from test_remote_sensing_data import truncate, write_pair

    data = tmp_path / "data"
    data.mkdir()
    write_pair(data, "a", size=64)
    write_pair(data, "b", size=64, seed=1)
    truncate(data / "b_s2.tif")
    short = ["chips.size=16", "train.steps=2", "train.batch_size=4", "train.progress=false"]
    args = ["pretrain", RECIPE, "--data", str(data), *short, "train.log_every=1"]
    assert main([*args, "--run-dir", str(tmp_path / "raise")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{data / 'b_s2.tif'}: the 16x16 px window" in err
    run = tmp_path / "skip"
    assert main([*args, "--run-dir", str(run), "data.on_bad_sample=skip"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    skipped = {r["skipped_samples"] for r in records if "loss" in r}
    assert len(skipped) == 1 and 0 < skipped.pop() < 16  # b's unreadable chips, and only those


def test_visualize_paints_nodata_magenta(run_dir, tmp_path) -> None:
    from omnimask_remote_sensing.figures import draw

    run = load_run(run_dir)
    chips = run.recipe.build_dataset(run.config)
    batch = default_collate([chips[i] for i in range(2)])
    assert batch["valid"].all()
    holed = {**batch, "valid": batch["valid"].clone()}
    holed["valid"][0, 8:24, 8:24] = False

    def magenta(figure_batch: dict, name: str) -> int:
        with torch.no_grad():
            out = draw(run.model, figure_batch, tmp_path / name, run.config.chips.rgb_bands, 2)
        red, green, blue = matplotlib.image.imread(out)[..., :3].transpose(2, 0, 1)
        return int(((red == 1) & (green == 0) & (blue == 1)).sum())

    swatch = magenta(batch, "whole.png")  # the legend's, alone
    assert 0 < swatch < 500
    # the 16 px square, about 80 x 80 figure pixels, in each of row 0's six panels
    assert magenta(holed, "holed.png") - swatch > 6 * 70 * 70
