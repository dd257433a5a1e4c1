"""Feed-forward, embeddings, encoder/decoder layers and stacks.

Parity targets: PyTorch's own ``nn.TransformerEncoderLayer``/``nn.TransformerDecoderLayer``
and ``nn.TransformerEncoder``/``nn.TransformerDecoder`` (``batch_first=True``) with the
weights copied across, in float64 with dropout 0, to 1e-10.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.attention.entmax import EntmaxAlpha
from attnzoo.attention.multi_head import MultiHeadAttention
from attnzoo.attention.product_key import ProductKeyMemory
from attnzoo.attention.sliding_window import SlidingWindowAttention
from attnzoo.transformers_zoo.embeddings import (
    Embeddings,
    SinusoidalPositionalEmbedding,
    TokenEmbedding,
    sinusoidal_table,
)
from attnzoo.transformers_zoo.feed_forward import FeedForward
from attnzoo.transformers_zoo.layers import DecoderLayer, EncoderLayer, LayerCache
from attnzoo.transformers_zoo.stacks import (
    LayerConfig,
    MemoryConfig,
    StackConfig,
    TransformerDecoder,
    TransformerEncoder,
    learned_alphas,
)

TOL64 = 1e-10
DIM, HEADS, FFN = 16, 4, 32


# ---------------------------------------------------------------------------------------
# helpers: copy PyTorch's layers into ours
# ---------------------------------------------------------------------------------------


def _copy_attention(ref: nn.MultiheadAttention, ours: MultiHeadAttention) -> None:
    q, k, v = ref.in_proj_weight.chunk(3)
    qb, kb, vb = ref.in_proj_bias.chunk(3)
    with torch.no_grad():
        for linear, w, b in ((ours.query, q, qb), (ours.key, k, kb), (ours.value, v, vb)):
            linear.weight.copy_(w)
            linear.bias.copy_(b)
        ours.out.weight.copy_(ref.out_proj.weight)
        ours.out.bias.copy_(ref.out_proj.bias)


def _copy_ffn(ref: nn.Module, ours: EncoderLayer | DecoderLayer) -> None:
    assert isinstance(ours.ffn, FeedForward)
    ours.ffn.intermediate.load_state_dict(ref.linear1.state_dict())
    ours.ffn.output.load_state_dict(ref.linear2.state_dict())


def _copy_encoder_layer(ref: nn.TransformerEncoderLayer, ours: EncoderLayer) -> None:
    assert isinstance(ours.attention, MultiHeadAttention)
    _copy_attention(ref.self_attn, ours.attention)
    _copy_ffn(ref, ours)
    ours.attention_norm.load_state_dict(ref.norm1.state_dict())
    ours.ffn_norm.load_state_dict(ref.norm2.state_dict())


def _copy_decoder_layer(ref: nn.TransformerDecoderLayer, ours: DecoderLayer) -> None:
    assert ours.cross_attention is not None and ours.cross_attention_norm is not None
    _copy_attention(ref.self_attn, ours.self_attention)
    _copy_attention(ref.multihead_attn, ours.cross_attention)
    _copy_ffn(ref, ours)
    ours.self_attention_norm.load_state_dict(ref.norm1.state_dict())
    ours.cross_attention_norm.load_state_dict(ref.norm2.state_dict())
    ours.ffn_norm.load_state_dict(ref.norm3.state_dict())


def _padding(batch: int, n: int, lengths: list[int]) -> torch.Tensor:
    """Key-padding mask (True = real) with the given real lengths (padding at the end)."""
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def _causal(n: int) -> torch.Tensor:
    """PyTorch's boolean causal mask: True = NOT allowed."""
    return torch.ones(n, n, dtype=torch.bool).triu(1)


def _data(batch: int = 3, n_src: int = 7, n_tgt: int = 5):
    x = torch.randn(batch, n_src, DIM, dtype=torch.float64)
    y = torch.randn(batch, n_tgt, DIM, dtype=torch.float64)
    src_mask = _padding(batch, n_src, [n_src, 5, 2])
    tgt_mask = _padding(batch, n_tgt, [3, n_tgt, 4])
    return x, y, src_mask, tgt_mask


# ---------------------------------------------------------------------------------------
# feed-forward
# ---------------------------------------------------------------------------------------


def _gelu_erf(h: torch.Tensor) -> torch.Tensor:
    return 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))


def _gelu_tanh(h: torch.Tensor) -> torch.Tensor:
    return 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))


@pytest.mark.parametrize(
    ("activation", "formula"),
    [
        ("relu", lambda h: h.clamp(min=0)),
        ("gelu", _gelu_erf),
        ("gelu_tanh", _gelu_tanh),
    ],
)
def test_feed_forward_matches_the_formula(activation, formula) -> None:
    ffn = FeedForward(8, 24, activation=activation).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    h = x @ ffn.intermediate.weight.T + ffn.intermediate.bias
    expected = formula(h) @ ffn.output.weight.T + ffn.output.bias
    torch.testing.assert_close(ffn(x), expected, rtol=0, atol=1e-12)


def test_geglu_gates_gelu_with_a_second_projection() -> None:
    ffn = FeedForward(8, 12, activation="geglu").double()
    assert ffn.intermediate.weight.shape == (24, 8)  # doubled: value and gate
    assert ffn.output.weight.shape == (8, 12)
    x = torch.randn(3, 8, dtype=torch.float64)
    w_value, w_gate = ffn.intermediate.weight.chunk(2)
    b_value, b_gate = ffn.intermediate.bias.chunk(2)
    hidden = _gelu_erf(x @ w_value.T + b_value) * (x @ w_gate.T + b_gate)
    expected = hidden @ ffn.output.weight.T + ffn.output.bias
    torch.testing.assert_close(ffn(x), expected, rtol=0, atol=1e-12)


def test_feed_forward_defaults_and_errors() -> None:
    ffn = FeedForward(10)
    assert ffn.intermediate.out_features == 40 and ffn.activation == "gelu"
    assert FeedForward(10, bias=False).intermediate.bias is None
    with pytest.raises(ValueError, match="activation"):
        FeedForward(10, activation="swish")
    with pytest.raises(ValueError, match="dropout"):
        FeedForward(10, dropout=1.0)
    with pytest.raises(ValueError, match="x"):
        ffn(torch.randn(2, 3, 11))


# ---------------------------------------------------------------------------------------
# embeddings
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [6, 7])
def test_sinusoidal_table_is_the_formula(dim: int) -> None:
    table = sinusoidal_table(20, dim)
    for pos in range(20):
        for i in range(dim):
            angle = pos / 10000 ** ((i - i % 2) / dim)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert abs(float(table[pos, i]) - expected) < 1e-12


def test_sinusoidal_embedding_is_a_non_persistent_buffer_with_offsets() -> None:
    emb = SinusoidalPositionalEmbedding(8, max_len=16)
    assert "table" not in emb.state_dict() and not list(emb.parameters())
    torch.testing.assert_close(emb(torch.arange(16)), sinusoidal_table(16, 8).float())
    assert emb.double()(torch.tensor([3])).dtype == torch.float64
    with pytest.raises(ValueError, match=r"position_ids.*\[0, 16\).*16"):
        emb(torch.tensor([16]))
    # Decoding one token at a time with an offset gives the rows of the whole sequence.
    embeddings = Embeddings(11, 8, max_len=16, positions="sinusoidal", layer_norm=False)
    ids = torch.randint(0, 11, (2, 6))
    full = embeddings(ids)
    steps = torch.cat([embeddings(ids[:, t : t + 1], offset=t) for t in range(6)], dim=1)
    torch.testing.assert_close(steps, full)


def test_embeddings_sum_then_normalise_like_bert_and_xlm() -> None:
    emb = Embeddings(30, 8, max_len=12, type_vocab_size=2, n_langs=3).double()
    ids = torch.randint(0, 30, (2, 5))
    types = torch.randint(0, 2, (2, 5))
    langs = torch.randint(0, 3, (2, 5))
    total = (
        emb.word_embeddings.weight[ids]
        + emb.position_embeddings.weight[:5]
        + emb.token_type_embeddings.weight[types]
        + emb.lang_embeddings.weight[langs]
    )
    expected = F.layer_norm(total, (8,), emb.norm.weight, emb.norm.bias, eps=1e-12)
    torch.testing.assert_close(emb(ids, types, langs), expected, rtol=0, atol=1e-12)
    # Vaswani-style: scaled tokens plus sinusoids, no LayerNorm.
    plain = Embeddings(30, 8, positions="sinusoidal", layer_norm=False, scale=True).double()
    expected = plain.word_embeddings.weight[ids] * math.sqrt(8) + sinusoidal_table(5, 8)
    torch.testing.assert_close(plain(ids), expected, rtol=0, atol=1e-6)


def test_embedding_ids_are_checked_and_named() -> None:
    emb = Embeddings(10, 4, max_len=6, type_vocab_size=2)
    with pytest.raises(ValueError, match=r"input_ids.*\[0, 10\).*12"):
        emb(torch.tensor([[1, 12]]))
    with pytest.raises(ValueError, match=r"input_ids.*-1"):
        emb(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match=r"src.*\[0, 10\)"):
        emb(torch.tensor([[10]]), name="src")
    with pytest.raises(TypeError, match="input_ids"):
        emb(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="input_ids"):
        emb(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="token_type_ids"):
        emb(torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="token_type_ids"):
        emb(torch.tensor([[1, 2]]), token_type_ids=torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="position_ids"):
        emb(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="langs"):
        emb(torch.tensor([[1]]), langs=torch.tensor([[0]]))
    with pytest.raises(ValueError, match="positions"):
        Embeddings(10, 4, positions="rotary")
    with pytest.raises(ValueError, match="vocab_size"):
        TokenEmbedding(0, 4)


# ---------------------------------------------------------------------------------------
# layers: parity with PyTorch
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_matches_torch(norm_first: bool) -> None:
    ref = nn.TransformerEncoderLayer(
        DIM, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=norm_first
    ).double()
    ours = EncoderLayer(DIM, HEADS, FFN, norm_first=norm_first).double()
    _copy_encoder_layer(ref, ours)
    x, _, src_mask, _ = _data()
    expected = ref(x, src_key_padding_mask=~src_mask)
    assert (ours(x, mask=src_mask) - expected).abs().max() <= TOL64
    assert (ours(x) - ref(x)).abs().max() <= TOL64


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_decoder_layer_matches_torch(norm_first: bool, activation: str) -> None:
    ref = nn.TransformerDecoderLayer(
        DIM,
        HEADS,
        FFN,
        dropout=0.0,
        activation=activation,
        batch_first=True,
        norm_first=norm_first,
    ).double()
    ours = DecoderLayer(DIM, HEADS, FFN, activation=activation, norm_first=norm_first).double()
    _copy_decoder_layer(ref, ours)
    x, y, src_mask, tgt_mask = _data()
    expected = ref(
        y,
        x,
        tgt_mask=_causal(y.shape[1]),
        tgt_key_padding_mask=~tgt_mask,
        memory_key_padding_mask=~src_mask,
    )
    got = ours(y, x, mask=tgt_mask, context_mask=src_mask)
    assert (got - expected).abs().max() <= TOL64


@pytest.mark.parametrize("norm_first", [False, True])
def test_stacks_match_torch(norm_first: bool) -> None:
    config = StackConfig(
        dim=DIM, heads=HEADS, depth=3, ffn_dim=FFN, dropout=0.0, norm_first=norm_first
    )
    encoder, decoder = TransformerEncoder(config).double(), TransformerDecoder(config).double()
    enc_layer = nn.TransformerEncoderLayer(
        DIM, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    dec_layer = nn.TransformerDecoderLayer(
        DIM, HEADS, FFN, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    ref_encoder = nn.TransformerEncoder(
        enc_layer,
        3,
        norm=nn.LayerNorm(DIM) if norm_first else None,
        enable_nested_tensor=False,
    ).double()
    ref_decoder = nn.TransformerDecoder(
        dec_layer, 3, norm=nn.LayerNorm(DIM) if norm_first else None
    ).double()
    # nn.TransformerEncoder deep-copies one layer: make the copies differ before copying.
    for module in (ref_encoder, ref_decoder):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1 * torch.randn_like(p))
    for ref, ours in zip(ref_encoder.layers, encoder.layers, strict=True):
        _copy_encoder_layer(ref, ours)
    for ref, ours in zip(ref_decoder.layers, decoder.layers, strict=True):
        _copy_decoder_layer(ref, ours)
    if norm_first:
        encoder.norm.load_state_dict(ref_encoder.norm.state_dict())
        decoder.norm.load_state_dict(ref_decoder.norm.state_dict())
    else:
        assert encoder.norm is None and decoder.norm is None

    x, y, src_mask, tgt_mask = _data()
    memory = ref_encoder(x, src_key_padding_mask=~src_mask)
    ours_memory = encoder(x, mask=src_mask).last_hidden_state
    assert (ours_memory - memory).abs().max() <= TOL64
    expected = ref_decoder(
        y,
        memory,
        tgt_mask=_causal(y.shape[1]),
        tgt_key_padding_mask=~tgt_mask,
        memory_key_padding_mask=~src_mask,
    )
    got = decoder(y, memory, mask=tgt_mask, context_mask=src_mask).last_hidden_state
    assert (got - expected).abs().max() <= TOL64


# ---------------------------------------------------------------------------------------
# per-layer configuration
# ---------------------------------------------------------------------------------------


def test_per_layer_configs_build_the_requested_layers() -> None:
    memory = MemoryConfig(n_keys=8, heads=2, k_dim=8, topk=4)
    config = StackConfig(
        dim=DIM,
        heads=HEADS,
        depth=4,
        dropout=0.0,
        layer=LayerConfig(window=(2, 1)),
        overrides={
            1: LayerConfig(normalizer="sparsemax", memory=memory),
            3: LayerConfig(normalizer="entmax", alpha=1.3, learn_alpha=True),
        },
    )
    encoder = TransformerEncoder(config)
    windowed, memory_layer, windowed_too, adaptive = encoder.layers
    for layer in (windowed, windowed_too):
        assert isinstance(layer.attention, SlidingWindowAttention)
        assert layer.window == (2, 1) and isinstance(layer.ffn, FeedForward)
    assert isinstance(memory_layer.attention, MultiHeadAttention)
    assert memory_layer.attention.normalizer == "sparsemax" and memory_layer.has_memory
    assert isinstance(memory_layer.ffn, ProductKeyMemory) and memory_layer.ffn.n_keys == 8
    assert isinstance(adaptive.attention.alpha, EntmaxAlpha)
    alphas = learned_alphas(encoder)
    assert list(alphas) == ["layers.3.attention"]
    torch.testing.assert_close(alphas["layers.3.attention"], torch.full((HEADS,), 1.3))

    # ... and they behave as requested.
    encoder.eval()
    x = torch.randn(2, 9, DIM)
    mask = _padding(2, 9, [9, 6])
    out = encoder(x, mask=mask, output_attentions=True)
    band, sparse, band_too, dense = out.attentions
    assert band.shape == band_too.shape == (2, HEADS, 9, 4)  # before + after + 1
    assert sparse.shape == dense.shape == (2, HEADS, 9, 9)
    assert (sparse[mask[:, None, :, None].expand_as(sparse)] == 0).any()  # sparsemax zeros
    assert (sparse[..., 6:][1] == 0).all() and (dense[..., 6:][1] == 0).all()  # padding
    torch.testing.assert_close(dense.sum(-1), torch.ones_like(dense.sum(-1)))

    # The decoder applies a layer's normaliser to both of its attentions.
    decoder = TransformerDecoder(
        StackConfig(dim=DIM, heads=HEADS, depth=2, overrides={1: LayerConfig("sparsemax")})
    )
    assert [layer.self_attention.normalizer for layer in decoder.layers] == [
        "softmax",
        "sparsemax",
    ]
    assert decoder.layers[1].cross_attention.normalizer == "sparsemax"


@pytest.mark.parametrize("normalizer", ["softmax", "sparsemax"])
def test_sliding_window_layer_equals_dense_layer_with_band_mask(normalizer: str) -> None:
    before, after = 2, 1
    windowed = EncoderLayer(DIM, HEADS, FFN, normalizer=normalizer, window=(before, after))
    dense = EncoderLayer(DIM, HEADS, FFN, normalizer=normalizer)
    dense.load_state_dict(windowed.state_dict())  # same parameter names
    windowed, dense = windowed.double(), dense.double()
    x = torch.randn(2, 11, DIM, dtype=torch.float64)
    mask = _padding(2, 11, [11, 7])
    i = torch.arange(11)[:, None]
    j = torch.arange(11)[None, :]
    band = (j >= i - before) & (j <= i + after)
    full_mask = band[None, None] & mask[:, None, None, :]
    out_w, weights_w = windowed(x, mask=mask, output_attentions=True)
    out_d, weights_d = dense(x, mask=full_mask, output_attentions=True)
    assert (out_w - out_d).abs().max() <= TOL64
    assert weights_w.shape == (2, HEADS, 11, before + after + 1)
    assert (weights_d * ~band).abs().max() == 0


def test_decoder_rejects_windows_and_memory_layers_mask_padding() -> None:
    config = StackConfig(dim=DIM, heads=HEADS, depth=2, layer=LayerConfig(window=(2, 0)))
    with pytest.raises(ValueError, match="window"):
        TransformerDecoder(config)
    layer = EncoderLayer(DIM, HEADS, memory={"n_keys": 8, "heads": 2, "k_dim": 8, "topk": 4})
    layer.train()
    x = torch.randn(2, 6, DIM)
    mask = _padding(2, 6, [6, 3])
    out = layer(x, mask=mask)
    x2 = x.clone()
    x2[1, 3:] = 100.0  # padding content must not reach the memory's batch norm statistics
    torch.testing.assert_close(layer(x2, mask=mask)[mask], out[mask])


# ---------------------------------------------------------------------------------------
# masks, caches, outputs
# ---------------------------------------------------------------------------------------


def _small_config(**layer) -> StackConfig:
    return StackConfig(
        dim=DIM, heads=HEADS, depth=2, ffn_dim=FFN, dropout=0.0, layer=LayerConfig(**layer)
    )


@pytest.mark.parametrize("norm_first", [False, True])
def test_padded_positions_do_not_change_real_outputs(norm_first: bool) -> None:
    config = StackConfig(dim=DIM, heads=HEADS, depth=2, dropout=0.0, norm_first=norm_first)
    encoder, decoder = TransformerEncoder(config).eval(), TransformerDecoder(config).eval()
    x, y, src_mask, tgt_mask = (t.float() if t.is_floating_point() else t for t in _data())
    memory = encoder(x, mask=src_mask).last_hidden_state
    out = decoder(y, memory, mask=tgt_mask, context_mask=src_mask).last_hidden_state
    x2, y2 = x.clone(), y.clone()
    x2[~src_mask] = 50.0
    y2[~tgt_mask] = -50.0
    memory2 = encoder(x2, mask=src_mask).last_hidden_state
    out2 = decoder(y2, memory2, mask=tgt_mask, context_mask=src_mask).last_hidden_state
    torch.testing.assert_close(memory2[src_mask], memory[src_mask])
    torch.testing.assert_close(out2[tgt_mask], out[tgt_mask])


@pytest.mark.parametrize(
    "layer",
    [
        {},
        {"normalizer": "entmax", "learn_alpha": True},
        {"memory": MemoryConfig(n_keys=8, heads=2, k_dim=8, topk=4)},
    ],
    ids=["softmax", "adaptive-entmax", "memory"],
)
@pytest.mark.parametrize("norm_first", [False, True])
def test_kv_cache_decoding_equals_full_recomputation(layer: dict, norm_first: bool) -> None:
    config = replace(_small_config(**layer), norm_first=norm_first)
    decoder = TransformerDecoder(config).eval()
    memory = torch.randn(2, 5, DIM)
    context_mask = _padding(2, 5, [5, 3])
    y = torch.randn(2, 6, DIM)
    full = decoder(y, memory, context_mask=context_mask).last_hidden_state
    cache = decoder.new_cache()
    steps = []
    for t in range(6):
        out = decoder(y[:, t : t + 1], memory, context_mask=context_mask, cache=cache)
        steps.append(out.last_hidden_state)
    assert len(cache[0].self_attention) == 6 and len(cache[1].cross_attention) == 5
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5
    # Two new positions at once continue the same cache just as well.
    cache = decoder.new_cache()
    first = decoder(y[:, :4], memory, context_mask=context_mask, cache=cache).last_hidden_state
    rest = decoder(y[:, 4:], memory, context_mask=context_mask, cache=cache).last_hidden_state
    assert (torch.cat([first, rest], dim=1) - full).abs().max() <= 1e-5


def test_output_attentions_and_hidden_states() -> None:
    config = _small_config()
    encoder, decoder = TransformerEncoder(config), TransformerDecoder(config)
    x, y = torch.randn(2, 7, DIM), torch.randn(2, 4, DIM)
    src_mask = _padding(2, 7, [7, 5])
    enc = encoder(x, mask=src_mask, output_attentions=True, output_hidden_states=True)
    assert len(enc.attentions) == 2 and len(enc.hidden_states) == 3
    assert all(a.shape == (2, HEADS, 7, 7) for a in enc.attentions)
    assert enc.hidden_states[0] is x
    assert enc.hidden_states[-1] is enc.last_hidden_state
    assert enc.cross_attentions is None
    assert (enc.attentions[0][1, :, :, 5:] == 0).all()
    dec = decoder(y, enc.last_hidden_state, context_mask=src_mask, output_attentions=True)
    assert dec.hidden_states is None
    assert all(a.shape == (2, HEADS, 4, 4) for a in dec.attentions)
    assert all(a.shape == (2, HEADS, 4, 7) for a in dec.cross_attentions)
    causal_zero = torch.ones(4, 4, dtype=torch.bool).triu(1)
    assert (dec.attentions[0][..., causal_zero] == 0).all()
    plain = encoder(x, mask=src_mask)
    assert plain.attentions is None and plain.hidden_states is None
    torch.testing.assert_close(plain.last_hidden_state, enc.last_hidden_state)


def test_decoder_only_stack_without_cross_attention() -> None:
    decoder = TransformerDecoder(_small_config(), cross_attention=False).eval()
    assert decoder.layers[0].cross_attention is None
    y = torch.randn(2, 5, DIM)
    full = decoder(y).last_hidden_state
    y2 = y.clone()
    y2[:, 3:] = 7.0  # the future does not reach the past
    torch.testing.assert_close(decoder(y2).last_hidden_state[:, :3], full[:, :3])
    with pytest.raises(ValueError, match="context"):
        decoder(y, torch.randn(2, 3, DIM))
    with pytest.raises(ValueError, match="context"):
        TransformerDecoder(_small_config())(y)


def test_layer_cache_is_batch_first() -> None:
    layer = DecoderLayer(DIM, HEADS)
    cache = LayerCache()
    layer(torch.randn(3, 2, DIM), torch.randn(3, 4, DIM), cache=cache)
    assert cache.self_attention.key.shape == (3, HEADS, 2, DIM // HEADS)
    assert cache.cross_attention.value.shape == (3, HEADS, 4, DIM // HEADS)


def test_layers_and_stacks_run_on_every_device(device: torch.device) -> None:
    config = _small_config(normalizer="entmax15")
    encoder = TransformerEncoder(config).to(device)
    decoder = TransformerDecoder(config).to(device)
    x = torch.randn(2, 5, DIM, device=device)
    mask = _padding(2, 5, [5, 2]).to(device)
    memory = encoder(x, mask=mask).last_hidden_state
    out = decoder(torch.randn(2, 3, DIM, device=device), memory, context_mask=mask)
    assert out.last_hidden_state.device.type == device.type
    assert torch.isfinite(out.last_hidden_state).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_forward_is_finite(dtype: torch.dtype, device: torch.device) -> None:
    encoder = TransformerEncoder(_small_config()).to(device=device, dtype=dtype)
    x = torch.randn(2, 5, DIM, device=device, dtype=dtype)
    out = encoder(x, mask=_padding(2, 5, [5, 1]).to(device)).last_hidden_state
    assert out.dtype == dtype and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------
# errors name the argument
# ---------------------------------------------------------------------------------------


def test_bad_layer_inputs_name_the_argument() -> None:
    layer = EncoderLayer(DIM, HEADS)
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(2, 5, DIM + 1))
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(5, DIM))
    with pytest.raises(TypeError, match="mask"):
        layer(torch.randn(2, 5, DIM), mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="mask"):
        layer(torch.randn(2, 5, DIM), mask=torch.ones(2, 6, dtype=torch.bool))
    windowed = EncoderLayer(DIM, HEADS, window=(1, 1))
    with pytest.raises(ValueError, match="mask"):
        windowed(torch.randn(2, 5, DIM), mask=torch.ones(2, 1, 5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="window"):
        EncoderLayer(DIM, HEADS, window=(1, -1))
    with pytest.raises(ValueError, match="learn_alpha"):
        EncoderLayer(DIM, HEADS, normalizer="entmax", learn_alpha=True, window=(1, 1))
    with pytest.raises(TypeError, match="memory"):
        EncoderLayer(DIM, HEADS, memory=MemoryConfig())
    with pytest.raises(ValueError, match="dim"):
        EncoderLayer(15, 4)
    with pytest.raises(ValueError, match="dropout"):
        DecoderLayer(DIM, HEADS, dropout=-0.1)
    decoder = TransformerDecoder(_small_config())
    with pytest.raises(ValueError, match="cache"):
        decoder(torch.randn(1, 1, DIM), torch.randn(1, 2, DIM), cache=[LayerCache()])


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: StackConfig(dim=30, heads=4), "dim"),
        (lambda: StackConfig(depth=0), "depth"),
        (lambda: StackConfig(activation="tanh"), "activation"),
        (lambda: StackConfig(dropout=1.5), "dropout"),
        (lambda: StackConfig(depth=2, overrides={2: LayerConfig()}), "overrides"),
        (lambda: LayerConfig(normalizer="softermax"), "normalizer"),
        (lambda: LayerConfig(learn_alpha=True), "learn_alpha"),
        (lambda: LayerConfig(alpha=1.5), "alpha"),
        (lambda: LayerConfig(normalizer="entmax", alpha=2.5, learn_alpha=True), "alpha"),
        (lambda: LayerConfig(window=(3,)), "window"),
        (lambda: MemoryConfig(k_dim=7), "k_dim"),
        (lambda: MemoryConfig(n_keys=4, topk=8), "topk"),
    ],
)
def test_bad_config_values_name_the_field(build, name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        build()


def test_activation_dropout_defaults_to_dropout_and_can_be_turned_off() -> None:
    from attnzoo.transformers_zoo.stacks import StackConfig, TransformerEncoder

    pytorch_like = TransformerEncoder(StackConfig(dim=8, heads=2, depth=1, dropout=0.2))
    assert pytorch_like.layers[0].ffn.dropout.p == 0.2
    hf_like = TransformerEncoder(
        StackConfig(dim=8, heads=2, depth=1, dropout=0.2, activation_dropout=0.0)
    )
    assert hf_like.layers[0].ffn.dropout.p == 0.0
    assert hf_like.layers[0].dropout.p == 0.2  # the residual dropout stays
    with pytest.raises(ValueError, match="activation_dropout"):
        StackConfig(dim=8, heads=2, depth=1, activation_dropout=1.5)


def test_attention_output_dropout_is_separate_from_the_residual_dropout():
    torch.manual_seed(0)
    layer = EncoderLayer(
        16,
        2,
        ffn_dim=24,
        dropout=0.3,
        attention_dropout=0.0,
        activation_dropout=0.0,
        attention_output_dropout=0.0,
    ).train()
    x = torch.randn(3, 5, 16)
    torch.manual_seed(7)
    got = layer(x)
    # The reference draws one dropout mask only: on the feed-forward output.
    torch.manual_seed(7)
    h = layer.attention_norm(x + layer.attention(x))
    want = layer.ffn_norm(h + torch.nn.functional.dropout(layer.ffn(h), 0.3))
    torch.testing.assert_close(got, want)
    default = EncoderLayer(16, 2, ffn_dim=24, dropout=0.3)
    assert default.attention_output_dropout.p == 0.3
    with pytest.raises(ValueError, match="attention_output_dropout"):
        EncoderLayer(16, 2, attention_output_dropout=1.5)
    with pytest.raises(ValueError, match="attention_output_dropout"):
        StackConfig(dim=16, heads=2, depth=1, attention_output_dropout=-0.1)
