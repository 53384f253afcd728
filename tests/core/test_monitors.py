"""Health monitors: the figures against analytic cases, and the engine logging them and warning
once on a deliberately collapsed run (a learning rate that kills every ReLU of the encoder)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omnimask import CodeIds
from omnimask.config import apply_overrides
from omnimask.engine import Engine
from omnimask.engine.metrics import read_metrics
from omnimask.monitors import (
    code_health,
    code_perplexity,
    codes_used,
    embedding_health,
    normalized_embedding_std,
    rankme,
)
from omnimask.visualize import draw_health
from PIL import Image
from toy_recipe import ToyRecipe


def test_rankme_of_orthogonal_equal_norm_embeddings_is_their_count() -> None:
    embeddings = 3.0 * torch.eye(8, 32)  # 8 orthogonal rows: 8 equal singular values
    assert rankme(embeddings) == pytest.approx(8.0, rel=1e-5)


def test_rankme_follows_the_entropy_of_the_singular_values() -> None:
    u, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    s = torch.tensor([4.0, 2.0, 1.0, 1.0] + [0.0] * 6, dtype=torch.float64)
    embeddings = u[:, :10] @ torch.diag(s) @ v.T
    p = s[:4] / s.sum()
    assert rankme(embeddings) == pytest.approx(math.exp(-(p * p.log()).sum()), rel=1e-5)


def test_identical_embeddings_have_rank_one_and_zero_spread() -> None:
    embeddings = torch.randn(1, 24).expand(50, 24)
    assert rankme(embeddings) == pytest.approx(1.0, abs=1e-4)
    assert normalized_embedding_std(embeddings) == pytest.approx(0.0, abs=1e-12)
    assert embedding_health(embeddings).collapse


def test_a_common_component_is_not_collapse_but_a_vanishing_spread_is() -> None:
    """Pooled embeddings that share a large offset (as a MambaMIM encoder's do, random or
    trained) have a small normalised std from the start: only its fall says collapse."""
    generator = torch.Generator().manual_seed(0)
    offset = 50.0 * torch.ones(1, 32)
    start = offset + torch.randn(64, 32, generator=generator)
    start_std = normalized_embedding_std(start)
    assert start_std < 0.05 / math.sqrt(32)
    assert not embedding_health(start, start_std).collapse
    shrunk = offset + 0.05 * torch.randn(64, 32, generator=generator)
    report = embedding_health(shrunk, start_std)
    assert report.collapse and "at the start" in report.collapse[0]


def test_non_finite_rows_are_left_out() -> None:
    embeddings = torch.eye(4, 8)
    with_nan = torch.cat([embeddings, torch.full((2, 8), float("nan"))])
    assert embedding_health(with_nan).figures == embedding_health(embeddings).figures
    assert embedding_health(torch.full((3, 8), float("inf"))).figures == {}


def test_normalized_std_of_isotropic_embeddings_is_one_over_sqrt_dim() -> None:
    embeddings = torch.randn(20000, 64, generator=torch.Generator().manual_seed(0))
    assert normalized_embedding_std(embeddings) == pytest.approx(1 / 8, rel=0.02)
    assert not embedding_health(embeddings).collapse


def test_code_perplexity_and_share_used() -> None:
    uniform = torch.arange(64).repeat(10)
    assert code_perplexity(uniform, 64) == pytest.approx(64.0)
    assert codes_used(uniform, 64) == 1.0
    one_code = torch.full((640,), 7)
    assert code_perplexity(one_code, 64) == pytest.approx(1.0)
    assert codes_used(one_code, 64) == 1 / 64
    half = torch.tensor([0, 1] * 50)  # two codes used equally: worth two
    assert code_perplexity(half, 8) == pytest.approx(2.0)


def test_code_health_warns_on_a_collapsed_codebook_only() -> None:
    healthy = code_health("dvae", CodeIds(torch.randint(0, 64, (2048,)), 64))
    assert not healthy.collapse
    assert healthy.figures["health/dvae_codes_used"] > 0.9
    collapsed = code_health("dvae", CodeIds(torch.tensor([3] * 2000 + [5] * 48), 64))
    assert collapsed.collapse and "dvae codebook" in collapsed.collapse[0]


def _toy_run(run_dir: Path, *overrides: str) -> dict[int, dict]:
    recipe = ToyRecipe()
    base = ["train.steps=20", "train.log_every=2", "train.monitor_every=2", "model.dropout=0"]
    Engine(recipe, apply_overrides(recipe.config("demo"), base + list(overrides)), run_dir).run()
    return read_metrics(run_dir / "metrics.jsonl")


def _collapse_events(run_dir: Path) -> list[str]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [line for line in lines if '"event": "collapse"' in line]


def test_engine_logs_health_figures_and_stays_quiet_on_a_healthy_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="omnimask"):
        metrics = _toy_run(tmp_path / "run")
    logged = [m for m in metrics.values() if "health/rankme" in m]
    assert len(logged) == 10  # every second step
    first = logged[0]  # the figures before training come with the first check
    assert first["health/embedding_std_at_start"] > 0.05 and "health/rankme_at_start" in first
    assert all("health/rankme_at_start" not in m for m in logged[1:])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert all("step" in json.loads(line) and "event" not in line for line in lines)
    assert all(m["health/rankme"] > 2 and m["health/embedding_std"] > 0.05 for m in logged)
    assert not _collapse_events(tmp_path / "run")
    assert "collapsed" not in caplog.text


def test_engine_warns_once_when_a_learning_rate_kills_the_encoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="omnimask"):
        metrics = _toy_run(tmp_path / "run", "train.lr=30", "model.activation=relu")
    # Most ReLUs are dead by the end (all of them, for some sample orders): from about 0.1.
    assert metrics[19]["health/embedding_std"] < 1e-2
    events = _collapse_events(tmp_path / "run")
    assert len(events) == 1 and "embeddings look collapsed" in events[0]
    warnings = [r for r in caplog.records if "look collapsed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("step ")

    figure = draw_health(tmp_path / "run", tmp_path / "health.png")
    assert figure is not None
    with Image.open(figure) as image:  # loss, RankMe and std panels side by side
        assert image.format == "PNG" and image.width > 2.5 * image.height
        assert len(np.unique(np.asarray(image.convert("L")))) > 10
    assert draw_health(tmp_path / "no-run", tmp_path / "none.png") is None


def test_monitoring_does_not_change_the_run(tmp_path: Path) -> None:
    """The probe pass draws no random numbers and leaves the model in training mode: losses
    with dropout on are the same with the monitor every step and with it off."""
    watched = _toy_run(tmp_path / "watched", "model.dropout=0.1", "train.monitor_every=1")
    plain = _toy_run(tmp_path / "plain", "model.dropout=0.1", "train.monitor_every=0")
    assert [watched[s]["loss"] for s in sorted(watched)] == [
        plain[s]["loss"] for s in sorted(plain)
    ]
    assert all("health/rankme" not in m for m in plain.values())


def test_a_resumed_run_keeps_the_reference_of_its_start(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _toy_run(run)
    state = torch.load(next((run / "checkpoints").iterdir()) / "state.pt", weights_only=True)
    assert state["health_start_std"] > 0
    metrics = _toy_run(run, "train.steps=30")  # resumed from step 20
    assert sum("health/rankme_at_start" in m for m in metrics.values()) == 1
