"""HPM, hard patches mining (Wang et al., CVPR 2023): MAE that also learns where it reconstructs
badly, and hides those patches.

- A loss predictor, a second decoder branch as deep as the decoder with its own norm and one
  score per patch, reads the decoder's input and learns HPM's relative objective: for every two
  hidden patches of an image whose reconstruction losses differ, a logistic loss on the
  difference of their scores. It learns which patch is harder, not the loss values.
- A teacher, an exponential moving average of the encoder, the decoder's embedding and the loss
  predictor, scores every patch of the unmasked image. The mask hides `ratio` of the patches: a
  share growing linearly over training from 0 to `hard_share` (0.5) are the teacher's top-scored
  patches, the rest are drawn uniformly from the others (easy to hard).

The engine calls `HardPatchMasker.set_progress` once per step, before the step's forward
passes: that is where the teacher takes its EMA step toward the weights the last optimiser step
left, so gradient accumulation does not move it twice and a resumed run (the teacher is in the
state dict) continues exactly.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
import torch.nn.functional as F
from omnimask import Tokens
from omnimask.masking import RatioMasker, mask_count, mask_from_noise
from omnimask.seeding import sample_uniform
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from omnimask_vision.models.vit import (
    HiddenPatchPixels,
    MAEDecoder,
    MAEEncoder,
    block_on_last_tokens,
)  # fmt: skip


class HPMPrediction(NamedTuple):
    """The decoder's two outputs for the hidden patches, each row in increasing position."""

    pixels: Tensor  # [B, M, patch * patch * 3]
    scores: Tensor  # [B, M] predicted difficulty (a ranking score, not a loss value)


class LossPredictor(nn.Module):
    """HPM's loss-prediction branch: transformer blocks over the decoder's input, a norm, and a
    linear map to one score per token (HPM averages a pixel-sized linear output, which is the same
    function class)."""

    def __init__(self, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor, count: int) -> Tensor:
        """`[B, count]` scores of the last `count` tokens of `x` `[B, T, width]`."""
        x = block_on_last_tokens(self.blocks[-1], self.blocks[:-1](x), count)
        return self.head(self.norm(x)).squeeze(-1)


class HPMDecoder(MAEDecoder):
    """MAE's decoder plus the loss predictor, both reading the same `[class; visible; hidden]`
    sequence; returns an `HPMPrediction` for the hidden patches."""

    def __init__(
        self,
        encoder_dim: int,
        grid: tuple[int, int],
        patch: int,
        width: int,
        depth: int,
        heads: int,
    ) -> None:
        super().__init__(encoder_dim, grid, patch, width, depth, heads)
        self.loss_predictor = LossPredictor(width, depth, heads)

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> HPMPrediction:
        x, count = self.sequence(latent, mask)
        return HPMPrediction(self.reconstruct(x, count), self.loss_predictor(x, count))


def relative_loss(scores: Tensor, losses: Tensor) -> Tensor:
    """HPM's relative objective for `scores` and (detached) reconstruction `losses` `[B, M]`:
    over every ordered pair (i, j) of one row with `losses[j] != losses[i]`, binary cross
    entropy of `sigmoid(scores[j] - scores[i])` against `losses[j] > losses[i]`, averaged over
    those pairs. HPM writes it as `-log(sigmoid(d) + 1e-6)`; the logits form is the same loss
    without the epsilon, and stable for any score gap."""
    gaps = scores.unsqueeze(1) - scores.unsqueeze(2)  # [B, i, j]: scores[j] - scores[i]
    harder = losses.unsqueeze(1) > losses.unsqueeze(2)
    valid = (losses.unsqueeze(1) != losses.unsqueeze(2)).to(gaps.dtype)
    total = F.binary_cross_entropy_with_logits(
        gaps, harder.to(gaps.dtype), weight=valid, reduction="sum"
    )
    return total / valid.sum().clamp_min(1.0)


class HPMTarget(HiddenPatchPixels):
    """MAE's normalised-pixel MSE on the hidden patches, plus `loss_weight` times the loss
    predictor's relative objective against each hidden patch's own reconstruction error."""

    def __init__(self, per_patch: bool = True, loss_weight: float = 1.0) -> None:
        super().__init__(per_patch=per_patch)
        self.loss_weight = loss_weight

    def loss(self, prediction: HPMPrediction, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        pixels, scores = prediction
        per_patch = (pixels - target[mask].view_as(pixels)).square().mean(-1)  # [B, M]
        reconstruction = per_patch.mean()
        ranking = relative_loss(scores, per_patch.detach())
        return {
            "loss": reconstruction + self.loss_weight * ranking,
            "reconstruction": reconstruction.detach(),
            "loss_prediction": ranking.detach(),
        }


class HPMTeacher(nn.Module):
    """The EMA copy of the parts that score patches: encoder, decoder embedding, loss predictor.
    Frozen (no gradients, never in train mode); `update` moves it toward the student."""

    def __init__(self, encoder: MAEEncoder, decoder: HPMDecoder) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.embed = copy.deepcopy(decoder.embed)
        self.loss_predictor = copy.deepcopy(decoder.loss_predictor)
        self.register_buffer("pos_embed", decoder.pos_embed.clone(), persistent=False)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> HPMTeacher:
        return super().train(False)

    @torch.no_grad()
    def scores(self, tokens: Tokens) -> Tensor:
        """`[B, N]` predicted difficulty of every patch, in grid order, nothing masked."""
        nothing = torch.zeros(tokens.batch_size, tokens.num_tokens, dtype=torch.bool)
        x = self.embed(self.encoder(tokens, nothing.to(tokens.device)))
        table = self.pos_embed[0, 1:].to(x.dtype)
        x = torch.cat([x[:, :1], x[:, 1:] + table], dim=1)
        return self.loss_predictor(x, tokens.num_tokens).float()

    @torch.no_grad()
    def update(self, student: list[nn.Module], decay: float) -> None:
        """`teacher = decay * teacher + (1 - decay) * student`, parameter by parameter."""
        mine = [self.encoder, self.embed, self.loss_predictor]
        for teacher_part, student_part in zip(mine, student, strict=True):
            for ours, theirs in zip(
                teacher_part.parameters(), student_part.parameters(), strict=True
            ):
                ours.lerp_(theirs.detach().to(ours.dtype), 1.0 - decay)


class HardPatchMasker(RatioMasker):
    """HPM's masks (see the module docstring). `hard_share` is reached at the end of training;
    the teacher's EMA decay rises linearly from `ema_decay[0]` to `ema_decay[1]` over the first
    `ema_warmup` of training (HPM: 0.999 to 0.9999 over the first 100 of 800 epochs)."""

    def __init__(
        self,
        ratio: float,
        encoder: MAEEncoder,
        decoder: HPMDecoder,
        hard_share: float = 0.5,
        ema_decay: tuple[float, float] = (0.999, 0.9999),
        ema_warmup: float = 0.125,
    ) -> None:
        super().__init__(ratio)
        if not 0.0 <= hard_share <= 1.0:
            raise ValueError(f"mask.hpm.hard_share must be in [0, 1], got {hard_share}")
        if not all(0.0 <= d < 1.0 for d in ema_decay):
            raise ValueError(f"mask.hpm.ema_decay must be in [0, 1), got {ema_decay}")
        self.hard_share, self.ema_decay, self.ema_warmup = hard_share, tuple(ema_decay), ema_warmup
        self.teacher = HPMTeacher(encoder, decoder)
        # The student's parts, not registered here (they are the model's own submodules).
        self._student = [encoder, decoder.embed, decoder.loss_predictor]

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, hard_share={self.hard_share}, ema_decay={self.ema_decay}"

    def decay(self, progress: float) -> float:
        start, end = self.ema_decay
        rise = min(1.0, progress / self.ema_warmup) if self.ema_warmup > 0 else 1.0
        return start + (end - start) * rise

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        if self.training:
            self.teacher.update(self._student, self.decay(progress))

    def hard_count(self, num_masked: int) -> int:
        """How many of the hidden patches are the teacher's hardest at the current progress."""
        return int(num_masked * self.hard_share * min(max(self.progress, 0.0), 1.0))

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        noise = torch.rand(tokens.batch_size, tokens.num_tokens, generator=generator)
        return self.mask_from_noise(tokens, noise)

    def mask_from_seeds(self, tokens: Tokens, seeds: Tensor) -> Tensor:
        """Per-sample masks: the random part of row b from `seeds[b]` alone."""
        return self.mask_from_noise(tokens, sample_uniform(seeds, tokens.num_tokens))

    def mask_from_noise(self, tokens: Tokens, noise: Tensor) -> Tensor:
        """Hide the `hard_count` top-scored patches, then the lowest-noise others."""
        count = mask_count(tokens.num_tokens, self.current_ratio)
        hard = self.hard_count(count)
        if hard:
            hardest = self.teacher.scores(tokens).topk(hard, dim=1).indices.cpu()
            noise = noise.scatter(1, hardest, -1.0)  # below any uniform noise: hidden first
        return mask_from_noise(noise, count)
