"""Fine-tuning evaluation: layer-wise lr decay and drop path against their definitions (BEiT's
formula, timm's own stochastic-depth rule), the protocol on the toy recipe, and the CLI."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch
from omnimask import Recipe, plugins
from omnimask.cli import main
from omnimask.evaluation import EvalDataError, labelled_datasets
from omnimask.finetune import (
    EncoderClassifier,
    build_finetune_optimizer,
    finetune_accuracy,
    set_drop_path,
)
from omnimask.plugins import discover
from omnimask.recipe import FinetuneConfig
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from toy_recipe import LabelledToyData, ToyRecipe

TOY = EntryPoint(name="toy", value="fake_plugins:toy", group=plugins.ENTRY_POINT_GROUP)


class ViTEncoder(nn.Module):
    """timm's ViT under the names our encoders use: `pos_embed`, `blocks.N`, a final `norm`."""

    def __init__(self, depth: int, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        vit = VisionTransformer(
            img_size=16, patch_size=8, embed_dim=16, depth=depth, num_heads=2,
            num_classes=0, drop_path_rate=drop_path_rate,
        )  # fmt: skip
        self.patch_embed, self.pos_embed, self.cls_token = (
            vit.patch_embed,
            vit.pos_embed,
            vit.cls_token,
        )
        self.blocks, self.norm = vit.blocks, vit.norm


class ViTModel(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.tokenizer = nn.Identity()
        self.encoder = ViTEncoder(depth)


def test_layer_decay_gives_block_i_lr_times_decay_to_the_depth_above_it() -> None:
    """BEiT / MAE: with L blocks, embeddings get lr * d^(L+1), block i (from 0) lr * d^(L-i),
    the final norm and the head the full lr."""
    depth, decay, lr = 4, 0.5, 1e-3
    classifier = EncoderClassifier(ViTModel(depth), dim=16, num_classes=3)  # type: ignore[arg-type]
    optimizer = build_finetune_optimizer(classifier, FinetuneConfig(lr=lr, layer_decay=decay))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(classifier.named_parameters())
    expected = {
        "encoder.pos_embed": lr * decay ** (depth + 1),
        "encoder.patch_embed.proj.weight": lr * decay ** (depth + 1),
        "encoder.norm.weight": lr,
        "head.weight": lr,
        "norm.bias": lr,
    }
    for i in range(depth):
        expected[f"encoder.blocks.{i}.attn.qkv.weight"] = lr * decay ** (depth - i)
        expected[f"encoder.blocks.{i}.mlp.fc2.bias"] = lr * decay ** (depth - i)
    for name, value in expected.items():
        assert lr_of[id(named[name])] == pytest.approx(value), name
    assert len(lr_of) == len(named)  # every parameter is trained


def test_no_layer_decay_trains_everything_at_one_lr() -> None:
    classifier = EncoderClassifier(ViTModel(3), dim=16, num_classes=3)  # type: ignore[arg-type]
    optimizer = build_finetune_optimizer(classifier, FinetuneConfig(lr=2e-3, layer_decay=1.0))
    assert {g["lr"] for g in optimizer.param_groups} == {2e-3}


def test_drop_path_follows_timms_linear_rule() -> None:
    """Setting drop path on blocks built without it gives the rates timm builds them with."""
    ours = ViTEncoder(depth=5)
    assert set_drop_path(ours, 0.2) == 5
    reference = ViTEncoder(depth=5, drop_path_rate=0.2)
    for mine, theirs in zip(ours.blocks, reference.blocks):
        for slot in ("drop_path1", "drop_path2"):
            a, b = getattr(mine, slot), getattr(theirs, slot)
            assert type(a) is type(b)
            if isinstance(b, DropPath):
                assert a.drop_prob == pytest.approx(b.drop_prob)


def test_finetuning_learns_the_labels_and_leaves_the_model_alone() -> None:
    recipe = ToyRecipe()
    config = recipe.config("demo")
    torch.manual_seed(0)
    model = recipe.build_model(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = FinetuneConfig(steps=60, batch_size=8, lr=1e-2, warmup_steps=5)
    train, test = LabelledToyData(40, seed=2), LabelledToyData(20, seed=3)
    first = finetune_accuracy(model, recipe, settings, train, test, num_classes=2, seed=0)
    assert first >= 0.9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = finetune_accuracy(model, recipe, settings, train, test, num_classes=2, seed=0)
    assert again == first  # the same seed, the same protocol


class UnlabelledRecipe(ToyRecipe):
    labelled_layout = "a folder of <class>/*.npy files"

    def build_eval_datasets(self, config, path=None):  # noqa: ANN001, ANN201
        return Recipe.build_eval_datasets(self, config, path)


def test_a_recipe_without_labelled_data_names_data_and_the_layout() -> None:
    recipe = UnlabelledRecipe()
    with pytest.raises(EvalDataError, match=r"pass --data with a folder of <class>/\*\.npy"):
        labelled_datasets(recipe, recipe.config("demo"), None)


@pytest.fixture
def toy_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(plugins, "_entry_points", lambda: [TOY])
    discover.cache_clear()
    run = tmp_path / "run"
    fast = ["train.steps=6", "train.progress=false", "train.checkpoint_every=3"]
    assert main(["pretrain", "toy/mim", "--run-dir", str(run), *fast]) == 0
    yield run
    discover.cache_clear()


def test_cli_eval_finetune_scores_both_sides_with_the_overrides(toy_run: Path) -> None:
    assert main(["eval", str(toy_run), "--protocol", "finetune", "finetune.steps=40"]) == 0
    result = json.loads((toy_run / "eval.json").read_text())
    assert result["protocols"] == ["finetune"] and result["finetune"]["steps"] == 40
    for side in ("pretrained", "random_init"):
        assert set(result[side]) == {"finetune_accuracy"}
        assert result[side]["finetune_accuracy"] >= 0.9  # two separable clusters


def test_cli_eval_unknown_protocol_is_one_line_listing_the_recipes_protocols(
    toy_run: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["eval", str(toy_run), "--protocol", "linear,probe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("omnimask: error: ")
    assert "has no protocol 'probe'; choose from linear, knn, finetune" in err


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=1", "eval takes finetune.* overrides only, got 'train.lr=1'"),
        ("finetune.stepz=3", "unknown config key 'finetune.stepz'"),
    ],
)
def test_cli_eval_bad_override_is_one_line(
    toy_run: Path, override: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    assert main(["eval", str(toy_run), "--protocol", "finetune", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("omnimask: error: ") and message in err
