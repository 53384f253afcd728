"""From documents to training rows: tokenize, split long documents, pack rows, collate.

A row holds `seq_len` token ids. Each document is tokenized once; one longer than a row is split
into consecutive chunks (every token is trained on, nothing is truncated), each chunk framed as
`[CLS] chunk [SEP]`. With packing, chunks are laid end to end into rows (best fit; a chunk
never straddles two rows), so a row carries almost no padding; `sequence_ids` tells the
documents of a row apart (1, 2, ... ; 0 = padding) and the encoder keeps attention and
positions within each document. Without packing each chunk is its own row and a batch is
padded to its longest row.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omnimask.data import check_data_path
from tokenizers import Tokenizer
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from omnimask_text.config import MLMConfig
from omnimask_text.corpus import (
    corpus_files,
    ensure_embedded_data,
    read_corpus,
    read_labelled,
)
from omnimask_text.lexicon import NgramLexicon, build_lexicon
from omnimask_text.models.build import SpecialIds
from omnimask_text.vocab import (
    CLS,
    SEP,
    cached_lexicon_path,
    cached_tokenizer_path,
    continuation_flags,
    corpus_key,
    load_tokenizer,
    save_atomically,
    train_wordpiece,
    vocabulary_digest,
)

logger = logging.getLogger(__name__)


def corpus_path(config: MLMConfig) -> Path:
    return Path(config.data.path) if config.data.path else ensure_embedded_data() / "corpus"


def resolve_tokenizer(config: MLMConfig) -> Tokenizer:
    """`vocab.path` if given, else the cached WordPiece trained on the corpus (trained now if
    missing). `build_model` calls this too: the model's vocabulary size comes from it."""
    return load_tokenizer(tokenizer_path(config))


def tokenizer_path(config: MLMConfig) -> Path:
    """The tokenizer file of `config`, training and caching it first when needed."""
    if config.vocab.path:
        return Path(config.vocab.path)
    files = corpus_files(corpus_path(config), config.corpus.split)
    path = cached_tokenizer_path(corpus_key(files, config.vocab, config.corpus.field))
    if not path.exists():
        documents = read_corpus(
            corpus_path(config), config.corpus.field, config.data.on_bad_sample, config.corpus.split
        )
        logger.info("training a WordPiece vocabulary on %d documents -> %s", len(documents), path)
        save_atomically(train_wordpiece([d.text for d in documents], config.vocab), path)
    return path


def lexicon_path(config: MLMConfig) -> Path:
    """The n-gram lexicon file of `config` (explicit n-gram masking), built by the T-test on the
    tokenized corpus and cached when `mask.lexicon` is unset. Keyed by the corpus files, the
    vocabulary and the lexicon settings."""
    if config.mask.lexicon:
        return Path(config.mask.lexicon)
    tokenizer = resolve_tokenizer(config)
    files = corpus_files(corpus_path(config), config.corpus.split)
    mask = config.mask
    settings = f"{mask.lexicon_size}/{mask.lexicon_min_count}/{mask.max_ngram}"
    key = corpus_key(files, config.vocab, f"{config.corpus.field}/{settings}")
    path = cached_lexicon_path(f"{key}-{vocabulary_digest(tokenizer):x}")
    if not path.exists():
        documents = read_corpus(
            corpus_path(config), config.corpus.field, config.data.on_bad_sample, config.corpus.split
        )
        # The whole document, framed once: n-grams are counted within documents.
        chunks, _ = tokenize_documents(tokenizer, [d.text for d in documents], 1 << 40)
        special = np.zeros(tokenizer.get_vocab_size(), dtype=bool)
        special[SpecialIds.of(tokenizer).all()] = True
        lexicon = build_lexicon(
            chunks,
            special,
            np.array(continuation_flags(tokenizer)),
            vocabulary_digest(tokenizer),
            mask.lexicon_size,
            mask.lexicon_min_count,
            mask.max_ngram,
        )
        logger.info("built an n-gram lexicon of %d entries -> %s", len(lexicon), path)
        lexicon.save(path)
    return path


def load_lexicon(config: MLMConfig, tokenizer: Tokenizer) -> NgramLexicon:
    path = lexicon_path(config)
    return NgramLexicon.load(path, tokenizer.get_vocab_size(), vocabulary_digest(tokenizer))


def split_into_chunks(
    ids: Sequence[int], body: int, continuation: Sequence[bool] | None = None
) -> list[list[int]]:
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
        chunks.append(list(ids[start:end]))
        start = end
    return chunks


def frame(chunk: list[int], cls: int, sep: int) -> list[int]:
    return [cls, *chunk, sep]


def pack(chunks: Sequence[list[int]], seq_len: int) -> list[tuple[list[int], list[int]]]:
    """Best-fit-decreasing packing into (ids, sequence ids) rows of at most `seq_len` tokens.

    Longest chunks first, each into the open row it fills most tightly; rows are kept in
    buckets by free space, so a placement costs at most `seq_len` bucket lookups. Rows come out
    nearly full (greedy in-order packing leaves about a quarter of a row empty on short
    documents), and every chunk stays whole within one row.
    """
    rows: list[list[list[int]]] = []
    by_free_space: dict[int, list[int]] = {}
    for chunk in sorted(chunks, key=len, reverse=True):
        size = len(chunk)
        fitting = next((free for free in range(size, seq_len + 1) if by_free_space.get(free)), None)
        if fitting is None:
            rows.append([chunk])
            row, free = len(rows) - 1, seq_len - size
        else:
            row = by_free_space[fitting].pop()
            rows[row].append(chunk)
            free = fitting - size
        by_free_space.setdefault(free, []).append(row)
    packed = []
    for row_chunks in rows:
        ids = [token for chunk in row_chunks for token in chunk]
        sequence_ids = [n + 1 for n, chunk in enumerate(row_chunks) for _ in chunk]
        packed.append((ids, sequence_ids))
    return packed


class TextRows(Dataset):
    """Rows of token ids; items are `{"input_ids", "sequence_ids", "vocab_digest"}` tensors."""

    def __init__(self, rows: list[tuple[list[int], list[int]]], digest: int) -> None:
        self.rows = rows
        self.digest = torch.tensor(digest, dtype=torch.long)
        self.skipped_at_load: list[str] = []  # bad files / lines left out (engine counts them)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        ids, sequence_ids = self.rows[index]
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "sequence_ids": torch.tensor(sequence_ids, dtype=torch.long),
            "vocab_digest": self.digest,
        }


def tokenize_documents(
    tokenizer: Tokenizer, texts: Sequence[str], seq_len: int
) -> tuple[list[list[int]], int]:
    """Framed chunks of every document (long ones split), and how many documents were split."""
    cls, sep = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    body = seq_len - 2
    if body < 1:
        raise ValueError(f"corpus.seq_len must be at least 3 ([CLS] x [SEP]), got {seq_len}")
    continuation = continuation_flags(tokenizer)
    chunks: list[list[int]] = []
    split = 0
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        pieces = split_into_chunks(encoding.ids, body, continuation)
        split += len(pieces) > 1
        chunks += [frame(piece, cls, sep) for piece in pieces if piece]
    return chunks, split


def build_rows(config: MLMConfig, tokenizer: Tokenizer, texts: Sequence[str]) -> TextRows:
    seq_len = config.corpus.seq_len
    chunks, split = tokenize_documents(tokenizer, texts, seq_len)
    if split:
        logger.info(
            "%d of %d documents are longer than corpus.seq_len=%d and were split into rows",
            split,
            len(texts),
            seq_len,
        )
    if config.corpus.packing:
        rows = pack(chunks, seq_len)
    else:
        rows = [(chunk, [1] * len(chunk)) for chunk in chunks]
    return TextRows(rows, vocabulary_digest(tokenizer))


def build_text_dataset(config: MLMConfig) -> TextRows:
    tokenizer = resolve_tokenizer(config)
    skipped: list[str] = []
    documents = read_corpus(
        corpus_path(config),
        config.corpus.field,
        config.data.on_bad_sample,
        config.corpus.split,
        skipped,
    )
    if config.corpus.max_documents > 0:
        documents = documents[: config.corpus.max_documents]
    rows = build_rows(config, tokenizer, [d.text for d in documents])
    rows.skipped_at_load = skipped
    return rows


class LabelledTexts(Dataset):
    """Whole documents with an int label, one per item (for the linear probe and kNN)."""

    def __init__(self, rows: TextRows, labels: list[int]) -> None:
        self.rows, self.labels = rows, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.rows[index], "label": torch.tensor(self.labels[index])}


def build_labelled(config: MLMConfig, path: str | None) -> tuple[LabelledTexts, LabelledTexts]:
    """(train, test) from a labelled JSONL file, or the embedded stdlib-package set.

    Each document is embedded from its first `seq_len` tokens (one vector per document; the
    rest is left out on purpose, as a probe needs one row per label)."""
    tokenizer = resolve_tokenizer(config)
    source = Path(path) if path else ensure_embedded_data() / "labelled.jsonl"
    file = check_data_path(source, ("*.jsonl",))[0]
    seq_len = config.corpus.seq_len
    cls, sep = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    digest = vocabulary_digest(tokenizer)
    sets = []
    for split in read_labelled(file, config.corpus.field):
        encodings = tokenizer.encode_batch([text for text, _ in split], add_special_tokens=False)
        rows = []
        for encoding in encodings:
            ids = frame(encoding.ids[: seq_len - 2], cls, sep)
            rows.append((ids, [1] * len(ids)))
        sets.append(LabelledTexts(TextRows(rows, digest), [y for _, y in split]))
    return sets[0], sets[1]


def collate_rows(samples: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Pad to the longest row of the batch (packed rows are already nearly full). Padding is
    marked by `sequence_ids == 0`; the model's tokenizer writes its own [PAD] id there."""
    batch = {
        "input_ids": pad_sequence([s["input_ids"] for s in samples], True, 0),
        "sequence_ids": pad_sequence([s["sequence_ids"] for s in samples], True, 0),
        "vocab_digest": torch.stack([s["vocab_digest"] for s in samples]),
    }
    if "label" in samples[0]:
        batch["label"] = torch.stack([s["label"] for s in samples])
    return batch
