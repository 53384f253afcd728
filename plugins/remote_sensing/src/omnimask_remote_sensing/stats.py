"""Per-band mean and standard deviation in one streaming pass over the chips.

Chan et al.'s pairwise update merges each chip's (count, mean, M2) into the running totals in
float64: unlike accumulating sum and sum of squares, it does not lose the variance to
cancellation when a band's mean is large against its spread (reflectance x 10000, dB offsets).
"""

from __future__ import annotations

import numpy as np


class RunningBandStats:
    """Accumulates per-band moments of `[C, n]` value blocks."""

    def __init__(self, bands: int) -> None:
        self.count = 0
        self.mean = np.zeros(bands, dtype=np.float64)
        self.m2 = np.zeros(bands, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        """Merge a block of values `[C, n]` (n pixels of every band)."""
        n = values.shape[1]
        if n == 0:
            return
        block = values.astype(np.float64)
        block_mean = block.mean(axis=1)
        block_m2 = ((block - block_mean[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = block_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + block_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self) -> np.ndarray:
        """Population standard deviation, floored so a constant band cannot divide by zero."""
        if self.count == 0:
            raise ValueError("no valid pixels were seen: cannot compute band statistics")
        return np.maximum(np.sqrt(self.m2 / self.count), 1e-6)
