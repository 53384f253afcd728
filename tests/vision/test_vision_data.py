"""Image reading: formats, mode conversion, bad files named, small images, empty folders, shards."""

from __future__ import annotations

import io
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import omnimask.data
import pytest
import torch
from omnimask.data import BadSampleError, DataPathError, EngineDataset
from omnimask_vision.data import (
    ImageConfig,
    TarShardDataset,
    decode_image,
    denormalize,
    eval_transform,
    labelled_datasets,
    pretraining_dataset,
)
from PIL import Image

SIZE = 32


def write(path: Path, mode: str, size: tuple[int, int] = (40, 48), fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(len(str(path)))
    channels = {"L": None, "RGB": 3, "RGBA": 4}[mode]
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path, format=fmt)
    return path


def test_grayscale_rgba_png_jpeg_webp_all_read_as_rgb(tmp_path: Path) -> None:
    write(tmp_path / "gray.png", "L")
    write(tmp_path / "alpha.png", "RGBA")
    write(tmp_path / "photo.jpg", "RGB", fmt="JPEG")
    write(tmp_path / "web.webp", "RGB", fmt="WEBP")
    dataset = pretraining_dataset(str(tmp_path), ImageConfig(size=SIZE))
    assert len(dataset) == 4
    for index in range(4):
        image = dataset[index]["image"]
        assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32


def test_rgba_is_composited_on_black_not_left_with_hidden_colours(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)
    pixels[..., :3] = 200  # colour under a fully transparent alpha
    Image.fromarray(pixels, "RGBA").save(tmp_path / "clear.png")
    image = decode_image((tmp_path / "clear.png").read_bytes(), "clear.png")
    assert image.mode == "RGB" and np.asarray(image).max() == 0


def test_grayscale_is_replicated_into_three_equal_channels(tmp_path: Path) -> None:
    write(tmp_path / "gray.png", "L")
    image = eval_transform(SIZE)(decode_image((tmp_path / "gray.png").read_bytes(), "gray"))
    rgb = denormalize(image)
    torch.testing.assert_close(rgb[0], rgb[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(rgb[1], rgb[2], atol=1e-6, rtol=0)


def test_corrupt_and_truncated_files_raise_bad_sample_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path / "good.png", "RGB")
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    full = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(full, format="PNG")
    (tmp_path / "cut.png").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    dataset = pretraining_dataset(str(tmp_path), ImageConfig(size=SIZE))
    names = [path.name for path in dataset.files]
    for name in ("broken.jpg", "cut.png"):
        with pytest.raises(BadSampleError) as error:
            dataset[names.index(name)]
        assert str(tmp_path / name) in str(error.value)
        assert "cannot decode image" in str(error.value)
    # The engine's skip policy drops it and reports the file.
    skipping = EngineDataset(dataset, seed=0, on_bad_sample="skip")
    loaded = skipping[(names.index("broken.jpg"), 0)]
    assert loaded.sample is None and "broken.jpg" in loaded.error


def test_image_smaller_than_the_crop_is_upsampled(tmp_path: Path) -> None:
    write(tmp_path / "tiny.png", "RGB", size=(5, 7))
    image = pretraining_dataset(str(tmp_path), ImageConfig(size=SIZE))[0]["image"]
    assert image.shape == (3, SIZE, SIZE) and torch.isfinite(image).all()


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DataPathError, match="holds no files matching"):
        pretraining_dataset(str(tmp_path), ImageConfig(size=SIZE))
    with pytest.raises(DataPathError, match="does not exist"):
        pretraining_dataset(str(tmp_path / "absent"), ImageConfig(size=SIZE))


def _shard(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_webdataset_shards_read_by_random_access(tmp_path: Path) -> None:
    images = {}
    for key in range(3):
        buffer = io.BytesIO()
        colour = np.full((20, 20, 3), 40 * key, np.uint8)
        Image.fromarray(colour).save(buffer, format="PNG")
        images[f"sample{key:03d}.png"] = buffer.getvalue()
        images[f"sample{key:03d}.cls"] = str(key).encode()
    images["sample099.jpg"] = b"garbage"
    _shard(tmp_path / "shard-000.tar", images)
    dataset = pretraining_dataset(str(tmp_path), ImageConfig(size=SIZE, flip=False))
    assert isinstance(dataset, TarShardDataset) and len(dataset) == 4
    means = [float(denormalize(dataset[i]["image"]).mean()) for i in range(3)]
    np.testing.assert_allclose(means, [0, 40 / 255, 80 / 255], atol=2e-2)
    with pytest.raises(BadSampleError, match=r"shard-000\.tar:sample099\.jpg"):
        dataset[3]


def test_labelled_folder_holds_out_every_fifth_image_per_class(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for index in range(10):
            write(tmp_path / label / f"{index}.png", "RGB", size=(12, 12))
    train, test = labelled_datasets(str(tmp_path), SIZE)
    assert (len(train), len(test)) == (16, 4)
    assert sorted(int(test[i]["label"]) for i in range(4)) == [0, 0, 1, 1]


def test_embedded_digits_are_labelled_rgb_images() -> None:
    train, test = labelled_datasets(None, SIZE)
    sample = test[0]
    assert sample["image"].shape == (3, SIZE, SIZE)
    assert len({int(train[i]["label"]) for i in range(50)}) == 10


def test_embedded_pretraining_set_is_the_unlabelled_digits_train_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from omnimask_vision.data import DEFAULT_DATA_VERSION, DigitsDataset, ensure_default_images

    monkeypatch.setenv("OMNIMASK_DATA_DIR", str(tmp_path))
    folder = ensure_default_images()
    assert folder.name == f"digits-{DEFAULT_DATA_VERSION}" and DEFAULT_DATA_VERSION != "v1"
    files = sorted(folder.iterdir())
    assert len(files) == DigitsDataset.SPLIT_AT  # the train split only: no test image
    assert {f.suffix for f in files} == {".png", ".webp"}
    train = DigitsDataset.split_images("train")
    for index in (0, 1, 1199):  # lossless: the very pixels the probe reads
        with Image.open(files[index]) as image:
            assert np.array_equal(np.asarray(image.convert("L")), train[index])
    assert len(pretraining_dataset(None, ImageConfig(size=SIZE))) == len(files)


def _png_shards(folder: Path, count: int, per_shard: int = 3) -> list[Path]:
    shards = []
    for number in range(count):
        members = {}
        for key in range(per_shard):
            buffer = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), 10 * key + number, np.uint8)).save(buffer, "PNG")
            members[f"s{number}-{key}.png"] = buffer.getvalue()
            members[f"s{number}-{key}.cls"] = b"0"
        shards.append(_shard(folder / f"shard-{number:03d}.tar", members))
    return shards


def members(dataset: TarShardDataset) -> list[tuple[Path, str, int, int]]:
    return [dataset.member(i) for i in range(len(dataset))]


def _count_tar_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every `tarfile.open` from now on, by shard name (reading headers starts with one)."""
    opened: list[str] = []
    real_open = tarfile.open

    def counting_open(name, *args, **kwargs):  # noqa: ANN001, ANN202
        opened.append(Path(name).name)
        return real_open(name, *args, **kwargs)

    monkeypatch.setattr(tarfile, "open", counting_open)
    return opened


def test_second_start_reads_the_saved_shard_index_not_the_tar_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _png_shards(tmp_path, 3)
    opened = _count_tar_opens(monkeypatch)
    config = ImageConfig(size=SIZE, flip=False)
    first = pretraining_dataset(str(tmp_path), config)
    assert sorted(opened) == ["shard-000.tar", "shard-001.tar", "shard-002.tar"]
    assert sorted(p.name for p in (tmp_path / ".omnimask-cache").iterdir()) == [
        f"shard-00{i}.tar.index.json" for i in range(3)
    ]
    opened.clear()
    second = pretraining_dataset(str(tmp_path), config)
    assert opened == []  # no tar header read at the second start
    assert members(second) == members(first) and len(second) == 9
    torch.testing.assert_close(second[4]["image"], first[4]["image"])


def test_a_touched_or_rewritten_shard_is_indexed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = _png_shards(tmp_path, 2)
    config = ImageConfig(size=SIZE, flip=False)
    pretraining_dataset(str(tmp_path), config)
    opened = _count_tar_opens(monkeypatch)
    stat = shards[1].stat()
    os.utime(shards[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    pretraining_dataset(str(tmp_path), config)
    assert opened == ["shard-001.tar"]
    _png_shards(tmp_path, 1, per_shard=5)  # shard-000 rewritten with more samples
    opened.clear()
    assert len(pretraining_dataset(str(tmp_path), config)) == 5 + 3
    assert opened == ["shard-000.tar"]


def test_a_damaged_shard_index_is_rebuilt_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _png_shards(tmp_path, 2)
    config = ImageConfig(size=SIZE, flip=False)
    expected = members(pretraining_dataset(str(tmp_path), config))
    for index in (tmp_path / ".omnimask-cache").iterdir():
        index.write_text('{"format": 1, "names": [')  # cut short
    opened = _count_tar_opens(monkeypatch)
    with caplog.at_level("WARNING", logger="omnimask"):
        assert members(pretraining_dataset(str(tmp_path), config)) == expected
    assert sorted(opened) == ["shard-000.tar", "shard-001.tar"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "rebuilt 2 unreadable tar shard index" in warnings[0]
    opened.clear()
    pretraining_dataset(str(tmp_path), config)
    assert opened == []  # the rebuilt indices are whole again


def test_an_unwritable_shard_folder_keeps_the_index_in_memory_and_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _png_shards(tmp_path, 3)

    def read_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(omnimask.data.tempfile, "mkstemp", read_only)
    with caplog.at_level("WARNING", logger="omnimask"):
        dataset = pretraining_dataset(str(tmp_path), ImageConfig(size=SIZE, flip=False))
    assert len(dataset) == 9 and dataset[8]["image"].shape == (3, SIZE, SIZE)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "cannot save the index of 3 tar shard(s)" in warnings[0]
    assert "Read-only file system" in warnings[0] and "kept in memory" in warnings[0]


def test_concurrent_starts_each_write_a_whole_shard_index(tmp_path: Path) -> None:
    _png_shards(tmp_path, 4, per_shard=20)
    config = ImageConfig(size=SIZE, flip=False)
    with ThreadPoolExecutor(8) as pool:
        built = list(pool.map(lambda _: pretraining_dataset(str(tmp_path), config), range(8)))
    assert all(members(d) == members(built[0]) for d in built) and len(built[0]) == 80
    cache = tmp_path / ".omnimask-cache"
    assert sorted(p.name for p in cache.iterdir()) == [
        f"shard-00{i}.tar.index.json" for i in range(4)
    ]
    assert all(len(json.loads(p.read_text())["names"]) == 40 for p in cache.iterdir())
