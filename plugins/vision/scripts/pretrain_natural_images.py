"""Pretrain SparK (or MAE/SimMIM) on a folder of natural photographs (JPEG/PNG/WebP) or
WebDataset tar shards; the same recipe API as `omnimask pretrain`.

    .venv/bin/python plugins/vision/scripts/pretrain_natural_images.py /data/photos \
        --recipe vision/spark --preset paper train.batch_size=256
"""

from __future__ import annotations

import argparse

from omnimask.config import apply_overrides
from omnimask.engine import pretrain
from omnimask.plugins import get_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", help="image folder or shards (default: embedded set)")
    parser.add_argument("--recipe", default="vision/spark")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    recipe = get_recipe(args.recipe)
    config = recipe.config(args.preset)
    config.data.path = args.data
    pretrain(recipe, apply_overrides(config, args.overrides))


if __name__ == "__main__":
    main()
