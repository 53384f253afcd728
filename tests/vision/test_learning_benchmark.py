"""`benchmarks/learning.py` (does pretraining help?) end to end on a tiny run, and the `proof`
presets it covers. No accuracy is asserted: the figures are the benchmark's, not the tests'."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from omnimask.plugins import get_recipe

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "learning.py"


def load_benchmark():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("learning_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_prints_one_json_line_per_figure_and_a_summary(tmp_path: Path, capsys) -> None:
    benchmark = load_benchmark()
    argv = ["--recipe", "vision/spark", "--preset", "demo", "--seeds", "0", "1"]
    argv += ["--limit", "30", "--keep", str(tmp_path), "--set", "train.steps=2"]
    argv += ["train.batch_size=4"]
    assert benchmark.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    figures = [line for line in lines if not line.get("summary")]
    summaries = [line for line in lines if line.get("summary")]
    assert [(f["seed"], f["protocol"]) for f in figures] == [
        (0, "linear"), (0, "knn"), (1, "linear"), (1, "knn"),
    ]  # fmt: skip
    for figure in figures:
        assert figure["recipe"] == "vision/spark" and figure["steps"] == 2
        assert 0.0 <= figure["pretrained"] <= 1.0 and 0.0 <= figure["random_init"] <= 1.0
        assert figure["gap"] == pytest.approx(
            figure["pretrained"] - figure["random_init"], abs=2e-4
        )
        assert figure["minutes"] >= 0
    assert sorted(s["protocol"] for s in summaries) == ["knn", "linear"]
    assert all(s["seeds"] == [0, 1] and isinstance(s["target_met"], bool) for s in summaries)
    assert (tmp_path / "vision_spark" / "seed1" / "config.yaml").is_file()


def test_steps_curve_scores_each_listed_checkpoint(tmp_path: Path, capsys) -> None:
    benchmark = load_benchmark()
    argv = ["--recipe", "vision/mae", "--preset", "demo", "--seeds", "0", "--limit", "30"]
    argv += ["--protocols", "linear", "--steps-curve", "0", "1", "2", "--keep", str(tmp_path)]
    argv += ["--set", "train.batch_size=4"]
    assert benchmark.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    figures = [line for line in lines if not line.get("summary")]
    assert [(f["steps"], f["curve_of_steps"]) for f in figures] == [(1, 2), (2, 2)]


def test_target_rule() -> None:
    target_met = load_benchmark().target_met
    assert target_met(0.80, 0.70) and not target_met(0.79, 0.70)
    assert target_met(0.95, 0.90) and not target_met(0.94, 0.90)


@pytest.mark.parametrize("name", load_benchmark().COVERED_RECIPES)
def test_covered_recipes_have_a_proof_preset_that_builds(name: str) -> None:
    recipe = get_recipe(name)
    config = recipe.config("proof")
    assert config.data.path is None  # the embedded data: the benchmark needs no download
    model = recipe.build_model(config)
    assert sum(p.numel() for p in model.parameters()) > 0
    doc = recipe.presets["proof"].__doc__
    assert doc and "steps" in doc
