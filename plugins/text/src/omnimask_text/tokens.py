"""Token shards: a corpus tokenized once, in one streaming pass, into files read by memory map.

A cache folder holds
- `tokens.bin`: the ids of every framed chunk (`[CLS] piece [SEP]`, a long document split into
  pieces between words) end to end, `uint16` when the vocabulary fits, else `uint32`;
- `chunks.npy`: `int64` offsets of the chunks in `tokens.bin` (one more than chunks);
- `rows-packed.npy` / `rows-unpacked.npy`: a row layout (which chunks make each row), made on
  first use;
- `meta.json`: counts, and the files or lines that were skipped (counted again on every start).

Why a flat `.bin` with offsets rather than Arrow through `datasets`: rows are assembled from
chunks of several documents (packing), so training reads chunks, not documents, and a row is
two slices of a memory map; an Arrow table written by `Dataset.map` holds one list per document
and packing would still need this index beside it. The same layout is what Megatron-LM's and
nanoGPT's token files use, read here with numpy alone. Tokenization goes through the fast
tokenizer's `encode_batch` (Rust, all cores) a batch of documents at a time, so peak memory is
one batch plus the offsets, whatever the corpus size.

The folder is keyed like the tokenizer (the corpus files' path, size and modification time,
the field, split and document limit) and by the vocabulary's digest and `corpus.seq_len`; it is
written with `omnimask.data.generate_once` (staged and renamed), so processes that start
together build it once and no process reads half of it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omnimask.data import default_data_dir, generate_once
from tokenizers import Tokenizer
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from omnimask_text.vocab import CLS, SEP, continuation_flags, vocabulary_digest

logger = logging.getLogger(__name__)

#: documents tokenized per `encode_batch` call.
ENCODE_BATCH = 1024
#: chunks packed together: packing sorts within windows of this many chunks, so its memory stays
#: bounded on any corpus (a window holds rows of very many documents; the fill barely changes).
PACK_WINDOW = 1 << 17


def split_into_chunks(
    ids: Sequence[int], body: int, continuation: Sequence[bool] | None = None
) -> list[Sequence[int]]:
    """Consecutive pieces of at most `body` ids covering all of `ids`. Given the vocabulary's
    `continuation` flags, each cut falls before the start of a word, so no row begins with a
    lone `##` piece that whole-word masking would take for a word (a word longer than `body`
    pieces is cut where it must)."""
    chunks, start = [], 0
    while start < len(ids):
        end = min(start + body, len(ids))
        if continuation is not None and end < len(ids):
            cut = end
            while cut > start + 1 and continuation[ids[cut]]:
                cut -= 1
            end = cut if not continuation[ids[cut]] else end
        chunks.append(ids[start:end])
        start = end
    return chunks


def framed_chunks(
    tokenizer: Tokenizer, texts: Iterable[str], seq_len: int
) -> Iterator[tuple[list[int], bool]]:
    """`([CLS] piece [SEP], first piece of a document that was split)` for every piece of
    every text, tokenized a batch of `ENCODE_BATCH` texts at a time."""
    cls, sep = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    body = seq_len - 2
    if body < 1:
        raise ValueError(f"corpus.seq_len must be at least 3 ([CLS] x [SEP]), got {seq_len}")
    continuation = continuation_flags(tokenizer)
    texts = iter(texts)
    while batch := list(itertools.islice(texts, ENCODE_BATCH)):
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            pieces = [p for p in split_into_chunks(encoding.ids, body, continuation) if p]
            for index, piece in enumerate(pieces):
                yield [cls, *piece, sep], index == 0 and len(pieces) > 1


def pack_layout(
    lengths: np.ndarray, seq_len: int, window: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Best-fit-decreasing packing of chunks of `lengths` into rows of at most `seq_len`
    tokens: `(order, starts)`, row r holding chunks `order[starts[r]:starts[r + 1]]`.

    Within each window of `window` (default `PACK_WINDOW`) consecutive chunks, longest first,
    each chunk goes into the open row it fills most tightly; rows are kept in buckets by free
    space, so a placement costs at most `seq_len` bucket lookups. Rows come out nearly full
    (greedy in-order packing leaves about a quarter of a row empty on short documents), and
    every chunk stays whole. Python objects exist for one window at a time; the layout itself is
    two int64 arrays."""
    window = window or PACK_WINDOW
    order: list[np.ndarray] = []
    starts = array("q", [0])
    for first in range(0, len(lengths), window):
        sizes = np.asarray(lengths[first : first + window])
        rows: list[list[int]] = []
        by_free_space: dict[int, list[int]] = {}
        for chunk in np.argsort(-sizes, kind="stable").tolist():
            size = int(sizes[chunk])
            fitting = next(
                (free for free in range(size, seq_len + 1) if by_free_space.get(free)), None
            )
            if fitting is None:
                rows.append([chunk])
                row, free = len(rows) - 1, seq_len - size
            else:
                row = by_free_space[fitting].pop()
                rows[row].append(chunk)
                free = fitting - size
            by_free_space.setdefault(free, []).append(row)
        order.append(np.fromiter((c for r in rows for c in r), np.int64) + first)
        for row_chunks in rows:
            starts.append(starts[-1] + len(row_chunks))
    flat = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    return flat, np.frombuffer(starts, dtype=np.int64).copy()


class TokenRows(Dataset):
    """Rows of token ids assembled from chunks; items are `{"input_ids", "sequence_ids",
    "vocab_digest"}` tensors. `sequence_ids` number the chunks of a row 1, 2, ... (packed
    documents attend only within themselves).

    The arrays are memory-mapped from a token cache folder (`open`), opened again in each
    process that reads (a DataLoader worker gets the folder, not the data), or held in memory
    for a few documents (`from_chunks`)."""

    def __init__(self, arrays: dict[str, np.ndarray] | Path, packing: bool, digest: int) -> None:
        self.source = arrays
        self.packing = packing
        self.digest = torch.tensor(digest, dtype=torch.long)
        self._arrays = arrays if isinstance(arrays, dict) else None
        self.skipped_at_load: list[str] = []  # bad files / lines left out (engine counts them)
        #: what shards of these rows carry (`build_text_dataset`: the tokenizer, the row shape)
        self.attributes: dict[str, Any] = {}
        self._len = len(self.arrays["starts"]) - 1

    @classmethod
    def from_chunks(
        cls, chunks: Sequence[Sequence[int]], packing: bool, seq_len: int, digest: int
    ) -> TokenRows:
        lengths = np.asarray([len(c) for c in chunks], dtype=np.int64)
        tokens = np.asarray([t for c in chunks for t in c], dtype=np.int64)
        arrays = {"tokens": tokens, "offsets": np.concatenate([[0], np.cumsum(lengths)])}
        arrays["order"], arrays["starts"] = row_layout(lengths, packing, seq_len)
        return cls(arrays, packing, digest)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            assert isinstance(self.source, Path)
            self._arrays = open_arrays(self.source, self.packing)
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if isinstance(self.source, Path):
            state["_arrays"] = None  # each process maps the files itself
        return state

    def __len__(self) -> int:
        return self._len

    #: the record layout in shards (`omnimask.shards`); bump when it changes
    record_kind = "text.token_row/1"

    def record(self, index: int) -> dict[str, Any]:
        """Row `index`: its token ids and the number of the chunk each belongs to."""
        arrays = self.arrays
        chunks = arrays["order"][arrays["starts"][index] : arrays["starts"][index + 1]]
        offsets, tokens = arrays["offsets"], arrays["tokens"]
        pieces = [tokens[offsets[c] : offsets[c + 1]] for c in chunks.tolist()]
        ids = np.concatenate(pieces).astype(np.int64)
        sequence_ids = np.repeat(np.arange(1, len(pieces) + 1), [len(p) for p in pieces])
        return {"input_ids": ids, "sequence_ids": sequence_ids.astype(np.int64)}

    def shard_attributes(self) -> dict[str, Any]:
        return self.attributes

    def sample(self, record: dict[str, Any]) -> dict[str, Tensor]:
        return row_sample(record, self.digest)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.sample(self.record(index))


def row_sample(record: dict[str, Any], digest: Tensor) -> dict[str, Tensor]:
    """A row's record as the tensors `collate_rows` takes (masking happens in the model)."""
    return {
        "input_ids": torch.from_numpy(record["input_ids"]),
        "sequence_ids": torch.from_numpy(record["sequence_ids"]),
        "vocab_digest": digest,
    }


def row_layout(lengths: np.ndarray, packing: bool, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """`(order, starts)` of the rows: packed (`pack_layout`), or one chunk per row."""
    if packing:
        return pack_layout(lengths, seq_len)
    return np.arange(len(lengths), dtype=np.int64), np.arange(len(lengths) + 1, dtype=np.int64)


def open_arrays(folder: Path, packing: bool) -> dict[str, np.ndarray]:
    """The token cache in `folder`, memory-mapped; its row layout is made on first use."""
    meta = json.loads((folder / "meta.json").read_text())
    offsets = np.load(folder / "chunks.npy", mmap_mode="r")
    layout = folder / f"rows-{'packed' if packing else 'unpacked'}.npz"
    if not layout.exists():  # cheap next to tokenizing; written whole, then renamed
        order, starts = row_layout(np.diff(offsets), packing, meta["seq_len"])
        temp = layout.with_name(f".tmp-{layout.stem}-{id(order)}.npz")
        np.savez(temp, order=order, starts=starts)
        temp.replace(layout)
    rows = np.load(layout)
    return {
        "tokens": np.memmap(folder / "tokens.bin", dtype=meta["dtype"], mode="r"),
        "offsets": offsets,
        "order": rows["order"],
        "starts": rows["starts"],
    }


def cache_folder(key: str, tokenizer: Tokenizer, seq_len: int) -> Path:
    digest = hashlib.sha256(f"{key}/{vocabulary_digest(tokenizer):x}/{seq_len}".encode())
    return default_data_dir("text") / "tokens" / digest.hexdigest()[:20]


def write_token_cache(
    folder: Path, tokenizer: Tokenizer, texts: Iterable[str], seq_len: int, skipped: list[str]
) -> None:
    """Tokenize `texts` into `folder` (a staging folder of `generate_once`) in one pass."""
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.uint32
    offsets = array("q", [0])
    documents = split_documents = 0
    progress = tqdm(texts, desc="tokenizing", unit=" docs", mininterval=2.0)

    def counted(stream: Iterable[str]) -> Iterator[str]:
        nonlocal documents
        for text in stream:
            documents += 1
            yield text

    with (folder / "tokens.bin").open("wb") as out:
        for chunk, starts_split_document in framed_chunks(tokenizer, counted(progress), seq_len):
            out.write(np.asarray(chunk, dtype=dtype).tobytes())
            offsets.append(offsets[-1] + len(chunk))
            split_documents += starts_split_document
    progress.close()
    if split_documents:
        logger.info(
            "%d of %d documents are longer than corpus.seq_len=%d and were split into rows",
            split_documents,
            documents,
            seq_len,
        )
    np.save(folder / "chunks.npy", np.frombuffer(offsets, dtype=np.int64))
    meta = {
        "dtype": np.dtype(dtype).name,
        "seq_len": seq_len,
        "documents": documents,
        "chunks": len(offsets) - 1,
        "tokens": offsets[-1],
        "split_documents": split_documents,
        "skipped": skipped,
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def token_cache(
    key: str,
    tokenizer: Tokenizer,
    texts: Callable[[], Iterable[str]],
    seq_len: int,
    skipped: list[str],
) -> tuple[Path, dict[str, Any]]:
    """The token cache of corpus `key` and its metadata; `texts()` (the corpus, streamed, its
    bad inputs listed in `skipped`) is read only when the cache is missing."""
    folder = generate_once(
        cache_folder(key, tokenizer, seq_len),
        lambda staging: write_token_cache(staging, tokenizer, texts(), seq_len, skipped),
    )
    return folder, json.loads((folder / "meta.json").read_text())
