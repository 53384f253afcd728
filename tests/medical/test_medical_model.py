"""MambaMIM's model: one hidden region at every stage, no leak from masked voxels, TOKI."""

from __future__ import annotations

import torch
from omnimask import Tokens
from omnimask.masking import RandomMasker
from omnimask_medical.config import mambamim_demo
from omnimask_medical.models.toki import TokenInterpolation
from omnimask_medical.recipes import MambaMIMRecipe


def demo_model_and_batch(seed: int = 0):  # noqa: ANN201
    torch.manual_seed(seed)
    config = mambamim_demo()
    model = MambaMIMRecipe().build_model(config)
    volume = torch.rand(2, 1, config.data.crop, config.data.crop, config.data.crop)
    return model, {"volume": volume}


def draw(model, batch, seed: int = 0):  # noqa: ANN001, ANN201
    tokens = model.tokenizer(batch)
    return tokens, model.masker(tokens, torch.Generator().manual_seed(seed))


def test_every_stage_hides_the_same_region() -> None:
    model, batch = demo_model_and_batch()
    tokens, mask = draw(model, batch)
    features = model.encoder(tokens, mask)
    coarse_hidden = mask.view(2, *tokens.grid)
    for feature in features:
        factor = feature.shape[-1] // tokens.grid[-1]
        hidden = coarse_hidden
        for axis in (1, 2, 3):
            hidden = hidden.repeat_interleave(factor, dim=axis)
        site_norm = feature.abs().sum(1)
        assert (site_norm[hidden] == 0).all()  # masked sites empty at every stage
        assert (site_norm[~hidden] > 0).float().mean() > 0.99  # visible sites carry features


def test_visible_features_do_not_depend_on_masked_voxels() -> None:
    model, batch = demo_model_and_batch()
    tokens, mask = draw(model, batch)
    volume = batch["volume"].clone().requires_grad_()
    tokens.extras["volume"] = volume
    features = model.encoder(tokens, mask)
    cell = model.tokenizer.cell
    hidden_voxels = mask.view(2, 1, *tokens.grid)
    for axis in (2, 3, 4):
        hidden_voxels = hidden_voxels.repeat_interleave(cell, dim=axis)
    for feature in features:
        (grad,) = torch.autograd.grad(feature.square().sum(), volume, retain_graph=True)
        assert grad[hidden_voxels].abs().max() == 0
        assert grad[~hidden_voxels].abs().max() > 0
    # Arbitrary content in the masked voxels changes nothing at all.
    scrambled = torch.where(hidden_voxels, torch.randn_like(volume) * 100, volume).detach()
    tokens.extras["volume"] = scrambled
    for before, after in zip(features, model.encoder(tokens, mask)):
        torch.testing.assert_close(before, after)


def test_loss_is_on_masked_cells_only() -> None:
    model, batch = demo_model_and_batch()
    output = model.predict(batch, torch.Generator().manual_seed(3))
    prediction = output.prediction.detach().requires_grad_()
    loss = model.target.loss(prediction, output.target, output.mask)["loss"]
    (grad,) = torch.autograd.grad(loss, prediction)
    assert grad[~output.mask].abs().max() == 0 and grad[output.mask].abs().max() > 0
    expected = (prediction - output.target)[output.mask].pow(2).mean()
    torch.testing.assert_close(loss, expected)


def toki_loop(tokens: torch.Tensor, mask: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """TOKI written position by position, as its docstring states it."""
    out = tokens.clone()
    for b in range(tokens.shape[0]):
        visible = (~mask[b]).nonzero().flatten().tolist()
        for t in range(tokens.shape[1]):
            if not mask[b, t]:
                continue
            before = [v for v in visible if v < t]
            after = [v for v in visible if v > t]
            if before and after:
                s, e = before[-1], after[0]
                alpha = (t - s) / (e - s)
                interpolated = (1 - alpha) * tokens[b, s] + alpha * tokens[b, e]
            else:
                interpolated = tokens[b, before[-1] if before else after[0]]
            previous = out[b, t - 1] if before else interpolated
            out[b, t] = decay * previous + (1 - decay) * interpolated
    return out


def test_toki_equals_its_recurrence_and_reduces_to_interpolation() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(3, 40, 5, dtype=torch.float64)
    mask = RandomMasker(0.75)(Tokens(torch.zeros(3, 40, 1), grid=(40,)), torch.Generator())
    mask[0, :3] = True  # a run before the first visible token
    mask[0, -4:] = True  # and after the last one
    toki = TokenInterpolation(5).double()
    with torch.no_grad():
        toki.theta.copy_(torch.linspace(-2, 2, 5))
    decay = torch.sigmoid(toki.theta.detach())
    torch.testing.assert_close(toki(tokens, mask), toki_loop(tokens, mask, decay))
    # Visible tokens are untouched; with no decay the masked ones are linear interpolations.
    out = toki(tokens, mask)
    torch.testing.assert_close(out[~mask], tokens[~mask])
    with torch.no_grad():
        toki.theta.fill_(-60.0)
    torch.testing.assert_close(toki(tokens, mask), toki_loop(tokens, mask, torch.zeros(5).double()))
