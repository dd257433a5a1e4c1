"""Tests of attention pooling with a learned context vector."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo.attention.pooling import AttentionPooling


def lengths_mask(lengths: list[int], seq: int) -> torch.Tensor:
    return torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]


def test_output_shape():
    pool = AttentionPooling(8, hidden_dim=5)
    x = torch.randn(3, 7, 8)
    pooled, weights = pool(x, return_weights=True)
    assert pooled.shape == (3, 8) and weights.shape == (3, 7)
    assert pool.proj.weight.shape == (5, 8) and pool.context.shape == (5,)


def test_equals_hand_formula():
    torch.manual_seed(0)
    pool = AttentionPooling(6, hidden_dim=4).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    mask = lengths_mask([5, 3, 1], 5)
    pooled, weights = pool(x, mask, return_weights=True)
    for b in range(3):
        h = x[b, mask[b]]  # (len, dim): real tokens only
        u = torch.tanh(h @ pool.proj.weight.T + pool.proj.bias)
        scores = u @ pool.context
        a = scores.exp() / scores.exp().sum()
        torch.testing.assert_close(weights[b, mask[b]], a, rtol=0, atol=1e-12)
        torch.testing.assert_close(pooled[b], a @ h, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    normalizer=st.sampled_from(["softmax", "sparsemax", "entmax15"]),
    seed=st.integers(0, 2**16),
)
def test_weights_sum_to_one_over_real_tokens_and_zero_on_padding(lengths, normalizer, seed):
    torch.manual_seed(seed)
    pool = AttentionPooling(4, normalizer=normalizer)
    mask = lengths_mask(lengths, 6)
    pooled, weights = pool(torch.randn(len(lengths), 6, 4), mask, return_weights=True)
    assert (weights[~mask] == 0).all()
    assert (weights >= 0).all()
    expected = (torch.tensor(lengths) > 0).float()
    torch.testing.assert_close(weights.sum(-1), expected)
    assert torch.isfinite(pooled).all()


def test_fully_masked_sequence_gives_zero_vector_and_finite_gradients():
    torch.manual_seed(1)
    pool = AttentionPooling(4)
    x = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[False, False, False], [True, True, False]])
    pooled, weights = pool(x, mask, return_weights=True)
    assert torch.equal(pooled[0], torch.zeros(4)) and torch.equal(weights[0], torch.zeros(3))
    pooled.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[0], torch.zeros(3, 4))
    for p in pool.parameters():
        assert torch.isfinite(p.grad).all()


def test_padded_content_does_not_affect_output():
    torch.manual_seed(2)
    pool = AttentionPooling(4)
    x = torch.randn(2, 5, 4)
    mask = lengths_mask([2, 4], 5)
    garbage = x.masked_fill(~mask[..., None], float("nan"))
    garbage[0, 4] = float("inf")
    torch.testing.assert_close(pool(x, mask), pool(garbage, mask), rtol=0, atol=0)


def test_no_mask_equals_all_true_mask():
    torch.manual_seed(3)
    pool = AttentionPooling(4)
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(pool(x), pool(x, torch.ones(2, 5, dtype=torch.bool)))


def test_sparsemax_gives_sparse_weights():
    torch.manual_seed(4)
    pool = AttentionPooling(8, normalizer="sparsemax")
    with torch.no_grad():
        pool.context.mul_(30.0)  # large score gaps: sparsemax truncates
    x = torch.randn(4, 10, 8)
    mask = lengths_mask([10, 9, 7, 10], 10)
    _, weights = pool(x, mask, return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))
    assert ((weights == 0) & mask).any()


def test_entmax_options_are_forwarded():
    torch.manual_seed(5)
    x = torch.randn(2, 6, 4)
    near_softmax = AttentionPooling(4, normalizer="entmax", alpha=1.0001)
    reference = AttentionPooling(4)
    reference.load_state_dict(near_softmax.state_dict())
    _, w = near_softmax(x, return_weights=True)
    _, w_ref = reference(x, return_weights=True)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-3)


def test_gradients_reach_all_parameters():
    torch.manual_seed(6)
    pool = AttentionPooling(4, hidden_dim=3)
    pool(torch.randn(2, 5, 4)).square().sum().backward()
    for name, p in pool.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    torch.manual_seed(7)
    pool = AttentionPooling(4)
    x = torch.randn(2, 5, 4)
    mask = lengths_mask([5, 0], 5)
    expected = pool(x, mask)
    out, weights = pool.to(dtype)(x.to(dtype), mask, return_weights=True)
    assert out.dtype == dtype and weights.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=3e-2)


def test_errors_name_the_argument():
    pool = AttentionPooling(4)
    with pytest.raises(ValueError, match="`x`.*3 dimensions"):
        pool(torch.randn(5, 4))
    with pytest.raises(ValueError, match="`x`.*dim = 4"):
        pool(torch.randn(2, 5, 3))
    with pytest.raises(TypeError, match="`mask`"):
        pool(torch.randn(2, 5, 4), torch.ones(2, 5))
    with pytest.raises(ValueError, match="`mask`"):
        pool(torch.randn(2, 5, 4), torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="`normalizer`"):
        AttentionPooling(4, normalizer="nope")
    with pytest.raises(ValueError, match="`hidden_dim`"):
        AttentionPooling(4, hidden_dim=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_matches_cpu(self, dtype):
        torch.manual_seed(8)
        pool = AttentionPooling(8)
        x = torch.randn(3, 6, 8)
        mask = lengths_mask([6, 2, 0], 6)
        expected = pool(x, mask)
        out = pool.to("cuda", dtype)(x.to("cuda", dtype), mask.cuda())
        assert out.device.type == "cuda" and out.dtype == dtype
        atol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(out.float().cpu(), expected, rtol=0, atol=atol)
