"""Tests of sliding-window attention against dense attention with the band mask.

Tolerances: float64 results agree within 1e-10, float32 within 1e-5 (absolute).
float16/bfloat16 results are held to the error of dense attention run in the same dtype:
both are measured against float64 on the same rounded inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from attnzoo.attention.functional import attend
from attnzoo.attention.normalizers import masked_normalize
from attnzoo.attention.sliding_window import (
    SlidingWindowAttention,
    band_to_dense,
    key_windows,
    sliding_window_attention,
)

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
SIZES = [1, 7, 37, 130]
WINDOWS = [(0, 0), (3, 0), (0, 5), (2, 3), (40, 17), (200, 1), (150, 150)]
NORMALIZERS = [
    ("softmax", None),
    ("sparsemax", None),
    ("entmax15", None),
    ("entmax", 1.3),
]


def qkv(batch=2, heads=3, n=7, d=8, d_v=None, dtype=torch.float64, seed=0, device="cpu"):
    """Random q, k ``(batch, heads, n, d)`` and v ``(batch, heads, n, d_v)``."""
    g = torch.Generator().manual_seed(seed)
    d_v = d if d_v is None else d_v
    shapes = [(batch, heads, n, d), (batch, heads, n, d), (batch, heads, n, d_v)]
    return [torch.randn(s, generator=g, dtype=dtype).to(device) for s in shapes]


def padding_mask(batch, n, seed=0, p=0.3):
    """Random key-padding mask ``(batch, n)``, about ``p`` of the keys padded."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, generator=g) >= p


def band_mask(n, before, after, device="cpu"):
    """Dense ``(n, n)`` band: query i may see keys i - before .. i + after."""
    i = torch.arange(n, device=device)
    offset = i[None, :] - i[:, None]
    return (offset >= -before) & (offset <= after)


def dense_reference(q, k, v, before, after, mask=None, normalizer="softmax", alpha=None):
    """Dense attention with the band mask, written out: scores, masked_normalize, matmul."""
    allowed = band_mask(q.shape[2], before, after, q.device)
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    options = {} if alpha is None else {"alpha": alpha}
    weights = masked_normalize(scores, allowed, normalizer, **options)
    return weights @ v, weights


def max_diff(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


class TestDenseEquality:
    @pytest.mark.parametrize("n", SIZES)
    @pytest.mark.parametrize("before,after", WINDOWS)
    @pytest.mark.parametrize("masked", [False, True])
    def test_softmax_float64(self, n, before, after, masked):
        q, k, v = qkv(n=n, d_v=5)
        mask = padding_mask(2, n) if masked else None
        ref, ref_w = dense_reference(q, k, v, before, after, mask)
        fast = sliding_window_attention(q, k, v, before=before, after=after, mask=mask)
        slow, band = sliding_window_attention(
            q, k, v, before=before, after=after, mask=mask, return_weights=True
        )
        assert fast.shape == (2, 3, n, 5)
        assert max_diff(fast, ref) <= 1e-10
        assert max_diff(slow, ref) <= 1e-10
        assert band.shape == (2, 3, n, before + after + 1)
        assert max_diff(band_to_dense(band, before, after), ref_w) <= 1e-10

    @pytest.mark.parametrize("normalizer,alpha", NORMALIZERS)
    @pytest.mark.parametrize("n", SIZES)
    @pytest.mark.parametrize("before,after", [(0, 0), (3, 0), (0, 5), (6, 2), (200, 1)])
    def test_every_normalizer_float64(self, normalizer, alpha, n, before, after):
        q, k, v = qkv(n=n, seed=n)
        mask = padding_mask(2, n, seed=1)
        ref, ref_w = dense_reference(q, k, v, before, after, mask, normalizer, alpha)
        out, band = sliding_window_attention(
            q,
            k,
            v,
            before=before,
            after=after,
            mask=mask,
            normalizer=normalizer,
            alpha=alpha,
            return_weights=True,
        )
        assert max_diff(out, ref) <= 1e-10
        assert max_diff(band_to_dense(band, before, after), ref_w) <= 1e-10

    @pytest.mark.parametrize("normalizer,alpha", NORMALIZERS)
    @pytest.mark.parametrize("before,after", [(3, 0), (4, 9)])
    def test_float32(self, normalizer, alpha, before, after):
        q, k, v = qkv(n=130, dtype=torch.float32, seed=3)
        mask = padding_mask(2, 130, seed=2)
        ref, _ = dense_reference(q, k, v, before, after, mask, normalizer, alpha)
        out = sliding_window_attention(
            q, k, v, before=before, after=after, mask=mask, normalizer=normalizer, alpha=alpha
        )
        assert out.dtype == torch.float32
        assert max_diff(out, ref) <= 1e-5

    @pytest.mark.parametrize("before,after", [(0, 0), (5, 0), (3, 11)])
    def test_matches_attend_and_sdpa(self, before, after):
        q, k, v = qkv(n=37, dtype=torch.float32, seed=4)
        band = band_mask(37, before, after)
        sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=band)
        dense = attend(q, k, v, mask=band)
        out = sliding_window_attention(q, k, v, before=before, after=after)
        assert max_diff(out, sdpa) <= 1e-5
        assert max_diff(out, dense) <= 1e-5

    def test_after_zero_is_causal_window(self):
        q, k, v = qkv(n=37)
        out = sliding_window_attention(q, k, v, before=36, after=0)
        assert max_diff(out, attend(q, k, v, causal=True)) <= 1e-10

    def test_window_covering_everything_is_dense_attention(self):
        q, k, v = qkv(n=37)
        out = sliding_window_attention(q, k, v, before=10**6, after=10**6)
        assert max_diff(out, attend(q, k, v)) <= 1e-10

    def test_per_head_alpha_tensor(self):
        q, k, v = qkv(n=37, heads=3)
        alpha = torch.tensor([1.2, 1.5, 1.9], dtype=torch.float64).view(1, 3, 1, 1)
        ref, _ = dense_reference(q, k, v, 4, 2, None, "entmax", alpha)
        out = sliding_window_attention(q, k, v, before=4, after=2, normalizer="entmax", alpha=alpha)
        assert max_diff(out, ref) <= 1e-10

    def test_explicit_scale(self):
        q, k, v = qkv(n=37)
        out = sliding_window_attention(q, k, v, before=2, after=2, scale=0.5)
        ref = attend(q, k, v, mask=band_mask(37, 2, 2), scale=0.5)
        assert max_diff(out, ref) <= 1e-10

    def test_empty_sequence(self):
        q, k, v = qkv(n=0, d_v=4)
        out, band = sliding_window_attention(q, k, v, before=2, after=1, return_weights=True)
        assert out.shape == (2, 3, 0, 4) and band.shape == (2, 3, 0, 4)


class TestPadding:
    @pytest.mark.parametrize("normalizer,alpha", NORMALIZERS)
    @pytest.mark.parametrize("return_weights", [False, True])
    def test_fully_padded_sequence_gives_zeros_not_nan(self, normalizer, alpha, return_weights):
        q, k, v = qkv(n=37)
        for x in (q, k, v):
            x.requires_grad_(True)
        mask = padding_mask(2, 37)
        mask[1] = False
        result = sliding_window_attention(
            q,
            k,
            v,
            before=3,
            after=2,
            mask=mask,
            normalizer=normalizer,
            alpha=alpha,
            return_weights=return_weights,
        )
        out = result[0] if return_weights else result
        assert torch.isfinite(out).all()
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        out.sum().backward()
        for x in (q, k, v):
            assert torch.isfinite(x.grad).all()
        if return_weights:
            assert torch.equal(result[1][1], torch.zeros_like(result[1][1]))

    def test_query_whose_window_is_all_padding_gives_zeros(self):
        q, k, v = qkv(n=20)
        mask = torch.ones(2, 20, dtype=torch.bool)
        mask[:, 5:15] = False  # queries 7..12 with before=after=2 see only padding
        out = sliding_window_attention(q, k, v, before=2, after=2, mask=mask)
        assert torch.equal(out[:, :, 7:13], torch.zeros_like(out[:, :, 7:13]))
        assert (out[:, :, 6].abs().min() > 0) and (out[:, :, 13].abs().min() > 0)

    def test_edge_queries_do_not_weight_missing_keys(self):
        # Out-of-range keys are masked, not zero vectors: the weights of query 0 are spread
        # over keys 0..after only, and with v = 1 the output is exactly 1.
        q, k, _ = qkv(n=9)
        v = torch.ones(2, 3, 9, 4, dtype=torch.float64)
        out, band = sliding_window_attention(q, k, v, before=4, after=1, return_weights=True)
        assert max_diff(out, torch.ones_like(out)) <= 1e-12
        assert torch.equal(band[:, :, 0, :4], torch.zeros_like(band[:, :, 0, :4]))
        assert max_diff(band.sum(-1), torch.ones(2, 3, 9, dtype=torch.float64)) <= 1e-12


class TestWeightsLayout:
    def test_column_j_is_key_i_minus_before_plus_j(self):
        before, after, n = 3, 2, 11
        q, k, v = qkv(n=n)
        _, band = sliding_window_attention(q, k, v, before=before, after=after, return_weights=True)
        _, dense = dense_reference(q, k, v, before, after)
        for i in range(n):
            for j in range(before + after + 1):
                key = i - before + j
                expected = dense[..., i, key] if 0 <= key < n else torch.zeros(2, 3)
                assert torch.allclose(band[..., i, j], expected.to(band), atol=1e-12, rtol=0)

    def test_band_to_dense_places_entries(self):
        band = torch.arange(1, 16, dtype=torch.float64).view(5, 3)  # before=1, after=1
        dense = band_to_dense(band, 1, 1)
        expected = torch.tensor(
            [
                [2, 3, 0, 0, 0],
                [4, 5, 6, 0, 0],
                [0, 7, 8, 9, 0],
                [0, 0, 10, 11, 12],
                [0, 0, 0, 13, 14],
            ],
            dtype=torch.float64,
        )
        assert torch.equal(dense, expected)

    def test_band_to_dense_rejects_wrong_width(self):
        with pytest.raises(ValueError, match="weights_band"):
            band_to_dense(torch.zeros(4, 5), 1, 1)


class TestGradients:
    @pytest.mark.parametrize(
        "normalizer,alpha", [("softmax", None), ("sparsemax", None), ("entmax", 1.3)]
    )
    @pytest.mark.parametrize("return_weights", [False, True])
    def test_gradients_match_dense(self, normalizer, alpha, return_weights):
        n, before, after = 37, 4, 3
        q, k, v = qkv(n=n, seed=5)
        mask = padding_mask(2, n, seed=5)
        g_out = torch.randn(2, 3, n, 8, dtype=torch.float64)

        def grads(fn):
            leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
            (fn(*leaves) * g_out).sum().backward()
            return [x.grad for x in leaves]

        def window(a, b, c):
            result = sliding_window_attention(
                a,
                b,
                c,
                before=before,
                after=after,
                mask=mask,
                normalizer=normalizer,
                alpha=alpha,
                return_weights=return_weights,
            )
            return result[0] if return_weights else result

        ours = grads(window)
        ref = grads(
            lambda a, b, c: dense_reference(a, b, c, before, after, mask, normalizer, alpha)[0]
        )
        for mine, theirs in zip(ours, ref, strict=True):
            assert max_diff(mine, theirs) <= 1e-10

    # Key windows of B + before + after rows over query blocks of B: (64, 0) gives a span of
    # exactly 3 blocks, (40, 17) and (5, 0) a span that is not a whole number of blocks,
    # (150, 150) one block; several blocks overlap each key, whose gradients must add up.
    @pytest.mark.parametrize("before,after", [(64, 0), (40, 17), (5, 0), (150, 150)])
    @pytest.mark.parametrize("masked", [False, True])
    def test_overlapping_key_window_gradients_match_dense(self, before, after, masked):
        n = 203
        q, k, v = qkv(batch=3, heads=2, n=n, d=4, d_v=5, seed=7)
        mask = padding_mask(3, n, seed=7) if masked else None
        g_out = torch.randn(3, 2, n, 5, dtype=torch.float64)

        def grads(fn):
            leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
            (fn(*leaves) * g_out).sum().backward()
            return [x.grad for x in leaves]

        ours = grads(
            lambda a, b, c: sliding_window_attention(a, b, c, before=before, after=after, mask=mask)
        )
        ref = grads(lambda a, b, c: dense_reference(a, b, c, before, after, mask)[0])
        for mine, theirs in zip(ours, ref, strict=True):
            assert max_diff(mine, theirs) <= 1e-10

    # (pad_front, pad_back, block): the window spans 3 blocks, 2.25 blocks, 1 block, 2 blocks.
    @pytest.mark.parametrize("front,back,block", [(8, 0, 4), (5, 0, 4), (0, 0, 11), (3, 0, 3)])
    def test_key_windows_are_unfold_with_its_gradient(self, front, back, block):
        x = torch.randn(2, 3, 11, 4, dtype=torch.float64, requires_grad=True)
        n_blocks = -(-11 // block)
        back += n_blocks * block - 11
        padded = F.pad(x, (0, 0, front, back))
        span = padded.shape[2] - (n_blocks - 1) * block
        windows = key_windows(x, front, back, block)
        assert torch.equal(windows, padded.unfold(2, span, block).transpose(-2, -1))
        fn = lambda t: key_windows(t, front, back, block)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))

    def test_gradcheck(self):
        q, k, v = (x.requires_grad_(True) for x in qkv(batch=1, heads=2, n=9, d=3))
        mask = padding_mask(1, 9, seed=6)
        assert torch.autograd.gradcheck(
            lambda a, b, c: sliding_window_attention(a, b, c, before=2, after=1, mask=mask),
            (q, k, v),
        )


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns, and the longest key axis SDPA gets.

    A fused SDPA kernel's workspace is invisible here, but it is bounded by the shapes of
    its inputs, so the spy also records how many keys each SDPA call attends over.
    """

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.sdpa_keys = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func.name():
            self.sdpa_keys = max(self.sdpa_keys, args[1].shape[-2])
        out = func(*args, **(kwargs or {}))
        for x in torch.utils._pytree.tree_leaves(out):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def _run_spied(fn, n, d=8):
    """Forward and backward of ``fn(q, k, v)`` at length n; the spy and saved-tensor sizes."""
    q, k, v = (x.float().requires_grad_(True) for x in qkv(batch=1, heads=1, n=n, d=d))
    saved = []
    with (
        _LargestTensor() as spy,
        torch.autograd.graph.saved_tensors_hooks(
            lambda x: saved.append(x.numel()) or x, lambda x: x
        ),
    ):
        fn(q, k, v).sum().backward()
    return spy, saved


class TestMemory:
    N = 4096

    @pytest.mark.parametrize(
        "normalizer,return_weights", [("softmax", False), ("softmax", True), ("sparsemax", False)]
    )
    def test_no_n_by_n_tensor_forward_or_backward(self, normalizer, return_weights):
        # Every tensor produced by any aten op during the forward and backward pass (scores,
        # masks, weights, intermediates of the normaliser, gradients) and every tensor autograd
        # saves is counted; with before + after + 1 = 9 none may come near n * n.
        n = self.N
        mask = padding_mask(1, n)

        def window(q, k, v):
            result = sliding_window_attention(
                q,
                k,
                v,
                before=5,
                after=3,
                mask=mask,
                normalizer=normalizer,
                return_weights=return_weights,
            )
            return result[0] if return_weights else result

        spy, saved = _run_spied(window, n)
        # The largest legitimate tensors are the block scores: n * (B + 8) with B = 32 here.
        limit = 2 * n * (32 + 8)
        assert spy.largest <= limit < n * n // 50
        assert saved and max(saved) <= limit
        assert spy.sdpa_keys <= 32 + 8

    def test_spy_catches_dense_attention(self):
        # The instrument itself: dense attention at the same length does trip it.
        n = self.N
        band = band_mask(n, 5, 3)
        spy, _ = _run_spied(lambda q, k, v: attend(q, k, v, mask=band), n)
        assert spy.largest >= n * n or spy.sdpa_keys == n


class _SdpaMasks(TorchDispatchMode):
    """Records the attention mask of every SDPA call and the largest storage any op returns.

    Storage, in elements, not ``numel``: a strided view of overlapping windows has more
    elements than the memory it reads, and only a copy allocates them.
    """

    def __init__(self):
        super().__init__()
        self.masks = []
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "scaled_dot_product" in func.name():
            self.masks.append(kwargs.get("attn_mask"))
        out = func(*args, **kwargs)
        for x in torch.utils._pytree.tree_leaves(out):
            if isinstance(x, torch.Tensor):
                stored = x.untyped_storage().nbytes() // x.element_size()
                self.largest = max(self.largest, stored)
        return out


class TestSdpaLayout:
    def test_mask_is_shared_by_heads_and_windows_are_not_copied(self):
        # The causal spec case at a small length: the SDPA mask must be a float mask with one
        # row block per (sequence, block), broadcast over the heads (a boolean mask, or one
        # per head, is expanded to heads * n * L entries on every call), and the forward
        # must not copy the overlapping key windows (heads * n * L * d / B entries, 3x k).
        batch, heads, n, d, before = 1, 8, 1024, 64, 256
        q, k, v = qkv(batch=batch, heads=heads, n=n, d=d, dtype=torch.float32)
        with torch.no_grad(), _SdpaMasks() as spy:
            out = sliding_window_attention(q, k, v, before=before, after=0)
        assert max_diff(out, dense_reference(q, k, v, before, 0)[0]) <= 1e-5
        (mask,) = spy.masks
        assert mask.is_floating_point()
        assert mask.shape[1] == 1
        padded_keys = batch * heads * (n + before) * d
        assert spy.largest <= padded_keys


class TestModule:
    def test_forward_shapes_and_weights(self):
        module = SlidingWindowAttention(dim=32, heads=4, before=3, after=1)
        x = torch.randn(2, 19, 32)
        out, band = module(x, return_weights=True)
        assert out.shape == (2, 19, 32)
        assert band.shape == (2, 4, 19, 5)
        assert module.query.weight.shape == (32, 32) and module.out.weight.shape == (32, 32)

    def test_parity_with_manual_projections(self):
        torch.manual_seed(0)
        module = SlidingWindowAttention(
            dim=12, heads=2, before=4, after=0, dim_head=5, normalizer="sparsemax"
        ).double()
        x = torch.randn(3, 23, 12, dtype=torch.float64)
        mask = padding_mask(3, 23, seed=7)
        split = [
            rearrange(lin(x), "b n (h d) -> b h n d", h=2)
            for lin in (module.query, module.key, module.value)
        ]
        ref, _ = dense_reference(*split, 4, 0, mask, "sparsemax")
        ref = module.out(rearrange(ref, "b h n d -> b n (h d)"))
        assert max_diff(module(x, mask=mask), ref) <= 1e-10

    def test_entmax_alpha_option(self):
        torch.manual_seed(0)
        module = SlidingWindowAttention(16, 2, 2, 2, normalizer="entmax", alpha=1.3).double()
        x = torch.randn(2, 9, 16, dtype=torch.float64)
        q, k, v = (
            rearrange(lin(x), "b n (h d) -> b h n d", h=2)
            for lin in (module.query, module.key, module.value)
        )
        ref, _ = dense_reference(q, k, v, 2, 2, None, "entmax", 1.3)
        ref = module.out(rearrange(ref, "b h n d -> b n (h d)"))
        assert max_diff(module(x), ref) <= 1e-10

    def test_dropout_only_in_training(self):
        torch.manual_seed(0)
        module = SlidingWindowAttention(16, 2, 3, 3, dropout=0.5)
        x = torch.randn(2, 30, 16)
        module.eval()
        assert torch.equal(module(x), module(x))
        module.train()
        assert not torch.equal(module(x), module(x))

    def test_bad_module_arguments(self):
        with pytest.raises(ValueError, match="heads"):
            SlidingWindowAttention(10, 3, 1, 1)
        with pytest.raises(ValueError, match="before"):
            SlidingWindowAttention(12, 3, -1, 1)
        with pytest.raises(ValueError, match="dropout"):
            SlidingWindowAttention(12, 3, 1, 1, dropout=1.0)
        with pytest.raises(ValueError, match="x"):
            SlidingWindowAttention(12, 3, 1, 1)(torch.randn(2, 5, 8))


class TestDropout:
    def test_training_false_is_no_dropout(self):
        q, k, v = qkv(n=37)
        plain = sliding_window_attention(q, k, v, before=3, after=3)
        off = sliding_window_attention(q, k, v, before=3, after=3, dropout=0.9, training=False)
        assert torch.equal(plain, off)

    def test_returned_weights_are_before_dropout(self):
        q, k, v = qkv(n=37)
        _, band = sliding_window_attention(
            q, k, v, before=3, after=3, dropout=0.5, normalizer="sparsemax", return_weights=True
        )
        assert max_diff(band.sum(-1), torch.ones(2, 3, 37, dtype=torch.float64)) <= 1e-12


class TestErrors:
    def test_negative_offsets(self):
        q, k, v = qkv()
        with pytest.raises(ValueError, match="before"):
            sliding_window_attention(q, k, v, before=-1, after=2)
        with pytest.raises(ValueError, match="after"):
            sliding_window_attention(q, k, v, before=2, after=-3)

    def test_non_int_offsets(self):
        q, k, v = qkv()
        with pytest.raises(TypeError, match="before"):
            sliding_window_attention(q, k, v, before=2.0, after=2)
        with pytest.raises(TypeError, match="after"):
            sliding_window_attention(q, k, v, before=2, after=True)

    def test_shapes(self):
        q, k, v = qkv(n=7)
        with pytest.raises(ValueError, match="`q`"):
            sliding_window_attention(q[0], k, v, before=1, after=1)
        with pytest.raises(ValueError, match="`k`"):
            sliding_window_attention(q, k[:, :, :5], v, before=1, after=1)
        with pytest.raises(ValueError, match="`v`"):
            sliding_window_attention(q, k, v[:, :2], before=1, after=1)
        with pytest.raises(TypeError, match="`k`"):
            sliding_window_attention(q, k.float(), v, before=1, after=1)

    def test_masks(self):
        q, k, v = qkv(n=7)
        with pytest.raises(TypeError, match="mask"):
            sliding_window_attention(q, k, v, before=1, after=1, mask=torch.ones(2, 7))
        with pytest.raises(ValueError, match="mask"):
            sliding_window_attention(
                q, k, v, before=1, after=1, mask=torch.ones(2, 6, dtype=torch.bool)
            )
        with pytest.raises(ValueError, match="mask"):
            sliding_window_attention(
                q, k, v, before=1, after=1, mask=torch.ones(2, 1, 1, 7, dtype=torch.bool)
            )

    def test_options(self):
        q, k, v = qkv(n=7)
        with pytest.raises(ValueError, match="alpha"):
            sliding_window_attention(q, k, v, before=1, after=1, alpha=1.3)
        with pytest.raises(ValueError, match="alpha"):
            sliding_window_attention(
                q, k, v, before=1, after=1, normalizer="entmax", alpha=torch.ones(2, 3, 7, 1)
            )
        with pytest.raises(ValueError, match="dropout"):
            sliding_window_attention(q, k, v, before=1, after=1, dropout=1.5)
        with pytest.raises(ValueError, match="scale"):
            sliding_window_attention(q, k, v, before=1, after=1, scale=0.0)
        with pytest.raises(ValueError, match="normalizer"):
            sliding_window_attention(q, k, v, before=1, after=1, normalizer="nope")


def assert_low_precision_error(out, args, before, after, mask, normalizer):
    """``out`` is within twice the error of band-masked dense attention in the same dtype.

    ``args`` are the low-precision q, k, v. The reference is float64 attention on those
    very values, so rounding the inputs (which moves a bfloat16 sparsemax output by 3e-2)
    counts against neither side.
    """
    exact, _ = dense_reference(*(x.double() for x in args), before, after, mask, normalizer)
    dense, _ = dense_reference(*args, before, after, mask, normalizer)
    assert out.dtype == args[0].dtype and torch.isfinite(out).all()
    baseline = max_diff(dense.double(), exact)
    assert baseline > 0
    assert max_diff(out.double(), exact) <= 2 * baseline


class TestLowPrecision:
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
    def test_half_precision_as_close_as_dense(self, dtype, normalizer):
        q, k, v = qkv(n=300, d=16, dtype=torch.float32, seed=9)
        mask = padding_mask(2, 300, seed=9)
        args = [x.to(dtype) for x in (q, k, v)]
        out = sliding_window_attention(*args, before=17, after=5, mask=mask, normalizer=normalizer)
        assert_low_precision_error(out, args, 17, 5, mask, normalizer)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    before=st.integers(0, 8),
    after=st.integers(0, 8),
    normalizer=st.sampled_from(["softmax", "sparsemax"]),
    data=st.data(),
)
def test_row_ignores_keys_outside_its_window(n, before, after, normalizer, data):
    i = data.draw(st.integers(0, n - 1), label="query")
    q, k, v = qkv(batch=1, heads=2, n=n, d=4, seed=n)
    outside = (torch.arange(n) < i - before) | (torch.arange(n) > i + after)
    k2 = torch.where(outside[:, None], torch.randn_like(k) * 10, k)
    v2 = torch.where(outside[:, None], torch.randn_like(v) * 10, v)
    a = sliding_window_attention(q, k, v, before=before, after=after, normalizer=normalizer)
    b = sliding_window_attention(q, k2, v2, before=before, after=after, normalizer=normalizer)
    assert max_diff(a[:, :, i], b[:, :, i]) <= 1e-12


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
    def test_matches_dense_on_cuda(self, dtype, normalizer):
        q, k, v = qkv(n=300, d=16, dtype=torch.float32, seed=9, device="cuda")
        mask = padding_mask(2, 300, seed=9).cuda()
        mask[1] = False
        args = [x.to(dtype) for x in (q, k, v)]
        out = sliding_window_attention(*args, before=17, after=5, mask=mask, normalizer=normalizer)
        _, band = sliding_window_attention(
            *args, before=17, after=5, mask=mask, normalizer=normalizer, return_weights=True
        )
        assert out.device.type == "cuda" and torch.isfinite(band).all()
        if dtype == torch.float32:
            ref, _ = dense_reference(q.double(), k.double(), v.double(), 17, 5, mask, normalizer)
            assert max_diff(out.double(), ref) <= 1e-5
        else:
            assert_low_precision_error(out, args, 17, 5, mask, normalizer)

    def test_module_on_cuda_backward(self):
        module = SlidingWindowAttention(32, 4, 8, 8).cuda()
        x = torch.randn(2, 500, 32, device="cuda", requires_grad=True)
        module(x, mask=torch.ones(2, 500, dtype=torch.bool, device="cuda")).sum().backward()
        assert torch.isfinite(x.grad).all()
