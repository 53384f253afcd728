"""The `audio/w2v_bert` recipe: builds the model, the data and the figures from `W2VBertConfig`."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from omnimask import MaskedModel, Recipe
from omnimask.data import DataPathError
from omnimask.shards import ShardDataset, open_shard_set
from torch import Tensor
from torch.utils.data import Dataset

from omnimask_audio.audio import AudioFolder, clip_sample, pad_collate
from omnimask_audio.config import W2VBertConfig, demo, paper, proof


class W2VBertRecipe(Recipe):
    name = "audio/w2v_bert"
    labelled_layout = (
        "a folder with train/<class>/ and test/<class>/ sub-folders of audio files (WAV, FLAC, "
        "OGG, MP3)"
    )
    summary = "w2v-BERT: contrastive (wav2vec 2.0) + masked code prediction on log-mel fbanks"
    config_class = W2VBertConfig
    presets = {"demo": demo, "proof": proof, "paper": paper}
    batch_coupled_terms = {
        "loss": "holds the diversity loss",
        "diversity_loss": "the perplexity of the codebook's mean softmax over the batch, per "
        "process, as in wav2vec 2.0",
        "code_perplexity": "codes used in the batch (a monitor)",
        "prob_perplexity": "the diversity loss's batch perplexity (a monitor)",
    }
    export_formats = ("hf",)

    def build_model(self, config: W2VBertConfig) -> MaskedModel:
        from omnimask_audio.models.w2v_bert import build_w2v_bert

        return build_w2v_bert(config.model, config.mask, config.audio.num_mel_bins)

    def build_dataset(self, config: W2VBertConfig) -> Dataset:
        shards = open_shard_set(config.data.path, AudioFolder.record_kind, config.data.shard_cache)
        if shards is not None:  # written by `omnimask prepare --out`
            shards.require({"audio.sample_rate": config.audio.sample_rate})
            return shards.dataset(partial(clip_sample, config=config.audio, crop=True))
        if config.data.path is not None:
            return AudioFolder(config.data.path, config.audio)
        from omnimask_audio.synth import default_corpus

        return AudioFolder(default_corpus() / "pretrain", config.audio)

    def sample_lengths(self, dataset: Dataset, config: W2VBertConfig) -> list[int]:
        """Filterbank frames of each clip, computed from the file headers (no decoding; cached
        on disk for large corpora): what `pad_collate` pads, for length-bucketed batches."""
        from omnimask_audio.lengths import clip_feature_lengths, feature_frames

        if isinstance(dataset, ShardDataset):  # waveform lengths, kept with the shards
            audio, rate = config.audio, config.audio.sample_rate
            return [feature_frames(int(n), rate, audio, True) for n in dataset.shards.sizes()]
        if not isinstance(dataset, AudioFolder):
            raise TypeError(f"audio/w2v_bert reads lengths of an AudioFolder, not {dataset!r}")
        return clip_feature_lengths(dataset.files, dataset.config, dataset.crop, dataset.root)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return pad_collate(samples)

    def build_eval_datasets(
        self, config: W2VBertConfig, path: str | None = None
    ) -> tuple[Dataset, Dataset]:
        """`path/train/<class>/*` and `path/test/<class>/*`; by default the synthetic corpus,
        labelled by voice. Clips are not cropped: features describe the whole clip."""
        if path is None:
            from omnimask_audio.synth import default_corpus

            root = default_corpus()
            train, test = root / "eval_train", root / "eval_test"
        else:
            train, test = Path(path) / "train", Path(path) / "test"
            for split in (train, test):
                if not split.is_dir():
                    raise DataPathError(
                        f"labelled audio needs {split}/<class>/<clips>; {split} is not a folder"
                    )
        make = lambda split: AudioFolder(split, config.audio, labelled=True, crop=False)  # noqa: E731
        return make(train), make(test)

    def visualize(self, model: MaskedModel, config: W2VBertConfig, batch: dict, path: Path) -> Path:
        from omnimask_audio.figures import draw_w2v_bert

        return draw_w2v_bert(model, batch, path)  # type: ignore[arg-type]

    def export(self, model: MaskedModel, config: W2VBertConfig, fmt: str, out_dir: Path) -> Path:
        from omnimask_audio.export import export_hf

        return export_hf(model, out_dir)  # type: ignore[arg-type]

    def load_export(self, config: W2VBertConfig, fmt: str, path: Path) -> Callable[[dict], Tensor]:
        from omnimask_audio.export import load_hf

        return load_hf(path)
