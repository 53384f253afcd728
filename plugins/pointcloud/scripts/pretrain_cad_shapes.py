"""Pretrain on CAD shapes (ShapeNet/ModelNet-style folders of meshes or point files).

Point-BERT is two runs: the dVAE tokenizer, then masked point modelling against it:

    python plugins/pointcloud/scripts/pretrain_cad_shapes.py \
        --data /data/ShapeNet55 --method point_bert
    python plugins/pointcloud/scripts/pretrain_cad_shapes.py \
        --data /data/ShapeNet55 --method point_mae

Without --data it runs the demo on the embedded reliefs. It calls the same recipe API as
`omnimask pretrain`; extra `key=value` arguments are config overrides.
"""

from __future__ import annotations

import argparse

from omnimask.cli import build_config
from omnimask.engine import pretrain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder of shapes (default: the embedded reliefs)")
    parser.add_argument("--method", choices=("point_mae", "point_bert"), default="point_mae")
    parser.add_argument("--preset", default=None, help="default: paper with --data, demo without")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    preset = args.preset or ("paper" if args.data else "demo")
    overrides = list(args.overrides)
    if args.method == "point_bert":
        recipe, config = build_config("pointcloud/point_bert_dvae", preset, args.data, overrides)
        stage_one = pretrain(recipe, config)
        print(f"dVAE tokenizer: {stage_one.run_dir}")
        overrides.append(f"dvae_run={stage_one.run_dir}")
    recipe, config = build_config(f"pointcloud/{args.method}", preset, args.data, overrides)
    print(f"run directory: {pretrain(recipe, config).run_dir}")


if __name__ == "__main__":
    main()
