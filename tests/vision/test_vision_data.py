"""Image reading: formats, mode conversion, bad files named, small images, empty folders, shards."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
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
