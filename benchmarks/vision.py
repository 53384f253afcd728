"""Vision benchmarks, side by side in one run, one JSON line per figure.

1. `vision/mae` training step against Hugging Face `ViTMAEForPreTraining`, same ViT size, image
   size, batch, mask ratio, decoder, fp32, SDPA attention, the same AdamW step (torch's fused
   kernel, which our engine uses; the peer gets it too) and the same masks (our
   masker draws each step's mask inside our timed step; Hugging Face gets it as `noise`, drawn
   outside its timing): step time (median of strictly alternating steps, with quartiles and the
   median of the per-pair ratios) and peak memory, with ratios (ours / theirs), and the ratio
   of the two steps' matrix-product FLOPs (what a compute-bound device cannot beat).
2. SparK's masked-dense encoder (forward + backward, 60% masked) against the same timm CNN run
   densely on the full image: what sparse encoding costs or saves on this backend.
3. SparK's two sparse-encoding backends, masked dense and spconv, against each other and the
   dense CNN (`--spark-backends` alone): forward on CPU, forward + backward on CUDA.

Step times are medians with the two sides' steps interleaved in one process (same machine
load); peak memory is measured for each case alone in a child process (CUDA allocator peak, or
peak RSS above the baseline after imports on CPU). Defaults are small enough for a CPU;
`--paper` uses ViT-B/16 at 224 px with the 8x512 decoder and ResNet-50 at 224 px.

    .venv/bin/python benchmarks/vision.py [--paper] [--steps N] [--mae-steps N] [--batch B]
        [--threads T] [--mae-only | --spark-backends]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SMALL = {
    "image": 96, "patch": 16, "width": 192, "depth": 6, "heads": 3,
    "decoder_width": 128, "decoder_depth": 2, "decoder_heads": 4, "batch": 8,
    "cnn": "resnet18", "cnn_kwargs": {"channels": [16, 32, 64, 128]}, "cnn_image": 96,
}  # fmt: skip
PAPER = {
    "image": 224, "patch": 16, "width": 768, "depth": 12, "heads": 12,
    "decoder_width": 512, "decoder_depth": 8, "decoder_heads": 16, "batch": 64,
    "cnn": "resnet50", "cnn_kwargs": {}, "cnn_image": 224,
}  # fmt: skip
CASES = ("mae_omnimask", "mae_transformers", "spark_masked_dense", "cnn_dense")
#: MAE steps cycle through this many masks (seeds 1..MASKS), the same for both sides.
MASKS = 64


def proc_status_mb(field: str) -> float:
    """`VmRSS` / `VmHWM` of this process from /proc (Linux), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM), so that import-time peaks do not hide ours."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def mae_omnimask(size: dict):  # noqa: ANN201
    """Our `vision/mae` model at `size` (the paper preset with the ViT and decoder resized)."""
    from omnimask_vision.config import TimmModelConfig
    from omnimask_vision.recipes import MAERecipe

    recipe = MAERecipe()
    config = recipe.config("paper")
    config.model.encoder = TimmModelConfig(
        "vit_base_patch16_224",
        {
            "img_size": size["image"], "patch_size": size["patch"],
            "embed_dim": size["width"], "depth": size["depth"], "num_heads": size["heads"],
        },
    )  # fmt: skip
    config.model.decoder_width = size["decoder_width"]
    config.model.decoder_depth = size["decoder_depth"]
    config.model.decoder_heads = size["decoder_heads"]
    return recipe.build_model(config)


def mae_transformers(size: dict):  # noqa: ANN201
    """Hugging Face's `ViTMAEForPreTraining` with the same sizes, norm-pix loss and SDPA."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(
        image_size=size["image"], patch_size=size["patch"], hidden_size=size["width"],
        num_hidden_layers=size["depth"], num_attention_heads=size["heads"],
        intermediate_size=4 * size["width"], decoder_hidden_size=size["decoder_width"],
        decoder_num_hidden_layers=size["decoder_depth"],
        decoder_num_attention_heads=size["decoder_heads"],
        decoder_intermediate_size=4 * size["decoder_width"], mask_ratio=0.75,
        norm_pix_loss=True, qkv_bias=True, layer_norm_eps=1e-6, attn_implementation="sdpa",
    )  # fmt: skip
    return ViTMAEForPreTraining(config)


def mae_masks(images, size: dict) -> list:  # noqa: ANN001
    """The masks our `vision/mae` step draws from seeds 1..MASKS (the batch has no `sample_id`,
    so `MaskedModel.draw_mask` calls the masker with the step's generator)."""
    import torch
    from omnimask.masking import RandomMasker
    from omnimask_vision.recipes import MAERecipe
    from omnimask_vision.tokenizer import ImagePatchTokenizer

    tokens = ImagePatchTokenizer(size["patch"])({"image": images.cpu()})
    masker = RandomMasker(MAERecipe().config("paper").mask.ratio)
    return [masker(tokens, torch.Generator().manual_seed(seed)) for seed in range(1, MASKS + 1)]


def build_case(case: str, size: dict, device):  # noqa: ANN001, ANN201
    """(model, step_function) for one case; step_function runs forward + backward."""
    import torch

    generator = torch.Generator().manual_seed(0)
    if case.startswith("mae"):
        images = torch.randn(size["batch"], 3, size["image"], size["image"], generator=generator)
        images = images.to(device)
        masks = mae_masks(images, size)
        state = {"step": 0}
    if case == "mae_omnimask":
        model = mae_omnimask(size).to(device)
        batch = {"image": images}

        def step() -> torch.Tensor:
            state["step"] += 1
            seed = 1 + (state["step"] - 1) % MASKS  # draws masks[seed - 1] inside the step
            return model(batch, torch.Generator().manual_seed(seed))["loss"]

        return model, step
    if case == "mae_transformers":
        model = mae_transformers(size).to(device)
        # argsort of the noise keeps the lowest-noise patches visible: ours, exactly.
        noises = [mask.to(device=device, dtype=torch.float32) for mask in masks]

        def peer_step() -> torch.Tensor:
            state["step"] += 1
            noise = noises[(state["step"] - 1) % MASKS]
            return model(pixel_values=images, noise=noise).loss

        return model, peer_step
    import timm
    from omnimask_vision.sparse import SparseCNNEncoder
    from omnimask_vision.tokenizer import ImagePatchTokenizer

    side = size["cnn_image"]
    images = torch.randn(size["batch"], 3, side, side, generator=generator).to(device)
    cnn = timm.create_model(size["cnn"], pretrained=False, **size["cnn_kwargs"]).to(device)
    if case == "cnn_dense":
        indices = [1, 2, 3, 4]

        def dense_step() -> torch.Tensor:
            maps = cnn.forward_intermediates(images, indices=indices, intermediates_only=True)
            return sum(m.float().mean() for m in maps)

        return cnn, dense_step
    encoder = SparseCNNEncoder(cnn).to(device)
    tokens = ImagePatchTokenizer(32)({"image": images})
    cells = tokens.num_tokens
    mask = torch.rand(size["batch"], cells, generator=generator).argsort(1) < round(0.6 * cells)
    mask = mask.to(device)
    return encoder, lambda: sum(m.float().mean() for m in encoder(tokens, mask))


def trainer(case: str, size: dict, device):  # noqa: ANN001, ANN201
    """A function running one optimiser step of `case` (forward, backward, AdamW). Every case
    gets torch's fused AdamW, the one our engine builds, so the optimiser is no difference."""
    import torch

    torch.manual_seed(0)
    model, step = build_case(case, size, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = step()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return train_step


def synchronize(device) -> None:  # noqa: ANN001
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(case: str, size: dict, steps: int) -> float:
    """Peak memory of `case` alone (run in a child process): CUDA allocator peak, or the peak
    RSS above the process's baseline after imports on CPU."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reset_peak_rss()
    baseline = proc_status_mb("VmRSS")
    train_step = trainer(case, size, device)
    for _ in range(steps):
        train_step()
    synchronize(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return proc_status_mb("VmHWM") - baseline


def step_times(pair: tuple[str, str], size: dict, steps: int, warmup: int) -> list[float]:
    """Median step time of both cases, their steps interleaved in one process so that both
    see the same machine load (a shared CPU makes back-to-back runs incomparable)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steppers = [trainer(case, size, device) for case in pair]
    times: list[list[float]] = [[], []]
    for index in range(warmup + steps):
        for which, train_step in enumerate(steppers):
            synchronize(device)
            start = time.perf_counter()
            train_step()
            synchronize(device)
            if index >= warmup:
                times[which].append(time.perf_counter() - start)
    return [sorted(t)[len(t) // 2] for t in times]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return q1, statistics.median(values), q3


def trained_parameters(case: str, size: dict, device) -> int:  # noqa: ANN001
    """Parameters that get a gradient in one step of `case` (timm's ViT keeps a classifier head
    that MAE never uses; counting it would compare unequal things)."""
    model, step = build_case(case, size, device)
    step().backward()
    return sum(p.numel() for p in model.parameters() if p.grad is not None)


def step_flops(case: str, size: dict, device) -> int:  # noqa: ANN001
    """FLOPs of one forward + backward of `case`, as torch's FlopCounterMode counts them
    (matrix products and convolutions): the floor under the time ratio on a device where the
    step is bound by its matrix products, as a CPU is at the paper size."""
    from torch.utils.flop_counter import FlopCounterMode

    _, step = build_case(case, size, device)
    with FlopCounterMode(display=False) as counter:
        step().backward()
    return counter.get_total_flops()


def mae_step_figures(size: dict, steps: int, warmup: int, device) -> dict:  # noqa: ANN001
    """Our MAE step against Hugging Face's, strictly alternating (ours, theirs, ours, ...), so
    that both see the same machine load: medians, quartiles and the per-pair ratios."""
    pair = ("mae_omnimask", "mae_transformers")
    steppers = [trainer(case, size, device) for case in pair]
    times: list[list[float]] = [[], []]
    for index in range(warmup + steps):
        for which, train_step in enumerate(steppers):
            synchronize(device)
            start = time.perf_counter()
            train_step()
            synchronize(device)
            if index >= warmup:
                times[which].append(time.perf_counter() - start)
    ours, theirs = quartiles(times[0]), quartiles(times[1])
    ratios = quartiles([a / b for a, b in zip(*times)])
    return {
        "value": ours[1], "peer_value": theirs[1], "ratio": ours[1] / theirs[1],
        "quartiles": [ours[0], ours[2]], "peer_quartiles": [theirs[0], theirs[2]],
        "pair_ratio_median": ratios[1], "pair_ratio_quartiles": [ratios[0], ratios[2]],
        "steps": steps, "params": trained_parameters(pair[0], size, device),
        "peer_params": trained_parameters(pair[1], size, device),
        "flop_ratio": step_flops(pair[0], size, device) / step_flops(pair[1], size, device),
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# SparK's sparse-encoding backends: masked dense against spconv, and both against the same timm
# CNN run densely on the full image (`--spark-backends` runs this section alone). Same weights,
# images and 60% mask for all three, batch norm in training mode, fp32. spconv's CPU build has
# no backward pass, so on CPU the three are timed forward only (no grad); on CUDA (spconv's
# GPU build installed) forward + backward. Medians of interleaved calls.
# --------------------------------------------------------------------------------------------

SPARK_BACKENDS = ("masked_dense", "spconv", "dense")


def spark_backend_calls(size: dict, device):  # noqa: ANN001, ANN201
    """{case: a function running one forward (CPU) or forward + backward (CUDA) of it}."""
    import timm
    import torch
    from omnimask_vision.sparse import SparseCNNEncoder
    from omnimask_vision.tokenizer import ImagePatchTokenizer

    generator = torch.Generator().manual_seed(0)
    side, batch = size["cnn_image"], size["batch"]
    images = torch.randn(batch, 3, side, side, generator=generator).to(device)
    tokens = ImagePatchTokenizer(32)({"image": images})
    cells = tokens.num_tokens
    mask = torch.rand(batch, cells, generator=generator).argsort(1) < round(0.6 * cells)
    mask = mask.to(device)
    torch.manual_seed(0)
    models = [
        timm.create_model(size["cnn"], pretrained=False, **size["cnn_kwargs"]) for _ in range(3)
    ]
    for model in models[1:]:
        model.load_state_dict(models[0].state_dict())
    masked_dense = SparseCNNEncoder(models[0], "masked_dense").to(device).train()
    spconv = SparseCNNEncoder(models[1], "spconv").to(device).train()
    dense = models[2].to(device).train()
    forwards = {
        "masked_dense": lambda: masked_dense(tokens, mask),
        "spconv": lambda: spconv(tokens, mask),
        "dense": lambda: dense.forward_intermediates(
            images, indices=[1, 2, 3, 4], intermediates_only=True
        ),
    }
    owners = {"masked_dense": masked_dense, "spconv": spconv, "dense": dense}

    def call(case: str) -> None:
        if device.type != "cuda":
            with torch.no_grad():
                forwards[case]()
            return
        sum(m.mean() for m in forwards[case]()).backward()
        owners[case].zero_grad(set_to_none=True)

    return {case: (lambda case=case: call(case)) for case in SPARK_BACKENDS}


def spark_backend_figures(size: dict, steps: int, warmup: int) -> None:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = "step" if device.type == "cuda" else "forward"
    setting = {
        "model": size["cnn"], "image": size["cnn_image"], "batch": size["batch"],
        "mask_ratio": 0.6, "device": device.type,
        "timed": "forward + backward" if device.type == "cuda" else "forward (no grad)",
    }  # fmt: skip
    try:
        calls = spark_backend_calls(size, device)
    except ImportError as error:  # spconv not installed (its wheels are Linux x86-64 only)
        print(json.dumps({"bench": "vision", "figure": f"spark_spconv_{kind}_s",
                          "value": float("nan"), "note": str(error), **setting}))  # fmt: skip
        return
    times: dict[str, list[float]] = {case: [] for case in SPARK_BACKENDS}
    for index in range(warmup + steps):
        for case in SPARK_BACKENDS:
            synchronize(device)
            start = time.perf_counter()
            calls[case]()
            synchronize(device)
            if index >= warmup:
                times[case].append(time.perf_counter() - start)
    median = {case: sorted(t)[len(t) // 2] for case, t in times.items()}
    dense = median["dense"]
    for case, peer in (("spconv", "masked_dense"), ("masked_dense", "dense")):
        print(json.dumps({
            "bench": "vision", "figure": f"spark_{case}_{kind}_s", "value": median[case],
            "peer": peer, "peer_value": median[peer], "ratio": median[case] / median[peer],
            "dense_value": dense, "ratio_to_dense": median[case] / dense, **setting,
        }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="ViT-B/16 and ResNet-50 at 224 px")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mae-steps", type=int, default=30, help="timed MAE steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, help="override the batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch default)")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # child process
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--mae-only", action="store_true", help="only MAE against Hugging Face")
    only.add_argument(
        "--spark-backends", action="store_true", help="only SparK masked dense vs spconv vs dense"
    )
    args = parser.parse_args()
    size = dict(PAPER if args.paper else SMALL)
    if args.batch:
        size["batch"] = args.batch
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        print(json.dumps({"peak_memory_mb": peak_memory(args.case, size, args.warmup + 1)}))
        return
    if args.spark_backends:
        spark_backend_figures(size, args.steps, args.warmup)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = CASES[:2] if args.mae_only else CASES
    results: dict[str, dict[str, float]] = {case: {} for case in cases}
    mae = mae_step_figures(size, args.mae_steps, args.warmup, device)
    if not args.mae_only:
        pair = CASES[2:]
        for case, seconds in zip(pair, step_times(pair, size, args.steps, args.warmup)):
            results[case]["step_time_s"] = seconds
    for case in cases:
        command = [sys.executable, __file__, "--case", case, "--warmup", str(args.warmup)]
        command += ["--batch", str(size["batch"]), "--threads", str(args.threads)]
        command += ["--paper"] if args.paper else []
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[case].update(json.loads(output.strip().splitlines()[-1]))
    setting = {key: size[key] for key in ("image", "patch", "width", "depth", "batch")}
    setting.update(device=device.type, threads=torch.get_num_threads())

    def emit(figure: str, value: float, **extra: object) -> None:
        print(json.dumps({"bench": "vision", "figure": figure, "value": value, **extra}))

    peer = "transformers.ViTMAEForPreTraining (sdpa)"
    emit("mae_step_time_s", peer=peer, target_ratio=0.9, **mae, **setting)
    ours, theirs = results["mae_omnimask"]["peak_memory_mb"], results["mae_transformers"]
    emit("mae_peak_memory_mb", ours, peer=peer, peer_value=theirs["peak_memory_mb"],
         ratio=ours / theirs["peak_memory_mb"], **setting)  # fmt: skip
    if args.mae_only:
        return
    for metric in ("step_time_s", "peak_memory_mb"):
        sparse, dense = results["spark_masked_dense"][metric], results["cnn_dense"][metric]
        emit(f"spark_masked_dense_{metric}", sparse, peer=f"{size['cnn']} dense, full image",
             peer_value=dense, ratio=sparse / dense, image=size["cnn_image"],
             batch=size["batch"], mask_ratio=0.6)  # fmt: skip
    spark_backend_figures(size, args.steps, args.warmup)


if __name__ == "__main__":
    main()
