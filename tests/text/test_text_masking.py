"""Maskers against trusted references: transformers' DataCollatorForLanguageModeling (80/10/10
statistics over 1e6 tokens), WordPiece word boundaries (whole-word and span masking never split
a word), and the SpanBERT / n-gram length laws."""

from __future__ import annotations

import math

import pytest
import torch
from omnimask import Tokens
from omnimask_text.config import MaskConfig
from omnimask_text.masking import (
    MLMMasker,
    geometric_span_weights,
    ngram_weights,
    select_units,
    selection_budget,
)
from omnimask_text.models.build import SpecialIds
from omnimask_text.vocab import continuation_flags
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast

ROWS, LENGTH = 1000, 1000  # 1e6 tokens
Z = 4.0  # two-sided z for the binomial intervals (false alarm ~6e-5 per comparison)


def masker_for(tokenizer, **mask) -> MLMMasker:  # noqa: ANN001
    special = SpecialIds.of(tokenizer)
    return MLMMasker(MaskConfig(**mask), special.all(), special.mask, continuation_flags(tokenizer))


def synthetic_rows(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """Random regular ids framed by [CLS] ... [SEP], the odd rows padded over their last 30%."""
    special = SpecialIds.of(tokenizer)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(
        len(special.all()), tokenizer.get_vocab_size(), (ROWS, LENGTH), generator=generator
    )
    ids[:, 0] = special.cls
    ids[:, -1] = special.sep
    padding = torch.zeros(ROWS, LENGTH, dtype=torch.bool)
    padding[1::2, int(0.7 * LENGTH) :] = True
    ids[padding] = special.pad
    return ids, padding


def within(count: int, total: int, p: float) -> bool:
    return abs(count - total * p) <= Z * math.sqrt(total * p * (1 - p))


def outcome_counts(original, corrupted, selected, mask_id) -> dict[str, int]:  # noqa: ANN001
    masked = selected & (corrupted == mask_id)
    replaced = selected & (corrupted != mask_id) & (corrupted != original)
    return {
        "selected": int(selected.sum()),
        "mask": int(masked.sum()),
        "random": int(replaced.sum()),
        "kept": int((selected & (corrupted == original)).sum()),
    }


def test_bert_80_10_10_matches_transformers_collator(embedded_tokenizer) -> None:
    ids, padding = synthetic_rows(embedded_tokenizer)
    special = SpecialIds.of(embedded_tokenizer)
    is_special = torch.isin(ids, torch.tensor(special.all()))
    eligible = int((~is_special).sum())

    masker = masker_for(embedded_tokenizer)
    tokens = Tokens(values=ids, padding=padding)
    selected, corrupted = masker.corrupt(tokens, torch.Generator().manual_seed(1))
    ours = outcome_counts(ids, corrupted, selected, special.mask)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=embedded_tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    collator = DataCollatorForLanguageModeling(fast, mlm_probability=0.15, seed=1)
    hf_inputs, labels = collator.torch_mask_tokens(
        ids.clone(), special_tokens_mask=is_special.long()
    )
    theirs = outcome_counts(ids, hf_inputs, labels != -100, special.mask)

    assert not (selected & is_special).any(), "a special or padding token was selected"
    assert torch.equal(corrupted[is_special], ids[is_special]), "a special token was changed"
    assert not ((labels != -100) & is_special).any()
    for counts in (ours, theirs):
        assert within(counts["selected"], eligible, 0.15), counts
        assert within(counts["mask"], counts["selected"], 0.8), counts
        assert within(counts["random"], counts["selected"], 0.1), counts
        assert within(counts["kept"], counts["selected"], 0.1), counts
    # and the two agree with each other (two-proportion z-test on each outcome)
    for key in ("mask", "random", "kept"):
        p1, n1 = ours[key] / ours["selected"], ours["selected"]
        p2, n2 = theirs[key] / theirs["selected"], theirs["selected"]
        pooled = (ours[key] + theirs[key]) / (n1 + n2)
        sigma = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        assert abs(p1 - p2) <= Z * sigma, (key, ours, theirs)


def words_of(ids: torch.Tensor, flags: torch.Tensor, special: torch.Tensor) -> list[list[int]]:
    """Positions of each word of a row: a non-special token plus its `##` continuations."""
    words: list[list[int]] = []
    for position, token in enumerate(ids.tolist()):
        if special[token]:
            continue
        if flags[token] and words and words[-1][-1] == position - 1:
            words[-1].append(position)
        else:
            words.append([position])
    return words


@pytest.fixture(scope="module")
def text_rows(embedded_tokenizer, mlm_recipe):  # noqa: ANN001, ANN201
    """Packed rows of real stdlib docs: plenty of `##` continuations."""
    from omnimask_text.corpus import ensure_embedded_data, read_corpus
    from omnimask_text.dataset import build_rows, collate_rows

    docs = read_corpus(ensure_embedded_data() / "corpus", "text")[:400]
    config = mlm_recipe.config("demo")
    rows = build_rows(config, embedded_tokenizer, [d.text for d in docs])
    batch = collate_rows([rows[i] for i in range(len(rows))])
    return batch["input_ids"], batch["sequence_ids"] == 0


@pytest.mark.parametrize("strategy", ["whole_word", "span", "ngram"])
def test_word_level_masking_never_splits_a_word(strategy, embedded_tokenizer, text_rows) -> None:  # noqa: ANN001
    ids, padding = text_rows
    masker = masker_for(embedded_tokenizer, strategy=strategy)
    selected = masker(Tokens(values=ids, padding=padding), torch.Generator().manual_seed(3))
    flags = torch.tensor(continuation_flags(embedded_tokenizer))
    special = masker.is_special
    multi_piece_words = masked_words = 0
    for row in range(ids.shape[0]):
        for word in words_of(ids[row], flags, special):
            states = selected[row, word]
            assert bool(states.all()) or not bool(states.any()), (
                f"{strategy} split a word at row {row}, positions {word}"
            )
            multi_piece_words += len(word) > 1
            masked_words += bool(states.all())
    assert multi_piece_words > 100 and masked_words > 100  # the test saw real WordPiece words
    eligible = (~special[ids] & ~padding).sum()
    ratio = float(selected.sum() / eligible)
    assert 0.12 < ratio < 0.2, f"{strategy} masked {ratio:.3f} of the tokens, wanted ~0.15"


def test_token_selection_hits_the_budget_exactly_and_is_seeded() -> None:
    generator = torch.Generator().manual_seed(0)
    eligible = torch.rand(64, 50, generator=generator) > 0.2
    budget = selection_budget(eligible, 0.3)
    chosen = select_units(
        eligible, torch.ones_like(eligible), budget, torch.Generator().manual_seed(5)
    )
    assert torch.equal(chosen.sum(1), budget)
    assert not (chosen & ~eligible).any()
    again = select_units(
        eligible, torch.ones_like(eligible), budget, torch.Generator().manual_seed(5)
    )
    assert torch.equal(chosen, again)


def test_span_and_ngram_length_laws() -> None:
    weights = geometric_span_weights(0.2, 10)
    probabilities = weights / weights.sum()
    expected = torch.tensor([0.2 * 0.8**k for k in range(10)], dtype=torch.float64)
    torch.testing.assert_close(probabilities, expected / expected.sum())
    # SpanBERT reports a mean span length of 3.8 words for p=0.2 clipped at 10
    mean = float((probabilities * torch.arange(1, 11)).sum())
    assert abs(mean - 3.8) < 0.05
    torch.testing.assert_close(
        ngram_weights(3), torch.tensor([1, 1 / 2, 1 / 3], dtype=torch.float64)
    )
