"""The `omnimask` command line.

    omnimask plugins | recipes [--show NAME] | pretrain RECIPE [--preset P] [--data PATH] [k=v...]
    omnimask prepare RECIPE [--preset P] [--data PATH] [--out SHARDS] [k=v...]
    omnimask eval RUN | visualize RUN | export RUN --format F | bench RECIPE

Every user-facing failure (unknown recipe, bad override, bad data, a run that cannot be resumed)
is reported as one `omnimask: error: ...` message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

# Only what the fast commands need: `--help`, `plugins` and `recipes` import no torch (nor any
# recipe module); the other commands import their heavy modules when they run.
from omnimask.errors import BadSampleError, ConfigError, DataPathError
from omnimask.plugins import PluginError, UnknownRecipeError, discover, get_recipe, recipe_entry
from omnimask.shards import DEFAULT_CHUNK_BYTES, is_remote

#: `omnimask eval --protocol` choices (`omnimask.evaluation.PROTOCOLS`, without importing torch).
PROTOCOLS = ("linear", "knn", "finetune")

USER_ERRORS: tuple[type[BaseException], ...] = (
    UnknownRecipeError,
    ConfigError,
    DataPathError,
    BadSampleError,
    PluginError,
    FileNotFoundError,
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error types that mean "bad input", imported lazily (they live in heavier modules)."""
    from omnimask.engine import NonFiniteLossError, ResumeError
    from omnimask.engine.checkpoint import CheckpointError, RunWriteError
    from omnimask.engine.runlock import RunLockedError
    from omnimask.evaluation import EvalDataError
    from omnimask.export import ExportError
    from omnimask.runs import RunError
    from omnimask.visualize import FigureError

    return (
        *USER_ERRORS,
        NonFiniteLossError,
        ResumeError,
        CheckpointError,
        RunWriteError,
        RunLockedError,
        EvalDataError,
        ExportError,
        RunError,
        FigureError,
    )


def recipe_problem(name: str) -> str | None:
    """Why recipe `name` cannot be imported and built, or None (imports its module)."""
    try:
        get_recipe(name)
    except PluginError as error:
        return str(error)
    return None


def cmd_plugins(args: argparse.Namespace) -> int:
    """The plugins' specs (cheap: no recipe module is imported) or, with `--check`, every recipe
    imported, each failure with its reason; rc 1 when `--check` finds one."""
    discovery = discover()
    if not discovery.plugins and not discovery.problems:
        print("no omnimask plugins installed")
    failed = bool(discovery.problems)
    for spec in sorted(discovery.plugins.values(), key=lambda s: s.name):
        problems = {name: recipe_problem(name) for name in spec.recipes} if args.check else {}
        status = "found" if not args.check else "FAILED" if any(problems.values()) else "ok"
        failed |= status == "FAILED"
        print(f"{spec.name:<16} {spec.version:<10} {status:<8} {spec.modality}")
        for recipe in sorted(spec.recipes):
            problem = problems.get(recipe)
            print(f"    {recipe}" + (f"  FAILED: {problem}" if problem else ""))
    for problem in discovery.problems:
        print(f"{problem.entry_point:<27} FAILED   {problem.reason}")
    if not args.check and discovery.plugins:
        print(
            "(recipe modules are imported when used; `omnimask plugins --check` imports them now)"
        )
    return 1 if args.check and failed else 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """The recipes as their plugins' specs describe them (no recipe module is imported), or,
    with `--show`, one recipe's config as YAML (imports it)."""
    if args.show:
        from omnimask.config import to_yaml

        recipe = get_recipe(args.show)
        try:
            config = recipe.config(args.preset)
        except KeyError as error:
            raise ConfigError(str(error.args[0])) from None
        print(to_yaml(config), end="")
        return 0
    discovery = discover()
    for spec in sorted(discovery.plugins.values(), key=lambda s: s.name):
        for name in sorted(spec.recipes):
            entry = recipe_entry(spec, name)
            if entry.presets:
                presets = ", ".join(sorted(entry.presets))
                print(f"{name:<28} presets: {presets:<20} {entry.summary}")
            else:  # a spec that gives only the class: its presets need an import
                print(f"{name:<28} (see `omnimask recipes --show {name}`)")
    return 0


def build_config(recipe_name: str, preset: str, data: str | None, overrides: Sequence[str]):  # noqa: ANN201
    """The recipe and its config. A missing data path and a recipe that does not exist are
    reported before the recipe's module (and torch) is imported."""
    if data is not None and not is_remote(data) and not Path(data).exists():
        raise DataPathError(f"data path {data} does not exist")
    recipe = get_recipe(recipe_name)  # an unknown name fails before any import
    from omnimask.config import apply_overrides

    try:
        config = recipe.config(preset)
    except KeyError as error:
        raise ConfigError(str(error.args[0])) from None
    if data is not None:
        config.data.path = data
    return recipe, apply_overrides(config, list(overrides))


def cmd_pretrain(args: argparse.Namespace) -> int:
    from omnimask.engine import pretrain

    recipe, config = build_config(args.recipe, args.preset, args.data, args.overrides)
    result = pretrain(recipe, config, args.run_dir)
    print(f"run directory: {result.run_dir}")
    print(f"final loss: {result.last_loss:.4f} after {result.step} steps")
    print(f"next: omnimask eval {result.run_dir} ; omnimask visualize {result.run_dir}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Build the recipe's training set once (and with it every cache it keeps: a trained
    tokenizer, token files, decoded volumes), so that the processes of a run, on one machine or
    many, start from it instead of each building it. With `--out`, also write it as a shard set
    (`omnimask.shards`) that `pretrain --data OUT` reads, from a shared folder or a bucket."""
    recipe, config = build_config(args.recipe, args.preset, args.data, args.overrides)
    dataset = recipe.build_dataset(config)
    recipe.configure(config, dataset)  # values from the data (channels...), as a run sets them
    skipped = len(getattr(dataset, "skipped_at_load", ()))
    if args.out is None:
        print(
            f"{args.recipe}: {len(dataset)} training samples ready"
            + (f" ({skipped} bad inputs left out)" if skipped else "")
        )
        return 0
    from omnimask.shards import write_shard_set

    report = write_shard_set(
        recipe.name,
        dataset,
        args.out,
        source=args.data,
        on_bad_sample=config.data.on_bad_sample,
        chunk_bytes=args.chunk_bytes,
    )
    skipped += len(report.skipped)
    print(
        f"{args.recipe}: {report.samples} samples written to {report.out} (LitData shards)"
        + (f"; {skipped} bad inputs left out, e.g. {report.skipped[0]}" if report.skipped else "")
    )
    print(f"next: omnimask pretrain {args.recipe} --data {report.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from omnimask.evaluation import evaluate_run

    result = evaluate_run(
        Path(args.run), args.data, args.k, args.limit, args.protocol, args.overrides
    )
    print(json.dumps(result, indent=2))
    print(f"written: {Path(args.run) / 'eval.json'}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from omnimask.visualize import draw_health, visualize_run

    path = visualize_run(Path(args.run), args.out, args.num, args.seed)
    print(f"figure: {path}")
    curves = draw_health(Path(args.run), path.with_name("health.png"))
    if curves is not None:
        print(f"training curves and health monitors: {curves}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from omnimask.export import export_run

    path = export_run(Path(args.run), args.format, args.out)
    print(f"exported {args.format}: {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from omnimask.bench import bench_recipe

    recipe, config = build_config(args.recipe, args.preset, args.data, args.overrides)
    for record in bench_recipe(
        recipe, config, steps=args.steps, warmup=args.warmup, device=args.device
    ):
        print(json.dumps(record))
    return 0


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def protocol_list(text: str) -> list[str]:
    """Comma-separated protocol names; checked against the run's recipe once it is loaded
    (recipes add their own, e.g. segmentation)."""
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    if not chosen:
        raise argparse.ArgumentTypeError(
            f"{text!r}: name one or more protocols ({', '.join(PROTOCOLS)}...), separated by commas"
        )
    return chosen


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="omnimask", description="Masked-modeling self-supervised pretraining."
    )
    sub = main.add_subparsers(dest="command", required=True)

    plugins = sub.add_parser("plugins", help="list plugins, and why any failed to load")
    plugins.add_argument(
        "--check", action="store_true", help="import every recipe module and report failures"
    )
    plugins.set_defaults(func=cmd_plugins)

    recipes = sub.add_parser("recipes", help="list recipes, or --show one's config")
    recipes.add_argument("--show", metavar="RECIPE", help="print this recipe's config as YAML")
    recipes.add_argument("--preset", default="demo")
    recipes.set_defaults(func=cmd_recipes)

    def recipe_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument("recipe", help="recipe name, e.g. vision/spark")
        command.add_argument("--preset", default="demo", help="named config (demo, paper, ...)")
        command.add_argument("--data", help="data path (default: the plugin's embedded data)")
        command.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")

    pretrain = sub.add_parser("pretrain", help="pretrain an encoder (resumes an existing run dir)")
    recipe_arguments(pretrain)
    pretrain.add_argument("--run-dir", type=Path, help="default runs/<recipe>/<timestamp>")
    pretrain.set_defaults(func=cmd_pretrain)

    prepare = sub.add_parser(
        "prepare", help="build a recipe's data caches once, or write its data as shards (--out)"
    )
    recipe_arguments(prepare)
    prepare.add_argument(
        "--out",
        type=Path,
        help="also write the training set as shards (LitData) in this new folder, for "
        "`pretrain --data OUT` from a shared folder or, once uploaded, a bucket",
    )
    prepare.add_argument(
        "--chunk-bytes",
        default=DEFAULT_CHUNK_BYTES,
        help=f"size of one shard file (default {DEFAULT_CHUNK_BYTES})",
    )
    prepare.set_defaults(func=cmd_prepare)

    evaluate = sub.add_parser(
        "eval", help="linear probe, kNN or fine-tuning: the run's encoder vs random init"
    )
    evaluate.add_argument("run", help="run directory")
    evaluate.add_argument("--data", help="labelled data (default: the plugin's embedded set)")
    evaluate.add_argument("--k", type=int, default=20, help="neighbours for kNN")
    evaluate.add_argument(
        "--limit",
        type=positive_int,
        help="score at most this many samples of each split (seeded subset)",
    )
    evaluate.add_argument(
        "--protocol",
        type=protocol_list,
        default=["linear", "knn"],
        help="comma-separated, of linear, knn (frozen features: the default, linear,knn), "
        "finetune (end to end) and the recipe's own (medical/mambamim: segmentation_probe, "
        "segmentation_finetune)",
    )
    evaluate.add_argument(
        "overrides",
        nargs="*",
        metavar="SECTION.KEY=VALUE",
        help="evaluation settings: finetune.* and the recipe's own (e.g. segmentation.*)",
    )
    evaluate.set_defaults(func=cmd_eval)

    visualize = sub.add_parser("visualize", help="original | masked | reconstruction PNG")
    visualize.add_argument("run", help="run directory")
    visualize.add_argument("--out", type=Path, help="PNG path (default RUN/figures/...)")
    visualize.add_argument("--num", type=int, default=4, help="samples to draw")
    visualize.add_argument("--seed", type=int, default=0)
    visualize.set_defaults(func=cmd_visualize)

    export = sub.add_parser("export", help="export the encoder (safetensors, plugin formats)")
    export.add_argument("run", help="run directory")
    export.add_argument("--format", default="safetensors")
    export.add_argument("--out", type=Path, help="output folder (default RUN/exports/FORMAT)")
    export.set_defaults(func=cmd_export)

    bench = sub.add_parser("bench", help="step time, throughput, memory and FLOP/s of a recipe")
    recipe_arguments(bench)
    bench.add_argument("--steps", type=int, default=10)
    bench.add_argument("--warmup", type=int, default=3)
    bench.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bench.set_defaults(func=cmd_bench)
    return main


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, letting `key=value` overrides stand anywhere after the recipe (argparse alone
    stops collecting positionals at the first option)."""
    command_line = parser()
    args, extra = command_line.parse_known_args(argv)
    stray = [item for item in extra if "=" not in item or item.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        command_line.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("omnimask: interrupted; the newest checkpoint is kept for resuming", file=sys.stderr)
        return 130
    except Exception as error:
        if isinstance(error, USER_ERRORS) or isinstance(error, _user_errors()):
            print(f"omnimask: error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
