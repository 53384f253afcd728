"""Point-BERT's tokenizer: a discrete VAE over point patches (stage 1).

patches --mini-PointNet--> features --DGCNN over patch centres--> code logits [B, G, V]
        --Gumbel-softmax (temperature cosine-annealed 1 -> 1/16)--> soft one-hot @ codebook
        --DGCNN--> per-patch features --FoldingNet-style decoder--> coarse and fine patch points.
Loss: Chamfer-L1 of the coarse and the fine reconstruction to the true patch, plus the KL
divergence between the uniform prior and each cloud's code distribution (the softmax averaged
over the cloud's patches), its weight 0 for a while, then cosine-ramped up to 0.1.

The KL is taken on the per-cloud AVERAGE of the patch distributions, as Point-BERT's code does
(`models/dvae.py`, `get_loss`: `softmax(logits).mean(dim=1)`, then `F.kl_div(log mean, log
uniform, reduction="batchmean", log_target=True)`, i.e. KL(uniform || mean)). It rewards a cloud
for spreading its patches over many codes and leaves each patch free to be confident. Applied
to every patch's own distribution, the same term pushes every patch's logits flat, and then the
decoder learns to ignore the codes (the collapse of issue #17).

The DGCNN is EdgeConv over the kNN graph of patch centres (4 neighbours, the patch itself
included), edge features [x_j - x_i, x_i], GroupNorm(4) and LeakyReLU(0.2), the layer outputs
concatenated and projected (Point-BERT: input 128, layers 256, 512, 512, 1024). The encoder's
DGCNN projects straight to the code logits, as Point-BERT's `dgcnn_1` does. Options the demo
preset uses (`config.dvae_demo`): other normalisations per DGCNN (`groups` 0: per channel, -1:
none) and the initial gain of the logits' GroupNorm (`logit_scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omnimask import CodeIds, Decoder, Encoder, MaskedModel, MaskedOutput, Target, Tokens
from omnimask.seeding import sample_generators
from torch import Tensor, nn

from omnimask_pointcloud.geometry import chamfer_distance, gather_points, knn
from omnimask_pointcloud.layers import MiniPointNet
from omnimask_pointcloud.models.point_mae import max_mean_pool

#: points unfolded from each coarse point (a 2 x 2 grid).
FOLD = 4
#: Separates the Gumbel noise from the masks drawn for the same samples.
GUMBEL_SALT = 1


def cosine_ramp(step: float, start: float, end: float, steps: int, delay: int = 0) -> float:
    """`start` until `delay`, then half a cosine from `start` to `end` over `steps` steps, then
    `end` (Point-BERT's `get_temp` and `compute_loss` schedules, `tools/runner.py`)."""
    if steps <= 0:
        return end if step >= delay else start
    t = min(max((step - delay) / steps, 0.0), 1.0)
    return end + (start - end) * (1 + math.cos(math.pi * t)) / 2


class GroupNormLast(nn.GroupNorm):
    """GroupNorm of channels-last features `[B, ..., C]`, statistics per sample over each
    channel group and every other axis (as a GroupNorm of `[B, C, ...]` would)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.movedim(-1, 1)).movedim(1, -1)


def group_norm(groups: int, channels: int) -> nn.Module:
    """GroupNorm of `groups` groups over channels-last features; 0: one group per channel, i.e.
    each channel standardised over the cloud's patches (and neighbours); negative: none."""
    if groups < 0:
        return nn.Identity()
    return GroupNormLast(groups or channels, channels)


class EdgeConv(nn.Module):
    """x_i <- max_j LeakyReLU(GroupNorm(W [x_j - x_i, x_i])) over the patch's graph neighbours j."""

    def __init__(self, in_dim: int, out_dim: int, groups: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * in_dim, out_dim, bias=False)
        self.norm = group_norm(groups, out_dim)

    def forward(self, x: Tensor, neighbours: Tensor) -> Tensor:
        near = gather_points(x, neighbours)  # [B, G, n, C]
        centre = x.unsqueeze(2).expand_as(near)
        edges = self.linear(torch.cat([near - centre, centre], dim=-1))
        return F.leaky_relu(self.norm(edges), 0.2).max(2).values


class PatchDGCNN(nn.Module):
    """DGCNN over the kNN graph of patch centres: an input projection, EdgeConv layers of the
    given widths, their outputs concatenated and projected to `out_dim` (GroupNorm, LeakyReLU).
    `groups=0` normalises each channel on its own, `groups=-1` not at all (the demo preset: see
    `config.dvae_demo`); `out_scale` is the output GroupNorm's initial gain."""

    def __init__(self, in_dim: int, out_dim: int, input_width: int, widths: tuple[int, ...],
                 neighbours: int, groups: int, out_scale: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        for width in (*widths, out_dim) if groups > 0 else ():
            if width % groups:
                raise ValueError(f"DGCNN width {width} is not a multiple of {groups} norm groups")
        self.neighbours = neighbours
        self.input = nn.Linear(in_dim, input_width)
        ins = (input_width, *widths[:-1])
        self.edges = nn.ModuleList(EdgeConv(i, o, groups) for i, o in zip(ins, widths))
        self.output = nn.Linear(sum(widths), out_dim, bias=False)
        self.norm = group_norm(groups, out_dim)
        if isinstance(self.norm, nn.GroupNorm):
            nn.init.constant_(self.norm.weight, out_scale)

    def forward(self, x: Tensor, centres: Tensor) -> Tensor:
        count = min(self.neighbours, centres.shape[1])
        neighbours = knn(centres, centres, count, backend="torch")
        x = self.input(x)
        outputs = []
        for edge in self.edges:
            x = edge(x, neighbours)
            outputs.append(x)
        return F.leaky_relu(self.norm(self.output(torch.cat(outputs, dim=-1))), 0.2)


class DVAEEncoder(Encoder):
    """Patches -> code logits `[B, G, V]` (mini-PointNet, then a DGCNN whose output is the
    logits). The dVAE hides nothing: the mask is not read. `forward_features` is the logits too:
    they are the encoder's only output."""

    def __init__(self, dim: int, pointnet_width: int, graph_input: int,
                 graph_widths: tuple[int, ...], graph_neighbours: int, graph_groups: int,
                 vocab_size: int, logit_scale: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        self.vocab_size = vocab_size
        self.patch_embed = MiniPointNet(dim, pointnet_width)
        self.graph = PatchDGCNN(dim, vocab_size, graph_input, tuple(graph_widths),
                                graph_neighbours, graph_groups, logit_scale)  # fmt: skip

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        return self.forward_features(tokens)

    def forward_features(self, tokens: Tokens) -> Tensor:
        return self.graph(self.patch_embed(tokens.extras["neighbourhood"]), tokens.positions)

    def pool(self, features: Tensor, tokens: Tokens) -> Tensor:
        return max_mean_pool(features)

    @torch.no_grad()
    def codes(self, tokens: Tokens) -> Tensor:
        """The discrete token id `[B, G]` of each patch (what the MPM stage predicts)."""
        return self.forward_features(tokens).argmax(-1)


class GumbelQuantizer(nn.Module):
    """Code logits -> codebook embeddings through a Gumbel-softmax relaxation.

    Training: soft one-hot of (logits + Gumbel noise) / temperature; the temperature follows
    a half cosine from `start` to `end` over the first `anneal_steps` of the `total_steps`
    training steps (the engine reports progress through `set_progress`), then stays at `end`.
    Evaluation: the hard argmax code, i.e. the discrete token itself.
    """

    def __init__(self, vocab_size: int, token_dim: int, start: float = 1.0, end: float = 1 / 16,
                 anneal_steps: int = 100_000, total_steps: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.codebook = nn.Parameter(torch.randn(vocab_size, token_dim))
        self.start, self.end = start, end
        self.anneal_steps, self.total_steps = anneal_steps, total_steps
        self.temperature = start

    def set_progress(self, progress: float) -> None:
        step = progress * self.total_steps
        self.temperature = cosine_ramp(step, self.start, self.end, self.anneal_steps)

    def forward(self, logits: Tensor, noise: Tensor | None) -> Tensor:
        if noise is None:
            weights = F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
        else:
            weights = F.softmax((logits + noise) / self.temperature, dim=-1)
        return weights @ self.codebook

    def embed(self, codes: Tensor) -> Tensor:
        """Code ids `[B, G]` -> their codebook vectors `[B, G, token_dim]`."""
        return self.codebook[codes]


class FoldingDecoder(nn.Module):
    """One feature per patch -> `group_size // 4` coarse points (an MLP), each unfolded into a
    2 x 2 grid by an MLP of (feature, grid offset, coarse point) with BatchNorm: FoldingNet's
    folding, per patch (Point-BERT: hidden widths 1024, 1024 and 512, 512)."""

    def __init__(self, dim: int, group_size: int, coarse_width: int, fold_width: int) -> None:
        super().__init__()
        if group_size % FOLD:
            raise ValueError(
                f"group_size must be a multiple of {FOLD} for the folding decoder, got {group_size}"
            )
        self.num_coarse = group_size // FOLD
        self.coarse = nn.Sequential(
            nn.Linear(dim, coarse_width), nn.ReLU(inplace=True),
            nn.Linear(coarse_width, coarse_width), nn.ReLU(inplace=True),
            nn.Linear(coarse_width, 3 * self.num_coarse),
        )  # fmt: skip
        self.fold = nn.Sequential(
            nn.Linear(dim + 2 + 3, fold_width), nn.BatchNorm1d(fold_width), nn.ReLU(inplace=True),
            nn.Linear(fold_width, fold_width), nn.BatchNorm1d(fold_width), nn.ReLU(inplace=True),
            nn.Linear(fold_width, 3),
        )  # fmt: skip
        side = torch.linspace(-0.05, 0.05, 2)
        self.register_buffer("grid", torch.cartesian_prod(side, side), persistent=False)  # [4, 2]

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """`[B, G, D]` -> (coarse `[B, G, k/4, 3]`, fine `[B, G, k, 3]`)."""
        batch, groups, dim = features.shape
        coarse = self.coarse(features).reshape(batch, groups, self.num_coarse, 3)
        seeds = coarse.repeat_interleave(FOLD, dim=2)  # [B, G, k, 3]
        grid = self.grid.to(features.dtype).repeat(self.num_coarse, 1)
        grid = grid.expand(batch, groups, -1, -1)
        feature = features.unsqueeze(2).expand(-1, -1, seeds.shape[2], -1)
        folded = torch.cat([feature, grid, seeds], dim=-1)
        fine = seeds + self.fold(folded.reshape(-1, folded.shape[-1])).reshape(seeds.shape)
        return coarse, fine


class DVAEDecoder(Decoder):
    """Codebook embeddings -> DGCNN over patch centres -> folded patch points."""

    def __init__(self, token_dim: int, dim: int, graph_input: int, graph_widths: tuple[int, ...],
                 graph_neighbours: int, graph_groups: int, group_size: int, coarse_width: int,
                 fold_width: int) -> None:  # fmt: skip
        super().__init__()
        self.graph = PatchDGCNN(token_dim, dim, graph_input, tuple(graph_widths),
                                graph_neighbours, graph_groups)  # fmt: skip
        self.folding = FoldingDecoder(dim, group_size, coarse_width, fold_width)

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.folding(self.graph(latent, tokens.positions))


@dataclass
class DVAEPrediction:
    """What the dVAE predicts for each patch: coarse and fine points, and the code logits."""

    coarse: Tensor
    fine: Tensor
    logits: Tensor


def mean_code_kl(logits: Tensor) -> Tensor:
    """KL(uniform || q̄), q̄ the softmax of `logits` `[B, G, V]` averaged over the G patches of
    each cloud, averaged over the clouds (Point-BERT's KL term). Computed in log space."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    log_mean = torch.logsumexp(log_q, dim=1) - math.log(log_q.shape[1])  # [B, V]
    vocab = log_q.shape[-1]
    return (-math.log(vocab) - log_mean.mean(-1)).mean()


class DVAELoss(Target):
    """Chamfer reconstruction of every patch (coarse + fine) + a scheduled KL to the uniform
    prior on each cloud's mean code distribution (`mean_code_kl`).

    The KL weight is 0 for the first `kl_delay_steps`, then follows a half cosine up to
    `kl_weight` over `kl_ramp_steps` (Point-BERT: 0 for 10k steps, then 0 -> 0.1 over 100k), so
    codes are first learnt for reconstruction alone.
    """

    def __init__(self, variant: str, kl_weight: float, kl_delay_steps: int, kl_ramp_steps: int,
                 total_steps: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.variant, self.kl_max = variant, kl_weight
        self.kl_delay_steps, self.kl_ramp_steps = kl_delay_steps, kl_ramp_steps
        self.total_steps = total_steps
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    @property
    def kl_weight(self) -> float:
        step = self.progress * self.total_steps
        return cosine_ramp(step, 0.0, self.kl_max, self.kl_ramp_steps, self.kl_delay_steps)

    def forward(self, batch: dict, tokens: Tokens) -> Tensor:
        return tokens.extras["neighbourhood"]

    def loss(self, prediction: DVAEPrediction, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        k = target.shape[-2]
        truth = target.reshape(-1, k, 3)
        coarse = chamfer_distance(prediction.coarse.reshape(len(truth), -1, 3), truth, self.variant)
        fine = chamfer_distance(prediction.fine.reshape(len(truth), -1, 3), truth, self.variant)
        kl = mean_code_kl(prediction.logits)
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

    @torch.no_grad()
    def decode(self, codes: Tensor, tokens: Tokens) -> Tensor:
        """Code ids `[B, G]` -> fine patch points `[B, G, k, 3]` relative to the centres."""
        no_mask = codes.new_zeros(codes.shape, dtype=torch.bool)
        _, fine = self.decoder(self.quantizer.embed(codes), tokens, no_mask)
        return fine

    @torch.no_grad()
    def code_ids(self, batch: dict) -> dict[str, CodeIds]:
        """`{"dvae": the argmax code of every patch [B, G]}` over the `vocab_size` codes."""
        codes = self.encoder.codes(self.tokenizer(batch))
        return {"dvae": CodeIds(codes, self.encoder.vocab_size)}
