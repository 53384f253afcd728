"""Typed config and presets of `medical/mambamim`.

The paper preset follows MambaMIM (Tang et al., 2024) and its official code: 96^3 crops, mask
ratio 0.75 on the stride-16 grid, a MedNeXt-style CNN with widths 32-64-128-192-384 and a 4-layer
bidirectional Mamba at width 384, AdamW (lr 1e-4, weight decay 0.04), 100 epochs with 40 warmup
epochs, gradient clipping at 5, batch 1 per GPU; CT resampled to 1.5 x 1.5 x 2 mm and windowed to
[-175, 250] HU. The paper pretrains on 6.8K CT scans (steps below assume 6,800 volumes at global
batch 8). The demo is a tiny model on the embedded phantoms, about a minute on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omnimask import DataConfig, RecipeConfig, TrainConfig

from omnimask_medical.nifti import CTConfig

PAPER_VOLUMES = 6_800


@dataclass
class HybridModelConfig:
    stem_width: int = 32
    widths: tuple[int, ...] = (64, 128, 192, 384)  # one x2-downsampling stage each
    depths: tuple[int, ...] = (2, 2, 2, 1)  # MedNeXt blocks per stage
    kernel: int = 3  # depthwise kernel of the MedNeXt blocks
    mamba_depth: int = 4
    d_state: int = 16
    decoder_width: int = 384


@dataclass
class MaskConfig:
    ratio: float = 0.75  # of the coarse (stride 2**len(widths)) cells


@dataclass
class MedicalDataConfig(DataConfig):
    crop: int = 96  # training crops are crop^3 voxels; must be a multiple of 2**len(widths)
    ct: CTConfig = field(default_factory=CTConfig)


@dataclass
class SegmentationConfig:
    """`omnimask eval --protocol segmentation_probe,segmentation_finetune` (`segmentation.*`)."""

    steps: int = 150
    batch_size: int = 4
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 10
    head_width: int = 32
    dice_weight: float = 1.0  # loss = cross-entropy + dice_weight * soft Dice
    # names of the label values 1, 2, ... of the user's label maps (figures are named by them);
    # empty: the embedded phantoms' organs, or label_1, label_2... for --data
    labels: tuple[str, ...] = ()


@dataclass
class MambaMIMConfig(RecipeConfig):
    model: HybridModelConfig = field(default_factory=HybridModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    data: MedicalDataConfig = field(default_factory=MedicalDataConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)


def mambamim_paper() -> MambaMIMConfig:
    batch = 8
    steps_per_epoch = PAPER_VOLUMES // batch
    return MambaMIMConfig(
        train=TrainConfig(
            steps=100 * steps_per_epoch,
            warmup_steps=40 * steps_per_epoch,
            batch_size=batch,
            lr=1e-4,
            weight_decay=0.04,
            clip_grad=5.0,
        ),
    )


def mambamim_demo() -> MambaMIMConfig:
    return MambaMIMConfig(
        model=HybridModelConfig(
            stem_width=8, widths=(16, 32, 48), depths=(1, 1, 1), mamba_depth=1, decoder_width=48
        ),
        data=MedicalDataConfig(crop=32, ct=CTConfig(spacing=(4.0, 4.0, 4.0))),
        train=TrainConfig(steps=60, warmup_steps=6, batch_size=8, lr=2e-3, log_every=10),
    )


def mambamim_proof() -> MambaMIMConfig:
    """The demo (60 steps on the embedded phantoms): already enough for the pretrained encoder
    to beat random init on the phantom classes and on organ segmentation
    (`benchmarks/learning.py --recipe medical/mambamim`)."""
    return mambamim_demo()
