"""The vision recipes: `vision/spark` (CNNs), `vision/mae` and `vision/simmim` (ViTs).

All three read the same data (image folders, tar shards, the embedded digits), are scored on
the same labelled set, draw the same figure and export their encoder as a plain timm model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import timm
from omnimask import MaskedModel, Recipe, RecipeConfig
from omnimask.masking import RandomMasker
from torch import Tensor, nn
from torch.utils.data import Dataset

from omnimask_vision import config as presets
from omnimask_vision.config import MAEConfig, SimMIMConfig, SparkConfig, TimmModelConfig
from omnimask_vision.data import labelled_datasets, pretraining_dataset
from omnimask_vision.export import export_timm, load_timm_export, timm_embedding
from omnimask_vision.figures import draw_reconstructions
from omnimask_vision.masking import CoarseRandomMasker, ColorNoiseMasker
from omnimask_vision.models.hpm import HardPatchMasker, HPMDecoder, HPMTarget
from omnimask_vision.models.spark import DensifyingDecoder, PatchNormalizedPixels
from omnimask_vision.models.vit import (
    HiddenPatchPixels,
    LinearPixelHead,
    MAEDecoder,
    MAEEncoder,
    MaskedPixelL1,
    SimMIMEncoder,
)  # fmt: skip
from omnimask_vision.sparse import SparseCNNEncoder
from omnimask_vision.tokenizer import ImagePatchTokenizer

#: SparK masks the stride-32 grid of its CNN encoders.
SPARK_CELL = 32


def create_timm_model(config: TimmModelConfig) -> nn.Module:
    """A randomly initialised timm model; `pretrained=False` always (nothing is downloaded),
    its classification head frozen (`freeze_classifier_head`)."""
    model = timm.create_model(config.name, pretrained=False, **dict(config.kwargs))
    freeze_classifier_head(model)
    return model


def freeze_classifier_head(model: nn.Module) -> None:
    """Freeze what only timm's `forward_head` uses: the classifier (`get_classifier()`), a
    `head` module around it (ConvNeXt's norm + fc) and `fc_norm`. The head stays in the model so
    the timm export loads with no missing key, but pretraining never runs it: left trainable,
    its missing gradients stop DDP ("parameters that were not used in producing loss") on
    every multi-process run."""
    for module in (
        model.get_classifier(),
        getattr(model, "head", None),
        getattr(model, "fc_norm", None),
    ):
        if isinstance(module, nn.Module):
            module.requires_grad_(False)


class ImageRecipe(Recipe):
    """Data, evaluation, figure and timm export shared by the image recipes."""

    labelled_layout = "a folder with one sub-folder of images per class"

    export_formats = ("timm",)

    def build_dataset(self, config: Any) -> Dataset:
        return pretraining_dataset(config.data.path, config.image, config.data.shard_cache)

    def build_eval_datasets(self, config: Any, path: str | None = None) -> tuple[Dataset, Dataset]:
        return labelled_datasets(path, config.image.size)

    def patch_size(self, config: Any) -> int:
        """Side in pixels of one token (the tokenizer's patch)."""
        raise NotImplementedError

    def tokens_per_sample(self, config: Any) -> int:
        return (config.image.size // self.patch_size(config)) ** 2

    def visualize(self, model: MaskedModel, config: RecipeConfig, batch: dict, path: Path) -> Path:
        return draw_reconstructions(model, batch, path, model.tokenizer.patch)

    def export(self, model: MaskedModel, config: Any, fmt: str, out_dir: Path) -> Path:
        if fmt != "timm":
            raise ValueError(f"recipe {self.name!r} cannot export {fmt!r}")
        encoder_config: TimmModelConfig = config.model.encoder
        return export_timm(
            model.encoder.model, encoder_config.name, dict(encoder_config.kwargs), out_dir
        )

    def load_export(self, config: RecipeConfig, fmt: str, path: Path) -> Callable[[dict], Tensor]:
        if fmt != "timm":
            raise ValueError(f"recipe {self.name!r} cannot load {fmt!r}")
        model = load_timm_export(Path(path))
        return lambda batch: timm_embedding(model, batch["image"])


class SparkRecipe(ImageRecipe):
    name = "vision/spark"
    summary = "SparK: sparse masked modelling on unmodified timm CNNs (ResNet, ConvNeXt)"
    config_class = SparkConfig
    presets: ClassVar = {
        "demo": presets.spark_demo,
        "paper": presets.spark_paper,
        "proof": presets.spark_proof,
    }
    overfit_lr = 3e-3

    def patch_size(self, config: Any) -> int:
        return SPARK_CELL

    def build_model(self, config: SparkConfig) -> MaskedModel:
        encoder = SparseCNNEncoder(create_timm_model(config.model.encoder), config.model.backend)
        return MaskedModel(
            ImagePatchTokenizer(SPARK_CELL),
            RandomMasker(config.mask.ratio),
            encoder,
            DensifyingDecoder(encoder.widths, config.model.decoder_width, SPARK_CELL),
            PatchNormalizedPixels(per_patch=True),
        )


class MAERecipe(ImageRecipe):
    name = "vision/mae"
    summary = "MAE: ViT encoder on visible patches only, transformer decoder, normalised pixels"
    config_class = MAEConfig
    presets: ClassVar = {
        "demo": presets.mae_demo,
        "paper": presets.mae_paper,
        "demo_hpm": presets.mae_hpm_demo,
        "hpm": presets.mae_hpm_paper,
        "demo_color_noise": presets.mae_color_noise_demo,
        "color_noise": presets.mae_color_noise_paper,
        "proof": presets.mae_proof,
    }

    def patch_size(self, config: Any) -> int:
        return _vit_patch(create_timm_model(config.model.encoder))

    def build_model(self, config: MAEConfig) -> MaskedModel:
        kinds = ("random", "hpm", "color_noise")
        mask = config.mask
        if mask.kind not in kinds:
            raise ValueError(f"mask.kind must be one of {kinds}, got {mask.kind!r}")
        encoder = MAEEncoder(create_timm_model(config.model.encoder))
        vit = encoder.model
        patch = _vit_patch(vit)
        model = config.model
        decoder_class = HPMDecoder if mask.kind == "hpm" else MAEDecoder
        decoder = decoder_class(
            vit.embed_dim,
            tuple(vit.patch_embed.grid_size),
            patch,
            model.decoder_width,
            model.decoder_depth,
            model.decoder_heads,
        )
        target = HiddenPatchPixels(per_patch=model.norm_pix_loss)
        if mask.kind == "hpm":
            hpm = mask.hpm
            masker = HardPatchMasker(
                mask.ratio, encoder, decoder, hpm.hard_share, hpm.ema_decay, hpm.ema_warmup
            )
            target = HPMTarget(per_patch=model.norm_pix_loss, loss_weight=hpm.loss_weight)
        elif mask.kind == "color_noise":
            noise = mask.color_noise
            masker = ColorNoiseMasker(mask.ratio, noise.color, noise.sigma, noise.outer_sigma)
        else:
            masker = RandomMasker(mask.ratio)
        return MaskedModel(ImagePatchTokenizer(patch), masker, encoder, decoder, target)


class SimMIMRecipe(ImageRecipe):
    name = "vision/simmim"
    summary = "SimMIM: ViT with a mask token, linear pixel head, L1 on masked pixels"
    config_class = SimMIMConfig
    presets: ClassVar = {
        "demo": presets.simmim_demo,
        "paper": presets.simmim_paper,
        "proof": presets.simmim_proof,
    }

    def patch_size(self, config: Any) -> int:
        return _vit_patch(create_timm_model(config.model.encoder))

    def build_model(self, config: SimMIMConfig) -> MaskedModel:
        encoder = SimMIMEncoder(create_timm_model(config.model.encoder))
        patch = _vit_patch(encoder.model)
        if config.mask.cell % patch:
            raise ValueError(
                f"mask.cell ({config.mask.cell} px) must be a multiple of the ViT patch "
                f"({patch} px)"
            )
        return MaskedModel(
            ImagePatchTokenizer(patch),
            CoarseRandomMasker(config.mask.ratio, config.mask.cell // patch),
            encoder,
            LinearPixelHead(encoder.model.embed_dim, patch),
            MaskedPixelL1(),
        )


def _vit_patch(vit: nn.Module) -> int:
    height, width = vit.patch_embed.patch_size
    if height != width:
        raise ValueError(f"square ViT patches only, got {height}x{width}")
    return height
