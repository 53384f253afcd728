"""TOKI, token interpolation (MambaMIM's "S6T"): what masked tokens become before decoding.

A Mamba encoder reads its tokens as one causal sequence, so MambaMIM does not fill the masked
positions of the deepest (state-space) level with one shared mask token; it fills them from the
states of the visible tokens around them. For a run of masked positions between visible tokens
s < t < e (raster order of the coarse grid):

    x~_t = (1 - alpha_t) x_s + alpha_t x_e,  alpha_t = (t - s) / (e - s)   (linear interpolation)
    m_s  = x_s,  m_t = a * m_{t-1} + (1 - a) * x~_t                          (a state-space pass)

with a learned per-channel decay a = sigmoid(theta) in (0, 1). Masked tokens before the first
visible one use x_e only, those after the last visible one x_s only.

Ours differs from the official code on purpose: it learns a full C x C transition matrix,
initialised at zero, and accumulates powers of it in a Python loop per sample and per run. A
diagonal decay is how Mamba's own state matrix is parameterised, keeps the interpolated states
within the convex hull of their neighbours (no blow-up with run length), reduces to plain linear
interpolation as theta -> -inf, and runs as a few batched tensor ops: a loop over the longest
masked run only (a handful of steps), vectorised across the batch, channels and runs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TokenInterpolation(nn.Module):
    def __init__(self, channels: int, initial_decay: float = 0.1) -> None:
        super().__init__()
        theta = torch.logit(torch.tensor(initial_decay))
        self.theta = nn.Parameter(theta.repeat(channels))

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens `[B, N, C]` (values at masked positions are ignored), mask `[B, N]` (True =
        masked) -> `[B, N, C]`: visible tokens unchanged, masked ones interpolated."""
        interpolated, offset = interpolate_neighbours(tokens, mask)
        decay = torch.sigmoid(self.theta)
        state = torch.where(mask.unsqueeze(-1), interpolated, tokens)
        for step in range(1, int(offset.max()) + 1 if mask.any() else 1):
            here = (offset == step).unsqueeze(-1)
            previous = torch.cat([state[:, :1], state[:, :-1]], dim=1)
            state = torch.where(here, decay * previous + (1 - decay) * interpolated, state)
        return state


def interpolate_neighbours(tokens: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(x~ `[B, N, C]`, offset `[B, N]`): the linear interpolation between the nearest visible
    tokens before and after each position, and how far each masked position is from the
    visible token before it (0 at visible positions and before the first visible one)."""
    batch, length = mask.shape
    index = torch.arange(length, device=mask.device).expand(batch, length)
    visible = ~mask
    before = torch.where(visible, index, torch.full_like(index, -1)).cummax(dim=1).values
    after = torch.where(visible, index, torch.full_like(index, length)).flip(1).cummin(dim=1)
    after = after.values.flip(1)
    has_before, has_after = before >= 0, after < length
    before_safe = torch.where(has_before, before, after).clamp(0, length - 1)
    after_safe = torch.where(has_after, after, before).clamp(0, length - 1)
    span = (after_safe - before_safe).clamp_min(1)
    alpha = ((index - before_safe).clamp_min(0) / span).clamp(0, 1).unsqueeze(-1).to(tokens.dtype)
    take = lambda where: torch.gather(tokens, 1, where.unsqueeze(-1).expand_as(tokens))  # noqa: E731
    interpolated = (1 - alpha) * take(before_safe) + alpha * take(after_safe)
    offset = torch.where(mask & has_before, index - before, torch.zeros_like(index))
    return interpolated, offset
