"""`train.compile`: a compiled model returns the same losses as the eager one (the compiled
engine run is tested in test_engine.py)."""

from __future__ import annotations

import torch
from omnimask import MaskedModel
from torch import Tensor
from toy_recipe import HalfMasker, ToyDecoder, ToyEncoder, ToyTarget, ToyTokenizer


class IndexingTarget(ToyTarget):
    """Scores the masked tokens picked by boolean indexing, a data-dependent shape that makes
    torch.compile break the graph inside `Target.loss` (as MAE's loss does)."""

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return {"loss": (prediction[mask] - target[mask]).pow(2).mean()}


def test_compiled_model_returns_every_loss() -> None:
    # Regression: torch 2.11's dynamo dropped the "loss" key when `predict` added "num_tokens"
    # to the dict returned from behind such a graph break.
    torch.manual_seed(0)
    model = MaskedModel(
        ToyTokenizer(), HalfMasker(), ToyEncoder(16, 0.0), ToyDecoder(16), IndexingTarget()
    )
    batch = {"values": torch.randn(4, 8, 4)}
    eager = model(batch, torch.Generator().manual_seed(3))
    compiled = torch.compile(model, backend="eager")(batch, torch.Generator().manual_seed(3))
    assert compiled.keys() == eager.keys() == {"loss", "num_tokens"}
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value)
