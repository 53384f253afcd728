"""Point-BERT's tokenizer: a discrete VAE over point patches (stage 1).

patches --mini-PointNet--> features --DGCNN over patch centres--> code logits [B, G, V]
        --Gumbel-softmax (temperature 1 -> 1/16 over training)--> soft one-hot @ codebook
        --DGCNN--> per-patch features --FoldingNet-style decoder--> coarse and fine patch points.
Loss: Chamfer distance (L1 or L2 variant) of coarse and fine reconstructions to the true patch,
plus the KL divergence of the code distribution to a uniform prior, its weight ramped up from 0.

The DGCNN here is EdgeConv over the kNN graph of patch centres, its layer outputs
concatenated, as in Point-BERT's dVAE (which mixes information between neighbouring patches
before choosing codes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omnimask import Decoder, Encoder, MaskedModel, MaskedOutput, Target, Tokens
from omnimask.seeding import sample_generators
from torch import Tensor, nn

from omnimask_pointcloud.geometry import chamfer_distance, gather_points, knn
from omnimask_pointcloud.layers import MiniPointNet
from omnimask_pointcloud.models.point_mae import max_mean_pool

#: points unfolded from each coarse point (a 2 x 2 grid).
FOLD = 4
#: Separates the Gumbel noise from the masks drawn for the same samples.
GUMBEL_SALT = 1


class EdgeConv(nn.Module):
    """x_i <- max_j MLP([x_i, x_j - x_i]) over the patch's graph neighbours j."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * in_dim, out_dim), nn.LayerNorm(out_dim), nn.LeakyReLU(0.2)
        )

    def forward(self, x: Tensor, neighbours: Tensor) -> Tensor:
        near = gather_points(x, neighbours)  # [B, G, n, C]
        centre = x.unsqueeze(2).expand_as(near)
        return self.mlp(torch.cat([centre, near - centre], dim=-1)).max(2).values


class PatchGraphNet(nn.Module):
    """DGCNN-style: EdgeConv layers over the kNN graph of patch centres, outputs concatenated."""

    def __init__(self, in_dim: int, width: int, out_dim: int, layers: int, neighbours: int) -> None:
        super().__init__()
        self.neighbours = neighbours
        self.input = nn.Linear(in_dim, width)
        self.edges = nn.ModuleList(EdgeConv(width, width) for _ in range(layers))
        self.output = nn.Sequential(
            nn.Linear(width * layers, out_dim), nn.LayerNorm(out_dim), nn.LeakyReLU(0.2)
        )

    def forward(self, x: Tensor, centres: Tensor) -> Tensor:
        count = min(self.neighbours, centres.shape[1])
        neighbours = knn(centres, centres, count, backend="torch")
        x = self.input(x)
        outputs = []
        for edge in self.edges:
            x = edge(x, neighbours)
            outputs.append(x)
        return self.output(torch.cat(outputs, dim=-1))


class DVAEEncoder(Encoder):
    """Patches -> code logits `[B, G, V]`. The dVAE hides nothing: the mask is not read."""

    def __init__(self, dim: int, pointnet_width: int, graph_width: int, graph_layers: int,
                 graph_neighbours: int, vocab_size: int) -> None:  # fmt: skip
        super().__init__()
        self.patch_embed = MiniPointNet(dim, pointnet_width)
        self.graph = PatchGraphNet(dim, graph_width, dim, graph_layers, graph_neighbours)
        self.logits = nn.Linear(dim, vocab_size)

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        return self.logits(self.forward_features(tokens))

    def forward_features(self, tokens: Tokens) -> Tensor:
        return self.graph(self.patch_embed(tokens.extras["neighbourhood"]), tokens.positions)

    def pool(self, features: Tensor, tokens: Tokens) -> Tensor:
        return max_mean_pool(features)

    @torch.no_grad()
    def codes(self, tokens: Tokens) -> Tensor:
        """The discrete token id `[B, G]` of each patch (what the MPM stage predicts)."""
        return self.logits(self.forward_features(tokens)).argmax(-1)


class GumbelQuantizer(nn.Module):
    """Code logits -> codebook embeddings through a Gumbel-softmax relaxation.

    Training: soft one-hot of (logits + Gumbel noise) / temperature, temperature annealed
    exponentially from `start` to `end` as the engine reports progress (`set_progress`).
    Evaluation: the hard argmax code, i.e. the discrete token itself.
    """

    def __init__(
        self, vocab_size: int, token_dim: int, start: float = 1.0, end: float = 1 / 16
    ) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(vocab_size, token_dim))
        self.start, self.end = start, end
        self.temperature = start

    def set_progress(self, progress: float) -> None:
        self.temperature = self.start * (self.end / self.start) ** min(max(progress, 0.0), 1.0)

    def forward(self, logits: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            weights = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        else:
            weights = F.softmax((logits + noise) / self.temperature, dim=-1)
        return weights @ self.codebook


class FoldingDecoder(nn.Module):
    """One feature per patch -> `group_size // 4` coarse points, each unfolded into a 2 x 2 grid
    by an MLP of (feature, grid offset, coarse point): FoldingNet's folding, per patch."""

    def __init__(self, dim: int, group_size: int, width: int) -> None:
        super().__init__()
        if group_size % FOLD:
            raise ValueError(
                f"group_size must be a multiple of {FOLD} for the folding decoder, got {group_size}"
            )
        self.num_coarse = group_size // FOLD
        self.coarse = nn.Sequential(
            nn.Linear(dim, width), nn.ReLU(inplace=True), nn.Linear(width, 3 * self.num_coarse)
        )
        self.fold = nn.Sequential(
            nn.Linear(dim + 2 + 3, width), nn.ReLU(inplace=True),
            nn.Linear(width, width), nn.ReLU(inplace=True),
            nn.Linear(width, 3),
        )  # fmt: skip
        side = torch.linspace(-0.05, 0.05, 2)
        self.register_buffer("grid", torch.cartesian_prod(side, side), persistent=False)  # [4, 2]

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """`[B, G, D]` -> (coarse `[B, G, k/4, 3]`, fine `[B, G, k, 3]`)."""
        batch, groups, dim = features.shape
        coarse = self.coarse(features).reshape(batch, groups, self.num_coarse, 3)
        seeds = coarse.repeat_interleave(FOLD, dim=2)  # [B, G, k, 3]
        grid = self.grid.repeat(self.num_coarse, 1).expand(batch, groups, -1, -1)
        feature = features.unsqueeze(2).expand(-1, -1, seeds.shape[2], -1)
        fine = seeds + self.fold(torch.cat([feature, grid, seeds], dim=-1))
        return coarse, fine


class DVAEDecoder(Decoder):
    """Codebook embeddings -> DGCNN over patch centres -> folded patch points."""

    def __init__(self, token_dim: int, dim: int, graph_width: int, graph_layers: int,
                 graph_neighbours: int, group_size: int, fold_width: int) -> None:  # fmt: skip
        super().__init__()
        self.graph = PatchGraphNet(token_dim, graph_width, dim, graph_layers, graph_neighbours)
        self.folding = FoldingDecoder(dim, group_size, fold_width)

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.folding(self.graph(latent, tokens.positions))


@dataclass
class DVAEPrediction:
    """What the dVAE predicts for each patch: coarse and fine points, and the code logits."""

    coarse: Tensor
    fine: Tensor
    logits: Tensor


class DVAELoss(Target):
    """Chamfer reconstruction of every patch + a ramped KL to the uniform code prior.

    The KL weight grows linearly from 0 to `kl_weight` over the first `kl_ramp` fraction of
    training (Point-BERT ramps it 0 -> 0.1), so codes are first learnt for reconstruction.
    """

    def __init__(self, variant: str, kl_weight: float, kl_ramp: float) -> None:
        super().__init__()
        self.variant, self.kl_max, self.kl_ramp = variant, kl_weight, kl_ramp
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    @property
    def kl_weight(self) -> float:
        return (
            self.kl_max * min(1.0, self.progress / self.kl_ramp)
            if self.kl_ramp > 0
            else self.kl_max
        )

    def forward(self, batch: dict, tokens: Tokens) -> Tensor:
        return tokens.extras["neighbourhood"]

    def loss(self, prediction: DVAEPrediction, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        k = target.shape[-2]
        truth = target.reshape(-1, k, 3)
        coarse = chamfer_distance(prediction.coarse.reshape(len(truth), -1, 3), truth, self.variant)
        fine = chamfer_distance(prediction.fine.reshape(len(truth), -1, 3), truth, self.variant)
        log_q = F.log_softmax(prediction.logits.float(), dim=-1)
        kl = (log_q.exp() * (log_q + math.log(log_q.shape[-1]))).sum(-1).mean()
        weight = torch.tensor(self.kl_weight)
        return {
            "loss": coarse + fine + weight * kl,
            "reconstruction": (coarse + fine).detach(),
            "chamfer_fine": fine.detach(),
            "kl": kl.detach(),
            "kl_weight": weight,
        }


class DVAEModel(MaskedModel):
    """The dVAE as a `MaskedModel`. It hides nothing from its encoder: the mask it draws is the
    MPM stage's block mask, kept only so its figure shows what stage 2 will hide (and so the
    conformance kit exercises that masker here too). The Gumbel noise comes from the step's
    generator, per sample id like masks, so runs reproduce exactly."""

    def __init__(
        self,
        tokenizer: nn.Module,
        masker: nn.Module,
        encoder: DVAEEncoder,
        quantizer: GumbelQuantizer,
        decoder: DVAEDecoder,
        target: DVAELoss,
    ) -> None:
        super().__init__(tokenizer, masker, encoder, decoder, target)
        self.quantizer = quantizer

    def gumbel_noise(
        self, shape: torch.Size, batch: dict, generator: torch.Generator | None
    ) -> Tensor:
        generators = sample_generators(
            batch.get("sample_id"), generator, GUMBEL_SALT, rows=shape[0]
        )
        rows = [torch.rand(shape[1:], generator=row) for row in generators]
        uniform = torch.stack(rows).clamp(1e-9, 1 - 1e-9)
        return -torch.log(-torch.log(uniform))

    def predict(self, batch: dict, generator: torch.Generator | None = None) -> MaskedOutput:
        tokens = self.tokenizer(batch)
        mask = self.draw_mask(tokens, batch, generator)
        logits = self.encoder(tokens, mask)
        noise = (
            self.gumbel_noise(logits.shape, batch, generator).to(logits) if self.training else None
        )
        coarse, fine = self.decoder(self.quantizer(logits, noise), tokens, mask)
        prediction = DVAEPrediction(coarse, fine, logits)
        target = self.target(batch, tokens)
        num_tokens = tokens.count_tensor()
        losses = {**self.target.loss(prediction, target, mask), "num_tokens": num_tokens}
        return MaskedOutput(tokens, mask, prediction, target, losses)
