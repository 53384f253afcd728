"""End-to-end fine-tuning evaluation: the encoder plus a classification head, all trained.

The headline protocol of SparK, MAE, Point-MAE, VideoMAE and MambaMIM. The papers' recipe, as
far as it carries over to every modality, each choice in the recipe's `finetune` config section:
AdamW with a warmup + cosine schedule, layer-wise lr decay (BEiT / MAE: a block `i` of `L` gets
`lr * layer_decay ** (L + 1 - i)`), label smoothing, and stochastic depth (drop path) over the
encoder's residual blocks. Left out: mixup / cutmix and RandAugment, which are image-specific
and belong to a plugin's data pipeline.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device
from timm.layers import DropPath, trunc_normal_
from timm.optim import create_optimizer_v2
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from omnimask.engine.optim import warmup_cosine
from omnimask.model import Batch, MaskedModel
from omnimask.recipe import FinetuneConfig, Recipe

logger = logging.getLogger("omnimask")

#: A numbered block inside the encoder: `blocks.3.`, `layers.3.`, `stages.3.`, `layer3.`...
BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:blocks|layers|layer|stages|stage)\.?(\d+)\.")
#: Attribute names under which timm-style blocks keep their stochastic-depth module.
DROP_PATH_SLOTS = ("drop_path", "drop_path1", "drop_path2")


class EncoderClassifier(nn.Module):
    """A pretrained run's tokenizer and encoder, pooled as `MaskedModel.embed` pools them, with
    a LayerNorm + linear head (MAE's `fc_norm` and head, the head initialised small)."""

    def __init__(self, model: MaskedModel, dim: int, num_classes: int) -> None:
        super().__init__()
        self.tokenizer = model.tokenizer
        self.encoder = model.encoder
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, batch: Batch) -> Tensor:
        tokens = self.tokenizer(batch)
        pooled = self.encoder.pool(self.encoder.forward_features(tokens), tokens)
        return self.head(self.norm(pooled))

    def group_matcher(self, coarse: bool = False) -> Any:
        """timm's hook for layer-wise lr decay: the depth of a parameter from its name."""
        num_blocks = encoder_depth(self.encoder)

        def depth(name: str) -> int:
            if name.startswith("tokenizer."):
                return 0
            match = BLOCK_PATTERN.search(name) if name.startswith("encoder.") else None
            if match is not None:
                return int(match.group(1)) + 1
            if name.startswith("encoder.") and not _after_blocks(name):
                return 0  # embeddings: patch / position embeddings, class and mask tokens
            return num_blocks + 1  # final norm and head

        return depth

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.encoder, "no_weight_decay", None)
        return {f"encoder.{name}" for name in inner()} if callable(inner) else set()


def _after_blocks(name: str) -> bool:
    """An encoder parameter outside its blocks that comes after them (a final norm)."""
    leaf = name.split(".")[-2] if name.count(".") >= 2 else name
    return "norm" in leaf or "head" in leaf or leaf in ("fc_norm", "final")


def encoder_depth(encoder: nn.Module) -> int:
    """The number of numbered blocks (`blocks.N`, `layers.N`...) in the encoder."""
    found = {
        int(m.group(1))
        for n, _ in encoder.named_parameters()
        if (m := BLOCK_PATTERN.search(f".{n}"))
    }
    return max(found) + 1 if found else 0


def set_drop_path(encoder: nn.Module, rate: float) -> int:
    """Stochastic depth over the encoder's residual blocks, increasing linearly with depth up to
    `rate` (timm's rule). Blocks keep their drop-path module under one of `DROP_PATH_SLOTS`; an
    `nn.Identity` there (built with rate 0) is replaced. Returns the number of blocks set."""
    blocks = [
        module
        for module in encoder.modules()
        if any(
            isinstance(getattr(module, slot, None), (nn.Identity, DropPath))
            for slot in DROP_PATH_SLOTS
        )
    ]
    for index, block in enumerate(blocks):
        block_rate = rate * index / max(1, len(blocks) - 1)
        for slot in DROP_PATH_SLOTS:
            if isinstance(getattr(block, slot, None), (nn.Identity, DropPath)):
                setattr(block, slot, DropPath(block_rate) if block_rate > 0 else nn.Identity())
    return len(blocks)


def build_finetune_optimizer(
    classifier: EncoderClassifier, config: FinetuneConfig
) -> torch.optim.Optimizer:
    """AdamW (timm) with no decay on norms, biases and tokens, and layer-wise lr decay through
    timm's `param_groups_layer_decay`. Each group's lr is pre-scaled by its `lr_scale`, since the
    schedule below is a torch `LambdaLR` (timm's own schedulers apply `lr_scale` themselves)."""
    layer_decay = config.layer_decay if config.layer_decay < 1.0 else None
    optimizer = create_optimizer_v2(
        classifier,
        opt="adamw",
        lr=config.lr,
        weight_decay=config.weight_decay,
        layer_decay=layer_decay,
        filter_bias_and_bn=True,
    )
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
    return optimizer


def _batches(dataset: Dataset, recipe: Recipe, batch_size: int, seed: int) -> Iterator[Batch]:
    """Shuffled batches forever, each epoch's order drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    size = len(dataset)  # type: ignore[arg-type]
    drop_last = size > batch_size
    while True:
        loader = DataLoader(
            dataset,
            batch_size=min(batch_size, size),
            shuffle=True,
            generator=generator,
            collate_fn=recipe.collate,
            drop_last=drop_last,
        )
        yield from loader


@torch.no_grad()
def classifier_accuracy(
    classifier: EncoderClassifier, recipe: Recipe, dataset: Dataset, batch_size: int = 64
) -> float:
    device = next(classifier.parameters()).device
    classifier.eval()
    correct = total = 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=recipe.collate):
        labels = torch.as_tensor(batch["label"]).to(device)
        predicted = classifier(send_to_device(batch, device)).argmax(-1)
        correct += int((predicted == labels).sum())
        total += len(labels)
    return correct / max(1, total)


def finetune_accuracy(
    model: MaskedModel,
    recipe: Recipe,
    config: FinetuneConfig,
    train_set: Dataset,
    test_set: Dataset,
    num_classes: int,
    seed: int = 0,
    name: str = "model",
) -> float:
    """Fine-tune a copy of `model`'s encoder with a new head on `train_set`; its test accuracy.

    `model` itself is left untouched. Everything random (head init, batch order, drop path)
    follows `seed`, so the pretrained and the random-init model see the same protocol."""
    model = copy.deepcopy(model)
    device = next(model.parameters()).device
    probe = next(_batches(train_set, recipe, 2, seed))
    model.eval()
    with torch.no_grad():
        dim = model.embed(send_to_device(probe, device)).shape[-1]
    torch.manual_seed(seed)
    classifier = EncoderClassifier(model, dim, num_classes).to(device)
    if config.drop_path > 0 and set_drop_path(classifier.encoder, config.drop_path) == 0:
        logger.warning(
            "finetune.drop_path=%s: the encoder has no residual blocks to drop", config.drop_path
        )
    optimizer = build_finetune_optimizer(classifier, config)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup_steps, config.steps, 0.0)
    )
    batches = _batches(train_set, recipe, config.batch_size, seed)
    classifier.train()
    bar = tqdm(range(config.steps), desc=f"{name}: fine-tune", unit="step", leave=False)
    for _ in bar:
        batch = send_to_device(next(batches), device)
        logits = classifier(batch)
        loss = F.cross_entropy(
            logits, batch["label"].long(), label_smoothing=config.label_smoothing
        )
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"{name}: non-finite fine-tuning loss; lower finetune.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad > 0:
            nn.utils.clip_grad_norm_(classifier.parameters(), config.clip_grad)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{value:.3f}")
    return classifier_accuracy(classifier, recipe, test_set)
