"""Tests of :class:`MultiHeadAttention` and :class:`KVCache`.

Tolerances: float64 parity with ``torch.nn.MultiheadAttention`` within 1e-10; cached vs
uncached decoding in float32 within 1e-5; float16/bfloat16 smoke tests within 3e-2.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnzoo.attention.multi_head import KVCache, MultiHeadAttention
from attnzoo.attention.normalizers import available_normalizers


def randn(*shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def padding_mask(batch, n, seed=0):
    """Key-padding mask (True = real token) with token 0 always real."""
    mask = torch.rand(batch, n, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask[:, 0] = True
    return mask


def assert_close(actual, expected, tol):
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


def make(dim=16, heads=4, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    return MultiHeadAttention(dim, heads, **kwargs).to(dtype).eval()


def torch_reference(mha: MultiHeadAttention) -> nn.MultiheadAttention:
    """``torch.nn.MultiheadAttention`` (batch_first) holding ``mha``'s weights."""
    same_kv = mha.kv_dim == mha.dim
    ref = nn.MultiheadAttention(
        mha.dim, mha.heads, batch_first=True, kdim=mha.kv_dim, vdim=mha.kv_dim
    )
    ref = ref.to(mha.query.weight.dtype).eval()
    with torch.no_grad():
        if same_kv:
            ref.in_proj_weight.copy_(
                torch.cat([mha.query.weight, mha.key.weight, mha.value.weight])
            )
        else:
            ref.q_proj_weight.copy_(mha.query.weight)
            ref.k_proj_weight.copy_(mha.key.weight)
            ref.v_proj_weight.copy_(mha.value.weight)
        ref.in_proj_bias.copy_(torch.cat([mha.query.bias, mha.key.bias, mha.value.bias]))
        ref.out_proj.weight.copy_(mha.out.weight)
        ref.out_proj.bias.copy_(mha.out.bias)
    return ref


class TestParityWithTorch:
    def test_self_attention_with_key_padding_mask(self):
        mha = make()
        x, keep = randn(2, 5, 16), padding_mask(2, 5)
        out, weights = mha(x, mask=keep, return_weights=True)
        # torch's key_padding_mask means True = ignore: the opposite convention.
        ref_out, ref_weights = torch_reference(mha)(
            x, x, x, key_padding_mask=~keep, average_attn_weights=False
        )
        assert_close(out, ref_out, 1e-10)
        assert_close(weights, ref_weights, 1e-10)
        assert_close(mha(x, mask=keep), ref_out, 1e-10)

    def test_self_attention_with_full_mask(self):
        mha = make()
        x = randn(2, 5, 16)
        allowed = torch.rand(2, 4, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.4
        allowed[..., 0] = True
        out = mha(x, mask=allowed)
        ref_out, _ = torch_reference(mha)(x, x, x, attn_mask=~allowed.reshape(8, 5, 5))
        assert_close(out, ref_out, 1e-10)

    def test_causal_matches_torch_causal_mask(self):
        mha = make(causal=True)
        x = randn(2, 6, 16)
        future = torch.ones(6, 6, dtype=torch.bool).triu(1)
        ref_out, _ = torch_reference(mha)(x, x, x, attn_mask=future)
        assert_close(mha(x), ref_out, 1e-10)

    def test_cross_attention_with_other_width(self):
        mha = make(dim=16, heads=2, kv_dim=12)
        x, context, keep = randn(3, 4, 16), randn(3, 7, 12, seed=1), padding_mask(3, 7)
        out, weights = mha(x, context, mask=keep, return_weights=True)
        ref_out, ref_weights = torch_reference(mha)(
            x, context, context, key_padding_mask=~keep, average_attn_weights=False
        )
        assert out.shape == (3, 4, 16) and weights.shape == (3, 2, 4, 7)
        assert_close(out, ref_out, 1e-10)
        assert_close(weights, ref_weights, 1e-10)


class TestModule:
    def test_parameter_names_follow_bert(self):
        names = set(make().state_dict())
        expected = {
            f"{p}.{t}" for p in ("query", "key", "value", "out") for t in ("weight", "bias")
        }
        assert names == expected
        assert "alpha.raw" in dict(make(normalizer="entmax", learn_alpha=True).named_parameters())
        assert set(make(bias=False).state_dict()) == {
            f"{p}.weight" for p in ("query", "key", "value", "out")
        }

    def test_init_is_xavier_uniform_with_zero_bias(self):
        mha = make(dim=16, heads=4, dim_head=8)
        bound = (6 / (16 + 32)) ** 0.5
        for linear in (mha.query, mha.key, mha.value, mha.out):
            assert linear.weight.abs().max() <= bound
            assert linear.weight.abs().max() > 0.8 * bound
            assert (linear.bias == 0).all()

    def test_dim_head_default_and_explicit(self):
        assert make(dim=16, heads=4).dim_head == 4
        mha = make(dim=10, heads=3, dim_head=6)
        assert mha.query.out_features == 18
        assert mha(randn(2, 3, 10)).shape == (2, 3, 10)

    def test_weights_rows_sum_to_one(self):
        mha = make()
        x, keep = randn(2, 5, 16), padding_mask(2, 5)
        out, weights = mha(x, mask=keep, return_weights=True)
        assert weights.shape == (2, 4, 5, 5)
        assert_close(weights.sum(-1), torch.ones(2, 4, 5, dtype=weights.dtype), 1e-12)
        assert (weights.masked_select(~keep[:, None, None, :].expand_as(weights)) == 0).all()
        assert_close(mha(x, mask=keep), out, 1e-10)

    def test_fully_masked_query_gives_projected_zero(self):
        mha = make()
        x = randn(1, 3, 16)
        allowed = torch.ones(1, 1, 3, 3, dtype=torch.bool)
        allowed[..., 1, :] = False
        out = mha(x, mask=allowed)
        # The attention output of that row is 0, so only the output bias remains.
        assert_close(out[0, 1], mha.out.bias, 0.0)

    @pytest.mark.parametrize("normalizer", available_normalizers())
    def test_every_normalizer(self, normalizer):
        mha = make(normalizer=normalizer)
        x, keep = randn(2, 5, 16), padding_mask(2, 5)
        out, weights = mha(x, mask=keep, return_weights=True)
        assert out.shape == (2, 5, 16) and torch.isfinite(out).all()
        assert_close(weights.sum(-1), torch.ones(2, 4, 5, dtype=weights.dtype), 1e-6)

    def test_dropout_only_in_training(self):
        mha = make(dropout=0.5)
        x = randn(2, 8, 16)
        assert torch.equal(mha(x), mha(x))
        reference = mha(x)
        mha.train()
        torch.manual_seed(0)
        assert (mha(x) - reference).abs().max() > 1e-3


class TestLearnedAlpha:
    def test_alpha_gets_gradients(self):
        mha = make(normalizer="entmax", learn_alpha=True, dtype=torch.float32)
        with torch.no_grad():
            mha.alpha.raw.copy_(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
        mha(randn(2, 5, 16, dtype=torch.float32)).square().sum().backward()
        grad = mha.alpha.raw.grad
        assert grad is not None and torch.isfinite(grad).all() and (grad != 0).any()

    def test_matches_fixed_alpha_at_init(self):
        learned = make(normalizer="entmax", learn_alpha=True, alpha=1.3, dtype=torch.float32)
        fixed = make(normalizer="entmax", alpha=1.3, dtype=torch.float32)
        x = randn(2, 5, 16, dtype=torch.float32)
        assert_close(learned(x), fixed(x), 1e-5)

    def test_per_head_alpha_changes_sparsity(self):
        mha = make(normalizer="entmax", learn_alpha=True)
        with torch.no_grad():
            mha.alpha.raw.copy_(torch.tensor([-20.0, -20.0, 20.0, 20.0], dtype=torch.float64))
        _, weights = mha(randn(2, 6, 16) * 3, return_weights=True)
        zeros = (weights == 0).sum(dim=(0, 2, 3))
        # alpha near 1.01 is almost dense, alpha = 2 (sparsemax) is sparse.
        assert zeros[2:].min() > zeros[:2].max()


class TestKVCache:
    def test_self_attention_token_by_token(self):
        mha = make(causal=True, dtype=torch.float32)
        x = randn(2, 6, 16, dtype=torch.float32)
        cache = KVCache()
        steps = [mha(x[:, t : t + 1], cache=cache) for t in range(6)]
        assert len(cache) == 6 and cache.key.shape == (2, 4, 6, 4)
        assert_close(torch.cat(steps, dim=1), mha(x), 1e-5)

    def test_self_attention_in_chunks_with_padding_mask(self):
        mha = make(causal=True, dtype=torch.float32)
        x, keep = randn(2, 7, 16, dtype=torch.float32), padding_mask(2, 7)
        cache = KVCache()
        steps = [
            mha(x[:, start:stop], mask=keep[:, :stop], cache=cache)
            for start, stop in [(0, 3), (3, 4), (4, 7)]
        ]
        assert_close(torch.cat(steps, dim=1), mha(x, mask=keep), 1e-5)

    def test_cross_attention_projects_context_once(self):
        mha = make(kv_dim=12, dtype=torch.float32)
        x, context = randn(2, 5, 16, dtype=torch.float32), randn(2, 7, 12, dtype=torch.float32)
        keep = padding_mask(2, 7)
        calls = []
        mha.key.register_forward_hook(lambda *_: calls.append(1))
        cache = KVCache()
        steps = [mha(x[:, t : t + 1], context, mask=keep, cache=cache) for t in range(5)]
        assert len(calls) == 1 and len(cache) == 7
        assert_close(torch.cat(steps, dim=1), mha(x, context, mask=keep), 1e-5)

    def test_reset(self):
        cache = KVCache()
        make()(randn(1, 2, 16), cache=cache)
        cache.reset()
        assert len(cache) == 0 and cache.key is None and cache.value is None


class TestLowPrecision:
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    @pytest.mark.parametrize("normalizer", ["softmax", "entmax15"])
    def test_half_precision_close_to_float32(self, dtype, normalizer):
        mha = make(normalizer=normalizer, causal=True, dtype=torch.float32)
        x, keep = randn(2, 5, 16, dtype=torch.float32), padding_mask(2, 5)
        expected = mha(x, mask=keep)
        out = mha.to(dtype)(x.to(dtype), mask=keep)
        assert out.dtype == dtype
        assert_close(out.float(), expected, 3e-2)


def call(mha_kwargs=None, **forward):
    """Build a small module with ``mha_kwargs`` and call it with valid inputs + ``forward``."""
    mha = make(**(mha_kwargs or {}))
    inputs = {"x": randn(2, 3, 16), **forward}
    return mha(inputs.pop("x"), **inputs)


class TestValidation:
    @pytest.mark.parametrize(
        "kwargs, name",
        [
            ({"dim": 10, "heads": 3}, "`dim`"),
            ({"heads": 0}, "`heads`"),
            ({"dim_head": 0}, "`dim_head`"),
            ({"dropout": 1.5}, "`dropout`"),
            ({"normalizer": "nope"}, "`normalizer`"),
            ({"learn_alpha": True}, "`learn_alpha"),
            ({"alpha": 1.5}, "`alpha`"),
            ({"normalizer": "entmax", "alpha": 1.0}, "`alpha`"),
            ({"normalizer": "entmax", "learn_alpha": True, "alpha": 2.0}, "`alpha`"),
        ],
    )
    def test_bad_constructor_argument_is_named(self, kwargs, name):
        with pytest.raises(ValueError, match=name):
            make(**kwargs)

    @pytest.mark.parametrize(
        "mha_kwargs, forward, error, name",
        [
            (None, {"x": randn(3, 16)}, ValueError, "`x`"),
            (None, {"x": randn(2, 3, 8)}, ValueError, "`x`"),
            (None, {"context": randn(2, 4)}, ValueError, "`context`"),
            (None, {"context": randn(3, 4, 16)}, ValueError, "`context`"),
            ({"kv_dim": 12}, {"context": randn(2, 4, 16)}, ValueError, "`context`"),
            ({"kv_dim": 12}, {}, ValueError, "`context`"),
            (None, {"mask": torch.ones(2, 3)}, TypeError, "`mask`"),
            (None, {"mask": torch.ones(2, 3, dtype=torch.int8)}, TypeError, "`mask`"),
            (None, {"mask": torch.ones(2, 4, dtype=torch.bool)}, ValueError, "`mask`"),
            (None, {"mask": torch.ones(3, 3, dtype=torch.bool)}, ValueError, "`mask`"),
            (None, {"mask": torch.ones(2, 3, 3, dtype=torch.bool)}, ValueError, "`mask`"),
            (None, {"mask": torch.ones(2, 5, 3, 3, dtype=torch.bool)}, ValueError, "`mask`"),
            (None, {"mask": torch.ones(3, dtype=torch.bool)}, ValueError, "`mask`"),
        ],
    )
    def test_bad_forward_argument_is_named(self, mha_kwargs, forward, error, name):
        with pytest.raises(error, match=name):
            call(mha_kwargs, **forward)


class TestProperties:
    @settings(max_examples=20, deadline=None)
    @given(
        n_c=st.integers(2, 6),
        normalizer=st.sampled_from(["softmax", "sparsemax", "entmax15"]),
        seed=st.integers(0, 2**16),
    )
    def test_masked_context_tokens_do_not_matter(self, n_c, normalizer, seed):
        mha = make(dim=8, heads=2, kv_dim=6, normalizer=normalizer)
        x, context = randn(2, 3, 8, seed=seed), randn(2, n_c, 6, seed=seed + 1)
        keep = padding_mask(2, n_c, seed=seed)
        noisy = torch.where(keep[..., None], context, 100 * randn(2, n_c, 6, seed=seed + 2))
        assert_close(mha(x, noisy, mask=keep), mha(x, context, mask=keep), 1e-10)

    @settings(max_examples=20, deadline=None)
    @given(data=st.data(), n=st.integers(2, 6), seed=st.integers(0, 2**16))
    def test_self_attention_is_permutation_equivariant(self, data, n, seed):
        mha = make(dim=8, heads=2)
        x = randn(2, n, 8, seed=seed)
        perm = torch.tensor(data.draw(st.permutations(range(n))))
        assert_close(mha(x[:, perm]), mha(x)[:, perm], 1e-10)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_matches_cpu(self, dtype):
        mha = make(causal=True, dtype=torch.float32)
        x, keep = randn(2, 6, 16, dtype=torch.float32), padding_mask(2, 6)
        expected = mha(x, mask=keep)
        out = mha.to("cuda", dtype)(x.to("cuda", dtype), mask=keep.cuda())
        assert out.device.type == "cuda" and out.dtype == dtype
        assert_close(out.float().cpu(), expected, 1e-5 if dtype == torch.float32 else 3e-2)

    def test_cache_on_cuda(self):
        mha = make(causal=True, dtype=torch.float32).cuda()
        x = randn(2, 5, 16, dtype=torch.float32).cuda()
        cache = KVCache()
        steps = [mha(x[:, t : t + 1], cache=cache) for t in range(5)]
        assert_close(torch.cat(steps, dim=1), mha(x), 1e-5)

    def test_learned_alpha_on_cuda(self):
        mha = make(normalizer="entmax", learn_alpha=True, dtype=torch.float32).cuda()
        mha(randn(2, 5, 16, dtype=torch.float32).cuda()).sum().backward()
        assert torch.isfinite(mha.alpha.raw.grad).all()
