"""The selective scan (Mamba's S6 recurrence) in pure PyTorch, chunked, plus the CUDA kernel.

The recurrence, per batch b, channel d and state n (`mamba_ssm`'s `selective_scan_fn`):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t          (then y_t * silu(z_t) when a gate z is given)

A step-by-step loop costs L rounds of small tensor ops, which on a CPU is dominated by per-op
overhead. `selective_scan` cuts the sequence into chunks of `chunk` steps and runs

1. the recurrence inside every chunk at once, starting each chunk from a zero state: a loop over
   the `chunk` positions, each step vectorised over all chunks;
2. the chunk-to-chunk carry, `carry_c = decay_{c-1} * carry_{c-1} + local_end_{c-1}`, where
   `decay_c` is the product of the chunk's step decays: a loop over L / chunk small tensors;
3. the correction `h_t = local_t + exp(S_t) * carry_c`, with `S_t` the cumulative log-decay from
   the chunk start (a cumsum, always <= 0, so nothing overflows however long the sequence).

That is `chunk + L / chunk` Python steps instead of L (about 250 instead of 16k at L = 16k);
autograd differentiates it. On CUDA with `mamba_ssm` installed, its
fused kernel is used instead (same signature and semantics).
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_CHUNK = 64


def mamba_ssm_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def _prepare(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """(delta after bias/softplus `[b, d, L]`, B and C as `[b, d, L, n]`-broadcastable views)."""
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(delta.dtype)
    if delta_softplus:
        delta = F.softplus(delta)
    B, C = (_per_channel(x, u.shape[1]) for x in (B, C))
    return delta, B, C


def _per_channel(x: Tensor, channels: int) -> Tensor:
    """Input-dependent B or C, `[b, n, L]` or grouped `[b, g, n, L]`, as `[b, d or 1, L, n]`."""
    if x.dim() == 3:
        return x.transpose(1, 2).unsqueeze(1)
    groups = x.shape[1]
    return x.repeat_interleave(channels // groups, dim=1).transpose(2, 3)


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The recurrence one time step at a time: the test oracle and the benchmark baseline
    (it is what `mamba_ssm`'s `selective_scan_ref` does), not for training."""
    dtype = u.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u, delta = u.to(work), delta.to(work)
    delta, B, C = _prepare(u, delta, A.to(work), B.to(work), C.to(work), delta_bias, delta_softplus)
    decay = torch.exp(delta.unsqueeze(-1) * A.to(work)[:, None])  # [b, d, L, n]
    drive = (delta * u).unsqueeze(-1) * B  # [b, d, L, n]
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    outputs = []
    for t in range(u.shape[2]):
        state = decay[:, :, t] * state + drive[:, :, t]
        outputs.append((state * C[:, :, t]).sum(-1))
    y = torch.stack(outputs, dim=2)
    out = _finish(y, u, D, z).to(dtype)
    return (out, state) if return_last_state else out


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    if D is not None:
        y = y + u * D.to(u.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(u.dtype))
    return y


def chunked_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> Tensor | tuple[Tensor, Tensor]:
    """The pure-PyTorch chunked scan (see the module docstring); same contract as
    `selective_scan_reference`. Computes in float32 (float64 stays float64)."""
    dtype = u.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u, delta = u.to(work), delta.to(work)
    delta, B, C = _prepare(u, delta, A.to(work), B.to(work), C.to(work), delta_bias, delta_softplus)
    batch, channels, length = u.shape
    states = A.shape[1]
    chunk = max(1, min(chunk, length))
    chunks = math.ceil(length / chunk)
    pad = chunks * chunk - length

    log_decay = delta.unsqueeze(-1) * A.to(work)[:, None]  # [b, d, L, n], <= 0 for stable A
    drive = (delta * u).unsqueeze(-1) * B  # [b, d, L, n]
    if pad:  # padded steps keep the state (decay 1), add nothing and are cut from the output
        log_decay, drive = (F.pad(x, (0, 0, 0, pad)) for x in (log_decay, drive))
        C = F.pad(C, (0, 0, 0, pad))
    log_decay = log_decay.view(batch, channels, chunks, chunk, states)
    drive = drive.view(batch, channels, chunks, chunk, states)
    C = C.reshape(batch, C.shape[1], chunks, chunk, states)

    # 1. Each chunk's own contribution to its end state, from a zero start, in closed form:
    #    sum_s exp(S_end - S_s) * drive_s, where S is the cumulative log-decay (S_end - S_s <= 0).
    cumulative = log_decay.cumsum(dim=3)
    to_end = cumulative[:, :, :, -1:] - cumulative
    local_end = (to_end.exp() * drive).sum(dim=3)  # [b, d, chunks, n]
    chunk_decay = cumulative[:, :, :, -1].exp()

    # 2. The state entering each chunk: a loop over chunks on small tensors.
    entering = [torch.zeros_like(local_end[:, :, 0])]
    for c in range(1, chunks):
        entering.append(chunk_decay[:, :, c - 1] * entering[-1] + local_end[:, :, c - 1])
    state = torch.stack(entering, dim=2)  # [b, d, chunks, n]

    # 3. The recurrence inside all chunks at once, each from its entering state.
    #    Position-in-chunk first, so that every step reads contiguous memory.
    decay = log_decay.exp().permute(3, 0, 1, 2, 4).contiguous()
    drive = drive.permute(3, 0, 1, 2, 4).contiguous()
    C = C.permute(3, 0, 1, 2, 4).contiguous()
    outputs = []
    for t in range(chunk):
        state = torch.addcmul(drive[t], decay[t], state)
        outputs.append((state * C[t]).sum(-1))
    y = torch.stack(outputs, dim=3).view(batch, channels, chunks * chunk)[:, :, :length]
    out = _finish(y, u, D, z).to(dtype)
    if return_last_state:
        return out, state[:, :, -1]  # padded steps leave the last state unchanged
    return out


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba's selective scan: `mamba_ssm`'s CUDA kernel for CUDA tensors when it is installed,
    else `chunked_selective_scan`. Shapes: u, delta, z `[b, d, L]`; A `[d, n]`; B, C `[b, n, L]`
    or `[b, g, n, L]`; D, delta_bias `[d]`."""
    if u.is_cuda and mamba_ssm_available():
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
        )
    return chunked_selective_scan(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state
    )
