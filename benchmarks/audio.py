"""audio/w2v_bert against transformers' Wav2Vec2ForPreTraining, side by side in one run.

Both models train (forward, backward, AdamW step) on the same batch of variable-length clips of
the embedded corpus: ours on 80-bin Kaldi filterbanks, the peer on the raw waveforms (its own
convolutional feature encoder). Sizes are matched: the same Transformer/Conformer width, depth,
heads, FFN width, one codebook of the same size, the same distractor count and span masking; the
peer's seven feature-encoder convolutions get the model width as channels. Mask drawing and
distractor sampling are inside the timed step for both. Also measured: the feature extraction
(decode + resample + fbank + normalise, one core) throughput against the training step rate, and
length bucketing (`data.bucket_batches`): one epoch of the corpus batched by the engine's plain
sampler and by its bucketed one, both trained step by step interleaved (plain, bucketed, plain...),
giving the padded share of the collated frames and samples/s of each.

    python benchmarks/audio.py            # small CPU sizes
    python benchmarks/audio.py --paper    # w2v-BERT XL vs a wav2vec 2.0 of the same size
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from omnimask.data import EngineDataset, engine_collate
from omnimask.engine.sampler import BucketedBatchSampler, ResumableBatchSampler
from omnimask.plugins import get_recipe
from omnimask.visualize import sample_batch
from omnimask_audio.audio import load_audio
from omnimask_audio.config import W2VBertConfig
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    _compute_mask_indices,
    _sample_negative_indices,
)


def ours_config(paper: bool, batch: int) -> W2VBertConfig:
    recipe = get_recipe("audio/w2v_bert")
    config = recipe.config("paper" if paper else "demo")
    if not paper:
        config.model.hidden_size = 128
        config.model.ffn_size = 256
        config.model.num_heads = 4
        config.model.code_dim = 128
    config.model.dropout = 0.0
    config.train.batch_size = batch
    return config


def peer_model(config: W2VBertConfig) -> Wav2Vec2ForPreTraining:
    m = config.model
    peer = Wav2Vec2Config(
        hidden_size=m.hidden_size,
        num_hidden_layers=m.contrastive_layers + m.mlm_layers,
        num_attention_heads=m.num_heads,
        intermediate_size=m.ffn_size,
        conv_dim=(m.hidden_size,) * 7,
        feat_extract_norm="layer",  # the variant that honours attention masks (padded batches)
        do_stable_layer_norm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        num_codevector_groups=m.codebooks,
        num_codevectors_per_group=m.codebook_size,
        codevector_dim=m.code_dim,
        proj_codevector_dim=m.code_dim,
        num_negatives=m.num_negatives,
        contrastive_logits_temperature=m.contrastive_temperature,
        diversity_loss_weight=m.diversity_weight,
        mask_time_prob=config.mask.start_prob * config.mask.span,
        mask_time_length=config.mask.span,
        mask_time_min_masks=config.mask.min_spans,
    )
    return Wav2Vec2ForPreTraining(peer)


def time_steps(step, steps: int, warmup: int = 2) -> float:  # noqa: ANN001
    for index in range(warmup):
        step(index)
    start = time.perf_counter()
    for index in range(steps):
        step(warmup + index)
    return (time.perf_counter() - start) / steps


def epoch_batches(recipe, config, dataset, bucketed: bool) -> list[dict]:  # noqa: ANN001
    """One epoch of collated batches, as the engine's loader makes them (plain or bucketed)."""
    train = config.train
    steps = len(dataset) // train.batch_size
    if bucketed:
        sampler = BucketedBatchSampler(
            recipe.sample_lengths(dataset, config),
            train.batch_size,
            bucket_batches=config.data.bucket_batches,
            seed=train.seed,
            start=0,
            stop=steps,
        )
    else:
        sampler = ResumableBatchSampler(
            len(dataset), train.batch_size, seed=train.seed, start=0, stop=steps
        )
    wrapped = EngineDataset(dataset, train.seed)
    collate = engine_collate(recipe.collate)
    return [collate([wrapped[key] for key in keys])[0] for keys in sampler]


def bucketing_figures(recipe, config, dataset, rounds: int) -> dict:  # noqa: ANN001
    """Padded share and training speed over one epoch, plain vs bucketed batches of the same
    clips; each batch's step time is the median of `rounds` interleaved runs."""
    torch.manual_seed(0)
    model = recipe.build_model(config).train()
    runs = {}
    for name in ("plain", "bucketed"):
        trained = copy.deepcopy(model)
        runs[name] = (
            epoch_batches(recipe, config, dataset, name == "bucketed"),
            trained,
            torch.optim.AdamW(trained.parameters(), lr=1e-4),
        )
    times: dict[str, list[list[float]]] = {name: [] for name in runs}
    for round_index in range(rounds):
        for index in range(len(runs["plain"][0])):
            for name, (batches, trained, optimizer) in runs.items():
                start = time.perf_counter()
                losses = trained(batches[index], torch.Generator().manual_seed(index))
                losses["loss"].backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                elapsed = time.perf_counter() - start
                if round_index == 0:
                    times[name].append([])
                times[name][index].append(elapsed)
    figures = {}
    for name, (batches, _, _) in runs.items():
        frames = sum(b["features"].shape[0] * b["features"].shape[1] for b in batches)
        real = sum(int(b["lengths"].sum()) for b in batches)
        seconds = sum(statistics.median(t) for t in times[name])
        figures[name] = {
            "padded_frames_fraction": 1.0 - real / frames,
            "samples_per_s": sum(len(b["sample_id"]) for b in batches) / seconds,
            "real_frames_per_s": real / seconds,
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="full w2v-BERT XL size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bucket-rounds", type=int, default=3, help="interleaved epochs timed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recipe = get_recipe("audio/w2v_bert")
    config = ours_config(args.paper, args.batch)
    dataset = recipe.build_dataset(config)
    batch = sample_batch(recipe, config, dataset, args.batch)
    files = [dataset.files[i] for i in batch["sample_id"].tolist()]
    waves = [load_audio(path) for path in files]
    seconds = sum(w.numel() for w in waves) / config.audio.sample_rate
    base = {"bench": "audio", "device": "cpu", "batch": args.batch, "audio_seconds": seconds}

    torch.manual_seed(0)
    ours = recipe.build_model(config).train()
    ours_optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4)

    def ours_step(index: int) -> None:
        losses = ours(batch, torch.Generator().manual_seed(index))
        losses["loss"].backward()
        ours_optimizer.step()
        ours_optimizer.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    peer = peer_model(config).train()
    peer_optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-4)
    longest = max(w.numel() for w in waves)
    input_values = torch.zeros(len(waves), longest)
    attention = torch.zeros(len(waves), longest, dtype=torch.long)
    for row, wave in enumerate(waves):
        input_values[row, : wave.numel()] = (wave - wave.mean()) / (wave.std() + 1e-7)
        attention[row, : wave.numel()] = 1
    frames = int(peer._get_feat_extract_output_lengths(longest))
    frame_attention = peer._get_feature_vector_attention_mask(frames, attention)

    def peer_step(index: int) -> None:
        import numpy as np

        np.random.seed(index)
        pc = peer.config
        mask = _compute_mask_indices(
            (len(waves), frames),
            pc.mask_time_prob,
            pc.mask_time_length,
            attention_mask=frame_attention,
            min_masks=pc.mask_time_min_masks,
        )
        negatives = _sample_negative_indices((len(waves), frames), pc.num_negatives, mask)
        output = peer(
            input_values,
            attention_mask=attention,
            mask_time_indices=torch.from_numpy(mask),
            sampled_negative_indices=torch.from_numpy(negatives),
        )
        output.loss.backward()
        peer_optimizer.step()
        peer_optimizer.zero_grad(set_to_none=True)

    ours_time = time_steps(ours_step, args.steps)
    peer_time = time_steps(peer_step, args.steps)

    start = time.perf_counter()
    for index in batch["sample_id"].tolist():
        dataset[index]
    extract_time = time.perf_counter() - start

    bucketing = bucketing_figures(recipe, config, dataset, args.bucket_rounds)

    params = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    figures = [
        ("w2v_bert_params", params(ours), "Wav2Vec2ForPreTraining_params", params(peer)),
        ("w2v_bert_step_time_s", ours_time, "Wav2Vec2ForPreTraining_step_time_s", peer_time),
        (
            "w2v_bert_samples_per_s",
            args.batch / ours_time,
            "Wav2Vec2ForPreTraining_samples_per_s",
            args.batch / peer_time,
        ),
        (
            "w2v_bert_audio_seconds_per_s",
            seconds / ours_time,
            "Wav2Vec2ForPreTraining_audio_seconds_per_s",
            seconds / peer_time,
        ),
    ]
    for ours_name, ours_value, peer_name, peer_value in figures:
        print(
            json.dumps(
                {
                    **base,
                    "metric": ours_name,
                    "value": ours_value,
                    "peer_metric": peer_name,
                    "peer_value": peer_value,
                    "ratio_ours_over_peer": ours_value / peer_value,
                }
            )
        )
    print(
        json.dumps(
            {
                **base,
                "metric": "throughput_ratio_ours_over_peer",
                "value": peer_time / ours_time,
                "target": ">= 1.0",
            }
        )
    )
    print(
        json.dumps(
            {
                **base,
                "metric": "feature_extraction_clips_per_s",
                "value": args.batch / extract_time,
                "step_rate_clips_per_s": args.batch / ours_time,
                "ratio_extraction_over_step_rate": ours_time / extract_time,
            }
        )
    )
    plain, bucketed = bucketing["plain"], bucketing["bucketed"]
    print(
        json.dumps(
            {
                **base,
                "metric": "length_bucketing",
                "bucket_batches": config.data.bucket_batches,
                "clips": len(dataset),
                "padded_frames_fraction_plain": plain["padded_frames_fraction"],
                "padded_frames_fraction_bucketed": bucketed["padded_frames_fraction"],
                "samples_per_s_plain": plain["samples_per_s"],
                "samples_per_s_bucketed": bucketed["samples_per_s"],
                "ratio_bucketed_over_plain": bucketed["samples_per_s"] / plain["samples_per_s"],
            }
        )
    )


if __name__ == "__main__":
    main()
