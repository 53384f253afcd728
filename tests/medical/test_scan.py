"""The chunked selective scan against the step-by-step recurrence, forward and backward."""

from __future__ import annotations

import pytest
import torch
from omnimask_medical.ssm.scan import (
    chunked_selective_scan,
    selective_scan_reference,
)


def scan_inputs(
    length: int, *, batch: int = 2, channels: int = 6, states: int = 4, groups: int | None = None,
    dtype: torch.dtype = torch.float64, seed: int = 0,
) -> dict[str, torch.Tensor]:  # fmt: skip
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    selective = (batch, states, length) if groups is None else (batch, groups, states, length)
    return {
        "u": randn(batch, channels, length),
        "delta": randn(batch, channels, length),
        "A": -torch.rand(channels, states, generator=g, dtype=dtype) * 4 - 0.1,
        "B": randn(*selective),
        "C": randn(*selective),
        "D": randn(channels),
        "z": randn(batch, channels, length),
        "delta_bias": randn(channels),
    }


OPTIONS = [
    {"delta_softplus": True},
    {"delta_softplus": False, "D": None, "z": None, "delta_bias": None},
    {"delta_softplus": True, "z": None},
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("length", [1, 7, 64, 150])
@pytest.mark.parametrize("groups", [None, 2])
def test_forward_and_last_state_equal_the_recurrence(options, length, groups) -> None:
    inputs = scan_inputs(length, groups=groups)
    inputs.update(options)
    if not inputs["delta_softplus"]:
        inputs["delta"] = inputs["delta"].abs()  # a valid (positive) step size
    ours, ours_state = chunked_selective_scan(**inputs, return_last_state=True, chunk=16)
    ref, ref_state = selective_scan_reference(**inputs, return_last_state=True)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours_state, ref_state, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups", [None, 3])
def test_gradients_equal_the_recurrence(groups) -> None:
    inputs = scan_inputs(45, groups=groups)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if v is not None}
    weights = torch.randn(2, 6, 45, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = []
    for scan in (chunked_selective_scan, selective_scan_reference):
        for leaf in leaves.values():
            leaf.grad = None
        (scan(**leaves, delta_softplus=True) * weights).sum().backward()
        grads.append({k: v.grad.clone() for k, v in leaves.items()})
    for name in leaves:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-9)


def test_gradcheck() -> None:
    inputs = scan_inputs(10, batch=1, channels=2, states=3)
    leaves = tuple(v.requires_grad_() for v in inputs.values())
    keys = tuple(inputs)

    def scan(*values: torch.Tensor) -> torch.Tensor:
        return chunked_selective_scan(**dict(zip(keys, values)), delta_softplus=True, chunk=4)

    assert torch.autograd.gradcheck(scan, leaves)

    def last_state(*values: torch.Tensor) -> torch.Tensor:
        arguments = dict(zip(keys, values))
        return chunked_selective_scan(
            **arguments, delta_softplus=True, chunk=4, return_last_state=True
        )[1]

    assert torch.autograd.gradcheck(last_state, leaves)


def test_long_float32_sequences_and_large_steps_stay_finite_and_exact() -> None:
    inputs = scan_inputs(4096, batch=1, channels=4, states=8, dtype=torch.float64, seed=3)
    inputs["delta"] = inputs["delta"] * 20  # softplus(20 x) up to ~100: decays of exp(-400)
    ref = selective_scan_reference(**inputs, delta_softplus=True)
    single = {k: v.float() for k, v in inputs.items()}
    ours = chunked_selective_scan(**single, delta_softplus=True)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
def test_mamba_ssm_kernel_equals_ours() -> None:
    pytest.importorskip("mamba_ssm")
    from omnimask_medical.ssm.scan import selective_scan

    inputs = {k: v.float().cuda() for k, v in scan_inputs(300).items()}
    kernel = selective_scan(**inputs, delta_softplus=True)
    ours = chunked_selective_scan(**inputs, delta_softplus=True)
    torch.testing.assert_close(kernel, ours, rtol=1e-3, atol=1e-3)
