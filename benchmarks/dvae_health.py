"""Health of Point-BERT's dVAE tokenizer (issue #17), one JSON line per figure.

Trains `pointcloud/point_bert_dvae` with the demo preset on the embedded shapes (or reads a
finished run with `--run RUN_DIR`), then, in eval mode (hard argmax codes), on each split of
the embedded labelled set without augmentation:

1. code usage over every patch of the split: the perplexity of the histogram of argmax codes
   (exp of its entropy; the vocabulary size when all codes are used equally) and the share of
   the vocabulary used at least once;
2. Chamfer-L1 of the decoded fine points to each true patch (patch-relative coordinates, the
   mean over patches) for: the dVAE's own codes; uniformly drawn random codes; the dVAE's codes
   shuffled across the patches of the batch; and the patch-centre baseline (every point at its
   patch centre, i.e. all zeros);
3. the ratios real / baseline (a working tokenizer: <= 0.8 against both random codes and the
   centre baseline, with a perplexity of at least half the vocabulary);
4. with `--mpm`: trains `pointcloud/point_bert` (stage 2, demo preset) on those codes
   (`dvae_run`), then reports its masked-code accuracy on each split (block masks drawn as in
   training) beside the most-frequent-code rate (the share of the masked patches whose code is
   the split's most frequent one: what always predicting that code would score).

    python benchmarks/dvae_health.py [--run RUN_DIR] [--mpm] [--threads 1] [--seed 0] [overrides]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch


def emit(figure: str, value: float, **extra: object) -> None:
    record = {"bench": "dvae_health", "figure": figure, "value": value, **extra}
    print(json.dumps(record), flush=True)


def batches(dataset, size: int):  # noqa: ANN001, ANN201
    for start in range(0, len(dataset), size):
        items = [dataset[i] for i in range(start, min(start + size, len(dataset)))]
        yield {"points": torch.stack([item["points"] for item in items])}


@torch.no_grad()
def health(model, dataset, seed: int = 0, batch_size: int = 32) -> dict[str, float]:  # noqa: ANN001
    """Code usage and Chamfer-L1 of real / random / shuffled codes and of the centre baseline."""
    from omnimask_pointcloud.geometry import chamfer_distance

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    vocab = model.encoder.vocab_size
    counts = torch.zeros(vocab)
    sums = {"real": 0.0, "random": 0.0, "shuffled": 0.0, "centre": 0.0}
    patches = 0
    for batch in batches(dataset, batch_size):
        (codes,) = (entry.ids for entry in model.code_ids(batch).values())
        tokens = model.tokenizer(batch)
        truth = tokens.extras["neighbourhood"]
        k = truth.shape[-2]
        flat_truth = truth.reshape(-1, k, 3)
        counts += torch.bincount(codes.flatten(), minlength=vocab).float()
        random = torch.randint(vocab, codes.shape, generator=generator)
        order = torch.randperm(codes.numel(), generator=generator)
        shuffled = codes.flatten()[order].reshape(codes.shape)
        for name, ids in (("real", codes), ("random", random), ("shuffled", shuffled)):
            fine = model.decode(ids, tokens).reshape(len(flat_truth), -1, 3)
            sums[name] += chamfer_distance(fine, flat_truth, "l1", reduce=False).sum().item()
        centre = torch.zeros_like(flat_truth[:, :1])
        sums["centre"] += chamfer_distance(centre, flat_truth, "l1", reduce=False).sum().item()
        patches += len(flat_truth)
    share = counts / counts.sum()
    entropy = -(share[share > 0] * share[share > 0].log()).sum().item()
    result = {f"chamfer_l1_{name}": total / patches for name, total in sums.items()}
    result.update(
        perplexity=math.exp(entropy),
        share_used=float((counts > 0).float().mean()),
        vocab_size=vocab,
        patches=patches,
    )
    return result


@torch.no_grad()
def masked_code_accuracy(model, dataset, seed: int = 0, batch_size: int = 32) -> dict[str, float]:  # noqa: ANN001
    """Stage 2's accuracy on the masked patches' codes, and the most-frequent-code rate."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    right, codes = 0, []
    for batch in batches(dataset, batch_size):
        output = model.predict(batch, generator)
        target = output.target[output.mask]
        right += (output.prediction[output.mask].argmax(-1) == target).sum().item()
        codes.append(target)
    codes = torch.cat(codes)
    return {
        "accuracy": right / len(codes),
        "most_frequent_rate": torch.bincount(codes).max().item() / len(codes),
        "masked_patches": len(codes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished pointcloud/point_bert_dvae run directory")
    parser.add_argument("--mpm", action="store_true", help="then train stage 2 on the codes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="config overrides for the demo training run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from omnimask.cli import main as cli
    from omnimask.runs import load_run

    run_dir = args.run
    if run_dir is None:
        run_dir = str(Path(tempfile.mkdtemp(prefix="dvae_health_")) / "dvae")
        start = time.perf_counter()
        code = cli(["pretrain", "pointcloud/point_bert_dvae", "--preset", "demo",
                    "--run-dir", run_dir, "train.progress=false", *args.overrides])  # fmt: skip
        if code:
            raise SystemExit(f"training failed with exit code {code}")
        emit("train_seconds", time.perf_counter() - start, run=run_dir)
    run = load_run(run_dir)
    train, test = run.recipe.build_eval_datasets(run.config)
    for split, dataset in (("train", train), ("test", test)):
        figures = health(run.model, dataset, args.seed)
        extra = {"split": split, "run": run_dir, "step": run.step}
        vocab = figures["vocab_size"]
        emit("code_perplexity", figures["perplexity"], vocab_size=vocab, patches=figures["patches"],
             target=vocab / 2, **extra)  # fmt: skip
        emit("code_share_used", figures["share_used"], **extra)
        for name in ("real", "random", "shuffled", "centre"):
            emit(f"chamfer_l1_{name}_codes" if name != "centre" else "chamfer_l1_centre_baseline",
                 figures[f"chamfer_l1_{name}"], **extra)  # fmt: skip
        real = figures["chamfer_l1_real"]
        for name in ("random", "shuffled", "centre"):
            emit(f"ratio_real_over_{name}", real / figures[f"chamfer_l1_{name}"], target=0.8,
                 **extra)  # fmt: skip
    if not args.mpm:
        return
    mpm_dir = str(Path(run_dir).parent / "mpm")
    # the dVAE's own architecture overrides, which stage 2 must repeat to match the run
    same = [f"dvae.{o.removeprefix('model.')}" for o in args.overrides if o.startswith("model.")]
    same += [o for o in args.overrides if o.startswith("patches.")]
    start = time.perf_counter()
    code = cli(["pretrain", "pointcloud/point_bert", "--preset", "demo", "--run-dir", mpm_dir,
                "train.progress=false", f"dvae_run={run_dir}", *same])  # fmt: skip
    if code:
        raise SystemExit(f"stage 2 training failed with exit code {code}")
    emit("mpm_train_seconds", time.perf_counter() - start, run=mpm_dir)
    mpm = load_run(mpm_dir)
    for split, dataset in zip(("train", "test"), mpm.recipe.build_eval_datasets(mpm.config)):
        figures = masked_code_accuracy(mpm.model, dataset, args.seed)
        extra = {"split": split, "run": mpm_dir, "step": mpm.step}
        emit("mpm_masked_code_accuracy", figures["accuracy"], **extra)
        emit("mpm_most_frequent_code_rate", figures["most_frequent_rate"],
             masked_patches=figures["masked_patches"], **extra)  # fmt: skip


if __name__ == "__main__":
    main()
