"""ERNIE-Gram's n-gram lexicon: the corpus's most strongly associated n-grams, found by a T-test.

An n-gram `w = (x_1 .. x_n)` of token ids enters the lexicon when it occurs far more often than
its tokens would together by chance. ERNIE-Gram's statistic, under the null hypothesis that
the tokens are independent (expected rate `mu = prod p(x_i)`, observed rate `p(w) = c(w) / N`,
variance of a rare event ~ `p(w)`):

    t(w) = (p(w) - mu) / sqrt(p(w) / N) = (c(w) - N prod p(x_i)) / sqrt(c(w))

The lexicon keeps the `size` n-grams (n = 2 .. max_n) with the largest `t` among those seen at
least `min_count` times. N-grams are counted inside documents, never over special tokens, and
only on word boundaries (an n-gram starts a word and the token after it starts the next one),
so collapsing one into a single [MASK] never splits a WordPiece word. A frequent word cut into
several pieces (`con ##text`) is itself a word-aligned n-gram and may enter the lexicon.

N-grams are coded as integers (`sum x_i V^(n-i)`), so counting and lookup are NumPy `unique`
and `searchsorted` over arrays instead of Python dictionaries of tuples.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class LexiconError(ValueError):
    """A lexicon file that cannot be used with this vocabulary."""


def ngram_codes(ids: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """Integer code of the n-gram starting at every position `[len(ids) - n + 1]`."""
    codes = np.zeros(len(ids) - n + 1, dtype=np.int64)
    for offset in range(n):
        codes = codes * vocab_size + ids[offset : len(ids) - n + 1 + offset]
    return codes


def word_aligned_starts(regular: np.ndarray, starts_word: np.ndarray, n: int) -> np.ndarray:
    """Bool `[len - n + 1]`: the n tokens from here are regular, the first begins a word and the
    token after the last (if any) begins another (or is special)."""
    length = len(regular) - n + 1
    ok = starts_word[:length].copy()
    for offset in range(n):
        ok &= regular[offset : offset + length]
    after = np.ones(length, dtype=bool)
    after[: length - 1] = starts_word[n : n + length - 1] | ~regular[n : n + length - 1]
    return ok & after


@dataclass
class NgramLexicon:
    """The n-grams (`ngrams[k]` = token ids of n-gram k, k = 0 .. size-1) and fast lookup."""

    ngrams: list[tuple[int, ...]]
    vocab_size: int
    vocab_digest: int

    def __post_init__(self) -> None:
        self.max_n = max((len(g) for g in self.ngrams), default=1)
        self._lookup: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for n in range(2, self.max_n + 1):
            index = np.array([k for k, g in enumerate(self.ngrams) if len(g) == n], np.int64)
            grams = np.array([self.ngrams[k] for k in index], np.int64).reshape(-1, n)
            codes = grams @ (self.vocab_size ** np.arange(n - 1, -1, -1, dtype=np.int64))
            order = np.argsort(codes)
            self._lookup[n] = (codes[order], index[order])

    def __len__(self) -> int:
        return len(self.ngrams)

    def match(self, ids: np.ndarray, n: int) -> np.ndarray:
        """Lexicon index of the n-gram starting at each position (-1 = none) `[len(ids)]`."""
        found = np.full(len(ids), -1, dtype=np.int64)
        codes_sorted, index = self._lookup.get(n, (np.empty(0, np.int64),) * 2)
        if len(ids) < n or not len(codes_sorted):
            return found
        codes = ngram_codes(ids, n, self.vocab_size)
        at = np.searchsorted(codes_sorted, codes).clip(max=len(codes_sorted) - 1)
        hit = codes_sorted[at] == codes
        found[: len(codes)] = np.where(hit, index[at], -1)
        return found

    def segment(self, ids: np.ndarray, regular: np.ndarray, starts_word: np.ndarray) -> np.ndarray:
        """Maximum matching, left to right: at each word start take the longest word-aligned
        lexicon n-gram. Returns the lexicon index at each matched n-gram's first token and -1
        elsewhere `[len(ids)]`; the n-gram's length is `len(ngrams[k])`."""
        candidates = {}
        for n in range(self.max_n, 1, -1):
            aligned = np.zeros(len(ids), dtype=bool)
            if len(ids) >= n:
                aligned[: len(ids) - n + 1] = word_aligned_starts(regular, starts_word, n)
            candidates[n] = np.where(aligned, self.match(ids, n), -1)
        result = np.full(len(ids), -1, dtype=np.int64)
        position = 0
        while position < len(ids):
            step = 1
            for n in range(self.max_n, 1, -1):
                if candidates[n][position] >= 0:
                    result[position] = candidates[n][position]
                    step = n
                    break
            position += step
        return result

    def save(self, path: Path) -> None:
        """Atomically (temporary file + rename): concurrent runs never read half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "vocab_size": self.vocab_size,
            "vocab_digest": self.vocab_digest,
            "ngrams": [list(g) for g in self.ngrams],
        }
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(handle, "w") as file:
            json.dump(payload, file)
        os.replace(temp, path)

    @classmethod
    def load(cls, path: Path, vocab_size: int, vocab_digest: int) -> NgramLexicon:
        """Read a lexicon, refusing one made for another vocabulary (its ids would be wrong)."""
        try:
            payload = json.loads(Path(path).read_text())
            ngrams = [tuple(int(i) for i in g) for g in payload["ngrams"]]
            lexicon = cls(ngrams, int(payload["vocab_size"]), int(payload["vocab_digest"]))
        except FileNotFoundError:
            raise LexiconError(f"n-gram lexicon {path} does not exist") from None
        except (ValueError, KeyError, TypeError) as error:
            raise LexiconError(f"{path} is not an n-gram lexicon file ({error!r})") from None
        if lexicon.vocab_digest != vocab_digest or lexicon.vocab_size != vocab_size:
            raise LexiconError(
                f"n-gram lexicon {path} was built for another vocabulary (digest "
                f"{lexicon.vocab_digest}, {lexicon.vocab_size} tokens) than the current one "
                f"(digest {vocab_digest}, {vocab_size} tokens); set mask.lexicon to null to "
                "rebuild it from the corpus"
            )
        return lexicon


#: tokens counted at a time: memory follows the number of distinct n-grams, not the corpus
BLOCK_TOKENS = 1 << 22


def token_blocks(chunks: Iterable[Sequence[int]], size: int = BLOCK_TOKENS) -> Iterator[np.ndarray]:
    """Consecutive chunks joined into arrays of at least `size` tokens (the last may be short);
    never cut inside a chunk, so no n-gram is lost at a block's edge."""
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        pending.append(np.asarray(chunk, dtype=np.int64))
        held += len(pending[-1])
        if held >= size:
            yield np.concatenate(pending)
            pending, held = [], 0
    if pending:
        yield np.concatenate(pending)


def cached_blocks(
    tokens: np.ndarray, offsets: np.ndarray, size: int = BLOCK_TOKENS
) -> Iterator[np.ndarray]:
    """A token cache's tokens (memory-mapped) in blocks of about `size`, cut between chunks
    (`offsets` are the chunks' starts and the end)."""
    cuts = np.unique(np.searchsorted(offsets, np.arange(0, offsets[-1], size), "left"))
    bounds = [int(offsets[c]) for c in cuts] + [int(offsets[-1])]
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            yield np.asarray(tokens[start:end], dtype=np.int64)


def merge_counts(
    codes: np.ndarray, counts: np.ndarray, more_codes: np.ndarray, more_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two (sorted distinct codes, counts) tables as one."""
    merged, inverse = np.unique(np.concatenate([codes, more_codes]), return_inverse=True)
    total = np.bincount(inverse, weights=np.concatenate([counts, more_counts]))
    return merged, total.astype(np.int64)


def t_statistics(
    chunks: Iterable[Sequence[int]],
    is_special: np.ndarray,
    is_continuation: np.ndarray,
    max_n: int,
) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per n: (codes, counts, t) of every word-aligned n-gram of the chunks.

    Counted block by block (`token_blocks`) and merged, so a corpus streamed from the token
    cache is never held whole; t is computed at the end, from the whole corpus's unigrams."""
    vocab_size = len(is_special)
    unigram_counts = np.zeros(vocab_size, dtype=np.int64)
    empty = np.empty(0, dtype=np.int64)
    tables = {n: (empty, empty) for n in range(2, max_n + 1)}
    for ids in token_blocks(chunks):
        # Chunks are framed by [CLS] ... [SEP], so a special token separates every pair of
        # them and no regular n-gram spans two documents.
        regular = ~is_special[ids]
        starts_word = ~is_continuation[ids]
        unigram_counts += np.bincount(ids[regular], minlength=vocab_size)
        for n in tables:
            if len(ids) < n:
                continue
            valid = word_aligned_starts(regular, starts_word, n)
            codes, counts = np.unique(ngram_codes(ids, n, vocab_size)[valid], return_counts=True)
            tables[n] = merge_counts(*tables[n], codes, counts)
    total = max(int(unigram_counts.sum()), 1)
    unigram = unigram_counts / total
    stats = {}
    for n, (codes, counts) in tables.items():
        if not len(codes):
            continue
        expected = np.ones(len(codes))
        rest = codes.copy()
        for _ in range(n):
            expected *= unigram[rest % vocab_size]
            rest //= vocab_size
        t = (counts - total * expected) / np.sqrt(counts)
        stats[n] = (codes, counts, t)
    return stats


def ngram_of_code(code: int, n: int, vocab_size: int) -> tuple[int, ...]:
    ids = []
    for _ in range(n):
        ids.append(int(code % vocab_size))
        code //= vocab_size
    return tuple(reversed(ids))


def build_lexicon(
    chunks: Iterable[Sequence[int]],
    is_special: np.ndarray,
    is_continuation: np.ndarray,
    vocab_digest: int,
    size: int,
    min_count: int,
    max_n: int,
) -> NgramLexicon:
    """The `size` word-aligned n-grams (2 <= n <= max_n, count >= min_count) of largest t."""
    candidates = []
    for n, (codes, counts, t) in t_statistics(chunks, is_special, is_continuation, max_n).items():
        keep = counts >= min_count
        candidates += [(float(s), n, int(c)) for s, c in zip(t[keep], codes[keep])]
    # Ties broken by (n, code) so the same corpus always gives the same lexicon.
    candidates.sort(key=lambda item: (-item[0], item[1], item[2]))
    vocab_size = len(is_special)
    ngrams = [ngram_of_code(code, n, vocab_size) for _, n, code in candidates[:size]]
    return NgramLexicon(ngrams, vocab_size, vocab_digest)
