"""Point-BERT's dVAE (issue #17): its KL term is Point-BERT's (on each cloud's mean code
distribution), `code_ids` reports its argmax codes, and after a short fit its codes carry the
patches' shapes (decoding them shuffled across patches reconstructs worse)."""

import math

import pytest
import torch
import torch.nn.functional as F
from omnimask import CodeIds
from omnimask.plugins import get_recipe
from omnimask.visualize import sample_batch
from omnimask_pointcloud.geometry import chamfer_distance
from omnimask_pointcloud.models.dvae import mean_code_kl


def test_pointcloud_dvae_kl_is_point_berts_by_hand() -> None:
    """KL(uniform || q̄_b), q̄_b the softmax averaged over cloud b's patches, mean over clouds:
    written out element by element on 2 clouds x 3 patches x 4 codes."""
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)) * 2
    expected = 0.0
    for b in range(2):
        for n in range(4):
            mean_q = 0.0
            for g in range(3):
                row = [math.exp(x) for x in logits[b, g].tolist()]
                mean_q += row[n] / sum(row) / 3
            expected += 0.25 * (math.log(0.25) - math.log(mean_q)) / 2
    assert mean_code_kl(logits).item() == pytest.approx(expected, rel=1e-5)
    # and Point-BERT's own expression (models/dvae.py, get_loss)
    log_mean = torch.log(F.softmax(logits, dim=-1).mean(dim=1))
    log_uniform = torch.full_like(log_mean, math.log(0.25))
    reference = F.kl_div(log_mean, log_uniform, None, None, "batchmean", log_target=True)
    torch.testing.assert_close(mean_code_kl(logits), reference)


def test_pointcloud_dvae_kl_lets_each_patch_be_confident() -> None:
    """Confident patches spread over the codes cost nothing; all patches on one code cost a lot
    (the per-patch KL it replaces charged the first case log V per patch)."""
    spread = torch.eye(4).mul(30).unsqueeze(0)  # 4 patches, each sure of its own code
    same = torch.zeros(1, 4, 4)
    same[..., 0] = 30  # 4 patches, all sure of code 0
    assert mean_code_kl(spread).item() == pytest.approx(0.0, abs=1e-6)
    assert mean_code_kl(same).item() > 10


@pytest.fixture(scope="module")
def fitted() -> tuple:
    """The demo dVAE fitted for a few dozen steps on one fixed batch."""
    recipe = get_recipe("pointcloud/point_bert_dvae")
    config = recipe.config("demo")
    config.train.steps = 120
    config.loss.kl_delay_steps, config.loss.kl_ramp_steps, config.loss.temperature_steps = (
        10,
        50,
        60,
    )
    torch.manual_seed(0)
    model = recipe.build_model(config)
    dataset = recipe.build_eval_datasets(config)[0]
    batch = sample_batch(recipe, config, dataset, 8)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(config.train.steps):
        model.quantizer.set_progress(step / config.train.steps)
        model.target.set_progress(step / config.train.steps)
        loss = model(batch, torch.Generator().manual_seed(step))["loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval(), batch


def test_pointcloud_dvae_code_ids_are_the_argmax_codes(fitted: tuple) -> None:
    model, batch = fitted
    reported = model.code_ids(batch)
    assert set(reported) == {"dvae"}
    codes = reported["dvae"]
    assert isinstance(codes, CodeIds) and codes.vocab_size == 256
    tokens = model.tokenizer(batch)
    with torch.no_grad():
        logits = model.encoder(tokens, torch.zeros(tokens.positions.shape[:2], dtype=torch.bool))
    assert torch.equal(codes.ids, logits.argmax(-1))
    assert codes.ids.shape == tokens.positions.shape[:2]
    assert torch.equal(codes.ids, model.predict(batch).prediction.logits.argmax(-1))


def test_pointcloud_dvae_demo_codes_split_patches_finer_than_their_facing(fitted: tuple) -> None:
    """The demo vocabulary was 64 codes, about one per direction a patch can face, so stage 2's
    targets said little beyond the patch centre; the 256 patches of one batch now fall into
    more than 64 distinct codes."""
    model, batch = fitted
    codes = model.code_ids(batch)["dvae"].ids
    assert codes.numel() == 256 and len(codes.unique()) > 64


def test_pointcloud_dvae_real_codes_beat_shuffled_codes(fitted: tuple) -> None:
    model, batch = fitted
    tokens = model.tokenizer(batch)
    truth = tokens.extras["neighbourhood"]
    codes = model.code_ids(batch)["dvae"].ids
    assert len(codes.unique()) > 4  # several codes in use, or shuffling would change nothing

    def chamfer(ids: torch.Tensor) -> float:
        fine = model.decode(ids, tokens)
        return chamfer_distance(fine.flatten(0, 1), truth.flatten(0, 1), "l1").item()

    real = chamfer(codes)
    generator = torch.Generator().manual_seed(0)
    shuffled = [
        chamfer(codes.flatten()[torch.randperm(codes.numel(), generator=generator)].view_as(codes))
        for _ in range(3)
    ]
    assert real < min(shuffled), (real, shuffled)
