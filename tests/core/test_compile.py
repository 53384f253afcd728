"""`train.compile`: a compiled model returns the same losses as the eager one, and a compiled
run trains like an eager run."""

from __future__ import annotations

from pathlib import Path

import torch
from omnimask import MaskedModel
from omnimask.config import apply_overrides
from omnimask.engine import Engine
from omnimask.engine.checkpoint import list_checkpoints
from omnimask.engine.metrics import read_metrics
from safetensors.torch import load_file
from torch import Tensor
from toy_recipe import HalfMasker, ToyDecoder, ToyEncoder, ToyRecipe, ToyTarget, ToyTokenizer


class IndexingTarget(ToyTarget):
    """Scores the masked tokens picked by boolean indexing, a data-dependent shape that makes
    torch.compile break the graph inside `Target.loss` (as MAE's loss does)."""

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return {"loss": (prediction[mask] - target[mask]).pow(2).mean()}


def newest_checkpoint(run_dir: Path) -> Path:
    return list_checkpoints(run_dir / "checkpoints")[0][1]


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


def test_compiled_run_trains_like_the_eager_run(tmp_path: Path) -> None:
    recipe = ToyRecipe()
    metrics = []
    names = ("eager", "compiled")
    for name, compile_flag in zip(names, ("false", "true")):
        # No dropout: inductor draws its dropout masks from its own generator.
        overrides = [f"train.compile={compile_flag}", "model.dropout=0.0"]
        config = apply_overrides(recipe.config("demo"), overrides)
        Engine(recipe, config, tmp_path / name).run()
        run = read_metrics(tmp_path / name / "metrics.jsonl")
        metrics.append([run[step]["loss"] for step in sorted(run)])
    eager, compiled = metrics
    assert len(compiled) == len(eager) == recipe.config("demo").train.steps
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)
    # The compiled run's checkpoints hold the plain model's keys (no `_orig_mod.` prefix), so
    # eval, export and resuming read them like any other run's.
    saved = [load_file(newest_checkpoint(tmp_path / name) / "model.safetensors") for name in names]
    assert saved[1].keys() == saved[0].keys()
    for key, value in saved[0].items():
        torch.testing.assert_close(saved[1][key], value, rtol=1e-4, atol=1e-6)
