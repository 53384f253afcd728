"""From documents to training rows: tokenize, split long documents, pack rows, collate.

A row holds `seq_len` token ids. Each document is tokenized once, in one streaming pass over the
corpus into memory-mapped token files (`omnimask_text.tokens`); one longer than a row is split
into consecutive chunks (every token is trained on, nothing is truncated), each chunk framed as
`[CLS] chunk [SEP]`. With packing, chunks are laid end to end into rows (best fit; a chunk
never straddles two rows), so a row carries almost no padding; `sequence_ids` tells the
documents of a row apart (1, 2, ... ; 0 = padding) and the encoder keeps attention and
positions within each document. Without packing each chunk is its own row and a batch is
padded to its longest row.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from omnimask.config import ConfigError
from omnimask.data import check_data_path
from omnimask.shards import ShardDataset, ShardSet
from tokenizers import Tokenizer
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from omnimask_text.config import MLMConfig
from omnimask_text.corpus import (
    corpus_files,
    ensure_embedded_data,
    iter_corpus,
    read_labelled,
)
from omnimask_text.lexicon import NgramLexicon, build_lexicon, cached_blocks
from omnimask_text.models.build import SpecialIds
from omnimask_text.tokens import TokenRows, framed_chunks, open_arrays, row_sample, token_cache
from omnimask_text.vocab import (
    CLS,
    SEP,
    VocabularyError,
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
    if config.data.path:
        return Path(config.data.path)
    return ensure_embedded_data(config.corpus.embedded) / "corpus"


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
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):  # one process of a run trains it
        if not path.exists():
            total = sum(f.stat().st_size for f in files)
            stride = max(1, math.ceil(total / config.vocab.train_bytes))
            logger.info(
                "training a WordPiece vocabulary on %s of the corpus -> %s",
                "all" if stride == 1 else f"every {stride}th document",
                path,
            )
            texts = itertools.islice(corpus_texts(config), 0, None, stride)
            save_atomically(train_wordpiece(texts, config.vocab), path)
    return path


def corpus_texts(config: MLMConfig, skipped: list[str] | None = None) -> Iterator[str]:
    """The corpus's documents, streamed (at most `corpus.max_documents` when it is set)."""
    documents = iter_corpus(
        corpus_path(config),
        config.corpus.field,
        config.data.on_bad_sample,
        config.corpus.split,
        skipped,
    )
    limit = config.corpus.max_documents or None
    return (document.text for document in itertools.islice(documents, limit))


def lexicon_path(config: MLMConfig) -> Path:
    """The n-gram lexicon file of `config` (explicit n-gram masking), built by the T-test on the
    tokenized corpus and cached when `mask.lexicon` is unset. Keyed by the corpus files, the
    vocabulary and the lexicon settings."""
    if config.mask.lexicon:
        return Path(config.mask.lexicon)
    tokenizer = resolve_tokenizer(config)
    files = corpus_files(corpus_path(config), config.corpus.split)
    mask = config.mask
    # v2: counted over the token cache, within `corpus.seq_len` pieces of long documents
    settings = (
        f"v2/{mask.lexicon_size}/{mask.lexicon_min_count}/{mask.max_ngram}/{config.corpus.seq_len}"
    )
    key = corpus_key(files, config.vocab, f"{config.corpus.field}/{settings}")
    path = cached_lexicon_path(f"{key}-{vocabulary_digest(tokenizer):x}")
    if not path.exists():
        # Streamed from the corpus's token cache (the one training reads, built now if needed):
        # chunks are framed, so n-grams are counted within documents (and within the
        # `corpus.seq_len` pieces of a long one), and the corpus is never held in memory.
        folder, _ = corpus_token_cache(config, tokenizer, [])
        arrays = open_arrays(folder, config.corpus.packing)
        chunks = cached_blocks(arrays["tokens"], arrays["offsets"])
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


def pack(chunks: Sequence[list[int]], seq_len: int) -> list[tuple[list[int], list[int]]]:
    """`(ids, sequence ids)` rows of `chunks` packed by `tokens.pack_layout` (best fit), as
    `TokenRows` assembles them."""
    rows = TokenRows.from_chunks(chunks, packing=True, seq_len=seq_len, digest=0)
    items = (rows[i] for i in range(len(rows)))
    return [(i["input_ids"].tolist(), i["sequence_ids"].tolist()) for i in items]


def tokenize_documents(
    tokenizer: Tokenizer, texts: Sequence[str], seq_len: int
) -> tuple[list[list[int]], int]:
    """Framed chunks of every document (long ones split), and how many documents were split."""
    chunks, split = [], 0
    for chunk, starts_split_document in framed_chunks(tokenizer, texts, seq_len):
        chunks.append(chunk)
        split += starts_split_document
    return chunks, split


def build_rows(config: MLMConfig, tokenizer: Tokenizer, texts: Sequence[str]) -> TokenRows:
    """Rows of a few documents, in memory (tests, figures)."""
    chunks, _ = tokenize_documents(tokenizer, texts, config.corpus.seq_len)
    digest = vocabulary_digest(tokenizer)
    return TokenRows.from_chunks(chunks, config.corpus.packing, config.corpus.seq_len, digest)


def corpus_token_cache(
    config: MLMConfig, tokenizer: Tokenizer, skipped: list[str]
) -> tuple[Path, dict[str, Any]]:
    """The corpus's token cache (`tokens.token_cache`: tokenized in one streaming pass the
    first time, its bad inputs listed in `skipped`; memory-mapped afterwards) and its metadata."""
    corpus = config.corpus
    files = corpus_files(corpus_path(config), corpus.split)
    settings = f"{corpus.field}/{corpus.split}/{corpus.max_documents}/{config.data.on_bad_sample}"
    return token_cache(
        corpus_key(files, config.vocab, settings),
        tokenizer,
        lambda: corpus_texts(config, skipped),
        corpus.seq_len,
        skipped,
    )


def build_text_dataset(config: MLMConfig) -> TokenRows:
    """The training rows, from the corpus's token cache (`corpus_token_cache`)."""
    tokenizer = resolve_tokenizer(config)
    corpus = config.corpus
    skipped: list[str] = []
    folder, meta = corpus_token_cache(config, tokenizer, skipped)
    for reason in meta["skipped"] if not skipped else ():  # cached: say it again
        logger.warning("skipped bad corpus input: %s", reason)
    rows = TokenRows(folder, corpus.packing, vocabulary_digest(tokenizer))
    rows.skipped_at_load = list(meta["skipped"])
    rows.attributes = {**row_settings(config), "tokenizer": tokenizer.to_str()}
    return rows


def row_settings(config: MLMConfig) -> dict[str, Any]:
    """The `corpus.*` values that shape a row."""
    return {"corpus.seq_len": config.corpus.seq_len, "corpus.packing": config.corpus.packing}


def shard_rows(config: MLMConfig, shards: ShardSet) -> ShardDataset:
    """The rows of a shard set, and `vocab.path` pinned to the tokenizer that made them (kept
    in the shard set; written to the tokenizer cache, keyed by its digest, on first use)."""
    shards.require(row_settings(config))
    tokenizer = Tokenizer.from_str(shards.attributes["tokenizer"])
    digest = vocabulary_digest(tokenizer)
    if config.vocab.path:
        given = vocabulary_digest(load_tokenizer(config.vocab.path))
        if given != digest:
            raise VocabularyError(
                f"{shards.location}: its rows were tokenized with another vocabulary than "
                f"vocab.path={config.vocab.path}; leave vocab.path unset to use theirs"
            )
    else:
        path = cached_tokenizer_path(f"shards-{digest:x}")
        if not path.exists():
            save_atomically(tokenizer, path)
        config.vocab.path = str(path)
    if config.mask.strategy == "explicit_ngram" and not config.mask.lexicon:
        raise ConfigError(
            "mask.strategy=explicit_ngram builds its n-gram lexicon from the corpus text, which "
            "shards do not hold: give the corpus's lexicon as mask.lexicon=FILE"
        )
    return shards.dataset(partial(row_sample, digest=torch.tensor(digest, dtype=torch.long)))


class LabelledTexts(Dataset):
    """Whole documents with an int label, one per item (for the linear probe and kNN)."""

    def __init__(self, rows: TokenRows, labels: list[int]) -> None:
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
    source = Path(path) if path else ensure_embedded_data(config.corpus.embedded) / "labelled.jsonl"
    file = check_data_path(source, ("*.jsonl",))[0]
    seq_len = config.corpus.seq_len
    cls, sep = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    digest = vocabulary_digest(tokenizer)
    sets = []
    for split in read_labelled(file, config.corpus.field):
        encodings = tokenizer.encode_batch([text for text, _ in split], add_special_tokens=False)
        chunks = [[cls, *encoding.ids[: seq_len - 2], sep] for encoding in encodings]
        rows = TokenRows.from_chunks(chunks, packing=False, seq_len=seq_len, digest=digest)
        sets.append(LabelledTexts(rows, [y for _, y in split]))
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
