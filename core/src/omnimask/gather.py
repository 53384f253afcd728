"""MAE-style visible-token handling: mask -> indices, gather the visible tokens, scatter them back.

An MAE encoder runs only on the visible tokens, which needs a dense `[B, K, D]` tensor, so every
row must keep the same number K of tokens; the maskers in `omnimask.masking` guarantee that. The
decoder then puts the encoded tokens back at their positions and fills the hidden ones with a
mask token.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_to_indices(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Bool mask `[B, N]` (True = hidden) -> (visible `[B, K]`, masked `[B, M]`), K + M = N.

    Both index tensors are increasing along each row, so gathered tokens keep their original
    order (which sequence models and relative position biases rely on). Raises ValueError naming
    the rows whose masked count differs from row 0's, because unequal counts cannot be gathered
    into dense tensors.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"expected a bool mask [B, N], got {mask.dtype} {tuple(mask.shape)}")
    counts = mask.sum(dim=1)
    if mask.shape[0] > 0 and bool((counts != counts[0]).any()):
        rows = (counts != counts[0]).nonzero().flatten().tolist()
        raise ValueError(
            f"every row of the mask must hide the same number of tokens to be gathered; row 0 "
            f"hides {int(counts[0])} but rows {rows} hide {counts[rows].tolist()}"
        )
    num_masked = int(counts[0]) if mask.shape[0] > 0 else 0
    num_visible = mask.shape[1] - num_masked
    # A stable sort of 0/1 keys lists the visible positions, then the masked ones, each ascending.
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
    return order[:, :num_visible], order[:, num_visible:]


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """`x[b, index[b, k], ...]`: `[B, N, *rest]`, index `[B, K]` -> `[B, K, *rest]`.

    Works for features `[B, N, D]`, ids `[B, N]` and positions `[B, N, P]` alike; differentiable
    with respect to `x`.
    """
    if index.shape[0] != x.shape[0] or index.dim() != 2:
        raise ValueError(
            f"expected index [B, K] with B = {x.shape[0]}, got shape {tuple(index.shape)}"
        )
    rest = x.shape[2:]
    expanded = index.reshape(*index.shape, *(1,) * len(rest)).expand(*index.shape, *rest)
    return torch.gather(x, 1, expanded)


def scatter_tokens(visible: Tensor, visible_index: Tensor, num_tokens: int, fill: Tensor) -> Tensor:
    """Put visible tokens back at their positions and fill the rest: -> `[B, N, D]`.

    Args:
        visible: `[B, K, D]`, the encoded visible tokens.
        visible_index: `[B, K]`, where each visible token goes: distinct positions in `[0, N)`,
            as `mask_to_indices` returns them (not checked: that would sync the device each step).
        num_tokens: N.
        fill: what the N - K hidden positions get: a mask token `[D]` (broadcast, as in MAE's
            decoder) or per-position values `[B, N - K, D]`, ordered by increasing position
            (the order `mask_to_indices` returns the masked indices in).

    Differentiable with respect to both `visible` and `fill`, so a learnable mask token trains.
    """
    batch, num_visible, dim = visible.shape
    num_hidden = num_tokens - num_visible
    if tuple(visible_index.shape) != (batch, num_visible):
        raise ValueError(
            f"visible_index must be [{batch}, {num_visible}] to match visible "
            f"{tuple(visible.shape)}, got {tuple(visible_index.shape)}"
        )
    if tuple(fill.shape) == (dim,):
        fill = fill.expand(batch, num_hidden, dim)
    elif tuple(fill.shape) != (batch, num_hidden, dim):
        raise ValueError(
            f"fill must be [{dim}] or [{batch}, {num_hidden}, {dim}], got {tuple(fill.shape)}"
        )
    is_visible = torch.zeros(batch, num_tokens, dtype=torch.bool, device=visible.device)
    is_visible.scatter_(1, visible_index, True)
    # Stable sort of 0/1 keys: the hidden positions, ascending.
    hidden_index = torch.argsort(is_visible.to(torch.uint8), dim=1, stable=True)[:, :num_hidden]
    # MAE's unshuffle: concatenate in (visible, hidden) order, then gather by the inverse
    # permutation, so one gather (with a plain scatter-add backward) places every token.
    shuffled = torch.cat([visible, fill.to(visible.dtype)], dim=1)
    restore = torch.argsort(torch.cat([visible_index, hidden_index], dim=1), dim=1)
    return gather_tokens(shuffled, restore)
