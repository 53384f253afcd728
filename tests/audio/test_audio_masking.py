"""Span masking against transformers' wav2vec 2.0 mask computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omnimask import Tokens
from omnimask_audio.masking import SpanMasker, span_mask
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices

DRAWS = 1000


@pytest.mark.parametrize(
    ("length", "start_prob", "span"), [(60, 0.065, 10), (200, 0.065, 10), (50, 0.04, 5)]
)
def test_audio_span_mask_matches_transformers_statistics(
    length: int, start_prob: float, span: int
) -> None:
    """Mean masked fraction and mean number of masked runs over many draws agree with
    `_compute_mask_indices(mask_prob=start_prob * span, mask_length=span, min_masks=2)`."""
    np.random.seed(0)
    theirs = np.stack(
        [
            _compute_mask_indices((1, length), start_prob * span, span, min_masks=2)[0]
            for _ in range(DRAWS)
        ]
    )
    generator = torch.Generator().manual_seed(0)
    ours = span_mask(torch.full((DRAWS,), length), length, start_prob, span, generator, 2).numpy()
    for name, statistic in (("masked fraction", lambda m: m.mean(1)), ("runs", runs)):
        a, b = statistic(ours), statistic(theirs)
        standard_error = np.sqrt(a.var() / DRAWS + b.var() / DRAWS)
        assert abs(a.mean() - b.mean()) < 4 * standard_error + 1e-3, (name, a.mean(), b.mean())


def runs(mask: np.ndarray) -> np.ndarray:
    """Number of maximal runs of hidden frames per row."""
    starts = mask & ~np.concatenate([np.zeros((len(mask), 1), bool), mask[:, :-1]], axis=1)
    return starts.sum(1)


def test_audio_span_masker_respects_padding_and_seed() -> None:
    padding = torch.zeros(3, 80, dtype=torch.bool)
    padding[0, 30:] = True
    padding[1, 5:] = True  # shorter than one span
    tokens = Tokens(values=torch.zeros(3, 80, 8), grid=(80,), padding=padding)
    masker = SpanMasker(0.065, 10, min_spans=2)
    mask = masker(tokens, torch.Generator().manual_seed(1))
    assert mask.dtype == torch.bool and mask.shape == (3, 80)
    assert not (mask & padding).any()
    assert 0 < mask[1].sum() < 5  # something hidden, never the whole clip
    assert torch.equal(mask, masker(tokens, torch.Generator().manual_seed(1)))
    assert not torch.equal(mask, masker(tokens, torch.Generator().manual_seed(2)))
    # Every run of hidden frames is at least one span long where the clip allows it.
    assert runs(mask[2:].numpy()).item() >= 1 and mask[2].sum() >= 10
