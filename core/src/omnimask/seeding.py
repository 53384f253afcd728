"""Deterministic seed derivation, so that every random draw has a reproducible seed."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (base seed, step, sample id...), stable across processes.

    Python's `hash` is salted per process for strings and weak for tuples of small ints; a
    cryptographic hash of the decimal parts is stable and well mixed.
    """
    digest = hashlib.blake2b("/".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch's CPU RNGs inside the block and restore them afterwards.

    Data augmentation under this context depends only on `seed` (e.g. mixed from the run seed,
    epoch and sample index), not on which worker or process loads the sample or when.
    """
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
