"""Which tokens MLM predicts, and how they are corrupted: BERT, whole-word, SpanBERT, n-gram
(contiguous, and ERNIE-Gram's explicit n-grams).

Selection works on *units*: single tokens (BERT), whole words (a token plus its `##`
continuations), or runs of whole words (SpanBERT spans, ERNIE-Gram n-grams). Units are picked in
random order until `round(ratio * real tokens)` tokens (at least one) are covered; special and
padding tokens are never picked, and a word is never split. Each selected token is then replaced
by [MASK] (80%), a random regular token (10%) or kept (10%), as in BERT; the model predicts the
original token at every selected position. All randomness comes from the passed generator.

ERNIE-Gram's explicit strategy (`explicit_ngram`) differs in kind: the units are the n-grams of
a lexicon (`lexicon.py`, found by maximum matching) and the remaining whole words; a selected
n-gram is collapsed into ONE [MASK] (its other tokens are removed from the input) and the model
predicts the n-gram's identity, while selected words get BERT's 80/10/10 and are predicted
token by token.

The core's `random_mask` picks a fixed count over *all* tokens of a row; MLM needs counts over the
eligible tokens only and whole-unit selection, hence these functions.
"""

from __future__ import annotations

import numpy as np
import torch
from omnimask import Tokens
from torch import Tensor, nn

from omnimask_text.config import MaskConfig
from omnimask_text.lexicon import NgramLexicon

STRATEGIES = ("token", "whole_word", "span", "ngram", "explicit_ngram")


def selection_budget(eligible: Tensor, ratio: float) -> Tensor:
    """Tokens to select per row `[B]`: `round(ratio * eligible)`, at least 1 (BERT's rule)."""
    count = eligible.sum(1)
    return torch.where(count > 0, (count * ratio).round().clamp_min(1), 0).long()


def unit_starts(eligible: Tensor, continuation: Tensor) -> Tensor:
    """Bool `[B, N]`: where a unit (word) begins. A continuation token joins the word before
    it; eligibility changes (a special token, padding) always start a new unit."""
    previous_eligible = torch.ones_like(eligible)
    previous_eligible[:, 1:] = eligible[:, :-1]
    starts = ~continuation | ~eligible | ~previous_eligible
    starts[:, 0] = True
    return starts


def select_units(
    eligible: Tensor, starts: Tensor, budget: Tensor, generator: torch.Generator
) -> Tensor:
    """Whole units in random order while they fit `budget` `[B]`; bool `[B, N]`. Vectorised.

    Every token takes its unit's random key; a stable sort of the keys lays each unit's tokens
    out together, and a unit is chosen when the running token count at its last token is
    within the budget (so units are chosen in key order until the first that overflows).
    """
    batch, length = eligible.shape
    positions = torch.arange(length).expand(batch, length)
    noise = torch.rand(batch, length, generator=generator)
    start_of = torch.where(starts, positions, 0).cummax(1).values
    key = noise.gather(1, start_of).masked_fill(~eligible, 2.0)
    order = torch.sort(key, dim=1, stable=True).indices
    running = eligible.gather(1, order).long().cumsum(1)
    taken = torch.empty_like(running).scatter_(1, order, running)
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    end_of = torch.where(ends, positions, length).flip(1).cummin(1).values.flip(1)
    return eligible & (taken.gather(1, end_of) <= budget.unsqueeze(1))


def select_spans(
    eligible: Tensor,
    starts: Tensor,
    budget: Tensor,
    length_weights: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Runs of whole words (SpanBERT / n-gram masking); bool `[B, N]`.

    Per row, until the budget is spent: draw a length L (in words) from `length_weights`
    (index i = length i + 1), a uniformly random first word, and select those L words. Spans
    are whole, so the last one may overshoot the budget by less than one span.
    """
    rows = []
    for row in range(eligible.shape[0]):
        word_start = starts[row] & eligible[row]
        word_of = word_start.long().cumsum(0) - 1
        num_words = int(word_start.sum())
        word_sizes = torch.bincount(word_of[eligible[row]], minlength=num_words)
        chosen = torch.zeros(num_words, dtype=torch.bool)
        covered, target = 0, int(budget[row])
        while covered < target and not bool(chosen.all()):
            span = int(torch.multinomial(length_weights, 1, generator=generator)) + 1
            first = int(torch.randint(num_words, (1,), generator=generator))
            words = slice(first, min(first + span, num_words))
            covered += int(word_sizes[words][~chosen[words]].sum())
            chosen[words] = True
        row_mask = torch.zeros_like(eligible[row])
        if num_words:
            row_mask = eligible[row] & chosen[word_of.clamp_min(0)]
        rows.append(row_mask)
    return torch.stack(rows)


def geometric_span_weights(p: float, max_length: int) -> Tensor:
    """SpanBERT: P(L) ∝ p (1-p)^(L-1) for L = 1..max_length (geometric, clipped)."""
    lengths = torch.arange(1, max_length + 1, dtype=torch.float64)
    return p * (1 - p) ** (lengths - 1)


def ngram_weights(max_n: int) -> Tensor:
    """ERNIE-Gram / MacBERT: n-gram length n in 1..max_n with P(n) ∝ 1/n."""
    return 1.0 / torch.arange(1, max_n + 1, dtype=torch.float64)


class MLMMasker(nn.Module):
    """Selects the tokens to predict and corrupts them (80/10/10). `forward` gives the mask;
    `corrupt` gives the mask and the corrupted input ids from the same draws."""

    def __init__(
        self, config: MaskConfig, special_ids: list[int], mask_id: int, continuation: list[bool]
    ) -> None:
        super().__init__()
        if config.strategy not in STRATEGIES:
            raise ValueError(f"mask.strategy must be one of {STRATEGIES}, got {config.strategy!r}")
        if not 0.0 < config.ratio <= 1.0:
            raise ValueError(f"mask.ratio must be in (0, 1], got {config.ratio}")
        if (
            config.mask_prob < 0
            or config.random_prob < 0
            or config.mask_prob + config.random_prob > 1
        ):
            raise ValueError("mask.mask_prob and mask.random_prob must be >= 0 and sum to <= 1")
        if config.strategy == "explicit_ngram" and not isinstance(self, ExplicitNgramMasker):
            raise ValueError("mask.strategy 'explicit_ngram' needs an ExplicitNgramMasker")
        self.config = config
        self.mask_id = mask_id
        vocab_size = len(continuation)
        # Plain tensors, not buffers: masks are drawn on the CPU wherever the model lives.
        self.is_special = torch.zeros(vocab_size, dtype=torch.bool)
        self.is_special[special_ids] = True
        self.is_continuation = torch.tensor(continuation, dtype=torch.bool)
        self.regular_ids = (~self.is_special).nonzero().flatten()
        if config.strategy == "span":
            self.length_weights = geometric_span_weights(config.span_p, config.max_span)
        else:
            self.length_weights = ngram_weights(config.max_ngram)

    def extra_repr(self) -> str:
        c = self.config
        return f"strategy={c.strategy}, ratio={c.ratio}, mask/random={c.mask_prob}/{c.random_prob}"

    def select(self, ids: Tensor, padding: Tensor | None, generator: torch.Generator) -> Tensor:
        eligible = ~self.is_special[ids]
        if padding is not None:
            eligible &= ~padding
        budget = selection_budget(eligible, self.config.ratio)
        if self.config.strategy == "token":
            return select_units(eligible, torch.ones_like(eligible), budget, generator)
        starts = unit_starts(eligible, self.is_continuation[ids])
        if self.config.strategy == "whole_word":
            return select_units(eligible, starts, budget, generator)
        return select_spans(eligible, starts, budget, self.length_weights, generator)

    def replace(self, ids: Tensor, selected: Tensor, generator: torch.Generator) -> Tensor:
        """BERT's 80/10/10: selected ids -> [MASK], a random regular token, or unchanged."""
        draw = torch.rand(ids.shape, generator=generator)
        pick = torch.randint(len(self.regular_ids), ids.shape, generator=generator)
        to_mask = selected & (draw < self.config.mask_prob)
        to_random = selected & ~to_mask & (draw < self.config.mask_prob + self.config.random_prob)
        corrupted = torch.where(to_mask, self.mask_id, ids)
        return torch.where(to_random, self.regular_ids[pick], corrupted)

    def corrupt(self, tokens: Tokens, generator: torch.Generator) -> tuple[Tensor, ...]:
        """(selected `[B, N]` bool, corrupted ids `[B, N]`), both on the CPU."""
        ids = tokens.values.cpu()
        padding = tokens.padding.cpu() if tokens.padding is not None else None
        selected = self.select(ids, padding, generator)
        return selected, self.replace(ids, selected, generator)

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        return self.corrupt(tokens, generator)[0]


class ExplicitNgramMasker(MLMMasker):
    """ERNIE-Gram's explicitly n-gram masking.

    Units are the lexicon n-grams found by maximum matching plus the other whole words; they
    are picked in random order until `ratio` of the real tokens is covered (an n-gram counts
    its n tokens). `corrupt` returns `(selected, corrupted, ngram_index, removed)`:
    `ngram_index` is the lexicon index at the first token of each selected n-gram (-1
    elsewhere), where `corrupted` holds the one [MASK] that stands for the whole n-gram, and
    `removed` marks the n-gram's other tokens, which the model drops from its input. Selected
    words outside n-grams get BERT's 80/10/10.
    """

    def __init__(
        self,
        config: MaskConfig,
        special_ids: list[int],
        mask_id: int,
        continuation: list[bool],
        lexicon: NgramLexicon,
    ) -> None:
        super().__init__(config, special_ids, mask_id, continuation)
        self.lexicon = lexicon
        self.ngram_lengths = torch.tensor([len(g) for g in lexicon.ngrams] or [0])

    def extra_repr(self) -> str:
        lexicon = f"lexicon={len(self.lexicon)} n-grams (n <= {self.lexicon.max_n})"
        return f"{super().extra_repr()}, {lexicon}"

    def segment(self, ids: Tensor, eligible: Tensor) -> Tensor:
        """Lexicon index at the first token of every matched n-gram, -1 elsewhere `[B, N]`."""
        word_start = ~self.is_continuation[ids]
        rows = [
            self.lexicon.segment(row_ids.numpy(), row_eligible.numpy(), row_start.numpy())
            for row_ids, row_eligible, row_start in zip(ids, eligible, word_start)
        ]
        if not rows:
            return torch.empty(ids.shape, dtype=torch.long)
        return torch.from_numpy(np.stack(rows))

    def corrupt(self, tokens: Tokens, generator: torch.Generator) -> tuple[Tensor, ...]:
        ids = tokens.values.cpu()
        eligible = ~self.is_special[ids]
        if tokens.padding is not None:
            eligible &= ~tokens.padding.cpu()
        ngram_at = self.segment(ids, eligible)
        first = ngram_at >= 0
        length_at = torch.where(first, self.ngram_lengths[ngram_at.clamp_min(0)], 0)
        inside = torch.zeros_like(first)  # an n-gram's tokens after its first
        for offset in range(1, self.lexicon.max_n):
            inside[:, offset:] |= length_at[:, :-offset] > offset
        starts = unit_starts(eligible, self.is_continuation[ids]) & ~inside
        budget = selection_budget(eligible, self.config.ratio)
        selected = select_units(eligible, starts, budget, generator)
        collapsed = selected & first
        corrupted = self.replace(ids, selected & ~first & ~inside, generator)
        corrupted = torch.where(collapsed, self.mask_id, corrupted)
        ngram_index = torch.where(collapsed, ngram_at, -1)
        return selected, corrupted, ngram_index, selected & inside
