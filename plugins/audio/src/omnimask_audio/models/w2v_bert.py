"""w2v-BERT (Chung et al., ASRU 2021), read top to bottom as one training step:

    fbank [B, T, 80] --ConvSubsampling--> frames [B, T/4, C*19]           (the tokenizer)
      --SpanMasker--> mask [B, T/4]
      --Wav2Vec2BertModel: LayerNorm+Linear, masked frames := learned vector,
        contrastive Conformer layers --> context c ; MLM Conformer layers --> m  (the encoder)
      --heads--> projected c at masked frames, code logits from m at masked frames
    GumbelQuantizer(unmasked frames) --> quantized q and code ids          (the target)
    loss = contrastive(c, q, K distractors) + 0.1 diversity + CE(code logits, code ids)

The Conformer stack is `transformers`' `Wav2Vec2BertModel` (both modules in one model, the
contrastive module's output read from its hidden states), so the encoder saves as a Hugging Face
model; the subsampler, the quantizer and the heads are ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omnimask import (
    LOSS_WEIGHT,
    CodeIds,
    Decoder,
    Encoder,
    MaskedModel,
    MaskedOutput,
    Target,
    Tokens,
)
from omnimask.seeding import sample_generators
from torch import Tensor, nn
from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

from omnimask_audio.config import SpanMaskConfig, W2VBertModelConfig
from omnimask_audio.masking import SpanMasker

#: the subsampled frame hop: two stride-2 convolutions over 10 ms Kaldi frames.
FRAME_SECONDS = 0.04
# Salts that give the Gumbel noise and the distractor draw their own seed streams.
GUMBEL_SALT, NEGATIVES_SALT = 1, 2
LOGIT_INIT_SCALE = 2.0


class ConvSubsampling(nn.Module):
    """Two 3x3 stride-2 Conv2d + ReLU over (time, mel): 4x fewer frames, each frame the
    flattened channels x remaining mel bins. A learned tokenizer: batch -> `Tokens`."""

    def __init__(self, num_mel_bins: int, channels: int) -> None:
        super().__init__()
        self.num_mel_bins = num_mel_bins
        self.channels = channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2),
            nn.ReLU(),
        )
        self.output_dim = channels * self.output_length(num_mel_bins)

    @staticmethod
    def output_length(length: Any) -> Any:
        """Length after both convolutions (int or tensor): each maps n to (n - 3) // 2 + 1.
        An output frame then only sees input frames of the same utterance, so padding does not
        leak into real frames."""
        for _ in range(2):
            length = (length - 3) // 2 + 1
        return length

    def forward(self, batch: dict[str, Any]) -> Tokens:
        features = batch["features"]
        lengths = batch.get("lengths")
        if lengths is None:
            lengths = torch.full((features.shape[0],), features.shape[1], dtype=torch.long)
        frames = self.convs(features.unsqueeze(1))  # [B, C, T', F']
        values = frames.permute(0, 2, 1, 3).flatten(2)
        count = values.shape[1]
        steps = torch.arange(count, device=values.device)
        padding = steps.unsqueeze(0) >= self.output_length(lengths.to(values.device)).unsqueeze(1)
        times = (steps.to(values.dtype) * FRAME_SECONDS).view(1, count, 1)
        return Tokens(
            values=values,
            positions=times.expand(values.shape[0], count, 1),
            grid=(count,),
            padding=padding,
        )


def conformer_config(
    model: W2VBertModelConfig, mask: SpanMaskConfig, input_dim: int
) -> Wav2Vec2BertConfig:
    """The Hugging Face config of both Conformer modules. Its SpecAugment settings are our span
    masking's (the export turns SpecAugment off, `export.export_hf`); layer drop is off
    because it would draw from the global RNG."""
    dropout = model.dropout
    return Wav2Vec2BertConfig(
        hidden_size=model.hidden_size,
        num_hidden_layers=model.contrastive_layers + model.mlm_layers,
        num_attention_heads=model.num_heads,
        intermediate_size=model.ffn_size,
        feature_projection_input_dim=input_dim,
        conv_depthwise_kernel_size=model.conv_kernel,
        hidden_dropout=dropout,
        activation_dropout=dropout,
        attention_dropout=dropout,
        feat_proj_dropout=dropout,
        conformer_conv_dropout=dropout,
        layerdrop=0.0,
        mask_time_prob=mask.start_prob * mask.span,
        mask_time_length=mask.span,
        mask_time_min_masks=mask.min_spans,
    )


def attention_mask(tokens: Tokens) -> Tensor | None:
    """Hugging Face's attention mask (1 = real frame) from `Tokens.padding`."""
    return None if tokens.padding is None else (~tokens.padding).long()


class ConformerEncoder(Encoder):
    """Both Conformer modules as one `Wav2Vec2BertModel`. `forward` returns
    (contrastive-module output, MLM-module output); `forward_features` the last hidden state."""

    def __init__(self, config: Wav2Vec2BertConfig, contrastive_layers: int) -> None:
        super().__init__()
        self.model = Wav2Vec2BertModel(config)
        self.contrastive_layers = contrastive_layers

    def forward(self, tokens: Tokens, mask: Tensor) -> tuple[Tensor, Tensor]:
        output = self.model(
            tokens.values,
            attention_mask=attention_mask(tokens),
            mask_time_indices=mask,
            output_hidden_states=True,
        )
        # hidden_states[0] is the Conformer input, hidden_states[i] the output of layer i.
        return output.hidden_states[self.contrastive_layers], output.last_hidden_state

    def forward_features(self, tokens: Tokens) -> Tensor:
        # An all-False mask: Hugging Face would otherwise draw its own SpecAugment mask whenever
        # the model is in training mode.
        nothing = torch.zeros(tokens.values.shape[:2], dtype=torch.bool, device=tokens.device)
        output = self.model(
            tokens.values, attention_mask=attention_mask(tokens), mask_time_indices=nothing
        )
        return output.last_hidden_state


@dataclass
class Quantized:
    """The quantizer's targets for every frame, and how evenly its codebook is used."""

    vectors: Tensor  # [B, N, code_dim]: what the contrastive loss must pick out
    codes: Tensor  # [B, N, G]: code ids, the MLM module's classes
    prob_perplexity: Tensor  # perplexity of the batch-mean softmax (drives the diversity loss)
    code_perplexity: Tensor  # perplexity of the codes actually chosen (the collapse monitor)


def perplexity(probs: Tensor) -> Tensor:
    """Sum over codebooks of exp(entropy) of a distribution `[G, V]`: 1 when one code is used,
    V when all are used equally."""
    return torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1)).sum()


class GumbelQuantizer(nn.Module):
    """wav2vec 2.0's product quantizer: G codebooks of V entries, a hard Gumbel-softmax choice
    with straight-through gradients in training, argmax at evaluation."""

    def __init__(
        self,
        input_dim: int,
        codebooks: int,
        codebook_size: int,
        code_dim: int,
        temperatures: tuple[float, float],
    ) -> None:
        super().__init__()
        if code_dim % codebooks:
            raise ValueError(f"code_dim {code_dim} is not divisible by {codebooks} codebooks")
        self.codebooks, self.codebook_size = codebooks, codebook_size
        self.norm = nn.LayerNorm(input_dim)
        self.to_logits = nn.Linear(input_dim, codebooks * codebook_size)
        # Logits of about unit scale at init: small enough that the softmax is not saturated
        # (so the diversity loss has a gradient and spreads the codes), large enough that a
        # frame's code is a clear argmax.
        nn.init.normal_(self.to_logits.weight, std=LOGIT_INIT_SCALE / input_dim**0.5)
        nn.init.zeros_(self.to_logits.bias)
        self.codevectors = nn.Parameter(torch.rand(codebooks, codebook_size, code_dim // codebooks))
        self.project = nn.Linear(code_dim, code_dim)
        self.temperatures = temperatures
        self.temperature = temperatures[0]

    def set_progress(self, progress: float) -> None:
        """Anneal the Gumbel temperature geometrically from start to end over training: soft
        early choices let every code receive gradient, hard late ones make the targets crisp."""
        start, end = self.temperatures
        self.temperature = start * (end / start) ** min(max(progress, 0.0), 1.0)

    def forward(self, values: Tensor, padding: Tensor | None, noise: Tensor | None) -> Quantized:
        """`noise`: Gumbel noise `[B, N, G, V]` in training, None for the deterministic argmax."""
        logits = self.to_logits(self.norm(values)).unflatten(-1, self.codebooks_shape)
        # The code ids (the MLM module's classes) are the noise-free argmax: Gumbel noise
        # explores codes for the contrastive targets but would make the MLM labels random.
        codes = logits.argmax(-1)
        if noise is None:
            choice = F.one_hot(codes, self.codebook_size).to(logits.dtype)
        else:
            soft = torch.softmax((logits + noise) / self.temperature, dim=-1)
            hard = F.one_hot(soft.argmax(-1), self.codebook_size).to(soft.dtype)
            choice = hard - soft.detach() + soft
        vectors = torch.einsum("bngv,gvd->bngd", choice, self.codevectors).flatten(2)
        real = torch.ones_like(codes[..., 0], dtype=torch.bool) if padding is None else ~padding
        mean_probs = torch.softmax(logits[real].float(), dim=-1).mean(0)
        usage = F.one_hot(codes[real], self.codebook_size).float().mean(0)
        return Quantized(self.project(vectors), codes, perplexity(mean_probs), perplexity(usage))

    @property
    def codebooks_shape(self) -> tuple[int, int]:
        return (self.codebooks, self.codebook_size)


class W2VBertHeads(Decoder):
    """At masked frames only: the contrastive context projected into the code space, and the
    MLM module's logits over each codebook's ids."""

    def __init__(self, hidden_size: int, code_dim: int, codebooks: int, codebook_size: int):
        super().__init__()
        self.project_context = nn.Linear(hidden_size, code_dim)
        self.code_logits = nn.Linear(hidden_size, codebooks * codebook_size)
        self.codebooks_shape = (codebooks, codebook_size)

    def forward(self, latent: tuple[Tensor, Tensor], tokens: Tokens, mask: Tensor) -> dict:
        context, mlm = latent
        return {
            "context": self.project_context(context[mask]),  # [M, code_dim]
            "code_logits": self.code_logits(mlm[mask]).unflatten(-1, self.codebooks_shape),
        }


def sample_negatives(mask: Tensor, count: int, generators: list[torch.Generator]) -> Tensor:
    """Distractor indices `[M, count]` into the M masked frames (flattened row-major, as
    `x[mask]` orders them): for each masked frame, `count` other masked frames of the same
    utterance, uniformly with replacement. A frame alone in its utterance gets itself, which the
    loss then ignores."""
    rows = []
    offset = 0
    for row, generator in zip(mask.cpu(), generators):
        masked = int(row.sum())
        if masked == 0:
            continue
        own = torch.arange(masked).unsqueeze(1)
        if masked == 1:
            picks = own.expand(1, count)
        else:
            # Draw among the other masked - 1 frames, then skip over the frame itself.
            picks = torch.randint(0, masked - 1, (masked, count), generator=generator)
            picks = picks + (picks >= own).long()
        rows.append(picks + offset)
        offset += masked
    if not rows:
        return torch.zeros(0, count, dtype=torch.long)
    return torch.cat(rows)


class W2VBertTarget(Target):
    """Quantizer targets and the three losses: contrastive, diversity, MLM."""

    def __init__(self, quantizer: GumbelQuantizer, model: W2VBertModelConfig) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.temperature = model.contrastive_temperature
        self.diversity_weight = model.diversity_weight
        self.mlm_weight = model.mlm_weight

    def forward(self, batch: dict, tokens: Tokens, noise: Tensor | None = None) -> Quantized:
        return self.quantizer(tokens.values, tokens.padding, noise)

    def loss(
        self, prediction: dict, target: Quantized, mask: Tensor, negatives: Tensor | None = None
    ) -> dict[str, Tensor]:
        """`negatives`: `sample_negatives` indices; required (the contrastive loss needs them)."""
        if negatives is None:
            raise ValueError("the w2v-BERT loss needs distractor indices (sample_negatives)")
        positives = target.vectors[mask]  # [M, code_dim]
        context = prediction["context"]
        distractors = positives[negatives.to(positives.device)]  # [M, K, code_dim]
        candidates = torch.cat([positives.unsqueeze(1), distractors], dim=1)
        logits = F.cosine_similarity(context.unsqueeze(1), candidates, dim=-1) / self.temperature
        # A distractor equal to the positive (same code, or the frame itself) is no distractor.
        same = (distractors == positives.unsqueeze(1)).all(-1)
        logits[:, 1:] = logits[:, 1:].masked_fill(same, float("-inf"))
        zeros = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        contrastive = F.cross_entropy(logits, zeros) if len(logits) else logits.sum()
        # The share of masked frames whose own target wins (a tie with a distractor is a miss):
        # how well the contrastive module does its job, beside its loss.
        hits = (logits[:, 0] > logits[:, 1:].amax(1)).float()
        picked = hits.mean() if len(hits) else hits.sum()
        size = self.quantizer.codebooks * self.quantizer.codebook_size
        diversity = (size - target.prob_perplexity) / size
        code_logits = prediction["code_logits"].flatten(0, 1)  # [M * G, V]
        codes = target.codes[mask].flatten()
        mlm = F.cross_entropy(code_logits, codes) if len(codes) else code_logits.sum()
        accuracy = (code_logits.argmax(-1) == codes).float().mean() if len(codes) else mlm * 0
        # Both losses are means over the batch's masked frames, whose number varies with the
        # clips' lengths: the count goes with them, and the engine weighs processes and
        # micro-batches by it, as fairseq's wav2vec 2.0 divides by the global `sample_size`.
        return {
            "loss": contrastive + self.diversity_weight * diversity + self.mlm_weight * mlm,
            LOSS_WEIGHT: mask.sum().float(),
            "contrastive_loss": contrastive.detach(),
            "contrastive_accuracy": picked.detach(),
            "diversity_loss": diversity.detach(),
            "mlm_loss": mlm.detach(),
            "mlm_accuracy": accuracy.detach(),
            "code_perplexity": target.code_perplexity.detach(),
            "prob_perplexity": target.prob_perplexity.detach(),
        }


class W2VBert(MaskedModel):
    """Contrastive + MLM in one step; overrides `predict` because the target needs the Gumbel
    noise and the loss needs the distractors, both drawn from the step's generator."""

    encoder: ConformerEncoder
    target: W2VBertTarget

    def __init__(
        self,
        tokenizer: ConvSubsampling,
        masker: SpanMasker,
        encoder: ConformerEncoder,
        decoder: W2VBertHeads,
        target: W2VBertTarget,
        num_negatives: int,
    ) -> None:
        super().__init__(tokenizer, masker, encoder, decoder, target)
        self.num_negatives = num_negatives

    def gumbel_noise(
        self, tokens: Tokens, batch: dict, generator: torch.Generator | None
    ) -> Tensor:
        shape = (tokens.num_tokens, *self.target.quantizer.codebooks_shape)
        rows = [
            torch.rand(shape, generator=g)
            for g in sample_generators(
                batch.get("sample_id"), generator, GUMBEL_SALT, rows=tokens.batch_size
            )
        ]
        uniform = torch.stack(rows).clamp(1e-10, 1.0 - 1e-7)
        return (-torch.log(-torch.log(uniform))).to(tokens.device, tokens.values.dtype)

    def predict(self, batch: dict, generator: torch.Generator | None = None) -> MaskedOutput:
        tokens = self.tokenizer(batch)
        mask = self.draw_mask(tokens, batch, generator)
        prediction = self.decoder(self.encoder(tokens, mask), tokens, mask)
        noise = self.gumbel_noise(tokens, batch, generator) if self.training else None
        target = self.target(batch, tokens, noise)
        generators = sample_generators(
            batch.get("sample_id"), generator, NEGATIVES_SALT, rows=tokens.batch_size
        )
        negatives = sample_negatives(mask, self.num_negatives, generators)
        num_tokens = tokens.count_tensor()
        losses = {**self.target.loss(prediction, target, mask, negatives), "num_tokens": num_tokens}
        return MaskedOutput(tokens, mask, prediction, target, losses)

    @torch.no_grad()
    def code_ids(self, batch: dict) -> dict[str, CodeIds]:
        """The quantizer's argmax codes of every real frame, one entry per codebook: the MLM
        module's classes, for the core's code-usage monitor."""
        tokens = self.tokenizer(batch)
        codes = self.target(batch, tokens).codes  # [B, N, G]
        if tokens.padding is not None:
            codes = codes[~tokens.padding]
        quantizer = self.target.quantizer
        names = (
            ["quantizer"]
            if quantizer.codebooks == 1
            else [f"quantizer{g}" for g in range(quantizer.codebooks)]
        )
        return {
            name: CodeIds(codes[..., g].flatten(), quantizer.codebook_size)
            for g, name in enumerate(names)
        }


def build_w2v_bert(model: W2VBertModelConfig, mask: SpanMaskConfig, num_mel_bins: int) -> W2VBert:
    tokenizer = ConvSubsampling(num_mel_bins, model.subsampling_channels)
    hf_config = conformer_config(model, mask, tokenizer.output_dim)
    quantizer = GumbelQuantizer(
        tokenizer.output_dim,
        model.codebooks,
        model.codebook_size,
        model.code_dim,
        (model.gumbel_start, model.gumbel_end),
    )
    return W2VBert(
        tokenizer,
        SpanMasker(mask.start_prob, mask.span, mask.min_spans),
        ConformerEncoder(hf_config, model.contrastive_layers),
        W2VBertHeads(model.hidden_size, model.code_dim, model.codebooks, model.codebook_size),
        W2VBertTarget(quantizer, model),
        model.num_negatives,
    )
