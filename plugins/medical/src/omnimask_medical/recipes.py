"""The `medical/mambamim` recipe: MambaMIM on NIfTI CT volumes."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from omnimask import MaskedModel, Recipe
from omnimask.config import ConfigError
from omnimask.masking import RandomMasker
from omnimask.shards import open_shard_set
from torch.utils.data import Dataset

from omnimask_medical import config as presets
from omnimask_medical.config import MambaMIMConfig
from omnimask_medical.data import (
    CTSegmentation,
    CTVolumes,
    decoding_settings,
    labelled_datasets,
    pretraining_files,
    segmentation_splits,
)
from omnimask_medical.figures import draw_slices
from omnimask_medical.models.encoder import HybridEncoder
from omnimask_medical.models.mambamim import DensifyingDecoder, NormalizedVoxels, VolumeTokenizer
from omnimask_medical.phantoms import ORGANS


class MambaMIMRecipe(Recipe):
    name = "medical/mambamim"
    labelled_layout = (
        "a folder with train/<class>/ and test/<class>/ sub-folders of NIfTI volumes (.nii, "
        ".nii.gz)"
    )
    summary = "MambaMIM: hybrid MedNeXt-Mamba encoder, bottom-up 3D masks, TOKI, on CT volumes"
    protocols = ("segmentation_probe", "segmentation_finetune")
    eval_sections = ("segmentation",)
    config_class = MambaMIMConfig
    presets: ClassVar = {
        "demo": presets.mambamim_demo,
        "proof": presets.mambamim_proof,
        "paper": presets.mambamim_paper,
    }

    def build_model(self, config: MambaMIMConfig) -> MaskedModel:
        model = config.model
        cell = 2 ** len(model.widths)
        if config.data.crop % cell:
            raise ConfigError(
                f"data.crop={config.data.crop} must be a multiple of the coarse cell ({cell} "
                f"voxels = 2 ** len(model.widths))"
            )
        encoder = HybridEncoder(
            model.stem_width, tuple(model.widths), tuple(model.depths), model.kernel,
            model.mamba_depth, model.d_state,
        )  # fmt: skip
        return MaskedModel(
            VolumeTokenizer(cell),
            RandomMasker(config.mask.ratio),
            encoder,
            DensifyingDecoder(encoder.widths, model.decoder_width, cell),
            NormalizedVoxels(),
        )

    def build_dataset(self, config: MambaMIMConfig) -> Dataset:
        data = config.data
        shards = open_shard_set(data.path, CTVolumes.record_kind, data.shard_cache)
        if shards is not None:  # written by `omnimask prepare --out`
            shards.require(decoding_settings(data.ct))
            return shards.dataset(CTVolumes([], data.ct, data.crop).sample)
        return CTVolumes(pretraining_files(data.path), data.ct, data.crop)

    def build_eval_datasets(
        self, config: MambaMIMConfig, path: str | None = None
    ) -> tuple[Dataset, Dataset]:
        return labelled_datasets(path, config.data.ct, config.data.crop)

    def evaluate_protocol(
        self,
        protocol: str,
        model: MaskedModel,
        config: MambaMIMConfig,
        data: str | None,
        name: str = "model",
    ) -> dict[str, float]:
        """Dice of organ label maps (`omnimask_medical.segmentation`), on `data`'s image/label
        pairs or the embedded phantoms' organs."""
        if protocol not in self.protocols:
            return super().evaluate_protocol(protocol, model, config, data, name)
        from omnimask_medical.segmentation import evaluate_segmentation

        train_pairs, test_pairs = segmentation_splits(data)
        make = lambda pairs: CTSegmentation(pairs, config.data.ct, config.data.crop)  # noqa: E731
        train_set, test_set = make(train_pairs), make(test_pairs)
        organs = self._label_names(config, data, train_set)
        return evaluate_segmentation(
            model, train_set, test_set, config.segmentation, organs,
            finetune=protocol == "segmentation_finetune", seed=config.train.seed, name=name,
        )  # fmt: skip

    @staticmethod
    def _label_names(
        config: MambaMIMConfig, data: str | None, train_set: CTSegmentation
    ) -> tuple[str, ...]:
        """Background and the names of the labels 1..K (K: the largest value in the maps)."""
        if config.segmentation.labels:
            return ("background", *config.segmentation.labels)
        if data is None:
            return ORGANS
        largest = max(int(train_set[i]["segmentation"].max()) for i in range(len(train_set)))
        return ("background", *(f"label_{k}" for k in range(1, largest + 1)))

    def tokens_per_sample(self, config: MambaMIMConfig) -> int:
        return (config.data.crop // 2 ** len(config.model.widths)) ** 3

    def visualize(
        self, model: MaskedModel, config: MambaMIMConfig, batch: dict, path: Path
    ) -> Path:
        return draw_slices(model, batch, path)
