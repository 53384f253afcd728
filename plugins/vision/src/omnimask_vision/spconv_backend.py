"""SparK's spconv backend: a timm ResNet run as a true sparse network with spconv.

The visible pixels are the active sites of `spconv.SparseConvTensor`s, and the timm model's own
parameters are read at every forward (nothing is copied), so training updates the timm weights
and the encoder exports as the plain timm model. Module by module, with the masked-dense
backend's semantics (`omnimask_vision.sparse`) reproduced exactly:

- stride-1 k x k convolutions ("same" padding) -> `SubMConv2d`: outputs at the active sites only,
  each a sum over its active neighbours, i.e. masked dense's zeros at masked sites;
- stride-1 1x1 convolutions -> a matrix product of the feature rows (spconv's own 1x1 path
  reads its `[out, 1, 1, in]` weight memory as `[in, out]`);
- strided convolutions and the stem max pool -> spconv's regular `SparseConv2d` /
  `SparseMaxPool2d`, keeping only the outputs at visible sites of the coarser grid. The mask
  lives on the stride-32 grid, so at every stride <= 32 the visible sites form whole aligned
  blocks and each visible coarse site has active inputs; the extra outputs that windows reaching
  over a block border create at masked sites are those masked dense zeroes after the operator;
- batch norm -> the timm `BatchNorm2d` applied to the feature rows (statistics over the active
  sites, running statistics updated in place), activations -> applied to the feature rows;
- residual additions -> row by row, both branches being on the same site set in the same order.

Every site set is kept in row-major (batch, y, x) order, the order in which masked dense gathers
the visible sites for its batch norm, so both backends normalise the same rows.

The four feature maps (strides 4, 8, 16, 32) come back dense with masked sites zero, the
masked-dense encoder's contract. spconv is imported only when this backend is built.

Scope: timm `ResNet`s (`BasicBlock` / `Bottleneck`, plain or deep stem, `avg_down`,
`replace_stem_pool`, pointwise activations with act(0) = 0), and a ReLU before the stem max pool
(spconv's max pool returns max(0, active inputs)). spconv 2.3 has no grouped convolution
(`SparseConvolution` asserts `groups == 1`), so ConvNeXt (depthwise 7x7) and ResNeXt (grouped
3x3) are refused. The CPU build's backward pass needs a CUDA driver, so on CPU this backend runs
forward passes only (no-grad), and its kernels on one thread (they race on several); training
with it needs spconv's CUDA build.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import torch
import torch.nn.functional as F
from omnimask.config import ConfigError
from timm.layers.activations import GELU, GELUTanh, Tanh
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import Tensor, nn

from omnimask_vision.sparse import ActiveSites, batch_norm_rows

#: elementwise activations with act(0) == 0 (masked dense applies them to the zeros of masked
#: sites, so only these keep both backends equal).
POINTWISE_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Mish, nn.Hardswish, nn.ELU, nn.Tanh,
    GELU, GELUTanh, Tanh,
)  # fmt: skip
#: activations whose outputs are never negative (spconv's max pool needs such inputs).
NON_NEGATIVE_ACTIVATIONS = (nn.ReLU, nn.ReLU6)
#: the order of a block's residual branch (timm's `forward`), and its activation after the sum.
BLOCK_STEPS = {
    BasicBlock: (("conv1", "bn1", "drop_block", "act1", "aa", "conv2", "bn2"), "act2"),
    Bottleneck: (
        ("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "aa", "conv3", "bn3"),
        "act3",
    ),
}
#: block attributes that must be absent (None) or identities for the two backends to agree.
BLOCK_EXTRAS = ("se", "drop_path", "drop_block", "aa")
TRUNK = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")
INSTALL_HINT = (
    "the spconv backend needs spconv: `pip install 'omnimask-vision[spconv]'` (CPU build, forward "
    "only) or, on a CUDA machine, the matching GPU build (e.g. `pip install spconv-cu126`)"
)


def import_spconv() -> Any:
    try:
        import spconv.pytorch as spconv
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return spconv


def check_supported(model: nn.Module) -> ResNet:
    """`model` if this backend can run it, else a ConfigError (a ValueError) naming the first
    module it cannot."""
    if not isinstance(model, ResNet):
        raise ConfigError(
            f"the spconv backend runs timm ResNets only, got {type(model).__name__}. ConvNeXt "
            "needs depthwise (grouped) convolutions, which spconv 2.3 lacks (SparseConvolution "
            "asserts groups == 1); use model.backend=masked_dense"
        )
    for name in TRUNK:
        module = getattr(model, name)
        if name == "maxpool" and isinstance(module, nn.MaxPool2d):
            _check_max_pool(module, model.act1)
        else:
            _check_module(module, name)
    return model


def _check_max_pool(pool: nn.MaxPool2d, before: nn.Module) -> None:
    """The stem max pool, which follows the stem activation `before` in timm's ResNet."""
    kernel, stride, padding = pool.kernel_size, pool.stride, pool.padding
    if not all(isinstance(v, int) for v in (kernel, stride, padding, pool.dilation)):
        raise ConfigError(f"the spconv backend needs a square max pool, got {pool}")
    if pool.dilation != 1 or pool.ceil_mode or stride < 2 or not 0 <= padding < kernel:
        raise ConfigError(
            f"the spconv backend needs a strided, undilated max pool whose window contains its "
            f"own site, without ceil_mode; got {pool}"
        )
    if not isinstance(before, NON_NEGATIVE_ACTIVATIONS):
        raise ConfigError(
            f"the spconv backend needs a ReLU before the stem max pool, got {before}: spconv's "
            "SparseMaxPool2d returns max(0, active inputs), which equals masked dense's max only "
            "on non-negative inputs (use model.backend=masked_dense, or replace_stem_pool=True)"
        )


def _check_module(module: nn.Module, name: str) -> None:
    def refuse(why: str) -> ConfigError:
        described = f"{type(module).__name__}({module.extra_repr()})"
        return ConfigError(f"the spconv backend cannot run {name} {described}: {why}")

    if isinstance(module, nn.Sequential):
        for child_name, child in module.named_children():
            _check_module(child, f"{name}.{child_name}")
    elif type(module) in BLOCK_STEPS:
        steps, final = BLOCK_STEPS[type(module)]
        known = {*steps, final, *BLOCK_EXTRAS, "downsample"}
        unknown = sorted({child for child, _ in module.named_children()} - known)
        if unknown:
            raise refuse(f"unknown block parts {unknown}")
        for extra in BLOCK_EXTRAS:
            part = getattr(module, extra, None)
            if part is not None and not isinstance(part, nn.Identity):
                raise refuse(
                    f"{extra} is not supported (squeeze-excitation pools over masked sites, "
                    "stochastic depth and drop-block draw randomness, anti-aliasing blurs)"
                )
        for step in (*steps, final):
            _check_module(getattr(module, step), f"{name}.{step}")
        if module.downsample is not None:
            _check_module(module.downsample, f"{name}.downsample")
    elif isinstance(module, nn.Conv2d):
        (kernel, kernel_w), (stride, stride_w) = module.kernel_size, module.stride
        padding = module.padding if isinstance(module.padding, tuple) else (-1, -1)
        if module.groups != 1:
            raise refuse("grouped convolution; spconv 2.3 asserts groups == 1")
        if module.dilation != (1, 1) or module.padding_mode != "zeros":
            raise refuse("dilated or non-zero-padded convolution")
        if kernel != kernel_w or stride != stride_w or padding[0] != padding[1]:
            raise refuse("non-square kernel, stride or padding")
        if stride == 1 and (kernel % 2 == 0 or padding[0] != kernel // 2):
            raise refuse("a stride-1 convolution must have an odd kernel and 'same' padding")
        if stride > 1 and not 0 <= padding[0] < kernel:
            raise refuse("a strided convolution's window must contain its own site")
    elif isinstance(module, nn.AvgPool2d):
        kernel, stride, padding = module.kernel_size, module.stride, module.padding
        if not all(isinstance(v, int) for v in (kernel, stride, padding)):
            raise refuse("pool sizes must be plain integers (square windows)")
        if kernel != stride or padding != 0:
            raise refuse("only non-overlapping average pooling (kernel == stride, no padding)")
    elif type(module) is not nn.BatchNorm2d and not isinstance(
        module, (nn.Identity, *POINTWISE_ACTIVATIONS)
    ):
        raise refuse(f"no sparse equivalent for {type(module).__name__}")


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run spconv's CPU kernels on one thread: with torch's intra-op threads they race (spconv
    2.3.8's submanifold and regular convolutions return wrong sums with 2 threads)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class Sites:
    """The active sites at one resolution, in row-major (batch, y, x) order."""

    visible: Tensor  # [B, H, W] bool
    indices: Tensor  # [n, 3] int32: batch, y, x (spconv's layout)
    position: Tensor  # [B, H, W] int64: the row of each active site, -1 elsewhere
    indice_dict: dict = field(default_factory=dict)  # spconv's submanifold pairs, reused

    @classmethod
    def of(cls, visible: Tensor) -> Sites:
        indices = visible.nonzero()
        position = torch.full(visible.shape, -1, dtype=torch.long, device=visible.device)
        position[visible] = torch.arange(len(indices), device=visible.device)
        # contiguous: spconv reads the raw memory, and `nonzero` may return it column-major.
        return cls(visible, indices.int().contiguous(), position)

    @property
    def shape(self) -> list[int]:
        return list(self.visible.shape[1:])


@dataclass
class SparseMap:
    """Feature rows `[n, C]` at the sites of `sites`."""

    features: Tensor
    sites: Sites


class SpconvResNet:
    """Runs a timm ResNet's parameters as spconv operators (see the module docstring).

    A plain object (not a module): it holds no parameters, only spconv operator objects whose
    own weights are dropped; each call reads the weights from the timm model it is given.
    """

    def __init__(self, model: nn.Module) -> None:
        check_supported(model)
        import_spconv()
        from spconv.cppconstants import CPU_ONLY_BUILD

        self.cpu_only_build = bool(CPU_ONLY_BUILD)
        self._operators: dict[tuple, Any] = {}

    def __call__(self, model: nn.Module, image: Tensor, visible: Tensor) -> list[Tensor]:
        """The stride 4, 8, 16 and 32 maps of `model` on `image` `[B, 3, H, W]` where the
        stride-32 mask `visible` `[B, 1, h, w]` holds; dense, zeros at masked sites."""
        needs_grad = image.requires_grad or any(p.requires_grad for p in model.parameters())
        if image.device.type == "cpu" and torch.is_grad_enabled() and needs_grad:
            raise ConfigError(
                "spconv's CPU backward pass needs a CUDA driver, so the spconv backend trains on "
                "CUDA only: use model.backend=masked_dense on CPU, or run without gradients "
                "(torch.no_grad())"
            )
        if image.is_cuda and self.cpu_only_build:
            raise ConfigError(f"spconv's CPU build cannot run CUDA tensors; {INSTALL_HINT}")
        run = _Pass(self, visible)
        x = run.to_sparse(image)
        for name in ("conv1", "bn1", "act1", "maxpool"):
            x = run(getattr(model, name), x)
        maps = []
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            x = run(layer, x)
            maps.append(run.densify(x))
        return maps

    @property
    def spconv(self) -> Any:
        """`spconv.pytorch` (a property, not an attribute, so the encoder stays deep-copyable)."""
        return import_spconv()

    def operator(self, key: tuple, device: torch.device) -> Any:
        """The spconv operator for `key` on `device`, made once. `key` is ("subm" | "conv",
        in, out, k, stride, padding) or ("maxpool", k, stride, padding)."""
        if (key, device.type) not in self._operators:
            spconv = self.spconv
            # spconv picks its CUDA implicit-GEMM algorithm by default; CPU tensors need Native.
            algo = spconv.ConvAlgo.Native if device.type == "cpu" else None
            if key[0] == "maxpool":
                operator = spconv.SparseMaxPool2d(*key[1:], algo=algo)
            else:
                kind, channels_in, channels_out, kernel, stride, padding = key
                if kind == "subm":
                    operator = spconv.SubMConv2d(
                        channels_in, channels_out, kernel, padding=padding, bias=False,
                        indice_key=f"subm{kernel}", algo=algo,
                    )  # fmt: skip
                else:
                    operator = spconv.SparseConv2d(
                        channels_in, channels_out, kernel, stride=stride, padding=padding,
                        bias=False, algo=algo,
                    )  # fmt: skip
                expected = [channels_out, kernel, kernel, channels_in]
                if list(operator.weight.shape) != expected:
                    raise RuntimeError(
                        f"spconv weight layout {list(operator.weight.shape)}, expected "
                        f"[out, kh, kw, in] = {expected}"
                    )
                del operator.weight, operator.bias  # the timm weights are passed at each call
            self._operators[key, device.type] = operator
        return self._operators[key, device.type]


class _Pass:
    """One masked forward pass: the site sets of each resolution and the module interpreter."""

    def __init__(self, backend: SpconvResNet, visible: Tensor) -> None:
        self.backend = backend
        self.spconv = backend.spconv
        self.active = ActiveSites()
        self.active.set(visible)
        self._sites: dict[tuple[int, int], Sites] = {}

    def sites(self, height: int, width: int) -> Sites:
        if (height, width) not in self._sites:
            self._sites[height, width] = Sites.of(self.active.at(height, width)[:, 0])
        return self._sites[height, width]

    def to_sparse(self, image: Tensor) -> SparseMap:
        sites = self.sites(*image.shape[-2:])
        return SparseMap(image.permute(0, 2, 3, 1)[sites.visible], sites)

    def densify(self, x: SparseMap) -> Tensor:
        """`[B, C, H, W]` with the feature rows at their sites and zeros elsewhere."""
        dense = x.features.new_zeros(*x.sites.visible.shape, x.features.shape[1])
        dense[x.sites.visible] = x.features
        return dense.permute(0, 3, 1, 2)

    def __call__(self, module: nn.Module, x: SparseMap) -> SparseMap:
        if isinstance(module, nn.Sequential):
            for child in module:
                x = self(child, x)
            return x
        if type(module) in BLOCK_STEPS:
            return self.block(module, x)
        if isinstance(module, nn.Conv2d):
            return self.conv(module, x)
        if type(module) is nn.BatchNorm2d:
            return SparseMap(batch_norm_rows(module, x.features), x.sites)
        if isinstance(module, nn.MaxPool2d):
            return self.max_pool(module, x)
        if isinstance(module, nn.AvgPool2d):
            return self.avg_pool(module, x)
        if isinstance(module, nn.Identity):
            return x
        if isinstance(module, POINTWISE_ACTIVATIONS):
            return SparseMap(module(x.features), x.sites)
        raise RuntimeError(f"the spconv backend has no sparse equivalent for {module}")

    def block(self, block: nn.Module, x: SparseMap) -> SparseMap:
        steps, final = BLOCK_STEPS[type(block)]
        out = x
        for step in steps:
            out = self(getattr(block, step), out)
        shortcut = x if block.downsample is None else self(block.downsample, x)
        if out.sites is not shortcut.sites:
            raise RuntimeError("a residual block's branches ended on different site sets")
        return self(getattr(block, final), SparseMap(out.features + shortcut.features, out.sites))

    def conv(self, conv: nn.Conv2d, x: SparseMap) -> SparseMap:
        kernel, stride, padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        weight = conv.weight.to(x.features.dtype)
        if kernel == 1 and stride == 1:
            return SparseMap(F.linear(x.features, weight.flatten(1), conv.bias), x.sites)
        kind = "subm" if stride == 1 else "conv"
        operator = self.backend.operator(
            (kind, conv.in_channels, conv.out_channels, kernel, stride, padding),
            x.features.device,
        )
        tensor = self.spconv.SparseConvTensor(
            x.features.contiguous(), x.sites.indices, x.sites.shape, x.sites.visible.shape[0],
            indice_dict=x.sites.indice_dict,
        )  # fmt: skip
        # spconv differentiates only when `training` is passed; its weight is [out, kh, kw, in].
        with one_cpu_thread(x.features.device):
            out = operator._conv_forward(
                torch.is_grad_enabled(), tensor, weight.permute(0, 2, 3, 1).contiguous(), conv.bias
            )
        if stride == 1:
            x.sites.indice_dict = out.indice_dict
            return SparseMap(out.features, x.sites)
        return self.restrict(out)

    def restrict(self, out: Any) -> SparseMap:
        """The outputs of a strided spconv operator at the visible sites of its (coarser) grid,
        in row-major order; those at masked sites are dropped (masked dense zeroes them)."""
        target = self.sites(*out.spatial_shape)
        rows = target.position[tuple(out.indices.long().unbind(1))]
        source = (rows >= 0).nonzero().squeeze(1)
        if len(source) != len(target.indices):
            raise RuntimeError(
                f"a strided sparse operator reached {len(source)} of the "
                f"{len(target.indices)} visible sites of its output grid"
            )
        order = torch.empty_like(source)
        order[rows[source]] = source
        return SparseMap(out.features[order], target)

    def max_pool(self, pool: nn.MaxPool2d, x: SparseMap) -> SparseMap:
        """spconv's max over the active sites of each window. Its maximum starts from zero, and
        masked dense's also sees the zeros of masked sites: on the non-negative inputs that
        `check_supported` requires, both equal the max over the active sites."""
        key = ("maxpool", pool.kernel_size, pool.stride, pool.padding)
        operator = self.backend.operator(key, x.features.device)
        tensor = self.spconv.SparseConvTensor(
            x.features.contiguous(), x.sites.indices, x.sites.shape, x.sites.visible.shape[0]
        )
        with one_cpu_thread(x.features.device):
            return self.restrict(operator(tensor))

    def avg_pool(self, pool: nn.AvgPool2d, x: SparseMap) -> SparseMap:
        """Mean of each k x k window's rows, gathered by position (hand-written: spconv's
        `SparseAvgPool2d` exists only on the CUDA build's implicit-GEMM path). A window of a
        non-overlapping pool never crosses a mask block, so all its k*k sites are active."""
        size = pool.kernel_size
        height, width = x.sites.shape
        target = self.sites(height // size, width // size)
        batch, y, x_ = target.indices.long().unbind(1)
        rows = torch.stack(
            [
                x.sites.position[batch, size * y + dy, size * x_ + dx]
                for dy, dx in product(range(size), range(size))
            ]
        )
        if (rows < 0).any():
            raise RuntimeError("an average-pool window holds a masked site")
        return SparseMap(x.features[rows].mean(0), target)
