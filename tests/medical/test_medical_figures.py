"""The slices figure: masked cells in a colour no grey of a CT or MR slice can take."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import torch
from omnimask_medical import figures
from omnimask_medical.config import mambamim_demo
from omnimask_medical.recipes import MambaMIMRecipe


def test_masked_cells_are_not_drawn_in_a_grey(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    config = mambamim_demo()
    model = MambaMIMRecipe().build_model(config)
    crop = config.data.crop
    volume = torch.rand(2, 1, crop, crop, crop)  # every grey from black (air) to white
    volume[:, :, : crop // 4] = 0.0
    drawn = []
    monkeypatch.setattr(figures.plt, "close", drawn.append)  # keep the figure to inspect it
    path = figures.draw_slices(model, {"volume": volume}, tmp_path / "slices.png")

    rgb = matplotlib.image.imread(path)[..., :3]
    assert rgb.shape[0] == 2 * rgb.shape[1]  # 6 rows (2 volumes x 3 views) of 3 columns
    greys = rgb.max(-1) - rgb.min(-1) < 1 / 255  # r = g = b: the image's greys, black included
    assert (~greys).mean() > 0.1  # drawn in greys, a masked cell looked like air (black)
    masked = np.abs(rgb - np.asarray(figures.MASK_COLOUR)).max(-1) < 1 / 255
    assert masked.mean() > 0.1  # 3 masked panels of 18, each about 3/4 masked
    assert not (masked & greys).any()  # no masked pixel has the colour of any grey
    # every pixel is a grey (the slices, text, background), the mask colour or the legend's
    # antialiased edge
    assert (greys | masked).mean() > 0.99
    labels = [text.get_text() for legend in drawn[0].legends for text in legend.get_texts()]
    assert labels == ["masked cell (hidden from the encoder)"]


def test_the_masked_panel_is_the_original_with_masked_cells_coloured() -> None:
    image = torch.tensor([[0.0, 0.5], [1.0, 1.5]])
    hidden = torch.tensor([[True, False], [False, True]])
    rgb = figures.grey_with_mask(image, hidden)
    np.testing.assert_allclose(rgb[0, 0], figures.MASK_COLOUR, rtol=1e-6)
    np.testing.assert_allclose(rgb[1, 1], figures.MASK_COLOUR, rtol=1e-6)
    np.testing.assert_array_equal(rgb[0, 1], [0.5] * 3)
    np.testing.assert_array_equal(rgb[1, 0], [1.0] * 3)
    grey_levels = np.linspace(0, 1, 256)[:, None].repeat(3, axis=1)
    assert not (np.abs(grey_levels - figures.MASK_COLOUR).max(-1) < 1 / 255).any()


def test_the_hidden_volume_follows_the_mask() -> None:
    torch.manual_seed(0)
    config = mambamim_demo()
    model = MambaMIMRecipe().build_model(config)
    crop = config.data.crop
    original, hidden, _ = figures.reconstruct(model, {"volume": torch.rand(1, 1, crop, crop, crop)})
    assert hidden.dtype == torch.bool and hidden.shape == original.shape
    assert abs(hidden.float().mean().item() - config.mask.ratio) < 0.1
    for view in ("axial", "coronal", "sagittal"):
        assert figures._slice(hidden[0], view).any()
