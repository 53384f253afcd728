"""Typed config of the w2v-BERT recipe and its presets (demo: tiny on the embedded corpus; paper:
w2v-BERT XL)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omnimask import RecipeConfig

from omnimask_audio.audio import AudioConfig


@dataclass
class W2VBertModelConfig:
    """Sizes of the subsampler, the two Conformer modules, the quantizer and the loss weights."""

    subsampling_channels: int = 32  # two stride-2 3x3 convs: 4x fewer frames (40 ms)
    hidden_size: int = 64
    contrastive_layers: int = 2
    mlm_layers: int = 2
    num_heads: int = 4
    ffn_size: int = 128
    conv_kernel: int = 15  # Conformer depthwise convolution
    dropout: float = 0.0
    codebooks: int = 1  # the paper uses a single codebook
    # About the number of distinct sounds in the data (the embedded corpus: 5 vowels and pauses).
    # The diversity loss spreads frames over every code; 64 codes cut each vowel into arbitrary
    # pieces that no context predicts, and the MLM module learned no context (plugin README).
    codebook_size: int = 8
    code_dim: int = 64  # space of the quantized targets and the projected context vectors
    contrastive_temperature: float = 0.1
    num_negatives: int = 20  # distractors per masked frame, from the same utterance
    diversity_weight: float = 0.1
    mlm_weight: float = 1.0
    gumbel_start: float = 2.0  # Gumbel-softmax temperature, annealed geometrically
    gumbel_end: float = 0.5


@dataclass
class SpanMaskConfig:
    """wav2vec 2.0 span masking over the subsampled frames."""

    start_prob: float = 0.065
    span: int = 10
    min_spans: int = 2


@dataclass
class W2VBertConfig(RecipeConfig):
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: W2VBertModelConfig = field(default_factory=W2VBertModelConfig)
    mask: SpanMaskConfig = field(default_factory=SpanMaskConfig)


def demo() -> W2VBertConfig:
    """A ~0.2M-parameter model on the synthetic corpus: about a minute on 2 CPU cores."""
    config = W2VBertConfig()
    config.train.steps = 100
    config.train.batch_size = 8
    config.train.lr = 2e-3
    config.train.warmup_steps = 5
    config.train.weight_decay = 0.01
    config.train.betas = (0.9, 0.98)
    config.train.clip_grad = 1.0
    config.train.checkpoint_every = 50
    # Mega-batches of 4 batches (32 clips) sorted by length: padding 28% -> 10% on the embedded
    # corpus, and a clip still meets different neighbours each epoch.
    config.data.bucket_batches = 4
    return config


def proof() -> W2VBertConfig:
    """The `benchmarks/learning.py` preset: the demo's model (8 codes) trained 200 steps of
    batch 8 at lr 5e-4 on the embedded corpus, about half a minute on one CPU thread. Longer
    schedules kept the linear probe's lead but lost kNN's (400 steps: +0.03; plugin README); at
    the demo's lr 2e-3 the figures swung more between seeds."""
    config = demo()
    config.train.steps = config.train.checkpoint_every = 200
    config.train.lr = 5e-4
    config.train.warmup_steps = 10
    return config


def paper() -> W2VBertConfig:
    """w2v-BERT XL (Chung et al. 2021): 24 Conformer layers of width 1024, 8 in the contrastive
    module and 16 in the MLM module, one codebook of 1024 codes, K=100 distractors, diversity
    weight 0.1, temperature 0.1, p=0.065 span starts of 10 frames. The depthwise kernel (31) is
    the Conformer's usual one; the optimiser schedule follows wav2vec 2.0 practice, not a number
    verified against the paper."""
    config = W2VBertConfig()
    config.model = W2VBertModelConfig(
        subsampling_channels=128,
        hidden_size=1024,
        contrastive_layers=8,
        mlm_layers=16,
        num_heads=16,
        ffn_size=4096,
        conv_kernel=31,
        dropout=0.1,
        codebooks=1,
        codebook_size=1024,
        code_dim=1024,
        num_negatives=100,
    )
    config.audio.max_seconds = 32.0
    config.train.steps = 400_000
    config.train.batch_size = 2048
    config.train.optimizer = "adamw"
    config.train.lr = 2e-3
    config.train.betas = (0.9, 0.98)
    config.train.weight_decay = 0.01
    config.train.warmup_steps = 25_000
    config.train.clip_grad = 1.0
    config.train.checkpoint_every = 5000
    # fairseq's wav2vec 2.0 sorts the whole corpus by length; 16 global batches of thousands of
    # clips already sample the length distribution finely, and keep batches' contents random.
    config.data.bucket_batches = 16
    return config
