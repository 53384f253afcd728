"""Seeded batch samplers whose position is part of the training state.

`ResumableBatchSampler`: the data stream is the concatenation of per-epoch permutations, each
seeded by (seed, epoch). Global batch k is stream positions [k*G, (k+1)*G) with G = per-process
batch x processes, and process r takes the r-th slice of it. So the data a step sees depends only
on (seed, k): a run resumed at any step, or split over any number of processes, sees exactly the
same samples.

`BucketedBatchSampler` keeps that contract and groups samples of similar length into a batch, so
variable-length data (speech, text) pads each batch to a length close to that of all its samples.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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


class BucketedBatchSampler(ResumableBatchSampler):
    """Length-bucketed global batches with the same `batch_keys(k)` contract.

    Epoch e is built from one generator seeded by (seed, e): it draws the permutation of the
    samples (the same one `ResumableBatchSampler` draws for epoch e), whose first
    `batches_per_epoch * G` entries are cut into mega-batches of `bucket_batches * G` samples
    (the last one may be shorter, always a multiple of G); each mega-batch is sorted by length
    (stable: equal lengths keep their permuted order) and cut into global batches of G; then the
    same generator shuffles the order of the epoch's batches, so long and short batches alternate.
    Process r takes the r-th slice of a global batch, as in `ResumableBatchSampler`. Batch k is
    batch `k % batches_per_epoch` of epoch `k // batches_per_epoch`: it depends only on
    (seed, k, lengths), which keeps resumption and multi-process runs exact.

    Partial batches: an epoch is `batches_per_epoch = num_samples // G` full global batches, and
    the last `num_samples % G` samples of its permutation wait for a later epoch (a different
    random few each time). Every batch is full and no sample appears twice in an epoch. Filling
    the last batch with samples of the next epoch (or repeats of this one) would put one clip
    twice into a mega-batch, and sorting by length would make the two copies neighbours in one
    batch. A data set smaller than one global batch is cycled to fill it (one batch per epoch).
    With `shuffle=False` the permutation is the identity and the batches keep their sorted order.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        bucket_batches: int,
        seed: int,
        start: int,
        stop: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(
            len(lengths),
            batch_size,
            seed=seed,
            start=start,
            stop=stop,
            shuffle=shuffle,
            num_replicas=num_replicas,
            rank=rank,
        )
        if bucket_batches < 1:
            raise ValueError(f"bucket_batches must be at least 1, got {bucket_batches}")
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        if self.lengths.ndim != 1:
            raise ValueError("lengths must be one integer per sample")
        self.bucket_batches = bucket_batches
        self.batches_per_epoch = max(1, self.num_samples // self.global_batch_size)
        self._batches_cache: tuple[int, torch.Tensor] | None = None

    def epoch_batches(self, epoch: int) -> torch.Tensor:
        """Dataset indices of epoch `epoch`'s global batches, `[batches_per_epoch, G]`."""
        if self._batches_cache is not None and self._batches_cache[0] == epoch:
            return self._batches_cache[1]
        size = self.global_batch_size
        used = self.batches_per_epoch * size
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        order = order.repeat(-(-used // self.num_samples))[:used]  # cycles only when N < G
        chunks = []
        for chunk in order.split(self.bucket_batches * size):
            by_length = torch.sort(self.lengths[chunk], stable=True).indices
            chunks.append(chunk[by_length])
        batches = torch.cat(chunks).view(self.batches_per_epoch, size)
        if self.shuffle:
            batches = batches[torch.randperm(self.batches_per_epoch, generator=generator)]
        self._batches_cache = (epoch, batches)
        return batches

    def batch_keys(self, batch_index: int) -> list[tuple[int, int]]:
        epoch, slot = divmod(batch_index, self.batches_per_epoch)
        first = self.rank * self.batch_size
        indices = self.epoch_batches(epoch)[slot, first : first + self.batch_size]
        return [(index, epoch) for index in indices.tolist()]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions when each batch (of dataset indices) is padded to its longest
    sample: 1 - real lengths / (batch size x longest), summed over the batches."""
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 1.0 - real / padded if padded else 0.0
