"""Sparse Transformer patterns decoded step by step with a key/value cache.

A causal pattern lets query ``t`` see only keys ``j <= t``, so decoding with cached keys
must give exactly the rows of the full causal pass: checked for the index rows, the kernel,
the module, decoder stacks (token by token, and a prompt prefill then single steps, with
left padding), and the searches of :mod:`attnzoo.transformers_zoo.generation` against
recomputing the whole prefix at every step.

Float64, dropout 0, tolerance 1e-10 (generation compares token ids, and beam scores
within 1e-6 because the searches take float32 log-probabilities).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

from attnzoo.attention.multi_head import KVCache
from attnzoo.attention.sparse_patterns import (
    SparseTransformerAttention,
    pattern_weights_to_dense,
    sparse_pattern_attention,
    sparse_pattern_index,
    sparse_pattern_mask,
)
from attnzoo.transformers_zoo.generation import (
    GenerationOptions,
    beam_search,
    generate_tokens,
    greedy_search,
)
from attnzoo.transformers_zoo.gpt2 import position_ids_from_attention_mask
from attnzoo.transformers_zoo.stacks import (
    LayerConfig,
    SparsePatternConfig,
    StackConfig,
    TransformerDecoder,
)
from attnzoo.transformers_zoo.transformer import Transformer, small_transformer_config
from tests.decoding_lm import TinyLM, cached_step, recomputing_step

TOL = 1e-10
DIM, HEADS, VOCAB = 8, 2, 11
# (pattern, stride, summary, part, normalizer): strided and fixed, union and split parts,
# softmax and entmax15, plus the single parts.
LAYERS = [
    ("strided", 3, 1, "union", "softmax"),
    ("fixed", 3, 1, "split", "entmax15"),
    ("strided", 2, 1, "split", "softmax"),
    ("fixed", 4, 2, "union", "entmax15"),
    ("fixed", 3, 2, "global", "sparsemax"),
    ("strided", 4, 1, "local", "softmax"),
]


def assert_close(actual: Tensor, expected: Tensor, tol: float = TOL) -> None:
    diff = (actual - expected).abs().max().item() if actual.numel() else 0.0
    assert actual.shape == expected.shape, f"{tuple(actual.shape)} != {tuple(expected.shape)}"
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


def left_padding(batch: int, n: int, pads: tuple[int, ...]) -> Tensor:
    """``(batch, n)`` True = real token, row ``b`` starting with ``pads[b]`` padding slots."""
    mask = torch.ones(batch, n, dtype=torch.bool)
    for row, count in enumerate(pads):
        mask[row, :count] = False
    return mask


def chunks(n: int, sizes: list[int]) -> list[slice]:
    """Consecutive slices of ``0 .. n - 1`` of the given sizes (the last takes the rest)."""
    out, start = [], 0
    for size in sizes:
        out.append(slice(start, min(n, start + size)))
        start += size
    if start < n:
        out.append(slice(start, n))
    return out


# --------------------------------------------------------------------------- index rows


class TestIndexRows:
    @settings(max_examples=60, deadline=None)
    @given(
        n=st.integers(1, 40),
        data=st.data(),
        pattern=st.sampled_from(["strided", "fixed"]),
        stride=st.integers(1, 7),
        summary=st.integers(1, 7),
        causal=st.booleans(),
        part=st.sampled_from(["union", "local", "global"]),
    )
    def test_rows_from_start_are_the_full_table_rows(
        self, n, data, pattern, stride, summary, causal, part
    ):
        start = data.draw(st.integers(0, n))
        kwargs = {"summary": min(summary, stride), "causal": causal, "part": part}
        index, valid = sparse_pattern_index(n, pattern, stride, start=start, **kwargs)
        assert index.shape[0] == valid.shape[0] == n - start
        dense = pattern_weights_to_dense(valid.double(), index, valid, n_keys=n)
        assert torch.equal(dense.bool(), sparse_pattern_mask(n, pattern, stride, **kwargs)[start:])
        assert dense.max() <= 1 if dense.numel() else True  # every key listed once
        if valid.numel():  # trimmed to the widest listed row
            assert valid[:, -1].any()

    def test_split_rows(self):
        index, valid = sparse_pattern_index(20, "fixed", 4, part="split", heads=4, start=17)
        dense = pattern_weights_to_dense(valid.double(), index, valid, n_keys=20)
        full = sparse_pattern_mask(20, "fixed", 4, part="split", heads=4)
        assert torch.equal(dense.bool(), full[:, 17:])

    def test_last_row_width_is_its_key_count(self):
        n, l = 1024, 32
        index, valid = sparse_pattern_index(n, "strided", l, start=n - 1)
        # l + 1 local keys and n / l strided ones, two of which (itself and i - l) are in both.
        assert index.shape == valid.shape == (1, l + 1 + n // l - 2)
        assert valid.all()
        # Only whole tables are cached: decoding steps would evict them one by one.
        again = sparse_pattern_index(n, "strided", l, start=n - 1)
        assert again[0] is not index and torch.equal(again[0], index)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in torch.utils._pytree.tree_leaves(out):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def test_one_step_gathers_only_the_allowed_keys():
    """A new position over 4096 cached keys builds no tensor of the cache's length: its
    work is O(l + n / l) keys, not O(n)."""
    n, l, d = 4096, 64, 4
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(1, 1, n, d, generator=g) for _ in range(2))
    q = torch.randn(1, 1, 1, d, generator=g)
    with _LargestTensor() as spy:
        out = sparse_pattern_attention(q, k, v, pattern="strided", stride=l)
    keys = l + 1 + n // l - 2
    assert spy.largest <= 2 * keys * d < n
    full = sparse_pattern_attention(
        torch.cat([torch.zeros(1, 1, n - 1, d), q], 2), k, v, pattern="strided", stride=l
    )
    assert (out - full[:, :, -1:]).abs().max() < 1e-6


# --------------------------------------------------------------------------- kernel


class TestKernel:
    @pytest.mark.parametrize(("pattern", "stride", "summary", "part", "normalizer"), LAYERS)
    def test_last_queries_equal_the_full_pass_rows(
        self, pattern, stride, summary, part, normalizer
    ):
        g = torch.Generator().manual_seed(1)
        b, h, n, d = 2, 4, 23, 5
        q, k = (torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(2))
        v = torch.randn(b, h, n, 3, generator=g, dtype=torch.float64)
        mask = torch.rand(b, n, generator=g) > 0.25
        options = {
            "pattern": pattern,
            "stride": stride,
            "summary": summary,
            "part": part,
            "normalizer": normalizer,
            "mask": mask,
        }
        full, full_weights = sparse_pattern_attention(q, k, v, return_weights=True, **options)
        dense_full = pattern_weights_to_dense(
            full_weights,
            *sparse_pattern_index(
                n, pattern, stride, summary=summary, part=part, heads=h if part == "split" else None
            ),
        )
        for n_q in (1, 4, n):
            out, weights = sparse_pattern_attention(
                q[:, :, n - n_q :], k, v, return_weights=True, **options
            )
            assert_close(out, full[:, :, n - n_q :])
            index, valid = sparse_pattern_index(
                n,
                pattern,
                stride,
                summary=summary,
                part=part,
                heads=h if part == "split" else None,
                start=n - n_q,
            )
            dense = pattern_weights_to_dense(weights, index, valid, n_keys=n)
            assert_close(dense, dense_full[:, :, n - n_q :])

    def test_gradients_reach_cached_keys(self):
        g = torch.Generator().manual_seed(2)
        q, k, v = (torch.randn(1, 2, 9, 3, generator=g, dtype=torch.float64) for _ in range(3))
        k.requires_grad_(True)
        v.requires_grad_(True)
        options = {"pattern": "fixed", "stride": 3}
        last = sparse_pattern_attention(q[:, :, -2:], k, v, **options)
        grads = torch.autograd.grad(last.square().sum(), (k, v))
        full = sparse_pattern_attention(q, k, v, **options)[:, :, -2:]
        expected = torch.autograd.grad(full.square().sum(), (k, v))
        for actual, wanted in zip(grads, expected, strict=True):
            assert_close(actual, wanted)


# --------------------------------------------------------------------------- module


class TestModule:
    @pytest.mark.parametrize(("pattern", "stride", "summary", "part", "normalizer"), LAYERS)
    @pytest.mark.parametrize("sizes", [[1] * 13, [5, 1, 3, 1, 1]], ids=["tokens", "prefill"])
    def test_cached_decoding_equals_the_full_pass(
        self, pattern, stride, summary, part, normalizer, sizes
    ):
        torch.manual_seed(0)
        module = SparseTransformerAttention(
            DIM,
            4,
            pattern=pattern,
            stride=stride,
            summary=summary,
            part=part,
            normalizer=normalizer,
        ).double()
        n = 13
        x = torch.randn(2, n, DIM, dtype=torch.float64)
        mask = left_padding(2, n, (0, 3))
        heads = 4 if part == "split" else None
        table = {"summary": summary, "part": part, "heads": heads}
        full, full_weights = module(x, mask=mask, return_weights=True)
        full_dense = pattern_weights_to_dense(
            full_weights, *sparse_pattern_index(n, pattern, stride, **table)
        )
        cache = KVCache()
        outs = []
        for rows in chunks(n, sizes):
            out, weights = module(
                x[:, rows], mask=mask[:, : rows.stop], return_weights=True, cache=cache
            )
            outs.append(out)
            assert len(cache) == rows.stop
            index, valid = sparse_pattern_index(
                rows.stop, pattern, stride, start=rows.start, **table
            )
            dense = pattern_weights_to_dense(weights, index, valid, n_keys=rows.stop)
            assert_close(dense, full_dense[:, :, rows, : rows.stop])
        assert_close(torch.cat(outs, dim=1), full)

    def test_cache_is_the_dense_attention_cache(self):
        module = SparseTransformerAttention(DIM, HEADS, pattern="strided", stride=2).double()
        cache = KVCache()
        module(torch.randn(3, 4, DIM, dtype=torch.float64), cache=cache)
        assert cache.key is not None and cache.value is not None
        assert cache.key.shape == cache.value.shape == (3, HEADS, 4, DIM // HEADS)


# --------------------------------------------------------------------------- stacks


def sparse_layer(pattern: str, stride: int, summary: int, part: str, normalizer: str):
    return LayerConfig(
        normalizer=normalizer,
        sparse_pattern=SparsePatternConfig(pattern, stride=stride, summary=summary, part=part),
    )


def decoder_only(*layers: LayerConfig) -> TransformerDecoder:
    """A pre-LN decoder-only stack whose layer ``i`` is ``layers[i]``."""
    config = StackConfig(
        dim=DIM,
        heads=HEADS,
        depth=len(layers),
        ffn_dim=16,
        dropout=0.0,
        norm_first=True,
        overrides=dict(enumerate(layers)),
    )
    return TransformerDecoder(config, cross_attention=False).double().eval()


STACKS = [
    (LAYERS[0], LAYERS[1]),  # strided union softmax, fixed split entmax15
    (LAYERS[2], LAYERS[3]),  # strided split softmax, fixed union entmax15
]


class TestDecoderStack:
    @pytest.mark.parametrize("layers", STACKS, ids=["strided-fixed", "split-union"])
    @pytest.mark.parametrize("sizes", [[1] * 12, [6, 1, 1, 3, 1]], ids=["tokens", "prefill"])
    @pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
    def test_cached_decoding_equals_the_full_pass(self, layers, sizes, padded):
        torch.manual_seed(0)
        stack = decoder_only(*(sparse_layer(*layer) for layer in layers))
        n = 12
        x = torch.randn(3, n, DIM, dtype=torch.float64)
        mask = left_padding(3, n, (0, 2, 5)) if padded else None
        full = stack(x, mask=mask, output_attentions=True)
        cache = stack.new_cache()
        outs = []
        for rows in chunks(n, sizes):
            step_mask = None if mask is None else mask[:, : rows.stop]
            step = stack(x[:, rows], mask=step_mask, cache=cache, output_attentions=True)
            outs.append(step.last_hidden_state)
            assert [len(c.self_attention) for c in cache] == [rows.stop] * len(layers)
            # The step's weights (batch, heads, n_new, n_cached + n_new) are rows of the full.
            for layer, weights in enumerate(step.attentions):
                assert_close(weights, full.attentions[layer][:, :, rows, : rows.stop])
        assert_close(torch.cat(outs, dim=1), full.last_hidden_state)

    def test_mixed_with_a_dense_layer(self):
        torch.manual_seed(1)
        stack = decoder_only(LayerConfig(), sparse_layer(*LAYERS[1]))
        x = torch.randn(2, 9, DIM, dtype=torch.float64)
        full = stack(x).last_hidden_state
        cache = stack.new_cache()
        steps = [stack(x[:, i : i + 1], cache=cache).last_hidden_state for i in range(9)]
        assert_close(torch.cat(steps, dim=1), full)


# --------------------------------------------------------------------------- generation


class TestGeneration:
    @pytest.mark.parametrize("num_beams", [1, 3])
    def test_generate_tokens_equals_recomputation(self, num_beams):
        torch.manual_seed(0)
        stack = decoder_only(sparse_layer(*LAYERS[0]), sparse_layer(*LAYERS[1]))
        lm = TinyLM(stack, VOCAB, DIM).double().eval()
        prompt = torch.randint(1, VOCAB, (3, 5))
        mask = left_padding(3, 5, (0, 2, 1))
        prompt = prompt.masked_fill(~mask, 0)
        options = GenerationOptions(max_new_tokens=8, num_beams=num_beams)
        common = {"history": prompt, "history_mask": mask, "eos": None, "pad": 0}
        cached = generate_tokens(
            cached_step(lm),
            {
                "cache": stack.new_cache(),
                "tokens": prompt,
                "positions": position_ids_from_attention_mask(mask),
                "mask": mask,
            },
            0,
            options=options,
            **common,
        )
        recomputed = generate_tokens(
            recomputing_step(lm),
            {"tokens": prompt, "mask": mask, "fresh": True},
            0,
            options=options,
            **common,
        )
        assert cached.shape == (3, 8)
        assert torch.equal(cached, recomputed)

    def test_transformer_greedy_and_beam_search_equal_recomputation(self):
        torch.manual_seed(0)
        config = small_transformer_config(
            VOCAB, dim=DIM, heads=HEADS, depth=2, layer=sparse_layer(*LAYERS[1])
        )
        model = Transformer(config).double().eval()
        src = torch.randint(3, VOCAB, (2, 7))
        src_mask = left_padding(2, 7, (0, 0))
        src_mask[1, -2:] = False

        def step(prev: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
            prefix = torch.cat([state["prefix"], prev[:, None]], dim=1)
            logits = model(state["src"], prefix, state["src_mask"])[:, -1]
            return torch.log_softmax(logits.float(), -1), {**state, "prefix": prefix}

        def state() -> dict[str, Tensor]:
            empty = torch.zeros(2, 0, dtype=torch.long)
            return {"src": src, "src_mask": src_mask, "prefix": empty}

        bos, eos, pad = config.bos_id, config.eos_id, config.pad_id
        greedy = model.greedy_decode(src, src_mask, max_len=10)
        assert torch.equal(greedy, greedy_search(step, state(), 2, bos, eos, 10, pad=pad))
        tokens, scores = model.beam_search(src, src_mask, max_len=10, beam_width=3)
        ref_tokens, ref_scores = beam_search(step, state(), 2, bos, eos, 10, 3, 0.6, pad=pad)
        assert torch.equal(tokens, ref_tokens)
        assert_close(scores, ref_scores, 1e-6)


# --------------------------------------------------------------------------- errors


class TestErrors:
    def test_bidirectional_layer_refuses_a_cache(self):
        module = SparseTransformerAttention(DIM, HEADS, pattern="fixed", stride=2, causal=False)
        cache = KVCache()
        with pytest.raises(ValueError, match="`cache` given, but the layer has causal=False"):
            module(torch.randn(1, 3, DIM), cache=cache)
        assert len(cache) == 0

    def test_bad_caches_leave_the_cache_untouched(self):
        module = SparseTransformerAttention(DIM, HEADS, stride=2)
        with pytest.raises(TypeError, match="`cache` must be a KVCache, got dict"):
            module(torch.randn(1, 3, DIM), cache={})
        cache = KVCache()
        module(torch.randn(2, 3, DIM), cache=cache)
        with pytest.raises(ValueError, match=r"`cache` must hold keys .* \(3, 2, 4\)"):
            module(torch.randn(3, 1, DIM), cache=cache)
        with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, n_cached \+ n\)"):
            module(torch.randn(2, 1, DIM), mask=torch.ones(2, 1, dtype=torch.bool), cache=cache)
        with pytest.raises(TypeError, match="`mask` must be a boolean"):
            module(torch.randn(2, 1, DIM), mask=torch.ones(2, 4), cache=cache)
        assert len(cache) == 3

    def test_bad_kernel_inputs(self):
        q, k, v = (torch.randn(2, 2, n, 4) for n in (3, 8, 8))
        options = {"pattern": "strided", "stride": 2}
        with pytest.raises(ValueError, match="only with causal=True"):
            sparse_pattern_attention(q, k, v, causal=False, **options)
        with pytest.raises(ValueError, match=r"`k` must have shape \(batch, heads, n_k, d\)"):
            sparse_pattern_attention(q, k[:1], v[:1], **options)
        with pytest.raises(ValueError, match=r"`v` must have the \(batch, heads, n_k\)"):
            sparse_pattern_attention(q, k, v[:, :, :5], **options)
        with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, n_k\) = \(2, 8\)"):
            sparse_pattern_attention(q, k, v, mask=torch.ones(2, 3, dtype=torch.bool), **options)
        with pytest.raises(TypeError, match="`k` must have the dtype of `q`"):
            sparse_pattern_attention(q, k.double(), v, **options)

    def test_bad_index_arguments(self):
        with pytest.raises(ValueError, match="`start` must be <= n = 5, got 6"):
            sparse_pattern_index(5, "strided", 2, start=6)
        with pytest.raises(ValueError, match="`start` must be an int >= 0"):
            sparse_pattern_index(5, "strided", 2, start=-1)
        index, valid = sparse_pattern_index(6, "strided", 2, start=4)
        with pytest.raises(ValueError, match="`n_keys` must exceed every key index"):
            pattern_weights_to_dense(valid.double(), index, valid, n_keys=2)
