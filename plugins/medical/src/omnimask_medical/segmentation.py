"""Segmentation evaluation of a MambaMIM encoder: Dice of organ label maps on CT.

MambaMIM's users pretrain for segmentation (the paper fine-tunes on BTCV and seven other
benchmarks), so this is its headline protocol. A light segmentation head reads the encoder's
multi-scale feature maps (strides 1, 2, ..., 2**len(widths)), FPN-style: each map is projected
to one width, the coarsest is upsampled and added to the next finer, refined by a 3^3 conv block,
down to full resolution, where a 1^3 conv gives per-voxel class logits. Two protocols:

- `segmentation_probe`: the encoder is frozen (its features are computed once), only the head
  is trained: what the pretrained features already hold;
- `segmentation_finetune`: encoder and head are trained end to end.

The loss is cross-entropy + soft Dice (the nnU-Net combination, robust to small organs). Dice per
label, `2 |P & G| / (|P| + |G|)` per test volume, is averaged over the volumes where the label is
present in the truth or the prediction, and `dice_mean` over the foreground labels.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from omnimask import MaskedModel
from omnimask.engine.optim import warmup_cosine
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from omnimask_medical.config import SegmentationConfig
from omnimask_medical.models.encoder import ChannelsFirstLayerNorm


class SegmentationHead(nn.Module):
    """Multi-scale feature maps (finest first) -> per-voxel class logits at the finest scale."""

    def __init__(self, widths: tuple[int, ...], width: int, num_classes: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv3d(w, width, 1) for w in widths)
        self.refine = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(width, width, 3, padding=1), ChannelsFirstLayerNorm(width), nn.GELU()
            )
            for _ in widths[:-1]
        )
        self.classify = nn.Conv3d(width, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.lateral[-1](features[-1])
        for level in reversed(range(len(features) - 1)):
            finer = features[level]
            x = F.interpolate(x, size=finer.shape[2:], mode="trilinear", align_corners=False)
            x = self.refine[level](x + self.lateral[level](finer))
        return self.classify(x)


def dice_scores(prediction: Tensor, truth: Tensor, num_classes: int) -> Tensor:
    """Dice `[V, C-1]` of each foreground label in each of V volumes (`[V, ...]` class indices);
    NaN where a label is in neither the prediction nor the truth."""
    flat_p, flat_t = prediction.flatten(1), truth.flatten(1)
    scores = []
    for label in range(1, num_classes):
        p, t = flat_p == label, flat_t == label
        overlap = (p & t).sum(1).double()
        total = p.sum(1).double() + t.sum(1).double()
        scores.append(torch.where(total > 0, 2 * overlap / total.clamp_min(1), math.nan))
    return torch.stack(scores, dim=1)


def soft_dice_loss(logits: Tensor, truth: Tensor) -> Tensor:
    """1 - mean over foreground labels of the batch's soft Dice (softmax probabilities)."""
    probs = logits.softmax(1)
    onehot = F.one_hot(truth, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    dims = (0, *range(2, probs.ndim))
    overlap = (probs * onehot).sum(dims)[1:]
    total = (probs + onehot).sum(dims)[1:]
    return 1 - (2 * overlap / total.clamp_min(1e-6)).mean()


class Segmenter(nn.Module):
    """The run's tokenizer and encoder (frozen or not) with a `SegmentationHead`."""

    def __init__(self, model: MaskedModel, num_classes: int, width: int) -> None:
        super().__init__()
        self.tokenizer, self.encoder = model.tokenizer, model.encoder
        self.head = SegmentationHead(tuple(model.encoder.widths), width, num_classes)

    def features(self, volume: Tensor) -> list[Tensor]:
        return self.encoder.forward_features(self.tokenizer({"volume": volume}))

    def forward(self, volume: Tensor) -> Tensor:
        return self.head(self.features(volume))


def _stack(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """All volumes `[N, 1, S, S, S]` and label maps `[N, S, S, S]` of a (small) labelled set."""
    samples = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return (
        torch.stack([s["volume"] for s in samples]),
        torch.stack([s["segmentation"] for s in samples]),
    )


def evaluate_segmentation(
    model: MaskedModel,
    train_set: Dataset,
    test_set: Dataset,
    config: SegmentationConfig,
    organs: tuple[str, ...],
    finetune: bool,
    seed: int,
    name: str = "model",
) -> dict[str, float]:
    """Train a head (and, with `finetune`, the encoder) on `train_set`; Dice on `test_set`.

    `model` is left untouched; head init and batch order follow `seed`."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    segmenter = Segmenter(copy.deepcopy(model), len(organs), config.head_width).to(device)
    volumes, truths = (t.to(device) for t in _stack(train_set))
    segmenter.encoder.train(finetune)
    segmenter.encoder.requires_grad_(finetune)
    frozen = None
    if not finetune:  # the probe's features never change: compute them once
        with torch.no_grad():
            frozen = [segmenter.features(volumes[i : i + 1]) for i in range(len(volumes))]
    trained = segmenter.parameters() if finetune else segmenter.head.parameters()
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, config.warmup_steps, config.steps, 0.0)
    )
    order = torch.Generator().manual_seed(seed)
    what = "fine-tune" if finetune else "probe"
    for _ in tqdm(range(config.steps), desc=f"{name}: segmentation {what}", leave=False):
        rows = torch.randperm(len(volumes), generator=order)[: config.batch_size].tolist()
        if frozen is None:
            logits = segmenter(volumes[rows])
        else:
            levels = zip(*(frozen[r] for r in rows))
            logits = segmenter.head([torch.cat(maps) for maps in levels])
        truth = truths[rows]
        loss = F.cross_entropy(logits, truth) + config.dice_weight * soft_dice_loss(logits, truth)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return segmentation_dice(segmenter, test_set, organs)


@torch.no_grad()
def segmentation_dice(
    segmenter: Segmenter, test_set: Dataset, organs: tuple[str, ...]
) -> dict[str, float]:
    """`dice_mean` and `dice/<organ>` of `segmenter` on every volume of `test_set`."""
    device = next(segmenter.parameters()).device
    segmenter.eval()
    scores = []
    for index in range(len(test_set)):  # type: ignore[arg-type]
        sample = test_set[index]
        logits = segmenter(sample["volume"].unsqueeze(0).to(device))
        scores.append(
            dice_scores(logits.argmax(1).cpu(), sample["segmentation"][None], len(organs))
        )
    per_label = torch.cat(scores).nanmean(0)
    figures = {f"dice/{organ}": float(d) for organ, d in zip(organs[1:], per_label)}
    return {"dice_mean": float(per_label.nanmean()), **figures}
