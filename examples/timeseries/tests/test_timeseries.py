"""The template's own tests: data reading and bad input, the embedded data, the model's
invariants, export, and the core's conformance kit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from omnimask.data import BadSampleError
from omnimask.patching import unpatchify
from omnimask.plugins import discover, get_recipe, recipe_entry
from omnimask.testing import run_conformance
from omnimask_timeseries.data import (
    CLASS_NAMES,
    SeriesDataset,
    default_data,
    read_labels,
    read_series,
    series_files,
    write_default_data,
)
from omnimask_timeseries.recipe import TimeSeriesMAE, TimeSeriesMAEConfig

CHANNELS, WINDOW = 3, 32


@pytest.fixture(scope="module")
def recipe() -> TimeSeriesMAE:
    return get_recipe("timeseries/mae")  # through discovery, as the CLI does


@pytest.fixture(scope="module")
def config(recipe: TimeSeriesMAE) -> TimeSeriesMAEConfig:
    return recipe.config("demo")


@pytest.fixture(scope="module")
def batch(recipe: TimeSeriesMAE, config: TimeSeriesMAEConfig) -> dict:
    torch.manual_seed(0)
    dataset = recipe.build_dataset(config)
    return recipe.collate([dataset[i] for i in range(0, len(dataset), len(dataset) // 8)][:8])


def fresh_model(recipe: TimeSeriesMAE, config: TimeSeriesMAEConfig, seed: int = 0):  # noqa: ANN201
    torch.manual_seed(seed)
    return recipe.build_model(config).eval()


# --- reading -------------------------------------------------------------------------------


def test_npy_and_csv_with_or_without_header_read_alike(tmp_path: Path) -> None:
    series = np.random.default_rng(0).normal(size=(CHANNELS, 40)).astype(np.float32)
    np.save(tmp_path / "a.npy", series)
    np.savetxt(tmp_path / "b.csv", series.T, delimiter=",")
    np.savetxt(tmp_path / "c.csv", series.T, delimiter=",", header="x,y,z", comments="")
    for name in ("a.npy", "b.csv", "c.csv"):
        read = read_series(tmp_path / name, CHANNELS, WINDOW)
        assert read.dtype == np.float32 and read.shape == (CHANNELS, 40), name
        np.testing.assert_allclose(read, series, rtol=1e-6, err_msg=name)


def _save(array: np.ndarray):  # noqa: ANN202
    return lambda path: np.save(path, array)


def _text(text: str | bytes):  # noqa: ANN202
    return lambda path: (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)


def _truncated(path: Path) -> None:
    np.save(path, np.zeros((CHANNELS, 64)))
    path.write_bytes(path.read_bytes()[:100])


def _nan_at(channel: int, step: int, value: float) -> np.ndarray:
    array = np.zeros((CHANNELS, 64))
    array[channel, step] = value
    return array


BAD_INPUTS = {
    "garbage.npy": (_text(b"definitely not numpy"), "unreadable .npy file"),
    "truncated.npy": (_truncated, "unreadable .npy file"),
    "pickled.npy": (
        lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
        "unreadable .npy file",
    ),
    "strings.npy": (_save(np.full((CHANNELS, 64), "x")), "are not numbers"),
    "flat.npy": (_save(np.zeros(64)), "expected a 2-D [channels, time] array, got shape (64,)"),
    "cube.npy": (_save(np.zeros((2, CHANNELS, 64))), "got shape (2, 3, 64)"),
    "channels.npy": (_save(np.zeros((5, 64))), "expected 3 channels, got 5"),
    "nan.npy": (
        _save(_nan_at(1, 7, np.nan)),
        "1 non-finite value(s) (NaN or inf), first at channel 1, step 7",
    ),
    "inf.csv": (
        _text("0,0,0\n0,inf,0\n" * 40),
        "non-finite value(s) (NaN or inf), first at channel 1, step 1",
    ),
    "short.npy": (_save(np.zeros((CHANNELS, 10))), "10 steps, shorter than the window of 32"),
    "short.csv": (_text("a,b,c\n1,2,3\n"), "1 steps, shorter than the window of 32"),
    "words.csv": (_text("1,2,3\n" * 5 + "1,two,3\n"), "not a numeric CSV table"),
    "ragged.csv": (_text("1,2,3\n" * 5 + "1,2\n"), "not a numeric CSV table"),
    "columns.csv": (_text("1,2\n" * 40), "expected 3 channels, got 2"),
    "empty.csv": (_text(""), "empty .csv file"),
    "header_only.csv": (_text("x,y,z\n"), "has a header but no data rows"),
    "binary.csv": (_text(b"\xff\xfe\x00\x81"), "unreadable .csv file"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_names_the_file_and_the_problem(tmp_path: Path, name: str) -> None:
    write, reason = BAD_INPUTS[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(BadSampleError) as caught:
        SeriesDataset([path], CHANNELS, WINDOW)[0]
    assert caught.value.source == str(path)
    assert str(path) in str(caught.value)
    assert reason in caught.value.reason


def test_folders_are_searched_and_labels_csv_is_not_a_series(tmp_path: Path) -> None:
    (tmp_path / "deep").mkdir()
    np.save(tmp_path / "deep" / "a.npy", np.zeros((CHANNELS, 64)))
    (tmp_path / "b.csv").write_text("1,2,3\n" * 64)
    (tmp_path / "labels.csv").write_text("file,label,split\n")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in series_files(tmp_path)] == ["b.csv", "a.npy"]


def test_random_crops_come_from_torch_global_rng(tmp_path: Path) -> None:
    series = np.arange(CHANNELS * 200, dtype=np.float32).reshape(CHANNELS, 200)
    np.save(tmp_path / "s.npy", series)
    dataset = SeriesDataset([tmp_path / "s.npy"], CHANNELS, WINDOW)

    def crop(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        return dataset[0]["series"]

    assert torch.equal(crop(1), crop(1))
    starts = set()
    for seed in range(10):
        start = int(crop(seed)[0, 0])
        assert torch.equal(crop(seed), torch.from_numpy(series[:, start : start + WINDOW]))
        starts.add(start)
    assert len(starts) > 1
    centre = SeriesDataset([tmp_path / "s.npy"], CHANNELS, WINDOW, labels=[2], crop="center")[0]
    assert int(centre["series"][0, 0]) == (200 - WINDOW) // 2 and int(centre["label"]) == 2


# --- embedded data ---------------------------------------------------------------------------


def test_default_data_is_deterministic_and_labelled(tmp_path: Path) -> None:
    write_default_data(tmp_path / "a")
    write_default_data(tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    for relative in files:
        first, second = tmp_path / "a" / relative, tmp_path / "b" / relative
        if first.is_file():
            assert first.read_bytes() == second.read_bytes(), f"{relative} differs"
    splits = read_labels(tmp_path / "a")
    for files_, labels in splits.values():
        assert sorted(set(labels)) == list(range(len(CLASS_NAMES)))
        assert all(f.is_file() for f in files_)
    assert not set(splits["train"][0]) & set(splits["test"][0])


def test_default_data_is_generated_once_in_place(tmp_path: Path) -> None:
    first = default_data(tmp_path)
    stamp = (first / "labels.csv").stat().st_mtime_ns
    assert default_data(tmp_path) == first
    assert (first / "labels.csv").stat().st_mtime_ns == stamp
    # no staging folder left (the lock file of `generate_once` stays, empty)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{first.name}.lock", first.name]


# --- model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("instance_norm", [True, False])
def test_tokenizer_round_trips_through_unpatchify(
    recipe: TimeSeriesMAE, config: TimeSeriesMAEConfig, batch: dict, instance_norm: bool
) -> None:
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, instance_norm=instance_norm)
    )
    tokens = recipe.build_model(config).tokenizer(batch)
    patch, window = config.model.patch, config.model.window
    assert tokens.values.shape == (8, window // patch, patch * CHANNELS)
    assert tokens.grid == (window // patch,)
    assert tokens.positions.shape == (8, window // patch, 1)
    series = unpatchify(tokens.values, (patch,), tokens.grid, CHANNELS)
    if instance_norm:
        series = series * tokens.extras["series_std"] + tokens.extras["series_mean"]
    torch.testing.assert_close(series, batch["series"], atol=1e-5, rtol=1e-5)


def test_encoder_never_sees_hidden_patches(
    recipe: TimeSeriesMAE, config: TimeSeriesMAEConfig, batch: dict
) -> None:
    model = fresh_model(recipe, config)
    tokens = model.tokenizer(batch)
    mask = model.draw_mask(tokens, batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        latent = model.encoder(tokens, mask)
        assert latent.shape[1] == int((~mask[0]).sum())
        changed = tokens.values.clone()
        changed[mask] = 100.0 * torch.randn_like(changed[mask])
        same = model.encoder(dataclasses.replace(tokens, values=changed), mask)
        changed[~mask] += 1.0
        different = model.encoder(dataclasses.replace(tokens, values=changed), mask)
    assert torch.equal(latent, same)
    assert not torch.allclose(latent, different)


def test_loss_counts_hidden_patches_only(
    recipe: TimeSeriesMAE, config: TimeSeriesMAEConfig, batch: dict
) -> None:
    model = fresh_model(recipe, config)
    with torch.no_grad():
        out = model.predict(batch, torch.Generator().manual_seed(0))
    visible_changed = out.prediction.clone()
    visible_changed[~out.mask] += 5.0
    losses = model.target.loss(visible_changed, out.target, out.mask)
    assert torch.equal(losses["loss"], out.losses["loss"])
    assert losses["mse_visible"] > out.losses["mse_visible"]
    hidden_changed = out.prediction.clone()
    hidden_changed[out.mask] += 5.0
    assert model.target.loss(hidden_changed, out.target, out.mask)["loss"] > out.losses["loss"]


def test_loss_falls_when_overfitting_one_batch(
    recipe: TimeSeriesMAE, config: TimeSeriesMAEConfig, batch: dict
) -> None:
    model = fresh_model(recipe, config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(30):
        loss = model(batch, torch.Generator().manual_seed(0))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss))
    assert sum(history[-3:]) / 3 < 0.7 * history[0], history


def test_exported_program_equals_embed(
    recipe: TimeSeriesMAE, config: TimeSeriesMAEConfig, batch: dict, tmp_path: Path
) -> None:
    model = fresh_model(recipe, config)
    path = recipe.export(model, config, "pt2", tmp_path)
    embed = recipe.load_export(config, "pt2", path)
    for rows in (batch, {"series": batch["series"][:5]}):  # not the example batch size
        expected = model.embed(rows)
        assert expected.shape == (len(rows["series"]), config.model.encoder_dim)
        torch.testing.assert_close(embed(rows), expected, atol=1e-5, rtol=1e-4)
    assert torch.export.load(path).module()(batch["series"]).shape == (8, config.model.encoder_dim)


def test_figure_is_written(
    recipe: TimeSeriesMAE, config: TimeSeriesMAEConfig, batch: dict, tmp_path: Path
) -> None:
    two = {"series": batch["series"][:2]}
    path = recipe.visualize(fresh_model(recipe, config), config, two, tmp_path / "figure.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_eval_sets_are_labelled_centre_crops(
    recipe: TimeSeriesMAE, config: TimeSeriesMAEConfig
) -> None:
    train, test = recipe.build_eval_datasets(config)
    assert len(train) > len(test) > 0
    item = test[0]
    assert item["series"].shape == (CHANNELS, config.model.window)
    assert torch.equal(item["series"], test[0]["series"])
    assert int(item["label"]) in range(len(CLASS_NAMES))


# --- the plugin as the core sees it ----------------------------------------------------------


def test_plugin_is_discovered() -> None:
    spec = discover().plugins["timeseries"]
    assert list(spec.recipes) == ["timeseries/mae"]
    assert recipe_entry(spec, "timeseries/mae").target == "omnimask_timeseries.recipe:TimeSeriesMAE"
    assert isinstance(get_recipe("timeseries/mae"), TimeSeriesMAE)


def test_conformance() -> None:
    run_conformance("timeseries/mae")


def test_channels_zero_are_read_from_the_data_and_saved(tmp_path: Path) -> None:
    """`model.channels=0`: `configure` takes the count from the data before the model is built;
    the run's config holds it, so the run rebuilds without the data."""
    from omnimask.cli import main
    from omnimask.runs import load_run
    from omnimask_timeseries.data import DEFAULT_CHANNELS

    run = tmp_path / "run"
    args = ["model.channels=0", "train.steps=2", "train.progress=false"]
    assert main(["pretrain", "timeseries/mae", "--run-dir", str(run), *args]) == 0
    assert load_run(run).config.model.channels == DEFAULT_CHANNELS


def test_shards_of_the_series_train_the_same_run_and_carry_the_channel_count(
    tmp_path: Path,
) -> None:
    """`omnimask prepare --out`: the core writes the training set as shards (`record`), and a
    run on them (`sample`) is the run on the files, `model.channels=0` included."""
    from omnimask.runs import load_run
    from omnimask.testing import logged_losses, train_on_files_and_on_shards
    from omnimask_timeseries.data import DEFAULT_CHANNELS

    args = ["model.channels=0", "train.steps=3", "train.log_every=1", "train.progress=false"]
    runs = train_on_files_and_on_shards("timeseries/mae", tmp_path, *args)
    assert logged_losses(runs.on_shards) == logged_losses(runs.on_files)
    assert len(logged_losses(runs.on_files)) == 3
    assert load_run(runs.on_shards).config.model.channels == DEFAULT_CHANNELS
