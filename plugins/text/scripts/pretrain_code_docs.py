"""Pretrain a BERT-style encoder on code documentation (docstrings, READMEs, API docs).

Point `--data` at a folder of `.txt` files, a JSONL export (`--field` names the text field) or a
Parquet table; a WordPiece vocabulary is trained on it first (or pass `vocab.path=...`). Without
`--data` it trains on the embedded Python standard-library docstrings.

    python plugins/text/scripts/pretrain_code_docs.py --data docs.jsonl --field body \\
        --preset whole_word train.steps=20000
"""

from __future__ import annotations

import argparse

from omnimask.config import apply_overrides
from omnimask.engine import pretrain
from omnimask.plugins import get_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="corpus: folder of .txt, .jsonl or .parquet files")
    parser.add_argument("--field", default="text", help="JSONL field / Parquet column")
    parser.add_argument("--preset", default="demo", help="text/mlm preset (demo, whole_word...)")
    parser.add_argument("--run-dir", help="run directory (resumed when it exists)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    recipe = get_recipe("text/mlm")
    config = recipe.config(args.preset)
    config.data.path = args.data
    # identifiers and code words are better kept whole: whole-word masking by default
    overrides = [f"corpus.field={args.field}", "mask.strategy=whole_word", *args.overrides]
    result = pretrain(recipe, apply_overrides(config, overrides), args.run_dir)
    print(f"run directory: {result.run_dir}\nfinal loss: {result.last_loss:.4f}")


if __name__ == "__main__":
    main()
