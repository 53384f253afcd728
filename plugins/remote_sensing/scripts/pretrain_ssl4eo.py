"""Pretrain CROMA on SSL4EO-S12-style Sentinel-1/2 pairs (GeoTIFFs paired by name or manifest).

    python plugins/remote_sensing/scripts/pretrain_ssl4eo.py /data/ssl4eo --preset paper \
        train.batch_size=256 data.num_workers=8

Without a path it trains on the embedded synthetic scenes. A thin wrapper over the same API as
`omnimask pretrain remote_sensing/croma`.
"""

from __future__ import annotations

import argparse

from omnimask.config import apply_overrides
from omnimask.engine import pretrain
from omnimask.plugins import get_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", help="folder of S1/S2 GeoTIFF pairs or a manifest CSV")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    recipe = get_recipe("remote_sensing/croma")
    config = recipe.config(args.preset)
    config.data.path = args.data
    config = apply_overrides(config, args.overrides)
    result = pretrain(recipe, config, args.run_dir)
    print(f"run directory: {result.run_dir}\nfinal loss: {result.last_loss:.4f}")


if __name__ == "__main__":
    main()
