"""SparK's other backend: a timm ResNet run as a true sparse network with spconv.

The visible pixels are the active sites of a `spconv.SparseConvTensor`. Stride-1 convolutions
become submanifold convolutions (outputs only at active sites), strided ones regular sparse
convolutions whose outputs are then restricted to the visible sites of the coarser grid; batch
norm sees only the active features. This is the paper's framing of what the masked-dense backend
(`omnimask_vision.sparse`) computes, and it shares the timm model's weights, so the two can be
compared value for value.

Scope, stated rather than guessed: timm ResNets with the plain 7x7 stem, `BasicBlock` or
`Bottleneck`, 1x1 downsampling and no squeeze-excitation, anti-aliasing or drop-block. The
spconv CPU build runs forwards only (its backward asks for a CUDA stream), so on CPU this
backend serves equivalence checks and inference-speed comparisons; training uses masked dense.
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor, nn

from omnimask_vision.sparse import batch_norm_rows, feature_indices

SparseMap = spconv.SparseConvTensor


def check_supported(model: nn.Module) -> ResNet:
    """The model, if this backend can run it; otherwise a ValueError saying what is missing."""
    if not isinstance(model, ResNet):
        raise ValueError(f"the spconv backend runs timm ResNets only, got {type(model).__name__}")
    if not isinstance(model.conv1, nn.Conv2d) or not isinstance(model.maxpool, nn.MaxPool2d):
        raise ValueError("the spconv backend needs the plain 7x7 conv stem and max-pool")
    for block in [*model.layer1, *model.layer2, *model.layer3, *model.layer4]:
        extras = [getattr(block, name, None) for name in ("se", "aa", "drop_block")]
        if any(extra is not None and not isinstance(extra, nn.Identity) for extra in extras):
            raise ValueError("the spconv backend does not run SE, anti-aliasing or drop-block")
        downsample = block.downsample
        if downsample is not None and not all(
            isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in downsample
        ):
            raise ValueError("the spconv backend needs 1x1 conv downsampling (no avg_down)")
    return model


def spconv_resnet_features(model: nn.Module, image: Tensor, visible: Tensor) -> list[Tensor]:
    """The stride 4, 8, 16, 32 feature maps of `model` on the visible part of `image`.

    `visible` is `[B, 1, h, w]` bool on the stride-32 grid. Dense outputs with zeros at masked
    sites, exactly as `SparseCNNEncoder`'s masked-dense forward returns them.
    """
    resnet = check_supported(model)
    if feature_indices(resnet) != [1, 2, 3, 4]:
        raise ValueError("expected timm ResNet feature maps layer1..layer4")
    x = to_sparse(image, at_resolution(visible, image.shape[-2]))
    x = conv(resnet.conv1, x, visible)
    x = norm_act(resnet.bn1, resnet.act1, x)
    x = restrict(spconv.SparseMaxPool2d(*_pool_args(resnet.maxpool))(x), visible)
    features = []
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        for block in layer:
            x = residual_block(block, x, visible)
        features.append(x.dense())
    return features


def residual_block(block: nn.Module, x: SparseMap, visible: Tensor) -> SparseMap:
    if isinstance(block, BasicBlock):
        out = norm_act(block.bn1, block.act1, conv(block.conv1, x, visible))
        out = norm(block.bn2, conv(block.conv2, out, visible))
        final_act = block.act2
    elif isinstance(block, Bottleneck):
        out = norm_act(block.bn1, block.act1, conv(block.conv1, x, visible))
        out = norm_act(block.bn2, block.act2, conv(block.conv2, out, visible))
        out = norm(block.bn3, conv(block.conv3, out, visible))
        final_act = block.act3
    else:
        raise ValueError(f"unsupported ResNet block {type(block).__name__}")
    shortcut = x
    if block.downsample is not None:
        down_conv, down_norm = block.downsample
        shortcut = norm(down_norm, conv(down_conv, x, visible))
    if not torch.equal(out.indices, shortcut.indices):
        raise AssertionError("residual branches disagree on their active sites")
    return out.replace_feature(final_act(out.features + shortcut.features))


def conv(layer: nn.Conv2d, x: SparseMap, visible: Tensor) -> SparseMap:
    """`layer`'s weights as a sparse convolution: submanifold at stride 1 ("same" padding),
    otherwise a regular sparse convolution restricted to the visible sites it lands on."""
    kernel, stride = layer.kernel_size, layer.stride
    if layer.groups != 1 or layer.dilation != (1, 1) or kernel[0] != kernel[1]:
        raise ValueError(f"unsupported convolution for spconv: {layer}")
    same = tuple(k // 2 for k in kernel)
    submanifold = stride == (1, 1) and layer.padding == same
    kind = spconv.SubMConv2d if submanifold else spconv.SparseConv2d
    sparse = kind(
        layer.in_channels,
        layer.out_channels,
        kernel[0],
        stride=stride,
        padding=layer.padding,
        bias=layer.bias is not None,
    )
    expected = (layer.out_channels, kernel[0], kernel[1], layer.in_channels)
    if tuple(sparse.weight.shape) != expected:
        raise AssertionError(f"unexpected spconv weight layout {tuple(sparse.weight.shape)}")
    # Share the dense layer's weights (spconv's layout is [out, kh, kw, in]).
    del sparse.weight
    sparse.weight = layer.weight.permute(0, 2, 3, 1).contiguous()
    if layer.bias is not None:
        del sparse.bias
        sparse.bias = layer.bias
    out = sparse(x)
    return out if submanifold else restrict(out, visible)


def norm(layer: nn.BatchNorm2d, x: SparseMap) -> SparseMap:
    """Batch norm over the active features only (the same computation as `SparseBatchNorm2d`)."""
    return x.replace_feature(batch_norm_rows(layer, x.features))


def norm_act(layer: nn.BatchNorm2d, act: nn.Module, x: SparseMap) -> SparseMap:
    x = norm(layer, x)
    return x.replace_feature(act(x.features))


def to_sparse(image: Tensor, visible: Tensor) -> SparseMap:
    """Dense `[B, C, H, W]` -> sparse tensor of the sites where `visible` `[B, 1, H, W]` holds."""
    where = visible[:, 0].nonzero()
    features = image.permute(0, 2, 3, 1)[where[:, 0], where[:, 1], where[:, 2]]
    return spconv.SparseConvTensor(
        features, where.int(), list(image.shape[-2:]), image.shape[0]
    )


def restrict(x: SparseMap, visible: Tensor) -> SparseMap:
    """Keep the active sites of `x` that are visible at its resolution, in row-major order.

    A strided sparse convolution also activates masked sites next to visible ones (its window
    reaches across the border); the masked-dense backend zeroes those, so they are dropped here.
    The canonical order lets residual branches be added feature row by feature row.
    """
    height, width = x.spatial_shape
    mask = at_resolution(visible, height)[:, 0]
    index = x.indices.long()
    keep = mask[index[:, 0], index[:, 1], index[:, 2]]
    index, features = index[keep], x.features[keep]
    order = torch.argsort((index[:, 0] * height + index[:, 1]) * width + index[:, 2])
    return spconv.SparseConvTensor(
        features[order], index[order].int(), [height, width], x.batch_size
    )


def at_resolution(visible: Tensor, height: int) -> Tensor:
    factor = height // visible.shape[-2]
    return visible.repeat_interleave(factor, 2).repeat_interleave(factor, 3)


def _pool_args(pool: nn.MaxPool2d) -> tuple[int, int, int]:
    return pool.kernel_size, pool.stride, pool.padding
