"""`text/mlm` (BERT, whole-word, SpanBERT, n-gram, ERNIE-Gram explicit n-gram, MosaicBERT-style) and
`text/electra`: typed configs, presets, and the factory that builds everything from a config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from omnimask import MaskedModel, Recipe
from omnimask.model import Batch
from omnimask.shards import open_shard_set
from torch.utils.data import Dataset

from omnimask_text.config import ElectraRecipeConfig, MLMConfig
from omnimask_text.dataset import (
    build_labelled,
    build_text_dataset,
    collate_rows,
    lexicon_path,
    load_lexicon,
    resolve_tokenizer,
    shard_rows,
    tokenizer_path,
)
from omnimask_text.masking import ExplicitNgramMasker, MLMMasker
from omnimask_text.models.build import SpecialIds, build_mlm
from omnimask_text.models.common import HFEncoder, TextTokenizer
from omnimask_text.models.mlm import MLMHead, MLMModel, TokenIdTarget, head_parts
from omnimask_text.models.ngram import ExplicitNgramModel, JointLabelTarget, JointMLMHead
from omnimask_text.tokens import TokenRows
from omnimask_text.vocab import continuation_flags, vocabulary_digest


def _demo_train(config: MLMConfig) -> None:
    train = config.train
    train.steps = 60
    train.batch_size = 16
    train.lr = 1e-3
    train.betas = (0.9, 0.98)
    train.weight_decay = 0.01
    train.warmup_steps = 6
    train.checkpoint_every = 30
    train.clip_grad = 1.0


def _paper_train(config: MLMConfig, steps: int, batch: int, lr: float, warmup: int) -> None:
    train = config.train
    train.steps, train.batch_size, train.lr, train.warmup_steps = steps, batch, lr, warmup
    train.betas = (0.9, 0.999)
    train.weight_decay = 0.01
    train.clip_grad = 1.0
    train.checkpoint_every = 10_000


def _bert_base(config: MLMConfig) -> None:
    model = config.model
    model.arch, model.hidden, model.layers, model.heads = "bert", 768, 12, 12
    model.intermediate, model.max_positions = 3072, 512
    config.vocab.size = 30522


def mlm_demo() -> MLMConfig:
    """Tiny BERT on the embedded stdlib docs, packed rows of 128 tokens; about a minute."""
    config = MLMConfig()
    _demo_train(config)
    return config


def _proof_data_and_train(config: MLMConfig, steps: int, lr: float) -> None:
    """The proof presets' data and schedule: the generated word communities (whose labelled
    set, which community a passage is from with train and test over disjoint words, neither
    word counts nor random features can read; see the plugin README), 30-word documents packed
    two to a row of 64 tokens, batch 32, no dropout, 5% warmup. (`corpus.embedded=chains` asks
    the harder word-order question of the same words.)

    Short documents on purpose: the demo BERT learns its absolute position embeddings from
    scratch and predicts from the unigram distribution alone until its attention finds the
    neighbours, ~750 steps with 32-token documents, more than 3000 with 64-token ones."""
    config.corpus.embedded = "communities"
    config.corpus.seq_len = 64
    config.model.dropout = 0.0
    train = config.train
    train.steps, train.batch_size, train.lr = steps, 32, lr
    train.warmup_steps, train.checkpoint_every = steps // 20, steps


def mlm_proof() -> MLMConfig:
    """The demo BERT on the generated word communities, 3000 steps at lr 1e-3, for
    `benchmarks/learning.py` (about 4 minutes on one CPU thread)."""
    config = mlm_demo()
    _proof_data_and_train(config, steps=3000, lr=1e-3)
    return config


def mlm_demo_modernbert() -> MLMConfig:
    """The demo on a tiny ModernBERT (gated MLP, rotary positions), 30% masking."""
    config = mlm_demo()
    config.model.arch = "modernbert"
    config.model.intermediate = 256
    config.mask.ratio = 0.3
    return config


def mlm_paper() -> MLMConfig:
    """BERT-base: 15% masking 80/10/10, seq 512, batch 256, 1M steps, lr 1e-4, 10k warmup."""
    config = MLMConfig()
    _bert_base(config)
    config.corpus.seq_len = 512
    _paper_train(config, steps=1_000_000, batch=256, lr=1e-4, warmup=10_000)
    return config


def mlm_whole_word() -> MLMConfig:
    """BERT-base with whole-word masking."""
    config = mlm_paper()
    config.mask.strategy = "whole_word"
    return config


def mlm_spanbert() -> MLMConfig:
    """SpanBERT: spans of whole words, length ~ Geometric(0.2) clipped at 10; batch 256, 2.4M
    steps in the paper (seq 512, lr 1e-4)."""
    config = mlm_paper()
    config.mask.strategy = "span"
    config.train.steps = 2_400_000
    return config


def mlm_ngram() -> MLMConfig:
    """Contiguous n-gram masking (whole-word n-grams, n <= 3, P(n) ∝ 1/n) on BERT-base: the
    implicit baseline ERNIE-Gram compares against."""
    config = mlm_paper()
    config.mask.strategy = "ngram"
    return config


def mlm_ernie_gram() -> MLMConfig:
    """ERNIE-Gram's explicitly n-gram MLM on BERT-base: a T-test lexicon of 300K n-grams
    (n <= 3, the English lexicon size of the paper), each masked n-gram collapsed into one
    [MASK] that predicts the n-gram's identity; 15% of tokens."""
    config = mlm_paper()
    config.mask.strategy = "explicit_ngram"
    config.mask.lexicon_size = 300_000
    return config


def mlm_demo_ernie_gram() -> MLMConfig:
    """The demo with explicit n-gram masking (a 2000-entry lexicon of the embedded corpus)."""
    config = mlm_demo()
    config.mask.strategy = "explicit_ngram"
    return config


def mlm_mosaic() -> MLMConfig:
    """MosaicBERT-base-like: 30% masking, seq 128, packed/unpadded rows, gated-MLP encoder
    (ModernBERT here), batch 4096, lr 5e-4, 70k steps (bf16 on GPU by the engine)."""
    config = MLMConfig()
    _bert_base(config)
    config.model.arch = "modernbert"
    config.model.intermediate = 2048  # gated: 2 x 2048 in, as MosaicBERT's GLU at equal params
    config.model.dropout = 0.0
    config.mask.ratio = 0.3
    _paper_train(config, steps=70_000, batch=4096, lr=5e-4, warmup=4_200)
    config.train.betas = (0.9, 0.98)
    config.train.weight_decay = 1e-5
    return config


def _electra_masking(config: ElectraRecipeConfig) -> None:
    """The reference implementation's masking (`pretrain_helpers.mask` of google-research/electra):
    85% of the selected tokens become [MASK] and 15% stay as they are (none random), so the
    generator also predicts tokens it can see.

    Not a detail: with every selected token masked, nothing asks the encoder to keep the identity
    of the tokens it reads, and on the word chains a BERT trained that way collapses (RankMe ~2)
    and stays at the unigram level, where with 80/10/10 or these 85/15 it learns the grammar
    after ~700 steps."""
    config.mask.mask_prob, config.mask.random_prob = 0.85, 0.0


def electra_demo() -> ElectraRecipeConfig:
    config = ElectraRecipeConfig()
    _demo_train(config)
    _electra_masking(config)
    return config


def electra_proof() -> ElectraRecipeConfig:
    """The demo ELECTRA on the generated word communities, 3000 steps at ELECTRA-Small's lr
    5e-4, for `benchmarks/learning.py`. From scratch its probes beat random init there, but its
    discriminator stays at the base rate and its pooled features collapse (plugin README), at
    lr 1e-3 too, with a detection weight of 1, and with a generator as large as the
    discriminator. With `train.init_from` a `text/mlm` `proof` run (the same model and data) the
    discriminator learns detection and stays healthy."""
    config = electra_demo()
    _proof_data_and_train(config, steps=3000, lr=5e-4)
    return config


def electra_small() -> ElectraRecipeConfig:
    """ELECTRA-Small: discriminator 12 x 256 (embeddings 128), generator 1/4 width, seq 128,
    batch 128, lr 5e-4, 1M steps, 15% selected (85% of them [MASK]), detection weight 50."""
    config = ElectraRecipeConfig()
    model = config.model
    model.hidden, model.layers, model.heads, model.intermediate = 256, 12, 4, 1024
    config.vocab.size = 30522
    config.electra.embedding_size = 128
    config.electra.generator_hidden, config.electra.generator_layers = 64, 12
    config.electra.generator_heads, config.electra.generator_intermediate = 1, 256
    _electra_masking(config)
    _paper_train(config, steps=1_000_000, batch=128, lr=5e-4, warmup=10_000)
    return config


class TextRecipe(Recipe):
    """What `text/mlm` and `text/electra` share: vocabulary, data, evaluation, export."""

    labelled_layout = (
        "a JSONL file whose records carry the text field, 'label' and optionally 'split' "
        "(train | test)"
    )

    config_class: ClassVar[type[MLMConfig]] = MLMConfig
    export_formats = ("hf",)
    electra: ClassVar[bool] = False

    def text_parts(self, config: MLMConfig) -> tuple[TextTokenizer, MLMMasker, SpecialIds, int]:
        """The tokenizer module, the masker (with its lexicon for explicit n-grams), the special
        ids and the vocabulary size."""
        tokenizer = resolve_tokenizer(config)
        special = SpecialIds.of(tokenizer)
        vocabulary = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
        text_tokenizer = TextTokenizer(
            special.pad, vocabulary_digest(tokenizer), str(tokenizer_path(config)), vocabulary
        )
        continuation = continuation_flags(tokenizer)
        if config.mask.strategy == "explicit_ngram":
            lexicon = load_lexicon(config, tokenizer)
            masker = ExplicitNgramMasker(
                config.mask, special.all(), special.mask, continuation, lexicon
            )
        else:
            masker = MLMMasker(config.mask, special.all(), special.mask, continuation)
        return text_tokenizer, masker, special, tokenizer.get_vocab_size()

    def build_dataset(self, config: MLMConfig) -> Dataset:
        """Also pins `vocab.path` to the tokenizer file in use (trained and cached if needed).

        The engine opens the data before it writes or compares the run's `config.yaml`, so the
        saved config names the exact vocabulary: `load_run` then needs no corpus, and Hugging
        Face's WordPiece trainer, which breaks frequency ties differently from run to run,
        never has to be re-run for an existing run."""
        shards = open_shard_set(config.data.path, TokenRows.record_kind, config.data.shard_cache)
        if shards is not None:  # written by `omnimask prepare --out`
            return shard_rows(config, shards)
        config.vocab.path = str(tokenizer_path(config))
        if config.mask.strategy == "explicit_ngram":
            config.mask.lexicon = str(lexicon_path(config))
        return build_text_dataset(config)

    def collate(self, samples: list[dict[str, Any]]) -> Batch:
        return collate_rows(samples)

    def tokens_per_sample(self, config: MLMConfig) -> int | None:
        return config.corpus.seq_len if config.corpus.packing else None

    def build_eval_datasets(self, config: MLMConfig, path: str | None = None):  # noqa: ANN201
        return build_labelled(config, path)

    def export(self, model: MaskedModel, config: MLMConfig, fmt: str, out_dir: Path) -> Path:
        from omnimask_text.export import export_hf

        tokenizer = resolve_tokenizer(config)
        return export_hf(model, tokenizer, out_dir, self.electra, config.model.max_positions)

    def load_export(self, config: MLMConfig, fmt: str, path: Path) -> Callable[[Batch], Any]:
        from omnimask_text.export import load_hf_embedder

        pad = SpecialIds.of(resolve_tokenizer(config)).pad
        return load_hf_embedder(Path(path), pad, self.electra)


class MLMRecipe(TextRecipe):
    name = "text/mlm"
    batch_coupled_terms = {
        "ngram_accuracy": "explicit n-gram masking's accuracy over the n-gram positions only (a "
        "metric with its own count)"
    }
    summary = (
        "masked language modelling: BERT 80/10/10, whole-word, SpanBERT, n-gram, "
        "ERNIE-Gram explicit n-gram, MosaicBERT"
    )
    presets = {
        "demo": mlm_demo,
        "proof": mlm_proof,
        "demo_modernbert": mlm_demo_modernbert,
        "paper": mlm_paper,
        "whole_word": mlm_whole_word,
        "spanbert": mlm_spanbert,
        "ngram": mlm_ngram,
        "ernie_gram": mlm_ernie_gram,
        "demo_ernie_gram": mlm_demo_ernie_gram,
        "mosaic": mlm_mosaic,
    }

    def build_model(self, config: MLMConfig) -> MaskedModel:
        text_tokenizer, masker, special, vocab_size = self.text_parts(config)
        mlm = build_mlm(config.model, vocab_size, special)
        if isinstance(masker, ExplicitNgramMasker):
            return ExplicitNgramModel(
                text_tokenizer,
                masker,
                HFEncoder(mlm.base_model, special.mask),
                JointMLMHead(head_parts(mlm), masker.lexicon, config.model.hidden),
                JointLabelTarget(vocab_size),
            )
        return MLMModel(
            text_tokenizer,
            masker,
            HFEncoder(mlm.base_model, special.mask),
            MLMHead(head_parts(mlm)),
            TokenIdTarget(),
        )

    def visualize(self, model: MaskedModel, config: MLMConfig, batch: Batch, path: Path) -> Path:
        from omnimask_text.figures import mlm_figure

        return mlm_figure(model, batch, path)


class ElectraRecipe(TextRecipe):
    name = "text/electra"
    summary = "ELECTRA replaced-token detection: small generator + discriminator (weight 50)"
    config_class = ElectraRecipeConfig
    presets = {"demo": electra_demo, "proof": electra_proof, "paper": electra_small}
    electra = True

    def build_model(self, config: ElectraRecipeConfig) -> MaskedModel:
        from omnimask_text.models.electra import (
            ElectraHeads,
            ElectraModel,
            ReplacedTokenTarget,
            build_electra_pair,
        )

        text_tokenizer, masker, special, vocab_size = self.text_parts(config)
        discriminator, generator = build_electra_pair(
            config.model, config.electra, vocab_size, special, config.mask.ratio
        )
        return ElectraModel(
            text_tokenizer,
            masker,
            HFEncoder(discriminator.electra, special.mask),
            ElectraHeads(discriminator.discriminator_predictions, generator),
            ReplacedTokenTarget(),
            discriminator_weight=config.electra.discriminator_weight,
        )

    def visualize(
        self, model: MaskedModel, config: ElectraRecipeConfig, batch: Batch, path: Path
    ) -> Path:
        from omnimask_text.figures import electra_figure

        return electra_figure(model, batch, path)
