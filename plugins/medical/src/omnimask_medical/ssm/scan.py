"""The selective scan (Mamba's S6 recurrence) in pure PyTorch, chunked, plus the CUDA kernel.

The recurrence, per batch b, channel d and state n (`mamba_ssm`'s `selective_scan_fn`):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t          (then y_t * silu(z_t) when a gate z is given)

A step-by-step loop costs L rounds of small tensor ops, which on a CPU is dominated by per-op
overhead. `selective_scan` cuts the sequence into chunks of `chunk` steps and runs

1. the recurrence inside every chunk at once, each from a zero state, keeping only the state
   each chunk ends in: a loop over the `chunk` positions, each step vectorised over all chunks;
2. the chunk-to-chunk carry, `enter_c = decay_{c-1} * enter_{c-1} + end_{c-1}`, where `decay_c`
   is the product of the chunk's step decays (exp of a sum of log-decays, always <= 1): a loop
   over L / chunk small tensors;
3. the recurrence inside every chunk again, now from the entering state, reading out y.

That is `2 * chunk + L / chunk` Python steps instead of L (about 380 instead of 16k at L = 16k),
each on tensors `L / chunk` times larger, with no exponential of a positive number anywhere, so
it stays finite for any length and step size. `ChunkedLinearScan` runs the same three passes in
reverse for the backward. The arithmetic is the recurrence's own, so on a CPU the gain is the
per-step overhead saved, and that the large steps use all cores (the step-by-step loop's small
tensors run on one). On CUDA with `mamba_ssm` installed, its fused kernel is used instead (same
signature and semantics).
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
    # unbind, not indexing, per step: its backward is one stack instead of L scatters.
    for decay_t, drive_t, c_t in zip(decay.unbind(2), drive.unbind(2), C.unbind(2)):
        state = decay_t * state + drive_t
        outputs.append((state * c_t).sum(-1))
    y = torch.stack(outputs, dim=2)
    out = _finish(y, u, D, z).to(dtype)
    return (out, state) if return_last_state else out


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    if D is not None:
        y = y + u * D.to(u.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(u.dtype))
    return y


def _readout(states: Tensor, c: Tensor) -> Tensor:
    """`<C_t, h_t>` for one step: states `[b, d, chunks, n]`, c `[b, d or 1, chunks, n]`."""
    if c.shape[1] == 1:  # one C for all channels: a batched matrix-vector product
        return torch.einsum("bdcn,bcn->bdc", states, c.squeeze(1))
    return (states * c).sum(-1)


class ChunkedLinearScan(torch.autograd.Function):
    """`h_t = a_t h_{t-1} + b_t`, `y_t = <c_t, h_t>` over step-major chunked tensors
    `[chunk, b, d, chunks, n]` (c may have 1 channel), with its own backward.

    Backward is the same chunked scan run in reverse on `q_t = a_t g_t`, where `g_t = dL/dh_t`:
    `g_t = c_t dy_t + q_{t+1}` and `q_t = a_t g_t`; then `dL/db_t = g_t`,
    `dL/da_t = g_t h_{t-1}` and `dL/dc_t = sum_d dy_t h_t`. Autograd through the loops would
    instead keep and revisit a graph node per operation per step, about twice the memory traffic.
    `chunk_decay` (the product of each chunk's `a`) only speeds up the carry and gets no gradient.
    """

    @staticmethod
    def forward(ctx, decay: Tensor, drive: Tensor, readout: Tensor, chunk_decay: Tensor):  # noqa: ANN001, ANN205
        steps = decay.shape[0]
        # 1. Each chunk from a zero state: the state it ends in.
        local_end = drive[0]
        for t in range(1, steps):
            local_end = torch.addcmul(drive[t], decay[t], local_end)
        # 2. The state entering each chunk.
        entering = torch.zeros_like(local_end)
        for c in range(1, entering.shape[2]):
            entering[:, :, c] = chunk_decay[:, :, c - 1] * entering[:, :, c - 1]
            entering[:, :, c] += local_end[:, :, c - 1]
        # 3. Every chunk again from its entering state, keeping the states for backward.
        states = torch.empty_like(drive)
        outputs = drive.new_empty(drive.shape[:-1])
        state = entering
        for t in range(steps):
            state = torch.addcmul(drive[t], decay[t], state, out=states[t])
            outputs[t] = _readout(state, readout[t])
        ctx.save_for_backward(decay, readout, chunk_decay, states, entering)
        return outputs, states[-1, :, :, -1]

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, grad_last: Tensor):  # noqa: ANN001, ANN205
        decay, readout, chunk_decay, states, entering = ctx.saved_tensors
        steps, chunks = decay.shape[0], decay.shape[3]
        shared = readout.shape[2] == 1

        def direct(t: int) -> Tensor:  # c_t dy_t, the loss's own pull on h_t
            return grad_outputs[t].unsqueeze(-1) * readout[t]

        # 1. Each chunk from a zero future: what reaches its first step, q at t = 0.
        local_start = decay[-1] * direct(steps - 1)
        for t in range(steps - 2, -1, -1):
            local_start = decay[t] * (direct(t) + local_start)
        # 2. What enters each chunk from the next one (the last chunk also gets dL/dh_last).
        incoming = torch.zeros_like(local_start)
        incoming[:, :, -1] = grad_last
        for c in range(chunks - 2, -1, -1):
            incoming[:, :, c] = chunk_decay[:, :, c + 1] * incoming[:, :, c + 1]
            incoming[:, :, c] += local_start[:, :, c + 1]
        # 3. Every chunk again from its incoming gradient.
        grad_drive = torch.empty_like(states)
        grad_decay = torch.empty_like(states)
        grad_readout = torch.empty_like(readout)
        passed = incoming
        for t in range(steps - 1, -1, -1):
            total = torch.add(direct(t), passed, out=grad_drive[t])
            before = states[t - 1] if t > 0 else entering
            torch.mul(total, before, out=grad_decay[t])
            passed = decay[t] * total
            if shared:
                grad_readout[t, :, 0] = torch.einsum("bdc,bdcn->bcn", grad_outputs[t], states[t])
            else:
                torch.mul(grad_outputs[t].unsqueeze(-1), states[t], out=grad_readout[t])
        return grad_decay, grad_drive, grad_readout, None


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

    if pad:  # padded steps keep the state (delta 0: decay 1), add nothing, and are cut off
        delta, u = F.pad(delta, (0, pad)), F.pad(u, (0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))

    def steps_first(x: Tensor) -> Tensor:
        """`[b, d, L]` -> `[chunk, b, d, chunks]`: every step of every chunk contiguous."""
        return x.reshape(batch, x.shape[1], chunks, chunk).permute(3, 0, 1, 2).contiguous()

    def steps_first_states(x: Tensor) -> Tensor:
        """B or C `[b, d or 1, L, n]` -> `[chunk, b, d or 1, chunks, n]`."""
        x = x.reshape(batch, x.shape[1], chunks, chunk, states)
        return x.permute(3, 0, 1, 2, 4).contiguous()

    # The full-size tensors are built directly in step-major layout (no copies of them).
    A = A.to(work)[:, None, :]  # [d, 1, n]
    delta_steps = steps_first(delta)
    decay = torch.exp(delta_steps.unsqueeze(-1) * A)  # [chunk, b, d, chunks, n]
    drive = (delta_steps * steps_first(u)).unsqueeze(-1) * steps_first_states(B)
    with torch.no_grad():  # the product of a chunk's decays, exp(A * its summed steps)
        chunk_decay = torch.exp(delta_steps.sum(0).unsqueeze(-1) * A)  # [b, d, chunks, n]
    readout = steps_first_states(C)  # [chunk, b, d or 1, chunks, n]
    outputs, last_state = ChunkedLinearScan.apply(decay, drive, readout, chunk_decay)
    y = outputs.permute(1, 2, 3, 0).reshape(batch, channels, chunks * chunk)[:, :, :length]
    out = _finish(y, u[:, :, :length], D, z).to(dtype)
    if return_last_state:
        return out, last_state  # padded steps leave the last state unchanged
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
