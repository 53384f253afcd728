"""text/mlm training throughput against the plain Hugging Face loop, one JSON line per figure.

Peer: `BertForMaskedLM` + `DataCollatorForLanguageModeling` (15%, 80/10/10), each batch padded
to its longest row, AdamW: the loop a user writes from the transformers docs. Ours: the `text/mlm`
model (same BERT size and init) on the same variable-length documents of the embedded stdlib
corpus, (1) one document chunk per row padded like the peer, (2) packed rows (several documents
per row, block-diagonal attention, almost no padding). Both predict at the masked positions only
(ours) or everywhere (peer's `BertForMaskedLM`).

Throughput is real (non-padding) tokens per second of whole training steps (masking, forward,
backward, optimiser), the median over measured steps; each variant runs in its own process (peak
memory then means something on a CPU: the rise of peak RSS during training; on CUDA, the peak
allocated), and rounds alternate the variants so a busy machine slows all alike.
Targets: ours padded >= 1.0x the peer, ours packed >= 1.5x.

    python benchmarks/text_mlm.py                 # small BERT on CPU (default)
    python benchmarks/text_mlm.py --paper         # BERT-base, seq 512 (use a GPU)
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import time

import torch

VARIANTS = ("hf_padded", "ours_padded", "ours_packed")


def emit(figure: str, value: float, **extra: object) -> None:
    print(json.dumps({"bench": "text", "figure": figure, "value": value, **extra}), flush=True)


def build_config(args: argparse.Namespace, packing: bool):  # noqa: ANN201
    from omnimask.config import apply_overrides
    from omnimask.plugins import get_recipe

    recipe = get_recipe("text/mlm")
    config = recipe.config("paper" if args.paper else "demo")
    overrides = [f"corpus.packing={packing}", "vocab.size=4096", "vocab.path=null"]
    if not args.paper:
        overrides += [
            "model.hidden=128",
            "model.layers=2",
            "model.heads=2",
            "model.intermediate=512",
        ]
    return recipe, apply_overrides(config, overrides)


def batches(args: argparse.Namespace, packing: bool) -> list[list[dict]]:
    """Fixed batches of samples: packed rows, or one chunk per row; same documents either way."""
    recipe, config = build_config(args, packing)
    dataset = recipe.build_dataset(config)
    order = list(range(len(dataset)))
    random.Random(0).shuffle(order)
    needed = (args.warmup + args.steps) * args.batch
    order = (order * (needed // len(order) + 1))[:needed]
    samples = [dataset[i] for i in order]
    return [samples[i : i + args.batch] for i in range(0, needed, args.batch)]


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def run_variant(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Median real-tokens/s and peak memory of one variant (run in its own process)."""
    from omnimask_text.dataset import collate_rows, resolve_tokenizer
    from omnimask_text.models.build import SpecialIds, mlm_config
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    device = torch.device(args.device)
    packing = name == "ours_packed"
    recipe, config = build_config(args, packing)
    data = batches(args, packing)
    torch.manual_seed(0)
    if name == "hf_padded":
        from transformers import PreTrainedTokenizerFast

        tokenizer = resolve_tokenizer(config)
        special = SpecialIds.of(tokenizer)
        model = BertForMaskedLM(mlm_config(config.model, tokenizer.get_vocab_size(), special))
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        )  # fmt: skip
        collator = DataCollatorForLanguageModeling(fast, mlm_probability=0.15, seed=0)
    else:
        model = recipe.build_model(config)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(index: int, samples: list[dict]) -> int:
        if name == "hf_padded":
            batch = collator([{"input_ids": s["input_ids"].tolist()} for s in samples])
            batch = {k: v.to(device) for k, v in batch.items()}
            real = int(batch["attention_mask"].sum())
            with autocast:
                loss = model(**batch).loss
        else:
            batch = collate_rows(samples)
            batch["sample_id"] = torch.arange(len(samples)) + index * len(samples)
            real = int((batch["sequence_ids"] > 0).sum())
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast:
                loss = model(batch, torch.Generator().manual_seed(index))["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return real

    for index in range(args.warmup):
        step(index, data[index])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_mb()
    rates, padded_fraction = [], []
    for index in range(args.warmup, args.warmup + args.steps):
        start = time.perf_counter()
        real = step(index, data[index])
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(real / (time.perf_counter() - start))
        longest = max(len(s["input_ids"]) for s in data[index])
        padded_fraction.append(1 - real / (longest * len(data[index])))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
    return {
        "tokens_per_s": statistics.median(rates),
        "peak_memory_mb": peak,
        "padding_fraction": statistics.mean(padded_fraction),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paper", action="store_true", help="BERT-base, seq 512")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)))
        return
    forwarded = sys.argv[1:]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name in VARIANTS:
            output = subprocess.run(
                [sys.executable, __file__, *forwarded, "--variant", name],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            results[name].append(json.loads(output.strip().splitlines()[-1]))
    size = "bert-base seq512" if args.paper else "bert h128 l2 seq128"
    common = {"device": args.device, "model": size, "batch": args.batch}
    summary = {}
    for name, runs in results.items():
        summary[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for key, value in summary[name].items():
            emit(f"{name}.{key}", value, **common)
    peer = summary["hf_padded"]
    for name in ("ours_padded", "ours_packed"):
        emit(
            f"{name}.speedup_vs_hf", summary[name]["tokens_per_s"] / peer["tokens_per_s"], **common
        )
        emit(
            f"{name}.peak_memory_ratio_vs_hf",
            summary[name]["peak_memory_mb"] / max(peer["peak_memory_mb"], 1e-9),
            **common,
        )


if __name__ == "__main__":
    main()
