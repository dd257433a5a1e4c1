"""Pointer network: the pointer is a distribution over allowed inputs; it learns to sort."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo.pointer_network import (
    PointerNetwork,
    PointerNetworkConfig,
    run_pointer_demo,
    sort_accuracy,
)


def _model(mask_pointed: bool = True) -> PointerNetwork:
    return PointerNetwork(
        PointerNetworkConfig(input_dim=2, hidden_size=16, mask_pointed=mask_pointed)
    )


def test_distribution_sums_to_one_over_unmasked_and_is_zero_on_padding() -> None:
    model = _model(mask_pointed=False)
    inputs = torch.randn(3, 6, 2)
    mask = torch.arange(6)[None, :] < torch.tensor([[6], [4], [2]])
    targets = torch.tensor([[0, 5, 1], [3, 2, 0], [1, 0, 1]])
    out = model(inputs, targets, mask)
    assert out.probs.shape == (3, 3, 6) and out.log_probs.shape == (3, 3, 6)
    assert torch.allclose(out.probs.sum(-1), torch.ones(3, 3), atol=1e-6)
    padded = ~mask[:, None, :].expand(-1, 3, -1)
    assert (out.probs[padded] == 0).all()
    assert torch.isneginf(out.log_probs[padded]).all()
    assert torch.allclose(out.log_probs.exp(), out.probs, atol=1e-6)
    # Teacher forcing: the fed pointers are the targets.
    assert torch.equal(out.pointers, targets)


def test_pointed_positions_are_masked_and_greedy_decoding_is_a_permutation() -> None:
    model = _model()
    inputs = torch.randn(4, 5, 2)
    out = model(inputs)
    assert sorted(out.pointers[0].tolist()) == list(range(5))
    for row in out.pointers:
        assert sorted(row.tolist()) == list(range(5))
    # Once pointed at, a position gets exactly zero probability at every later step.
    for b in range(4):
        for i, p in enumerate(out.pointers[b].tolist()):
            assert (out.probs[b, i + 1 :, p] == 0).all()
    # The last step has a single allowed position: probability exactly 1.
    assert torch.equal(out.probs[:, -1].max(-1).values, torch.ones(4))


def test_padded_batch_decodes_each_row_as_a_permutation_of_its_length() -> None:
    model = _model()
    lengths = torch.tensor([5, 3])
    mask = torch.arange(5)[None, :] < lengths[:, None]
    out = model(torch.randn(2, 5, 2), mask=mask)
    assert sorted(out.pointers[0].tolist()) == list(range(5))
    assert sorted(out.pointers[1, :3].tolist()) == [0, 1, 2]
    assert out.pointers[1, 3:].tolist() == [-1, -1]
    assert (out.probs[1, 3:] == 0).all() and not out.probs.isnan().any()


def test_padding_does_not_change_the_result_of_a_row() -> None:
    model = _model().eval()
    inputs = torch.randn(1, 3, 2)
    padded = torch.cat([inputs, torch.randn(1, 2, 2)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    short = model(inputs)
    long = model(padded, mask=mask, max_len=3)
    assert torch.allclose(short.probs, long.probs[..., :3], atol=1e-6)


def test_loss_is_finite_and_gradients_reach_every_parameter() -> None:
    model = _model()
    inputs = torch.randn(3, 4, 2)
    mask = torch.arange(4)[None, :] < torch.tensor([[4], [3], [2]])
    targets = torch.tensor([[1, 0, 3, 2], [2, 0, 1, 0], [1, 0, 0, 0]])
    loss = model.loss(inputs, targets, mask)
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_errors_name_the_argument() -> None:
    model = _model()
    with pytest.raises(ValueError, match="inputs"):
        model(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="inputs"):
        model(torch.randn(5, 2))
    with pytest.raises(ValueError, match="targets.*got 5"):
        model(torch.randn(2, 5, 2), torch.tensor([[0, 5], [1, 2]]))
    with pytest.raises(TypeError, match="mask"):
        model(torch.randn(2, 5, 2), mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="mask"):
        model(torch.randn(2, 5, 2), mask=torch.tensor([[True, False, True, True, True]] * 2))
    with pytest.raises(ValueError, match="hidden_size"):
        PointerNetworkConfig(hidden_size=0)


def test_sort_accuracy_counts_positions_and_sequences() -> None:
    pointers = torch.tensor([[0, 1, 2], [2, 1, 0]])
    order = torch.tensor([[0, 1, 2], [2, 0, 1]])
    assert sort_accuracy(pointers, order) == pytest.approx((4 / 6, 1 / 2))


@pytest.mark.slow
def test_pointer_network_learns_to_sort_numbers() -> None:
    # Untrained, greedy decoding gets about 1/n of the positions right (20% at n = 5).
    metrics = run_pointer_demo(progress=False, seed=0)
    assert metrics["is_permutation"] == 1.0
    assert metrics["position_accuracy"] >= 0.95
    assert metrics["sequence_accuracy"] >= 0.85


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_pointer_runs_in_every_dtype_on_every_device(
    dtype: torch.dtype, device: torch.device
) -> None:
    model = _model().to(device=device, dtype=dtype)
    out = model(torch.randn(2, 4, 2, dtype=dtype, device=device))
    assert out.probs.dtype == dtype and out.probs.device.type == device.type
    assert torch.allclose(out.probs.float().sum(-1), torch.ones(2, 4, device=device), atol=1e-2)
    for row in out.pointers.cpu():
        assert sorted(row.tolist()) == [0, 1, 2, 3]
