"""Tests of :func:`attend` and the mask helpers.

Tolerances: float64 results must agree within 1e-10, float32 within 1e-5 (absolute),
float16/bfloat16 smoke tests within 3e-2 of float32.
"""

from __future__ import annotations

import entmax as entmax_ref
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo.attention import causal_tiles, functional
from attnzoo.attention.functional import attend, causal_mask, padding_mask_to_attention_mask
from attnzoo.attention.normalizers import available_normalizers

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def qkv(*batch, n_q=4, n_k=6, d=8, d_v=None, dtype=torch.float64, seed=0, device="cpu"):
    """Random q ``(*batch, n_q, d)``, k ``(*batch, n_k, d)``, v ``(*batch, n_k, d_v)``."""
    g = torch.Generator().manual_seed(seed)
    d_v = d if d_v is None else d_v
    shapes = [(*batch, n_q, d), (*batch, n_k, d), (*batch, n_k, d_v)]
    return [torch.randn(s, generator=g, dtype=dtype).to(device) for s in shapes]


def random_mask(*shape, seed=0, p=0.3):
    """Boolean mask with about ``p`` of the entries False, and key 0 always allowed."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) > p
    mask[..., 0] = True
    return mask


def reference(q, k, v, mask=None, scale=None):
    """softmax(q k^T * scale) v written out, with empty rows set to zero."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v, weights


def as_tuple(result):
    """``attend``'s result as a tuple, whether or not it returned weights."""
    return result if isinstance(result, tuple) else (result,)


def assert_close(actual, expected, tol):
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


class TestSoftmaxParity:
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_no_mask_matches_sdpa(self, dtype):
        q, k, v = qkv(2, 3, dtype=dtype)
        expected = F.scaled_dot_product_attention(q, k, v)
        assert_close(attend(q, k, v), expected, TOL[dtype])
        assert_close(attend(q, k, v, return_weights=True)[0], expected, TOL[dtype])

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_key_padding_mask_matches_sdpa(self, dtype):
        q, k, v = qkv(2, 3, dtype=dtype)
        padding = random_mask(2, 6)
        mask = padding_mask_to_attention_mask(padding)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert_close(attend(q, k, v, mask=mask), expected, TOL[dtype])
        assert_close(attend(q, k, v, mask=mask, return_weights=True)[0], expected, TOL[dtype])

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_full_mask_matches_sdpa(self, dtype):
        q, k, v = qkv(2, 3, dtype=dtype)
        mask = random_mask(2, 3, 4, 6, seed=1)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        assert_close(attend(q, k, v, mask=mask), expected, TOL[dtype])
        assert_close(attend(q, k, v, mask=mask, return_weights=True)[0], expected, TOL[dtype])

    def test_odd_sizes_and_scale(self):
        q, k, v = qkv(3, n_q=7, n_k=13, d=5, d_v=3)
        mask = random_mask(3, 7, 13, seed=2)
        expected, weights = reference(q, k, v, mask, scale=0.7)
        out = attend(q, k, v, mask=mask, scale=0.7)
        assert out.shape == (3, 7, 3)
        assert_close(out, expected, 1e-10)
        out_w, w = attend(q, k, v, mask=mask, scale=0.7, return_weights=True)
        assert w.shape == (3, 7, 13)
        assert_close(out_w, expected, 1e-10)
        assert_close(w, weights, 1e-10)

    def test_causal_square_matches_sdpa_is_causal(self):
        q, k, v = qkv(2, 3, n_q=5, n_k=5)
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        assert_close(attend(q, k, v, causal=True), expected, 1e-10)
        assert_close(attend(q, k, v, causal=True, return_weights=True)[0], expected, 1e-10)

    @pytest.mark.parametrize("n_q, n_k", [(3, 8), (1, 8), (7, 13)])
    def test_causal_is_bottom_right(self, n_q, n_k):
        q, k, v = qkv(2, n_q=n_q, n_k=n_k, d=5, d_v=3)
        explicit = torch.ones(n_q, n_k).tril(diagonal=n_k - n_q).bool()
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=explicit)
        assert_close(attend(q, k, v, causal=True), expected, 1e-10)
        assert_close(attend(q, k, v, causal=True, return_weights=True)[0], expected, 1e-10)

    def test_causal_combines_with_mask(self):
        q, k, v = qkv(2, n_q=3, n_k=6)
        padding = random_mask(2, 6, seed=3)
        mask = padding[:, None, :]
        expected, _ = reference(q, k, v, mask & causal_mask(3, 6))
        assert_close(attend(q, k, v, mask=mask, causal=True), expected, 1e-10)

    def test_weights_path_gradients_match_fast_path(self):
        q, k, v = (t.requires_grad_() for t in qkv(2, n_q=5, n_k=7))
        mask = random_mask(2, 5, 7, seed=4)
        grads = []
        for return_weights in (False, True):
            out = attend(q, k, v, mask=mask, causal=True, return_weights=return_weights)
            out = out[0] if return_weights else out
            grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
        for fast, slow in zip(*grads, strict=True):
            assert_close(fast, slow, 1e-10)

    def test_weights_rows_sum_to_one(self):
        q, k, v = qkv(2, 3)
        _, weights = attend(q, k, v, mask=random_mask(2, 3, 4, 6), return_weights=True)
        assert_close(weights.sum(-1), torch.ones(2, 3, 4, dtype=weights.dtype), 1e-12)
        assert (weights >= 0).all()


class TestMaskHelpers:
    def test_causal_mask_square_is_lower_triangular(self):
        assert torch.equal(causal_mask(4, 4), torch.ones(4, 4).tril().bool())

    def test_causal_mask_last_query_sees_all_keys(self):
        mask = causal_mask(2, 5)
        assert mask[-1].all()
        assert mask[0].tolist() == [True, True, True, True, False]

    def test_causal_mask_more_queries_than_keys(self):
        mask = causal_mask(4, 2)
        assert not mask[:2].any()
        assert mask[-1].all()

    def test_padding_mask_to_attention_mask(self):
        padding = torch.tensor([[True, False, True]])
        assert padding_mask_to_attention_mask(padding).shape == (1, 1, 1, 3)
        with pytest.raises(TypeError, match="`padding_mask`"):
            padding_mask_to_attention_mask(padding.float())
        with pytest.raises(ValueError, match="`padding_mask`"):
            padding_mask_to_attention_mask(padding[0])


class TestFullyMaskedRows:
    @pytest.mark.parametrize("normalizer", available_normalizers())
    @pytest.mark.parametrize("return_weights", [False, True])
    def test_empty_rows_are_zero_with_zero_gradient(self, normalizer, return_weights):
        q, k, v = (t.requires_grad_() for t in qkv(2, n_q=4, n_k=5))
        mask = random_mask(2, 4, 5)
        mask[0, 1] = False
        mask[1, 3] = False
        result = attend(q, k, v, mask=mask, normalizer=normalizer, return_weights=return_weights)
        out = result[0] if return_weights else result
        assert (out[0, 1] == 0).all() and (out[1, 3] == 0).all()
        if return_weights:
            assert (result[1][0, 1] == 0).all()
        q_grad, k_grad, v_grad = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=True)
        assert torch.isfinite(v_grad).all()
        if q_grad is not None:  # hardmax passes no gradient to the scores
            assert torch.isfinite(q_grad).all() and torch.isfinite(k_grad).all()
            assert (q_grad[0, 1] == 0).all() and (q_grad[1, 3] == 0).all()

    def test_fast_path_guards_against_a_nan_backend(self, monkeypatch):
        """Some SDPA backends return NaN for a row with no allowed key; attend must not."""

        def naive_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
            assert attn_mask is not None and not is_causal and dropout_p == 0.0
            scores = (q @ k.transpose(-2, -1)) * (scale or q.shape[-1] ** -0.5)
            return torch.softmax(scores.masked_fill(~attn_mask, float("-inf")), -1) @ v

        monkeypatch.setattr(F, "scaled_dot_product_attention", naive_sdpa)
        q, k, v = (t.requires_grad_() for t in qkv(2, n_q=4, n_k=5))
        mask = random_mask(2, 4, 5)
        mask[0, 1] = False
        out = attend(q, k, v, mask=mask)
        assert (out[0, 1] == 0).all()
        assert_close(out, reference(q, k, v, mask)[0], 1e-10)
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)
        assert (grads[0][0, 1] == 0).all()

    def test_causal_with_more_queries_than_keys(self):
        q, k, v = qkv(2, n_q=5, n_k=3)
        out = attend(q, k, v, causal=True)
        assert (out[:, :2] == 0).all()
        assert_close(out[:, 2:], reference(q[:, 2:], k, v, causal_mask(3, 3))[0], 1e-10)

    def test_everything_masked(self):
        q, k, v = qkv(2, n_q=3, n_k=4)
        out = attend(q, k, v, mask=torch.zeros(1, 1, 1, dtype=torch.bool))
        assert torch.equal(out, torch.zeros_like(out))


class TestNormalizers:
    @pytest.mark.parametrize("normalizer", available_normalizers())
    def test_every_registered_name_works(self, normalizer):
        q, k, v = qkv(2, 3, n_q=4, n_k=6)
        mask = random_mask(2, 1, 4, 6)
        out, weights = attend(q, k, v, mask=mask, normalizer=normalizer, return_weights=True)
        assert out.shape == (2, 3, 4, 8) and weights.shape == (2, 3, 4, 6)
        assert_close(weights.sum(-1), torch.ones(2, 3, 4, dtype=weights.dtype), 1e-6)
        assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()
        assert_close(out, weights @ v, 1e-10)
        if normalizer != "gumbel":  # gumbel draws fresh noise on every call
            assert_close(attend(q, k, v, mask=mask, normalizer=normalizer), out, 1e-10)

    def test_callable_normalizer(self):
        q, k, v = qkv(2, n_q=3, n_k=5)
        _, weights = attend(
            q, k, v, normalizer=lambda s, dim=-1: torch.softmax(2 * s, dim), return_weights=True
        )
        _, expected = attend(q, k, v, scale=2 * 8**-0.5, return_weights=True)
        assert_close(weights, expected, 1e-10)

    @pytest.mark.parametrize(
        "normalizer, alpha, ref",
        [
            ("sparsemax", None, entmax_ref.sparsemax),
            ("entmax15", None, entmax_ref.entmax15),
            ("entmax", 1.3, lambda s, dim: entmax_ref.entmax_bisect(s, 1.3, dim=dim)),
            ("entmax", 1.8, lambda s, dim: entmax_ref.entmax_bisect(s, 1.8, dim=dim)),
        ],
    )
    def test_sparse_weights_match_entmax_package(self, normalizer, alpha, ref):
        q, k, v = qkv(2, 3, n_q=5, n_k=7)
        mask = random_mask(2, 3, 5, 7, seed=5)
        _, weights = attend(
            q, k, v, mask=mask, normalizer=normalizer, alpha=alpha, return_weights=True
        )
        # The package does not take -inf; a very negative score gets exactly zero weight.
        scores = (q @ k.transpose(-2, -1) * 8**-0.5).masked_fill(~mask, -1e6)
        assert_close(weights, ref(scores, dim=-1), 1e-10)
        assert (weights == 0).any(), "sparse normalisers should give exact zeros here"

    def test_per_head_alpha_tensor(self):
        q, k, v = qkv(2, 3, n_q=4, n_k=6)
        alphas = [1.2, 1.5, 2.0]
        alpha = torch.tensor(alphas, dtype=torch.float64).view(1, 3, 1, 1)
        _, weights = attend(q, k, v, normalizer="entmax", alpha=alpha, return_weights=True)
        for h, a in enumerate(alphas):
            _, expected = attend(
                q[:, h], k[:, h], v[:, h], normalizer="entmax", alpha=a, return_weights=True
            )
            assert_close(weights[:, h], expected, 1e-10)


class TestDropout:
    @pytest.mark.parametrize("return_weights", [False, True])
    def test_eval_mode_ignores_dropout(self, return_weights):
        q, k, v = qkv(2, n_q=4, n_k=6)
        kwargs = {"mask": random_mask(2, 4, 6), "return_weights": return_weights}
        plain = attend(q, k, v, **kwargs)
        dropped = attend(q, k, v, dropout=0.5, training=False, **kwargs)
        for a, b in zip(as_tuple(plain), as_tuple(dropped), strict=True):
            assert torch.equal(a, b)

    @pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
    def test_training_mode_drops_weights(self, normalizer):
        q, k, v = qkv(2, n_q=8, n_k=16)
        plain = attend(q, k, v, normalizer=normalizer)
        torch.manual_seed(0)
        dropped = attend(q, k, v, normalizer=normalizer, dropout=0.5)
        assert torch.isfinite(dropped).all()
        assert (dropped - plain).abs().max() > 1e-3

    def test_returned_weights_are_before_dropout(self):
        q, k, v = qkv(2, n_q=8, n_k=16)
        torch.manual_seed(0)
        _, weights = attend(q, k, v, dropout=0.5, return_weights=True)
        assert_close(weights.sum(-1), torch.ones(2, 8, dtype=weights.dtype), 1e-12)


class TestLowPrecision:
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("normalizer", ["softmax", "sparsemax", "entmax"])
    @pytest.mark.parametrize("return_weights", [False, True])
    def test_half_precision_close_to_float32(self, dtype, normalizer, return_weights):
        q, k, v = qkv(2, n_q=4, n_k=6, dtype=torch.float32)
        mask = random_mask(2, 4, 6)
        mask[0, 2] = False
        expected = attend(q, k, v, mask=mask, normalizer=normalizer)
        result = attend(
            q.to(dtype),
            k.to(dtype),
            v.to(dtype),
            mask=mask,
            normalizer=normalizer,
            return_weights=return_weights,
        )
        out = result[0] if return_weights else result
        assert out.dtype == dtype
        assert (out[0, 2] == 0).all()
        assert_close(out.float(), expected, 3e-2)


def bad_call(**overrides):
    """Call attend with valid arguments except ``overrides``."""
    q, k, v = qkv(2, n_q=3, n_k=4)
    kwargs = {"q": q, "k": k, "v": v, **overrides}
    return attend(kwargs.pop("q"), kwargs.pop("k"), kwargs.pop("v"), **kwargs)


class TestValidation:
    @pytest.mark.parametrize(
        "overrides, error, name",
        [
            ({"q": torch.randn(3)}, ValueError, "`q`"),
            ({"q": [[1.0]]}, TypeError, "`q`"),
            ({"k": torch.randn(4, 8, dtype=torch.float64)}, ValueError, "`k`"),
            ({"k": torch.randn(3, 4, 8, dtype=torch.float64)}, ValueError, "`k`"),
            ({"k": torch.randn(2, 4, 7, dtype=torch.float64)}, ValueError, "`k`"),
            ({"k": torch.randn(2, 4, 8)}, TypeError, "`k`"),
            ({"v": torch.randn(2, 5, 8, dtype=torch.float64)}, ValueError, "`v`"),
            ({"v": torch.randn(2, 4, dtype=torch.float64)}, ValueError, "`v`"),
            ({"mask": torch.ones(2, 3, 4)}, TypeError, "`mask`"),
            ({"mask": torch.ones(2, 3, 4, dtype=torch.int64)}, TypeError, "`mask`"),
            ({"mask": torch.ones(2, 3, 5, dtype=torch.bool)}, ValueError, "`mask`"),
            ({"mask": torch.ones(5, 1, 1, 4, dtype=torch.bool)}, ValueError, "`mask`"),
            ({"mask": torch.ones(4, 3, 4, dtype=torch.bool)}, ValueError, "`mask`"),
            ({"dropout": -0.1}, ValueError, "`dropout`"),
            ({"dropout": 1.0}, ValueError, "`dropout`"),
            ({"scale": 0.0}, ValueError, "`scale`"),
            ({"scale": -1.0}, ValueError, "`scale`"),
            ({"alpha": 1.5}, ValueError, "`alpha`"),
            ({"causal": 1}, TypeError, "`causal`"),
            ({"normalizer": "nope"}, ValueError, "`normalizer`"),
        ],
    )
    def test_bad_argument_is_named(self, overrides, error, name):
        with pytest.raises(error, match=name):
            bad_call(**overrides)


small_ints = st.integers(min_value=1, max_value=5)


class TestProperties:
    @settings(max_examples=25, deadline=None)
    @given(
        n_q=small_ints,
        n_k=st.integers(2, 6),
        normalizer=st.sampled_from(["softmax", "sparsemax", "entmax15"]),
        seed=st.integers(0, 2**16),
        data=st.data(),
    )
    def test_permuting_keys_and_values_changes_nothing(self, n_q, n_k, normalizer, seed, data):
        q, k, v = qkv(2, n_q=n_q, n_k=n_k, d=4, d_v=3, seed=seed)
        mask = random_mask(2, n_q, n_k, seed=seed)
        perm = torch.tensor(data.draw(st.permutations(range(n_k))))
        out = attend(q, k, v, mask=mask, normalizer=normalizer)
        permuted = attend(q, k[:, perm], v[:, perm], mask=mask[..., perm], normalizer=normalizer)
        assert_close(permuted, out, 1e-10)

    @settings(max_examples=25, deadline=None)
    @given(
        n_q=small_ints,
        n_k=st.integers(2, 6),
        normalizer=st.sampled_from(["softmax", "sparsemax", "entmax15", "hardmax"]),
        causal=st.booleans(),
        return_weights=st.booleans(),
        seed=st.integers(0, 2**16),
    )
    def test_masked_keys_and_values_do_not_matter(
        self, n_q, n_k, normalizer, causal, return_weights, seed
    ):
        q, k, v = qkv(2, n_q=n_q, n_k=n_k, d=4, d_v=3, seed=seed)
        padding = random_mask(2, n_k, seed=seed, p=0.5)
        mask = padding[:, None, :]
        noise_k, noise_v = (100 * torch.randn_like(t) for t in (k, v))
        k2 = torch.where(padding[..., None], k, noise_k)
        v2 = torch.where(padding[..., None], v, noise_v)
        kwargs = {"mask": mask, "causal": causal, "normalizer": normalizer}
        out = attend(q, k, v, return_weights=return_weights, **kwargs)
        changed = attend(q, k2, v2, return_weights=return_weights, **kwargs)
        for a, b in zip(as_tuple(out), as_tuple(changed), strict=True):
            assert_close(a, b, 1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("causal", [False, True])
    def test_matches_cpu_float64(self, dtype, causal):
        q, k, v = qkv(2, 4, n_q=9, n_k=9, d=16)
        mask = padding_mask_to_attention_mask(random_mask(2, 9))
        expected = attend(q, k, v, mask=mask, causal=causal)
        cuda = [t.to("cuda", dtype) for t in (q, k, v)]
        fast = attend(*cuda, mask=mask.cuda(), causal=causal)
        slow, _ = attend(*cuda, mask=mask.cuda(), causal=causal, return_weights=True)
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        assert fast.device.type == "cuda" and fast.dtype == dtype
        assert_close(fast.double().cpu(), expected, tol)
        assert_close(slow.double().cpu(), expected, tol)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_fully_masked_rows_are_zero(self, dtype):
        q, k, v = (t.to("cuda", dtype).requires_grad_() for t in qkv(2, 4, n_q=8, n_k=8, d=16))
        mask = torch.ones(2, 1, 8, 8, dtype=torch.bool, device="cuda")
        mask[0, :, 3] = False
        out = attend(q, k, v, mask=mask)
        assert (out[0, :, 3] == 0).all() and torch.isfinite(out).all()
        out.float().sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v))

    def test_dropout_on_the_fast_path(self):
        q, k, v = (t.to("cuda", torch.float32) for t in qkv(2, 4, n_q=8, n_k=8, d=16))
        out = attend(q, k, v, dropout=0.5)
        assert torch.isfinite(out).all()
        assert (out - attend(q, k, v)).abs().max() > 1e-3


def biased_reference(q, k, v, bias, mask=None, normalizer="softmax", alpha=None):
    """Weights and output of ``normalize(q k^T / sqrt(d) + bias)`` computed directly: the
    trusted normaliser (torch.softmax, the entmax package, an argmax) on the biased
    scores, with forbidden keys given a very negative score (the package takes no -inf)."""
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    allowed = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.expand_as(scores)
    allowed = allowed & ~torch.isneginf(scores)
    low = scores.masked_fill(~allowed, -1e6)
    if normalizer == "softmax":
        weights = torch.softmax(low, -1)
    elif normalizer == "sparsemax":
        weights = entmax_ref.sparsemax(low, dim=-1)
    elif normalizer == "entmax15":
        weights = entmax_ref.entmax15(low, dim=-1)
    elif normalizer == "entmax":
        weights = entmax_ref.entmax_bisect(low, alpha, dim=-1, n_iter=100)
    else:
        weights = F.one_hot(low.argmax(-1), scores.shape[-1]).to(scores.dtype)
    weights = weights * allowed.any(-1, keepdim=True)  # a row with no key is zero
    return weights @ v, weights


BIASED = ["softmax", "sparsemax", "entmax15", "entmax", "hardmax"]


class TestBias:
    @pytest.mark.parametrize("normalizer", BIASED)
    @pytest.mark.parametrize("return_weights", [False, True])
    @pytest.mark.parametrize("causal", [False, True])
    def test_matches_dense_reference(self, normalizer, return_weights, causal):
        q, k, v = qkv(2, 3, n_q=5, n_k=7, d=6, d_v=5, seed=11)
        bias = torch.randn(1, 3, 5, 7, dtype=torch.float64)
        mask = random_mask(2, 1, 1, 7, seed=12)
        alpha = 1.3 if normalizer == "entmax" else None
        full = mask & causal_mask(5, 7) if causal else mask
        expected_out, expected_w = biased_reference(q, k, v, bias, full, normalizer, alpha)
        result = attend(
            q,
            k,
            v,
            mask=mask,
            bias=bias,
            causal=causal,
            normalizer=normalizer,
            alpha=alpha,
            return_weights=return_weights,
        )
        out = as_tuple(result)[0]
        tol = 1e-6 if normalizer == "entmax" else 1e-10  # bisection vs bisection
        assert_close(out, expected_out, tol)
        if return_weights:
            assert_close(result[1], expected_w, tol)

    def test_softmax_fast_path_matches_sdpa_float_mask(self):
        q, k, v = qkv(2, 4, n_q=9, n_k=11, d=8)
        bias = torch.randn(4, 9, 11, dtype=torch.float64)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        assert_close(attend(q, k, v, bias=bias), expected, 1e-10)

    @pytest.mark.parametrize("shape", [(), (7,), (5, 1)])
    @pytest.mark.parametrize("causal", [False, True])
    def test_low_rank_bias_on_the_fast_path(self, shape, causal):
        q, k, v = qkv(2, 3, n_q=5, n_k=7)
        bias = torch.randn(shape, dtype=torch.float64)
        full = causal_mask(5, 7) if causal else torch.ones(5, 7, dtype=torch.bool)
        expected = biased_reference(q, k, v, bias, full)[0]
        assert_close(attend(q, k, v, bias=bias, causal=causal), expected, 1e-12)

    @pytest.mark.parametrize("normalizer", BIASED)
    def test_zero_bias_changes_nothing(self, normalizer):
        q, k, v = qkv(2, 3, n_q=4, n_k=6)
        mask = random_mask(2, 3, 4, 6)
        alpha = 1.7 if normalizer == "entmax" else None
        kwargs = {"mask": mask, "normalizer": normalizer, "alpha": alpha, "causal": True}
        plain = attend(q, k, v, return_weights=True, **kwargs)
        zero = attend(
            q, k, v, bias=torch.zeros(6, dtype=torch.float64), return_weights=True, **kwargs
        )
        for a, b in zip(plain, zero, strict=True):
            assert_close(a, b, 1e-12)

    @pytest.mark.parametrize("return_weights", [False, True])
    def test_gradients_reach_the_bias_on_both_paths(self, return_weights):
        q, k, v = (t.requires_grad_() for t in qkv(2, 3, n_q=5, n_k=6))
        bias = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
        mask = random_mask(2, 1, 5, 6, seed=3)
        out = as_tuple(attend(q, k, v, mask=mask, bias=bias, return_weights=return_weights))[0]
        got = torch.autograd.grad(out.square().sum(), (q, k, v, bias))
        expected_out, _ = biased_reference(q, k, v, bias, mask)
        want = torch.autograd.grad(expected_out.square().sum(), (q, k, v, bias))
        for a, b in zip(got, want, strict=True):
            assert_close(a, b, 1e-10)

    @pytest.mark.parametrize("normalizer", available_normalizers())
    @pytest.mark.parametrize("return_weights", [False, True])
    def test_minus_inf_bias_forbids_keys_and_empty_rows_are_zero(self, normalizer, return_weights):
        q, k, v = (t.requires_grad_() for t in qkv(2, n_q=4, n_k=5))
        bias = torch.randn(2, 4, 5, dtype=torch.float64)
        bias[:, :, 1] = float("-inf")  # key 1 forbidden everywhere
        bias[0, 2] = float("-inf")  # query 2 of batch 0 has no key left
        bias = bias.requires_grad_()
        result = attend(q, k, v, bias=bias, normalizer=normalizer, return_weights=True)
        out, weights = result
        assert (weights[..., 1] == 0).all() and (weights[0, 2] == 0).all()
        assert (out[0, 2] == 0).all() and torch.isfinite(out).all()
        fast = as_tuple(
            attend(q, k, v, bias=bias, normalizer=normalizer, return_weights=return_weights)
        )[0]
        grads = torch.autograd.grad(fast.sum(), (q, k, v, bias), allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
        if grads[0] is not None:  # hardmax passes no gradient to the scores
            assert (grads[0][0, 2] == 0).all()

    def test_fast_path_with_bias_guards_against_a_nan_backend(self, monkeypatch):
        def naive_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
            assert attn_mask is not None and attn_mask.is_floating_point() and not is_causal
            scores = (q @ k.transpose(-2, -1)) * (scale or q.shape[-1] ** -0.5) + attn_mask
            return torch.softmax(scores, -1) @ v  # NaN on an all -inf row

        monkeypatch.setattr(F, "scaled_dot_product_attention", naive_sdpa)
        q, k, v = qkv(2, n_q=4, n_k=5)
        mask = random_mask(2, 4, 5)
        mask[1, 3] = False
        bias = torch.randn(4, 5, dtype=torch.float64)
        out = attend(q, k, v, mask=mask, bias=bias, causal=True)
        assert (out[1, 3] == 0).all() and torch.isfinite(out).all()
        assert_close(out, biased_reference(q, k, v, bias, mask & causal_mask(4, 5))[0], 1e-10)

    def test_fast_path_guards_a_minus_inf_bias_row_and_leaves_the_bias_alone(self, monkeypatch):
        def naive_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
            scores = (q @ k.transpose(-2, -1)) * (scale or q.shape[-1] ** -0.5) + attn_mask
            return torch.softmax(scores, -1) @ v  # NaN on an all -inf row

        monkeypatch.setattr(F, "scaled_dot_product_attention", naive_sdpa)
        q, k, v = (t.requires_grad_() for t in qkv(2, 3, n_q=4, n_k=5))
        bias = torch.randn(3, 4, 5, dtype=torch.float64)
        bias[1, 2] = float("-inf")  # no mask: the row is fixed on a copy
        before = bias.clone()
        out = attend(q, k, v, bias=bias)
        assert torch.equal(bias, before)
        assert (out[:, 1, 2] == 0).all() and torch.isfinite(out).all()
        grads = torch.autograd.grad(out.sum(), (q, k, v))
        assert all(torch.isfinite(g).all() for g in grads)
        everywhere = torch.ones(4, 5, dtype=torch.bool)
        assert_close(out, biased_reference(q, k, v, bias, everywhere)[0], 1e-10)

    def test_a_trained_bias_on_a_cpu_skips_sdpa(self, monkeypatch):
        # SDPA's CPU kernels take no gradient for a float mask (its math path would run).
        calls = []
        sdpa = F.scaled_dot_product_attention

        def counting_sdpa(*args, **kwargs):
            calls.append(1)
            return sdpa(*args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
        q, k, v = qkv(2, 3, n_q=5, n_k=7)
        bias = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
        out = attend(q, k, v, bias=bias, causal=True)
        assert calls == []
        assert_close(out, biased_reference(q, k, v, bias, causal_mask(5, 7))[0], 1e-12)
        with torch.no_grad():
            attend(q, k, v, bias=bias, causal=True)
        attend(q, k, v, bias=bias.detach(), causal=True)
        assert calls == [1, 1]

    def test_bias_is_cast_to_the_dtype_of_q(self):
        q, k, v = qkv(2, n_q=3, n_k=4, dtype=torch.float32)
        bias = torch.randn(3, 4, dtype=torch.float64)
        out = attend(q, k, v, bias=bias)
        assert out.dtype == torch.float32
        assert_close(out, attend(q, k, v, bias=bias.float()), 0.0)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("normalizer", ["softmax", "entmax15"])
    def test_half_precision_close_to_float32(self, dtype, normalizer):
        q, k, v = qkv(2, 2, n_q=5, n_k=7, dtype=torch.float32)
        bias = -0.5 * torch.arange(7.0).expand(5, 7)
        expected = attend(q, k, v, bias=bias, causal=True, normalizer=normalizer)
        low = attend(
            *(t.to(dtype) for t in (q, k, v)), bias=bias, causal=True, normalizer=normalizer
        )
        assert low.dtype == dtype
        assert_close(low.float(), expected, 3e-2)

    @pytest.mark.parametrize(
        "bias, error",
        [
            ([[0.0]], TypeError),
            (torch.zeros(3, 4, dtype=torch.int64), TypeError),
            (torch.zeros(3, 4, dtype=torch.bool), TypeError),
            (torch.zeros(3, 5, dtype=torch.float64), ValueError),
            (torch.zeros(5, 3, 4, dtype=torch.float64), ValueError),
            (torch.zeros(1, 1, 3, 4, dtype=torch.float64), ValueError),
        ],
    )
    def test_bad_bias_is_named(self, bias, error):
        with pytest.raises(error, match="`bias`"):
            bad_call(bias=bias)


class TestCausalTiles:
    """Causal softmax with a mask or a bias goes by query tiles on a CPU. ``CAUSAL_TILE``
    is lowered to 4 here, so that small inputs take several tiles (ragged last one)."""

    @pytest.fixture(autouse=True)
    def small_tiles(self, monkeypatch):
        monkeypatch.setattr(causal_tiles, "CAUSAL_TILE", 4)

    @pytest.mark.parametrize("n_q, n_k", [(13, 13), (9, 17), (11, 6), (8, 8)])
    @pytest.mark.parametrize("with_mask", [False, True])
    @pytest.mark.parametrize(
        "bias_shape", [None, (1,), "keys", "queries", "full"], ids=lambda b: str(b)
    )
    def test_matches_the_dense_reference_with_gradients(self, n_q, n_k, with_mask, bias_shape):
        q, k, v = (t.requires_grad_() for t in qkv(2, 3, n_q=n_q, n_k=n_k, d=5, seed=4))
        mask = random_mask(2, 1, 1, n_k, seed=5) if with_mask else None
        if with_mask:
            mask[1, ..., : n_k // 2] = False  # some early queries of batch 1 keep no key
        shapes = {"keys": (n_k,), "queries": (n_q, 1), "full": (3, n_q, n_k)}
        shape = shapes.get(bias_shape, bias_shape)
        bias = None if shape is None else torch.randn(shape, dtype=torch.float64)
        if not functional._by_causal_tiles(q, k, mask, bias, True):
            assert mask is None and bias is None and n_q == n_k  # SDPA's own is_causal
        out = attend(q, k, v, mask=mask, bias=bias, causal=True)
        full = causal_mask(n_q, n_k) if mask is None else mask & causal_mask(n_q, n_k)
        expected = biased_reference(q, k, v, 0.0 if bias is None else bias, full)[0]
        expected = expected * full.any(-1, keepdim=True)  # rows with no key are zero
        assert_close(out, expected, 1e-12)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        want = torch.autograd.grad(expected.square().sum(), (q, k, v))
        for a, b in zip(grads, want, strict=True):
            assert_close(a, b, 1e-12)

    def test_tiles_are_used_only_where_they_save_work(self):
        q, k, _ = qkv(1, n_q=8, n_k=8)
        mask = torch.ones(8, 8, dtype=torch.bool)
        assert functional._by_causal_tiles(q, k, mask, None, True)
        assert not functional._by_causal_tiles(q, k, None, None, True)  # SDPA's is_causal
        assert not functional._by_causal_tiles(q, k, mask, None, False)
        assert not functional._by_causal_tiles(q[..., :7, :], k, mask, None, True)  # one tile
        learned = torch.zeros(8, 8, dtype=torch.float64, requires_grad=True)
        assert not functional._by_causal_tiles(q, k, None, learned, True)
        assert functional._by_causal_tiles(q, k, None, learned.detach(), True)
        with torch.no_grad():
            assert functional._by_causal_tiles(q, k, None, learned, True)

    def test_each_tile_scores_only_the_keys_up_to_its_last_query(self, monkeypatch):
        seen = []
        sdpa = F.scaled_dot_product_attention

        def recording_sdpa(q, k, v, **kwargs):
            seen.append((q.shape[-2], k.shape[-2]))
            return sdpa(q, k, v, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
        q, k, v = qkv(2, n_q=10, n_k=14)
        attend(q, k, v, bias=torch.zeros(14, dtype=torch.float64), causal=True)
        assert seen == [(4, 8), (4, 12), (2, 14)]
