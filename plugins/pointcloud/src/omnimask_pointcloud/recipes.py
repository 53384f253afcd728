"""The point-cloud recipes: `pointcloud/point_mae`, and Point-BERT's two stages,
`pointcloud/point_bert_dvae` (the tokenizer) then `pointcloud/point_bert` (masked point
modelling against the frozen tokenizer, found by its run path)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from omnimask import MaskedModel, Recipe, RecipeConfig
from omnimask.masking import RandomMasker
from omnimask.shards import open_shard_set
from torch.utils.data import Dataset

from omnimask_pointcloud import config as presets
from omnimask_pointcloud.config import DVAEArchitecture, DVAEConfig, PointBERTConfig, PointMAEConfig
from omnimask_pointcloud.data import (
    POINTS_RECORD,
    PointCloudDataset,
    labelled_splits,
    pretraining_files,
)
from omnimask_pointcloud.figures import Panel, draw_panels, patch_points
from omnimask_pointcloud.masking import PointBlockMasker
from omnimask_pointcloud.models.dvae import (
    DVAEDecoder,
    DVAEEncoder,
    DVAELoss,
    DVAEModel,
    GumbelQuantizer,
)  # fmt: skip
from omnimask_pointcloud.models.point_bert import (
    CodeHead,
    DVAECodeTarget,
    FrozenDVAE,
    PointBERTEncoder,
    PointBERTModel,
)
from omnimask_pointcloud.models.point_mae import (
    PatchChamferTarget,
    PointMAEDecoder,
    PointMAEEncoder,
)
from omnimask_pointcloud.tokenizer import PointPatchTokenizer

GREY, BLUE, RED = "#9a9a9a", "#1f5fbf", "#d62728"


class PointCloudRecipe(Recipe):
    """Data, evaluation sets and the figure, shared by the point-cloud recipes."""

    labelled_layout = (
        "a folder of <class>/ sub-folders of point files (PLY, PCD, XYZ, NPY, NPZ, OFF, OBJ, STL), "
        "optionally split into <class>/train/ and <class>/test/"
    )

    def build_dataset(self, config: RecipeConfig) -> Dataset:
        def clouds(files: list[Path]) -> PointCloudDataset:
            patches = config.patches
            return PointCloudDataset(files, None, patches.num_points, patches.group_size, True)

        shards = open_shard_set(config.data.path, POINTS_RECORD, config.data.shard_cache)
        if shards is not None:  # written by `omnimask prepare --out`
            sampler = clouds([])
            shards.require(sampler.shard_attributes())
            return shards.dataset(sampler.sample)
        return clouds(pretraining_files(config.data.path))

    def build_eval_datasets(
        self, config: RecipeConfig, path: str | None = None
    ) -> tuple[Dataset, Dataset]:
        (train_files, train_labels), (test_files, test_labels), _ = labelled_splits(path)
        make = lambda files, labels: PointCloudDataset(  # noqa: E731
            files, labels, config.patches.num_points, config.patches.group_size, augment=False
        )
        return make(train_files, train_labels), make(test_files, test_labels)

    def tokens_per_sample(self, config: RecipeConfig) -> int:
        return config.patches.num_groups

    def visualize(self, model: MaskedModel, config: RecipeConfig, batch: dict, path: Path) -> Path:
        output = model.predict(batch, torch.Generator().manual_seed(0))
        neighbourhood = output.tokens.extras["neighbourhood"][0].float().cpu().numpy()
        centres = output.tokens.positions[0].float().cpu().numpy()
        hidden = output.mask[0].cpu().numpy()
        original = batch["points"][0].float().cpu().numpy()
        visible = patch_points(neighbourhood, centres, ~hidden)
        rebuilt = self.reconstructed_patches(model, output, 0)  # [G, k, 3], relative
        predicted = patch_points(rebuilt, centres, self.reconstructed_selection(hidden))
        panels = [
            Panel("original", [(original, BLUE)]),
            Panel(f"masked ({int(hidden.sum())}/{len(hidden)} patches hidden)", [(visible, BLUE)]),
            Panel(self.reconstruction_title, [(visible, GREY), (predicted, RED)]),
        ]
        return draw_panels(panels, path)

    reconstruction_title: ClassVar[str] = "reconstruction"

    def reconstructed_selection(self, hidden: np.ndarray) -> np.ndarray:
        """Which patches the reconstruction panel draws in red."""
        return hidden

    def reconstructed_patches(self, model: MaskedModel, output, row: int) -> np.ndarray:  # noqa: ANN001
        raise NotImplementedError


def build_tokenizer(config: RecipeConfig) -> PointPatchTokenizer:
    patches = config.patches
    return PointPatchTokenizer(patches.num_groups, patches.group_size, patches.backend)


class PointMAERecipe(PointCloudRecipe):
    name = "pointcloud/point_mae"
    summary = "Point-MAE: 60% random patch masking, visible-only encoder, Chamfer reconstruction"
    config_class = PointMAEConfig
    presets = {
        "demo": presets.point_mae_demo,
        "proof": presets.point_mae_proof,
        "paper": presets.point_mae_paper,
    }
    reconstruction_title = "reconstruction (red: predicted)"

    def build_model(self, config: PointMAEConfig) -> MaskedModel:
        enc = config.encoder
        return MaskedModel(
            build_tokenizer(config),
            RandomMasker(config.mask.ratio),
            PointMAEEncoder(enc.dim, enc.depth, enc.heads, enc.pointnet_width, enc.drop_path),
            PointMAEDecoder(
                enc.dim, config.decoder.depth, config.decoder.heads, config.patches.group_size
            ),
            PatchChamferTarget(config.chamfer),
        )

    def reconstructed_patches(self, model: MaskedModel, output, row: int) -> np.ndarray:  # noqa: ANN001
        """Predictions sit at the masked patches (in ascending patch order)."""
        full = output.target[row].detach().float().cpu().numpy().copy()
        hidden = output.mask[row].cpu().numpy()
        full[hidden] = output.prediction[row].detach().float().cpu().numpy()
        return full


def build_dvae_parts(
    arch: DVAEArchitecture, config: RecipeConfig
) -> tuple[DVAEEncoder, GumbelQuantizer, DVAEDecoder]:
    """The dVAE's encoder, quantizer and decoder; the temperature schedule from `config.loss`
    when it has one (the dVAE recipe; the MPM stage only uses the dVAE in eval mode)."""
    graph = (arch.graph_input, tuple(arch.graph_widths), arch.graph_neighbours, arch.graph_groups)
    encoder = DVAEEncoder(arch.dim, arch.pointnet_width, *graph, arch.vocab_size, arch.logit_scale)
    loss = getattr(config, "loss", None)
    if loss is None:
        quantizer = GumbelQuantizer(arch.vocab_size, arch.token_dim)
    else:
        quantizer = GumbelQuantizer(arch.vocab_size, arch.token_dim, loss.temperature_start,
                                    loss.temperature_end, loss.temperature_steps,
                                    config.train.steps)  # fmt: skip
    graph = (*graph[:3], arch.decoder_graph_groups)
    decoder = DVAEDecoder(arch.token_dim, arch.decoder_dim, *graph, config.patches.group_size,
                          arch.coarse_width, arch.fold_width)  # fmt: skip
    return encoder, quantizer, decoder


class PointBERTDVAERecipe(PointCloudRecipe):
    name = "pointcloud/point_bert_dvae"
    summary = (
        "Point-BERT stage 1: dVAE point tokenizer (Gumbel-softmax, Chamfer + ramped KL of each "
        "cloud's mean code distribution to uniform)"
    )
    config_class = DVAEConfig
    presets = {"demo": presets.dvae_demo, "paper": presets.dvae_paper}
    reconstruction_title = "dVAE reconstruction from codes"

    def build_model(self, config: DVAEConfig) -> DVAEModel:
        encoder, quantizer, decoder = build_dvae_parts(config.model, config)
        loss = config.loss
        return DVAEModel(
            build_tokenizer(config),
            PointBlockMasker(config.mask.min_ratio, config.mask.max_ratio),
            encoder,
            quantizer,
            decoder,
            DVAELoss(
                loss.chamfer,
                loss.kl_weight,
                loss.kl_delay_steps,
                loss.kl_ramp_steps,
                config.train.steps,
            ),  # fmt: skip
        )

    def reconstructed_selection(self, hidden: np.ndarray) -> np.ndarray:
        return np.ones_like(hidden)  # the dVAE rebuilds every patch

    def reconstructed_patches(self, model: MaskedModel, output, row: int) -> np.ndarray:  # noqa: ANN001
        return output.prediction.fine[row].detach().float().cpu().numpy()


def load_frozen_dvae(config: PointBERTConfig) -> FrozenDVAE:
    """The dVAE of `config.dvae_run`, or (demo/testing fallback, when it is empty) a freshly
    initialised one seeded by `config.dvae_seed`."""
    if not config.dvae_run:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.dvae_seed)
            return FrozenDVAE(*build_dvae_parts(config.dvae, config))
    from omnimask.runs import load_run

    run = load_run(config.dvae_run)
    if run.recipe.name != PointBERTDVAERecipe.name:
        raise ValueError(
            f"dvae_run {config.dvae_run} is a {run.recipe.name!r} run, "
            f"not {PointBERTDVAERecipe.name!r}"
        )
    mismatched = [
        f"{section}.{key}: run has {getattr(theirs, key)!r}, config has {getattr(ours, key)!r}"
        for section, ours, theirs in (
            ("dvae", config.dvae, run.config.model),
            ("patches", config.patches, run.config.patches),
        )
        for key in vars(ours)
        if key != "backend" and getattr(ours, key) != getattr(theirs, key)
    ]
    if mismatched:
        raise ValueError(
            f"config does not match dvae_run {config.dvae_run}: " + "; ".join(mismatched)
        )
    model = run.model
    return FrozenDVAE(model.encoder, model.quantizer, model.decoder)


class PointBERTRecipe(PointCloudRecipe):
    name = "pointcloud/point_bert"
    summary = "Point-BERT stage 2: block-masked point modelling predicting frozen dVAE codes"
    config_class = PointBERTConfig
    batch_coupled_terms = {
        "loss": "holds the mixed cloud's terms",
        "mixed_code_loss": "each cloud is mixed with the cloud mirrored in its batch",
        "contrast": "the keys of the other clouds of the batch are negatives, and the mirrored "
        "cloud's key a partial positive",
    }
    presets = {
        "demo": presets.point_bert_demo,
        "proof": presets.point_bert_proof,
        "paper": presets.point_bert_paper,
    }
    reconstruction_title = "dVAE decode of predicted codes"

    def build_model(self, config: PointBERTConfig) -> MaskedModel:
        if config.dvae_run:  # saved resolved: the run is rebuilt from any working directory
            config.dvae_run = str(Path(config.dvae_run).resolve())
        enc, mix = config.encoder, config.mix
        parts = (
            build_tokenizer(config),
            PointBlockMasker(config.mask.min_ratio, config.mask.max_ratio),
            PointBERTEncoder(enc.dim, enc.depth, enc.heads, enc.pointnet_width, enc.drop_path),
            CodeHead(enc.dim, config.dvae.vocab_size),
            DVAECodeTarget(load_frozen_dvae(config)),
        )
        if not mix.enabled:
            return MaskedModel(*parts)
        return PointBERTModel(*parts, mix.head_dim, mix.momentum, mix.temperature,
                              mix.queue_size, mix.weight)  # fmt: skip

    def reconstructed_patches(self, model: MaskedModel, output, row: int) -> np.ndarray:  # noqa: ANN001
        """Codes: predicted at masked patches, the dVAE's own at visible ones; then decoded."""
        codes = torch.where(output.mask, output.prediction.argmax(-1), output.target)
        return model.target.dvae.decode(codes, output.tokens)[row].float().cpu().numpy()
