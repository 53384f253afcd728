"""2D-ALiBi: CROMA's only position signal, a distance penalty added to attention logits.

Because the bias is a function of patch coordinates and not a learned table, a model trained on
one chip size runs unchanged on any other: there is no position embedding to interpolate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def alibi_slopes(num_heads: int) -> Tensor:
    """Head-specific slopes `[H]`: the geometric sequence of ALiBi (Press et al., 2022).

    For a power of two `n` the slopes are `2^(-8/n)`, `2^(-16/n)`, ..., `2^(-8)`; other head
    counts take the power of two below and interleave the next one's odd-indexed slopes, as the
    ALiBi paper prescribes. CROMA (and torchgeo's port) use exactly these with 16 heads.
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be positive, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two(num_heads)
    else:
        lower = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: num_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_2d(query_positions: Tensor, key_positions: Tensor, slopes: Tensor) -> Tensor:
    """Additive attention bias `[B, H, Nq, Nk] = -slope_h * ||p_q - p_k||_2`.

    Args:
        query_positions: `[B, Nq, 2]` patch-grid coordinates (row, column) of the queries.
        key_positions: `[B, Nk, 2]` coordinates of the keys. With different query and key sets
            (radar queries attending to optical keys) this is CROMA's X-ALiBi.
        slopes: `[H]` from `alibi_slopes`.

    Distances are computed exactly (no matrix-product shortcut), so the bias equals its formula
    to float precision at any grid size.
    """
    distance = torch.cdist(
        query_positions.float(), key_positions.float(), compute_mode="donot_use_mm_for_euclid_dist"
    )
    return -slopes.to(distance.device).view(1, -1, 1, 1) * distance.unsqueeze(1)
