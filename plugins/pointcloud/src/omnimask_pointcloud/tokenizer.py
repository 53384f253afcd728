"""Point patches: farthest-point-sampled centres and their k nearest neighbours (Point-BERT,
Point-MAE). The grouping has no weights; the patch embedding (mini-PointNet) lives in each
method's encoder, because Point-BERT's dVAE and MPM stages embed patches differently."""

from __future__ import annotations

import warnings

import torch
from omnimask import Tokens
from torch import Tensor, nn

from omnimask_pointcloud.geometry import gather_points, group_points


class PointPatchTokenizer(nn.Module):
    """`batch["points"]` `[B, N, 3]` -> Tokens of `num_groups` patches of `group_size` points.

    `values` `[B, G, k*3]`: each patch's points relative to its centre, flattened;
    `positions` `[B, G, 3]`: the centres; `extras["neighbourhood"]` `[B, G, k, 3]`.
    The first FPS centre is point 0: the datasets shuffle points, so it is a random one.
    """

    def __init__(self, num_groups: int, group_size: int, backend: str = "auto") -> None:
        super().__init__()
        self.num_groups, self.group_size, self.backend = num_groups, group_size, backend

    def forward(self, batch: dict) -> Tokens:
        points = batch["points"].float()
        if points.shape[1] < max(self.group_size, self.num_groups):
            points = self._repeat_points(points)
        with torch.no_grad():
            centre_index, members = group_points(
                points, self.num_groups, self.group_size, backend=self.backend
            )
            centres = gather_points(points, centre_index.to(points.device))
            members = members.to(points.device)
            neighbourhood = gather_points(points, members) - centres.unsqueeze(2)
        return Tokens(
            values=neighbourhood.flatten(2),
            positions=centres,
            grid=None,
            extras={"neighbourhood": neighbourhood},
        )

    def _repeat_points(self, points: Tensor) -> Tensor:
        """Clouds smaller than a group: repeat points cyclically (deterministic) and warn."""
        have, need = points.shape[1], max(self.group_size, self.num_groups)
        warnings.warn(
            f"clouds of {have} points are fewer than the group size {self.group_size} "
            f"or group count {self.num_groups}; points are repeated to {need}",
            stacklevel=3,
        )
        order = torch.arange(need, device=points.device) % have
        return points[:, order]
