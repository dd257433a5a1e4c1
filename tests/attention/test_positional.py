"""Tests of rotary embeddings and ALiBi, alone, in ``MultiHeadAttention`` and in the blocks.

References: rotary against the complex-number formula of RoFormer (interleaved pairs) and
against Hugging Face LLaMA's ``apply_rotary_pos_emb`` ("rotate half" pairs); ALiBi slopes
against the paper's recursive definition and Hugging Face BLOOM's slopes; both schemes in
``MultiHeadAttention`` against the same projections written out with SDPA. Tolerances:
float64 1e-10 (1e-12 for exact identities), float32 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.attention import causal_tiles
from attnzoo.attention.multi_head import KVCache, MultiHeadAttention
from attnzoo.attention.normalizers import available_normalizers
from attnzoo.attention.positional import (
    ALiBi,
    RotaryEmbedding,
    alibi_bias,
    alibi_slopes,
    apply_rotary,
    check_position,
    rotary_frequencies,
)
from attnzoo.transformers_zoo import (
    DecoderLayer,
    Embeddings,
    EncoderLayer,
    LayerConfig,
    StackConfig,
    TrainConfig,
    TransformerDecoder,
    TransformerEncoder,
    fit,
)

NORMALIZERS = ["softmax", "sparsemax", "entmax15", "entmax", "hardmax"]


def assert_close(actual, expected, tol):
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


def complex_rotary(x, positions, base=10000.0):
    """RoFormer's definition: pair (x_2k, x_2k+1) as a complex number times e^{i m theta_k}."""
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    angles = positions.double()[:, None] * theta
    rotation = torch.polar(torch.ones_like(angles), angles)
    return torch.view_as_real(z * rotation).flatten(-2).to(x.dtype)


def paper_slopes(n):
    """ALiBi's slopes as the paper's reference code defines them, recursively."""

    def power_of_two(m):
        start = 2 ** (-(2 ** -(math.log2(m) - 3)))
        return [start * start**i for i in range(m)]

    if math.log2(n).is_integer():
        return power_of_two(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_two(closest) + paper_slopes(2 * closest)[0::2][: n - closest]


# --------------------------------------------------------------------------- rotary


class TestRotary:
    @pytest.mark.parametrize("offset", [0, 5, 37])
    def test_matches_the_complex_formula(self, offset):
        x = torch.randn(2, 3, 7, 10, dtype=torch.float64)
        rotary = RotaryEmbedding(10)
        expected = complex_rotary(x, torch.arange(offset, offset + 7))
        assert_close(rotary(x, offset=offset), expected, 1e-12)

    def test_half_layout_matches_hugging_face_llama(self):
        transformers = pytest.importorskip("transformers")
        from transformers.models.llama.modeling_llama import (
            LlamaRotaryEmbedding,
            apply_rotary_pos_emb,
        )

        config = transformers.LlamaConfig(
            hidden_size=32, num_attention_heads=2, head_dim=16, max_position_embeddings=64
        )
        q, k = torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
        cos, sin = LlamaRotaryEmbedding(config)(q, torch.arange(4, 13)[None])
        expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
        rotary = RotaryEmbedding(16, interleaved=False)
        assert_close(rotary(q, offset=4), expected_q, 1e-5)
        assert_close(rotary(k, offset=4), expected_k, 1e-5)

    @pytest.mark.parametrize("interleaved", [True, False])
    def test_scores_depend_on_the_distance_only(self, interleaved):
        rotary = RotaryEmbedding(8, interleaved=interleaved)
        q, k = torch.randn(1, 8, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64)
        scores = [
            (rotary(q, offset=m) * rotary(k, offset=n)).sum()
            for m, n in [(3, 1), (13, 11), (102, 100)]
        ]
        assert_close(torch.stack(scores), scores[0].expand(3), 1e-10)
        assert (scores[0] - (rotary(q, offset=4) * rotary(k, offset=1)).sum()).abs() > 1e-3

    def test_preserves_norms_and_position_zero_is_identity(self):
        rotary = RotaryEmbedding(12)
        x = torch.randn(4, 20, 12, dtype=torch.float64)
        out = rotary(x)
        assert_close(out.norm(dim=-1), x.norm(dim=-1), 1e-12)
        assert_close(out[:, 0], x[:, 0], 0.0)

    def test_table_grows_and_keeps_float64_after_half(self):
        rotary = RotaryEmbedding(8)
        x = torch.randn(1, 3, 8, dtype=torch.float64)
        small = rotary(x, offset=2)
        assert rotary.cached_positions == 16
        rotary(x, offset=1000)
        assert rotary.cached_positions == 1024
        assert_close(rotary(x, offset=2), small, 1e-12)
        assert_close(rotary(x, offset=1000), complex_rotary(x, torch.arange(1000, 1003)), 1e-12)
        rotary.half()
        assert rotary.cos_sin(4, x.device)[0].dtype == torch.float64
        assert rotary(x.half(), offset=3).dtype == torch.float16
        assert rotary.state_dict() == {}

    def test_apply_rotary_layouts_agree_up_to_a_permutation(self):
        x = torch.randn(2, 5, 6, dtype=torch.float64)
        cos, sin = RotaryEmbedding(6).cos_sin(5, x.device)
        # Interleaved pairs (0,1)(2,3)(4,5) are the half-layout pairs (0,3)(1,4)(2,5).
        to_half = torch.tensor([0, 2, 4, 1, 3, 5])
        interleaved = apply_rotary(x, cos, sin, interleaved=True)
        half = apply_rotary(x[..., to_half], cos, sin, interleaved=False)
        assert_close(half, interleaved[..., to_half], 1e-12)

    def test_frequencies(self):
        assert_close(rotary_frequencies(4), torch.tensor([1.0, 0.01], dtype=torch.float64), 1e-15)

    @pytest.mark.parametrize(
        "call, error, name",
        [
            (lambda: RotaryEmbedding(7), ValueError, "`dim`"),
            (lambda: RotaryEmbedding(0), ValueError, "`dim`"),
            (lambda: RotaryEmbedding(8, base=0.0), ValueError, "`base`"),
            (lambda: RotaryEmbedding(8)(torch.randn(2, 6)), ValueError, "`x`"),
            (lambda: RotaryEmbedding(8)(torch.randn(8)), ValueError, "`x`"),
            (lambda: RotaryEmbedding(8)(torch.randn(2, 8), offset=-1), ValueError, "`offset`"),
            (lambda: RotaryEmbedding(8)(torch.randn(2, 8), offset=1.5), TypeError, "`offset`"),
            (lambda: RotaryEmbedding(8)([[0.0] * 8]), TypeError, "`x`"),
        ],
    )
    def test_bad_argument_is_named(self, call, error, name):
        with pytest.raises(error, match=name):
            call()


# --------------------------------------------------------------------------- ALiBi


class TestALiBi:
    @pytest.mark.parametrize("heads", [1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 24, 32])
    def test_slopes_follow_the_paper(self, heads):
        expected = torch.tensor(paper_slopes(heads), dtype=torch.float64)
        assert_close(alibi_slopes(heads), expected, 1e-15)

    @pytest.mark.parametrize("heads", [3, 6, 8, 12, 16])
    def test_slopes_match_hugging_face_bloom(self, heads):
        pytest.importorskip("transformers")
        from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

        expected = _get_alibi_slopes(heads, torch.device("cpu")).double()
        assert_close(alibi_slopes(heads), expected, 1e-7)

    def test_eight_heads(self):
        assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]

    def test_bias_values_and_alignment(self):
        slopes = torch.tensor([0.5, 0.25], dtype=torch.float64)
        bias = alibi_bias(slopes, 2, 4)  # queries at positions 2 and 3
        assert bias.shape == (2, 2, 4)
        assert bias[0].tolist() == [[-1.0, -0.5, 0.0, -0.5], [-1.5, -1.0, -0.5, 0.0]]
        causal = alibi_bias(slopes, 2, 4, symmetric=False)
        assert causal[1].tolist() == [[-0.5, -0.25, 0.0, 0.25], [-0.75, -0.5, -0.25, 0.0]]

    @pytest.mark.parametrize("n_q, n_k", [(5, 5), (3, 9), (1, 6)])
    def test_causal_and_symmetric_forms_agree_under_a_causal_mask(self, n_q, n_k):
        slopes = alibi_slopes(4)
        allowed = torch.ones(n_q, n_k).tril(n_k - n_q).bool()
        a, b = alibi_bias(slopes, n_q, n_k), alibi_bias(slopes, n_q, n_k, symmetric=False)
        assert torch.equal(a[:, allowed], b[:, allowed])
        assert not torch.equal(a, b) or n_q == 1

    def test_module_bias_follows_device_and_dtype(self):
        alibi = ALiBi(4)
        bias = alibi(3, 5, torch.device("cpu"), torch.float16)
        assert bias.shape == (1, 4, 3, 5) and bias.dtype == torch.float16
        alibi.half()
        assert alibi.slopes.dtype == torch.float32 and alibi.state_dict() == {}

    @pytest.mark.parametrize(
        "call, error, name",
        [
            (lambda: alibi_slopes(0), ValueError, "`heads`"),
            (lambda: alibi_slopes(2.0), TypeError, "`heads`"),
            (lambda: alibi_bias(torch.ones(2, 1), 2, 2), ValueError, "`slopes`"),
            (lambda: alibi_bias([0.5], 2, 2), TypeError, "`slopes`"),
            (lambda: alibi_bias(torch.ones(2), -1, 2), ValueError, "`n_q`"),
            (lambda: check_position("sinusoidal"), ValueError, "`position`"),
        ],
    )
    def test_bad_argument_is_named(self, call, error, name):
        with pytest.raises(error, match=name):
            call()


# --------------------------------------------------------------------------- in MHA


def projections(mha, x):
    """Queries, keys, values ``(batch, heads, n, dim_head)`` from ``mha``'s own weights."""
    split = lambda t: t.unflatten(-1, (mha.heads, mha.dim_head)).transpose(1, 2)  # noqa: E731
    return split(mha.query(x)), split(mha.key(x)), split(mha.value(x))


def merge(mha, out):
    return mha.out(out.transpose(1, 2).flatten(2))


class TestMultiHeadAttention:
    def test_no_position_builds_the_same_weights_and_outputs(self):
        torch.manual_seed(3)
        before = MultiHeadAttention(16, 4, causal=True)
        for position in (None, "rotary", "alibi"):
            torch.manual_seed(3)
            after = MultiHeadAttention(16, 4, causal=True, position=position)
            assert after.state_dict().keys() == before.state_dict().keys()
            for key, value in before.state_dict().items():
                assert torch.equal(after.state_dict()[key], value)
        torch.manual_seed(3)
        plain = MultiHeadAttention(16, 4, causal=True, position=None)
        x = torch.randn(2, 5, 16)
        assert torch.equal(plain(x), before(x))
        # The positional variants do change the output (the option is not a no-op).
        assert (after(x) - before(x)).abs().max() > 1e-4

    @pytest.mark.parametrize("causal", [False, True])
    def test_rotary_matches_written_out_reference(self, causal):
        mha = MultiHeadAttention(12, 3, position="rotary", causal=causal).double()
        x = torch.randn(2, 7, 12, dtype=torch.float64)
        q, k, v = projections(mha, x)
        positions = torch.arange(7)
        q, k = complex_rotary(q, positions), complex_rotary(k, positions)
        expected = merge(mha, F.scaled_dot_product_attention(q, k, v, is_causal=causal))
        assert_close(mha(x), expected, 1e-10)

    @pytest.mark.parametrize("causal", [False, True])
    def test_alibi_matches_written_out_reference(self, causal):
        mha = MultiHeadAttention(15, 5, position="alibi", causal=causal).double()
        x = torch.randn(2, 6, 15, dtype=torch.float64)
        padding = torch.ones(2, 6, dtype=torch.bool)
        padding[1, 4:] = False
        q, k, v = projections(mha, x)
        distance = (torch.arange(6)[:, None] - torch.arange(6)[None, :]).abs().double()
        bias = -torch.tensor(paper_slopes(5), dtype=torch.float64)[:, None, None] * distance
        bias = bias.masked_fill(~padding[:, None, None, :], float("-inf"))
        if causal:
            bias = bias.masked_fill(torch.ones(6, 6).triu(1).bool(), float("-inf"))
        expected = merge(mha, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
        assert_close(mha(x, mask=padding), expected, 1e-10)

    @pytest.mark.parametrize("normalizer", ["softmax", "entmax15"])
    def test_alibi_by_causal_query_tiles_equals_one_pass(self, monkeypatch, normalizer):
        # Tiles of 4 queries, each with its own ALiBi bias over the keys up to its last
        # query; here over a cache of 5 and with a padding mask, values and gradients.
        mha = MultiHeadAttention(
            12, 3, causal=True, position="alibi", normalizer=normalizer
        ).double()
        x = torch.randn(2, 15, 12, dtype=torch.float64, requires_grad=True)
        padding = torch.ones(2, 15, dtype=torch.bool)
        padding[1, 2:5] = False
        biases = []
        forward = mha.alibi.forward

        def run(tile):
            monkeypatch.setattr(causal_tiles, "CAUSAL_TILE", tile)
            biases.clear()
            cache = KVCache()
            first = mha(x[:, :5], cache=cache, mask=padding[:, :5])
            rest = mha(x[:, 5:], cache=cache, mask=padding)
            out = torch.cat([first, rest], dim=1)
            return out, torch.autograd.grad(out.square().sum(), [x, *mha.parameters()])

        def recording(n_q, n_k, device, dtype):
            biases.append((n_q, n_k))
            return forward(n_q, n_k, device, dtype)

        monkeypatch.setattr(mha.alibi, "forward", recording)
        one_pass = run(1000)
        assert biases == [(5, 5), (10, 15)]
        tiled = run(4)
        assert biases == [(5, 5), (4, 9), (4, 13), (2, 15)]  # the prompt is one tile
        assert_close(tiled[0], one_pass[0], 1e-12)
        for a, b in zip(tiled[1], one_pass[1], strict=True):
            assert_close(a, b, 1e-12)

    @pytest.mark.parametrize("position", ["rotary", "alibi"])
    @pytest.mark.parametrize("normalizer", NORMALIZERS)
    def test_decoding_with_a_cache_equals_the_full_pass(self, position, normalizer):
        alpha = 1.4 if normalizer == "entmax" else None
        mha = MultiHeadAttention(
            16, 4, causal=True, position=position, normalizer=normalizer, alpha=alpha
        ).double()
        x = torch.randn(2, 9, 16, dtype=torch.float64)
        full, weights = mha(x, return_weights=True)
        cache, steps = KVCache(), []
        for start, stop in [(0, 4), (4, 5), (5, 9)]:  # a prompt, one token, a chunk
            steps.append(mha(x[:, start:stop], cache=cache))
        assert len(cache) == 9
        assert_close(torch.cat(steps, dim=1), full, 1e-10)
        assert_close(weights.sum(-1), torch.ones(2, 4, 9, dtype=torch.float64), 1e-10)

    @pytest.mark.parametrize("position", ["rotary", "alibi"])
    @pytest.mark.parametrize("normalizer", available_normalizers())
    def test_every_normalizer_respects_the_padding_mask(self, position, normalizer):
        mha = MultiHeadAttention(8, 2, position=position, normalizer=normalizer).double()
        x = torch.randn(2, 5, 8, dtype=torch.float64)
        padding = torch.tensor([[True] * 5, [True, True, True, False, False]])
        out, weights = mha(x, mask=padding, return_weights=True)
        assert torch.isfinite(out).all()
        assert (weights[1, :, :, 3:] == 0).all()
        assert_close(weights.sum(-1), torch.ones(2, 2, 5, dtype=torch.float64), 1e-6)
        noisy = x.clone()
        noisy[1, 3:] = 100 * torch.randn(2, 8, dtype=torch.float64)
        if normalizer != "gumbel":  # fresh noise each call
            assert_close(mha(noisy, mask=padding)[1, :3], out[1, :3], 1e-10)

    @pytest.mark.parametrize("position", ["rotary", "alibi"])
    def test_relative_positions_make_a_shifted_window_see_the_same(self, position):
        """Without absolute positions, a causal query at the end of a window of keys gives
        the same output wherever the window starts in the sequence (with a cache)."""
        mha = MultiHeadAttention(8, 2, causal=True, position=position).double()
        x = torch.randn(1, 4, 8, dtype=torch.float64)
        alone = mha(x)
        cache = KVCache()
        mha(torch.randn(1, 6, 8, dtype=torch.float64), cache=cache)
        # Mask out the 6 earlier positions: only the relative layout of x remains.
        mask = torch.tensor([[False] * 6 + [True] * 4])
        assert_close(mha(x, mask=mask, cache=cache), alone, 1e-10)

    def test_half_precision(self):
        for position in ("rotary", "alibi"):
            torch.manual_seed(0)
            mha = MultiHeadAttention(16, 4, causal=True, position=position)
            x = torch.randn(2, 9, 16)
            expected = mha(x)
            low = mha.to(torch.bfloat16)(x.to(torch.bfloat16))
            assert low.dtype == torch.bfloat16
            assert_close(low.float(), expected, 5e-2)

    def test_cross_attention_rejects_a_position(self):
        mha = MultiHeadAttention(8, 2, kv_dim=6, position="rotary")
        with pytest.raises(ValueError, match="`context`"):
            mha(torch.randn(1, 3, 8), context=torch.randn(1, 4, 6))

    def test_bad_position_is_named(self):
        with pytest.raises(ValueError, match="`position`"):
            MultiHeadAttention(8, 2, position="learned")
        with pytest.raises(ValueError, match="`dim`"):
            MultiHeadAttention(6, 2, position="rotary")  # dim_head 3 is odd


# --------------------------------------------------------------------------- blocks


class TestBlocks:
    @pytest.mark.parametrize("position", ["rotary", "alibi"])
    def test_layers_take_the_option(self, position):
        encoder = EncoderLayer(16, 4, position=position)
        decoder = DecoderLayer(16, 4, position=position)
        assert encoder.attention.position == position
        assert decoder.self_attention.position == position
        assert decoder.cross_attention is not None and decoder.cross_attention.position is None
        x = torch.randn(2, 5, 16)
        assert encoder(x).shape == x.shape
        assert decoder(x, context=torch.randn(2, 3, 16)).shape == x.shape

    def test_stack_config_applies_it_per_layer(self):
        config = StackConfig(
            dim=16,
            heads=4,
            depth=3,
            dropout=0.0,
            layer=LayerConfig(position="alibi"),
            overrides={1: LayerConfig(position="rotary", normalizer="entmax15")},
        )
        encoder = TransformerEncoder(config)
        assert [layer.attention.position for layer in encoder.layers] == [
            "alibi",
            "rotary",
            "alibi",
        ]
        plain = TransformerEncoder(StackConfig(dim=16, heads=4, depth=3))
        assert plain.state_dict().keys() == encoder.state_dict().keys()

    @pytest.mark.parametrize("position", ["rotary", "alibi"])
    def test_decoder_stack_decodes_with_its_cache(self, position):
        config = StackConfig(
            dim=16, heads=2, depth=2, dropout=0.0, layer=LayerConfig(position=position)
        )
        decoder = TransformerDecoder(config, cross_attention=False).double().eval()
        x = torch.randn(2, 7, 16, dtype=torch.float64)
        full = decoder(x).last_hidden_state
        cache = decoder.new_cache()
        steps = [decoder(x[:, i : i + 1], cache=cache).last_hidden_state for i in range(7)]
        assert_close(torch.cat(steps, dim=1), full, 1e-10)

    def test_bad_options_are_named(self):
        with pytest.raises(ValueError, match="`position`"):
            LayerConfig(position="absolute")
        with pytest.raises(ValueError, match="`position"):
            LayerConfig(position="rotary", window=(2, 2))
        with pytest.raises(ValueError, match="`position"):
            EncoderLayer(16, 4, window=(2, 2), position="alibi")


# --------------------------------------------------------------------------- extrapolation

VOCAB, TRAIN_LEN, LAG = 16, 16, 1


class PreviousTokenModel(nn.Module):
    """A 2-layer causal pre-LN decoder over tokens; ``position`` None = learned absolute
    positions (a table of ``4 * TRAIN_LEN``, only the first ``TRAIN_LEN`` rows trained)."""

    def __init__(self, position: str | None) -> None:
        super().__init__()
        kind = "learned" if position is None else None
        self.embed = Embeddings(VOCAB, 32, max_len=4 * TRAIN_LEN, positions=kind, layer_norm=False)
        config = StackConfig(
            dim=32,
            heads=4,
            depth=2,
            ffn_dim=64,
            dropout=0.0,
            norm_first=True,
            layer=LayerConfig(position=position),
        )
        self.decoder = TransformerDecoder(config, cross_attention=False)
        self.head = nn.Linear(32, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.embed(ids)).last_hidden_state)


def random_batches(seed: int):
    """``step -> (32, TRAIN_LEN)`` token ids, one seeded stream."""
    generator = torch.Generator().manual_seed(seed)
    return lambda step: torch.randint(0, VOCAB, (32, TRAIN_LEN), generator=generator)


def lag_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Predict, at every position t >= LAG, the token at t - LAG."""
    logits = model(ids)
    return F.cross_entropy(logits[:, LAG:].flatten(0, 1), ids[:, :-LAG].flatten())


def accuracy_beyond(model: nn.Module, n: int, start: int) -> float:
    """Accuracy at positions >= ``start`` of fresh length-``n`` sequences."""
    ids = torch.randint(0, VOCAB, (128, n), generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        predicted = model(ids).argmax(-1)
    return (predicted[:, start:] == ids[:, start - LAG : n - LAG]).float().mean().item()


@pytest.mark.slow
def test_alibi_and_rotary_extrapolate_where_learned_positions_fail():
    """Press et al. 2022: trained at length L, ALiBi keeps its accuracy at 2L and 4L;
    rotary holds at 2L and degrades at 4L; learned absolute positions fail at once.

    Task: copy the previous token (it needs the relative position -1). Accuracy is measured
    on the positions beyond the training length only (chance is 1/16). Measured with
    seeds 0, 1, 2 (200 steps): learned 1.00 at L, 0.08-0.09 beyond; ALiBi 0.97 at L,
    0.94-0.96 at 2L, 0.93-0.95 at 4L; rotary 1.00 at L and 2L, 0.55-0.58 at 4L.
    """
    results = {}
    for position in (None, "alibi", "rotary"):
        torch.manual_seed(0)
        model = PreviousTokenModel(position)
        fit(
            model, lag_loss, random_batches(seed=0), TrainConfig(steps=200, lr=3e-3, progress=False)
        )
        results[position] = [
            accuracy_beyond(model, TRAIN_LEN, LAG),
            accuracy_beyond(model, 2 * TRAIN_LEN, TRAIN_LEN),
            accuracy_beyond(model, 4 * TRAIN_LEN, TRAIN_LEN),
        ]
    learned, alibi, rotary = results[None], results["alibi"], results["rotary"]
    assert min(learned[0], alibi[0], rotary[0]) > 0.9, results  # all learn the task
    assert max(learned[1:]) < 0.2, results  # untrained positions: near chance
    assert min(alibi[1:]) > 0.85, results
    assert rotary[1] > 0.9 and rotary[2] > learned[2] + 0.3, results
