"""The selective scan (Mamba's S6 recurrence) in pure PyTorch, chunked, plus the CUDA kernel.

The recurrence, per batch b, channel d and state n (`mamba_ssm`'s `selective_scan_fn`):

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t          (then y_t * silu(z_t) when a gate z is given)

A step-by-step loop costs L rounds of small tensor ops, which on a CPU is dominated by per-op
overhead. `chunked_selective_scan` cuts the sequence into chunks of about sqrt(L) / 2 steps and
runs

1. the recurrence inside every chunk at once, each from a zero state, keeping only the state
   each chunk ends in: a loop over the chunk's positions, each step vectorised over all chunks;
2. the chunk-to-chunk carry, `enter_c = decay_{c-1} * enter_{c-1} + end_{c-1}`, where `decay_c`
   is the product of the chunk's step decays (exp of a sum of log-decays, always <= 1): a loop
   over L / chunk small tensors;
3. the recurrence inside every chunk again, now from the entering state, reading out y.

That is `2 * chunk + L / chunk` Python steps instead of L (about 380 instead of 16k at L = 16k),
each on tensors `L / chunk` times larger, with no exponential of a positive number anywhere, so
it stays finite for any length and step size. Each step's decays and drives are formed when
they are used and never stored for the whole sequence (only the states are, for the backward),
so they stay in cache: `[L, d, n]` tensors cost memory traffic and, on a CPU, first-touch page
faults that take as long as the exponentials. `ChunkedSelectiveScan` runs the same three passes
in reverse for the backward and reduces each step's gradients on the spot. On CUDA with
`mamba_ssm` installed, its fused kernel is used instead (same signature and semantics).
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import Tensor


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


def _choose_chunk(length: int) -> int:
    """About sqrt(L) / 2 steps per chunk, a power of two in [16, 64]: the Python steps
    (`2 * chunk + L / chunk`) stay few while each step's tensors stay large enough to amortise
    the per-op overhead (measured on CPU: 16 is best at 1k steps, 32 at 4k, 64 at 16k)."""
    return int(min(64, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(length) / 2))))))


def _contract_states(x: Tensor, y: Tensor) -> Tensor:
    """`sum_n x * y` for x `[b, c, d, n]`, y `[b, c, d or 1, n]` -> `[b, c, d]`; a shared y is a
    batched vector-matrix product, `y x^T` (on CPU about twice as fast as `x y^T`)."""
    if y.shape[-2] == 1:
        return torch.matmul(y, x.transpose(-1, -2)).squeeze(-2)
    return (x * y).sum(-1)


def _reduce_channels(x: Tensor, w: Tensor, groups: int) -> Tensor:
    """The gradient of a B or C `[b, c, g, n]` (g = 1 or d) used as `w[..., None] * B`:
    `sum_d w * x` for g = 1, `w * x` per channel otherwise."""
    if groups == 1:
        return torch.matmul(w.unsqueeze(-2), x)
    return x * w.unsqueeze(-1)


def _log2_rate(A: Tensor) -> Tensor:
    """`A log2(e)`, so that `exp(delta A) = exp2(delta A log2(e))`: torch's CPU `exp2` kernel is
    about twice as fast as its `exp` (72 vs 136 us for 131k floats, AVX2, one thread)."""
    return A * math.log2(math.e)


def _scan_forward(
    delta: Tensor, scaled_u: Tensor, A: Tensor, B: Tensor, C: Tensor, keep_states: bool
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The three passes over step-major inputs (delta and delta * u `[chunk, b, c, d, 1]`,
    A `[d, n]`, B and C `[chunk, b, c, g, n]`): (y `[chunk, b, c, d]`, the state after the last
    step `[b, d, n]`, and when `keep_states` every state `[chunk, b, c, d, n]` and the state
    entering each chunk `[b, c, d, n]`)."""
    steps, batch, chunks, channels, _ = delta.shape
    shape = (batch, chunks, channels, A.shape[1])
    rate = _log2_rate(A)
    decay, drive = delta.new_empty(shape), delta.new_empty(shape)
    # With `keep_states`, pass 1 leaves each step's decays where pass 3 writes that step's states,
    # so pass 3 reads them instead of recomputing; without, a full-size buffer only for them
    # would cost (first-touch page faults on a CPU) about what recomputing does.
    states = delta.new_empty(steps, *shape) if keep_states else None

    def drive_at(t: int) -> Tensor:
        return torch.mul(scaled_u[t], B[t], out=drive)

    # 1. Each chunk from a zero state: the state it ends in.
    local_end = delta.new_zeros(shape)
    for t in range(steps):
        decay_t = torch.mul(delta[t], rate, out=decay if states is None else states[t]).exp2_()
        torch.addcmul(drive_at(t), decay_t, local_end, out=local_end)
    # 2. The state entering each chunk, chunk by chunk.
    chunk_decay = torch.exp2(delta.sum(0) * rate)
    entering = torch.zeros_like(local_end)
    for c in range(1, chunks):
        torch.addcmul(
            local_end[:, c - 1], chunk_decay[:, c - 1], entering[:, c - 1], out=entering[:, c]
        )
    # 3. Every chunk again from its entering state, reading out y.
    # y is written in `[b, d, chunks, chunk]` order, so `[b, d, L]` is a view of it.
    outputs = delta.new_empty(batch, channels, chunks, steps).permute(3, 0, 2, 1)
    state = entering
    for t in range(steps):
        if states is None:
            decay_t = torch.mul(delta[t], rate, out=decay).exp2_()
            state = torch.addcmul(drive_at(t), decay_t, state, out=state)
        else:  # the decays in states[t] give way to the states, element by element
            state = torch.addcmul(drive_at(t), states[t], state, out=states[t])
        outputs[t] = _contract_states(state, C[t])
    return outputs, state[:, -1], states, entering if keep_states else None


class ChunkedSelectiveScan(torch.autograd.Function):
    """`_scan_forward` with its own backward, which returns the gradients of the step-major
    inputs directly (the backward of `h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t`).

    With `g_t = dL/dh_t = dy_t C_t + exp(delta_{t+1} A) g_{t+1}`, the same three chunked passes
    run in reverse for g; then per step `dL/d(delta u)_t = <g_t, B_t>`, `dL/dB_t = sum_d g_t
    (delta u)_t`, `dL/dC_t = sum_d dy_t h_t`, and with `e_t = g_t h_{t-1} exp(delta_t A)`:
    `dL/ddelta_t = <e_t, A>`, `dL/dA = sum_t e_t delta_t`. Every per-step tensor is formed and
    reduced while it is in cache; autograd through the loops would instead materialise the
    full `[L, d, n]` decays and drives and their gradients and revisit a graph node per step.
    """

    @staticmethod
    def forward(ctx, delta: Tensor, scaled_u: Tensor, A: Tensor, B: Tensor, C: Tensor):  # noqa: ANN001, ANN205
        outputs, last, states, entering = _scan_forward(delta, scaled_u, A, B, C, True)
        ctx.save_for_backward(delta, scaled_u, A, B, C, states, entering)
        return outputs, last

    @staticmethod
    def backward(ctx, grad_outputs: Tensor, grad_last: Tensor):  # noqa: ANN001, ANN205
        delta, scaled_u, A, B, C, states, entering = ctx.saved_tensors
        steps, chunks = delta.shape[0], delta.shape[2]
        decay, rate = torch.empty_like(entering), _log2_rate(A)

        def decay_at(t: int) -> Tensor:  # recomputed in both passes, as in forward
            return torch.mul(delta[t], rate, out=decay).exp2_()

        def pull(t: int, passed: Tensor) -> Tensor:  # g_t: dy_t C_t plus what the future passes
            return torch.addcmul(passed, grad_outputs[t].unsqueeze(-1), C[t])

        # 1. Each chunk from a zero future: what its first step passes to the step before.
        local_start = torch.zeros_like(entering)
        for t in range(steps - 1, -1, -1):
            torch.mul(decay_at(t), pull(t, local_start), out=local_start)
        # 2. What enters each chunk from the next one (the last one also gets dL/dh_last).
        chunk_decay = torch.exp2(delta.sum(0) * rate)
        passed = torch.zeros_like(local_start)
        passed[:, -1] = grad_last
        for c in range(chunks - 2, -1, -1):
            torch.addcmul(
                local_start[:, c + 1], chunk_decay[:, c + 1], passed[:, c + 1], out=passed[:, c]
            )
        # 3. Every chunk again from its incoming gradient, reducing each step's gradients.
        grad_delta, grad_scaled_u = torch.empty_like(delta), torch.empty_like(scaled_u)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_A = torch.zeros_like(entering)  # summed over batch and chunks at the end
        for t in range(steps - 1, -1, -1):
            g = pull(t, passed)
            e = g * (states[t - 1] if t > 0 else entering)
            e.mul_(decay_at(t))
            grad_A.addcmul_(e, delta[t])
            grad_delta[t] = _contract_states(e, A).unsqueeze(-1)
            grad_scaled_u[t] = _contract_states(g, B[t]).unsqueeze(-1)
            grad_B[t] = _reduce_channels(g, scaled_u[t].squeeze(-1), B.shape[-2])
            grad_C[t] = _reduce_channels(states[t], grad_outputs[t], C.shape[-2])
            passed = g.mul_(decay)
        return grad_delta, grad_scaled_u, grad_A.sum((0, 1)), grad_B, grad_C


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
    chunk: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The pure-PyTorch chunked scan (see the module docstring); same contract as
    `selective_scan_reference`. Computes in float32 (float64 stays float64). `chunk`: steps per
    chunk, by default about sqrt(L) / 2."""
    dtype = u.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u, delta = u.to(work), delta.to(work)
    delta, B, C = _prepare(u, delta, A.to(work), B.to(work), C.to(work), delta_bias, delta_softplus)
    batch, channels, length = u.shape
    chunk = max(1, min(chunk or _choose_chunk(length), length))
    chunks = math.ceil(length / chunk)
    pad = chunks * chunk - length
    scaled_u = delta * u
    if pad:  # padded steps keep the state (delta 0: decay 1), add nothing, and are cut off
        delta, scaled_u = F.pad(delta, (0, pad)), F.pad(scaled_u, (0, pad))
        B, C = F.pad(B, (0, 0, 0, pad)), F.pad(C, (0, 0, 0, pad))

    def steps_first(x: Tensor) -> Tensor:
        """`[b, d, L]` -> `[chunk, b, chunks, d, 1]`: each step of every chunk contiguous."""
        x = x.reshape(batch, channels, chunks, chunk).permute(3, 0, 2, 1)
        return x.contiguous().unsqueeze(-1)

    def steps_first_states(x: Tensor) -> Tensor:
        """B or C `[b, d or 1, L, n]` -> `[chunk, b, chunks, d or 1, n]`."""
        x = x.reshape(batch, x.shape[1], chunks, chunk, x.shape[-1])
        return x.permute(3, 0, 2, 1, 4).contiguous()

    inputs = (
        steps_first(delta), steps_first(scaled_u), A.to(work),
        steps_first_states(B), steps_first_states(C),
    )  # fmt: skip
    if torch.is_grad_enabled() and any(x.requires_grad for x in inputs):
        outputs, last_state = ChunkedSelectiveScan.apply(*inputs)
    else:  # no backward to come: the states need not be kept
        outputs, last_state, _, _ = _scan_forward(*inputs, keep_states=False)
    y = outputs.permute(1, 3, 2, 0).reshape(batch, channels, chunks * chunk)[:, :, :length]
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
