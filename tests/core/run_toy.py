"""Run the toy recipe through the engine in a subprocess: `python run_toy.py RUN_DIR [k=v...]`
(also under `accelerate launch` / `torchrun`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from omnimask.config import apply_overrides  # noqa: E402
from omnimask.engine import pretrain  # noqa: E402
from toy_recipe import ToyRecipe  # noqa: E402

if __name__ == "__main__":
    recipe = ToyRecipe()
    config = apply_overrides(recipe.config("demo"), sys.argv[2:])
    pretrain(recipe, config, sys.argv[1])
