"""Selecting patch rows by mask, for encoders that see visible patches only.

These wrap the core's gather helpers (`omnimask.gather`) with the one layout this plugin uses.
"""

from __future__ import annotations

import torch
from torch import Tensor


def split_visible_masked(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(visible indices `[B, V]`, masked indices `[B, M]`), ascending, for masks hiding the same
    number of patches in every row."""
    counts = mask.sum(1)
    if not bool((counts == counts[0]).all()):
        raise ValueError(f"masks must hide the same number of patches per row, got {counts.tolist()}")
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    hidden = int(counts[0])
    return order[:, : mask.shape[1] - hidden], order[:, mask.shape[1] - hidden :]


def take_rows(values: Tensor, indices: Tensor) -> Tensor:
    """`values[b, indices[b]]` for `values` `[B, N, ...]` and `indices` `[B, K]`."""
    index = indices.reshape(*indices.shape, *([1] * (values.ndim - 2))).expand(-1, -1, *values.shape[2:])
    return torch.gather(values, 1, index)
