"""SparK's "masked dense" sparse encoding of an unmodified timm CNN.

Masked pixels are empty sites of a sparse image. Running dense operators and zeroing the
masked sites after each one gives exactly what a submanifold sparse convolution computes at the
visible sites, as long as (1) every operator that mixes neighbouring sites sees zeros at the
masked ones and (2) normalisation statistics are taken over the visible sites only. This module
arranges both on a timm ResNet or ConvNeXt without changing its parameters or state-dict keys:

- every `BatchNorm2d` becomes a `SparseBatchNorm2d` (same buffers, visible-only statistics);
- a forward hook re-zeroes the masked sites after every convolution, `LayerNorm2d`, pooling and
  residual block, at that module's resolution (the stride-32 mask upsampled to it).

With no mask set, every hook is a no-op and the model is the plain timm model.

The other backend, `omnimask_vision.spconv_backend`, computes the same thing with spconv's
submanifold convolutions (timm ResNets only; needs CUDA to train).
"""

from __future__ import annotations

from omnimask import Encoder, Tokens
from omnimask.config import ConfigError
from timm.layers import LayerNorm2d
from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor, nn

SUPPORTED_CNNS = (ResNet, ConvNeXt)
#: modules whose NCHW output is re-masked; together they leave no path from a masked site to a
#: visible one (norms that act per site, and per-site MLPs, need no re-masking inside a block).
REMASKED_MODULES = (
    nn.Conv2d,
    LayerNorm2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    BasicBlock,
    Bottleneck,
    ConvNeXtBlock,
)
#: the feature strides SparK's decoder consumes.
FEATURE_STRIDES = (4, 8, 16, 32)
#: how the encoder skips masked sites: dense ops with re-masking, or spconv sparse convolutions.
BACKENDS = ("masked_dense", "spconv")


class ActiveSites:
    """The visible sites of the current masked forward pass, at any resolution.

    `visible` is `[B, 1, h, w]` bool on the coarsest (stride-32) grid, or None outside a masked
    pass. A plain object (not a module), referenced by the hooks and norms of one encoder; a
    `copy.deepcopy` of the encoder copies it once and rebinds them (EMA copies stay separate).
    """

    def __init__(self) -> None:
        self.visible: Tensor | None = None
        self._cache: dict[tuple[int, int], Tensor] = {}

    def set(self, visible: Tensor | None) -> None:
        self.visible = visible
        self._cache = {}

    def at(self, height: int, width: int) -> Tensor:
        """The visible mask `[B, 1, height, width]`: each coarse cell covers a square block."""
        if self.visible is None:
            raise RuntimeError("no mask is set: ActiveSites.at is only valid in a masked pass")
        key = (height, width)
        if key not in self._cache:
            coarse_h, coarse_w = self.visible.shape[-2:]
            if height % coarse_h or width % coarse_w or height // coarse_h != width // coarse_w:
                raise ValueError(
                    f"a {height}x{width} feature map does not tile the {coarse_h}x{coarse_w} mask "
                    f"grid; SparK needs input sides that are multiples of the encoder's stride"
                )
            factor = height // coarse_h
            fine = self.visible.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
            self._cache[key] = fine
        return self._cache[key]

    def remask_hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        """Forward hook: zero the masked sites of an NCHW output (no-op outside a masked pass)."""
        if self.visible is None:
            return None
        return output * self.at(*output.shape[-2:]).to(output.dtype)


def masked_batch_norm(norm: nn.BatchNorm2d, x: Tensor, visible: Tensor) -> Tensor:
    """Batch norm of `x` `[B, C, H, W]` with statistics over the visible sites only.

    The visible sites are gathered into a `[1, C, n, 1]` map and normalised by the module's own
    `BatchNorm2d.forward` (so momentum, running statistics and eval mode behave exactly as in
    timm); masked sites come out as zeros. (`[1, C, n, 1]` rather than `[n, C, 1, 1]`: CPU batch
    norm is several times faster on a long contiguous run per channel.)
    """
    keep = visible[:, 0]
    channels_last = x.permute(0, 2, 3, 1)
    out = channels_last.new_zeros(channels_last.shape)
    out[keep] = batch_norm_rows(norm, channels_last[keep])
    return out.permute(0, 3, 1, 2)


def batch_norm_rows(norm: nn.BatchNorm2d, rows: Tensor) -> Tensor:
    """`norm` applied to `[n, C]` feature rows as one batch of n sites."""
    return nn.BatchNorm2d.forward(norm, rows.t()[None, :, :, None])[0, :, :, 0].t()


class SparseBatchNorm2d(nn.BatchNorm2d):
    """`BatchNorm2d` whose statistics come from the visible sites of the current masked pass."""

    sites: ActiveSites | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.sites is None or self.sites.visible is None:
            return super().forward(x)
        return masked_batch_norm(self, x, self.sites.at(*x.shape[-2:]))

    @classmethod
    def replacing(cls, norm: nn.BatchNorm2d, sites: ActiveSites) -> SparseBatchNorm2d:
        sparse = cls(
            norm.num_features,
            norm.eps,
            norm.momentum,
            norm.affine,
            norm.track_running_stats,
            device=norm.weight.device if norm.affine else None,
        )
        sparse.load_state_dict(norm.state_dict())
        sparse.train(norm.training)
        sparse.sites = sites
        return sparse


def sparsify(model: nn.Module, sites: ActiveSites) -> None:
    """Make `model` sparse-aware in place (see the module docstring); state-dict keys unchanged."""
    if not isinstance(model, SUPPORTED_CNNS):
        names = ", ".join(c.__name__ for c in SUPPORTED_CNNS)
        raise ValueError(
            f"SparK's sparse encoding supports timm {names} models, got {type(model).__name__}"
        )
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(module, child_name, SparseBatchNorm2d.replacing(child, sites))
    for module in model.modules():
        if isinstance(module, REMASKED_MODULES):
            module.register_forward_hook(sites.remask_hook)


def feature_indices(model: nn.Module) -> list[int]:
    """Indices (for timm's `forward_intermediates`) of the stride 4, 8, 16 and 32 feature maps."""
    infos = model.feature_info
    indices = [i for i, info in enumerate(infos) if info["reduction"] in FEATURE_STRIDES]
    if [infos[i]["reduction"] for i in indices] != list(FEATURE_STRIDES):
        raise ValueError(f"{type(model).__name__} lacks feature maps at strides {FEATURE_STRIDES}")
    return indices


class SparseCNNEncoder(Encoder):
    """A timm CNN encoding only the visible 32x32 patches (SparK).

    `forward` returns the four feature maps (strides 4, 8, 16, 32) with masked sites zero;
    `forward_features` is the plain timm model on the whole image. `backend` picks how:
    "masked_dense" (this module; any device, ResNet and ConvNeXt) or "spconv"
    (`omnimask_vision.spconv_backend`; ResNets, trains on CUDA only). Both give the same maps
    from the same timm parameters, and leave the model's state-dict keys unchanged.
    """

    def __init__(self, model: nn.Module, backend: str = "masked_dense") -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ConfigError(f"unknown SparK backend {backend!r}; choose one of {BACKENDS}")
        self.model = model
        self.backend = backend
        self.sites = ActiveSites()
        if backend == "spconv":
            from omnimask_vision.spconv_backend import SpconvResNet

            self.spconv = SpconvResNet(model)  # a plain object: no parameters of its own
        else:
            sparsify(model, self.sites)
        self.indices = feature_indices(model)
        self.widths = [model.feature_info[i]["num_chs"] for i in self.indices]

    def forward(self, tokens: Tokens, mask: Tensor) -> list[Tensor]:
        image = tokens.extras["image"]
        visible = (~mask).view(mask.shape[0], 1, *tokens.grid)
        if self.backend == "spconv":
            return self.spconv(self.model, image, visible)
        self.sites.set(visible)
        try:
            return self._intermediates(image * self.sites.at(*image.shape[-2:]).to(image.dtype))
        finally:
            self.sites.set(None)

    def forward_features(self, tokens: Tokens) -> list[Tensor]:
        return self._intermediates(tokens.extras["image"])

    def _intermediates(self, image: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(
            image, indices=self.indices, intermediates_only=True
        )
