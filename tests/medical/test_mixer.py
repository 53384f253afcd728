"""Our Mamba mixer against `transformers`' `MambaMixer` with the same weights."""

from __future__ import annotations

import torch
from omnimask_medical.ssm.mixer import MambaMixer
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer


def matched_pair() -> tuple[MambaMixer, HFMambaMixer]:
    torch.manual_seed(0)
    ours = MambaMixer(d_model=16, d_state=8, d_conv=4, expand=2).double()
    config = MambaConfig(
        hidden_size=16, state_size=8, conv_kernel=4, expand=2, time_step_rank=ours.dt_rank,
        use_bias=False, use_conv_bias=True, num_hidden_layers=1,
    )  # fmt: skip
    theirs = HFMambaMixer(config, layer_idx=0).double()
    state = {k.replace("directions.0.", ""): v for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)
    return ours, theirs.eval()


def test_outputs_and_gradients_equal_transformers() -> None:
    ours, theirs = matched_pair()
    x = torch.randn(2, 37, 16, dtype=torch.float64, requires_grad=True)
    out = ours(x)
    torch.testing.assert_close(out, theirs(x), rtol=1e-9, atol=1e-9)
    ours_grad = torch.autograd.grad(out.square().sum(), (x, ours.directions[0].A_log))
    theirs_grad = torch.autograd.grad(theirs(x).square().sum(), (x, theirs.A_log))
    for a, b in zip(ours_grad, theirs_grad):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_the_scan_is_causal_and_bidirectional_mixing_is_not() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 20, 8, requires_grad=True)
    causal = MambaMixer(8, d_state=4)
    (grad,) = torch.autograd.grad(causal(x)[0, 5].sum(), x)
    assert grad[0, 6:].abs().max() == 0 and grad[0, :6].abs().max() > 0
    both = MambaMixer(8, d_state=4, bidirectional=True)
    (grad,) = torch.autograd.grad(both(x)[0, 5].sum(), x)
    assert grad[0, 6:].abs().max() > 0
