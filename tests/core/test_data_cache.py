"""The cache plumbing plugins share: atomic writes, and data listings that skip the cache."""

from __future__ import annotations

from pathlib import Path

import omnimask.data
import pytest
from omnimask.data import CACHE_FOLDER, check_data_path, write_atomically


def test_write_atomically_leaves_the_whole_file_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "cache" / "entry.json"
    write_atomically(target, b"first")
    write_atomically(target, b"second")
    assert target.read_bytes() == b"second" and [p.name for p in target.parent.iterdir()] == [
        "entry.json"
    ]

    def full_disk(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(omnimask.data.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, b"third")
    assert target.read_bytes() == b"second" and len(list(target.parent.iterdir())) == 1


def test_data_listings_skip_the_cache_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cloud.npy").write_bytes(b"")
    (tmp_path / "a" / CACHE_FOLDER).mkdir()
    (tmp_path / "a" / CACHE_FOLDER / "cloud-0123.npy").write_bytes(b"")
    assert check_data_path(tmp_path, ("*.npy",)) == [tmp_path / "a" / "cloud.npy"]
