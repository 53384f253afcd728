"""MAE and SimMIM on timm ViTs: equal-count masks, visible-only encoding, the norm-pix target
against its formula and Hugging Face's patch layout, MAE's hidden-only decoder against the
grid-order reference decoder (values, loss and gradients), SimMIM's cell mask and L1 loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omnimask.gather import mask_to_indices, scatter_tokens
from omnimask.patching import per_patch_normalize
from omnimask_vision.models.vit import block_on_last_tokens
from omnimask_vision.recipes import MAERecipe, SimMIMRecipe
from timm.models.vision_transformer import Block
from transformers import ViTMAEConfig, ViTMAEForPreTraining


@pytest.fixture(scope="module")
def mae():
    recipe = MAERecipe()
    config = recipe.config("demo")
    torch.manual_seed(0)
    return recipe, config, recipe.build_model(config).eval()


@pytest.fixture(scope="module")
def simmim():
    recipe = SimMIMRecipe()
    config = recipe.config("demo")
    torch.manual_seed(0)
    return recipe, config, recipe.build_model(config).eval()


def images(count: int = 3, side: int = 64, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(count, 3, side, side, generator=generator),
        "sample_id": torch.arange(count),
    }


def test_mae_masks_keep_the_same_visible_count_in_every_row(mae) -> None:
    _, config, model = mae
    batch = images(count=5)
    tokens = model.tokenizer(batch)
    mask = model.draw_mask(tokens, batch, torch.Generator().manual_seed(1))
    expected_hidden = round(config.mask.ratio * tokens.num_tokens)
    assert mask.sum(1).tolist() == [expected_hidden] * 5
    assert len({tuple(row.tolist()) for row in mask}) == 5  # rows differ
    latent = model.encoder(tokens, mask)
    assert latent.shape[1] == 1 + tokens.num_tokens - expected_hidden


def test_mae_encoder_sees_only_visible_patches(mae) -> None:
    _, _, model = mae
    batch = images()
    tokens = model.tokenizer(batch)
    mask = model.draw_mask(tokens, batch, torch.Generator().manual_seed(2))
    first = model.encoder(tokens, mask)
    patch = model.tokenizer.patch
    hidden = mask.view(3, 1, 8, 8).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    tokens.extras["image"] = torch.where(hidden, torch.randn_like(batch["image"]), batch["image"])
    noise = torch.randn_like(tokens.values)
    tokens.values = torch.where(mask.unsqueeze(-1), noise, tokens.values)
    torch.testing.assert_close(model.encoder(tokens, mask), first, atol=0, rtol=0)


def test_visible_patch_embedding_equals_timm_convolution(mae) -> None:
    _, _, model = mae
    batch = images()
    tokens = model.tokenizer(batch)
    with torch.no_grad():
        convolved = model.encoder.model.patch_embed(batch["image"])
        linear = model.encoder.embed_patches(tokens.values)
    torch.testing.assert_close(linear, convolved, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixture", ["mae", "simmim"])
def test_nothing_masked_matches_timm_forward_features(fixture: str, request) -> None:
    _, _, model = request.getfixturevalue(fixture)
    batch = images()
    tokens = model.tokenizer(batch)
    nothing = torch.zeros(3, tokens.num_tokens, dtype=torch.bool)
    with torch.no_grad():
        ours = model.encoder(tokens, nothing)
        reference = model.encoder.model.forward_features(batch["image"])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_per_patch_normalisation_matches_its_formula_and_hf_layout(mae) -> None:
    _, _, model = mae
    batch = images(count=2)
    tokens = model.tokenizer(batch)
    target = model.target(batch, tokens).numpy()
    # Hugging Face's ViTMAE patchify is the reference for the token layout.
    hf = ViTMAEForPreTraining(
        ViTMAEConfig(
            image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, decoder_hidden_size=32,
            decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
            decoder_intermediate_size=32, norm_pix_loss=True,
        )
    )  # fmt: skip
    patches = hf.patchify(batch["image"]).numpy()
    np.testing.assert_allclose(tokens.values.numpy(), patches, atol=0)
    # Brute force, one patch at a time: (x - mean) / sqrt(unbiased var + 1e-6).
    for row in range(2):
        for index in (0, 17, 63):
            values = patches[row, index].astype(np.float64)
            expected = (values - values.mean()) / np.sqrt(values.var(ddof=1) + 1e-6)
            np.testing.assert_allclose(target[row, index], expected, rtol=1e-4, atol=1e-5)


def test_mae_loss_is_mse_over_masked_patches_only(mae) -> None:
    _, _, model = mae
    generator = torch.Generator().manual_seed(3)
    full_prediction = torch.randn(2, 64, 192, generator=generator)
    target = torch.randn(2, 64, 192, generator=generator)
    mask = torch.rand(2, 64, generator=generator).argsort(1) < 48
    prediction = full_prediction[mask].view(2, 48, 192)  # the decoder predicts hidden patches
    loss = model.target.loss(prediction, target, mask)["loss"]
    expected = ((full_prediction - target) ** 2)[mask].mean()
    torch.testing.assert_close(loss, expected)


def reference_mae_decoder(decoder, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MAE's reference decoder: unshuffle to grid order with mask tokens, add the position
    embedding, run every block on every token, predict every patch (`[B, N, D]`)."""
    x = decoder.embed(latent)
    visible, _ = mask_to_indices(mask)
    patches = scatter_tokens(x[:, 1:], visible, decoder.num_tokens, decoder.mask_token)
    x = torch.cat([x[:, :1], patches], dim=1) + decoder.pos_embed
    return decoder.head(decoder.norm(decoder.blocks(x)))[:, 1:]


def test_mae_decoder_predicts_the_hidden_patches_of_the_grid_order_decoder(mae) -> None:
    _, _, model = mae
    batch = images()
    tokens = model.tokenizer(batch)
    mask = model.draw_mask(tokens, batch, torch.Generator().manual_seed(6))
    with torch.no_grad():
        latent = model.encoder(tokens, mask)
        ours = model.decoder(latent, tokens, mask)
        full = reference_mae_decoder(model.decoder, latent, mask)
    assert ours.shape == (3, int(mask[0].sum()), full.shape[-1])
    torch.testing.assert_close(ours, full[mask].view_as(ours), atol=1e-5, rtol=1e-5)


def test_mae_loss_and_gradients_match_the_full_prediction_reference(mae) -> None:
    _, _, model = mae
    batch = images()
    model.zero_grad(set_to_none=True)
    output = model.predict(batch, torch.Generator().manual_seed(7))
    output.losses["loss"].backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    tokens, mask = output.tokens, output.mask
    full = reference_mae_decoder(model.decoder, model.encoder(tokens, mask), mask)
    # MAE's loss: mean over masked patches of the per-patch mean squared error.
    target = per_patch_normalize(tokens.values)
    per_patch = (full - target).pow(2).mean(-1)
    loss = (per_patch * mask).sum() / mask.sum()
    loss.backward()
    torch.testing.assert_close(output.losses["loss"], loss, atol=1e-6, rtol=1e-5)
    reference = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert ours.keys() == reference.keys()
    for name, grad in reference.items():
        torch.testing.assert_close(ours[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("count", [1, 5, 17])
def test_block_on_last_tokens_equals_the_full_block_sliced(count: int) -> None:
    torch.manual_seed(0)
    block = Block(32, 4, mlp_ratio=4.0, qkv_bias=True).train()  # no dropout: deterministic
    x = torch.randn(2, 17, 32, requires_grad=True)
    ours = block_on_last_tokens(block, x, count)
    weight = torch.randn_like(ours)
    (ours * weight).sum().backward()
    grads = [x.grad.clone()] + [p.grad.clone() for p in block.parameters()]
    x.grad = None
    block.zero_grad(set_to_none=True)
    full = block(x)[:, -count:]
    (full * weight).sum().backward()
    torch.testing.assert_close(ours, full, atol=1e-6, rtol=1e-5)
    for mine, reference in zip(grads, [x.grad] + [p.grad for p in block.parameters()]):
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=1e-5)


def test_simmim_masks_whole_cells_and_replaces_them_by_the_mask_token(simmim) -> None:
    _, config, model = simmim
    batch = images(count=4)
    tokens = model.tokenizer(batch)
    mask = model.draw_mask(tokens, batch, torch.Generator().manual_seed(4))
    cell = config.mask.cell // model.tokenizer.patch
    grid = mask.view(4, 8, 8)
    blocks = grid.view(4, 8 // cell, cell, 8 // cell, cell)
    assert (blocks.all(dim=(2, 4)) | ~blocks.any(dim=(2, 4))).all()  # whole cells only
    assert mask.sum(1).tolist() == [cell * cell * round(0.6 * 16)] * 4
    # Masked patch content cannot matter: it is replaced before the first block.
    first = model.encoder(tokens, mask)
    hidden = grid.unsqueeze(1).repeat_interleave(8, 2).repeat_interleave(8, 3)
    tokens.extras["image"] = torch.where(hidden, torch.randn_like(batch["image"]), batch["image"])
    noise = torch.randn_like(tokens.values)
    tokens.values = torch.where(mask.unsqueeze(-1), noise, tokens.values)
    torch.testing.assert_close(model.encoder(tokens, mask), first, atol=0, rtol=0)


def test_simmim_loss_is_l1_over_masked_pixels(simmim) -> None:
    _, _, model = simmim
    batch = images(count=2)
    output = model.predict(batch, torch.Generator().manual_seed(5))
    pixels = output.mask.unsqueeze(-1).expand_as(output.target)
    expected = (output.prediction - output.target).abs()[pixels].mean()
    torch.testing.assert_close(output.losses["loss"], expected)
