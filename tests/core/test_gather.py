"""Gather/scatter of visible tokens against Python-loop references; gradients flow."""

import pytest
import torch
from omnimask.gather import gather_tokens, mask_to_indices, scatter_tokens
from omnimask.masking import random_mask


def test_mask_to_indices_matches_loops():
    mask = random_mask(4, 10, 0.6, torch.Generator().manual_seed(0))
    visible, masked = mask_to_indices(mask)
    assert visible.shape == (4, 4) and masked.shape == (4, 6)
    for row in range(4):
        assert visible[row].tolist() == [i for i in range(10) if not mask[row, i]]
        assert masked[row].tolist() == [i for i in range(10) if mask[row, i]]


def test_mask_to_indices_edge_ratios():
    visible, masked = mask_to_indices(torch.zeros(2, 5, dtype=torch.bool))
    assert visible.tolist() == [list(range(5))] * 2 and masked.shape == (2, 0)
    visible, masked = mask_to_indices(torch.ones(2, 5, dtype=torch.bool))
    assert visible.shape == (2, 0) and masked.tolist() == [list(range(5))] * 2


def test_mask_to_indices_names_unequal_rows():
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match=r"row 0 hides 1 but rows \[1, 3\] hide \[2, 0\]"):
        mask_to_indices(mask)
    with pytest.raises(ValueError, match="bool mask"):
        mask_to_indices(mask.long())


@pytest.mark.parametrize("rest", [(), (7,), (2, 3)])
def test_gather_tokens_matches_loop(rest):
    x = torch.randn(3, 8, *rest, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([[0, 5, 2], [7, 1, 1], [3, 4, 6]])
    out = gather_tokens(x, index)
    assert out.shape == (3, 3, *rest)
    for b in range(3):
        for k in range(3):
            assert torch.equal(out[b, k], x[b, index[b, k]])


def test_gather_tokens_gradient():
    x = torch.randn(2, 5, 4, requires_grad=True)
    index = torch.tensor([[0, 3], [4, 1]])
    gather_tokens(x, index).sum().backward()
    expected = torch.zeros(2, 5, 4)
    expected[0, [0, 3]] = 1
    expected[1, [4, 1]] = 1
    assert torch.equal(x.grad, expected)


def scatter_loop(visible, visible_index, num_tokens, fill):
    batch, _, dim = visible.shape
    out = torch.empty(batch, num_tokens, dim)
    for b in range(batch):
        positions = visible_index[b].tolist()
        hidden = [n for n in range(num_tokens) if n not in positions]
        for k, n in enumerate(positions):
            out[b, n] = visible[b, k]
        for j, n in enumerate(hidden):
            out[b, n] = fill if fill.dim() == 1 else fill[b, j]
    return out


def test_scatter_tokens_inverts_gather():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 9, 4, generator=generator)
    mask = random_mask(3, 9, 0.5, generator)
    visible_index, masked_index = mask_to_indices(mask)
    restored = scatter_tokens(
        gather_tokens(x, visible_index), visible_index, 9, gather_tokens(x, masked_index)
    )
    assert torch.equal(restored, x)


@pytest.mark.parametrize("per_position", [False, True])
def test_scatter_tokens_matches_loop_and_gradients_flow(per_position):
    generator = torch.Generator().manual_seed(3)
    visible = torch.randn(2, 3, 4, generator=generator, requires_grad=True)
    # Unsorted indices: positions come from the index, not from the order of the visible tokens.
    visible_index = torch.tensor([[4, 0, 2], [1, 5, 3]])
    shape = (2, 3, 4) if per_position else (4,)
    fill = torch.randn(*shape, generator=generator, requires_grad=True)
    out = scatter_tokens(visible, visible_index, 6, fill)
    assert torch.equal(out, scatter_loop(visible.detach(), visible_index, 6, fill.detach()))
    weights = torch.randn(2, 6, 4, generator=generator)
    (out * weights).sum().backward()
    for b in range(2):
        for k, n in enumerate(visible_index[b].tolist()):
            assert torch.equal(visible.grad[b, k], weights[b, n])
    hidden = [[1, 3, 5], [0, 2, 4]]
    hidden_weights = torch.stack([weights[b, hidden[b]] for b in range(2)])
    expected_fill_grad = hidden_weights if per_position else hidden_weights.sum(dim=(0, 1))
    torch.testing.assert_close(fill.grad, expected_fill_grad)


def test_scatter_tokens_rejects_bad_fill():
    with pytest.raises(ValueError, match="fill must be"):
        scatter_tokens(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), 6, torch.zeros(5))
