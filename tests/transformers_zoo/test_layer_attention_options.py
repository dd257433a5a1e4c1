"""Sparse-pattern, LSH and adaptive-span self-attention as per-layer stack options.

Every stack is checked against the same layers computed by hand: its own LayerNorms and
feed-forward networks around a dense reference of the attention, built from the module's
projections:

* sparse pattern: dense ``attend`` with :func:`sparse_pattern_mask` (and padding);
* LSH with one chunk: dense shared-QK softmax with the self rule (a query attends to
  itself only when it has no other key), which every hash round then sees whole;
* adaptive span: dense softmax times the soft span mask of the distance (``i - j``
  causal, ``|i - j|`` bidirectional), renormalised: the paper's formula.

Float64, dropout 0, tolerance 1e-10.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.attention.adaptive_span import AdaptiveSpanAttention, span_penalty
from attnzoo.attention.functional import attend
from attnzoo.attention.lsh import LSHAttention
from attnzoo.attention.multi_head import KVCache, MultiHeadAttention
from attnzoo.attention.normalizers import masked_normalize
from attnzoo.attention.sliding_window import SlidingWindowAttention
from attnzoo.attention.sparse_patterns import SparseTransformerAttention, sparse_pattern_mask
from attnzoo.transformers_zoo.layers import DecoderLayer, EncoderLayer, LayerCache
from attnzoo.transformers_zoo.stacks import (
    AdaptiveSpanConfig,
    LayerConfig,
    LSHConfig,
    SparsePatternConfig,
    StackConfig,
    TransformerDecoder,
    TransformerEncoder,
)

TOL = 1e-10
DIM, HEADS, N, BATCH = 12, 2, 11, 2


def stack_config(layer: LayerConfig | None = None, depth: int = 2, **kwargs) -> StackConfig:
    options = {"dim": DIM, "heads": HEADS, "depth": depth, "ffn_dim": 20, "dropout": 0.0}
    return StackConfig(**{**options, **kwargs}, layer=layer or LayerConfig())


def inputs(n: int = N, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, n, DIM, generator=g, dtype=torch.float64)
    padding = torch.ones(BATCH, n, dtype=torch.bool)
    padding[1, -3:] = False
    return x, padding


def assert_close(actual: Tensor, expected: Tensor, tol: float = TOL) -> None:
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"max abs difference {diff:.3g} > {tol:g}"


# --------------------------------------------------------------------------- references


def heads_of(module: nn.Module, t: Tensor) -> Tensor:
    return t.unflatten(-1, (module.heads, -1)).transpose(1, 2)


def merge(module: nn.Module, out: Tensor) -> Tensor:
    return module.out(out.transpose(1, 2).flatten(2))


def sparse_reference(module: SparseTransformerAttention, x: Tensor, padding: Tensor | None):
    """Dense attention with the pattern's mask."""
    q, k, v = (heads_of(module, proj(x)) for proj in (module.query, module.key, module.value))
    heads = module.heads if module.part == "split" else None
    allowed = sparse_pattern_mask(
        x.shape[1],
        module.pattern,
        module.stride,
        summary=module.summary,
        causal=module.causal,
        part=module.part,
        heads=heads,
    )
    if padding is not None:
        allowed = allowed & padding[:, None, None, :]
    out, weights = attend(
        q, k, v, mask=allowed, normalizer=module.normalizer, alpha=module.alpha, return_weights=True
    )
    return merge(module, out), weights


def lsh_reference(module: LSHAttention, x: Tensor, padding: Tensor | None) -> Tensor:
    """Dense shared-QK softmax; a query with no other allowed key attends to itself."""
    qk, v = heads_of(module, module.query_key(x)), heads_of(module, module.value(x))
    n = x.shape[1]
    scores = qk @ F.normalize(qk, dim=-1).transpose(-2, -1) * qk.shape[-1] ** -0.5
    eye = torch.eye(n, dtype=torch.bool)
    allowed = ~eye
    if module.causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool).tril()
    self_only = eye
    if padding is not None:
        allowed = allowed & padding[:, None, None, :]
        self_only = self_only & padding[:, None, :, None]
    allowed = torch.where(allowed.any(-1, keepdim=True), allowed, self_only)
    return merge(module, masked_normalize(scores, allowed) @ v)


def span_reference(module: AdaptiveSpanAttention, x: Tensor, padding: Tensor | None):
    """Softmax times the soft span mask, renormalised (Sukhbaatar et al. 2019, eq. 2)."""
    q, k, v = (heads_of(module, proj(x)) for proj in (module.query, module.key, module.value))
    n = x.shape[1]
    scores = q @ k.transpose(-2, -1) / module.dim_head**0.5
    distance = (torch.arange(n)[:, None] - torch.arange(n)[None, :]).double()
    allowed = distance >= 0 if module.causal else torch.ones(n, n, dtype=torch.bool)
    if not module.causal:
        distance = distance.abs()
    span = module.span
    soft = ((span.ramp + span.spans()[:, None, None] - distance) / span.ramp).clamp(0, 1)
    soft = soft * (distance < span.max_span)
    if padding is not None:
        allowed = allowed & padding[:, None, None, :]
    weights = masked_normalize(scores, allowed) * soft
    weights = weights / weights.sum(-1, keepdim=True)
    return merge(module, weights @ v), weights


def self_attention_reference(module: nn.Module, x: Tensor, padding: Tensor | None) -> Tensor:
    if isinstance(module, SparseTransformerAttention):
        return sparse_reference(module, x, padding)[0]
    if isinstance(module, LSHAttention):
        return lsh_reference(module, x, padding)
    if isinstance(module, AdaptiveSpanAttention):
        return span_reference(module, x, padding)[0]
    assert isinstance(module, MultiHeadAttention)
    return module(x, mask=padding)


def residual(layer: nn.Module, x: Tensor, norm: nn.LayerNorm, branch) -> Tensor:
    """One sub-layer with its residual: pre-LN or post-LN."""
    return x + branch(norm(x)) if layer.norm_first else norm(x + branch(x))


def encoder_by_hand(stack: TransformerEncoder, x: Tensor, padding: Tensor | None) -> Tensor:
    for layer in stack.layers:

        def attention(h: Tensor, layer: EncoderLayer = layer) -> Tensor:
            return self_attention_reference(layer.attention, h, padding)

        x = residual(layer, x, layer.attention_norm, attention)
        x = residual(layer, x, layer.ffn_norm, layer.ffn)
    return stack.norm(x) if stack.norm is not None else x


def decoder_by_hand(
    stack: TransformerDecoder,
    x: Tensor,
    padding: Tensor | None,
    context: Tensor | None = None,
    context_mask: Tensor | None = None,
) -> Tensor:
    for layer in stack.layers:

        def attention(h: Tensor, layer: DecoderLayer = layer) -> Tensor:
            return self_attention_reference(layer.self_attention, h, padding)

        def cross(h: Tensor, layer: DecoderLayer = layer) -> Tensor:
            return layer.cross_attention(h, context=context, mask=context_mask)

        x = residual(layer, x, layer.self_attention_norm, attention)
        if layer.cross_attention is not None:
            x = residual(layer, x, layer.cross_attention_norm, cross)
        x = residual(layer, x, layer.ffn_norm, layer.ffn)
    return stack.norm(x) if stack.norm is not None else x


SPARSE = [
    SparsePatternConfig("strided", stride=3),
    SparsePatternConfig("fixed", stride=4, summary=2),
    SparsePatternConfig("fixed", stride=3, part="split"),
]
LSH_ONE_CHUNK = [LSHConfig(n_buckets=4, chunk_length=N), LSHConfig(n_buckets=2, n_hashes=2)]
SPAN = [AdaptiveSpanConfig(max_span=8, ramp=2, init_span=3.0)]
OPTIONS = (
    [("sparse_pattern", c) for c in SPARSE]
    + [("lsh", c) for c in LSH_ONE_CHUNK]
    + [("adaptive_span", c) for c in SPAN]
)
MODULES = {
    "sparse_pattern": SparseTransformerAttention,
    "lsh": LSHAttention,
    "adaptive_span": AdaptiveSpanAttention,
}


# --------------------------------------------------------------------------- parity


class TestStacksEqualTheLayersByHand:
    @pytest.mark.parametrize("norm_first", [False, True])
    @pytest.mark.parametrize(("name", "option"), OPTIONS)
    def test_encoder(self, name, option, norm_first):
        stack = TransformerEncoder(
            stack_config(LayerConfig(**{name: option}), norm_first=norm_first)
        ).double()
        assert all(type(layer.attention) is MODULES[name] for layer in stack.layers)
        assert not stack.layers[0].attention.causal
        x, padding = inputs()
        out = stack(x, mask=padding).last_hidden_state
        assert_close(out, encoder_by_hand(stack, x, padding))

    @pytest.mark.parametrize("norm_first", [False, True])
    @pytest.mark.parametrize(("name", "option"), OPTIONS)
    def test_decoder_only(self, name, option, norm_first):
        config = stack_config(LayerConfig(**{name: option}), norm_first=norm_first)
        stack = TransformerDecoder(config, cross_attention=False).double()
        assert all(type(layer.self_attention) is MODULES[name] for layer in stack.layers)
        assert stack.layers[0].self_attention.causal
        x, padding = inputs()
        out = stack(x, mask=padding).last_hidden_state
        assert_close(out, decoder_by_hand(stack, x, padding))

    @pytest.mark.parametrize(("name", "option"), OPTIONS[::2])
    def test_decoder_cross_attention_stays_dense(self, name, option):
        stack = TransformerDecoder(stack_config(LayerConfig(**{name: option}))).double()
        assert type(stack.layers[0].cross_attention) is MultiHeadAttention
        x, padding = inputs()
        context, context_mask = inputs(n=7, seed=1)
        out = stack(x, context, mask=padding, context_mask=context_mask).last_hidden_state
        assert_close(out, decoder_by_hand(stack, x, padding, context, context_mask))

    def test_sparse_pattern_with_a_fixed_entmax_alpha(self):
        layer = LayerConfig(
            normalizer="entmax", alpha=1.3, sparse_pattern=SparsePatternConfig("fixed", 4)
        )
        stack = TransformerEncoder(stack_config(layer)).double()
        x, padding = inputs()
        assert_close(stack(x, mask=padding).last_hidden_state, encoder_by_hand(stack, x, padding))

    def test_adaptive_span_with_a_learned_alpha_runs_and_learns(self):
        layer = LayerConfig(
            normalizer="entmax", learn_alpha=True, adaptive_span=AdaptiveSpanConfig(max_span=6)
        )
        stack = TransformerDecoder(stack_config(layer), cross_attention=False).double()
        x, padding = inputs()
        stack(x, mask=padding).last_hidden_state.square().sum().backward()
        attention = stack.layers[0].self_attention
        learned = [*attention.alpha.parameters(), attention.span.span_logit]
        assert learned and all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned)

    def test_pattern_weights_come_out_dense(self):
        option = SparsePatternConfig("strided", stride=3, part="split")
        stack = TransformerDecoder(
            stack_config(LayerConfig(sparse_pattern=option)), cross_attention=False
        ).double()
        x, padding = inputs()
        out = stack(x, mask=padding, output_attentions=True)
        weights = out.attentions[0]
        assert weights.shape == (BATCH, HEADS, N, N)
        # Post-LN: the first layer's attention sees x itself.
        expected = sparse_reference(stack.layers[0].self_attention, x, padding)[1]
        assert_close(weights, expected)

    def test_span_weights_have_the_span(self):
        stack = TransformerEncoder(stack_config(LayerConfig(adaptive_span=SPAN[0]))).double()
        x, padding = inputs()
        weights = stack(x, mask=padding, output_attentions=True).attentions[0]
        assert_close(weights, span_reference(stack.layers[0].attention, x, padding)[1])
        # Symmetric span: a key is beyond the reach on either side of the query.
        reach = stack.layers[0].attention.span.reach()
        far = (torch.arange(N)[:, None] - torch.arange(N)[None, :]).abs() >= reach
        assert weights[..., far].abs().max() == 0


# --------------------------------------------------------------------------- mixing


class TestMixedStack:
    def config(self, **kwargs) -> StackConfig:
        return stack_config(
            depth=4,
            overrides={
                1: LayerConfig(sparse_pattern=SparsePatternConfig("fixed", stride=4)),
                2: LayerConfig(lsh=LSHConfig(n_buckets=4, chunk_length=4, n_hashes=2)),
                3: LayerConfig(adaptive_span=AdaptiveSpanConfig(max_span=6, ramp=2)),
            },
            **kwargs,
        )

    def test_each_layer_gets_its_module(self):
        encoder = TransformerEncoder(self.config())
        kinds = [type(layer.attention) for layer in encoder.layers]
        assert kinds == [
            MultiHeadAttention,
            SparseTransformerAttention,
            LSHAttention,
            AdaptiveSpanAttention,
        ]

    @pytest.mark.parametrize("decoder", [False, True])
    def test_gradients_reach_every_parameter(self, decoder):
        if decoder:
            stack = TransformerDecoder(self.config(norm_first=True), cross_attention=False)
        else:
            stack = TransformerEncoder(self.config(norm_first=True))
        stack = stack.double()
        x, padding = inputs(n=13)
        x.requires_grad_(True)
        out = stack(x, mask=padding).last_hidden_state
        (out.square().sum() + 0.1 * span_penalty(stack)).backward()
        for name, parameter in stack.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name
        assert torch.isfinite(x.grad).all()

    def test_span_penalty_sums_the_adaptive_span_layers(self):
        config = self.config()
        config.overrides[0] = LayerConfig(adaptive_span=AdaptiveSpanConfig(max_span=10))
        stack = TransformerEncoder(config)
        expected = (
            stack.layers[0].attention.span.penalty() + stack.layers[3].attention.span.penalty()
        )
        assert_close(span_penalty(stack), expected, 1e-6)
        assert abs(span_penalty(stack).item() - (5.0 + 3.0)) < 1e-5  # max_span / 2 each

    def test_gradient_checkpointing_replays_the_random_hashing(self):
        # Chunked LSH without a seed hashes afresh at every call: the recomputed forward
        # must hash as the first one did for the gradients to match.
        stack = TransformerEncoder(self.config()).double()
        x, padding = inputs(n=13)
        grads = []
        for checkpointing in (False, True):
            stack.gradient_checkpointing = checkpointing
            stack.zero_grad()
            torch.manual_seed(3)
            stack(x, mask=padding).last_hidden_state.square().sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in stack.parameters()]))
        assert_close(grads[1], grads[0])

    def test_padding_keeps_real_positions_unchanged(self):
        stack = TransformerEncoder(self.config()).double().eval()
        torch.manual_seed(1)
        x, _ = inputs(n=13)
        padded = torch.cat([x, torch.randn(BATCH, 3, DIM, dtype=torch.float64)], dim=1)
        mask = torch.ones(BATCH, 16, dtype=torch.bool)
        mask[:, 13:] = False
        # With chunks, the padded tail would change which real keys share a chunk; one
        # chunk makes the LSH layer see every real key with and without the tail.
        stack.layers[2].attention.chunk_length = 16
        plain = stack(x).last_hidden_state
        with_tail = stack(padded, mask=mask).last_hidden_state[:, :13]
        assert_close(with_tail, plain, 1e-9)


# --------------------------------------------------------------------------- decoding


class TestDecodingWithACache:
    def test_adaptive_span_decodes_step_by_step_exactly(self):
        config = stack_config(
            depth=2,
            layer=None,
            overrides={1: LayerConfig(adaptive_span=AdaptiveSpanConfig(max_span=4, ramp=1))},
        )
        stack = TransformerDecoder(config).double().eval()
        x, _ = inputs()
        context, context_mask = inputs(n=5, seed=1)
        full = stack(x, context, context_mask=context_mask).last_hidden_state
        cache = stack.new_cache()
        steps = [
            stack(x[:, i : i + 1], context, context_mask=context_mask, cache=cache)
            for i in range(N)
        ]
        stepped = torch.cat([s.last_hidden_state for s in steps], dim=1)
        assert_close(stepped, full)
        # The span layer's cache keeps only the keys a later query can still see.
        reach = stack.layers[1].self_attention.span.reach()
        assert len(cache[1].self_attention) == reach - 1 < N
        assert len(cache[0].self_attention) == N

    def test_sparse_pattern_decodes_step_by_step_exactly(self):
        config = stack_config(
            depth=2,
            overrides={1: LayerConfig(sparse_pattern=SparsePatternConfig("fixed", stride=3))},
        )
        stack = TransformerDecoder(config).double().eval()
        x, _ = inputs()
        context, context_mask = inputs(n=5, seed=1)
        full = stack(x, context, context_mask=context_mask).last_hidden_state
        cache = stack.new_cache()
        steps = [
            stack(x[:, i : i + 1], context, context_mask=context_mask, cache=cache)
            for i in range(N)
        ]
        stepped = torch.cat([s.last_hidden_state for s in steps], dim=1)
        assert_close(stepped, full)
        assert [len(c.self_attention) for c in cache] == [N, N]

    def test_lsh_without_a_seed_refuses_a_cache(self):
        # Hashing drawn anew at every call: the cached buckets would be meaningless.
        config = stack_config(depth=2, overrides={1: LayerConfig(lsh=LSHConfig(n_buckets=2))})
        stack = TransformerDecoder(config, cross_attention=False).double()
        cache = stack.new_cache()
        x, _ = inputs()
        with pytest.raises(ValueError, match="layer 1: `cache` given.*seed=None"):
            stack(x[:, :1], cache=cache)
        # Checked before any layer ran: the dense layer 0 cached nothing.
        assert len(cache[0].self_attention) == 0
        layer = stack.layers[1]
        with pytest.raises(ValueError, match="cannot decode step by step"):
            layer(x[:, :1], cache=LayerCache())

    def test_bidirectional_span_refuses_a_cache(self):
        module = AdaptiveSpanAttention(DIM, HEADS, max_span=4, causal=False)
        with pytest.raises(ValueError, match="`cache`.*causal=True"):
            module(torch.randn(1, 3, DIM), cache=KVCache())


# --------------------------------------------------------------------------- errors


class TestErrors:
    @pytest.mark.parametrize(
        ("make", "error", "match"),
        [
            (lambda: SparsePatternConfig("banded"), ValueError, "`pattern`"),
            (lambda: SparsePatternConfig(stride=0), ValueError, "`stride`"),
            (lambda: SparsePatternConfig("fixed", stride=2, summary=3), ValueError, "`summary`"),
            (lambda: SparsePatternConfig(part="both"), ValueError, "`part`"),
            (lambda: LSHConfig(n_buckets=3), ValueError, "`n_buckets`"),
            (lambda: LSHConfig(n_hashes=0), ValueError, "`n_hashes`"),
            (lambda: LSHConfig(chunk_length=1.5), TypeError, "`chunk_length`"),
            (lambda: LSHConfig(attend_across_buckets=1), TypeError, "`attend_across_buckets`"),
            (lambda: LSHConfig(seed=-1), ValueError, "`seed`"),
            (lambda: AdaptiveSpanConfig(max_span=0), ValueError, "`max_span`"),
            (lambda: AdaptiveSpanConfig(max_span=8, ramp=0), ValueError, "`ramp`"),
            (lambda: AdaptiveSpanConfig(max_span=8, init_span=8), ValueError, "`init_span`"),
            (lambda: AdaptiveSpanConfig(max_span=8, init_span="4"), TypeError, "`init_span`"),
        ],
    )
    def test_bad_option_config_is_named(self, make, error, match):
        with pytest.raises(error, match=match):
            make()

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"sparse_pattern": {"pattern": "fixed"}}, TypeError, "SparsePatternConfig"),
            ({"lsh": SparsePatternConfig()}, TypeError, "LSHConfig"),
            (
                {"window": (2, 2), "lsh": LSHConfig()},
                ValueError,
                r"at most one .* got \['window', 'lsh'\]",
            ),
            (
                {"sparse_pattern": SparsePatternConfig(), "adaptive_span": SPAN[0]},
                ValueError,
                "at most one",
            ),
            (
                {"sparse_pattern": SparsePatternConfig(), "position": "rotary"},
                ValueError,
                "position",
            ),
            ({"lsh": LSHConfig(), "position": "alibi"}, ValueError, "position"),
            ({"adaptive_span": SPAN[0], "position": "rotary"}, ValueError, "position"),
            (
                {
                    "sparse_pattern": SparsePatternConfig(),
                    "normalizer": "entmax",
                    "learn_alpha": True,
                },
                ValueError,
                "learn_alpha",
            ),
            ({"lsh": LSHConfig(), "normalizer": "entmax15"}, ValueError, "softmax"),
            ({"lsh": LSHConfig(), "normalizer": "entmax", "alpha": 1.5}, ValueError, "softmax"),
        ],
    )
    def test_bad_layer_config_is_named(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            LayerConfig(**kwargs)

    def test_split_needs_even_heads(self):
        layer = LayerConfig(sparse_pattern=SparsePatternConfig(part="split"))
        with pytest.raises(ValueError, match="layer 1: .*even number of `heads`"):
            StackConfig(dim=9, heads=3, depth=2, overrides={1: layer})

    def test_decoder_still_refuses_a_window(self):
        with pytest.raises(ValueError, match="window"):
            TransformerDecoder(stack_config(LayerConfig(window=(1, 1))))

    @pytest.mark.parametrize(
        ("kwargs", "error", "match"),
        [
            ({"sparse_pattern": [("stride", 3)]}, TypeError, "`sparse_pattern` must be a dict"),
            ({"lsh": {"causal": True}}, ValueError, r"`lsh` may not set \['causal'\]"),
            ({"adaptive_span": {"max_span": 4, "dropout": 0.5}}, ValueError, "may not set"),
            ({"lsh": {"n_buckets": 5}}, ValueError, "`n_buckets`"),
        ],
    )
    def test_bad_layer_options_are_named(self, kwargs, error, match):
        with pytest.raises(error, match=match):
            EncoderLayer(DIM, HEADS, **kwargs)

    @pytest.mark.parametrize(
        "kwargs", [{"sparse_pattern": {"stride": 3}}, {"lsh": {"n_buckets": 2}}]
    )
    def test_a_rank4_mask_is_refused_where_only_padding_applies(self, kwargs):
        x = torch.randn(1, 5, DIM)
        mask = torch.ones(1, 1, 5, 5, dtype=torch.bool)
        with pytest.raises(ValueError, match="key-padding mask"):
            EncoderLayer(DIM, HEADS, **kwargs)(x, mask=mask)
        with pytest.raises(ValueError, match="key-padding mask"):
            DecoderLayer(DIM, HEADS, cross_attention=False, **kwargs)(x, mask=mask)

    def test_lsh_has_no_weights_to_return(self):
        stack = TransformerEncoder(stack_config(LayerConfig(lsh=LSHConfig(n_buckets=2))))
        with pytest.raises(ValueError, match="LSH attention forms no weight matrix"):
            stack(torch.randn(1, 5, DIM), output_attentions=True)

    def test_sliding_window_layers_are_unchanged(self):
        stack = TransformerEncoder(stack_config(LayerConfig(window=(1, 2))))
        assert type(stack.layers[0].attention) is SlidingWindowAttention
        assert stack.layers[0].window == (1, 2)
        with pytest.raises(ValueError, match="sliding-window layer must be a key-padding"):
            stack(torch.randn(1, 5, DIM), mask=torch.ones(1, 1, 5, 5, dtype=torch.bool))
