"""MAE's optional maskers: ColorMAE's filtered-noise masks and HPM's loss-guided masks, against
their formulas (SciPy's Gaussian filter, HPM's pairwise objective written out), their spatial
statistics, the teacher's EMA, and training: the loss predictor learns, a resumed run is exact,
and the conformance kit passes on both demo presets."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omnimask import Tokens
from omnimask.config import apply_overrides
from omnimask.engine import Engine
from omnimask.engine.checkpoint import list_checkpoints
from omnimask.engine.metrics import read_metrics
from omnimask.engine.optim import build_optimizer
from omnimask.masking import mask_count, mask_from_noise
from omnimask.plugins import get_recipe
from omnimask.seeding import sample_uniform
from omnimask.testing import CHECKS, Subject
from omnimask.visualize import sample_batch
from omnimask_vision.masking import NOISE_COLORS, ColorNoiseMasker, color_noise
from omnimask_vision.models.hpm import HardPatchMasker, HPMPrediction, relative_loss
from omnimask_vision.models.vit import HiddenPatchPixels
from scipy.ndimage import gaussian_filter

GRID = (14, 14)


@pytest.fixture(scope="module")
def mae_recipe():  # noqa: ANN201
    return get_recipe("vision/mae")


def grid_tokens(batch: int) -> Tokens:
    return Tokens(values=torch.zeros(batch, GRID[0] * GRID[1], 3), grid=GRID)


# ---------------------------------------------------------------- ColorMAE


@pytest.mark.parametrize("color", NOISE_COLORS)
def test_color_noise_equals_scipy_gaussian_filters(color: str) -> None:
    white = np.random.default_rng(0).uniform(-0.5, 0.5, size=(3, 40, 40))

    def blur(field: np.ndarray, sigma: float) -> np.ndarray:  # torch reflect = scipy mirror
        return np.stack([gaussian_filter(f, sigma, truncate=3.0, mode="mirror") for f in field])

    low, wide = blur(white, 1.0), blur(white, 2.5)
    expected = {"red": low, "blue": white - low, "green": low - wide, "purple": white - low + wide}
    ours = color_noise(torch.from_numpy(white), color, 1.0, 2.5).numpy()
    np.testing.assert_allclose(ours, expected[color], atol=1e-6)


@pytest.mark.parametrize("color", NOISE_COLORS)
def test_color_masks_hide_the_weakest_noise_and_the_same_count_per_row(color: str) -> None:
    masker = ColorNoiseMasker(0.75, color)
    tokens = grid_tokens(6)
    seeds = torch.arange(6, dtype=torch.int64) * 7919
    mask = masker.mask_from_seeds(tokens, seeds)
    count = mask_count(GRID[0] * GRID[1], 0.75)
    assert (mask.sum(1) == count).all()
    margin = masker.margin
    side = GRID[0] + 2 * margin
    white = (sample_uniform(seeds, side * side) - 0.5).view(6, side, side)
    noise = color_noise(white, color, masker.sigma, masker.outer_sigma)
    noise = noise[:, margin:-margin, margin:-margin].reshape(6, -1)
    for row in range(6):  # every hidden patch's noise is below every visible one's
        assert noise[row][mask[row]].max() < noise[row][~mask[row]].min()
    assert torch.equal(mask, masker.mask_from_seeds(tokens, seeds))
    assert not torch.equal(mask, masker.mask_from_seeds(tokens, seeds + 1))
    one_row = masker.mask_from_seeds(tokens.rows(slice(2, 3)), seeds[2:3])
    assert torch.equal(one_row[0], mask[2])  # a row depends on its own seed only


def neighbour_agreement(mask: torch.Tensor, lag: int) -> float:
    """How often two patches `lag` apart (rows and columns) are both hidden or both visible."""
    grid = mask.view(-1, *GRID)
    across = (grid[:, :, lag:] == grid[:, :, :-lag]).float().mean()
    down = (grid[:, lag:] == grid[:, :-lag]).float().mean()
    return float(across + down) / 2


def test_noise_colors_give_their_spatial_structure() -> None:
    """Against white noise's agreement `r^2 + (1 - r)^2`: red (low-pass) masks come in blobs,
    blue (high-pass) masks alternate, green (band-pass) masks form blobs of a few patches, so
    neighbours agree and patches about a half period apart disagree."""
    tokens, generator = grid_tokens(512), torch.Generator().manual_seed(0)
    masks = {c: ColorNoiseMasker(0.75, c)(tokens, generator) for c in NOISE_COLORS}
    white = 0.75**2 + 0.25**2
    assert neighbour_agreement(masks["red"], 1) > white + 0.1
    assert neighbour_agreement(masks["red"], 3) > white
    assert neighbour_agreement(masks["blue"], 1) < white - 0.02
    assert neighbour_agreement(masks["green"], 1) > white + 0.1
    assert neighbour_agreement(masks["green"], 3) < white - 0.02
    assert neighbour_agreement(masks["purple"], 1) < white - 0.01


def test_color_noise_config_errors() -> None:
    with pytest.raises(ValueError, match="noise color"):
        ColorNoiseMasker(0.75, "pink")
    with pytest.raises(ValueError, match="outer_sigma"):
        ColorNoiseMasker(0.75, "green", sigma=2.0, outer_sigma=1.0)


# ---------------------------------------------------------------- HPM


def test_relative_loss_is_hpms_pairwise_objective() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 7, generator=g, dtype=torch.float64)
    losses = torch.randint(0, 4, (3, 7), generator=g).double()  # with ties, which are skipped
    total, pairs = 0.0, 0
    for b in range(3):
        for i in range(7):
            for j in range(7):
                if losses[b, j] == losses[b, i]:
                    continue
                p = 1 / (1 + math.exp(-(scores[b, j] - scores[b, i]).item()))
                total -= math.log(p) if losses[b, j] > losses[b, i] else math.log(1 - p)
                pairs += 1
    assert relative_loss(scores, losses).item() == pytest.approx(total / pairs, rel=1e-12)


def test_hpm_reconstruction_term_is_maes_loss(mae_recipe) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(1)
    mask = mask_from_noise(torch.rand(4, 16, generator=g), 12)
    target = torch.randn(4, 16, 48, generator=g)
    pixels = torch.randn(4, 12, 48, generator=g)
    model = mae_recipe.build_model(mae_recipe.config("demo_hpm"))
    losses = model.target.loss(HPMPrediction(pixels, torch.zeros(4, 12)), target, mask)
    mae = HiddenPatchPixels(per_patch=True).loss(pixels, target, mask)["loss"]
    torch.testing.assert_close(losses["reconstruction"], mae)
    assert losses["loss_prediction"].item() == pytest.approx(math.log(2))  # equal scores
    torch.testing.assert_close(losses["loss"], mae + math.log(2))


@pytest.fixture(scope="module")
def hpm_model(mae_recipe):  # noqa: ANN001, ANN201
    torch.manual_seed(0)
    return mae_recipe.build_model(mae_recipe.config("demo_hpm"))


@pytest.fixture(scope="module")
def hpm_batch(mae_recipe):  # noqa: ANN001, ANN201
    config = mae_recipe.config("demo_hpm")
    return sample_batch(mae_recipe, config, mae_recipe.build_dataset(config), 6)


def test_hard_patches_are_the_teachers_top_scores_with_a_growing_share(
    hpm_model, hpm_batch
) -> None:  # noqa: ANN001
    model = copy.deepcopy(hpm_model)
    masker: HardPatchMasker = model.masker
    tokens = model.tokenizer(hpm_batch)
    seeds = torch.arange(6, dtype=torch.int64) + 100
    count = mask_count(tokens.num_tokens, masker.current_ratio)
    noise = sample_uniform(seeds, tokens.num_tokens)

    masker.progress = 0.0  # start of training: MAE's random mask
    assert torch.equal(masker.mask_from_seeds(tokens, seeds), mask_from_noise(noise, count))

    scores = masker.teacher.scores(tokens)
    for progress in (0.5, 1.0):
        masker.progress = progress
        hard = int(count * 0.5 * progress)
        assert hard == masker.hard_count(count) > 0
        mask = masker.mask_from_seeds(tokens, seeds)
        assert (mask.sum(1) == count).all()
        for row in range(6):
            hardest = scores[row].topk(hard).indices
            assert mask[row, hardest].all()
            others = torch.ones(tokens.num_tokens, dtype=torch.bool)
            others[hardest] = False
            # the rest: the lowest-noise patches among the others
            rest = noise[row].masked_fill(~others, math.inf).argsort()[: count - hard]
            expected = torch.zeros(tokens.num_tokens, dtype=torch.bool)
            expected[hardest], expected[rest] = True, True
            assert torch.equal(mask[row], expected)


def test_teacher_follows_the_student_by_ema_and_gets_no_gradients(hpm_model) -> None:  # noqa: ANN001
    model = copy.deepcopy(hpm_model).train()
    masker: HardPatchMasker = model.masker
    assert masker.decay(0.0) == pytest.approx(0.9)
    assert masker.decay(masker.ema_warmup / 2) == pytest.approx(0.945)
    assert masker.decay(0.9) == pytest.approx(0.99)
    teacher = next(masker.teacher.loss_predictor.parameters())
    student = next(model.decoder.loss_predictor.parameters())
    with torch.no_grad():
        student.add_(1.0)
    before = teacher.detach().clone()
    masker.set_progress(0.9)
    torch.testing.assert_close(teacher, 0.99 * before + 0.01 * student.detach())
    model.eval()
    masker.set_progress(1.0)  # not training: the teacher stays
    torch.testing.assert_close(teacher, 0.99 * before + 0.01 * student.detach())
    assert not masker.teacher.training
    assert not any(p.requires_grad for p in masker.teacher.parameters())
    optimizer = build_optimizer(model, model_config_train())
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in masker.teacher.parameters()}


def model_config_train():  # noqa: ANN201
    return get_recipe("vision/mae").config("demo_hpm").train


def test_loss_predictor_learns_to_rank_patches(hpm_model, hpm_batch) -> None:  # noqa: ANN001
    model = copy.deepcopy(hpm_model).train()
    train = model_config_train()
    train.lr, train.lr_scale_batch = 1e-3, 0
    optimizer = build_optimizer(model, train)
    ranking = []
    for _ in range(40):
        losses = model(hpm_batch, torch.Generator().manual_seed(5))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        ranking.append(losses["loss_prediction"].item())
    assert ranking[0] == pytest.approx(math.log(2), abs=0.05)  # untrained: a coin flip
    assert sum(ranking[-5:]) / 5 < math.log(2) - 0.06


def train_hpm(recipe, run_dir: Path) -> list[float]:  # noqa: ANN001
    overrides = [
        "train.steps=8",
        "train.batch_size=4",
        "train.checkpoint_every=4",
        "train.log_every=1",
    ]
    Engine(recipe, apply_overrides(recipe.config("demo_hpm"), overrides), run_dir).run()
    metrics = read_metrics(run_dir / "metrics.jsonl")
    return [metrics[step]["loss"] for step in sorted(metrics)]


def test_hpm_run_resumed_from_a_checkpoint_matches_the_uninterrupted_run(
    mae_recipe, tmp_path
) -> None:  # noqa: ANN001
    """The teacher (in the state dict) and its EMA steps survive a resume exactly."""
    reference = train_hpm(mae_recipe, tmp_path / "reference")
    run = tmp_path / "run"
    train_hpm(mae_recipe, run)
    for step, path in list_checkpoints(run / "checkpoints"):
        if step > 4:
            shutil.rmtree(path)
    assert train_hpm(mae_recipe, run) == reference
    newest = lambda d: list_checkpoints(d / "checkpoints")[0][1] / "model.safetensors"  # noqa: E731
    assert newest(run).read_bytes() == newest(tmp_path / "reference").read_bytes()


def test_unknown_mask_kind_is_refused(mae_recipe) -> None:  # noqa: ANN001
    config = mae_recipe.config("demo")
    config.mask.kind = "hardest"
    with pytest.raises(ValueError, match="mask.kind"):
        mae_recipe.build_model(config)


@pytest.mark.parametrize("preset", ["demo_hpm", "demo_color_noise"])
@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
def test_conformance_of_the_masker_demos(mae_recipe, preset, check) -> None:  # noqa: ANN001
    config = mae_recipe.config(preset)
    config.train.batch_size = 4
    batch = sample_batch(mae_recipe, config, mae_recipe.build_dataset(config), 4)
    check(Subject("vision/mae", mae_recipe, config, batch))
