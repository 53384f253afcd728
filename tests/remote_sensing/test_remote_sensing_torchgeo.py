"""`export --format torchgeo`: torchgeo's CROMA loads the weights and computes our features."""

from __future__ import annotations

import pytest
import torch
from omnimask.export import ExportError, export_model
from omnimask_remote_sensing.export import load_torchgeo, torchgeo_croma, torchgeo_embedder
from omnimask_remote_sensing.recipes import CromaRecipe


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    recipe = CromaRecipe()
    config = recipe.config("demo")
    torch.manual_seed(0)
    model = recipe.build_model(config).eval()
    with torch.no_grad():  # move weights off their init so a wrong layout cannot pass
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    path = export_model(recipe, model, config, "torchgeo", tmp_path_factory.mktemp("tg"))
    return recipe, config, model, path


@pytest.mark.parametrize("size", [32, 64])
def test_torchgeo_gives_identical_features(exported, size: int) -> None:
    _, _, model, path = exported
    generator = torch.Generator().manual_seed(size)
    batch = {
        "s1": torch.randn(2, 2, size, size, generator=generator),
        "s2": torch.randn(2, 12, size, size, generator=generator),
    }
    theirs = load_torchgeo(path)
    if size != 32:  # torchgeo builds its bias for one image size, given at construction
        theirs.attn_bias = torchgeo_croma().get_2dalibi(16, (size // 8) ** 2)
    with torch.no_grad():
        ours = model.encoder.forward_features(model.tokenizer(batch))
        out = theirs(x_sar=batch["s1"], x_optical=batch["s2"])
    pairs = {
        "optical_encodings": ours.optical,
        "sar_encodings": ours.radar,
        "joint_encodings": ours.joint,
        "optical_GAP": ours.optical_pooled,
        "sar_GAP": ours.radar_pooled,
        "joint_GAP": ours.joint_pooled,
    }
    for key, value in pairs.items():
        torch.testing.assert_close(out[key], value, atol=2e-5, rtol=1e-4, msg=key)
    torch.testing.assert_close(
        torchgeo_embedder(path)(batch), model.embed(batch), atol=2e-5, rtol=1e-4
    )


def test_export_names_every_setting_torchgeo_cannot_hold(exported, tmp_path) -> None:
    recipe, config, _, _ = exported
    config = recipe.config("demo")
    config.model.heads = 8
    config.chips.s2_bands = 10
    model = recipe.build_model(config)
    with pytest.raises(ExportError, match=r"model.heads=8.*chips.s2_bands=10"):
        export_model(recipe, model, config, "torchgeo", tmp_path)
