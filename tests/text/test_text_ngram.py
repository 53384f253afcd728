"""ERNIE-Gram's explicit n-gram MLM: the T-test lexicon against the formula computed by hand,
maximum matching on word boundaries, the masker's collapse of whole n-grams into one [MASK],
the compacted encoder input, the joint <token, n-gram> classifier against the exported
`BertForMaskedLM` head, the lexicon checks, and the conformance kit on the demo preset."""

from __future__ import annotations

import copy
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omnimask import Tokens
from omnimask.testing import CHECKS
from omnimask.testing.conformance import Subject
from omnimask.visualize import sample_batch
from omnimask_text.config import MaskConfig
from omnimask_text.lexicon import LexiconError, NgramLexicon, build_lexicon, t_statistics
from omnimask_text.masking import ExplicitNgramMasker, MLMMasker
from omnimask_text.models.build import SpecialIds
from omnimask_text.models.ngram import LexiconMismatchError, collapse_ngrams
from omnimask_text.vocab import continuation_flags, vocabulary_digest

# A toy vocabulary: 0 = [PAD], 1 = [CLS], 2 = [SEP], 3 = [MASK]; 4.. regular, 9 and 10 are
# WordPiece continuations ("##...").
VOCAB = 12
SPECIAL = np.zeros(VOCAB, dtype=bool)
SPECIAL[:4] = True
CONTINUATION = np.zeros(VOCAB, dtype=bool)
CONTINUATION[[9, 10]] = True


def test_t_statistic_matches_the_formula_computed_by_hand() -> None:
    rng = np.random.default_rng(0)
    chunks = []
    for _ in range(200):
        body = list(rng.integers(4, 9, size=rng.integers(3, 12)))  # words only, no ##
        if rng.random() < 0.5:
            body += [5, 6]  # a collocation
        chunks.append([1, *body, 2])
    stats = t_statistics(chunks, SPECIAL, CONTINUATION, max_n=3)
    regular = [t for c in chunks for t in c if not SPECIAL[t]]
    total = len(regular)
    unigram = Counter(regular)
    for n in (2, 3):
        counts = Counter(
            tuple(c[i : i + n])
            for c in chunks
            for i in range(len(c) - n + 1)
            if not SPECIAL[c[i : i + n]].any()
        )
        codes, observed, t = stats[n]
        assert len(codes) == len(counts)
        for code, count, value in zip(codes, observed, t):
            gram = tuple(int(code) // VOCAB ** (n - 1 - i) % VOCAB for i in range(n))
            assert counts[gram] == count
            expected = total * math.prod(unigram[x] / total for x in gram)
            assert value == pytest.approx((count - expected) / math.sqrt(count))
    lexicon = build_lexicon(chunks, SPECIAL, CONTINUATION, 7, size=3, min_count=5, max_n=3)
    assert lexicon.ngrams[0] == (5, 6)  # the planted collocation has the largest t


def test_counting_block_by_block_gives_the_counts_of_the_whole_corpus(monkeypatch) -> None:  # noqa: ANN001
    """The lexicon streams the token cache in blocks cut between chunks (bounded memory); the
    merged counts and t values equal those of the corpus counted at once."""
    from omnimask_text import lexicon as module

    rng = np.random.default_rng(1)
    chunks = [[1, *rng.integers(4, 11, size=rng.integers(2, 9)).tolist(), 2] for _ in range(300)]
    whole = t_statistics(chunks, SPECIAL, CONTINUATION, max_n=3)
    monkeypatch.setattr(module, "BLOCK_TOKENS", 17)  # many blocks, none splitting a chunk
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])])
    tokens = np.concatenate([np.asarray(c) for c in chunks])
    blocks = list(module.cached_blocks(tokens, offsets, 17))
    assert len(blocks) > 20 and np.concatenate(blocks).tolist() == tokens.tolist()
    assert all(block[0] == 1 and block[-1] == 2 for block in blocks)  # cut between chunks
    for parts in (blocks, chunks):
        streamed = t_statistics(parts, SPECIAL, CONTINUATION, max_n=3)
        for n, (codes, counts, t) in whole.items():
            np.testing.assert_array_equal(streamed[n][0], codes)
            np.testing.assert_array_equal(streamed[n][1], counts)
            np.testing.assert_allclose(streamed[n][2], t)


def test_ngrams_are_word_aligned_and_matched_longest_first() -> None:
    lexicon = NgramLexicon([(4, 5), (4, 5, 6), (7, 9), (5, 7)], VOCAB, 0)
    #          [CLS] 4  5  6  7  9  4  5  7  10 [SEP]
    ids = np.array([1, 4, 5, 6, 7, 9, 4, 5, 7, 10, 2])
    regular, word_start = ~SPECIAL[ids], ~CONTINUATION[ids]
    segments = lexicon.segment(ids, regular, word_start)
    found = {int(i): lexicon.ngrams[k] for i, k in enumerate(segments) if k >= 0}
    # (4 5 6) beats (4 5); "7 ##9" is a whole word; at 6 "4 5" is taken (then 7 starts the
    # word "7 ##10", which neither (5 7) nor anything else may split).
    assert found == {1: (4, 5, 6), 4: (7, 9), 6: (4, 5)}
    # Counting obeys the same rule: "5 ##9" (a word in two pieces) is a bigram, "##9 6" is not.
    codes = t_statistics([[1, 5, 9, 6, 2]], SPECIAL, CONTINUATION, max_n=2)[2][0]
    assert codes.tolist() == [5 * VOCAB + 9]


@pytest.fixture(scope="module")
def lexicon_masker(mlm_recipe) -> ExplicitNgramMasker:  # noqa: ANN001
    config = mlm_recipe.config("demo_ernie_gram")
    mlm_recipe.build_dataset(config)
    masker = mlm_recipe.text_parts(config)[1]
    assert isinstance(masker, ExplicitNgramMasker)
    return masker


def embedded_rows(mlm_recipe, count: int = 64) -> dict:  # noqa: ANN001
    config = mlm_recipe.config("demo_ernie_gram")
    return sample_batch(mlm_recipe, config, mlm_recipe.build_dataset(config), count)


def test_masker_collapses_whole_lexicon_ngrams(lexicon_masker, mlm_recipe) -> None:  # noqa: ANN001
    batch = embedded_rows(mlm_recipe)
    ids = batch["input_ids"]
    tokens = Tokens(values=ids, padding=batch["sequence_ids"] == 0)
    selected, corrupted, ngram_index, removed = lexicon_masker.corrupt(
        tokens, torch.Generator().manual_seed(0)
    )
    masker = lexicon_masker
    assert not (selected & masker.is_special[ids]).any()
    assert not (removed & ~selected).any()
    starts = (ngram_index >= 0).nonzero().tolist()
    assert len(starts) > 50  # the demo lexicon covers many of the corpus's n-grams
    covered = torch.zeros_like(selected)
    for row, first in starts:
        ngram = masker.lexicon.ngrams[int(ngram_index[row, first])]
        n = len(ngram)
        assert tuple(ids[row, first : first + n].tolist()) == ngram
        assert corrupted[row, first] == masker.mask_id
        assert removed[row, first + 1 : first + n].all() and not removed[row, first]
        # word-aligned: the n-gram starts a word and the next token starts another
        assert not masker.is_continuation[ids[row, first]]
        assert not masker.is_continuation[ids[row, first + n]]
        covered[row, first : first + n] = True
    assert torch.equal(removed, covered & ~(ngram_index >= 0))
    # outside n-grams: whole words with 80/10/10, never split
    words = selected & ~covered
    continuation = masker.is_continuation[ids]
    previous = torch.zeros_like(words)
    previous[:, 1:] = words[:, :-1]
    assert not (continuation & (words != previous) & ~masker.is_special[ids]).any()
    ratio = selected.sum(1).float() / (~masker.is_special[ids] & ~tokens.padding).sum(1)
    assert ratio.mean() == pytest.approx(0.15, abs=0.02)


def test_collapse_drops_the_removed_tokens_and_keeps_positions() -> None:
    ids = torch.tensor([[1, 4, 5, 6, 7, 2], [1, 4, 2, 1, 8, 2]])
    sequence_ids = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 2]])
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]]).unsqueeze(-1)
    tokens = Tokens(
        values=ids,
        positions=positions,
        padding=sequence_ids == 0,
        extras={"sequence_ids": sequence_ids},
    )
    keep = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 1, 1, 1, 0, 1]], dtype=torch.bool)
    label = torch.arange(12).view(2, 6)
    collapsed, fields = collapse_ngrams(tokens, keep, 0, label=label)
    assert collapsed.values.tolist() == [[1, 4, 7, 2, 0], [1, 4, 2, 1, 2]]
    assert collapsed.positions[..., 0].tolist() == [[0, 1, 4, 5, 0], [0, 1, 2, 0, 2]]
    assert collapsed.padding.tolist() == [[False] * 4 + [True], [False] * 5]
    assert collapsed.extras["sequence_ids"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 2, 2]]
    assert fields["label"][:, :4].tolist() == [[0, 1, 4, 5], [6, 7, 8, 9]]


@pytest.fixture(scope="module")
def ngram_model(mlm_recipe):  # noqa: ANN001, ANN201
    config = mlm_recipe.config("demo_ernie_gram")
    config.model.hidden, config.model.layers, config.model.intermediate = 32, 1, 64
    mlm_recipe.build_dataset(config)
    torch.manual_seed(0)
    return mlm_recipe, config, mlm_recipe.build_model(config).eval()


def test_joint_head_extends_the_exported_mlm_head(ngram_model) -> None:  # noqa: ANN001
    recipe, config, model = ngram_model
    from omnimask_text.export import assemble_mlm

    hidden = torch.randn(7, config.model.hidden)
    joint = model.decoder.logits(hidden)
    vocab_size = model.target.vocab_size
    mlm = assemble_mlm(model)
    assert joint.shape == (7, vocab_size + len(model.masker.lexicon))
    torch.testing.assert_close(joint[:, :vocab_size], mlm.cls(hidden))


def test_loss_is_cross_entropy_over_tokens_and_ngrams(ngram_model) -> None:  # noqa: ANN001
    recipe, config, model = ngram_model
    batch = embedded_rows(recipe, 8)
    with torch.no_grad():
        output = model.predict(batch, torch.Generator().manual_seed(3))
    vocab_size = model.target.vocab_size
    labels = output.target[output.mask]
    assert (labels >= vocab_size).any() and (labels < vocab_size).any()
    expected = F.cross_entropy(output.prediction, labels)
    torch.testing.assert_close(output.losses["loss"], expected)
    # each n-gram label names the n-gram whose tokens were collapsed into that [MASK]
    tokens = model.tokenizer(batch)
    _, _, ngram_index, removed = model.draw_corruption(
        tokens, batch, torch.Generator().manual_seed(3)
    )
    assert output.tokens.values.shape[1] == int((~removed).sum(1).max())
    assert sorted(labels[labels >= vocab_size].tolist()) == sorted(
        (ngram_index[ngram_index >= 0] + vocab_size).tolist()
    )


def test_lexicon_mismatches_fail_clearly(ngram_model, tmp_path, embedded_tokenizer) -> None:  # noqa: ANN001
    recipe, config, model = ngram_model
    other = copy.deepcopy(config)
    other.mask.lexicon_size = 500
    other.mask.lexicon = None
    recipe.build_dataset(other)
    smaller = recipe.build_model(other)
    with pytest.raises(LexiconMismatchError, match="another n-gram lexicon"):
        smaller.load_state_dict(model.state_dict())
    foreign = NgramLexicon([(5, 6)], embedded_tokenizer.get_vocab_size(), 12345)
    foreign.save(tmp_path / "foreign.json")
    with pytest.raises(LexiconError, match="another vocabulary"):
        NgramLexicon.load(
            tmp_path / "foreign.json",
            embedded_tokenizer.get_vocab_size(),
            vocabulary_digest(embedded_tokenizer),
        )
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LexiconError, match="bad.json"):
        NgramLexicon.load(tmp_path / "bad.json", 1, 1)


def test_plain_masker_refuses_the_explicit_strategy(embedded_tokenizer) -> None:  # noqa: ANN001
    special = SpecialIds.of(embedded_tokenizer)
    with pytest.raises(ValueError, match="ExplicitNgramMasker"):
        MLMMasker(
            MaskConfig(strategy="explicit_ngram"),
            special.all(),
            special.mask,
            continuation_flags(embedded_tokenizer),
        )


@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
def test_conformance_of_the_explicit_ngram_demo(mlm_recipe, check) -> None:  # noqa: ANN001
    config = mlm_recipe.config("demo_ernie_gram")
    config.train.batch_size = 4
    batch = sample_batch(mlm_recipe, config, mlm_recipe.build_dataset(config), 4)
    check(Subject("text/mlm", mlm_recipe, config, batch))
