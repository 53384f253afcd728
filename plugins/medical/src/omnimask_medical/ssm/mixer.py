"""The Mamba (S6) mixer block, on our selective scan.

Same layers, names and initialisation as Mamba (Gu & Dao, 2023) and `transformers`'
`MambaMixer`, so weights copy one to one (the tests compare the two):

    x, z = in_proj(h).chunk(2)                      # the gate z
    x = silu(causal depthwise conv1d(x))
    dt, B, C = x_proj(x)                            # input-dependent (selective) parameters
    y = selective_scan(x, dt_proj.weight @ dt, -exp(A_log), B, C, D, z, dt_proj.bias, softplus)
    out = out_proj(y)

`transformers`' mixer is not used directly because its CPU path runs the recurrence one step at
a time; ours runs `selective_scan` (the chunked scan, or `mamba_ssm`'s kernel on CUDA).

`bidirectional=True` adds a second mixer over the reversed sequence (Vision Mamba's
bidirectional Mamba, which MambaMIM's encoder uses): flattened 3D tokens have no natural
direction, so each token sees context from both sides. The two outputs are summed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnimask_medical.ssm.scan import selective_scan


class MambaMixer(nn.Module):
    """`[B, L, d_model] -> [B, L, d_model]`."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.directions = nn.ModuleList(
            [
                _SelectiveCore(
                    self.d_inner, d_state, d_conv, self.dt_rank, dt_min, dt_max, dt_floor
                )
                for _ in range(2 if bidirectional else 1)
            ]
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        x, z = self.in_proj(hidden_states).transpose(1, 2).chunk(2, dim=1)  # [B, d_inner, L]
        y = self.directions[0](x, z)
        if len(self.directions) == 2:
            y = y + self.directions[1](x.flip(-1), z.flip(-1)).flip(-1)
        return self.out_proj(y.transpose(1, 2))


class _SelectiveCore(nn.Module):
    """conv1d -> x_proj -> dt_proj -> selective scan, for one scan direction."""

    def __init__(
        self, d_inner: int, d_state: int, d_conv: int, dt_rank: int,
        dt_min: float, dt_max: float, dt_floor: float,
    ) -> None:  # fmt: skip
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        # S4D-real initialisation: A = -(1, 2, ..., N) for every channel; D = 1.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        # dt drawn log-uniformly in [dt_min, dt_max]; the bias is its inverse softplus.
        with torch.no_grad():
            std = dt_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(
                torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            ).clamp(min=dt_floor)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        length = x.shape[-1]
        x = F.silu(self.conv1d(x)[..., :length])  # causal: keep the first L outputs
        dt, B, C = self.x_proj(x.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        dt = self.dt_proj.weight @ dt.transpose(1, 2)  # [B, d_inner, L]; bias added in the scan
        return selective_scan(
            x,
            dt,
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D.float(),
            z,
            self.dt_proj.bias.float(),
            delta_softplus=True,
        )
