"""Typed configs of the point-cloud recipes, and their presets (demo: tiny, on the embedded
reliefs, about a minute on a CPU; proof: the demo trained long enough to beat random init;
paper: the papers' settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omnimask import RecipeConfig


@dataclass
class PatchConfig:
    """How a cloud becomes tokens (both papers: 1024 points, 64 patches of 32)."""

    num_points: int = 1024
    num_groups: int = 64
    group_size: int = 32
    backend: str = "auto"  # auto: compiled FPS/kNN on CPU, PyTorch on CUDA; torch: PyTorch always


@dataclass
class TransformerConfig:
    dim: int = 384
    depth: int = 12
    heads: int = 6
    pointnet_width: int = 128
    drop_path: float = 0.1


@dataclass
class MAEDecoderConfig:
    depth: int = 4
    heads: int = 6


@dataclass
class RandomMaskConfig:
    ratio: float = 0.6


@dataclass
class BlockMaskConfig:
    min_ratio: float = 0.25
    max_ratio: float = 0.45


@dataclass
class PatchMixConfig:
    """Point-BERT's point-patch mixing and its momentum-contrast term on [CLS]
    (`cfgs/Mixup_models/Point-BERT.yaml`: `cutmix_loss` on, m 0.999, T 0.07, a queue of 16384,
    a [CLS] projection of 512). `enabled=false`: masked point modelling alone."""

    enabled: bool = True
    weight: float = 1.0  # of the contrastive term, beside the two code cross-entropies
    momentum: float = 0.999
    temperature: float = 0.07
    queue_size: int = 16_384
    head_dim: int = 512


@dataclass
class DVAEArchitecture:
    """Point-BERT's dVAE (`cfgs/ShapeNet55_models/dvae.yaml`, `models/dvae.py`): 8192 codes;
    encoder, code and decoder features of 256; mini-PointNet 128/256/512; DGCNNs with an input
    projection to 128, EdgeConv layers of 256, 512, 512, 1024 over the 4 nearest patch centres
    and GroupNorm(4); folding decoder with hidden widths 1024, 1024 (coarse) and 512, 512 (fold)."""

    vocab_size: int = 8192
    dim: int = 256  # encoder features (Point-BERT's encoder_dims)
    token_dim: int = 256  # codebook vectors (tokens_dims)
    decoder_dim: int = 256  # decoder DGCNN output (decoder_dims)
    pointnet_width: int = 128
    graph_input: int = 128
    graph_widths: tuple[int, ...] = (256, 512, 512, 1024)
    graph_neighbours: int = 4
    graph_groups: int = 4  # encoder DGCNN; 0: one group per channel; -1: no normalisation
    decoder_graph_groups: int = 4  # the decoder's DGCNN, the same way
    logit_scale: float = 1.0  # initial gain of the code logits' GroupNorm
    coarse_width: int = 1024
    fold_width: int = 512


@dataclass
class DVAELossConfig:
    """Point-BERT's schedules are in steps (`tools/runner.py`): the Gumbel temperature follows a
    half cosine 1 -> 0.0625 over the first 100k steps; the KL weight is 0 for 10k steps, then a
    half cosine 0 -> 0.1 over the next 100k."""

    chamfer: str = "l1"  # l1 | l2
    kl_weight: float = 0.1
    kl_delay_steps: int = 10_000
    kl_ramp_steps: int = 100_000
    temperature_start: float = 1.0
    temperature_end: float = 0.0625
    temperature_steps: int = 100_000


@dataclass
class PointMAEConfig(RecipeConfig):
    patches: PatchConfig = field(default_factory=PatchConfig)
    encoder: TransformerConfig = field(default_factory=TransformerConfig)
    decoder: MAEDecoderConfig = field(default_factory=MAEDecoderConfig)
    mask: RandomMaskConfig = field(default_factory=RandomMaskConfig)
    chamfer: str = "l2"


@dataclass
class DVAEConfig(RecipeConfig):
    patches: PatchConfig = field(default_factory=PatchConfig)
    model: DVAEArchitecture = field(default_factory=DVAEArchitecture)
    loss: DVAELossConfig = field(default_factory=DVAELossConfig)
    #: drawn only for the figure: what the MPM stage will hide.
    mask: BlockMaskConfig = field(default_factory=BlockMaskConfig)


@dataclass
class PointBERTConfig(RecipeConfig):
    """Stage 2. `dvae_run` names the trained `pointcloud/point_bert_dvae` run directory whose
    frozen dVAE gives the targets; `dvae` must match that run's `model` section.

    Empty `dvae_run` is the DEMO/TESTING FALLBACK ONLY: a freshly initialised dVAE (seeded by
    `dvae_seed`, frozen) gives deterministic but meaningless codes, so the pipeline can be run
    and tested without first training stage 1. Real pretraining must set `dvae_run`.
    """

    patches: PatchConfig = field(default_factory=PatchConfig)
    encoder: TransformerConfig = field(default_factory=TransformerConfig)
    mask: BlockMaskConfig = field(default_factory=BlockMaskConfig)
    mix: PatchMixConfig = field(default_factory=PatchMixConfig)
    dvae: DVAEArchitecture = field(default_factory=DVAEArchitecture)
    dvae_run: str = ""
    dvae_seed: int = 0


def _demo_train(config: RecipeConfig, steps: int, lr: float) -> None:
    config.train.steps = steps
    config.train.batch_size = 16
    config.train.lr = lr
    config.train.warmup_steps = 5
    config.train.weight_decay = 0.05
    config.train.checkpoint_every = steps


def _demo_patches() -> PatchConfig:
    return PatchConfig(num_points=512, num_groups=32, group_size=16)


def _demo_transformer() -> TransformerConfig:
    return TransformerConfig(dim=64, depth=2, heads=4, pointnet_width=32, drop_path=0.0)


def _demo_dvae() -> DVAEArchitecture:
    """The paper's dVAE scaled down, with three changes that make its codes matter at this size
    (issue #17; figures in the plugin README):

    - its encoder DGCNN normalises each channel on its own (`graph_groups=0`): with GroupNorm(4)
      at this width every patch of every cloud starts on the same code (perplexity 1 of 64);
      and the code logits' GroupNorm gain starts at 8 (`logit_scale`, with the temperature
      scaled to match in `dvae_demo`), so the Gumbel noise does not drown logits of unit spread;
    - no normalisation in the decoder's DGCNN (`decoder_graph_groups=-1`): with any GroupNorm
      there the decoder predicted about the patch centre whatever the codes;
    - each patch alone in its DGCNN graph (`graph_neighbours=1`, i.e. per-patch MLPs): with 4
      neighbours the 300-step demo learnt codes that mattered much less.

    256 codes (the paper's 8,192 scaled down): with 64, the codes mostly said which way a patch
    faces (a kNN from the patch centre alone recovered 28% of them; 12% of 256), and stage 2
    predicting them moved the `proof` kNN probe by 2 points instead of 5 (plugin README)."""
    return DVAEArchitecture(vocab_size=256, dim=64, token_dim=32, decoder_dim=64, pointnet_width=32,
                            graph_input=32, graph_widths=(32, 64, 64, 128), graph_neighbours=1,
                            graph_groups=0, decoder_graph_groups=-1, logit_scale=8.0,
                            coarse_width=128, fold_width=64)  # fmt: skip


def point_mae_demo() -> PointMAEConfig:
    config = PointMAEConfig(patches=_demo_patches(), encoder=_demo_transformer(),
                            decoder=MAEDecoderConfig(depth=1, heads=4))  # fmt: skip
    _demo_train(config, steps=120, lr=2e-3)
    return config


def point_mae_proof() -> PointMAEConfig:
    """The demo model trained 33x longer (4,000 steps, 3-4 minutes on one CPU thread), for
    `benchmarks/learning.py`: the embedded reliefs are told apart only once the encoder relates
    each patch's curvature to where the surface faces, which random features do not (plugin
    README). The 8,000 steps it had before left kNN short of the target (plugin README)."""
    config = point_mae_demo()
    config.train.steps = config.train.checkpoint_every = 4_000
    config.train.warmup_steps = 100
    return config


def point_mae_paper() -> PointMAEConfig:
    """ShapeNet-55 (41,952 shapes), 300 epochs of batch 128 (~98k steps), AdamW lr 1e-3,
    weight decay 0.05, cosine schedule with 10 warm-up epochs."""
    config = PointMAEConfig()
    config.train.steps = 98_300
    config.train.batch_size = 128
    config.train.lr = 1e-3
    config.train.weight_decay = 0.05
    config.train.warmup_steps = 3_280
    config.train.checkpoint_every = 3_280
    return config


def dvae_demo() -> DVAEConfig:
    """The paper's schedules in proportion (KL 0 for 5% of training, then ramped over half of it;
    temperature annealed over three quarters), 500 steps of lr 5e-3 (300 steps, or lr 2e-3,
    learnt codes that mattered less), and the temperature 8 -> 1/2 instead of 1 -> 1/16: with
    the logits' gain started at 8 (`_demo_dvae`) the softmax is as sharp as the paper's
    relative to the logits, while the Gumbel noise is 8x smaller relative to them. Measured:
    plugin README, `benchmarks/dvae_health.py`."""
    config = DVAEConfig(patches=_demo_patches(), model=_demo_dvae())
    _demo_train(config, steps=500, lr=5e-3)
    config.loss = DVAELossConfig(kl_delay_steps=25, kl_ramp_steps=250, temperature_start=8.0,
                                 temperature_end=0.5, temperature_steps=375)  # fmt: skip
    return config


def dvae_paper() -> DVAEConfig:
    """Point-BERT's dVAE (`cfgs/ShapeNet55_models/dvae.yaml`): ShapeNet-55, batch 64, AdamW lr
    5e-4, weight decay 5e-4, 300 epochs (~197k steps), 10 warm-up epochs; KL weight 0 for 10k
    steps then cosine-ramped to 0.1 over 100k; temperature cosine-annealed 1 -> 1/16 over 100k."""
    config = DVAEConfig()
    config.train.steps = 196_650
    config.train.batch_size = 64
    config.train.lr = 5e-4
    config.train.weight_decay = 5e-4
    config.train.warmup_steps = 6_555
    config.train.checkpoint_every = 6_555
    return config


def point_bert_demo() -> PointBERTConfig:
    """dvae_run is empty: the documented demo fallback (a seeded, untrained, frozen dVAE).
    Patch mixing scaled down: a queue of 128 clouds (8 batches, less than one epoch of the 192
    embedded clouds, so it never holds an older key of the cloud being scored), a [CLS]
    projection of 128 and momentum 0.99 (the key encoder follows within ~100 of the proof
    preset's 10,000 steps, as 0.999 does within ~1,000 of the paper's ~100k)."""
    config = PointBERTConfig(
        patches=_demo_patches(), encoder=_demo_transformer(), dvae=_demo_dvae(),
        mix=PatchMixConfig(momentum=0.99, queue_size=128, head_dim=128),
    )  # fmt: skip
    _demo_train(config, steps=120, lr=2e-3)
    return config


def point_bert_proof() -> PointBERTConfig:
    """The demo model trained 10,000 steps (about 12 minutes on one CPU thread shared with
    other jobs: the Transformer runs on the clean cloud, the mixed one and, as the key encoder,
    once more), for `benchmarks/learning.py`: on the demo dVAE's 256 codes the kNN probe was
    still rising at 4,000 and 8,000 steps (plugin README). Set `dvae_run` to a
    `pointcloud/point_bert_dvae --preset demo` run on the same data: the codes of the untrained
    fallback dVAE mean nothing."""
    config = point_bert_demo()
    config.train.steps = config.train.checkpoint_every = 10_000
    config.train.warmup_steps = 100
    return config


def point_bert_paper() -> PointBERTConfig:
    """Point-BERT MPM: ShapeNet, batch 128, AdamW lr 5e-4, weight decay 0.05, 300 epochs;
    set `dvae_run` to a trained `pointcloud/point_bert_dvae` run (paper preset)."""
    config = PointBERTConfig()
    config.train.steps = 98_300
    config.train.batch_size = 128
    config.train.lr = 5e-4
    config.train.weight_decay = 0.05
    config.train.warmup_steps = 960
    config.train.checkpoint_every = 3_280
    return config
