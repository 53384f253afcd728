"""A seeded batch sampler whose position is part of the training state.

The data stream is the concatenation of per-epoch permutations, each seeded by (seed, epoch).
Global batch k is stream positions [k*G, (k+1)*G) with G = per-process batch x processes, and
process r takes the r-th slice of it. So the data a step sees depends only on (seed, k): a run
resumed at any step, or split over any number of processes, sees exactly the same samples.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from omnimask.seeding import mix_seed


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields `[(index, epoch), ...]` for global batches `start, start+1, ..., stop-1`."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int,
        start: int,
        stop: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the dataset is empty")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.stop = stop
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self._epoch_cache: tuple[int, list[int]] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _order(self, epoch: int) -> list[int]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
                order = torch.randperm(self.num_samples, generator=generator).tolist()
            else:
                order = list(range(self.num_samples))
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def batch_keys(self, batch_index: int) -> list[tuple[int, int]]:
        """This process's `(index, epoch)` keys of global batch `batch_index`."""
        first = batch_index * self.global_batch_size + self.rank * self.batch_size
        keys = []
        for position in range(first, first + self.batch_size):
            epoch, offset = divmod(position, self.num_samples)
            keys.append((self._order(epoch)[offset], epoch))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch_index in range(self.start, self.stop):
            yield self.batch_keys(batch_index)
