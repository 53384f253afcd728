"""Worker for the two-process InfoNCE test: imports only torch and the contrastive module, so
spawning it stays cheap."""

from __future__ import annotations

import torch
import torch.distributed as dist
from omnimask_remote_sensing.models.contrastive import symmetric_infonce


def run(
    rank: int, world: int, port: int, optical: torch.Tensor, radar: torch.Tensor, out: str
) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    rows = slice(rank * len(optical) // world, (rank + 1) * len(optical) // world)
    local_optical = optical[rows].clone().requires_grad_(True)
    local_radar = radar[rows].clone().requires_grad_(True)
    loss = symmetric_infonce(local_optical, local_radar, torch.tensor(10.0))
    loss.backward()
    torch.save(
        {"loss": loss.detach(), "optical_grad": local_optical.grad, "radar_grad": local_radar.grad},
        f"{out}.{rank}",
    )
    dist.destroy_process_group()
