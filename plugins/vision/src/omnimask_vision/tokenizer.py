"""Images -> patch tokens on a square grid, keeping the image itself for convolutional encoders."""

from __future__ import annotations

from omnimask import Tokens
from omnimask.model import Batch
from omnimask.patching import grid_positions, patch_grid, patchify
from torch import nn


class ImagePatchTokenizer(nn.Module):
    """`batch["image"]` `[B, 3, H, W]` -> tokens of `patch x patch` pixels on the `(H/p, W/p)` grid.

    `values` are the raw patches (`patchify` layout), which is what pixel targets and figures
    need; encoders that work on the whole image (a CNN, a ViT's conv patch embedding) read it
    from `extras["image"]`, so `Tokens.rows` slices it with everything else.
    """

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.patch = patch

    def forward(self, batch: Batch) -> Tokens:
        image = batch["image"]
        grid = patch_grid(image.shape[2:], (self.patch, self.patch))
        positions = grid_positions(grid, image.device).expand(image.shape[0], -1, -1)
        return Tokens(
            values=patchify(image, (self.patch, self.patch)),
            positions=positions,
            grid=grid,
            extras={"image": image},
        )

    def extra_repr(self) -> str:
        return f"patch={self.patch}"
