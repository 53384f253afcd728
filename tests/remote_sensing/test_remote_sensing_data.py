"""GeoTIFF pairs: pairing, windowed chips, nodata, one-pass statistics and every bad input."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from omnimask.config import from_yaml, to_yaml
from omnimask.data import BadSampleError
from omnimask_remote_sensing.config import CromaConfig
from omnimask_remote_sensing.datasets import ChipDataset
from omnimask_remote_sensing.geotiff import find_pairs, write_geotiff
from omnimask_remote_sensing.recipes import CromaRecipe
from omnimask_remote_sensing.synthetic import (
    COVERS,
    EVAL_CHIPS_PER_CLASS,
    EVAL_TRAIN_PER_CLASS,
    S1_BRIGHT_DB,
    TILE,
    default_data,
    land_cover,
    render,
    tile,
)
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

UTM = CRS.from_epsg(32633)


def write_pair(
    folder,
    name,
    *,
    s1_bands=2,
    s2_bands=12,
    size=32,
    crs=UTM,
    s2_origin=(0.0, 320.0),
    s2_dtype=np.uint16,
    seed=0,
):
    """A small S1/S2 pair named `<name>_s1.tif` / `<name>_s2.tif`."""
    rng = np.random.default_rng(seed)
    s1 = rng.normal(-12, 3, (s1_bands, size, size)).astype(np.float32)
    s2 = rng.integers(100, 4000, (s2_bands, size, size)).astype(s2_dtype)
    write_geotiff(folder / f"{name}_s1.tif", s1, UTM, from_origin(0.0, 320.0, 10, 10), -9999.0)
    write_geotiff(folder / f"{name}_s2.tif", s2, crs, from_origin(*s2_origin, 10, 10), 0)
    return s1, s2


def demo_config(size=16) -> CromaConfig:
    config = CromaRecipe().config("demo")
    config.chips.size = size
    return config


@pytest.fixture(scope="module")
def scenes():
    return find_pairs(default_data() / "scenes")


def test_pairs_are_matched_by_folder_by_suffix_and_by_manifest(tmp_path, scenes) -> None:
    assert len(scenes) == 4 and all(p.s1.parent.name == "s1" for p in scenes)
    assert [p.s1.stem for p in scenes] == [p.s2.stem for p in scenes]
    write_pair(tmp_path, "b")
    write_pair(tmp_path, "a")
    pairs = find_pairs(tmp_path)
    assert [(p.s1.name, p.s2.name) for p in pairs] == [
        ("a_s1.tif", "a_s2.tif"),
        ("b_s1.tif", "b_s2.tif"),
    ]
    (tmp_path / "manifest.csv").write_text("s1,s2,label\nb_s1.tif,a_s2.tif,3\n")
    [listed] = find_pairs(tmp_path)
    assert (listed.s1.name, listed.s2.name, listed.label) == ("b_s1.tif", "a_s2.tif", 3)


def test_chips_are_windowed_reads_that_keep_crs_and_transform(scenes, tmp_path) -> None:
    config = demo_config(32)
    dataset = ChipDataset(scenes[:1], config)
    pair = scenes[0]
    with rasterio.open(pair.s2) as source:
        whole = source.read().astype(np.float32)
        transform = source.transform
    item = dataset[21]  # row 1, column 1 of a 20x20 grid of 32 px chips
    window = Window(32, 32, 32, 32)
    mean = np.asarray(config.stats.s2_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.stats.s2_std, dtype=np.float32)[:, None, None]
    expected = (whole[:, 32:64, 32:64] - mean) / std
    np.testing.assert_allclose(item["s2"].numpy(), expected, rtol=1e-5, atol=1e-5)
    chip_transform = window_transform(window, transform)
    assert tuple(item["transform"].tolist()) == tuple(chip_transform)[:6]
    assert CRS.from_wkt(item["crs"]) == UTM
    written = write_geotiff(
        tmp_path / "out.tif", item["s1"].numpy(), CRS.from_wkt(item["crs"]), chip_transform
    )
    with rasterio.open(written) as back:
        assert back.crs == UTM and back.transform == chip_transform


def test_band_statistics_of_one_pass_equal_numpy_over_valid_pixels(scenes) -> None:
    config = demo_config(32)
    assert not config.stats.s1_mean
    dataset = ChipDataset(scenes, config)
    valid_s1, valid_s2 = [], []
    for pair in scenes:
        with rasterio.open(pair.s1) as s1, rasterio.open(pair.s2) as s2:
            a, b = s1.read().astype(np.float64), s2.read().astype(np.float64)
        valid = (a != -9999.0).all(0) & (b != 0).all(0)
        valid_s1.append(a[:, valid])
        valid_s2.append(b[:, valid])
    s1, s2 = np.concatenate(valid_s1, 1), np.concatenate(valid_s2, 1)
    np.testing.assert_allclose(config.stats.s1_mean, s1.mean(1), rtol=1e-10)
    np.testing.assert_allclose(config.stats.s1_std, s1.std(1), rtol=1e-8)
    np.testing.assert_allclose(config.stats.s2_mean, s2.mean(1), rtol=1e-10)
    np.testing.assert_allclose(config.stats.s2_std, s2.std(1), rtol=1e-8)
    # the nodata strip of the last scene: one column of 20 chips left out and counted
    assert dataset.report.nodata_chips == 20 and len(dataset) == 4 * 400 - 20
    # the statistics travel with the config and are reused, not recomputed
    again = from_yaml(to_yaml(config), CromaConfig)
    assert again.stats == config.stats
    assert torch.equal(ChipDataset(scenes[:1], again)[0]["s2"], dataset[0]["s2"])


def test_partial_nodata_pixels_become_the_band_mean_and_are_marked_invalid(tmp_path) -> None:
    s1, s2 = write_pair(tmp_path, "a", size=16)
    s2[:, :4, :] = 0
    s2[3, 10, 10] = 0  # one band's nodata makes the pixel nodata for both sensors
    write_geotiff(tmp_path / "a_s2.tif", s2, UTM, from_origin(0.0, 320.0, 10, 10), 0)
    dataset = ChipDataset(find_pairs(tmp_path), demo_config(16))
    item = dataset[0]
    assert torch.all(item["s1"][:, :4] == 0) and torch.all(item["s2"][:, :4] == 0)
    assert torch.all(item["s2"][:, 4:10] != 0)
    expected = torch.ones(16, 16, dtype=torch.bool)
    expected[:4] = False
    expected[10, 10] = False
    assert item["valid"].dtype == torch.bool and torch.equal(item["valid"], expected)
    batch = CromaRecipe().collate([item, dataset[0]])
    assert torch.equal(batch["valid"], expected.expand(2, 16, 16))


@pytest.mark.parametrize(
    ("change", "culprit", "message"),
    [
        ({"s1_bands": 3}, "a_s1.tif", "has 3 bands, expected 2"),
        ({"s2_bands": 10}, "a_s2.tif", "has 10 bands, expected 12"),
        ({"crs": CRS.from_epsg(4326)}, "a_s2.tif", "CRS EPSG:4326 differs from EPSG:32633"),
        ({"s2_origin": (100.0, 320.0)}, "a_s2.tif", "extent .* differs"),
    ],
)
def test_mismatched_pairs_are_named(tmp_path, change, culprit, message) -> None:
    write_pair(tmp_path, "a", **change)
    with pytest.raises(BadSampleError, match=message) as error:
        ChipDataset(find_pairs(tmp_path), demo_config())
    assert error.value.source.endswith(culprit)


def test_unreadable_tiff_is_named_and_skip_policy_counts_it(tmp_path) -> None:
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "b_s2.tif").write_bytes(b"this is not a tiff")
    with pytest.raises(BadSampleError, match="cannot be read as a GeoTIFF") as error:
        ChipDataset(find_pairs(tmp_path), demo_config())
    assert error.value.source.endswith("b_s2.tif")
    dataset = ChipDataset(find_pairs(tmp_path), demo_config(), on_bad_sample="skip")
    assert len(dataset.report.skipped_pairs) == 1 and len(dataset) == 4
    assert dataset.skipped_at_load == dataset.report.skipped_pairs  # what metrics.jsonl counts


def truncate(path, keep=0.5) -> None:
    """Cut a file to its first `keep` share of bytes: the header still reads, later strips not."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_tiff_names_the_file_or_under_skip_loses_only_its_unreadable_chips(
    tmp_path,
) -> None:
    write_pair(tmp_path, "a", size=64)
    write_pair(tmp_path, "b", size=64, seed=1)
    truncate(tmp_path / "b_s2.tif")
    with pytest.raises(BadSampleError, match="window at column .* cannot be read") as error:
        ChipDataset(find_pairs(tmp_path), demo_config(16))
    assert error.value.source.endswith("b_s2.tif")
    assert "See previous exception" not in str(error.value)  # GDAL's reason, not rasterio's
    dataset = ChipDataset(find_pairs(tmp_path), demo_config(16), on_bad_sample="skip")
    unreadable = dataset.report.unreadable_chips
    assert 0 < len(unreadable) < 16 and all("b_s2.tif: the 16x16 px" in u for u in unreadable)
    assert len(dataset) + len(unreadable) == 2 * 16  # the rest of b's chips are kept
    assert dataset.skipped_at_load == unreadable  # what metrics.jsonl counts
    assert dataset.report.skipped_pairs == []


def test_a_file_without_crs_is_the_one_named(tmp_path) -> None:
    s1, _ = write_pair(tmp_path, "a")
    write_geotiff(tmp_path / "a_s1.tif", s1, None, from_origin(0.0, 320.0, 10, 10), -9999.0)
    with pytest.raises(BadSampleError, match="has no CRS") as error:
        ChipDataset(find_pairs(tmp_path), demo_config())
    assert error.value.source.endswith("a_s1.tif")


def test_all_nodata_chips_are_skipped_and_counted(tmp_path) -> None:
    s1, _ = write_pair(tmp_path, "a", size=32)
    s1[:, :16, :16] = -9999.0  # the top-left 16 px chip holds no radar data
    write_geotiff(tmp_path / "a_s1.tif", s1, UTM, from_origin(0.0, 320.0, 10, 10), -9999.0)
    dataset = ChipDataset(find_pairs(tmp_path), demo_config(16))
    assert dataset.report.nodata_chips == 1 and len(dataset) == 3


def test_integer_and_float_optical_files_load_alike_but_do_not_mix(tmp_path) -> None:
    (tmp_path / "int").mkdir()
    (tmp_path / "float").mkdir()
    write_pair(tmp_path / "int", "a", s2_dtype=np.uint16)
    write_pair(tmp_path / "float", "a", s2_dtype=np.float32)
    config = demo_config()
    as_int = ChipDataset(find_pairs(tmp_path / "int"), config)[0]
    as_float = ChipDataset(find_pairs(tmp_path / "float"), config)[0]
    assert as_int["s2"].dtype == as_float["s2"].dtype == torch.float32
    assert torch.equal(as_int["s2"], as_float["s2"])
    write_pair(tmp_path / "int", "b", s2_dtype=np.float32, seed=1)
    write_pair(tmp_path / "int", "c", seed=2)
    with pytest.raises(
        BadSampleError, match="has float pixels while the other S2 files are integer"
    ) as error:
        ChipDataset(find_pairs(tmp_path / "int"), demo_config())
    assert error.value.source.endswith("b_s2.tif")


def test_a_file_without_partner_is_named_or_skipped_and_counted(tmp_path) -> None:
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "c")
    (tmp_path / "a_s2.tif").rename(tmp_path / "b_s2.tif")
    with pytest.raises(BadSampleError, match="a_s1.tif: has no matching S1/S2 partner"):
        find_pairs(tmp_path)
    skipped: list[str] = []
    pairs = find_pairs(tmp_path, on_bad="skip", skipped=skipped)
    assert [p.s1.name for p in pairs] == ["c_s1.tif"]
    assert len(skipped) == 2 and "b_s2.tif: has no matching" in " ".join(skipped)


def test_labelled_manifest_without_split_holds_out_every_fourth_pair(tmp_path) -> None:
    rows = ["s1,s2,label"]
    for index in range(4):
        write_pair(tmp_path, f"p{index}", size=16, seed=index)
        rows.append(f"p{index}_s1.tif,p{index}_s2.tif,{index % 2}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    train, test = CromaRecipe().build_eval_datasets(demo_config(16), str(tmp_path))
    assert (len(train), len(test)) == (3, 1)
    assert test[0]["label"].item() == 1
    (tmp_path / "manifest.csv").write_text("s1,s2\np0_s1.tif,p0_s2.tif\n")
    with pytest.raises(BadSampleError, match="has no label"):
        CromaRecipe().build_eval_datasets(demo_config(16), str(tmp_path))


def test_embedded_labelled_chips_refuse_a_run_with_another_band_layout() -> None:
    """The embedded chips have 2 S1 and 12 S2 bands: a run that reads 4 S2 bands is told to
    bring its own labelled chips rather than being fed the wrong bands."""
    from omnimask.data import DataPathError
    from omnimask.plugins import get_recipe

    recipe = get_recipe("remote_sensing/croma")
    config = recipe.config("demo")
    config.chips.s2_bands = 4
    with pytest.raises(DataPathError, match=r"have 2 S1 and 12 S2 bands.*reads 2 and 4.*--data"):
        recipe.build_eval_datasets(config, None)


@pytest.fixture(scope="module")
def labelled():
    return find_pairs(default_data() / "labelled")


def test_embedded_labels_are_balanced_and_splits_disjoint(labelled) -> None:
    for split, count in (
        ("train", EVAL_TRAIN_PER_CLASS),
        ("test", EVAL_CHIPS_PER_CLASS - EVAL_TRAIN_PER_CLASS),
    ):
        labels = [p.label for p in labelled if p.split == split]
        assert np.bincount(labels).tolist() == [count] * len(COVERS)
    train = {p.s2 for p in labelled if p.split == "train"}
    test = {p.s2 for p in labelled if p.split == "test"}
    assert len(train) + len(test) == len(labelled) and not train & test


def test_tiles_are_deterministic_and_covers_share_the_area() -> None:
    first, again = tile(np.random.default_rng(7), 2), tile(np.random.default_rng(7), 2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    for seed in range(20):
        area = np.bincount(land_cover(np.random.default_rng(seed), TILE).ravel(), minlength=4)
        assert area.min() >= 0.15 * TILE**2  # every cover present, about a quarter each


def test_only_the_labelled_cover_is_bright_to_the_radar() -> None:
    """Per cover, the radar's mean over a tile is 8 dB higher on the bright cover than on the
    others, whose means agree: the radar alone shows a bright region, not which cover it is."""
    rng = np.random.default_rng(0)
    covers = land_cover(rng, TILE)
    s1, _ = render(covers, 1, rng)
    means = [s1[0][covers == c].mean() for c in range(len(COVERS))]
    dim = [m for c, m in enumerate(means) if c != 1]
    assert max(dim) - min(dim) < 1.0
    assert abs(means[1] - np.mean(dim) - S1_BRIGHT_DB) < 1.0


def test_band_means_of_the_labelled_chips_do_not_tell_the_class(labelled) -> None:
    """Class means of the chips' per-band means differ by far less than the chips vary within a
    class, in both sensors: the label is not a band statistic a random encoder could read."""
    per_chip, labels = [], []
    for pair in labelled:
        with rasterio.open(pair.s1) as s1, rasterio.open(pair.s2) as s2:
            bands = np.concatenate([s1.read(), s2.read().astype(np.float64)])
        per_chip.append(np.concatenate([bands.mean((1, 2)), bands.std((1, 2))]))
        labels.append(pair.label)
    values, labels = np.asarray(per_chip), np.asarray(labels)
    class_means = np.stack([values[labels == c].mean(0) for c in range(len(COVERS))])
    within = np.stack([values[labels == c].std(0) for c in range(len(COVERS))]).mean(0)
    assert np.all(np.ptp(class_means, axis=0) < 0.5 * within)
