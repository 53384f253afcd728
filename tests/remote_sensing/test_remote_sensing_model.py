"""CROMA's parts against formulas and references: 2D-ALiBi, fused attention, InfoNCE, the
shared mask, unimodal features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omnimask.gather import gather_tokens, mask_to_indices
from omnimask_remote_sensing.export import torchgeo_croma
from omnimask_remote_sensing.models.alibi import alibi_2d, alibi_slopes
from omnimask_remote_sensing.models.contrastive import ContrastiveHead, symmetric_infonce
from omnimask_remote_sensing.models.layers import Attention, CrossAttention
from omnimask_remote_sensing.recipes import CromaRecipe


@pytest.fixture(scope="module")
def model_and_batch():
    recipe = CromaRecipe()
    config = recipe.config("demo")
    torch.manual_seed(0)
    model = recipe.build_model(config).eval()
    generator = torch.Generator().manual_seed(1)
    batch = {
        "s1": torch.randn(4, 2, 32, 32, generator=generator),
        "s2": torch.randn(4, 12, 32, 32, generator=generator),
        "sample_id": torch.arange(4),
    }
    return model, batch


def test_alibi_bias_equals_its_formula_on_a_non_square_grid() -> None:
    heads, rows, cols = 8, 3, 5
    positions = torch.tensor([(r, c) for r in range(rows) for c in range(cols)], dtype=torch.float)
    bias = alibi_2d(positions[None], positions[None], alibi_slopes(heads))
    assert bias.shape == (1, heads, rows * cols, rows * cols)
    for h in range(heads):
        slope = 2.0 ** (-8.0 * (h + 1) / heads)
        for i, (ri, ci) in enumerate(positions.tolist()):
            for j, (rj, cj) in enumerate(positions.tolist()):
                expected = -slope * math.sqrt((ri - rj) ** 2 + (ci - cj) ** 2)
                assert bias[0, h, i, j].item() == pytest.approx(expected, abs=1e-6)


def test_alibi_matches_torchgeo_and_the_alibi_rule_for_other_head_counts() -> None:
    side = 6
    positions = torch.tensor([(r, c) for r in range(side) for c in range(side)], dtype=torch.float)
    ours = alibi_2d(positions[None], positions[None], alibi_slopes(16))
    torch.testing.assert_close(ours, torchgeo_croma().get_2dalibi(16, side * side))
    # ALiBi's rule for 6 heads: the 4-head slopes, then every other 8-head slope.
    expected = [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected))


def test_cross_alibi_uses_query_and_key_positions() -> None:
    queries = torch.tensor([[[0.0, 0.0], [2.0, 1.0]]])
    keys = torch.tensor([[[3.0, 4.0]]])
    bias = alibi_2d(queries, keys, torch.tensor([0.5]))
    torch.testing.assert_close(bias, torch.tensor([[[[-2.5], [-0.5 * math.sqrt(10.0)]]]]))


@pytest.mark.parametrize("cross", [False, True])
def test_fused_attention_with_bias_equals_torchgeo_explicit_softmax(cross: bool) -> None:
    croma = torchgeo_croma()
    torch.manual_seed(0)
    ours = CrossAttention(32, 16) if cross else Attention(32, 16)
    reference = croma.CrossAttention(32, 16) if cross else croma.Attention(32, 16)
    reference.load_state_dict(ours.state_dict())
    x, context = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    bias = torchgeo_croma().get_2dalibi(16, 9).expand(2, -1, -1, -1)
    with torch.no_grad():
        got = ours(x, context, bias) if cross else ours(x, bias)
        want = reference(x, context, bias) if cross else reference(x, bias)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_infonce_equals_a_loop_reference_on_a_hand_made_batch() -> None:
    optical = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    radar = torch.tensor([[0.9, 0.1, 0.0], [0.0, 1.0, 1.0], [-1.0, 1.0, 0.5]])
    scale = torch.tensor(1 / 0.07)
    o = [row / row.norm() for row in optical]
    r = [row / row.norm() for row in radar]
    total = 0.0
    for i in range(3):  # optical i against every radar j, and radar i against every optical j
        logits_o = [float(scale * o[i] @ r[j]) for j in range(3)]
        logits_r = [float(scale * r[i] @ o[j]) for j in range(3)]
        total += -logits_o[i] + math.log(sum(math.exp(v) for v in logits_o))
        total += -logits_r[i] + math.log(sum(math.exp(v) for v in logits_r))
    expected = total / 6
    assert symmetric_infonce(optical, radar, scale).item() == pytest.approx(expected, rel=1e-5)
    similarity = scale * F.normalize(optical, dim=-1) @ F.normalize(radar, dim=-1).t()
    labels = torch.arange(3)
    by_library = (F.cross_entropy(similarity, labels) + F.cross_entropy(similarity.t(), labels)) / 2
    assert symmetric_infonce(optical, radar, scale).item() == pytest.approx(by_library.item())


def test_contrastive_head_projects_then_applies_infonce() -> None:
    head = ContrastiveHead(3)
    optical, radar = torch.randn(5, 3), torch.randn(5, 3)
    with torch.no_grad():
        expected = symmetric_infonce(
            head.optical_proj(optical), head.radar_proj(radar), torch.tensor(1 / 0.07)
        )
        assert head(optical, radar).item() == pytest.approx(expected.item(), rel=1e-5)


def test_radar_and_optical_always_see_the_same_patches(model_and_batch) -> None:
    model, batch = model_and_batch
    seen = {}

    def record(name):
        return lambda module, inputs: seen.__setitem__(name, inputs[0].detach())

    hooks = [
        model.encoder.s2_encoder.linear_input.register_forward_pre_hook(record("optical")),
        model.encoder.s1_encoder.linear_input.register_forward_pre_hook(record("radar")),
    ]
    try:
        for seed in range(5):
            output = model.predict(batch, torch.Generator().manual_seed(seed))
            visible, _ = mask_to_indices(output.mask)
            tokens = output.tokens
            assert torch.equal(seen["optical"], gather_tokens(tokens.extras["optical"], visible))
            assert torch.equal(seen["radar"], gather_tokens(tokens.extras["radar"], visible))
            assert output.mask.float().mean().item() == pytest.approx(0.75)
    finally:
        for hook in hooks:
            hook.remove()


def test_reconstruction_loss_counts_hidden_patches_of_both_sensors(model_and_batch) -> None:
    model, batch = model_and_batch
    output = model.predict(batch, torch.Generator().manual_seed(3))
    hidden = output.mask
    for sensor in ("optical", "radar"):
        error = (getattr(output.prediction, sensor) - getattr(output.target, sensor)).pow(2)
        expected = error.mean(-1)[hidden].mean()
        torch.testing.assert_close(output.losses[f"reconstruction_{sensor}"], expected)
    total = output.losses["contrastive"] + sum(
        output.losses[f"reconstruction_{s}"] for s in ("optical", "radar")
    )
    torch.testing.assert_close(output.losses["loss"], total)


def test_unimodal_features_match_the_joint_pass(model_and_batch) -> None:
    model, batch = model_and_batch
    with torch.no_grad():
        both = model.encoder.forward_features(model.tokenizer(batch))
        optical = model.encoder.forward_features(model.tokenizer({"s2": batch["s2"]}))
        radar = model.encoder.forward_features(model.tokenizer({"s1": batch["s1"]}))
    assert optical.joint is None and optical.radar is None
    assert radar.joint is None and radar.optical is None
    torch.testing.assert_close(optical.optical, both.optical)
    torch.testing.assert_close(radar.radar_pooled, both.radar_pooled)
    assert both.joint.shape == (4, 16, 64)


def test_two_processes_with_batch_b_optimise_the_loss_of_one_process_with_batch_2b(
    tmp_path,
) -> None:
    import socket

    import torch.multiprocessing as mp
    from remote_sensing_ddp_worker import run

    generator = torch.Generator().manual_seed(0)
    optical, radar = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = str(tmp_path / "rank")
    # forkserver: the children fork from a fresh server (torch imported once, not once per child
    # as with spawn), not from this process, whose autograd threads (an in-process training run
    # of an earlier test) a forked child cannot use
    mp.start_processes(
        run, args=(2, port, optical, radar, out), nprocs=2, start_method="forkserver"
    )
    ranks = [torch.load(f"{out}.{rank}", weights_only=True) for rank in range(2)]

    whole_optical, whole_radar = (
        optical.clone().requires_grad_(True),
        radar.clone().requires_grad_(True),
    )
    single = symmetric_infonce(whole_optical, whole_radar, torch.tensor(10.0))
    single.backward()
    # DDP averages gradients over the two processes, hence the halves.
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, single.detach())
    gathered = torch.cat([r["optical_grad"] for r in ranks]) / 2
    torch.testing.assert_close(gathered, whole_optical.grad)
    torch.testing.assert_close(torch.cat([r["radar_grad"] for r in ranks]) / 2, whole_radar.grad)


def nodata_batch(batch: dict) -> dict:
    """`batch` with `valid`: chip 0 has no data in its left 12 columns (one column of 8 px
    patches wholly, the next half), chip 1 none in one corner pixel."""
    valid = torch.ones(4, 32, 32, dtype=torch.bool)
    valid[0, :, :12] = False
    valid[1, 0, 0] = False
    return {**batch, "valid": valid}


def test_values_under_nodata_change_no_loss(model_and_batch) -> None:
    model, batch = model_and_batch
    batch = nodata_batch(batch)
    hide = ~batch["valid"].unsqueeze(1)
    noise = torch.Generator().manual_seed(9)
    other = {
        **batch,
        "s1": batch["s1"].masked_fill(hide, -9999.0),
        "s2": torch.where(hide, 1e4 * torch.rand(batch["s2"].shape, generator=noise), batch["s2"]),
    }
    for seed in range(3):
        with torch.no_grad():
            losses = model(batch, torch.Generator().manual_seed(seed))
            again = model(other, torch.Generator().manual_seed(seed))
        for name in ("loss", "contrastive", "reconstruction_optical", "reconstruction_radar"):
            assert torch.equal(losses[name], again[name]), name


def test_reconstruction_averages_valid_pixels_and_skips_patches_without_any(
    model_and_batch,
) -> None:
    model, batch = model_and_batch
    batch = nodata_batch(batch)
    with torch.no_grad():
        output = model.predict(batch, torch.Generator().manual_seed(3))
    pixels = output.tokens.extras["valid"]  # [B, N, 64]
    assert pixels.shape == (4, 16, 64) and not pixels[0, 0].any()
    assert not pixels[0, 1, :4].any() and pixels[0, 1, 4:8].all()  # row 0: columns 8-11, 12-15
    hidden = output.mask & pixels.any(-1)
    assert (output.mask & ~pixels.any(-1)).any()  # some hidden patch holds no data at all
    target = output.target
    for b, n in hidden.nonzero().tolist():  # each scored patch: standardised over valid pixels
        keep = pixels[b, n]
        joint = torch.cat(
            [target.optical[b, n].view(64, 12)[keep], target.radar[b, n].view(64, 2)[keep]], 1
        )
        assert joint.mean().abs().item() < 1e-4 and joint.std().item() == pytest.approx(1, 1e-3)
    for sensor, bands in (("optical", 12), ("radar", 2)):
        error = (getattr(output.prediction, sensor) - getattr(target, sensor)).pow(2)
        per_patch = [
            error[b, n].view(64, bands)[pixels[b, n]].mean() for b, n in hidden.nonzero().tolist()
        ]
        expected = torch.stack(per_patch).mean()
        torch.testing.assert_close(output.losses[f"reconstruction_{sensor}"], expected)


def test_an_all_valid_mask_keeps_the_unmasked_loss(model_and_batch) -> None:
    model, batch = model_and_batch
    every = {**batch, "valid": torch.ones(4, 32, 32, dtype=torch.bool)}
    with torch.no_grad():
        plain = model(batch, torch.Generator().manual_seed(4))
        masked = model(every, torch.Generator().manual_seed(4))
    for name in ("loss", "reconstruction_optical", "reconstruction_radar"):
        torch.testing.assert_close(masked[name], plain[name])
