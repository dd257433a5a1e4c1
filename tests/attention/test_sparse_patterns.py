"""Sparse Transformer patterns: the masks against the paper's set definitions, and both
kernels (by blocks for a full pass, by index table otherwise) against dense attention with
the same mask.

Tolerances: float64 results agree within 1e-10 (absolute); float16/bfloat16 smoke tests
within 3e-2 of float32.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from attnzoo.attention import MultiHeadAttention, attend, sparse_patterns
from attnzoo.attention.sparse_patterns import (
    SparseTransformerAttention,
    fixed_pattern,
    pattern_weights_to_dense,
    sparse_pattern_attention,
    sparse_pattern_index,
    sparse_pattern_mask,
    strided_pattern,
)

TOL = 1e-10
NORMALIZERS = [("softmax", None), ("sparsemax", None), ("entmax15", None), ("entmax", 1.3)]
# (pattern, stride, summary) covering strides below, near and above sqrt(n).
PATTERNS = [("strided", 3, 1), ("strided", 8, 1), ("fixed", 4, 1), ("fixed", 6, 2), ("fixed", 5, 5)]


def qkv(batch=2, heads=4, n=37, d=8, d_v=5, dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, n, d), (batch, heads, n, d), (batch, heads, n, d_v)]
    return [torch.randn(s, generator=g, dtype=dtype).to(device) for s in shapes]


def padding_mask(batch, n, seed=0, p=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, generator=g) >= p


def paper_sets(n, pattern, l, c, causal):
    """``A^(1)_i`` and ``A^(2)_i`` written out element by element from the paper."""
    local, other = [], []
    for i in range(n):
        if pattern == "strided":
            a1 = (
                set(range(max(0, i - l), i + 1))
                if causal
                else {j for j in range(n) if abs(i - j) <= l}
            )
            a2 = {j for j in range(n) if (i - j) % l == 0 and (j <= i or not causal)}
        else:
            a1 = {j for j in range(n) if j // l == i // l and (j <= i or not causal)}
            a2 = {j for j in range(n) if j % l in range(l - c, l + 1) and (j <= i or not causal)}
        local.append(a1)
        other.append(a2)
    return local, other


def as_mask(sets, n):
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i, row in enumerate(sets):
        mask[i, sorted(row)] = True
    return mask


class TestMasks:
    def test_strided_hand_case(self):
        # l = 2: the previous two positions and itself, plus every second position back.
        mask = strided_pattern(6, 2)
        assert mask[5].nonzero().flatten().tolist() == [1, 3, 4, 5]
        assert mask[4].nonzero().flatten().tolist() == [0, 2, 3, 4]
        assert strided_pattern(6, 2, part="local")[5].nonzero().flatten().tolist() == [3, 4, 5]
        assert strided_pattern(6, 2, part="global")[5].nonzero().flatten().tolist() == [1, 3, 5]

    def test_fixed_hand_case(self):
        # l = 4, c = 1: own block (causally) plus the last column of every block.
        mask = fixed_pattern(10, 4)
        assert mask[6].nonzero().flatten().tolist() == [3, 4, 5, 6]
        assert mask[9].nonzero().flatten().tolist() == [3, 7, 8, 9]
        bidirectional = fixed_pattern(10, 4, 2, causal=False)
        assert bidirectional[1].nonzero().flatten().tolist() == [0, 1, 2, 3, 6, 7]

    @pytest.mark.parametrize("pattern,l,c", PATTERNS)
    @pytest.mark.parametrize("causal", [True, False])
    @pytest.mark.parametrize("n", [1, 13, 24])
    def test_masks_are_the_paper_sets(self, pattern, l, c, causal, n):
        local, other = paper_sets(n, pattern, l, c, causal)
        kwargs = {"summary": c, "causal": causal}
        got = {p: sparse_pattern_mask(n, pattern, l, part=p, **kwargs) for p in ("local", "global")}
        assert torch.equal(got["local"], as_mask(local, n))
        assert torch.equal(got["global"], as_mask(other, n))
        union = sparse_pattern_mask(n, pattern, l, **kwargs)
        assert torch.equal(union, got["local"] | got["global"])

    def test_split_mask_puts_local_heads_first(self):
        mask = sparse_pattern_mask(9, "fixed", 3, part="split", heads=4)
        assert mask.shape == (4, 9, 9)
        local, other = fixed_pattern(9, 3, part="local"), fixed_pattern(9, 3, part="global")
        for h, expected in enumerate([local, local, other, other]):
            assert torch.equal(mask[h], expected)

    def test_wrapper_functions_match_the_dispatcher(self):
        assert torch.equal(strided_pattern(11, 3), sparse_pattern_mask(11, "strided", 3))
        assert torch.equal(
            fixed_pattern(11, 3, 2, causal=False),
            sparse_pattern_mask(11, "fixed", 3, summary=2, causal=False),
        )


def dense_from_index(index, valid, n):
    dense = torch.zeros(n, n)
    return dense.scatter_add_(1, index, valid.float()) if n else dense


class TestIndexTables:
    @settings(max_examples=60)
    @given(
        n=st.integers(0, 50),
        pattern=st.sampled_from(["strided", "fixed"]),
        stride=st.integers(1, 9),
        summary=st.integers(1, 9),
        causal=st.booleans(),
        part=st.sampled_from(["union", "local", "global"]),
    )
    def test_table_lists_exactly_the_mask(self, n, pattern, stride, summary, causal, part):
        summary = min(summary, stride)
        kwargs = {"summary": summary, "causal": causal, "part": part}
        index, valid = sparse_pattern_index(n, pattern, stride, **kwargs)
        counts = dense_from_index(index, valid, n)
        assert counts.max() <= 1 if n else True  # every key listed once
        assert torch.equal(counts.bool(), sparse_pattern_mask(n, pattern, stride, **kwargs))
        # Keys in increasing order, padding slots after them.
        assert torch.equal(valid, valid.sort(dim=-1, descending=True).values)
        keys = index.masked_fill(~valid, n)
        assert torch.equal(keys, keys.sort(dim=-1).values)

    def test_width_is_order_sqrt_n(self):
        n, l = 1024, 32
        index, _ = sparse_pattern_index(n, "strided", l)
        # The last query: l + 1 local keys and n / l strided ones, of which two (itself and
        # i - l) are in both parts.
        assert index.shape == (n, l + 1 + n // l - 2)
        index, _ = sparse_pattern_index(n, "fixed", l, summary=4)
        # A block of l plus 4 summary columns in each earlier block.
        assert index.shape[1] <= l + 4 * (n // l)

    def test_tables_are_cached(self):
        a = sparse_pattern_index(50, "fixed", 7, summary=2)
        b = sparse_pattern_index(50, "fixed", 7, summary=2)
        assert a[0] is b[0] and a[1] is b[1]


def dense_reference(q, k, v, mask, pattern, l, c, causal, part, normalizer, alpha):
    heads = q.shape[1] if part == "split" else None
    allowed = sparse_pattern_mask(
        q.shape[2], pattern, l, summary=c, causal=causal, part=part, heads=heads
    ).to(q.device)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    out, weights = attend(
        q, k, v, mask=allowed, normalizer=normalizer, alpha=alpha, return_weights=True
    )
    return out, weights


class TestKernel:
    @pytest.mark.parametrize("pattern,l,c", PATTERNS)
    @pytest.mark.parametrize("part", ["union", "local", "global", "split"])
    @pytest.mark.parametrize("causal", [True, False])
    def test_equals_dense_softmax_with_padding(self, pattern, l, c, part, causal):
        q, k, v = qkv()
        mask = padding_mask(2, 37)
        options = {"pattern": pattern, "stride": l, "summary": c, "causal": causal, "part": part}
        out, weights = sparse_pattern_attention(q, k, v, mask=mask, return_weights=True, **options)
        ref, ref_weights = dense_reference(
            q, k, v, mask, pattern, l, c, causal, part, "softmax", None
        )
        assert (out - ref).abs().max() < TOL
        heads = 4 if part == "split" else None
        index, valid = sparse_pattern_index(
            37, pattern, l, summary=c, causal=causal, part=part, heads=heads
        )
        dense = pattern_weights_to_dense(weights, index, valid)
        assert (dense - ref_weights).abs().max() < TOL

    @pytest.mark.parametrize("pattern,l,c", [*PATTERNS, ("strided", 50, 1), ("fixed", 50, 3)])
    @pytest.mark.parametrize("part", ["union", "local", "global", "split"])
    @pytest.mark.parametrize("causal", [True, False])
    def test_full_pass_blocks_equal_dense_with_gradients(self, pattern, l, c, part, causal):
        # Without returned weights, as many queries as keys go block by block; strides of
        # 50 exceed the sequence (one block, padded).
        q, k, v = (x.requires_grad_(True) for x in qkv())
        mask = padding_mask(2, 37)
        options = {"pattern": pattern, "stride": l, "summary": c, "causal": causal, "part": part}
        alpha = torch.tensor([1.2, 1.5, 1.8, 2.0], dtype=torch.float64).view(1, 4, 1, 1)
        grad_out = torch.randn(2, 4, 37, 5, dtype=torch.float64)
        for normalizer, a in (("softmax", None), ("entmax", alpha)):
            out = sparse_pattern_attention(
                q, k, v, mask=mask, normalizer=normalizer, alpha=a, **options
            )
            ref, _ = dense_reference(q, k, v, mask, pattern, l, c, causal, part, normalizer, a)
            assert (out - ref).abs().max() < TOL
            ours = torch.autograd.grad(out, (q, k, v), grad_out)
            theirs = torch.autograd.grad(ref, (q, k, v), grad_out)
            for x, y in zip(ours, theirs, strict=True):
                assert (x - y).abs().max() < TOL

    def test_full_pass_goes_by_blocks_and_the_rest_by_index(self, monkeypatch):
        calls = []
        blocked = sparse_patterns.blocked_pattern_attention
        monkeypatch.setattr(
            sparse_patterns,
            "blocked_pattern_attention",
            lambda *args, **kwargs: calls.append(1) or blocked(*args, **kwargs),
        )
        q, k, v = qkv(n=12)
        sparse_pattern_attention(q, k, v, pattern="strided", stride=3)
        assert len(calls) == 1
        sparse_pattern_attention(q, k, v, pattern="strided", stride=3, return_weights=True)
        sparse_pattern_attention(q[:, :, -2:], k, v, pattern="strided", stride=3)  # decoding
        assert len(calls) == 1

    @pytest.mark.parametrize("return_weights", [False, True])
    def test_no_query_with_a_key_gives_zeros(self, return_weights):
        # Fixed pattern, summary part only, stride past the sequence: the summary columns
        # (positions 2 and 3) do not exist, so no query has a key.
        q, k, v = (x.requires_grad_(True) for x in qkv(n=2))
        options = {"pattern": "fixed", "stride": 4, "summary": 2, "part": "global"}
        result = sparse_pattern_attention(q, k, v, return_weights=return_weights, **options)
        out = result[0] if return_weights else result
        assert out.shape == (2, 4, 2, 5) and (out == 0).all()
        if return_weights:
            assert result[1].shape == (2, 4, 2, 0)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert all((g == 0).all() for g in grads)

    @pytest.mark.parametrize("normalizer,alpha", [*NORMALIZERS, ("hardmax", None)])
    @pytest.mark.parametrize("n", [1, 2, 29])
    def test_every_normalizer(self, normalizer, alpha, n):
        q, k, v = qkv(n=n)
        mask = padding_mask(2, n, seed=1)
        for part in ("union", "split"):
            options = {"pattern": "fixed", "stride": 4, "summary": 2, "part": part}
            out = sparse_pattern_attention(
                q, k, v, mask=mask, normalizer=normalizer, alpha=alpha, **options
            )
            ref, _ = dense_reference(q, k, v, mask, "fixed", 4, 2, True, part, normalizer, alpha)
            assert (out - ref).abs().max() < TOL, (normalizer, part)

    def test_per_head_alpha(self):
        q, k, v = qkv()
        alpha = torch.tensor([1.2, 1.5, 1.8, 2.0], dtype=torch.float64).view(1, 4, 1, 1)
        out = sparse_pattern_attention(
            q, k, v, pattern="strided", stride=5, normalizer="entmax", alpha=alpha
        )
        ref, _ = dense_reference(q, k, v, None, "strided", 5, 1, True, "union", "entmax", alpha)
        assert (out - ref).abs().max() < TOL

    @pytest.mark.parametrize("normalizer,alpha", NORMALIZERS)
    def test_gradients_equal_dense(self, normalizer, alpha):
        q, k, v = (x.requires_grad_(True) for x in qkv(n=23))
        mask = padding_mask(2, 23, seed=2)
        options = {"pattern": "strided", "stride": 4, "part": "split", "causal": False}
        grad_out = torch.randn(2, 4, 23, 5, dtype=torch.float64)
        out = sparse_pattern_attention(
            q, k, v, mask=mask, normalizer=normalizer, alpha=alpha, **options
        )
        ours = torch.autograd.grad(out, (q, k, v), grad_out)
        ref, _ = dense_reference(q, k, v, mask, "strided", 4, 1, False, "split", normalizer, alpha)
        theirs = torch.autograd.grad(ref, (q, k, v), grad_out)
        for a, b in zip(ours, theirs, strict=True):
            assert (a - b).abs().max() < TOL

    def test_gradcheck(self):
        q, k, v = (x.requires_grad_(True) for x in qkv(batch=1, heads=2, n=9, d=3, d_v=2))
        mask = padding_mask(1, 9, seed=3)

        def fn(q, k, v):
            return sparse_pattern_attention(
                q, k, v, pattern="fixed", stride=3, summary=1, part="split", mask=mask
            )

        assert torch.autograd.gradcheck(fn, (q, k, v))

    @pytest.mark.parametrize("causal", [True, False])
    def test_gradcheck_strided_both_paths(self, causal):
        q, k, v = (x.requires_grad_(True) for x in qkv(batch=1, heads=2, n=10, d=3, d_v=2))
        mask = padding_mask(1, 10, seed=4)

        def fn(q, k, v, return_weights):
            options = {"pattern": "strided", "stride": 3, "causal": causal, "mask": mask}
            result = sparse_pattern_attention(
                q, k, v, normalizer="entmax15", return_weights=return_weights, **options
            )
            return result[0] if return_weights else result

        for return_weights in (False, True):
            assert torch.autograd.gradcheck(partial(fn, return_weights=return_weights), (q, k, v))

    def test_query_without_keys_gives_zeros_and_zero_gradient(self):
        # Causal fixed, summary part only: positions before the first summary column see
        # nothing, and a fully padded batch row sees nothing anywhere.
        q, k, v = (x.requires_grad_(True) for x in qkv(n=12))
        mask = torch.ones(2, 12, dtype=torch.bool)
        mask[1] = False
        out = sparse_pattern_attention(q, k, v, pattern="fixed", stride=4, part="global", mask=mask)
        assert torch.isfinite(out).all()
        assert (out[0, :, :3] == 0).all() and (out[1] == 0).all()
        assert (out[0, :, 3:] != 0).any()
        out.sum().backward()
        assert torch.isfinite(q.grad).all() and (q.grad[1] == 0).all()

    def test_dropout_only_in_training(self):
        q, k, v = qkv()
        options = {"pattern": "strided", "stride": 4}
        a = sparse_pattern_attention(q, k, v, dropout=0.5, training=False, **options)
        b = sparse_pattern_attention(q, k, v, **options)
        assert torch.equal(a, b)
        c = sparse_pattern_attention(q, k, v, dropout=0.5, **options)
        assert not torch.allclose(b, c)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_low_precision_close_to_float32(self, dtype):
        q, k, v = qkv(dtype=torch.float32)
        mask = padding_mask(2, 37)
        ref = sparse_pattern_attention(q, k, v, pattern="fixed", stride=6, mask=mask)
        low = sparse_pattern_attention(
            q.to(dtype), k.to(dtype), v.to(dtype), pattern="fixed", stride=6, mask=mask
        )
        assert low.dtype == dtype
        assert (low.float() - ref).abs().max() < 3e-2

    def test_runs_on_every_device(self, device):
        q, k, v = qkv(dtype=torch.float32, device=device)
        mask = padding_mask(2, 37).to(device)
        out = sparse_pattern_attention(q, k, v, pattern="strided", stride=6, mask=mask)
        ref, _ = dense_reference(q, k, v, mask, "strided", 6, 1, True, "union", "softmax", None)
        assert out.device.type == device.type
        assert (out - ref).abs().max() < 1e-5


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in torch.utils._pytree.tree_leaves(out):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def test_gather_memory_is_order_n_times_k_max(monkeypatch):
    """Neither the n x n scores nor the (n, k_max, d) gathered keys are ever held whole: with
    a small gathering budget the largest tensor is the (n, k_max) score matrix."""
    monkeypatch.setattr(sparse_patterns, "_GATHER_BUDGET", 16384)
    n, l, d = 1024, 32, 16
    q, k, v = (x.float().requires_grad_(True) for x in qkv(batch=1, heads=1, n=n, d=d, d_v=d))
    index, _ = sparse_pattern_index(n, "strided", l)  # built outside the spy
    with _LargestTensor() as spy:
        # Returning the weights takes the index-table path.
        out, _ = sparse_pattern_attention(q, k, v, pattern="strided", stride=l, return_weights=True)
        out.sum().backward()
    assert spy.largest == n * index.shape[1]  # 63 keys per query: 1/16 of n * n
    ref, _ = dense_reference(q, k, v, None, "strided", l, 1, True, "union", "softmax", None)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize(
    "pattern,summary,keys_per_query",
    [
        ("strided", 1, 2 * 32 + 32),  # two blocks of window, one key per grid row
        ("fixed", 2, 32 + 2 * 32),  # its block, two summary keys per block
    ],
)
def test_blocked_memory_is_order_n_times_keys_per_query(pattern, summary, keys_per_query):
    """The full pass holds the (n, keys) scores of the blocks, never n x n."""
    n, l, d = 1024, 32, 16
    q, k, v = (x.float().requires_grad_(True) for x in qkv(batch=1, heads=1, n=n, d=d, d_v=d))
    with _LargestTensor() as spy:
        out = sparse_pattern_attention(q, k, v, pattern=pattern, stride=l, summary=summary)
        out.sum().backward()
    assert spy.largest == n * keys_per_query  # 96 of 1024 keys per query
    ref, _ = dense_reference(q, k, v, None, pattern, l, summary, True, "union", "softmax", None)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.parametrize("per_head", [False, True])
def test_gathered_products_gradcheck(monkeypatch, per_head):
    monkeypatch.setattr(sparse_patterns, "_GATHER_BUDGET", 20)  # several row blocks
    g = torch.Generator().manual_seed(0)
    a, x = (torch.randn(2, 2, 7, 3, generator=g, dtype=torch.float64) for _ in range(2))
    w = torch.randn(2, 2, 7, 4, generator=g, dtype=torch.float64)
    index = torch.randint(0, 7, (2 if per_head else 1, 7, 4), generator=g)
    for t in (a, x, w):
        t.requires_grad_(True)
    selected = x[:, torch.arange(2)[:, None, None], index.expand(2, -1, -1)]  # (b, h, n, k, d)
    dot = sparse_patterns.GatheredDot.apply(a, x, index)
    assert torch.allclose(dot, torch.einsum("bhnd,bhnkd->bhnk", a, selected))
    total = sparse_patterns.GatheredSum.apply(w, x, index)
    assert torch.allclose(total, torch.einsum("bhnk,bhnkd->bhnd", w, selected))
    assert torch.autograd.gradcheck(sparse_patterns.GatheredDot.apply, (a, x, index))
    assert torch.autograd.gradcheck(sparse_patterns.GatheredSum.apply, (w, x, index))


class TestModule:
    @pytest.mark.parametrize("part", ["union", "split"])
    def test_equals_multi_head_attention_with_the_mask(self, part):
        torch.manual_seed(0)
        module = SparseTransformerAttention(
            16, 4, pattern="fixed", stride=3, summary=1, part=part, causal=True
        ).double()
        dense = MultiHeadAttention(16, 4).double()
        dense.load_state_dict(module.state_dict())
        x = torch.randn(2, 11, 16, dtype=torch.float64)
        mask = padding_mask(2, 11)
        pattern = sparse_pattern_mask(
            11, "fixed", 3, part=part, heads=4 if part == "split" else None
        )
        allowed = pattern & mask[:, None, None, :]
        out, weights = module(x, mask=mask, return_weights=True)
        assert (out - dense(x, mask=allowed)).abs().max() < TOL
        assert weights.shape[:3] == (2, 4, 11)

    def test_entmax_and_repr(self):
        module = SparseTransformerAttention(
            8, 2, pattern="strided", stride=2, normalizer="entmax", alpha=1.7
        )
        out = module(torch.randn(1, 5, 8))
        assert out.shape == (1, 5, 8)
        assert "pattern='strided'" in repr(module)


class TestErrors:
    def test_bad_pattern_arguments(self):
        with pytest.raises(ValueError, match="`pattern`"):
            sparse_pattern_mask(8, "dilated", 2)
        with pytest.raises(ValueError, match="`stride`"):
            strided_pattern(8, 0)
        with pytest.raises(TypeError, match="`stride`"):
            strided_pattern(8, 2.0)
        with pytest.raises(ValueError, match="`summary` must be <= stride"):
            fixed_pattern(8, 2, 3)
        with pytest.raises(ValueError, match="`part`"):
            strided_pattern(8, 2, part="both")
        with pytest.raises(TypeError, match="`causal`"):
            strided_pattern(8, 2, causal=1)
        with pytest.raises(TypeError, match="`heads`"):
            sparse_pattern_mask(8, "strided", 2, part="split")
        with pytest.raises(ValueError, match="`heads` only applies"):
            sparse_pattern_mask(8, "strided", 2, heads=2)
        with pytest.raises(TypeError, match="`heads`"):
            sparse_pattern_index(8, "strided", 2, part="split")

    def test_bad_kernel_inputs(self):
        q, k, v = qkv(heads=3)
        options = {"pattern": "strided", "stride": 2}
        with pytest.raises(ValueError, match="`heads` must be an even int"):
            sparse_pattern_attention(q, k, v, part="split", **options)
        with pytest.raises(TypeError, match="`mask` must be a boolean"):
            sparse_pattern_attention(q, k, v, mask=torch.ones(2, 37), **options)
        with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, n\)"):
            sparse_pattern_attention(q, k, v, mask=torch.ones(2, 36, dtype=torch.bool), **options)
        with pytest.raises(ValueError, match="`k` must have the shape of `q`"):
            sparse_pattern_attention(q, k[:, :, :5], v, **options)
        with pytest.raises(ValueError, match="`alpha` only applies"):
            sparse_pattern_attention(q, k, v, alpha=1.5, **options)
        with pytest.raises(ValueError, match="`q` must have 4 dimensions"):
            sparse_pattern_attention(q[0], k, v, **options)

    def test_bad_module_arguments(self):
        with pytest.raises(ValueError, match="`heads` must be an even int"):
            SparseTransformerAttention(9, 3, part="split")
        with pytest.raises(ValueError, match="`normalizer`"):
            SparseTransformerAttention(8, 2, normalizer="nope")
        module = SparseTransformerAttention(8, 2)
        with pytest.raises(ValueError, match="`x` must have dim = 8"):
            module(torch.randn(1, 4, 6))
