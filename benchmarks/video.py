"""VideoMAE pretraining step against Hugging Face's `VideoMAEForPreTraining`, and decode rate.

One run, side by side, same sizes, same batch, same masks, one JSON line per figure:

1. `step_s`: seconds per training step (forward, backward, AdamW) of our `video/videomae` model
   and of `transformers.VideoMAEForPreTraining` built with the same widths, depths, clip size and
   normalised-pixel loss. Each step our masker draws the tube masks (timed, it is part of our
   step); Hugging Face gets those same masks for free. Rounds alternate and medians are compared,
   so a busy machine slows both alike. Target: ours at most 0.9x theirs.
2. `clips_per_s`: clips decoded per second by the recipe's dataset (PyAV, one process) on the
   embedded MP4 clips, against the clips per second the training step consumes.

    python benchmarks/video.py            # 8 frames 64x64, small ViT, batch 8 (CPU)
    python benchmarks/video.py --paper    # 16 frames 224x224, ViT-B, decoder 4 x 384
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from omnimask.config import apply_overrides
from omnimask.plugins import get_recipe
from omnimask.visualize import sample_batch
from transformers import VideoMAEConfig, VideoMAEForPreTraining

WARMUP = 2
SMALL = [
    "model.dim=192", "model.depth=4", "model.heads=3",
    "model.decoder_dim=128", "model.decoder_depth=2", "model.decoder_heads=4",
]  # fmt: skip


def emit(figure: str, value: float, **extra: object) -> None:
    print(json.dumps({"bench": "video", "figure": figure, "value": value, **extra}), flush=True)


def peer_model(config) -> VideoMAEForPreTraining:  # noqa: ANN001
    clip, model = config.clip, config.model
    return VideoMAEForPreTraining(
        VideoMAEConfig(
            image_size=clip.size,
            patch_size=model.patch,
            num_frames=clip.num_frames,
            tubelet_size=model.tubelet,
            hidden_size=model.dim,
            num_hidden_layers=model.depth,
            num_attention_heads=model.heads,
            intermediate_size=int(model.dim * model.mlp_ratio),
            decoder_hidden_size=model.decoder_dim,
            decoder_num_hidden_layers=model.decoder_depth,
            decoder_num_attention_heads=model.decoder_heads,
            decoder_intermediate_size=int(model.decoder_dim * model.mlp_ratio),
            layer_norm_eps=1e-6,
            use_mean_pooling=False,
            norm_pix_loss=config.target.norm_pix,
            attn_implementation="sdpa",
        )
    ).train()


def step_times(config, batch: dict, steps: int, rounds: int) -> tuple[list[float], list[float]]:  # noqa: ANN001
    recipe = get_recipe("video/videomae")
    torch.manual_seed(0)
    ours = recipe.build_model(config).train()
    peer = peer_model(config)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (ours, peer)]
    pixel_values = batch["video"].transpose(1, 2).contiguous()  # HF layout [B, T, C, H, W]
    tokens = ours.tokenizer(batch)
    ours_times: list[float] = []
    peer_times: list[float] = []
    step = 0
    for _ in range(rounds):
        for _ in range(steps + WARMUP):
            start = time.perf_counter()
            loss = ours(batch, torch.Generator().manual_seed(step))["loss"]
            loss.backward()
            optimizers[0].step()
            optimizers[0].zero_grad(set_to_none=True)
            ours_times.append(time.perf_counter() - start)
            step += 1
        ours_times[-steps - WARMUP :] = ours_times[-steps:]
        for peer_step in range(steps + WARMUP):
            generator = torch.Generator().manual_seed(step - steps - WARMUP + peer_step)
            mask = ours.draw_mask(tokens, batch, generator)  # the same masks, untimed
            start = time.perf_counter()
            loss = peer(pixel_values=pixel_values, bool_masked_pos=mask).loss
            loss.backward()
            optimizers[1].step()
            optimizers[1].zero_grad(set_to_none=True)
            peer_times.append(time.perf_counter() - start)
        peer_times[-steps - WARMUP :] = peer_times[-steps:]
    return ours_times, peer_times


def decode_rate(recipe, config, clips: int) -> float:  # noqa: ANN001
    dataset = recipe.build_dataset(config)
    dataset[0]  # index the first file outside the timing
    start = time.perf_counter()
    for i in range(clips):
        dataset[i % len(dataset)]
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paper", action="store_true", help="paper sizes (slow on a CPU)")
    parser.add_argument("--batch", type=int, default=None, help="default 8, or 2 with --paper")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = get_recipe("video/videomae")
    if args.paper:
        config = recipe.config("paper")
        batch_size = args.batch or 2
    else:
        config = apply_overrides(recipe.config("demo"), SMALL)
        batch_size = args.batch or 8
    config.train.batch_size = batch_size
    clip, model = config.clip, config.model
    size = {
        "frames": clip.num_frames, "image": clip.size, "batch": batch_size, "dim": model.dim,
        "depth": model.depth, "decoder": f"{model.decoder_depth}x{model.decoder_dim}",
        "mask_ratio": config.mask.ratio, "threads": torch.get_num_threads(),
    }  # fmt: skip
    dataset = recipe.build_dataset(config)
    batch = sample_batch(recipe, config, dataset, batch_size)
    if batch["video"].shape[0] < batch_size:  # the embedded set is small; repeat clips
        repeats = -(-batch_size // batch["video"].shape[0])
        batch = {k: v.repeat(repeats, *(1,) * (v.dim() - 1))[:batch_size] for k, v in batch.items()}
    ours, peer = step_times(config, batch, args.steps, args.rounds)
    ours_s, peer_s = statistics.median(ours), statistics.median(peer)
    emit("step_s", ours_s, peer="transformers.VideoMAEForPreTraining", peer_value=peer_s,
         ratio=ours_s / peer_s, target_ratio=0.9, **size)  # fmt: skip
    clips_per_s = decode_rate(recipe, config, clips=4 * batch_size)
    consumed = batch_size / ours_s
    emit("clips_per_s", clips_per_s, peer="training step consumption (clips/s)",
         peer_value=consumed, ratio=clips_per_s / consumed, workers=1, **size)  # fmt: skip


if __name__ == "__main__":
    main()
