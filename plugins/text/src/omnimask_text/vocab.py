"""The WordPiece vocabulary: trained with Hugging Face `tokenizers` on the corpus, or loaded.

A trained tokenizer is cached as a `tokenizer.json` under the plugin's data folder, named by a
digest of the corpus files (path, size, modification time) and the vocabulary settings, and the
recipe pins that file in the run's config (`vocab.path`). Hugging Face's trainer is not
deterministic (frequency ties are broken in hash-map order, so a retrained vocabulary may number
or even choose a few tokens differently); hence the vocabulary's own digest travels with the
model (a buffer in its state dict), and a checkpoint resumed or evaluated with a different
vocabulary fails with a clear message instead of reading ids as other tokens.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from omnimask.config import ConfigError
from omnimask.data import default_data_dir
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece
from tokenizers.trainers import WordPieceTrainer

from omnimask_text.config import VocabConfig

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
#: special tokens, in id order for a trained vocabulary (ids 0..4).
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
CONTINUATION_PREFIX = "##"


class VocabularyError(ConfigError):
    """A tokenizer that cannot be used for this model (a user error: one line from the CLI)."""


def build_untrained(lowercase: bool) -> Tokenizer:
    """BERT's pipeline: normalise (lowercase, strip accents), split on whitespace/punctuation,
    WordPiece; `[CLS] text [SEP]` when encoding with special tokens."""
    tokenizer = Tokenizer(WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUATION_PREFIX))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    return tokenizer


def train_wordpiece(texts: Iterable[str], config: VocabConfig) -> Tokenizer:
    """WordPiece trained from an iterator of texts (`train_from_iterator`: the corpus is read
    once, never held in memory)."""
    tokenizer = build_untrained(config.lowercase)
    trainer = WordPieceTrainer(
        vocab_size=config.size,
        min_frequency=config.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls, sep = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls), (SEP, sep)],
    )
    return tokenizer


def corpus_key(files: Sequence[Path], config: VocabConfig, field: str) -> str:
    """Digest naming a trained tokenizer: same files (path, size, mtime) + settings -> same key."""
    parts = [
        f"{config.size}/{config.min_frequency}/{config.lowercase}/{config.train_bytes}/{field}"
    ]
    for file in files:
        stat = file.stat()
        parts.append(f"{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def cached_tokenizer_path(key: str) -> Path:
    return default_data_dir("text") / "tokenizers" / f"wordpiece-{key}.json"


def cached_lexicon_path(key: str) -> Path:
    return default_data_dir("text") / "lexicons" / f"ngrams-{key}.json"


def save_atomically(tokenizer: Tokenizer, path: Path) -> None:
    """Write to a temporary file and rename: concurrent processes never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    os.close(handle)
    tokenizer.save(temp)
    os.replace(temp, path)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """A tokenizer file, checked to have the special tokens MLM needs."""
    path = Path(path)
    if not path.is_file():
        raise VocabularyError(f"tokenizer file {path} does not exist")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises its own exception type for bad files
        raise VocabularyError(f"{path} is not a Hugging Face tokenizer.json ({error})") from None
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        raise VocabularyError(f"tokenizer {path} lacks the special tokens {', '.join(missing)}")
    return tokenizer


def vocabulary_digest(tokenizer: Tokenizer) -> int:
    """A 62-bit digest of the token -> id table (fits an int64 buffer)."""
    table = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda item: item[1])
    text = "\n".join(f"{token}\t{index}" for token, index in table)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 2


def continuation_flags(tokenizer: Tokenizer) -> list[bool]:
    """Per id: is the token a WordPiece continuation (`##...`) of the word before it?"""
    flags = [False] * tokenizer.get_vocab_size()
    for token, index in tokenizer.get_vocab().items():
        flags[index] = token.startswith(CONTINUATION_PREFIX)
    return flags
