"""Deterministic seed derivation, so that every random draw has a reproducible seed."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (base seed, step, sample id...), stable across processes.

    Each part is folded in with SplitMix64's finaliser, a well-mixed integer hash: Python's own
    `hash` is salted per process for strings and leaves small integers unchanged. This runs once
    per sample per step, so it is plain integer arithmetic rather than a cryptographic hash.
    """
    state = 0x9E3779B97F4A7C15
    for part in parts:
        state = (state ^ (int(part) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state & ((1 << 63) - 1)


def sample_seeds(
    sample_ids: Tensor | None, generator: torch.Generator | None, *salt: int, rows: int = 0
) -> list[int]:
    """One seed per sample: `mix_seed(step seed, *salt, sample id)`.

    The step seed is `generator.initial_seed()` (the engine's per-step generator; 0 without one).
    Keying randomness by sample id rather than by row makes a sample's draws independent of which
    batch, process or position it lands in; `salt` separates independent draws of the same sample
    (the mask, Gumbel noise, distractors...). Without ids (a bare batch outside the engine) rows
    `0..rows-1` stand in for them.
    """
    step_seed = 0 if generator is None else generator.initial_seed()
    keys = range(rows) if sample_ids is None else sample_ids.tolist()
    return [mix_seed(step_seed, *salt, key) for key in keys]


def sample_generators(
    sample_ids: Tensor | None, generator: torch.Generator | None, *salt: int, rows: int = 0
) -> list[torch.Generator]:
    """A CPU `torch.Generator` per sample, seeded by `sample_seeds` (see there)."""
    return [
        torch.Generator().manual_seed(seed)
        for seed in sample_seeds(sample_ids, generator, *salt, rows=rows)
    ]


def _signed(value: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (
    _signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bit patterns (`>>` on int64 is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def sample_uniform(seeds: Tensor, count: int) -> Tensor:
    """`[B]` int64 seeds -> `[B, count]` float32 uniforms in [0, 1), row b depending only on
    `seeds[b]`.

    A counter-based generator: value i of row b is SplitMix64(seed_b + (i + 1) * golden), computed
    for the whole batch in a few integer tensor ops (int64 multiplication wraps like uint64). It
    gives per-sample masks at batch speed, where a `torch.Generator` per row costs a Python loop,
    and the same numbers on any device.
    """
    counters = torch.arange(1, count + 1, dtype=torch.int64, device=seeds.device) * _GOLDEN
    x = seeds.to(torch.int64).unsqueeze(1) + counters
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    x = x ^ _shift_right(x, 31)
    return _shift_right(x, 40).to(torch.float32) / float(1 << 24)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU RNGs for the block and restore torch's afterwards.

    Data augmentation under this context depends only on `seed` (e.g. mixed from the run seed,
    epoch and sample index), not on which worker or process loads the sample or when.

    Torch's stream is restored because it also drives dropout in the training process. Python's
    and NumPy's are left seeded: saving and restoring their Mersenne Twisters costs 0.1-0.5 ms per
    sample, and since every sample reseeds them, the state they are left in is still a
    deterministic function of the data order (so resumed runs stay exact). Torch is seeded through
    its CPU generator: `torch.manual_seed` also visits every accelerator backend (about 1 ms).
    """
    torch_state = torch.default_generator.get_state()
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.default_generator.set_state(torch_state)
