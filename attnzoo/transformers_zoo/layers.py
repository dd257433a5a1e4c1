"""Transformer encoder and decoder layers: one configurable block family.

A layer is residual sub-layers, each wrapped in LayerNorm and dropout, in one of the two
arrangements (``norm_first``):

* post-LN (Vaswani et al. 2017; ``norm_first=False``): ``x = norm(x + dropout(f(x)))``;
* pre-LN (Xiong et al. 2020; ``norm_first=True``): ``x = x + dropout(f(norm(x)))``, with
  one final LayerNorm after the last layer (the stacks add it).

:class:`EncoderLayer` is self-attention then feed-forward; :class:`DecoderLayer` is causal
self-attention, cross-attention to the encoder output (``context``), then feed-forward. With
dropout 0 they compute what :class:`torch.nn.TransformerEncoderLayer` and
:class:`torch.nn.TransformerDecoderLayer` (``batch_first=True``) compute.

What varies per layer:

* the attention normaliser: ``normalizer="softmax" | "sparsemax" | "entmax15" | "entmax"``
  (fixed ``alpha``, or ``learn_alpha=True`` for one learned alpha per head: the adaptively
  sparse transformer of Correia et al. 2019), applied to every attention of the layer;
* the self-attention module, dense by default, or at most one of:

  * ``window=(before, after)`` (encoder only): banded self-attention,
    :class:`~attnzoo.attention.sliding_window.SlidingWindowAttention`;
  * ``sparse_pattern={...}``: a Sparse Transformer pattern (Child et al. 2019),
    :class:`~attnzoo.attention.sparse_patterns.SparseTransformerAttention` (``pattern``,
    ``stride``, ``summary``, ``part``); causal in the decoder, bidirectional in the encoder;
  * ``lsh={...}``: the Reformer's shared-QK LSH attention (Kitaev et al. 2020),
    :class:`~attnzoo.attention.lsh.LSHAttention` (``n_buckets``, ``n_hashes``,
    ``chunk_length``, ``attend_across_buckets``, ``seed``); softmax only;
  * ``adaptive_span={...}``: a learned span per head (Sukhbaatar et al. 2019),
    :class:`~attnzoo.attention.adaptive_span.AdaptiveSpanAttention` (``max_span``,
    ``ramp``, ``init_span``); causal in the decoder, the symmetric span in the encoder.
    Its span penalty is :func:`~attnzoo.attention.adaptive_span.span_penalty` of the
    layer, stack or model.

  None of them takes ``position``; only dense and adaptive-span attention take
  ``learn_alpha``. With a KV cache, a decoder layer decodes step by step with dense,
  adaptive-span, (causal) sparse-pattern or LSH self-attention; an LSH layer needs a
  ``seed`` (fixed hashing) and an :class:`~attnzoo.attention.lsh.LSHCache` (see
  :meth:`DecoderLayer.new_cache`), and its cached steps see every earlier same-bucket key
  instead of the chunk window (:func:`~attnzoo.attention.lsh.lsh_cached_attention`). The
  cross-attention of a decoder layer is always dense;
* ``memory={...}``: a product-key memory
  (:class:`~attnzoo.attention.product_key.ProductKeyMemory`, Lample et al. 2019) in place of
  the feed-forward sub-layer; the dict holds its keyword arguments besides ``dim``;
* ``position="rotary" | "alibi"``: relative positions inside the self-attention
  (:mod:`~attnzoo.attention.positional`; the embeddings then need no positions).

Masks follow the library convention (boolean, True = real token / may attend): a
key-padding ``mask`` ``(batch, n)`` (or, for dense and adaptive-span attention, a rank-4
mask broadcastable to ``(batch, heads, n_q, n_k)``); the decoder adds its causal mask
itself and takes the encoder's key-padding mask as ``context_mask``.

Parameter names, with the Hugging Face BERT key map (per layer, ``encoder.layer.{i}.``
prefix dropped; the decoder's ``crossattention.*`` maps like ``attention.*``)::

    attention.self.{query,key,value}  -> attention.{query,key,value}
    attention.output.dense            -> attention.out
    attention.output.LayerNorm        -> attention_norm
    intermediate.dense                -> ffn.intermediate
    output.dense                      -> ffn.output
    output.LayerNorm                  -> ffn_norm

The decoder's are ``self_attention``, ``self_attention_norm``, ``cross_attention``,
``cross_attention_norm``, ``ffn``, ``ffn_norm``. From PyTorch's layers: ``self_attn``
(split ``in_proj_weight`` into query/key/value) -> ``attention``/``self_attention``,
``multihead_attn`` -> ``cross_attention``, ``linear1``/``linear2`` ->
``ffn.intermediate``/``ffn.output``, ``norm1, norm2, norm3`` -> the norms in order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..attention.adaptive_span import AdaptiveSpanAttention
from ..attention.lsh import LSHAttention
from ..attention.multi_head import KVCache, MultiHeadAttention
from ..attention.product_key import ProductKeyMemory
from ..attention.sliding_window import SlidingWindowAttention
from ..attention.sparse_patterns import (
    SparseTransformerAttention,
    pattern_weights_to_dense,
    sparse_pattern_index,
)
from ..attention.validation import check_int, check_probability, check_rank, check_size
from .feed_forward import FeedForward


@dataclass
class LayerCache:
    """Decoding caches of one :class:`DecoderLayer`: its self- and cross-attention keys and
    values (``(batch, heads, n, dim_head)`` each, see
    :class:`~attnzoo.attention.multi_head.KVCache`; an LSH self-attention's is an
    :class:`~attnzoo.attention.lsh.LSHCache`, which also keeps the buckets: build it with
    :meth:`DecoderLayer.new_cache`). Batch-first, so beam search can reorder it."""

    self_attention: KVCache = field(default_factory=KVCache)
    cross_attention: KVCache = field(default_factory=KVCache)


class _Block(nn.Module):
    """What encoder and decoder layers share: the residual wrapper and the FFN/memory."""

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int | None,
        activation: str,
        dropout: float,
        attention_dropout: float | None,
        norm_first: bool,
        layer_norm_eps: float,
        bias: bool,
        memory: Mapping[str, Any] | None,
        activation_dropout: float | None = None,
        attention_output_dropout: float | None = None,
    ) -> None:
        super().__init__()
        check_int(dim, "dim")
        check_int(heads, "heads")
        check_probability(dropout, "dropout")
        if attention_dropout is not None:
            check_probability(attention_dropout, "attention_dropout")
        if not isinstance(norm_first, bool):
            raise TypeError(f"`norm_first` must be a bool, got {type(norm_first).__name__}")
        self.dim, self.norm_first = dim, norm_first
        self.attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.layer_norm_eps, self.bias = layer_norm_eps, bias
        self.ffn: FeedForward | ProductKeyMemory
        if memory is None:
            hidden_dropout = dropout if activation_dropout is None else activation_dropout
            self.ffn = FeedForward(dim, ffn_dim, activation, hidden_dropout, bias)
        else:
            if not isinstance(memory, Mapping):
                raise TypeError(
                    "`memory` must be a dict of ProductKeyMemory options (or None), "
                    f"got {type(memory).__name__}"
                )
            self.ffn = ProductKeyMemory(dim, **memory)
        self.ffn_norm = self._norm()
        self.dropout = nn.Dropout(dropout)
        if attention_output_dropout is not None:
            check_probability(attention_output_dropout, "attention_output_dropout")
        self.attention_output_dropout = nn.Dropout(
            dropout if attention_output_dropout is None else attention_output_dropout
        )

    def _norm(self) -> nn.LayerNorm:
        return nn.LayerNorm(self.dim, eps=self.layer_norm_eps, bias=self.bias)

    def _pre(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        """The input of a sub-layer: normalised first in pre-LN."""
        return norm(x) if self.norm_first else x

    def _post(
        self, x: Tensor, out: Tensor, norm: nn.LayerNorm, dropout: nn.Dropout | None = None
    ) -> Tensor:
        """Add a sub-layer's output to the residual stream (after ``dropout``, default the
        residual dropout); normalise the sum in post-LN."""
        x = x + (self.dropout if dropout is None else dropout)(out)
        return x if self.norm_first else norm(x)

    def _feed_forward(self, x: Tensor, padding: Tensor | None) -> Tensor:
        """The feed-forward (or memory) sub-layer as a residual branch."""
        h = self._pre(x, self.ffn_norm)
        # A memory reads real tokens only (padding stays out of its batch norm).
        out = self.ffn(h, mask=padding) if isinstance(self.ffn, ProductKeyMemory) else self.ffn(h)
        return self._post(x, out, self.ffn_norm)  # type: ignore[arg-type]

    @property
    def has_memory(self) -> bool:
        """Whether the feed-forward sub-layer is a product-key memory."""
        return isinstance(self.ffn, ProductKeyMemory)


class EncoderLayer(_Block):
    """Self-attention and feed-forward sub-layers with residuals and LayerNorm.

    Args:
        dim: model width.
        heads: attention heads.
        ffn_dim: feed-forward hidden width; default ``4 * dim``.
        activation: feed-forward activation (see :class:`FeedForward`); ``"relu"`` as in
            Vaswani et al. 2017 and PyTorch.
        dropout: residual and feed-forward dropout, in [0, 1).
        activation_dropout: dropout on the feed-forward hidden activations; default
            ``dropout`` (as PyTorch's layers); 0 for BERT, GPT-2 and kin, which have none.
        attention_output_dropout: dropout on the attention sub-layer's output before its
            residual sum; default ``dropout`` (0 for DistilBERT, which has none there).
        attention_dropout: dropout on the attention weights; default ``dropout`` (as
            PyTorch's layers).
        norm_first: pre-LN (True) or post-LN (False).
        layer_norm_eps: LayerNorm epsilon.
        bias: biases in the linear maps and LayerNorms.
        normalizer: attention normaliser (registry name), see the module docstring.
        alpha: fixed entmax alpha, or the initial learned one with ``learn_alpha``.
        learn_alpha: one learned entmax alpha per head (``normalizer="entmax"``).
        window: ``(before, after)``: banded attention, query ``i`` sees keys
            ``i - before .. i + after``; None = dense.
        memory: keyword arguments of :class:`ProductKeyMemory` (besides ``dim``) to use a
            memory instead of the feed-forward network; None = feed-forward.
        position: ``"rotary"`` or ``"alibi"`` inside the (dense) self-attention, see
            :class:`~attnzoo.attention.multi_head.MultiHeadAttention`; None = none.
        sparse_pattern: keyword arguments of
            :class:`~attnzoo.attention.sparse_patterns.SparseTransformerAttention`
            (``pattern``, ``stride``, ``summary``, ``part``) for bidirectional
            sparse-pattern self-attention; None = not used.
        lsh: keyword arguments of :class:`~attnzoo.attention.lsh.LSHAttention`
            (``n_buckets``, ``n_hashes``, ``chunk_length``, ``attend_across_buckets``,
            ``seed``) for bidirectional LSH self-attention; None = not used.
        adaptive_span: keyword arguments of
            :class:`~attnzoo.attention.adaptive_span.AdaptiveSpanAttention` (``max_span``,
            ``ramp``, ``init_span``) for self-attention with a learned symmetric span per
            head; None = not used.

    At most one of ``window``, ``sparse_pattern``, ``lsh``, ``adaptive_span`` is given.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        attention_dropout: float | None = None,
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        normalizer: str = "softmax",
        alpha: float | None = None,
        learn_alpha: bool = False,
        window: tuple[int, int] | None = None,
        memory: Mapping[str, Any] | None = None,
        activation_dropout: float | None = None,
        attention_output_dropout: float | None = None,
        position: str | None = None,
        sparse_pattern: Mapping[str, Any] | None = None,
        lsh: Mapping[str, Any] | None = None,
        adaptive_span: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            dim,
            heads,
            ffn_dim,
            activation,
            dropout,
            attention_dropout,
            norm_first,
            layer_norm_eps,
            bias,
            memory,
            activation_dropout,
            attention_output_dropout,
        )
        self.attention = build_self_attention(
            dim,
            heads,
            causal=False,
            normalizer=normalizer,
            alpha=alpha,
            learn_alpha=learn_alpha,
            dropout=self.attention_dropout,
            bias=bias,
            position=position,
            window=window,
            sparse_pattern=sparse_pattern,
            lsh=lsh,
            adaptive_span=adaptive_span,
        )
        self.attention_norm = self._norm()

    @property
    def window(self) -> tuple[int, int] | None:
        """``(before, after)`` of a sliding-window layer, None for dense attention."""
        if isinstance(self.attention, SlidingWindowAttention):
            return self.attention.before, self.attention.after
        return None

    def forward(
        self, x: Tensor, mask: Tensor | None = None, output_attentions: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Encode ``x``.

        Args:
            x: ``(batch, n, dim)``.
            mask: key-padding mask ``(batch, n)``, True = real token; dense and
                adaptive-span layers also take a rank-4 boolean mask broadcastable to
                ``(batch, heads, n, n)`` (a memory sub-layer then reads every position, as
                it cannot tell padding apart).
            output_attentions: also return the attention weights (not available for an
                LSH layer, which forms no weight matrix).

        Returns:
            ``(batch, n, dim)``, or ``(out, weights)`` with weights ``(batch, heads, n, n)``
            (dense, sparse-pattern, adaptive-span) or the band
            ``(batch, heads, n, before + after + 1)`` of a sliding-window layer (layout of
            :func:`~attnzoo.attention.sliding_window.sliding_window_attention`).
        """
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        padding = mask if mask is not None and mask.dim() == 2 else None
        h = self._pre(x, self.attention_norm)
        out, weights = call_self_attention(self.attention, h, mask, None, output_attentions)
        x = self._post(x, out, self.attention_norm, self.attention_output_dropout)
        x = self._feed_forward(x, padding)
        if weights is None:
            return x
        return x, weights


class DecoderLayer(_Block):
    """Causal self-attention, cross-attention and feed-forward sub-layers.

    Args:
        dim, heads, ffn_dim, activation, dropout, attention_dropout, norm_first,
        layer_norm_eps, bias, normalizer, alpha, learn_alpha, memory: as for
            :class:`EncoderLayer` (the normaliser applies to both attentions).
        context_dim: width of the encoder output; default ``dim``.
        cross_attention: include the cross-attention sub-layer (False gives a decoder-only
            layer, GPT-style, that takes no ``context``).
        position: ``"rotary"`` or ``"alibi"`` inside the self-attention (the
            cross-attention has no relative positions); None = none.
        sparse_pattern, lsh, adaptive_span: as for :class:`EncoderLayer`, at most one, for
            the self-attention, which is then causal (the paper's patterns; causal LSH;
            the paper's adaptive span). The cross-attention stays dense.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        attention_dropout: float | None = None,
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        bias: bool = True,
        normalizer: str = "softmax",
        alpha: float | None = None,
        learn_alpha: bool = False,
        memory: Mapping[str, Any] | None = None,
        context_dim: int | None = None,
        cross_attention: bool = True,
        activation_dropout: float | None = None,
        attention_output_dropout: float | None = None,
        position: str | None = None,
        sparse_pattern: Mapping[str, Any] | None = None,
        lsh: Mapping[str, Any] | None = None,
        adaptive_span: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            dim,
            heads,
            ffn_dim,
            activation,
            dropout,
            attention_dropout,
            norm_first,
            layer_norm_eps,
            bias,
            memory,
            activation_dropout,
            attention_output_dropout,
        )
        options: dict[str, Any] = {
            "normalizer": normalizer,
            "learn_alpha": learn_alpha,
            "dropout": self.attention_dropout,
            "bias": bias,
            "alpha": alpha,
        }
        self.self_attention = build_self_attention(
            dim,
            heads,
            causal=True,
            position=position,
            sparse_pattern=sparse_pattern,
            lsh=lsh,
            adaptive_span=adaptive_span,
            **options,
        )
        self.self_attention_norm = self._norm()
        self.cross_attention: MultiHeadAttention | None = None
        self.cross_attention_norm: nn.LayerNorm | None = None
        if cross_attention:
            self.cross_attention = MultiHeadAttention(dim, heads, kv_dim=context_dim, **options)
            self.cross_attention_norm = self._norm()

    def new_cache(self) -> LayerCache:
        """An empty :class:`LayerCache` for this layer (an
        :class:`~attnzoo.attention.lsh.LSHCache` for LSH self-attention)."""
        attention = self.self_attention
        if isinstance(attention, LSHAttention):
            return LayerCache(self_attention=attention.new_cache())
        return LayerCache()

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: LayerCache | None = None,
        output_attentions: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor | None]:
        """Decode ``x`` attending to its own past and to ``context``.

        Args:
            x: ``(batch, n, dim)``: the target positions (with a cache, the new ones only).
            context: encoder output ``(batch, n_c, context_dim)``; required with
                cross-attention (with a filled cache only its batch size is used).
            mask: self-attention key-padding mask ``(batch, n_k)``, True = real token, over
                all ``n_k = n_cached + n`` positions; or a rank-4 mask broadcastable to
                ``(batch, heads, n, n_k)`` (dense and adaptive-span self-attention only).
                The causal mask is always applied on top.
            context_mask: key-padding mask of ``context`` ``(batch, n_c)``.
            cache: a :class:`LayerCache` (from :meth:`new_cache`), updated in place: the
                new positions' keys and values are appended, the context's are computed
                once. An LSH layer needs a ``seed``
                (:func:`~attnzoo.attention.lsh.lsh_cached_attention` gives the key set of
                its cached steps).
            output_attentions: also return the weights (not available with LSH).

        Returns:
            ``(batch, n, dim)``, or ``(out, self_weights, cross_weights)`` with
            ``self_weights`` ``(batch, heads, n, n_k)`` and ``cross_weights``
            ``(batch, heads, n, n_c)`` (None without cross-attention).
        """
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        if self.cross_attention is None and context is not None:
            raise ValueError("`context` given, but the layer has no cross-attention")
        if self.cross_attention is not None and context is None:
            raise ValueError(
                "`context` (batch, n_c, context_dim) is required: the layer has cross-attention"
            )
        n = x.shape[1]
        padding = mask[:, -n:] if mask is not None and mask.dim() == 2 else None
        h = self._pre(x, self.self_attention_norm)
        out, self_weights = call_self_attention(
            self.self_attention,
            h,
            mask,
            cache.self_attention if cache is not None else None,
            output_attentions,
        )
        x = self._post(x, out, self.self_attention_norm, self.attention_output_dropout)
        cross_weights = None
        if self.cross_attention is not None and self.cross_attention_norm is not None:
            h = self._pre(x, self.cross_attention_norm)
            out, cross_weights = _split(
                self.cross_attention(
                    h,
                    context=context,
                    mask=context_mask,
                    cache=cache.cross_attention if cache is not None else None,
                    return_weights=output_attentions,
                )
            )
            x = self._post(x, out, self.cross_attention_norm, self.attention_output_dropout)
        x = self._feed_forward(x, padding)
        if self_weights is None:
            return x
        return x, self_weights, cross_weights


def _split(result: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """An attention module's ``out`` or ``(out, weights)`` as ``(out, weights or None)``."""
    return result if isinstance(result, tuple) else (result, None)


SELF_ATTENTION_OPTIONS = ("window", "sparse_pattern", "lsh", "adaptive_span")
"""The layer arguments that replace dense self-attention (at most one per layer)."""

# Arguments every option module gets from the layer itself, so an options dict may not
# set them.
_LAYER_SET = frozenset(
    {"dim", "heads", "causal", "normalizer", "alpha", "learn_alpha", "dropout", "bias"}
)


def build_self_attention(
    dim: int,
    heads: int,
    *,
    causal: bool,
    normalizer: str,
    alpha: float | None,
    learn_alpha: bool,
    dropout: float,
    bias: bool,
    position: str | None = None,
    window: tuple[int, int] | None = None,
    sparse_pattern: Mapping[str, Any] | None = None,
    lsh: Mapping[str, Any] | None = None,
    adaptive_span: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The self-attention module of a layer: dense, or the one option given.

    Args:
        dim, heads, normalizer, alpha, learn_alpha, dropout, bias, position: as for
            :class:`EncoderLayer` (``dropout`` is the attention-weight dropout).
        causal: decoder self-attention (``window`` is then refused).
        window, sparse_pattern, lsh, adaptive_span: at most one; the dicts hold the
            module's own keyword arguments (see the module docstring).

    Returns:
        a module mapping ``(batch, n, dim)`` to ``(batch, n, dim)``; call it through
        :func:`call_self_attention`.

    Raises:
        ValueError: two options, or an option with an argument its module cannot do
            (``position``; ``learn_alpha`` except with ``adaptive_span``; a normaliser
            other than softmax with ``lsh``; ``window`` when causal).
    """
    given = {
        "window": window,
        "sparse_pattern": sparse_pattern,
        "lsh": lsh,
        "adaptive_span": adaptive_span,
    }
    name = check_self_attention_choice(
        normalizer=normalizer, alpha=alpha, learn_alpha=learn_alpha, position=position, **given
    )
    if name is None:
        return MultiHeadAttention(
            dim,
            heads,
            normalizer=normalizer,
            learn_alpha=learn_alpha,
            causal=causal,
            dropout=dropout,
            bias=bias,
            alpha=alpha,
            position=position,
        )
    if name == "window":
        if causal:
            raise ValueError("`window` is available in encoder (non-causal) layers only")
        before, after = check_window(window)
        return SlidingWindowAttention(
            dim,
            heads,
            before,
            after,
            normalizer=normalizer,
            dropout=dropout,
            bias=bias,
            alpha=alpha,
        )
    options = _module_options(given[name], name)
    if name == "sparse_pattern":
        return SparseTransformerAttention(
            dim,
            heads,
            causal=causal,
            normalizer=normalizer,
            dropout=dropout,
            bias=bias,
            alpha=alpha,
            **options,
        )
    if name == "lsh":
        return LSHAttention(dim, heads, causal=causal, dropout=dropout, bias=bias, **options)
    return AdaptiveSpanAttention(
        dim,
        heads,
        causal=causal,
        normalizer=normalizer,
        learn_alpha=learn_alpha,
        dropout=dropout,
        bias=bias,
        alpha=alpha,
        **options,
    )


def check_self_attention_choice(
    *,
    normalizer: str,
    alpha: float | None,
    learn_alpha: bool,
    position: str | None,
    **options: object,
) -> str | None:
    """Which of :data:`SELF_ATTENTION_OPTIONS` is given (None = dense), after checking
    that at most one is and that the layer's other arguments suit it.

    Args:
        normalizer, alpha, learn_alpha, position: the layer's.
        **options: ``window``, ``sparse_pattern``, ``lsh``, ``adaptive_span`` (None = not
            given).

    Raises:
        ValueError: two options given; ``position`` with any of them; ``learn_alpha``
            except with ``adaptive_span``; ``lsh`` with a normaliser other than softmax or
            with an ``alpha``.
    """
    unknown = sorted(set(options) - set(SELF_ATTENTION_OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown self-attention options {unknown}; known: {SELF_ATTENTION_OPTIONS}"
        )
    chosen = [name for name in SELF_ATTENTION_OPTIONS if options.get(name) is not None]
    if len(chosen) > 1:
        raise ValueError(
            f"at most one of {SELF_ATTENTION_OPTIONS} may be given per layer, got {chosen}"
        )
    if not chosen:
        return None
    name = chosen[0]
    if position is not None:
        raise ValueError(
            f"`position={position!r}` is not available with `{name}` (only dense attention "
            "takes rotary or ALiBi positions)"
        )
    if learn_alpha and name != "adaptive_span":
        raise ValueError(
            f"`learn_alpha=True` is not available with `{name}` (it takes a fixed alpha)"
        )
    if name == "lsh" and (normalizer != "softmax" or alpha is not None):
        raise ValueError(
            "`lsh` needs normalizer='softmax' and no `alpha` (LSH attention combines its "
            f"hash rounds by log-sum-exp), got normalizer={normalizer!r}, alpha={alpha!r}"
        )
    return name


def _module_options(options: object, name: str) -> dict[str, Any]:
    """``options`` as a dict of keyword arguments, refusing those the layer sets itself."""
    if not isinstance(options, Mapping):
        raise TypeError(
            f"`{name}` must be a dict of keyword arguments (or None), got {type(options).__name__}"
        )
    clash = sorted(set(options) & _LAYER_SET)
    if clash:
        raise ValueError(
            f"`{name}` may not set {clash}: the layer sets them (e.g. `causal` from the "
            "encoder/decoder, `normalizer` and `dropout` from the layer's own arguments)"
        )
    return dict(options)


def call_self_attention(
    attention: nn.Module,
    x: Tensor,
    mask: Tensor | None,
    cache: KVCache | None,
    return_weights: bool,
) -> tuple[Tensor, Tensor | None]:
    """Run a module from :func:`build_self_attention` on ``x`` ``(batch, n, dim)``.

    Args:
        attention: the module.
        x: ``(batch, n, dim)``.
        mask: key-padding ``(batch, n_k)``; dense and adaptive-span attention also take a
            rank-4 mask broadcastable to ``(batch, heads, n, n_k)``.
        cache: a :class:`KVCache` to decode with (dense, adaptive-span and causal
            sparse-pattern attention), or an :class:`~attnzoo.attention.lsh.LSHCache`
            (causal LSH attention with a ``seed``); see :func:`check_decoding_cache`.
        return_weights: also return the weights.

    Returns:
        ``(out, weights)``: ``out`` ``(batch, n, dim)``; ``weights`` None unless asked for,
        else ``(batch, heads, n, n_k)`` (a sliding window gives its band; a sparse pattern
        its weights expanded to ``(batch, heads, n, n_k)``).

    Raises:
        ValueError: a cache, a rank-4 mask or (LSH) weights asked of a module that has
            none of them.
    """
    if isinstance(attention, MultiHeadAttention):  # dense and adaptive span
        return _split(attention(x, mask=mask, cache=cache, return_weights=return_weights))
    kind = _KIND_NAMES.get(type(attention), type(attention).__name__)
    if cache is not None:
        check_decoding_cache(attention, cache)
    if mask is not None and mask.dim() != 2:
        raise ValueError(
            f"`mask` of a {kind} layer must be a key-padding mask (batch, n), "
            f"got shape {tuple(mask.shape)}"
        )
    if isinstance(attention, LSHAttention):
        if return_weights:
            raise ValueError(
                "attention weights were asked for (output_attentions=True), but LSH "
                "attention forms no weight matrix"
            )
        return attention(x, mask=mask, cache=cache), None
    if isinstance(attention, SparseTransformerAttention):
        n_keys = x.shape[1] + (len(cache) if cache is not None else 0)
        out, weights = _split(attention(x, mask=mask, return_weights=return_weights, cache=cache))
        if weights is not None:
            weights = _dense_pattern_weights(attention, weights, n_keys)
        return out, weights
    return _split(attention(x, mask=mask, return_weights=return_weights))


def check_decoding_cache(attention: nn.Module, cache: object, where: str | None = None) -> None:
    """Raise unless ``attention`` (from :func:`build_self_attention`) can decode step by
    step with ``cache``; checked before anything is appended, so a stack can check all its
    layers before the first one runs.

    Dense, adaptive-span and sparse-pattern attention check their
    :class:`~attnzoo.attention.multi_head.KVCache` themselves; LSH attention needs
    ``causal=True``, a ``seed`` and an :class:`~attnzoo.attention.lsh.LSHCache`
    (:meth:`~attnzoo.attention.lsh.LSHAttention.check_cache`); sliding-window attention
    keeps no cache.

    Args:
        attention: the self-attention module.
        cache: the cache meant for it.
        where: prefix of the error message naming the layer, e.g. ``"layer 2"``.
    """
    try:
        if isinstance(attention, LSHAttention):
            attention.check_cache(cache)
        elif not isinstance(attention, (MultiHeadAttention, SparseTransformerAttention)):
            kind = _KIND_NAMES.get(type(attention), type(attention).__name__)
            raise ValueError(
                f"`cache` given, but {kind} self-attention cannot decode step by step (it "
                "keeps no key/value cache); run the whole sequence without a cache"
            )
    except (TypeError, ValueError) as error:
        if where is None:
            raise
        raise type(error)(f"{where}: {error}") from None


_KIND_NAMES: dict[type, str] = {
    SlidingWindowAttention: "sliding-window",
    SparseTransformerAttention: "sparse-pattern",
    LSHAttention: "LSH",
}


def _dense_pattern_weights(
    attention: SparseTransformerAttention, weights: Tensor, n_keys: int
) -> Tensor:
    """Compact sparse-pattern weights ``(batch, heads, n, k_max)`` of the last ``n`` of
    ``n_keys`` positions -> ``(batch, heads, n, n_keys)``."""
    index, valid = sparse_pattern_index(
        n_keys,
        attention.pattern,
        attention.stride,
        summary=attention.summary,
        causal=attention.causal,
        part=attention.part,
        heads=attention.heads if attention.part == "split" else None,
        start=n_keys - weights.shape[-2],
        device=weights.device,
    )
    return pattern_weights_to_dense(weights, index, valid, n_keys=n_keys)


def check_window(window: object) -> tuple[int, int]:
    """Return ``window`` as ``(before, after)`` ints >= 0, else raise naming ``window``."""
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"`window` must be a pair (before, after) of ints >= 0, got {window!r}")
    before, after = window
    for value in (before, after):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"`window` must be a pair (before, after) of ints >= 0, got {window!r}"
            )
    return before, after


__all__ = [
    "SELF_ATTENTION_OPTIONS",
    "DecoderLayer",
    "EncoderLayer",
    "LayerCache",
    "build_self_attention",
    "call_self_attention",
    "check_decoding_cache",
    "check_self_attention_choice",
    "check_window",
]
