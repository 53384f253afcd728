"""VideoMAE against Hugging Face's implementation, value for value, and the tube-mask contract."""

from __future__ import annotations

import math

import torch
from omnimask import Tokens
from omnimask.config import apply_overrides
from omnimask.masking import TubeMasker, mask_count
from omnimask_video.figures import denormalize
from transformers import VideoMAEForPreTraining, VideoMAEModel

TINY = [
    "clip.num_frames=4", "clip.size=32", "model.dim=32", "model.depth=2", "model.heads=2",
    "model.decoder_dim=16", "model.decoder_depth=2", "model.decoder_heads=2", "mask.ratio=0.75",
]  # fmt: skip


def tiny(recipe):  # noqa: ANN001, ANN201
    return apply_overrides(recipe.config("demo"), TINY)


def test_tube_masks_repeat_over_time_and_hide_the_requested_count(videomae_recipe) -> None:  # noqa: ANN001
    config = videomae_recipe.config("demo")  # 8 frames of 64x64: grid (4, 4, 4)
    model = videomae_recipe.build_model(config)
    batch = {"video": torch.zeros(6, 3, 8, 64, 64), "sample_id": torch.arange(6)}
    tokens = model.tokenizer(batch)
    assert tokens.grid == (4, 4, 4)
    mask = model.draw_mask(tokens, batch, torch.Generator().manual_seed(1))  # per-sample rows
    per_frame = mask.view(6, 4, 16)
    assert torch.equal(per_frame, per_frame[:, :1].expand_as(per_frame))
    assert mask.sum(1).tolist() == [4 * mask_count(16, 0.9)] * 6 == [4 * 14] * 6
    assert len({tuple(row.tolist()) for row in per_frame[:, 0]}) > 1  # samples differ
    # The paper's grid: 8 x 14 x 14 tubelets, 90% of each frame's 196 positions.
    paper = TubeMasker(0.9)(Tokens(torch.zeros(3, 1568, 1), grid=(8, 14, 14)), torch.Generator())
    assert paper.sum(1).tolist() == [8 * 176] * 3
    frames = paper.view(3, 8, 196)
    assert torch.equal(frames, frames[:, :1].expand_as(frames))


def hf_pretraining_copy(model, config) -> VideoMAEForPreTraining:  # noqa: ANN001
    """`VideoMAEForPreTraining` carrying exactly our weights (our decoder's fused qkv split, with
    the key bias that Hugging Face lacks set to zero on our side)."""
    hf_config = model.encoder.hf.config
    hf_config.decoder_hidden_size = config.model.decoder_dim
    hf_config.decoder_num_hidden_layers = config.model.decoder_depth
    hf_config.decoder_num_attention_heads = config.model.decoder_heads
    hf_config.decoder_intermediate_size = int(config.model.decoder_dim * config.model.mlp_ratio)
    peer = VideoMAEForPreTraining(hf_config).eval()
    peer.videomae.load_state_dict(model.encoder.hf.state_dict())
    decoder, dim = model.decoder, config.model.decoder_dim
    with torch.no_grad():
        peer.encoder_to_decoder.weight.copy_(decoder.embed.weight)
        peer.mask_token.copy_(decoder.mask_token.view(1, 1, -1))
        for block, layer in zip(decoder.blocks, peer.decoder.decoder_layers):
            block.attn.qkv.bias[dim : 2 * dim].zero_()
            attention = layer.attention.attention
            for part, linear in enumerate((attention.query, attention.key, attention.value)):
                linear.weight.copy_(block.attn.qkv.weight[part * dim : (part + 1) * dim])
                if linear.bias is not None:
                    linear.bias.copy_(block.attn.qkv.bias[part * dim : (part + 1) * dim])
            pairs = [
                (layer.attention.output.dense, block.attn.proj),
                (layer.layernorm_before, block.norm1),
                (layer.layernorm_after, block.norm2),
                (layer.intermediate.dense, block.mlp.fc1),
                (layer.output.dense, block.mlp.fc2),
            ]
            for theirs, ours in pairs:
                theirs.load_state_dict(ours.state_dict())
        peer.decoder.norm.load_state_dict(decoder.norm.state_dict())
        peer.decoder.norm.eps = decoder.norm.eps  # HF's decoder norm uses the LayerNorm default
        peer.decoder.head.load_state_dict(decoder.head.state_dict())
    return peer


def test_loss_and_predictions_match_transformers_pretraining(videomae_recipe) -> None:  # noqa: ANN001
    config = tiny(videomae_recipe)
    torch.manual_seed(0)
    model = videomae_recipe.build_model(config).eval()
    peer = hf_pretraining_copy(model, config)
    torch.testing.assert_close(model.decoder.pos_embed, peer.position_embeddings)
    video = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    batch = {"video": video, "sample_id": torch.arange(3)}
    with torch.no_grad():
        output = model.predict(batch, torch.Generator().manual_seed(2))
        theirs = peer(pixel_values=video.transpose(1, 2), bool_masked_pos=output.mask)
    torch.testing.assert_close(output.prediction, theirs.logits, rtol=1e-4, atol=1e-5)
    # HF divides by (std + 1e-6), we by sqrt(var + 1e-6): equal to ~1e-5 on unit-scale pixels.
    torch.testing.assert_close(output.losses["loss"], theirs.loss, rtol=1e-4, atol=0)


def test_visible_only_encoder_matches_transformers_videomae_model(videomae_recipe) -> None:  # noqa: ANN001
    """Patch embedding as a linear map on gathered tubelets == HF's Conv3d on the whole clip."""
    config = tiny(videomae_recipe)
    model = videomae_recipe.build_model(config).eval()
    hf = model.encoder.hf
    assert isinstance(hf, VideoMAEModel)
    video = torch.randn(2, 3, 4, 32, 32)
    batch = {"video": video, "sample_id": torch.arange(2)}
    tokens = model.tokenizer(batch)
    mask = model.draw_mask(tokens, batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours_visible = model.encoder(tokens, mask)
        ours_all = model.encoder.forward_features(tokens)
        theirs_visible = hf(video.transpose(1, 2), bool_masked_pos=mask).last_hidden_state
        theirs_all = hf(video.transpose(1, 2)).last_hidden_state
    assert ours_visible.shape == (2, 2 * 1, 32)  # 2 time steps x 1 of 4 positions visible
    torch.testing.assert_close(ours_visible, theirs_visible, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_all, theirs_all, rtol=1e-5, atol=1e-5)


def test_targets_are_per_channel_normalised_tubelets(videomae_recipe) -> None:  # noqa: ANN001
    """Brute force: standardise each channel of each 2x16x16 tubelet of the [0, 1] pixels."""
    config = tiny(videomae_recipe)
    model = videomae_recipe.build_model(config)
    mean, std = torch.tensor(config.clip.mean), torch.tensor(config.clip.std)
    pixels = torch.rand(1, 3, 4, 32, 32)
    batch = {"video": (pixels - mean.view(3, 1, 1, 1)) / std.view(3, 1, 1, 1)}
    target = model.target(batch, model.tokenizer(batch))
    assert target.shape == (1, 8, 2 * 16 * 16 * 3)
    grid_t, grid_h, grid_w = 2, 2, 2
    for n in range(8):
        t, h, w = n // 4, (n // 2) % 2, n % 2
        assert (t, h, w) < (grid_t, grid_h, grid_w)
        cube = pixels[0, :, 2 * t : 2 * t + 2, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16]
        cube = cube.permute(1, 2, 3, 0).reshape(-1, 3)  # (t, p, p) x C, channels last
        expected = (cube - cube.mean(0)) / (cube.var(0) + 1e-6).sqrt()
        torch.testing.assert_close(target[0, n].view(-1, 3), expected, rtol=1e-4, atol=1e-4)


def test_figure_denormalisation_inverts_the_target() -> None:
    pixels = torch.rand(5, 512, 3)
    normalised = (pixels - pixels.mean(1, keepdim=True)) / (
        pixels.var(1, keepdim=True) + 1e-6
    ).sqrt()
    torch.testing.assert_close(denormalize(normalised, pixels, True, True), pixels)
    whole = (pixels - pixels.mean((1, 2), keepdim=True)) / (
        pixels.var((1, 2), keepdim=True) + 1e-6
    ).sqrt()
    torch.testing.assert_close(denormalize(whole, pixels, True, False), pixels)
    assert math.isclose(float(denormalize(pixels, pixels, False, True).sum()), float(pixels.sum()))
