"""SparK's spconv backend against the masked-dense one: the same feature maps (and batch-norm
running statistics) from the same timm weights on random masks, the same recipe loss, and a
clear refusal of what spconv cannot run. spconv's CPU build runs forward passes only, so the
gradient comparison is a CUDA test."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from omnimask.config import ConfigError
from omnimask_vision.recipes import SparkRecipe
from omnimask_vision.sparse import SparseCNNEncoder
from omnimask_vision.tokenizer import ImagePatchTokenizer

spconv = pytest.importorskip("spconv.pytorch", reason="spconv wheels exist for Linux x86-64 only")

SIDE = 96  # a 3x3 grid of 32x32 mask cells
RESNETS = {
    "resnet18": ("resnet18", {"channels": [8, 16, 32, 64]}),
    "resnet50": ("resnet50", {"channels": [4, 8, 16, 32]}),
    "resnet26d_deep_stem_avg_down": ("resnet26d", {"channels": [4, 8, 16, 32], "stem_width": 8}),
    # SiLU / GELU can be negative: exercises activations other than ReLU (no stem max pool then).
    "resnet18_silu_conv_stem_pool": (
        "resnet18",
        {"channels": [8, 16, 32, 64], "act_layer": "silu", "replace_stem_pool": True},
    ),
    "resnet26_gelu_deep_stem_conv_pool": (
        "resnet26",
        {
            "channels": [4, 8, 16, 32],
            "act_layer": "gelu",
            "stem_type": "deep",
            "stem_width": 8,
            "avg_down": True,
            "replace_stem_pool": True,
        },
    ),
}


def twin_encoders(kind: str, device: str = "cpu") -> tuple[SparseCNNEncoder, SparseCNNEncoder]:
    """(masked dense, spconv) encoders on copies of one randomly initialised timm model, with
    non-trivial batch-norm statistics and affine parameters."""
    name, kwargs = RESNETS[kind]
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    twin = timm.create_model(name, pretrained=False, **kwargs)
    twin.load_state_dict(model.state_dict())
    return (
        SparseCNNEncoder(model, "masked_dense").to(device),
        SparseCNNEncoder(twin, "spconv").to(device),
    )


def random_batch(seed: int, size: int = 4, device: str = "cpu") -> tuple:
    """Images and SparK masks (5 of 9 cells hidden per image, as the recipe's 60% draws), the
    last image fully visible."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(size, 3, SIDE, SIDE, generator=generator).to(device)
    tokens = ImagePatchTokenizer(32)({"image": image})
    mask = torch.rand(size, tokens.num_tokens, generator=generator).argsort(1) < 5
    mask[-1] = False
    return tokens, mask.to(device)


def hidden_at(mask: torch.Tensor, side: int) -> torch.Tensor:
    factor = side // 3
    grid = mask.view(mask.shape[0], 1, 3, 3)
    return grid.repeat_interleave(factor, 2).repeat_interleave(factor, 3)


@pytest.mark.parametrize("kind", list(RESNETS))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_spconv_feature_maps_equal_masked_dense(kind: str, train: bool) -> None:
    dense, sparse = twin_encoders(kind)
    dense.train(train)
    sparse.train(train)
    for seed in (1, 2):
        tokens, mask = random_batch(seed)
        with torch.no_grad():  # spconv's CPU build has no backward pass
            expected = dense(tokens, mask)
            got = sparse(tokens, mask)
        assert [f.shape for f in got] == [f.shape for f in expected]
        # Batch statistics over ~10 sites at stride 32 amplify float32 summation-order noise.
        atol = 1e-3 if train else 2e-4
        for ours, reference in zip(got, expected):
            torch.testing.assert_close(ours, reference, atol=atol, rtol=1e-4)
            hidden = hidden_at(mask, ours.shape[-1]).expand_as(ours)
            assert ours[hidden].abs().max() == 0
    modules = zip(dense.model.modules(), sparse.model.modules())
    for ours, reference in ((b, a) for a, b in modules if isinstance(a, torch.nn.BatchNorm2d)):
        # running statistics moved (train) or kept (eval) identically: same sites normalised
        torch.testing.assert_close(ours.running_mean, reference.running_mean, atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.running_var, reference.running_var, atol=2e-4, rtol=1e-4)


def test_spconv_is_exact_with_several_cpu_threads() -> None:
    """spconv's CPU kernels race on several threads; the backend runs them on one."""
    dense, sparse = twin_encoders("resnet18")
    tokens, mask = random_batch(5)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            expected, got = dense(tokens, mask), sparse(tokens, mask)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(threads)
    for ours, reference in zip(got, expected):
        torch.testing.assert_close(ours, reference, atol=2e-4, rtol=1e-4)


def test_recipe_backends_give_the_same_loss() -> None:
    recipe = SparkRecipe()
    config = recipe.config("demo")
    torch.manual_seed(0)
    dense = recipe.build_model(config).eval()
    config.model.backend = "spconv"
    sparse = recipe.build_model(config).eval()
    # same state-dict keys: the spconv backend adds no parameters and leaves timm's names alone
    sparse.load_state_dict(dense.state_dict())
    ema = copy.deepcopy(sparse)  # as EMA teachers are made
    images = torch.randn(3, 3, config.image.size, config.image.size)
    with torch.no_grad():
        losses = [
            model({"image": images}, torch.Generator().manual_seed(4))["loss"]
            for model in (dense, sparse, ema)
        ]
    for loss in losses[1:]:
        torch.testing.assert_close(loss, losses[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("convnext_atto", {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}, "groups == 1"),
        (
            "resnet26",
            {"channels": [4, 8, 16, 32], "cardinality": 2, "base_width": 64},
            r"layer1\.0\.conv2 .*grouped convolution",
        ),
        ("seresnet18", {"channels": [8, 16, 32, 64]}, r"layer1\.0 .*se is not supported"),
        ("resnet18", {"channels": [8, 16, 32, 64], "act_layer": "silu"}, "ReLU before the stem"),
        ("resnet18", {"channels": [8, 16, 32, 64], "output_stride": 16}, "dilated"),
    ],
    ids=["convnext", "resnext", "squeeze_excitation", "silu_max_pool", "dilated"],
)
def test_unsupported_models_are_refused(name: str, kwargs: dict, message: str) -> None:
    model = timm.create_model(name, pretrained=False, **kwargs)
    with pytest.raises(ConfigError, match=message):
        SparseCNNEncoder(model, "spconv")


def test_unknown_backend_and_cpu_training_are_refused() -> None:
    model = timm.create_model("resnet18", pretrained=False, channels=[8, 16, 32, 64])
    with pytest.raises(ConfigError, match="unknown SparK backend 'sparse'"):
        SparseCNNEncoder(model, "sparse")
    encoder = SparseCNNEncoder(model, "spconv")
    tokens, mask = random_batch(0, size=2)
    with pytest.raises(ConfigError, match="trains on CUDA only"):
        encoder(tokens, mask)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["resnet18", "resnet26d_deep_stem_avg_down"])
def test_spconv_gradients_equal_masked_dense_on_cuda(kind: str) -> None:
    from spconv.cppconstants import CPU_ONLY_BUILD

    if CPU_ONLY_BUILD:
        pytest.skip("spconv's CPU build is installed; install its CUDA build (spconv-cu12x)")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    dense, sparse = twin_encoders(kind, "cuda")
    grads = []
    for encoder in (dense.train(), sparse.train()):
        tokens, mask = random_batch(3, device="cuda")
        image = tokens.extras["image"].requires_grad_(True)
        features = encoder(tokens, mask)
        generator = torch.Generator().manual_seed(5)
        weights = [torch.randn(f.shape, generator=generator).cuda() for f in features]
        sum(f.mul(w).sum() for f, w in zip(features, weights)).backward()
        named = {name: p.grad for name, p in encoder.model.named_parameters()}
        grads.append({"image": image.grad, **named})
    expected, got = grads
    assert expected.keys() == got.keys()
    for name, reference in expected.items():
        scale = reference.abs().max().item()
        torch.testing.assert_close(got[name], reference, rtol=1e-3, atol=1e-3 * scale, msg=name)
