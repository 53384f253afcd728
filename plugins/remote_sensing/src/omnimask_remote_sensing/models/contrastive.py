"""CROMA's cross-modal contrastive objective: symmetric InfoNCE with negatives from every process.

As in CROMA (and CLIP), each process scores its own samples against the features of the whole
global batch, gathered with gradients (`torch.distributed.nn.functional.all_gather`). With the
engine's gradient averaging, two processes with batch B then optimise exactly the loss of one
process with batch 2B, which the engine promises for every recipe.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def gather_global_batch(x: Tensor) -> tuple[Tensor, int]:
    """(features of every process concatenated in rank order, offset of this process's rows)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x)), dist.get_rank() * x.shape[0]


def symmetric_infonce(optical: Tensor, radar: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP-style symmetric InfoNCE: sample i's optical and radar vectors are the positive pair,
    every other sample of the (global) batch a negative; mean of both directions' cross-entropy
    over this process's rows."""
    optical = F.normalize(optical, dim=-1)
    radar = F.normalize(radar, dim=-1)
    all_optical, offset = gather_global_batch(optical)
    all_radar, _ = gather_global_batch(radar)
    labels = torch.arange(len(optical), device=optical.device) + offset
    per_optical = logit_scale * optical @ all_radar.t()
    per_radar = logit_scale * radar @ all_optical.t()
    return (F.cross_entropy(per_optical, labels) + F.cross_entropy(per_radar, labels)) / 2


class ContrastiveHead(nn.Module):
    """Linear projections of the pooled unimodal encodings and a learned temperature
    (initialised at 1/0.07, as CLIP and CROMA do)."""

    def __init__(self, dim: int, temperature: float = 0.07) -> None:
        super().__init__()
        self.radar_proj = nn.Linear(dim, dim)
        self.optical_proj = nn.Linear(dim, dim)
        # shape [1], not a scalar: FSDP shards no 0-dimensional parameter
        self.logit_scale = nn.Parameter(torch.tensor([1.0 / temperature]).log())

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Also take a checkpoint written while `logit_scale` was a scalar (before 0.2.2)."""
        key = f"{prefix}logit_scale"
        if key in state_dict and state_dict[key].ndim == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, optical_pooled: Tensor, radar_pooled: Tensor) -> Tensor:
        return symmetric_infonce(
            self.optical_proj(optical_pooled), self.radar_proj(radar_pooled), self.logit_scale.exp()
        )
