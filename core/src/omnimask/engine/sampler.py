"""Seeded batch samplers whose position is part of the training state.

`ResumableBatchSampler`: the data stream is the concatenation of per-epoch permutations, each
seeded by (seed, epoch). Global batch k is stream positions [k*G, (k+1)*G) with G = per-process
batch x processes, and process r takes the r-th slice of it. So the data a step sees depends only
on (seed, k): a run resumed at any step, or split over any number of processes, sees exactly the
same samples.

`BucketedBatchSampler` keeps that contract and groups samples of similar length into a batch, so
variable-length data (speech, text) pads each batch to a length close to that of all its samples.

Neither stores an epoch's permutation: `SeededPermutation` computes the sample at any position of
it, so a sampler holds O(1) memory per process (O(bucket_batches x G) for the bucketed one) at
any data set size. Earlier versions drew each epoch with `torch.randperm`, a different order: a
run started with one of them and resumed with this one sees other samples from the resumed step
on, so it is not bit-exact with the uninterrupted old run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from omnimask.seeding import mix_seed

_ROUNDS = 8
# SplitMix64's finaliser constants (as in `omnimask.seeding.mix_seed`).
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_WINDOW_POSITIONS = 16_384
#: salt of the keys of the bucketed sampler's batch orders, apart from its sample orders.
_BATCH_ORDER = 1


def _mix(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (multiplication wraps modulo 2^64)."""
    values = (values ^ (values >> np.uint64(30))) * _MIX_1
    values = (values ^ (values >> np.uint64(27))) * _MIX_2
    return values ^ (values >> np.uint64(31))


class SeededPermutation:
    """A pseudo-random permutation of `[0, size)` evaluated at any positions in O(1) memory.

    `torch.randperm(n)` stores the whole permutation: 8 bytes a sample as a tensor, about 36 as
    the Python list a sampler indexes, 3.6 GB per process at 100M samples. This computes
    `perm[p]` from `p` alone. A keyed Feistel network permutes the 2^b integers of the smallest
    even number of bits b with 2^b >= size: each of its rounds swaps the two halves of the bits
    and XORs one with a keyed hash of the other, which can be undone whatever the hash, so it is a
    bijection. A position whose image lands at or past `size` goes through the network again
    (cycle-walking) until it lands inside; following the cycle of a point of [0, size) always
    comes back into it, so the result is a bijection of [0, size). 2^b <= 4 x size, so a position
    takes at most 4 passes on average. Round keys are `mix_seed(key, round)`.

    Not a library: the O(1)-memory permutations on PyPI (smallperm, pygfc) are small compiled
    packages that map one position per call, and the order they give may change with their
    version. The order is part of a run's state (a resumed run must see the same samples), so its
    definition lives here, in vectorised numpy over a batch of positions.
    """

    def __init__(self, size: int, key: int) -> None:
        if size < 1:
            raise ValueError(f"a permutation needs at least one element, got size {size}")
        self.size = size
        bits = max(2, (size - 1).bit_length())
        self._half = np.uint64((bits + 1) // 2)
        self._low = np.uint64((1 << int(self._half)) - 1)
        self._keys = [np.uint64(mix_seed(key, step)) for step in range(_ROUNDS)]

    def _network(self, values: np.ndarray) -> np.ndarray:
        left, right = values >> self._half, values & self._low
        for key in self._keys:
            left, right = right, left ^ (_mix(right ^ key) & self._low)
        return (left << self._half) | right

    def __call__(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """`perm[positions]` as int64, for positions in `[0, size)`."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.size):
            raise IndexError(f"positions must lie in [0, {self.size})")
        values = self._network(positions.astype(np.uint64))
        outside = np.flatnonzero(values >= self.size)
        while outside.size:
            values[outside] = self._network(values[outside])
            outside = outside[values[outside] >= self.size]
        return values.astype(np.int64)


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
        # Batches computed at once (about 16k positions, within one epoch's length): a pass of the
        # permutation over a few positions costs what it costs over thousands.
        window = min(_WINDOW_POSITIONS // batch_size, num_samples // self.global_batch_size)
        self._window = max(1, window)
        self._window_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def order(self, epoch: int, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """Dataset indices at `positions` of epoch `epoch`'s permutation (identity unshuffled)."""
        positions = np.asarray(positions, dtype=np.int64)
        if not self.shuffle:
            return positions
        return SeededPermutation(self.num_samples, mix_seed(self.seed, epoch))(positions)

    def batch_keys(self, batch_index: int) -> list[tuple[int, int]]:
        """This process's `(index, epoch)` keys of global batch `batch_index`."""
        row = batch_index % self._window
        if self._window_cache is None or self._window_cache[0] != batch_index - row:
            self._window_cache = (batch_index - row, *self._keys_from(batch_index - row))
        _, indices, epochs = self._window_cache
        return list(zip(indices[row].tolist(), epochs[row].tolist()))

    def _keys_from(self, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices and epochs of this process's slices of `_window` batches from `batch_index`."""
        batches = np.arange(batch_index, batch_index + self._window, dtype=np.int64)
        first = batches * self.global_batch_size + self.rank * self.batch_size
        positions = first[:, None] + np.arange(self.batch_size)
        epochs, offsets = np.divmod(positions, self.num_samples)
        indices = np.empty_like(offsets)
        for epoch in range(int(epochs[0, 0]), int(epochs[-1, -1]) + 1):
            chosen = epochs == epoch
            indices[chosen] = self.order(epoch, offsets[chosen])
        return indices, epochs

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch_index in range(self.start, self.stop):
            yield self.batch_keys(batch_index)


class BucketedBatchSampler(ResumableBatchSampler):
    """Length-bucketed global batches with the same `batch_keys(k)` contract.

    Epoch e is built from the permutation of the samples keyed by (seed, e) (the one
    `ResumableBatchSampler` uses for epoch e), whose first `batches_per_epoch * G` positions are
    cut into mega-batches of `bucket_batches * G` samples (the last one may be shorter, always a
    multiple of G); each mega-batch is sorted by length (stable: equal lengths keep their permuted
    order) and cut into global batches of G, and a permutation keyed by (seed, e, mega-batch)
    shuffles the order of its batches, so long and short batches alternate. The epoch takes its
    mega-batches in turn. Process r takes the r-th slice of a global batch, as in
    `ResumableBatchSampler`. Batch k is batch `k % batches_per_epoch` of epoch
    `k // batches_per_epoch`: it depends only on (seed, k, lengths), which keeps resumption and
    multi-process runs exact.

    Memory: only the mega-batch that holds the batch asked for is computed, and kept for the next
    batches, so the sampler holds O(bucket_batches x G) besides the caller's `lengths`, which it
    reads without copying. Batches stay within their mega-batch (rather than the epoch's batches
    being shuffled together, as before issue #18) so that each mega-batch is computed once:
    consecutive batches from different mega-batches would cost a mega-batch per batch (K x G
    permuted positions, their lengths and a sort: about 40 ms at K x G = 131k). The mega-batches'
    contents are random draws of the epoch's permutation already, so their order needs no shuffle.

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
        lengths: Sequence[int] | np.ndarray | torch.Tensor,
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
        if isinstance(lengths, (np.ndarray, torch.Tensor)):
            lengths = np.asarray(lengths)  # a view: no copy of a large array
            if lengths.ndim != 1:
                raise ValueError("lengths must be one integer per sample")
        self.lengths = lengths
        self.bucket_batches = bucket_batches
        self.batches_per_epoch = max(1, self.num_samples // self.global_batch_size)
        self._mega_cache: tuple[int, int, np.ndarray] | None = None

    def _lengths_of(self, indices: np.ndarray) -> np.ndarray:
        if isinstance(self.lengths, np.ndarray):
            return self.lengths[indices]
        try:
            return np.fromiter((self.lengths[i] for i in indices.tolist()), np.int64, len(indices))
        except (TypeError, ValueError) as error:
            raise ValueError(f"lengths must be one integer per sample ({error})") from None

    def mega_batch(self, epoch: int, mega: int) -> np.ndarray:
        """Dataset indices of mega-batch `mega` of epoch `epoch`, sorted by length."""
        if self._mega_cache is not None and self._mega_cache[:2] == (epoch, mega):
            return self._mega_cache[2]
        size = self.bucket_batches * self.global_batch_size
        used = self.batches_per_epoch * self.global_batch_size
        positions = np.arange(mega * size, min((mega + 1) * size, used), dtype=np.int64)
        members = self.order(epoch, positions % self.num_samples)  # cycles only when N < G
        members = members[np.argsort(self._lengths_of(members), kind="stable")]
        self._mega_cache = (epoch, mega, members)
        return members

    def batch_keys(self, batch_index: int) -> list[tuple[int, int]]:
        epoch, slot = divmod(batch_index, self.batches_per_epoch)
        mega, within = divmod(slot, self.bucket_batches)
        if self.shuffle:  # the order of the mega-batch's batches
            count = min(self.bucket_batches, self.batches_per_epoch - mega * self.bucket_batches)
            key = mix_seed(self.seed, epoch, _BATCH_ORDER, mega)
            within = int(SeededPermutation(count, key)([within])[0])
        first = within * self.global_batch_size + self.rank * self.batch_size
        indices = self.mega_batch(epoch, mega)[first : first + self.batch_size]
        return [(index, epoch) for index in indices.tolist()]


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """Share of padded positions when each batch (of dataset indices) is padded to its longest
    sample: 1 - real lengths / (batch size x longest), summed over the batches."""
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    real = sum(lengths[i] for batch in batches for i in batch)
    return 1.0 - real / padded if padded else 0.0
