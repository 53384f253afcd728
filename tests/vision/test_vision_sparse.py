"""SparK's sparse encoding of unmodified timm CNNs: equal to timm when nothing is masked, no
information path from masked to visible sites, visible-only batch norm, and the pretrained
encoder loading into plain timm."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omnimask_vision.recipes import SparkRecipe
from omnimask_vision.sparse import ActiveSites, SparseBatchNorm2d, SparseCNNEncoder, sparsify
from omnimask_vision.tokenizer import ImagePatchTokenizer
from safetensors.torch import load_file

SIDE = 96  # a 3x3 grid of 32x32 mask cells
CNNS = {
    "resnet_basic": ("resnet18", {"channels": [8, 16, 32, 64]}),
    "resnet_bottleneck": ("resnet26", {"channels": [4, 8, 16, 32]}),
    "resnet_deep_stem_avg_down": ("resnet26d", {"channels": [4, 8, 16, 32], "stem_width": 8}),
    "convnext_conv_mlp": ("convnext_atto", {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}),
    "convnext_linear_mlp": ("convnext_nano", {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}),
}


def make_encoder(kind: str, seed: int = 0) -> SparseCNNEncoder:
    name, kwargs = CNNS[kind]
    torch.manual_seed(seed)
    encoder = SparseCNNEncoder(timm.create_model(name, pretrained=False, **kwargs))
    # Non-trivial norm statistics and affine parameters, so eval mode tests something.
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return encoder


def plain_twin(kind: str, encoder: SparseCNNEncoder) -> torch.nn.Module:
    name, kwargs = CNNS[kind]
    plain = timm.create_model(name, pretrained=False, **kwargs)
    plain.load_state_dict(encoder.model.state_dict())
    return plain


def batch(seed: int = 0, size: int = 3) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(size, 3, SIDE, SIDE, generator=generator)
    tokens = ImagePatchTokenizer(32)({"image": image})
    mask = torch.rand(size, tokens.num_tokens, generator=generator) < 0.6
    mask[:, 0] = False  # at least one visible cell per row
    mask[:, -1] = True  # and at least one hidden one
    return tokens, mask


@pytest.mark.parametrize("kind", list(CNNS))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_nothing_masked_gives_the_plain_timm_features(kind: str, train: bool) -> None:
    encoder = make_encoder(kind)
    plain = plain_twin(kind, encoder)
    encoder.train(train)
    plain.train(train)
    tokens, _ = batch()
    nothing = torch.zeros(tokens.batch_size, tokens.num_tokens, dtype=torch.bool)
    sparse = encoder(tokens, nothing)
    dense = plain.forward_intermediates(
        tokens.extras["image"], indices=encoder.indices, intermediates_only=True
    )
    assert [f.shape[-1] for f in sparse] == [SIDE // s for s in (4, 8, 16, 32)]
    # Training-mode batch statistics are summed in another order (visible rows gathered first).
    atol = 3e-4 if train else 1e-5
    for ours, reference in zip(sparse, dense):
        torch.testing.assert_close(ours, reference, atol=atol, rtol=1e-4)
    if train:  # running statistics updated as timm's own batch norm does
        for ours, reference in zip(encoder.model.modules(), plain.modules()):
            if isinstance(ours, torch.nn.BatchNorm2d):
                torch.testing.assert_close(
                    ours.running_var, reference.running_var, rtol=1e-4, atol=1e-4
                )


@pytest.mark.parametrize("kind", list(CNNS))
def test_masked_sites_never_reach_visible_outputs(kind: str) -> None:
    """d(every output)/d(masked input pixels) == 0 exactly, in training mode (batch statistics
    included); and masked output sites are exactly zero."""
    encoder = make_encoder(kind).train()
    tokens, mask = batch(seed=1)
    image = tokens.extras["image"].clone().requires_grad_(True)
    tokens.extras["image"] = image
    features = encoder(tokens, mask)
    weights = [torch.randn_like(f) for f in features]
    sum(f.mul(w).sum() for f, w in zip(features, weights)).backward()
    hidden_pixels = encoder_mask_at(mask, SIDE)
    assert image.grad[hidden_pixels.expand_as(image)].abs().max() == 0
    assert image.grad[~hidden_pixels.expand_as(image)].abs().max() > 0
    for feature in features:
        hidden_sites = encoder_mask_at(mask, feature.shape[-1]).expand_as(feature)
        assert feature[hidden_sites].abs().max() == 0


@pytest.mark.parametrize("kind", ["resnet_bottleneck", "convnext_linear_mlp"])
def test_changing_masked_pixels_changes_nothing(kind: str) -> None:
    encoder = make_encoder(kind).train()
    tokens, mask = batch(seed=2)
    first = encoder(tokens, mask)
    hidden = encoder_mask_at(mask, SIDE)
    noisy = torch.where(
        hidden, 100 * torch.randn_like(tokens.extras["image"]), tokens.extras["image"]
    )
    tokens.extras["image"] = noisy
    again = encoder(tokens, mask)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_sparse_batch_norm_uses_visible_sites_only() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 8, 8, generator=generator) * 3 + 1
    visible = torch.rand(2, 1, 2, 2, generator=generator) < 0.5
    visible[0, 0, 0, 0] = True
    model = timm.create_model("resnet18", pretrained=False, channels=[8, 16, 32, 64])
    encoder = SparseCNNEncoder(model)
    norm = SparseBatchNorm2d(5, momentum=1.0)  # running stats := this batch's statistics
    norm.sites = encoder.sites
    encoder.sites.set(visible)
    out = norm(x)
    fine = encoder.sites.at(8, 8)[:, 0]
    encoder.sites.set(None)
    rows = x.permute(0, 2, 3, 1)[fine]  # brute force: the visible sites, [n, C]
    torch.testing.assert_close(norm.running_mean, rows.mean(0))
    torch.testing.assert_close(norm.running_var, rows.var(0, unbiased=True))
    expected = (rows - rows.mean(0)) / torch.sqrt(rows.var(0, unbiased=False) + norm.eps)
    torch.testing.assert_close(out.permute(0, 2, 3, 1)[fine], expected, atol=1e-5, rtol=1e-5)
    assert out.permute(0, 2, 3, 1)[~fine].abs().max() == 0


def test_sparsify_rejects_unsupported_models() -> None:
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32)
    with pytest.raises(ValueError, match="supports timm ResNet, ConvNeXt"):
        sparsify(vit, ActiveSites())


def test_timm_export_loads_into_plain_timm_with_no_missing_keys(tmp_path: Path) -> None:
    recipe = SparkRecipe()
    config = recipe.config("demo")
    model = recipe.build_model(config).eval()
    path = recipe.export(model, config, "timm", tmp_path)
    encoder = config.model.encoder
    plain = timm.create_model(encoder.name, pretrained=False, **encoder.kwargs).eval()
    result = plain.load_state_dict(load_file(str(path)), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    tokens, _ = batch(size=2)
    with torch.no_grad():
        expected = model.encoder.forward_features(tokens)[-1]
        torch.testing.assert_close(plain.forward_features(tokens.extras["image"]), expected)


def encoder_mask_at(mask: torch.Tensor, side: int) -> torch.Tensor:
    """Hidden sites `[B, 1, side, side]` of a flat 3x3 cell mask."""
    factor = side // 3
    grid = mask.view(mask.shape[0], 1, 3, 3)
    return grid.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
