"""wav2vec 2.0 span masking: random span starts, each hiding `span` consecutive frames.

In each utterance of L real frames, `int(start_prob * L + u)` starts (u uniform in [0, 1), so the
count is `start_prob * L` in expectation) are drawn without replacement among the L - span + 1
positions where a whole span fits, at least `min_spans` of them; spans may overlap. With
start_prob 0.065 and span 10 about half the frames end up hidden. This is the distribution of
`transformers`' `_compute_mask_indices(mask_prob=start_prob * span, mask_length=span)`, drawn from
an explicit torch generator instead of NumPy's global state.
"""

from __future__ import annotations

import torch
from omnimask.tokens import Tokens
from torch import Tensor, nn


def span_mask_row(
    length: int, start_prob: float, span: int, min_spans: int, generator: torch.Generator
) -> Tensor:
    """Bool mask `[length]` of one utterance. Clips shorter than a span get spans of
    `length - 1` frames, so something is hidden but never everything."""
    mask = torch.zeros(length, dtype=torch.bool)
    span = min(span, length - 1)
    if span < 1:
        return mask
    places = length - span + 1
    expected = start_prob * length + float(torch.rand((), generator=generator))
    count = min(max(int(expected), min_spans), places, length // span)
    starts = torch.randperm(places, generator=generator)[:count]
    offsets = starts.unsqueeze(1) + torch.arange(span)
    mask[offsets.flatten()] = True
    return mask


def span_mask(
    lengths: Tensor,
    num_tokens: int,
    start_prob: float,
    span: int,
    generator: torch.Generator,
    min_spans: int = 0,
) -> Tensor:
    """Bool mask `[B, num_tokens]` (True = hidden) for utterances of `lengths` real frames;
    padding frames (index >= length) are never hidden."""
    mask = torch.zeros(len(lengths), num_tokens, dtype=torch.bool)
    for row, length in enumerate(lengths.tolist()):
        mask[row, :length] = span_mask_row(length, start_prob, span, min_spans, generator)
    return mask


class SpanMasker(nn.Module):
    """The `Masker` of wav2vec 2.0 and w2v-BERT over the frames of `Tokens` (see `span_mask`)."""

    def __init__(self, start_prob: float, span: int, min_spans: int = 0) -> None:
        super().__init__()
        if not 0.0 < start_prob <= 1.0 or span < 1 or min_spans < 0:
            raise ValueError(
                f"need 0 < start_prob <= 1, span >= 1, min_spans >= 0; got {start_prob}, "
                f"{span}, {min_spans}"
            )
        self.start_prob = start_prob
        self.span = span
        self.min_spans = min_spans

    def extra_repr(self) -> str:
        return f"start_prob={self.start_prob}, span={self.span}, min_spans={self.min_spans}"

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        if tokens.padding is None:
            lengths = torch.full((tokens.batch_size,), tokens.num_tokens)
        else:
            lengths = (~tokens.padding).sum(1).cpu()
        return span_mask(
            lengths, tokens.num_tokens, self.start_prob, self.span, generator, self.min_spans
        )
