"""CROMA's typed config: model, mask, loss, chip and band-statistics sections, and presets."""

from __future__ import annotations

from dataclasses import dataclass, field

from omnimask.recipe import RecipeConfig


@dataclass
class CromaModelConfig:
    """Widths and depths; radar and joint encoders get half of `depth` (CROMA's layout)."""

    dim: int = 768
    depth: int = 12
    heads: int = 16
    patch_size: int = 8
    decoder_dim: int = 512
    decoder_depth: int = 1
    decoder_heads: int = 8
    #: what `embed` (probe, kNN, export) returns: optical | radar | joint | concat (all three)
    embedding: str = "concat"


@dataclass
class CromaMaskConfig:
    ratio: float = 0.75


@dataclass
class CromaLossConfig:
    contrastive_weight: float = 1.0
    reconstruction_weight: float = 1.0
    temperature: float = 0.07  # initial; the logit scale is learned


@dataclass
class ChipConfig:
    """How scenes become chips and how files are read."""

    size: int = 120
    s1_bands: int = 2  # VV, VH
    s2_bands: int = 12  # B1..B12 without B10
    s1_linear: bool = False  # True: S1 files hold linear backscatter, converted to dB on read
    rgb_bands: tuple[int, int, int] = (3, 2, 1)  # S2 indices of B4, B3, B2 for figures


@dataclass
class BandStats:
    """Per-band mean/std used to standardise inputs. Empty lists: computed from the training
    data in one pass when the data set is built, then saved with the run's config, so the run
    directory alone rebuilds the same normalisation."""

    s1_mean: list[float] = field(default_factory=list)
    s1_std: list[float] = field(default_factory=list)
    s2_mean: list[float] = field(default_factory=list)
    s2_std: list[float] = field(default_factory=list)

    def complete(self, s1_bands: int, s2_bands: int) -> bool:
        sizes = (len(self.s1_mean), len(self.s1_std), len(self.s2_mean), len(self.s2_std))
        return sizes == (s1_bands, s1_bands, s2_bands, s2_bands)


@dataclass
class CromaConfig(RecipeConfig):
    model: CromaModelConfig = field(default_factory=CromaModelConfig)
    mask: CromaMaskConfig = field(default_factory=CromaMaskConfig)
    loss: CromaLossConfig = field(default_factory=CromaLossConfig)
    chips: ChipConfig = field(default_factory=ChipConfig)
    stats: BandStats = field(default_factory=BandStats)


def demo() -> CromaConfig:
    """A tiny CROMA on the embedded scenes: about a minute on two CPU cores."""
    config = CromaConfig()
    config.model = CromaModelConfig(
        dim=64, depth=2, heads=16, decoder_dim=32, decoder_depth=1, decoder_heads=4
    )
    config.chips.size = 32
    config.train.steps = 80
    config.train.batch_size = 16
    config.train.lr = 1e-3
    config.train.warmup_steps = 10
    config.train.checkpoint_every = 40
    return config


def proof() -> CromaConfig:
    """The `benchmarks/learning.py` preset: the demo's CROMA (width 64, optical depth 2) with
    4 px patches (8 x 8 tokens per 32 px chip), CROMA's losses and shared 75% mask, 3000 steps
    of batch 16 at lr 1e-3 on the embedded scenes (unlabelled tiles), 4-7 minutes on one CPU
    thread. Embeddings are the joint encoder's pooled output.

    The embedded chips' label (which cover the radar sees bright) lies only in how radar and
    optical patches relate: the optical and radar encoders' pooled vectors cannot hold it, so
    the joint one is probed. 8 px patches mix several covers in most patches (a 1500-step trial
    learned nothing); 4 px patches mostly stay inside one cover."""
    config = demo()
    config.model.patch_size = 4
    config.model.embedding = "joint"
    config.train.steps = 3000
    config.train.warmup_steps = 150
    config.train.checkpoint_every = 1000
    config.train.log_every = 50
    return config


def paper() -> CromaConfig:
    """CROMA-B: ViT-B optical encoder (12 x 768, 16 heads), radar and joint encoders of depth 6,
    120 px SSL4EO-S12 chips, patch 8 (15 x 15 tokens), a shared 75% mask, decoder 512 wide,
    1 deep, 8 heads (as in the official code). The optimiser schedule is an AdamW/cosine setting
    of ours, not checked against the paper's appendix."""
    config = CromaConfig()
    config.train.steps = 100_000
    config.train.batch_size = 256
    config.train.lr = 1.5e-4
    config.train.lr_scale_batch = 256
    config.train.warmup_steps = 5_000
    config.train.clip_grad = 1.0
    return config
