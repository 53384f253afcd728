"""Pretrain VideoMAE on a folder of action clips (Kinetics/SSv2-style: class folders or not).

    python plugins/video/scripts/pretrain_actions.py /data/kinetics400/train --preset paper \
        clip.stride=4 train.batch_size=32

Without a path it trains the demo on the embedded moving-shape clips. Arguments after the path
are the same `key=value` overrides the CLI takes (e.g. `clip.stride=2` for Something-Something).
"""

from __future__ import annotations

import argparse

from omnimask.config import apply_overrides
from omnimask.engine import pretrain
from omnimask.plugins import get_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", default=None, help="video files / frame folders")
    parser.add_argument("--preset", default="demo", choices=["demo", "paper"])
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args()
    recipe = get_recipe("video/videomae")
    config = recipe.config(args.preset)
    config.data.path = args.data
    config = apply_overrides(config, args.overrides)
    pretrain(recipe, config, run_dir=args.run_dir)


if __name__ == "__main__":
    main()
