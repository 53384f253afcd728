"""`timeseries/mae`: the typed config, its presets, and the factory the core calls."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omnimask import MaskedModel, Recipe, RecipeConfig, Tokens
from omnimask.config import ConfigError
from omnimask.masking import RandomMasker
from omnimask.patching import unpatchify
from omnimask.shards import ShardDataset, open_shard_set
from torch import Tensor
from torch.utils.data import Dataset

from omnimask_timeseries.data import (
    DEFAULT_CHANNELS,
    DEFAULT_LENGTH,
    SeriesDataset,
    default_data,
    read_labels,
    series_channels,
    series_files,
)
from omnimask_timeseries.model import (
    PatchTarget,
    SeriesDecoder,
    SeriesEmbedder,
    SeriesEncoder,
    SeriesPatchTokenizer,
)

EXPORTED_PROGRAM_FILE = "embedder.pt2"


@dataclass
class SeriesModelConfig:
    # .npy rows / .csv columns; 0: read from the data's first file (`TimeSeriesMAE.configure`)
    channels: int = DEFAULT_CHANNELS
    window: int = 128  # time steps per training crop
    patch: int = 8  # time steps per token; must divide `window`
    instance_norm: bool = True  # per-series, per-channel standardisation (RevIN-style)
    norm_target: bool = True  # predict per-patch normalised values (MAE's norm_pix_loss)
    encoder_dim: int = 64
    encoder_depth: int = 2
    encoder_heads: int = 4
    decoder_dim: int = 32
    decoder_depth: int = 1
    decoder_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0


@dataclass
class MaskConfig:
    ratio: float = 0.5  # fraction of patches hidden from the encoder


@dataclass
class TimeSeriesMAEConfig(RecipeConfig):
    model: SeriesModelConfig = field(default_factory=SeriesModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)


def demo() -> TimeSeriesMAEConfig:
    """Tiny: 16 patches of 8 steps, a 2-block encoder; well under a minute on 2 CPU cores."""
    config = TimeSeriesMAEConfig()
    config.train.steps = 150
    config.train.batch_size = 32
    config.train.lr = 3e-3
    config.train.warmup_steps = 10
    config.train.checkpoint_every = 50
    return config


def proof() -> TimeSeriesMAEConfig:
    """The demo trained 10x longer (1500 steps, 20-40 s on one CPU thread): long enough that
    the linear probe on the embedded classes clearly beats the same encoder at random init
    (`benchmarks/learning.py --recipe timeseries/mae`; at 600 steps one seed of two did not)."""
    config = demo()
    config.train.steps = 1500
    config.train.checkpoint_every = 500
    return config


def paper() -> TimeSeriesMAEConfig:
    """PatchTST's self-supervised setting (Nie et al., ICLR 2023): 512-step inputs, 40% of
    patches masked, a 3-layer encoder of width 128 with 16 heads (MLP 256), dropout 0.2, lr 1e-4.
    PatchTST uses 12-step patches and pads the input; we take 16 so patches tile the window, and
    mix channels in each token (Ti-MAE) where PatchTST treats channels independently."""
    config = TimeSeriesMAEConfig()
    config.model = SeriesModelConfig(
        window=512,
        patch=16,
        encoder_dim=128,
        encoder_depth=3,
        encoder_heads=16,
        decoder_dim=64,
        decoder_depth=1,
        decoder_heads=8,
        mlp_ratio=2.0,
        dropout=0.2,
    )
    config.mask.ratio = 0.4
    config.train.steps = 20000
    config.train.batch_size = 64
    config.train.lr = 1e-4
    config.train.warmup_steps = 500
    config.train.weight_decay = 0.0
    config.train.betas = (0.9, 0.999)
    config.train.clip_grad = 1.0
    return config


def _check(config: TimeSeriesMAEConfig) -> None:
    model = config.model
    if model.window % model.patch:
        raise ConfigError(f"model.patch ({model.patch}) must divide model.window ({model.window})")
    if not 0.0 < config.mask.ratio < 1.0:
        raise ConfigError(f"mask.ratio must be in (0, 1), got {config.mask.ratio}")


class TimeSeriesMAE(Recipe):
    name = "timeseries/mae"
    labelled_layout = (
        "a folder of series files with a labels.csv (header file,label,split; split is train "
        "or test)"
    )
    summary = "masked autoencoder on multichannel series patches (PatchTST / Ti-MAE style)"
    config_class = TimeSeriesMAEConfig
    presets = {"demo": demo, "proof": proof, "paper": paper}
    export_formats = ("pt2",)

    def build_model(self, config: TimeSeriesMAEConfig) -> MaskedModel:
        _check(config)
        m = config.model
        patch_dim = m.patch * m.channels
        return MaskedModel(
            SeriesPatchTokenizer(m.patch, m.instance_norm),
            RandomMasker(config.mask.ratio),
            SeriesEncoder(
                patch_dim, m.encoder_dim, m.encoder_depth, m.encoder_heads, m.mlp_ratio, m.dropout
            ),
            SeriesDecoder(
                m.encoder_dim, patch_dim, m.decoder_dim, m.decoder_depth, m.decoder_heads
            ),
            PatchTarget(m.norm_target),
        )

    def _default_data(self, config: TimeSeriesMAEConfig) -> Path:
        m = config.model
        if m.channels not in (0, DEFAULT_CHANNELS) or m.window > DEFAULT_LENGTH:
            raise ValueError(
                f"the embedded data has {DEFAULT_CHANNELS} channels of {DEFAULT_LENGTH} steps; "
                f"model.channels={m.channels}, model.window={m.window} need your own data "
                "(--data PATH)"
            )
        return default_data()

    def build_dataset(self, config: TimeSeriesMAEConfig) -> Dataset:
        _check(config)
        m = config.model
        shards = open_shard_set(
            config.data.path, SeriesDataset.record_kind, config.data.shard_cache
        )
        if shards is not None:  # written by `omnimask prepare --out`
            if m.channels:
                shards.require({"model.channels": m.channels})
            return shards.dataset(SeriesDataset([], m.channels, m.window).sample)
        if config.data.path is not None:
            files = series_files(config.data.path)
        else:
            files, _ = read_labels(self._default_data(config))["train"]
        return SeriesDataset(files, config.model.channels, config.model.window)

    def configure(self, config: TimeSeriesMAEConfig, dataset: Dataset) -> None:
        """`model.channels=0`: the channel count of the data's first file (or of the series
        a shard set was written from), set in the config (saved with the run, so eval and
        export need no data) and in the data set."""
        if config.model.channels == 0 and isinstance(dataset, ShardDataset):
            config.model.channels = dataset.shards.attributes["model.channels"]
        if config.model.channels == 0 and isinstance(dataset, SeriesDataset):
            config.model.channels = dataset.channels = series_channels(dataset.files[0])

    def tokens_per_sample(self, config: TimeSeriesMAEConfig) -> int:
        return config.model.window // config.model.patch

    def build_eval_datasets(
        self, config: TimeSeriesMAEConfig, path: str | None = None
    ) -> tuple[Dataset, Dataset]:
        """Centre crops of the series listed in `labels.csv` under `path` (or the default data)."""
        root = Path(path) if path is not None else self._default_data(config)
        m = config.model
        return tuple(  # type: ignore[return-value]
            SeriesDataset(files, m.channels, m.window, labels, crop="center")
            for files, labels in read_labels(root).values()
        )

    def visualize(
        self,
        model: MaskedModel,
        config: TimeSeriesMAEConfig,
        batch: dict,
        path: Path,
        rows: int = 4,
    ) -> Path:
        """Per series: original | masked (hidden patches greyed) | reconstruction over the
        original, in the data's own units."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        device = next(model.parameters()).device
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        with torch.no_grad():
            output = model.predict(batch, torch.Generator().manual_seed(0))
        reconstruction = self._unnormalise(model, output.tokens, output.prediction.float()).cpu()
        original = batch["series"].float().cpu()
        mask = output.mask.cpu()
        patch = model.tokenizer.patch
        rows = min(rows, len(original))
        figure, axes = plt.subplots(rows, 3, figsize=(12, 2.2 * rows), squeeze=False)
        steps = torch.arange(original.shape[-1])
        for row in range(rows):
            hidden = [i for i, hide in enumerate(mask[row].tolist()) if hide]
            for column, title in enumerate(("original", "masked", "reconstruction")):
                axis = axes[row, column]
                if column > 0:
                    for i in hidden:
                        axis.axvspan(i * patch, (i + 1) * patch, color="0.85", lw=0)
                for channel, values in enumerate(original[row]):
                    colour = f"C{channel}"
                    if column == 0:
                        axis.plot(steps, values, color=colour, lw=1)
                    elif column == 1:
                        shown = values.clone()
                        for i in hidden:
                            shown[i * patch : (i + 1) * patch] = float("nan")
                        axis.plot(steps, shown, color=colour, lw=1)
                    else:
                        axis.plot(steps, values, color="0.6", lw=0.8)
                        axis.plot(steps, reconstruction[row, channel], color=colour, lw=1)
                if row == 0:
                    axis.set_title(title)
                axis.set_xlim(0, len(steps) - 1)
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
        plt.close(figure)
        return path

    @staticmethod
    def _unnormalise(model: MaskedModel, tokens: Tokens, prediction: Tensor) -> Tensor:
        """Predicted patches -> series `[B, C, T]` in the input's units."""
        if model.target.normalize:  # undo per_patch_normalize with the true patches' statistics
            patches = tokens.values.float()
            mean = patches.mean(-1, keepdim=True)
            std = (patches.var(-1, keepdim=True) + 1e-6).sqrt()
            prediction = prediction * std + mean
        channels = prediction.shape[-1] // model.tokenizer.patch
        series = unpatchify(prediction, (model.tokenizer.patch,), tokens.grid, channels)
        if "series_std" in tokens.extras:
            series = series * tokens.extras["series_std"] + tokens.extras["series_mean"]
        return series

    def export(
        self, model: MaskedModel, config: TimeSeriesMAEConfig, fmt: str, out_dir: Path
    ) -> Path:
        """The embedder as a `torch.export` program (`.pt2`): PyTorch's successor to TorchScript,
        loadable with `torch.export.load(path).module()` and no omnimask code. The batch size is
        a dynamic dimension; channels and window are fixed, as the model is built for them."""
        if fmt != "pt2":
            raise ValueError(f"recipe {self.name!r} cannot export {fmt!r}")
        embedder = copy.deepcopy(SeriesEmbedder(model.tokenizer, model.encoder)).cpu().eval()
        shape = (2, config.model.channels, config.model.window)
        example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(embedder, (example,), dynamic_shapes=({0: batch},))
        path = Path(out_dir) / EXPORTED_PROGRAM_FILE
        torch.export.save(program, path)
        return path

    def load_export(self, config: TimeSeriesMAEConfig, fmt: str, path: Path):  # noqa: ANN201
        """`embed(batch) -> [B, D]` from the `.pt2` file alone."""
        if fmt != "pt2":
            raise ValueError(f"recipe {self.name!r} cannot load {fmt!r}")
        path = Path(path)
        module = torch.export.load(path / EXPORTED_PROGRAM_FILE if path.is_dir() else path).module()

        def embed(batch: dict) -> Tensor:
            with torch.no_grad():
                return module(batch["series"].float().cpu())

        return embed
