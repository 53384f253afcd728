"""`Tokens`: the one data structure every tokenizer produces and every masker and encoder reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Tokens:
    """A batch of tokens.

    Attributes:
        values: embeddings-ready features `[B, N, D]` or integer ids `[B, N]`.
        positions: where each token sits, `[B, N, P]`: grid indices, xyz centres or times.
        grid: the regular grid shape the N tokens flatten (row-major), e.g. `(14, 14)`
            or `(8, 14, 14)`; None for irregular tokens such as point groups.
        padding: `[B, N]` bool, True where a token is padding; None when nothing is padded.
        extras: modality-specific tensors indexed by batch first (e.g. point-group members).
    """

    values: Tensor
    positions: Tensor | None = None
    grid: tuple[int, ...] | None = None
    padding: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.values.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.values.shape[1]

    @property
    def device(self) -> torch.device:
        return self.values.device

    def count(self) -> int:
        """Number of real (non-padding) tokens in the batch: what tokens/s is measured in."""
        if self.padding is None:
            return self.batch_size * self.num_tokens
        return int((~self.padding).sum())

    def count_tensor(self) -> Tensor:
        """`count()` as a float scalar tensor: the `num_tokens` entry of every losses dict.

        Take it before building that dict: `count()` of padded tokens breaks a torch.compile
        graph, and dynamo (torch 2.11) lost dict entries built or mutated across such a break.
        """
        return torch.tensor(float(self.count()))

    def rows(self, index: slice | Tensor) -> Tokens:
        """The tokens of the selected batch rows (every batch-first tensor is indexed).

        Called once per sample per step when masks are drawn per sample, so it builds the result
        directly rather than through `dataclasses.replace`.
        """

        def take(value: Any) -> Any:
            return value[index] if isinstance(value, Tensor) else value

        return Tokens(
            self.values[index],
            take(self.positions),
            self.grid,
            take(self.padding),
            {key: take(value) for key, value in self.extras.items()} if self.extras else {},
        )
