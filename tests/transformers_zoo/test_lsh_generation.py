"""Decoder stacks and the Reformer with causal LSH layers, decoding over their caches.

* One chunk (``chunk_length >= n``) and ``attend_across_buckets=False``: the cached steps
  see exactly the keys of the full pass, so cached decoding equals the uncached stack and
  cached generation equals generation re-running the whole prefix without a cache.
* Chunked LSH: the cached steps see every earlier key of the query's buckets (not the
  chunk window), so cached generation equals generation re-running the whole prefix
  through an empty cache (the same key sets), token for token.

Float64, dropout 0, tolerance 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attnzoo.attention.lsh import LSHCache
from attnzoo.attention.multi_head import KVCache
from attnzoo.transformers_zoo.generation import GenerationOptions, generate_tokens
from attnzoo.transformers_zoo.gpt2 import position_ids_from_attention_mask
from attnzoo.transformers_zoo.reversible import ReformerConfig, ReformerLM
from attnzoo.transformers_zoo.stacks import LayerConfig, LSHConfig, StackConfig, TransformerDecoder
from tests.decoding_lm import TinyLM, cached_step, recomputing_step

TOL = 1e-10
DIM, HEADS, VOCAB, N = 12, 2, 11, 13


def assert_close(actual: Tensor, expected: Tensor, tol: float = TOL) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


def left_padding(n: int, pads: tuple[int, ...]) -> Tensor:
    return torch.arange(n)[None, :] >= torch.tensor(pads)[:, None]


def lsh_layer(chunk_length: int, across: bool, n_hashes: int = 3) -> LayerConfig:
    return LayerConfig(
        lsh=LSHConfig(
            n_buckets=4,
            n_hashes=n_hashes,
            chunk_length=chunk_length,
            attend_across_buckets=across,
            seed=0,
        )
    )


def decoder(*layers: LayerConfig, cross_attention: bool = False) -> TransformerDecoder:
    config = StackConfig(
        dim=DIM,
        heads=HEADS,
        depth=len(layers),
        ffn_dim=16,
        dropout=0.0,
        norm_first=True,
        overrides=dict(enumerate(layers)),
    )
    return TransformerDecoder(config, cross_attention=cross_attention).double().eval()


ONE_CHUNK = lsh_layer(chunk_length=32, across=False)
CHUNKED = lsh_layer(chunk_length=3, across=True)


class TestDecoderStack:
    @pytest.mark.parametrize("sizes", [[1] * N, [6, 1, 4, 2]], ids=["tokens", "prefill"])
    @pytest.mark.parametrize("padded", [False, True], ids=["full", "left-padded"])
    def test_one_chunk_cached_decoding_equals_the_full_pass(self, sizes, padded):
        torch.manual_seed(0)
        stack = decoder(ONE_CHUNK, LayerConfig(), lsh_layer(32, across=False, n_hashes=1))
        x = torch.randn(3, N, DIM, dtype=torch.float64)
        mask = left_padding(N, (0, 3, 5)) if padded else None
        full = stack(x, mask=mask).last_hidden_state
        cache = stack.new_cache()
        assert [type(c.self_attention) for c in cache] == [LSHCache, KVCache, LSHCache]
        outs, start = [], 0
        for size in sizes:
            rows = slice(start, start + size)
            step_mask = None if mask is None else mask[:, : rows.stop]
            outs.append(stack(x[:, rows], mask=step_mask, cache=cache).last_hidden_state)
            start += size
        assert [len(c.self_attention) for c in cache] == [N] * 3
        assert_close(torch.cat(outs, dim=1), full)

    def test_with_cross_attention(self):
        torch.manual_seed(1)
        stack = decoder(ONE_CHUNK, ONE_CHUNK, cross_attention=True)
        x, context = torch.randn(2, 9, DIM).double(), torch.randn(2, 4, DIM).double()
        full = stack(x, context).last_hidden_state
        cache = stack.new_cache()
        steps = [stack(x[:, i : i + 1], context, cache=cache).last_hidden_state for i in range(9)]
        assert_close(torch.cat(steps, dim=1), full)

    def test_chunked_steps_equal_the_prefix_through_an_empty_cache(self):
        torch.manual_seed(2)
        stack = decoder(CHUNKED, CHUNKED)
        x = torch.randn(2, N, DIM, dtype=torch.float64)
        cache = stack.new_cache()
        steps = [stack(x[:, i : i + 1], cache=cache).last_hidden_state for i in range(N)]
        whole = stack(x, cache=stack.new_cache()).last_hidden_state
        assert_close(torch.cat(steps, dim=1), whole)
        # ... and not the chunked full pass, whose windows hold other keys.
        assert (whole - stack(x).last_hidden_state).abs().max() > 1e-3

    def test_a_plain_cache_is_refused_before_any_layer_runs(self):
        stack = decoder(LayerConfig(), ONE_CHUNK)
        cache = stack.new_cache()
        cache[1].self_attention = KVCache()
        with pytest.raises(
            TypeError, match="layer 1: `cache` of LSH attention must be an LSHCache"
        ):
            stack(torch.randn(1, 2, DIM, dtype=torch.float64), cache=cache)
        assert len(cache[0].self_attention) == 0


# --------------------------------------------------------------------------- generation


class TestGeneration:
    @pytest.mark.parametrize("num_beams", [1, 3])
    @pytest.mark.parametrize("layer", [ONE_CHUNK, CHUNKED], ids=["one-chunk", "chunked"])
    def test_cached_generation_equals_recomputation(self, num_beams, layer):
        torch.manual_seed(0)
        lm = TinyLM(decoder(layer, LayerConfig()), VOCAB, DIM).double().eval()
        mask = left_padding(5, (0, 2, 1))
        prompt = torch.randint(1, VOCAB, (3, 5)).masked_fill(~mask, 0)
        options = GenerationOptions(max_new_tokens=8, num_beams=num_beams)
        common = {"history": prompt, "history_mask": mask, "eos": None, "pad": 0}
        start = {
            "cache": lm.decoder.new_cache(),
            "tokens": prompt,
            "positions": position_ids_from_attention_mask(mask),
            "mask": mask,
        }
        cached = generate_tokens(cached_step(lm), start, 0, options=options, **common)
        # One chunk: the uncached full pass has the cached steps' key sets; chunked: only
        # the prefix through an empty cache has them.
        recomputed = generate_tokens(
            recomputing_step(lm, through_a_cache=layer is CHUNKED),
            {"tokens": prompt, "mask": mask, "fresh": True},
            0,
            options=options,
            **common,
        )
        assert cached.shape == (3, 8)
        assert torch.equal(cached, recomputed)


class TestReformerLM:
    def model(self, **kwargs) -> ReformerLM:
        options = {"dim": DIM, "heads": HEADS, "depth": 2, "n_buckets": 4, "n_hashes": 2}
        config = ReformerConfig(VOCAB, **{**options, "chunk_length": 3, "seed": 0, **kwargs})
        torch.manual_seed(0)
        return ReformerLM(config).double().eval()

    def test_cached_logits_equal_the_prefix_through_an_empty_cache(self):
        model = self.model()
        ids = torch.randint(0, VOCAB, (2, 10))
        cache = model.new_cache()
        assert all(isinstance(c, LSHCache) for c in cache)
        steps = [model(ids[:, :4], cache=cache)]
        steps += [model(ids[:, i : i + 1], cache=cache) for i in range(4, 10)]
        assert_close(torch.cat(steps, dim=1), model(ids, cache=model.new_cache()))

    def test_one_chunk_cached_logits_equal_the_full_pass(self):
        # ReformerLM attends across buckets; with one round and one bucket every earlier
        # key shares the query's bucket, so both passes see all earlier keys.
        model = self.model(n_buckets=2, n_hashes=1, chunk_length=16)
        model.encoder.layers.blocks[0].f.attention.rotations.zero_()
        model.encoder.layers.blocks[1].f.attention.rotations.zero_()
        ids = torch.randint(0, VOCAB, (2, 9))
        cache = model.new_cache()
        steps = [model(ids[:, i : i + 1], cache=cache) for i in range(9)]
        assert_close(torch.cat(steps, dim=1), model(ids))

    @pytest.mark.parametrize("num_beams", [1, 3])
    def test_generate_equals_recomputing_the_prefix(self, num_beams):
        model = self.model()
        prompt = torch.randint(0, VOCAB, (3, 4))
        out = model.generate(prompt, max_new_tokens=6, num_beams=num_beams, pad_token_id=0)
        assert out.shape == (3, 10) and torch.equal(out[:, :4], prompt)
        if num_beams == 1:
            sequence = prompt
            for _ in range(6):
                logits = model(sequence, cache=model.new_cache())[:, -1]
                sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
            assert torch.equal(out, sequence)

    def test_generate_refusals(self):
        prompt = torch.randint(0, VOCAB, (2, 4))
        with pytest.raises(ValueError, match="seed=None"):
            self.model(seed=None).generate(prompt, max_new_tokens=2, pad_token_id=0)
        with pytest.raises(ValueError, match="causal=False"):
            self.model(causal=False).generate(prompt, max_new_tokens=2, pad_token_id=0)
        mask = left_padding(4, (1, 0))
        with pytest.raises(ValueError, match="unpadded prompts"):
            self.model().generate(prompt, attention_mask=mask, max_new_tokens=2, pad_token_id=0)
        with pytest.raises(ValueError, match="max_len"):
            self.model(max_len=5).generate(prompt, max_new_tokens=2, pad_token_id=0)
        with pytest.raises(ValueError, match="one cache per block"):
            self.model()(prompt, cache=[LSHCache()])
        model = self.model()
        cache = model.new_cache()
        model(prompt, cache=cache)
        with pytest.raises(ValueError, match=r"`mask` must have shape \(batch, n_cached \+ n\)"):
            model(prompt[:, :1], mask=torch.ones(2, 1, dtype=torch.bool), cache=cache)
        assert all(len(c) == 4 for c in cache)
