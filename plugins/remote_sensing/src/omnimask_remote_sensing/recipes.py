"""The `remote_sensing/croma` recipe: builds CROMA, its data, figures and torchgeo export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnimask import Recipe
from omnimask.config import ConfigError
from omnimask.data import DataPathError
from omnimask.masking import RandomMasker
from omnimask.model import Batch
from omnimask.shards import open_shard_set
from torch.utils.data import Dataset, default_collate

from omnimask_remote_sensing.config import BandStats, CromaConfig, demo, paper, proof
from omnimask_remote_sensing.datasets import (
    ChipDataset,
    ChipNormalizer,
    decoding_settings,
    labelled_splits,
)
from omnimask_remote_sensing.export import export_torchgeo, torchgeo_embedder
from omnimask_remote_sensing.geotiff import find_pairs
from omnimask_remote_sensing.models.croma import (
    ContrastiveHead,
    CromaDecoder,
    CromaEncoder,
    CromaModel,
    CromaTarget,
    CromaTokenizer,
)
from omnimask_remote_sensing.synthetic import S1_DIM_DB, S2_SIGNATURES, default_data


def check_band_layout(config: CromaConfig) -> None:
    """Raise `ConfigError` when `chips.rgb_bands` (the figures' true colour) are not S2 bands of
    `chips.s2_bands`: found when the config is used, not when `visualize` draws."""
    chips = config.chips
    outside = [band for band in chips.rgb_bands if not 0 <= band < chips.s2_bands]
    if outside:
        raise ConfigError(
            f"chips.rgb_bands={list(chips.rgb_bands)} names S2 band {outside[0]}, but "
            f"chips.s2_bands={chips.s2_bands} (indices 0-{chips.s2_bands - 1})"
        )


class CromaRecipe(Recipe):
    name = "remote_sensing/croma"
    labelled_layout = (
        "a folder of co-registered S1/S2 GeoTIFF pairs with a manifest.csv whose rows carry "
        "'label' (and optionally 'split' = train/test)"
    )
    summary = "CROMA: contrastive radar-optical masked autoencoder (Sentinel-1 + Sentinel-2)"
    config_class = CromaConfig
    presets = {"demo": demo, "proof": proof, "paper": paper}
    export_formats = ("torchgeo",)
    batch_coupled_terms = {
        "loss": "holds the contrastive term",
        "contrastive": "InfoNCE whose negatives are the other chips of the global batch, "
        "gathered from every process: N processes with batch B equal one with N x B, but "
        "micro-batches (train.grad_accum) each see only their own negatives",
    }

    def build_model(self, config: CromaConfig) -> CromaModel:
        check_band_layout(config)
        model, chips = config.model, config.chips
        croma = CromaModel(
            tokenizer=CromaTokenizer(model.patch_size),
            masker=RandomMasker(config.mask.ratio),
            encoder=CromaEncoder(
                model.dim,
                model.depth,
                model.heads,
                model.patch_size,
                chips.s1_bands,
                chips.s2_bands,
                model.embedding,
            ),
            decoder=CromaDecoder(
                model.dim,
                model.decoder_dim,
                model.decoder_depth,
                model.decoder_heads,
                model.patch_size,
                chips.s1_bands,
                chips.s2_bands,
            ),
            target=CromaTarget(),
            contrastive=ContrastiveHead(model.dim, config.loss.temperature),
            contrastive_weight=config.loss.contrastive_weight,
            reconstruction_weight=config.loss.reconstruction_weight,
        )
        # `visualize` receives only the model, so it carries the figure's band choice.
        croma.rgb_bands = tuple(chips.rgb_bands)
        return croma

    def build_dataset(self, config: CromaConfig) -> Dataset:
        """Chips of `config.data.path` (or the embedded scenes); fills `config.stats` when empty."""
        check_band_layout(config)
        shards = open_shard_set(config.data.path, ChipDataset.record_kind, config.data.shard_cache)
        if shards is not None:  # written by `omnimask prepare --out`
            shards.require(decoding_settings(config))
            if not config.stats.complete(config.chips.s1_bands, config.chips.s2_bands):
                config.stats = BandStats(**shards.attributes["stats"])
            return shards.dataset(ChipNormalizer(config.stats))
        path = config.data.path if config.data.path is not None else default_data() / "scenes"
        unpaired: list[str] = []
        pairs = find_pairs(path, config.data.on_bad_sample, unpaired)
        dataset = ChipDataset(pairs, config, config.data.on_bad_sample)
        dataset.skipped_at_load.extend(unpaired)  # counted in metrics.jsonl with the rest
        return dataset

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        return default_collate(samples)

    def tokens_per_sample(self, config: CromaConfig) -> int:
        return (config.chips.size // config.model.patch_size) ** 2

    def build_eval_datasets(
        self, config: CromaConfig, path: str | None = None
    ) -> tuple[Dataset, Dataset]:
        if path is None:
            embedded = (len(S1_DIM_DB), S2_SIGNATURES.shape[1])
            wanted = (config.chips.s1_bands, config.chips.s2_bands)
            if wanted != embedded:
                raise DataPathError(
                    f"the embedded labelled chips have {embedded[0]} S1 and {embedded[1]} S2 "
                    f"bands, and this run reads {wanted[0]} and {wanted[1]}: pass --data with "
                    f"{self.labelled_layout}, in the run's band layout"
                )
        return labelled_splits(path if path is not None else default_data() / "labelled", config)

    def visualize(self, model: CromaModel, config: CromaConfig, batch: Batch, path: Path) -> Path:
        from omnimask_remote_sensing.figures import draw

        return draw(model, batch, path, model.rgb_bands)

    def export(self, model: CromaModel, config: CromaConfig, fmt: str, out_dir: Path) -> Path:
        return export_torchgeo(model, config, out_dir)

    def load_export(self, config: CromaConfig, fmt: str, path: Path) -> Callable[[Batch], Any]:
        return torchgeo_embedder(path)
