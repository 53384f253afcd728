"""ELECTRA: replaced-token detection with a small generator trained jointly (Clark et al. 2020).

The generator (`ElectraForMaskedLM`, narrower) fills the masked positions by MLM; its samples
replace the originals; the discriminator (`ElectraForPreTraining`'s base model + head) says, for
every real token, whether it was replaced. Generator and discriminator share the token and
position embeddings, as in the paper. loss = MLM + 50 * detection (BCE); the generator's samples
are not differentiated through (the paper's choice). The encoder used downstream is the
discriminator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omnimask import LOSS_WEIGHT, Decoder, MaskedOutput, Target, Tokens
from omnimask.model import Batch
from omnimask.seeding import sample_generators
from torch import Tensor, nn
from transformers import ElectraConfig as HFElectraConfig
from transformers import ElectraForMaskedLM, ElectraForPreTraining

from omnimask_text.config import ElectraConfig, ModelConfig
from omnimask_text.models.build import SpecialIds
from omnimask_text.models.common import TextMaskedModel, attention_mask

#: Separates the generator's sampling noise from the masks drawn for the same samples.
SAMPLING_SALT = 1


def electra_configs(
    model: ModelConfig, electra: ElectraConfig, vocab_size: int, special: SpecialIds
) -> tuple[HFElectraConfig, HFElectraConfig]:
    """(discriminator, generator) configs; the embedding size is the discriminator's width."""
    common = {
        "vocab_size": vocab_size,
        "embedding_size": electra.embedding_size or model.hidden,
        "max_position_embeddings": model.max_positions,
        "hidden_dropout_prob": model.dropout,
        "attention_probs_dropout_prob": model.dropout,
        "pad_token_id": special.pad,
        "attn_implementation": "sdpa",
    }
    discriminator = HFElectraConfig(
        hidden_size=model.hidden,
        num_hidden_layers=model.layers,
        num_attention_heads=model.heads,
        intermediate_size=model.intermediate,
        **common,
    )
    generator = HFElectraConfig(
        hidden_size=electra.generator_hidden,
        num_hidden_layers=electra.generator_layers,
        num_attention_heads=electra.generator_heads,
        intermediate_size=electra.generator_intermediate,
        **common,
    )
    return discriminator, generator


class ElectraHeads(Decoder):
    """The discriminator's detection head and the whole generator (which shares embeddings
    with the discriminator's base model)."""

    def __init__(self, detector: nn.Module, generator: ElectraForMaskedLM) -> None:
        super().__init__()
        self.discriminator_predictions = detector
        self.generator = generator

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        return self.discriminator_predictions(latent)


class ReplacedTokenTarget(Target):
    """Replaced (1) or original (0) per token, -1 on padding; BCE over the real tokens."""

    def forward(self, batch: Batch, tokens: Tokens) -> Tensor:
        replaced = (tokens.extras["discriminator_ids"] != tokens.values).float()
        return replaced.masked_fill(tokens.padding, -1.0)

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        real = target >= 0
        logits, labels = prediction[real].float(), target[real]
        return {
            "rtd_loss": F.binary_cross_entropy_with_logits(logits, labels),
            "rtd_accuracy": ((logits > 0).float() == labels).float().mean().detach(),
            "replaced_fraction": labels.mean().detach(),
        }


class ElectraModel(TextMaskedModel):
    def __init__(self, *args, discriminator_weight: float, **kwargs) -> None:  # noqa: ANN002,ANN003
        super().__init__(*args, **kwargs)
        self.discriminator_weight = discriminator_weight

    @torch.compiler.disable
    def sampling_noise(
        self, batch: Batch, generator: torch.Generator | None, shape: torch.Size
    ) -> Tensor:
        """Uniforms for sampling the generator, drawn from a seed derived from the step's
        generator and the sample ids, so replacements are reproducible and batch-independent."""
        rows = sample_generators(batch.get("sample_id"), generator, SAMPLING_SALT, rows=shape[0])
        return torch.stack([torch.rand(shape[1], generator=row) for row in rows])

    def predict(self, batch: Batch, generator: torch.Generator | None = None) -> MaskedOutput:
        tokens, mask = self.corrupted_tokens(batch, generator)
        heads: ElectraHeads = self.decoder  # type: ignore[assignment]
        generated = heads.generator.electra(
            input_ids=tokens.extras["corrupted_ids"],
            attention_mask=attention_mask(tokens),
            position_ids=tokens.positions[..., 0],
        )
        generator_hidden = generated.last_hidden_state[mask]
        logits = heads.generator.generator_lm_head(
            heads.generator.generator_predictions(generator_hidden)
        )
        labels = tokens.values[mask]
        mlm_loss = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            uniform = self.sampling_noise(batch, generator, mask.shape).to(mask.device)[mask]
            cdf = logits.float().softmax(-1).cumsum(-1)
            sampled = torch.searchsorted(cdf, uniform.unsqueeze(-1)).squeeze(-1)
            sampled = sampled.clamp_max(logits.shape[-1] - 1)
            discriminator_ids = tokens.values.masked_scatter(mask, sampled)
        tokens.extras["discriminator_ids"] = discriminator_ids
        latent = self.encoder.encode(discriminator_ids, tokens)
        prediction = self.decoder(latent, tokens, mask)
        target = self.target(batch, tokens)
        num_tokens = tokens.count_tensor()
        losses = self.target.loss(prediction, target, mask)
        rtd_loss = losses.pop("rtd_loss")
        # Weighed by the real tokens (those the dominant detection loss averages over; the
        # generator's masked tokens are a fixed share of them): processes and micro-batches of
        # rows of different lengths then train like one batch (core README, "Losses and the
        # batch").
        losses = {
            "loss": mlm_loss + self.discriminator_weight * rtd_loss,
            "mlm_loss": mlm_loss.detach(),
            "rtd_loss": rtd_loss.detach(),
            **losses,
            "num_tokens": num_tokens,
            LOSS_WEIGHT: (target >= 0).sum().float(),
        }
        return MaskedOutput(tokens, mask, prediction, target, losses)


def start_at_prior(detector: nn.Module, replaced_share: float) -> None:
    """Set the detection head's output bias to the logit of the share of replaced tokens (the
    prior initialisation of RetinaNet's classifier, Lin et al. 2017), so that the first
    gradients are not one push of every token's logit towards "original".

    At the start the generator's samples almost never hit the original, so that share is about
    the mask ratio. Not in the reference implementation (bias 0). Why: started from a BERT
    (`train.init_from`), the discriminator's first steps with bias 0 pulled every token's
    features along the head's direction, and its pooled features collapsed within 250 steps
    (RankMe 21 -> 1.9 on the communities; plugin README) before detection was learnt; with the
    prior their lowest RankMe was 8.8 and 3.7 (seeds 0, 1), no collapse warning, and detection
    left the base rate within 300 steps."""
    with torch.no_grad():
        detector.dense_prediction.bias.fill_(math.log(replaced_share / (1 - replaced_share)))


def build_electra_pair(
    model: ModelConfig,
    electra: ElectraConfig,
    vocab_size: int,
    special: SpecialIds,
    replaced_share: float,
) -> tuple[ElectraForPreTraining, ElectraForMaskedLM]:
    discriminator_config, generator_config = electra_configs(model, electra, vocab_size, special)
    discriminator = ElectraForPreTraining(discriminator_config)
    start_at_prior(discriminator.discriminator_predictions, replaced_share)
    generator = ElectraForMaskedLM(generator_config)
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight
    return discriminator, generator
