"""Recipes: a named, typed config with presets, and the factory that builds everything from it.

A recipe is what a plugin registers (`<plugin>/<method>`). Its config is a dataclass that extends
`RecipeConfig` with the method's own sections (`model`, `mask`...); presets are functions that
return a config (`demo` runs in about a minute on a CPU, `paper` is the paper's setting). A model is
built only from its config (the Hugging Face habit), so a run directory's `config.yaml` is enough
to rebuild it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset, default_collate

from omnimask.model import Batch, MaskedModel

#: `TrainConfig.optimizer` choices (timm implementations).
OPTIMIZERS = ("adamw", "lamb", "lion")


@dataclass
class TrainConfig:
    """Engine settings shared by every recipe."""

    steps: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    optimizer: str = "adamw"  # adamw | lamb | lion (timm implementations)
    lr: float = 1.5e-4
    lr_scale_batch: int = 0  # if > 0: lr is per `lr_scale_batch` samples (lr * batch / 256 rule)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0
    clip_grad: float = 0.0  # max grad norm; 0 disables clipping
    ema_decay: float = 0.0  # 0 disables EMA
    compile: bool = False
    # ddp: every process holds the whole model; fsdp: each holds a 1/N shard of the weights,
    # gradients and optimizer state (`omnimask.engine.fsdp`), for models that do not fit one device
    strategy: str = "ddp"
    mixed_precision: str = "bf16"  # bf16 autocast on CUDA ("no" to disable); always fp32 on CPU
    seed: int = 0
    # a run directory whose newest weights a fresh run starts from (`omnimask.engine.warm_start`:
    # the encoder must fit whole; other parts where names and shapes match); "" = the recipe's init
    init_from: str = ""
    checkpoint_every: int = 50
    keep_last: int = 3
    log_every: int = 10  # metrics are averaged over the steps between two log lines
    max_nonfinite: int = 5  # stop after this many non-finite losses in a row
    progress: bool = True
    # Health monitors (`omnimask.monitors`): RankMe, normalised-embedding std and code usage on a
    # fixed probe batch of `monitor_samples` samples, at the first log step at least
    # `monitor_every` steps after the last check (and at the end); 0 disables them.
    monitor_every: int = 50
    monitor_samples: int = 64


@dataclass
class FinetuneConfig:
    """`omnimask eval --protocol finetune`: how the encoder and a new classification head are
    fine-tuned end to end (`omnimask.finetune`). Evaluation only: changing it never blocks a
    resume, and `omnimask eval` takes `finetune.*` overrides."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    layer_decay: float = 1.0  # < 1: layer-wise lr decay (MAE ViT-B: 0.65); 1 turns it off
    label_smoothing: float = 0.1
    drop_path: float = 0.0  # stochastic depth of the last residual block, linear in depth
    clip_grad: float = 0.0


@dataclass
class DataConfig:
    """Where the data comes from and what to do with bad samples."""

    path: str | None = None  # None: the plugin's embedded default data
    on_bad_sample: str = "raise"  # raise | skip
    num_workers: int = 0
    shuffle: bool = True
    # > 0: length-bucketed batches (recipes whose `sample_lengths` gives lengths): samples are
    # sorted by length within groups of this many global batches, cutting padding.
    bucket_batches: int = 0
    # where chunks of a shard set on object storage (`path: s3://...`) are kept; default
    # `$OMNIMASK_DATA_DIR/shards/<hash of the URL>` (`omnimask.shards`)
    shard_cache: str | None = None


@dataclass
class RecipeConfig:
    """Base of every recipe's config: subclasses add `model`, `mask`... sections."""

    recipe: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


class Recipe(ABC):
    """Builds a pipeline's parts from its config. One subclass per method."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    config_class: ClassVar[type[RecipeConfig]]
    #: preset name -> function returning the full config; must include "demo".
    presets: ClassVar[dict[str, Callable[[], RecipeConfig]]]
    #: what `omnimask eval --data` expects, for the error a user sees when it is missing or
    #: unusable, e.g. "a folder with one sub-folder of images per class".
    labelled_layout: ClassVar[str] = ""
    #: evaluation protocols of the recipe's own (e.g. segmentation), beside the core's linear,
    #: knn and finetune; `evaluate_protocol` runs them.
    protocols: ClassVar[Sequence[str]] = ()
    #: config sections that only the recipe's protocols read: `omnimask eval` takes overrides of
    #: them, and they may change when a run is resumed (like `finetune`).
    eval_sections: ClassVar[Sequence[str]] = ()
    #: plugin export formats besides safetensors (which the core always writes).
    export_formats: ClassVar[Sequence[str]] = ()
    #: terms of the loss dict that depend on the other samples of the batch by design (InfoNCE
    #: negatives, a codebook's batch perplexity, a metric over a subset of the tokens), each
    #: with why; `loss` itself when one of them is part of it. Every other term must not depend
    #: on how a batch is split ("Losses and the batch" in core/README.md): the conformance kit
    #: checks it.
    batch_coupled_terms: ClassVar[dict[str, str]] = {}

    def config(self, preset: str = "demo") -> RecipeConfig:
        if preset not in self.presets:
            known = ", ".join(sorted(self.presets))
            raise KeyError(f"recipe {self.name!r} has no preset {preset!r}; presets: {known}")
        config = self.presets[preset]()
        config.recipe = self.name
        return config

    @abstractmethod
    def build_model(self, config: RecipeConfig) -> MaskedModel:
        """The `MaskedModel` described by `config`, freshly initialised."""

    @abstractmethod
    def build_dataset(self, config: RecipeConfig) -> Dataset:
        """The unlabelled training set: `config.data.path`, or the embedded default data.

        Items are dicts of tensors. A sample that cannot be read raises `BadSampleError`
        naming the file; the engine applies `config.data.on_bad_sample`. A data set that drops
        bad input while it is built (under `skip`: a corpus line, a scene pair) lists why in a
        `skipped_at_load: list[str]` attribute, which the engine adds to `skipped_samples`.
        """

    def configure(self, config: RecipeConfig, dataset: Dataset) -> None:
        """Fill the config values that come from the data (a table's columns, a vocabulary's
        size) into `config`, in place. The engine calls it between `build_dataset` and
        `build_model`, before the run's `config.yaml` is written or compared, so the values are
        saved with the run and `load_run`, eval and export need no data. Default: nothing."""
        return None

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        """Samples -> batch. Override for variable-length data (padding, packing)."""
        return default_collate(samples)

    def sample_lengths(self, dataset: Dataset, config: RecipeConfig) -> Sequence[int] | None:
        """Each sample's length (frames, tokens: what `collate` pads), for length-bucketed
        batches when `config.data.bucket_batches > 0`; None: the recipe has no lengths.

        Read them from cheap metadata (file headers, an index), not by loading the samples. They
        only decide which samples share a batch, so where random augmentation changes a length,
        its known bound (the crop length) serves. They must not vary between calls: a resumed
        run recomputes them and must get the same batches.
        """
        return None

    def tokens_per_sample(self, config: RecipeConfig) -> int | None:
        """Token count of one sample when it is fixed (for FLOP and throughput estimates)."""
        return None

    def build_eval_datasets(
        self, config: RecipeConfig, path: str | None = None
    ) -> tuple[Dataset, Dataset]:
        """Labelled (train, test) sets for `omnimask eval`: items carry an int `label`."""
        raise NotImplementedError(f"recipe {self.name!r} has no labelled evaluation data")

    def evaluate_protocol(
        self,
        protocol: str,
        model: MaskedModel,
        config: RecipeConfig,
        data: str | None,
        name: str = "model",
    ) -> dict[str, float]:
        """Score `model` with one of the recipe's own `protocols` on `data` (None: the embedded
        labelled set); called for the pretrained model and for the same architecture at random
        init, and must follow `config.train.seed` so that both see the same protocol. The
        figures (e.g. `{"dice_mean": ...}`) land in `eval.json` as `<protocol>/<figure>`."""
        raise NotImplementedError(f"recipe {self.name!r} has no protocol {protocol!r}")

    def visualize(self, model: MaskedModel, config: RecipeConfig, batch: Batch, path: Path) -> Path:
        """Write an original | masked | reconstruction PNG for `batch` to `path`; `config` is the
        run's (band layouts, statistics and sizes the figure draws with)."""
        raise NotImplementedError(f"recipe {self.name!r} has no figure")

    def export(self, model: MaskedModel, config: RecipeConfig, fmt: str, out_dir: Path) -> Path:
        """Write the encoder in a plugin format (one of `export_formats`) under `out_dir`."""
        raise NotImplementedError(f"recipe {self.name!r} cannot export {fmt!r}")

    def load_export(self, config: RecipeConfig, fmt: str, path: Path) -> Callable[[Batch], Any]:
        """Load what `export` wrote through the target ecosystem's own loader.

        Returns `embed(batch) -> [B, D]` that must equal `MaskedModel.embed(batch)` of the
        exported model: the conformance kit's export round trip checks exactly that.
        """
        raise NotImplementedError(f"recipe {self.name!r} cannot load {fmt!r}")
