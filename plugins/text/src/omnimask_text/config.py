"""Typed config sections of the text recipes (the `RecipeConfig` of `text/mlm`, `text/electra`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from omnimask import RecipeConfig


@dataclass
class VocabConfig:
    """The WordPiece vocabulary: loaded from `path`, or trained on the corpus when `path` is None.

    A trained vocabulary is cached under the plugin's data folder, keyed by a digest of the corpus
    files and these settings; building the dataset pins `path` to that file, so a run's saved
    config names the exact vocabulary it was trained with.
    """

    path: str | None = None  # a Hugging Face tokenizer.json, or None to train one on the corpus
    size: int = 4096
    min_frequency: int = 2
    lowercase: bool = True
    # a corpus larger than this trains the vocabulary on every k-th document, k chosen so that
    # about this many bytes are read (the documents' spread over the corpus is kept)
    train_bytes: int = 1 << 30


@dataclass
class CorpusConfig:
    """How documents are read and cut into training rows."""

    field: str = "text"  # the JSONL field / Parquet or `datasets` column holding the text
    split: str = "train"  # the split of a saved `datasets.DatasetDict`
    seq_len: int = 128  # tokens per row, [CLS] and [SEP] included
    packing: bool = True  # pack several documents per row (no padding) instead of one per row
    max_documents: int = 0  # 0 = all
    # without --data: stdlib_docs (docstrings of the standard library; labelled set: word order)
    # | chains (a generated word-chain language; labelled set: forwards or backwards)
    # | communities (the chain words in communities; labelled set: which community, train and
    # test passages over disjoint words)
    embedded: str = "stdlib_docs"


@dataclass
class MaskConfig:
    """Which tokens are predicted and how the selected ones are corrupted."""

    # token | whole_word | span (SpanBERT) | ngram (contiguous n-grams, P(n) ∝ 1/n)
    # | explicit_ngram (ERNIE-Gram: lexicon n-grams collapsed to one [MASK], identity predicted)
    strategy: str = "token"
    ratio: float = 0.15
    mask_prob: float = 0.8  # selected tokens -> [MASK]
    random_prob: float = 0.1  # selected tokens -> a random token (the rest stay unchanged)
    span_p: float = 0.2  # SpanBERT: span length in words ~ Geometric(p), clipped at max_span
    max_span: int = 10
    max_ngram: int = 3  # longest n-gram: ngram draws n in 1..max_ngram with weight 1/n
    # explicit_ngram: a lexicon file (lexicon.py), or None to build one from the corpus by the
    # T-test (cached; building the dataset pins this to the file, like vocab.path)
    lexicon: str | None = None
    lexicon_size: int = 2000  # n-grams kept, by decreasing t
    lexicon_min_count: int = 5  # rarer n-grams are not considered


@dataclass
class ModelConfig:
    """The Hugging Face encoder the recipe builds (so exports load with the Auto classes)."""

    arch: str = "bert"  # bert (BertForMaskedLM) | modernbert (ModernBertForMaskedLM)
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    intermediate: int = 512
    dropout: float = 0.1
    max_positions: int = 512


@dataclass
class ElectraConfig:
    """ELECTRA's small generator and the replaced-token-detection weight."""

    embedding_size: int = 0  # shared embedding width; 0 = the discriminator's hidden size
    generator_hidden: int = 64
    generator_layers: int = 1
    generator_heads: int = 1
    generator_intermediate: int = 256
    discriminator_weight: float = 50.0


@dataclass
class MLMConfig(RecipeConfig):
    vocab: VocabConfig = field(default_factory=VocabConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class ElectraRecipeConfig(MLMConfig):
    electra: ElectraConfig = field(default_factory=ElectraConfig)
