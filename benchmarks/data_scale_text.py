"""Text corpora at scale: peak memory and tokenization throughput of the streaming token cache.

1. Peak RSS of building the training set (`build_text_dataset`: one streaming pass, token cache,
   packing) for a small and a large generated JSONL corpus, each in a fresh process with the
   embedded vocabulary. Target: large within 1.2x of small.
2. Tokens/s of that pass against `datasets.Dataset.map` with the same fast tokenizer, batched,
   one process each (the tokenizer's own threads in both), on the same corpus.

    python benchmarks/data_scale_text.py [--small-mb 10] [--large-mb 1000] [--speed-mb 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUILD = """
import json, sys, time
from omnimask.plugins import get_recipe
from omnimask_text.dataset import build_text_dataset
config = get_recipe("text/mlm").config("demo")
config.vocab.path, config.data.path = sys.argv[1], sys.argv[2]
start = time.perf_counter()
rows = build_text_dataset(config)
seconds = time.perf_counter() - start
arrays = rows.arrays
print(json.dumps({"rows": len(rows), "tokens": int(arrays["offsets"][-1]), "seconds": seconds}))
"""

DATASETS_MAP = """
import json, sys, time
import datasets
from transformers import PreTrainedTokenizerFast
tokenizer = PreTrainedTokenizerFast(tokenizer_file=sys.argv[1])
corpus = datasets.load_dataset("json", data_files=sys.argv[2], split="train", cache_dir=sys.argv[3])
start = time.perf_counter()
mapped = corpus.map(
    lambda batch: tokenizer(batch["text"], add_special_tokens=False),
    batched=True, batch_size=1024, remove_columns=["text"], num_proc=None,
)
seconds = time.perf_counter() - start
tokens = sum(len(ids) for ids in mapped["input_ids"])
print(json.dumps({"tokens": tokens, "seconds": seconds}))
"""


def emit(figure: str, value: float, **extra: object) -> None:
    record = {"bench": "data_scale", "figure": figure, "value": value, **extra}
    print(json.dumps(record), flush=True)


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> Path:
    """JSONL documents of 20-400 words drawn (Zipf-like) from a fixed list of English words."""
    words = np.array(
        (
            "the of and to in is that for it as with was on be by this are from or at an which "
            "have not but all can one has more their will other when there been some if would "
            "what into so its these about time than only new may first also any after two most "
            "used number such data value function return object module class method string file "
            "list type default error name path argument example result process system"
        ).split()
    )
    weights = 1.0 / np.arange(1, len(words) + 1)
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    target = int(megabytes * 2**20)
    with path.open("w") as file:
        written = 0
        while written < target:
            lengths = rng.integers(20, 400, size=1000)
            drawn = rng.choice(words, size=int(lengths.sum()), p=weights)
            for document in np.split(drawn, np.cumsum(lengths)[:-1]):
                line = json.dumps({"text": " ".join(document)}) + "\n"
                file.write(line)
                written += len(line)
    return path


def run_measured(code: str, *args: str, env: dict[str, str]) -> tuple[dict, float]:
    """`python -c code args` in a fresh process: its JSON line and its peak RSS in MiB."""
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, env=env, text=True
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"the measured process failed ({status})")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small-mb", type=float, default=10)
    parser.add_argument("--large-mb", type=float, default=1000)
    parser.add_argument("--speed-mb", type=float, default=100)
    args = parser.parse_args()
    from omnimask.plugins import get_recipe
    from omnimask_text.dataset import tokenizer_path

    tokenizer = str(tokenizer_path(get_recipe("text/mlm").config("demo")))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        env = {**os.environ, "OMNIMASK_DATA_DIR": str(root / "cache")}
        peaks = {}
        for name, size in (("small", args.small_mb), ("large", args.large_mb)):
            corpus = write_corpus(root / f"{name}.jsonl", size)
            result, peak = run_measured(BUILD, tokenizer, str(corpus), env=env)
            peaks[name] = peak
            info = {"corpus_mb": size, "tokens": result["tokens"], "rows": result["rows"]}
            emit("text_build_peak_rss_mib", peak, **info)
            emit("text_build_tokens_per_s", result["tokens"] / result["seconds"], **info)
            corpus.unlink()
        emit(
            "text_peak_rss_large_over_small",
            peaks["large"] / peaks["small"],
            target="<= 1.2",
            small_mb=args.small_mb,
            large_mb=args.large_mb,
        )
        corpus = write_corpus(root / "speed.jsonl", args.speed_mb, seed=1)
        ours, _ = run_measured(BUILD, tokenizer, str(corpus), env=env)
        start = time.perf_counter()
        theirs, _ = run_measured(DATASETS_MAP, tokenizer, str(corpus), str(root / "hf"), env=env)
        ours_rate = ours["tokens"] / ours["seconds"]
        theirs_rate = theirs["tokens"] / theirs["seconds"]
        info = {"corpus_mb": args.speed_mb, "wall_s_datasets": time.perf_counter() - start}
        emit("text_tokens_per_s_streaming_cache", ours_rate, **info)
        emit("text_tokens_per_s_datasets_map", theirs_rate, **info)
        ratio = ours_rate / theirs_rate
        emit("text_tokenize_speed_over_datasets_map", ratio, target=">= 1", **info)


if __name__ == "__main__":
    main()
