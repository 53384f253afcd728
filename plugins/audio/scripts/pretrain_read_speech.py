"""Pretrain w2v-BERT on a folder of read speech (WAV/FLAC/OGG/MP3, any rate, any channels).

    python plugins/audio/scripts/pretrain_read_speech.py /data/librispeech --preset paper \
        train.batch_size=64 train.steps=100000

Without a folder it trains the demo on the embedded synthetic corpus. It calls the same recipe
API as `omnimask pretrain audio/w2v_bert`.
"""

from __future__ import annotations

import argparse

from omnimask.config import apply_overrides
from omnimask.engine import pretrain
from omnimask.plugins import get_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", help="folder of audio files (default: embedded corpus)")
    parser.add_argument("--preset", default="demo", choices=("demo", "paper"))
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    recipe = get_recipe("audio/w2v_bert")
    config = recipe.config(args.preset)
    config.data.path = args.data
    result = pretrain(recipe, apply_overrides(config, args.overrides))
    print(f"run: {result.run_dir} (final loss {result.last_loss:.4f})")


if __name__ == "__main__":
    main()
