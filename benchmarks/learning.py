"""Does pretraining help? Pretrained encoder against the same architecture at random init.

Per recipe and seed: pretrain through the real API (`omnimask.cli.build_config`, the config the
CLI builds, then `omnimask.engine.pretrain`) on the recipe's embedded data with `train.seed=s`,
then score the run with `omnimask.evaluation.evaluate_run`, which fits the same probe on the
pretrained encoder's frozen features and on the same architecture at its random initialisation
(the recipe's embedded labelled set; `--protocols linear knn finetune`, the last fine-tuning
the whole encoder from each side's weights, or a recipe's own protocols, one line per figure).
One JSON line per figure:

    {"recipe", "preset", "seed", "protocol", "pretrained", "random_init", "gap", "steps",
     "minutes", "eval_minutes"}

then one summary line per recipe and protocol (means over seeds, and whether the target is met:
pretrained beats random init by at least 10 points, or halves its error where random init is
already above 80%). `minutes` is the pretraining wall time.

`--stage1 text/mlm train.init_from` first pretrains that recipe (same preset, seed and
`--stage1-set` overrides) per seed and passes its run directory to the recipe under test as that
config key (ELECTRA started from a BERT; Point-BERT's dVAE with `dvae_run`); `minutes` then
counts both stages.

`--steps-curve 100 200 400` trains one run per seed for the largest count, keeping a checkpoint
at every listed count, and scores each of them: probe accuracy against pretraining steps (of
one cosine schedule over the largest count), for recipes that miss the target in budget.

    .venv/bin/python benchmarks/learning.py [--recipe vision/spark ...] [--seeds 0 1]
        [--preset proof] [--protocols linear knn] [--steps-curve N ...] [--keep DIR]
        [--set train.steps=10 ...] [--eval-set finetune.epochs=5 ...] [--limit N]
        [--stage1 RECIPE KEY] [--stage1-set KEY=VALUE ...]

Runs go in a temporary directory unless `--keep DIR`. Use one torch thread on a shared CPU
(`OMP_NUM_THREADS=1`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import shutil
import sys
import tempfile
import time
from functools import reduce
from pathlib import Path
from typing import Any

#: evaluate_run result key of each protocol.
PROTOCOL_KEYS = {
    "linear": "linear_probe_accuracy",
    "knn": "knn_accuracy",
    "finetune": "finetune_accuracy",
}
#: recipes whose `proof` presets were tuned with this benchmark (figures in the READMEs); the
#: default is every installed recipe with a `proof` preset.
COVERED_RECIPES = (
    "vision/spark",
    "vision/mae",
    "vision/simmim",
    "remote_sensing/croma",
    "pointcloud/point_mae",
    "pointcloud/point_bert",
    "text/mlm",
    "text/electra",
    "audio/w2v_bert",
)


def proof_recipes() -> list[str]:
    """Installed recipes that have a `proof` preset."""
    from omnimask.plugins import PluginError, discover, get_recipe

    names = []
    for name in discover().recipe_names():
        try:
            if "proof" in get_recipe(name).presets:
                names.append(name)
        except PluginError:
            continue
    return names


def target_met(pretrained: float, random_init: float) -> bool:
    """At least 10 points better, or half the error where random init is above 80%."""
    slack = 1e-9  # accuracies are ratios of counts: 0.95 vs 0.90 must count as halved
    if random_init > 0.8:
        return (1 - pretrained) <= 0.5 * (1 - random_init) + slack
    return pretrained - random_init >= 0.10 - slack


def evaluate(
    run_dir: Path, protocols: list[str], limit: int | None, overrides: list[str]
) -> dict[str, Any]:
    """`evaluate_run` with the same protocol for the pretrained and the random-init side."""
    from omnimask.evaluation import evaluate_run

    kwargs: dict[str, Any] = {"limit": limit}
    parameters = inspect.signature(evaluate_run).parameters
    if "protocols" in parameters:
        kwargs["protocols"] = tuple(protocols)
    elif any(p not in ("linear", "knn") for p in protocols):
        raise SystemExit("this omnimask's evaluate_run scores linear and knn only")
    if overrides:
        if "overrides" not in parameters:
            raise SystemExit("this omnimask's evaluate_run takes no overrides")
        kwargs["overrides"] = tuple(overrides)
    return evaluate_run(run_dir, **kwargs)


def result_keys(protocol: str, scores: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure name, evaluate_run key) of a protocol: the core's accuracy, or every figure of a
    recipe's own protocol (`<protocol>/<figure>`, e.g. `segmentation_probe/dice_mean`)."""
    if protocol in PROTOCOL_KEYS:
        return [(protocol, PROTOCOL_KEYS[protocol])]
    return [(key, key) for key in scores if key.startswith(f"{protocol}/")]


def checkpoint_view(run_dir: Path, step: int, into: Path) -> Path:
    """A run directory holding only `run_dir`'s checkpoint at `step` (linked, not copied), so
    `evaluate_run`, which reads the newest checkpoint, scores that one."""
    view = into / f"step_{step}"
    (view / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", view / "config.yaml")
    source = run_dir / "checkpoints" / f"step_{step:08d}"
    if not source.is_dir():
        raise SystemExit(f"{run_dir} has no checkpoint at step {step}")
    (view / "checkpoints" / source.name).symlink_to(source.resolve())
    return view


def figures(
    result: dict[str, Any], base: dict[str, Any], protocols: list[str]
) -> list[dict[str, Any]]:
    lines = []
    pairs = [pair for p in protocols for pair in result_keys(p, result["pretrained"])]
    for protocol, key in pairs:
        pretrained, random_init = result["pretrained"][key], result["random_init"][key]
        lines.append(
            {
                **base,
                "protocol": protocol,
                "pretrained": round(pretrained, 4),
                "random_init": round(random_init, 4),
                "gap": round(pretrained - random_init, 4),
            }
        )
    return lines


def run_recipe(args: argparse.Namespace, recipe_name: str, root: Path) -> list[dict[str, Any]]:
    from omnimask.cli import build_config
    from omnimask.engine import pretrain

    lines = []
    for seed in args.seeds:
        overrides = ["train.progress=false", *args.set, f"train.seed={seed}"]
        run_dir = root / recipe_name.replace("/", "_") / f"seed{seed}"
        stage1_minutes = 0.0
        if args.stage1:
            first_recipe, key = args.stage1
            first_overrides = ["train.progress=false", *args.stage1_set, f"train.seed={seed}"]
            first_dir = run_dir.with_name(f"seed{seed}_stage1")
            started = time.perf_counter()
            pretrain(
                *build_config(first_recipe, args.preset, args.data, first_overrides), first_dir
            )
            stage1_minutes = (time.perf_counter() - started) / 60
            overrides.append(f"{key}={first_dir}")
        recipe, config = build_config(recipe_name, args.preset, args.data, overrides)
        curve = sorted(set(args.steps_curve or []) - {0})
        if curve:
            config.train.steps = curve[-1]
            config.train.checkpoint_every = reduce(math.gcd, curve)
            config.train.keep_last = config.train.steps // config.train.checkpoint_every + 1
        else:
            config.train.checkpoint_every = config.train.steps
        started = time.perf_counter()
        pretrain(recipe, config, run_dir)
        minutes = (time.perf_counter() - started) / 60
        points = [(s, checkpoint_view(run_dir, s, run_dir / "curve")) for s in curve] or [
            (config.train.steps, run_dir)
        ]
        for steps, directory in points:
            started = time.perf_counter()
            result = evaluate(directory, args.protocols, args.limit, args.eval_set)
            base = {
                "recipe": recipe_name,
                "preset": args.preset,
                "seed": seed,
                "steps": steps,
                "minutes": round(stage1_minutes + minutes * steps / config.train.steps, 2),
                "eval_minutes": round((time.perf_counter() - started) / 60, 2),
            }
            if curve:
                base["curve_of_steps"] = config.train.steps
            if args.set:
                base["overrides"] = list(args.set)
            if args.stage1:
                base["stage1"] = [*args.stage1, *args.stage1_set]
            for line in figures(result, base, args.protocols):
                print(json.dumps(line), flush=True)
                lines.append(line)
    return lines


def summaries(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over seeds per (recipe, protocol, steps)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for line in lines:
        groups.setdefault((line["recipe"], line["protocol"], line["steps"]), []).append(line)
    out = []
    for (recipe, protocol, steps), group in groups.items():
        pretrained = sum(g["pretrained"] for g in group) / len(group)
        random_init = sum(g["random_init"] for g in group) / len(group)
        out.append(
            {
                "summary": True,
                "recipe": recipe,
                "preset": group[0]["preset"],
                "protocol": protocol,
                "seeds": [g["seed"] for g in group],
                "steps": steps,
                "pretrained": round(pretrained, 4),
                "random_init": round(random_init, 4),
                "gap": round(pretrained - random_init, 4),
                "target_met": target_met(pretrained, random_init),
                "minutes": round(sum(g["minutes"] for g in group) / len(group), 2),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", nargs="+", help="default: every recipe with a proof preset")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--preset", default="proof")
    parser.add_argument(
        "--protocols", nargs="+", default=["linear", "knn"], help="linear, knn, finetune..."
    )
    parser.add_argument("--steps-curve", nargs="+", type=int, metavar="STEPS")
    parser.add_argument("--keep", type=Path, help="keep the runs in DIR (default: a temp dir)")
    parser.add_argument("--data", help="pretraining data (default: the recipe's embedded set)")
    parser.add_argument("--limit", type=int, help="cap on the samples of each eval split")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides"
    )
    parser.add_argument(
        "--eval-set", nargs="+", default=[], metavar="KEY=VALUE", help="eval overrides (finetune.*)"
    )
    parser.add_argument(
        "--stage1", nargs=2, metavar=("RECIPE", "KEY"), help="pretrain RECIPE first, pass as KEY"
    )
    parser.add_argument("--stage1-set", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="omnimask-learning-"))
    try:
        for recipe_name in args.recipe or proof_recipes():
            lines = run_recipe(args, recipe_name, root)
            for summary in summaries(lines):
                print(json.dumps(summary), flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
