"""`video/videomae`: the typed config, its presets and the recipe that builds everything from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from omnimask import MaskedModel, Recipe, RecipeConfig
from omnimask.masking import TubeMasker
from omnimask.patching import patch_grid
from omnimask.shards import open_shard_set
from torch.utils.data import Dataset

from omnimask_video.data import (
    ClipDataset,
    ClipSpec,
    clip_sample,
    labelled_sources,
    pretraining_sources,
)
from omnimask_video.models.videomae import (
    TubeletPixelTarget,
    TubeletTokenizer,
    VideoMAEDecoder,
    VideoMAEEncoder,
    hf_config,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ClipConfig:
    """Clip sampling: `num_frames` frames every `stride` frames, short side scaled to `size` and
    a square crop. `short_clip` says what a source shorter than the clip's span gets:
    `loop` (wrap to the start), `pad` (repeat the last frame) or `error` (a bad sample)."""

    num_frames: int = 16
    stride: int = 4
    size: int = 224
    short_clip: str = "loop"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class ModelConfig:
    tubelet: int = 2  # frames per tubelet
    patch: int = 16  # pixels per tubelet side
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    decoder_dim: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6


@dataclass
class MaskConfig:
    ratio: float = 0.9  # of each frame's tubelet positions; the same ones at every time step


@dataclass
class TargetConfig:
    norm_pix: bool = True  # standardise each tubelet's pixels before the MSE
    per_channel: bool = True  # VideoMAE: each colour channel of a tubelet on its own


@dataclass
class VideoMAEConfig(RecipeConfig):
    clip: ClipConfig = field(default_factory=ClipConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    target: TargetConfig = field(default_factory=TargetConfig)


def paper() -> VideoMAEConfig:
    """ViT-B, 16 frames at stride 4 (Kinetics-400), 224x224, 90% tube masking, decoder 4 x 384;
    AdamW lr 1.5e-4 per 256 clips, betas (0.9, 0.95), weight decay 0.05, batch 1024,
    800 epochs of Kinetics-400 (~240k clips) with 40 warmup epochs."""
    config = VideoMAEConfig()
    train = config.train
    train.batch_size, train.grad_accum = 64, 16
    train.lr, train.lr_scale_batch = 1.5e-4, 256
    train.steps = 800 * 240_000 // 1024
    train.warmup_steps = 40 * 240_000 // 1024
    train.checkpoint_every = 1000
    config.data.num_workers = 8
    # VideoMAE's ViT-B Kinetics-400 fine-tuning: lr 1e-3 per 256 clips at batch 512, layer
    # decay 0.75, label smoothing 0.1, 75 epochs with 5 of warmup. Its drop path 0.1 is left
    # out (the encoder is Hugging Face's VideoMAEModel, which has none), and so are mixup,
    # cutmix and RandAugment.
    tune = config.finetune
    tune.batch_size, tune.lr, tune.weight_decay = 512, 2e-3, 0.05
    tune.layer_decay, tune.label_smoothing = 0.75, 0.1
    tune.steps, tune.warmup_steps = 75 * 240_000 // 512, 5 * 240_000 // 512
    return config


def demo() -> VideoMAEConfig:
    """A small ViT on 8-frame 64x64 clips of the embedded moving shapes: ~1 minute on 2 cores."""
    config = VideoMAEConfig(
        clip=ClipConfig(num_frames=8, stride=2, size=64),
        model=ModelConfig(
            dim=96, depth=4, heads=4, decoder_dim=64, decoder_depth=2, decoder_heads=4
        ),
    )
    train = config.train
    train.steps, train.batch_size = 120, 8
    train.lr, train.warmup_steps = 1e-3, 10
    train.checkpoint_every = 60
    config.data.num_workers = 1
    config.finetune.layer_decay = 0.75
    return config


def proof() -> VideoMAEConfig:
    """The demo trained 4x longer (480 steps, about 2 minutes on one CPU thread): VideoMAE
    learns slowly, and the embedded motions (right, left, down, up, spin) are told apart only
    once the encoder models how the shape moves (`benchmarks/learning.py`)."""
    config = demo()
    config.train.steps, config.train.checkpoint_every = 480, 160
    return config


class VideoMAERecipe(Recipe):
    name = "video/videomae"
    labelled_layout = (
        "a folder of <class>/ sub-folders of videos (or train/<class>/ and test/<class>/)"
    )
    summary = (
        "VideoMAE: 2x16x16 tubelets, 90% tube masking, visible-only ViT, per-tubelet normalised MSE"
    )
    config_class = VideoMAEConfig
    presets: dict[str, Callable[[], RecipeConfig]] = {"demo": demo, "proof": proof, "paper": paper}
    export_formats = ("hf",)

    def build_model(self, config: VideoMAEConfig) -> MaskedModel:
        clip, model = config.clip, config.model
        tubelet = (model.tubelet, model.patch, model.patch)
        grid = patch_grid((clip.num_frames, clip.size, clip.size), tubelet)
        encoder = VideoMAEEncoder(
            hf_config(
                clip.num_frames,
                clip.size,
                model.tubelet,
                model.patch,
                model.dim,
                model.depth,
                model.heads,
                model.mlp_ratio,
            )
        )
        tubelet_values = model.tubelet * model.patch**2 * len(clip.mean)
        decoder = VideoMAEDecoder(
            model.dim,
            model.decoder_dim,
            model.decoder_depth,
            model.decoder_heads,
            num_tokens=grid[0] * grid[1] * grid[2],
            out_dim=tubelet_values,
            mlp_ratio=model.mlp_ratio,
        )
        target = TubeletPixelTarget(
            clip.mean, clip.std, config.target.norm_pix, config.target.per_channel
        )
        return MaskedModel(
            TubeletTokenizer(tubelet), TubeMasker(config.mask.ratio), encoder, decoder, target
        )

    def clip_spec(self, config: VideoMAEConfig) -> ClipSpec:
        clip = config.clip
        return ClipSpec(
            clip.num_frames,
            clip.stride,
            clip.size,
            tuple(clip.mean),
            tuple(clip.std),
            clip.short_clip,
        )

    def build_dataset(self, config: VideoMAEConfig) -> Dataset:
        shards = open_shard_set(config.data.path, ClipDataset.record_kind, config.data.shard_cache)
        if shards is not None:  # written by `omnimask prepare --out`
            return shards.dataset(partial(clip_sample, spec=self.clip_spec(config), train=True))
        return ClipDataset(
            pretraining_sources(config.data.path), self.clip_spec(config), train=True
        )

    def build_eval_datasets(
        self, config: VideoMAEConfig, path: str | None = None
    ) -> tuple[Dataset, Dataset]:
        (train, train_labels), (test, test_labels), _ = labelled_sources(path)
        spec = self.clip_spec(config)
        return ClipDataset(train, spec, False, train_labels), ClipDataset(
            test, spec, False, test_labels
        )

    def tokens_per_sample(self, config: VideoMAEConfig) -> int:
        clip, model = config.clip, config.model
        grid = patch_grid(
            (clip.num_frames, clip.size, clip.size), (model.tubelet, model.patch, model.patch)
        )
        return grid[0] * grid[1] * grid[2]

    def visualize(
        self, model: MaskedModel, config: VideoMAEConfig, batch: dict, path: Path
    ) -> Path:
        from omnimask_video.figures import draw_reconstruction

        return draw_reconstruction(model, batch, path)

    def export(self, model: MaskedModel, config: VideoMAEConfig, fmt: str, out_dir: Path) -> Path:
        from omnimask_video.export import export_hf

        return export_hf(model, config.clip, out_dir)

    def load_export(self, config: VideoMAEConfig, fmt: str, path: Path) -> Callable[[dict], Any]:
        from omnimask_video.export import load_hf

        return load_hf(path)
