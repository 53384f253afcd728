"""The streamed token cache: same rows as tokenizing in memory, built once, memory bounded."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from pathlib import Path

import pytest
import torch
from omnimask_text import dataset as text_dataset
from omnimask_text import tokens
from omnimask_text.dataset import build_rows, build_text_dataset, tokenizer_path
from omnimask_text.tokens import TokenRows


def write_corpus(folder: Path, documents: int, bad_line: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    words = "the parser reads each token of the stream and returns a tree of nodes".split()
    with (folder / "docs.jsonl").open("w") as file:
        for index in range(documents):
            text = " ".join(words[(index + k) % len(words)] for k in range(5 + index % 90))
            file.write(json.dumps({"text": f"document {index}: {text}"}) + "\n")
            if bad_line and index == 3:
                file.write("{not json\n")
    return folder


@pytest.fixture
def config(mlm_recipe, tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    """The demo config on a corpus in `tmp_path`, with the embedded vocabulary and a fresh
    cache folder."""
    config = mlm_recipe.config("demo")
    config.vocab.path = str(tokenizer_path(config))
    monkeypatch.setenv("OMNIMASK_DATA_DIR", str(tmp_path / "cache"))
    config.data.path = str(write_corpus(tmp_path / "corpus", 300))
    config.corpus.seq_len = 32  # long documents are split
    return config


def rows_of(dataset) -> list[tuple[list[int], list[int]]]:  # noqa: ANN001
    items = [dataset[i] for i in range(len(dataset))]
    return [(i["input_ids"].tolist(), i["sequence_ids"].tolist()) for i in items]


@pytest.mark.parametrize("packing", [True, False])
def test_cached_rows_equal_the_rows_tokenized_in_memory(
    config,
    embedded_tokenizer,
    packing,  # noqa: ANN001
) -> None:
    config.corpus.packing = packing
    texts = [json.loads(line)["text"] for line in (Path(config.data.path) / "docs.jsonl").open()]
    cached = build_text_dataset(config)
    assert isinstance(cached.source, Path)  # memory-mapped from the cache folder
    assert rows_of(cached) == rows_of(build_rows(config, embedded_tokenizer, texts))
    assert len({len(ids) for ids, _ in rows_of(cached)}) > 1 or packing


def test_a_second_start_maps_the_cache_without_reading_the_corpus(config, monkeypatch) -> None:  # noqa: ANN001
    first = rows_of(build_text_dataset(config))

    def no_reading(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr(text_dataset, "iter_corpus", no_reading)
    again = build_text_dataset(config)
    assert rows_of(again) == first
    pickled = pickle.loads(pickle.dumps(again))
    assert pickled._arrays is None and rows_of(pickled) == first  # workers map the files


def test_skipped_lines_are_counted_on_every_start(config, tmp_path) -> None:  # noqa: ANN001
    config.data.path = str(write_corpus(tmp_path / "bad", 20, bad_line=True))
    config.data.on_bad_sample = "skip"
    first = build_text_dataset(config)
    again = build_text_dataset(config)
    assert len(first.skipped_at_load) == len(again.skipped_at_load) == 1
    assert "docs.jsonl:5" in again.skipped_at_load[0]


def test_tokenizing_memory_does_not_grow_with_the_corpus(config, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Python-side peak memory of the streaming pass and the packing, for a corpus 10x larger,
    stays within 1.5x: what grows is 8 bytes per chunk and row, not lists of tokens. (Packing
    windows are made small here so that both corpora span several.)"""
    monkeypatch.setattr(tokens, "PACK_WINDOW", 256)
    peaks = []
    for documents in (1000, 10000):
        config.data.path = str(write_corpus(tmp_path / f"c{documents}", documents))
        tracemalloc.start()
        rows = build_text_dataset(config)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert isinstance(rows, TokenRows) and len(rows) > documents // 10
    assert peaks[1] < 1.5 * peaks[0], peaks


def test_rows_tensors_are_int64(config) -> None:  # noqa: ANN001
    item = build_text_dataset(config)[0]
    assert item["input_ids"].dtype == item["sequence_ids"].dtype == torch.long
