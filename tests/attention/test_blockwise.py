"""Blockwise sparse attention against the dense path and the ``entmax`` package.

Tolerances: float64 values and gradients within 1e-10 of dense ``attend`` (the same
thresholds, summed in a different order); the custom backward is gradchecked in float64,
including the gradient in alpha.
"""

from __future__ import annotations

import entmax as entmax_ref
import pytest
import torch

from attnzoo.attention import attend, blockwise_attention
from attnzoo.attention.blockwise import _TILE_ENTRIES

TOL = 1e-10
NEG_INF = float("-inf")

# (normalizer, alpha): every map the blockwise path computes, alpha > 2 included.
CASES = {
    "sparsemax": ("sparsemax", None),
    "entmax15": ("entmax15", None),
    "entmax-1.3": ("entmax", 1.3),
    "entmax-per-head": ("entmax", torch.tensor([1.05, 1.5, 1.999, 2.5]).view(1, 4, 1, 1)),
}


def qkv(*lead, n_q, n_k, d=5, d_v=3, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(*lead, n_q, d), (*lead, n_k, d), (*lead, n_k, d_v)]
    return [(2 * torch.randn(s, generator=g, dtype=dtype)).requires_grad_(grad) for s in shapes]


def alpha_leaf(alpha, dtype=torch.float64):
    if isinstance(alpha, torch.Tensor):
        return alpha.to(dtype).clone().requires_grad_()
    return alpha


def grads(out, inputs, seed=1):
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    leaves = [x for x in inputs if isinstance(x, torch.Tensor)]
    return torch.autograd.grad(out, leaves, upstream)


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("block_size", [1, 3, 5, None])
@pytest.mark.parametrize("masking", ["none", "padding", "causal", "random+causal"])
def test_matches_dense_attend_values_and_gradients(name, block_size, masking):
    normalizer, alpha = CASES[name]
    q, k, v = qkv(2, 4, n_q=7, n_k=9, grad=True)
    mask, causal = None, masking in ("causal", "random+causal")
    if masking == "padding":
        mask = torch.tensor([[True] * 6 + [False] * 3, [True] * 9]).view(2, 1, 1, 9)
    elif masking == "random+causal":
        mask = torch.rand(2, 4, 7, 9, generator=torch.Generator().manual_seed(2)) > 0.4
        mask[0, 1, 3] = False  # a query with no key at all
    ours_alpha, dense_alpha = alpha_leaf(alpha), alpha_leaf(alpha)
    common = {"normalizer": normalizer, "mask": mask, "causal": causal}
    ours = blockwise_attention(q, k, v, alpha=ours_alpha, block_size=block_size, **common)
    dense = attend(q, k, v, alpha=dense_alpha, **common)
    assert ours.shape == dense.shape == (2, 4, 7, 3)
    assert max_diff([ours], [dense]) <= TOL
    assert max_diff(grads(ours, [q, k, v, ours_alpha]), grads(dense, [q, k, v, dense_alpha])) <= TOL


def test_more_queries_than_keys_causal_and_unbatched():
    # Bottom-right causal: the first n_q - n_k queries see no key and give zeros.
    q, k, v = qkv(n_q=6, n_k=4, grad=True)
    ours = blockwise_attention(q, k, v, normalizer="entmax15", causal=True, block_size=4)
    dense = attend(q, k, v, normalizer="entmax15", causal=True)
    assert max_diff([ours], [dense]) <= TOL
    assert (ours[:2] == 0).all()
    assert max_diff(grads(ours, [q, k, v]), grads(dense, [q, k, v])) <= TOL


@pytest.mark.parametrize("normalizer", ["sparsemax", "entmax15"])
def test_weights_match_the_entmax_package(normalizer):
    q, k, v = qkv(3, n_q=6, n_k=11, d=4)
    scores = q @ k.transpose(-2, -1) * 4**-0.5
    weights = getattr(entmax_ref, normalizer)(scores, dim=-1)
    out = blockwise_attention(q, k, v, normalizer=normalizer, block_size=4)
    assert max_diff([out], [weights @ v]) <= TOL


def test_gradcheck_including_per_head_alpha():
    q, k, v = qkv(1, 2, n_q=3, n_k=4, d=2, d_v=2, grad=True)
    alpha = torch.tensor([1.3, 1.8], dtype=torch.float64).view(1, 2, 1, 1).requires_grad_()
    mask = torch.tensor([True, True, False, True]).view(1, 1, 1, 4)

    def fn(q, k, v, a):
        return blockwise_attention(q, k, v, normalizer="entmax", alpha=a, mask=mask, block_size=2)

    assert torch.autograd.gradcheck(fn, (q, k, v, alpha))


@pytest.mark.parametrize("normalizer", ["sparsemax", "entmax15"])
def test_gradcheck_fixed_alpha_causal(normalizer):
    q, k, v = qkv(2, n_q=4, n_k=4, d=3, d_v=2, grad=True)

    def fn(q, k, v):
        return blockwise_attention(q, k, v, normalizer=normalizer, causal=True, block_size=3)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_fully_masked_rows_give_zeros_and_zero_gradient():
    q, k, v = qkv(2, n_q=3, n_k=5, grad=True)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[1, 2] = False
    out = blockwise_attention(q, k, v, normalizer="sparsemax", mask=mask)
    assert torch.isfinite(out).all() and (out[1, 2] == 0).all()
    (grad_q,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(grad_q).all() and (grad_q[1, 2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_lower_precision_is_computed_in_float32(dtype):
    q, k, v = qkv(2, n_q=5, n_k=8, dtype=torch.float32)
    expected = attend(q, k, v, normalizer="entmax15")
    out = blockwise_attention(*(x.to(dtype) for x in (q, k, v)), normalizer="entmax15")
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (out.float() - expected).abs().max() <= tol * (1 + expected.abs().max())


def test_no_tensor_of_the_full_score_size_is_allocated():
    # The (n_q, n_k) float32 scores would be 256 KiB; a tile of 8 rows is 32 KiB, and the
    # largest other tensors (k, v and their gradients) are 16 KiB.
    q, k, v = qkv(1, n_q=64, n_k=1024, d=4, d_v=4, dtype=torch.float32, grad=True)
    with torch.profiler.profile(profile_memory=True) as prof:
        out = blockwise_attention(q, k, v, normalizer="entmax15", block_size=8)
        torch.autograd.grad(out.sum(), (q, k, v))
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 8 * 1024 * 4 <= largest <= 2 * 8 * 1024 * 4, largest


def test_default_tile_covers_all_heads_within_the_entry_budget():
    q, k, v = qkv(1, 2, n_q=3, n_k=5)
    # Tiny inputs: one tile holds every query; the budget caps it for long rows.
    assert _TILE_ENTRIES // (2 * 5) >= 3
    out = blockwise_attention(q, k, v, normalizer="sparsemax")
    assert torch.allclose(out, blockwise_attention(q, k, v, normalizer="sparsemax", block_size=1))


@pytest.mark.parametrize(
    ("overrides", "error", "name"),
    [
        ({"normalizer": "softmax"}, ValueError, "normalizer"),
        ({"normalizer": "sparsemax", "alpha": 1.5}, ValueError, "alpha"),
        ({"normalizer": "entmax", "alpha": 1.0}, ValueError, "alpha"),
        ({"normalizer": "entmax", "alpha": torch.full((1, 1, 1, 4), 1.5)}, ValueError, "alpha"),
        ({"mask": torch.ones(2, 3, 4)}, TypeError, "mask"),
        ({"mask": torch.ones(4, 4, dtype=torch.bool)}, ValueError, "mask"),
        ({"causal": 1}, TypeError, "causal"),
        ({"scale": 0.0}, ValueError, "scale"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"block_size": 2.0}, TypeError, "block_size"),
    ],
)
def test_bad_arguments_are_named(overrides, error, name):
    q, k, v = qkv(2, n_q=3, n_k=4)
    kwargs = {"normalizer": "entmax15", **overrides}
    with pytest.raises(error, match=f"`{name}`"):
        blockwise_attention(q, k, v, **kwargs)


def test_bad_shapes_are_named():
    q, k, v = qkv(2, n_q=3, n_k=4)
    with pytest.raises(ValueError, match="`k`"):
        blockwise_attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match="`v`"):
        blockwise_attention(q, k, v[:, :3])
    with pytest.raises(TypeError, match="`k`"):
        blockwise_attention(q, k.float(), v)
    with pytest.raises(TypeError, match="`q`"):
        blockwise_attention(q.long(), k.long(), v.long())


def test_empty_inputs():
    q, k, v = qkv(0, n_q=3, n_k=4)
    assert blockwise_attention(q, k, v).shape == (0, 3, 3)
    q, k, v = qkv(2, n_q=0, n_k=4)
    assert blockwise_attention(q, k, v).shape == (2, 0, 3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    q, k, v = qkv(2, 4, n_q=33, n_k=40, dtype=torch.float32, grad=True)
    alpha = torch.tensor([1.2, 1.5, 1.8, 2.0]).view(1, 4, 1, 1)
    cpu = blockwise_attention(q, k, v, normalizer="entmax", alpha=alpha, causal=True)
    gpu = blockwise_attention(
        *(x.cuda() for x in (q, k, v)), normalizer="entmax", alpha=alpha.cuda(), causal=True
    )
    assert (gpu.cpu() - cpu).abs().max() <= 1e-5
