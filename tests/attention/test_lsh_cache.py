"""Causal LSH attention decoding step by step over an LSHCache.

A cached step lets new query ``i`` see, in each hash round, every cached or new key
``j < i`` that is a real token and shares its bucket in that round (no chunk window), the
rounds combined with the duplicate-count correction. The reference builds that key set by
explicit loops (buckets from the argmax of ``[x R; -x R]``) and runs plain softmax over
the union of the rounds, with the self rule. Float64, tolerance 1e-10.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from attnzoo.attention.lsh import (
    LSHAttention,
    LSHCache,
    lsh_attention,
    lsh_cached_attention,
    random_rotations,
)
from attnzoo.attention.multi_head import KVCache
from attnzoo.transformers_zoo.generation import reorder_state

TOL = 1e-10
BATCH, HEADS, N, D, D_V, N_BUCKETS = 2, 3, 13, 6, 5, 4


def inputs(n: int = N, seed: int = 0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    qk = torch.randn(BATCH, HEADS, n, D, generator=g, dtype=dtype)
    v = torch.randn(BATCH, HEADS, n, D_V, generator=g, dtype=dtype)
    return qk, v


def left_padding(n: int, pads: tuple[int, ...]) -> Tensor:
    """``(len(pads), n)`` True = real token, row ``b`` starting with ``pads[b]`` pads."""
    return torch.arange(n)[None, :] >= torch.tensor(pads)[:, None]


def rotations(n_hashes: int, seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return random_rotations(HEADS, D, N_BUCKETS, n_hashes, generator=g, dtype=torch.float64)


def assert_close(actual: Tensor, expected: Tensor, tol: float = TOL) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


def chunks(n: int, sizes: list[int]) -> list[slice]:
    """Consecutive slices of ``range(n)`` with the given lengths (the last takes the rest)."""
    out, start = [], 0
    for size in sizes:
        if start >= n:
            break
        out.append(slice(start, min(start + size, n)))
        start += size
    if start < n:
        out.append(slice(start, n))
    return out


def same_bucket_reference(qk: Tensor, v: Tensor, rot: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the keys ``j < i`` sharing a bucket with ``i`` in some round, by loops."""
    b, h, n, d = qk.shape
    projected = torch.einsum("bhnd,hrdk->bhrnk", qk, rot)
    buckets = torch.cat([projected, -projected], dim=-1).argmax(dim=-1)  # (b, h, r, n)
    keys = F.normalize(qk, dim=-1)
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    out = torch.zeros(b, h, n, v.shape[-1], dtype=v.dtype)
    for bi in range(b):
        for hi in range(h):
            for i in range(n):
                seen = [
                    j
                    for j in range(i)
                    if real[bi, j] and bool((buckets[bi, hi, :, j] == buckets[bi, hi, :, i]).any())
                ]
                if seen:
                    scores = keys[bi, hi, seen] @ qk[bi, hi, i] / d**0.5
                    out[bi, hi, i] = torch.softmax(scores, dim=0) @ v[bi, hi, seen]
                elif real[bi, i]:
                    out[bi, hi, i] = v[bi, hi, i]
    return out


def decode(qk, v, rot, mask, sizes, cache: LSHCache | None = None) -> Tensor:
    """Feed the positions through one cache in steps of ``sizes``; concatenated outputs."""
    cache = LSHCache() if cache is None else cache
    outs = []
    for rows in chunks(qk.shape[2], sizes):
        step_mask = None if mask is None else mask[:, : rows.stop]
        outs.append(
            lsh_cached_attention(
                qk[:, :, rows], v[:, :, rows], cache, rotations=rot, mask=step_mask
            )
        )
    return torch.cat(outs, dim=2)


STEPS = {"tokens": [1] * N, "prefill": [5, 1, 3, 1], "whole": [N]}


class TestDenseReference:
    @pytest.mark.parametrize("n_hashes", [1, 3])
    @pytest.mark.parametrize("steps", list(STEPS), ids=list(STEPS))
    @pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
    def test_cached_steps_equal_softmax_over_same_bucket_keys(self, n_hashes, steps, padded):
        qk, v = inputs()
        rot = rotations(n_hashes)
        mask = left_padding(N, (0, 4)) if padded else None
        cache = LSHCache()
        out = decode(qk, v, rot, mask, STEPS[steps], cache)
        assert_close(out, same_bucket_reference(qk, v, rot, mask))
        assert len(cache) == N
        assert cache.buckets is not None and cache.buckets.shape == (BATCH, HEADS, n_hashes, N)
        assert cache.key is not None
        assert_close(cache.key, F.normalize(qk, dim=-1))

    def test_the_rounds_find_keys_one_round_misses(self):
        # With three rounds some query must see a key that the first round alone hides,
        # else the count-corrected combination above would be tested on single rounds only.
        qk, v = inputs()
        one = decode(qk, v, rotations(3)[:, :1], None, [N])
        three = decode(qk, v, rotations(3), None, [N])
        assert (one - three).abs().max() > 1e-3


class TestAgainstTheFullPass:
    @pytest.mark.parametrize("n_hashes", [1, 3])
    @pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
    def test_one_chunk_without_crossing_buckets_is_the_full_pass(self, n_hashes, padded):
        qk, v = inputs()
        rot = rotations(n_hashes)
        mask = left_padding(N, (0, 4)) if padded else None
        full = lsh_attention(
            qk,
            v,
            n_buckets=N_BUCKETS,
            n_hashes=n_hashes,
            chunk_length=N,
            causal=True,
            mask=mask,
            attend_across_buckets=False,
            rotations=rot,
        )
        assert_close(decode(qk, v, rot, mask, [1] * N), full)

    def test_chunked_full_pass_sees_another_key_set(self):
        # Chunks of 2 hide most same-bucket keys and show keys of other buckets: the
        # cached step is not meant to reproduce that pass.
        qk, v = inputs()
        rot = rotations(1)
        chunked = lsh_attention(
            qk, v, n_buckets=N_BUCKETS, chunk_length=2, causal=True, rotations=rot
        )
        assert (decode(qk, v, rot, None, [1] * N) - chunked).abs().max() > 1e-3


class TestModule:
    def module(self, **kwargs) -> LSHAttention:
        options = {"n_buckets": N_BUCKETS, "n_hashes": 3, "chunk_length": 4, "causal": True}
        return LSHAttention(12, HEADS, **{**options, "seed": 0, **kwargs}).double().eval()

    def test_steps_follow_the_reference_on_the_module_weights(self):
        module = self.module()
        x = torch.randn(BATCH, N, 12, dtype=torch.float64)
        mask = left_padding(N, (2, 0))
        cache = module.new_cache()
        steps = [
            module(x[:, rows], mask=mask[:, : rows.stop], cache=cache)
            for rows in chunks(N, [4, 1, 1, 5])
        ]
        qk = module.query_key(x).unflatten(-1, (HEADS, -1)).transpose(1, 2)
        v = module.value(x).unflatten(-1, (HEADS, -1)).transpose(1, 2)
        reference = same_bucket_reference(qk, v, module.rotations, mask)
        expected = module.out(reference.transpose(1, 2).flatten(2))
        assert_close(torch.cat(steps, dim=1), expected)

    def test_low_precision_close_to_float64(self):
        module = self.module()
        x = torch.randn(BATCH, 7, 12, dtype=torch.float64)
        expected = module(x, cache=module.new_cache())
        module = module.float()
        got = module(x.float(), cache=module.new_cache())
        assert got.dtype == torch.float32
        assert_close(got.double(), expected, 1e-5)

    def test_dropout_only_in_training(self):
        module = self.module(dropout=0.5)
        x = torch.randn(BATCH, 7, 12, dtype=torch.float64)
        evaluated = module(x, cache=module.new_cache())
        assert torch.equal(evaluated, module(x, cache=module.new_cache()))
        module.train()
        torch.manual_seed(0)
        assert not torch.allclose(module(x, cache=module.new_cache()), evaluated)

    def test_beam_reordering_keeps_buckets_aligned(self):
        module = self.module()
        x = torch.randn(3, 6, 12, dtype=torch.float64)
        cache = module.new_cache()
        module(x[:, :5], cache=cache)
        index = torch.tensor([2, 2, 0])
        reordered = reorder_state(cache, index)
        assert isinstance(reordered, LSHCache) and reordered is not cache
        assert reordered.buckets is not None and cache.buckets is not None
        assert torch.equal(reordered.buckets, cache.buckets[index])
        stepped = module(x[index, 5:], cache=reordered)
        whole = module(x[index], cache=module.new_cache())[:, 5:]
        assert_close(stepped, whole)

    def test_reset_empties_the_cache(self):
        cache = LSHCache()
        module = self.module()
        module(torch.randn(1, 3, 12, dtype=torch.float64), cache=cache)
        cache.reset()
        assert len(cache) == 0 and cache.buckets is None


class TestErrors:
    def test_bidirectional_lsh_refuses_a_cache(self):
        module = LSHAttention(12, HEADS, causal=False, seed=0)
        with pytest.raises(ValueError, match="causal=False"):
            module(torch.randn(1, 3, 12), cache=LSHCache())

    def test_random_hashing_refuses_a_cache(self):
        module = LSHAttention(12, HEADS, causal=True)
        with pytest.raises(ValueError, match="seed=None"):
            module(torch.randn(1, 3, 12), cache=LSHCache())
        qk, v = inputs(n=3)
        with pytest.raises(ValueError, match="`rotations`.*got None"):
            lsh_cached_attention(qk, v, LSHCache(), rotations=None)

    def test_a_plain_kv_cache_is_refused(self):
        module = LSHAttention(12, HEADS, causal=True, seed=0)
        with pytest.raises(TypeError, match="LSHCache.*got KVCache"):
            module(torch.randn(1, 3, 12), cache=KVCache())

    def test_bad_steps_leave_the_cache_untouched(self):
        qk, v = inputs(n=4)
        rot = rotations(3)
        cache = LSHCache()
        lsh_cached_attention(qk, v, cache, rotations=rot)
        with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, n_cached \+ n\)"):
            lsh_cached_attention(
                qk[:, :, :1], v[:, :, :1], cache, rotations=rot, mask=torch.ones(BATCH, 1) > 0
            )
        with pytest.raises(ValueError, match="`cache` holds buckets"):
            lsh_cached_attention(qk[:, :, :1], v[:, :, :1], cache, rotations=rot[:, :2])
        with pytest.raises(ValueError, match="`cache` holds key"):
            lsh_cached_attention(qk[:1, :, :1], v[:1, :, :1], cache, rotations=rot)
        with pytest.raises(TypeError, match="dtype"):
            lsh_cached_attention(
                qk[:, :, :1].float(), v[:, :, :1].float(), cache, rotations=rot.float()
            )
        with pytest.raises(ValueError, match="`rotations` must have shape"):
            lsh_cached_attention(qk[:, :, :1], v[:, :, :1], cache, rotations=rot[:2])
        with pytest.raises(TypeError, match="`cache` must be an LSHCache"):
            lsh_cached_attention(qk, v, KVCache(), rotations=rot)  # type: ignore[arg-type]
        assert len(cache) == 4 and cache.buckets is not None and cache.buckets.shape[-1] == 4

    def test_keys_without_buckets_are_refused(self):
        qk, v = inputs(n=2)
        cache = LSHCache()
        cache.append(F.normalize(qk, dim=-1), v)
        with pytest.raises(ValueError, match="keys, values and buckets together"):
            lsh_cached_attention(qk, v, cache, rotations=rotations(1))
