"""Pretrain on a folder of sensor logs (IMU, ECG, industrial telemetry...), one series per file.

    python scripts/pretrain_sensors.py --data logs/ [--preset demo|paper] [--run-dir DIR] [k=v ...]

Thin on purpose: the same recipe API as `omnimask pretrain timeseries/mae`, plus one convenience,
sizing `model.channels` from the first file unless it is overridden.
"""

from __future__ import annotations

import argparse

from omnimask.config import apply_overrides
from omnimask.engine import pretrain
from omnimask.plugins import get_recipe
from omnimask_timeseries.data import peek_channels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="file or folder of .npy [channels, time] / .csv series")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--run-dir", help="resumes if it holds checkpoints")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=5000")
    args = parser.parse_args()

    recipe = get_recipe("timeseries/mae")
    config = recipe.config(args.preset)
    if args.data is not None:
        config.data.path = args.data
        if not any(item.startswith("model.channels=") for item in args.overrides):
            config.model.channels = peek_channels(args.data)
    config = apply_overrides(config, args.overrides)
    result = pretrain(recipe, config, args.run_dir)
    print(f"run directory: {result.run_dir} (step {result.step}, loss {result.last_loss:.4f})")


if __name__ == "__main__":
    main()
