"""Encoder and decoder stacks built from a config, with per-layer overrides.

A :class:`StackConfig` gives the shared shape of the stack (width, heads, depth,
feed-forward, dropout, pre-/post-LN) and a :class:`LayerConfig` for what may vary by layer:

* the attention normaliser (softmax, sparsemax, entmax15, entmax with a fixed or learned
  per-head alpha);
* the self-attention module, dense unless one of: ``window`` (sliding window, encoder
  only), ``sparse_pattern`` (:class:`SparsePatternConfig`: the strided or fixed patterns
  of the Sparse Transformer), ``lsh`` (:class:`LSHConfig`: the Reformer's LSH attention)
  or ``adaptive_span`` (:class:`AdaptiveSpanConfig`: a learned span per head). Decoder
  layers use them causally, encoder layers bidirectionally; a decoder cache works with
  every layer (an LSH layer needs a ``seed``; its cached steps see every earlier key of
  the query's bucket, not the chunk window of the full pass). The span penalty of every
  adaptive-span layer of a stack is
  :func:`~attnzoo.attention.adaptive_span.span_penalty` ``(stack)``, to add to the loss;
* ``position``: rotary or ALiBi positions in dense self-attention;
* ``memory``: a product-key memory (:class:`MemoryConfig`) in place of the feed-forward
  network.

``layer`` applies to every layer and ``overrides`` replaces it at chosen indices, e.g. a
memory at layer 2 and banded attention below it::

    StackConfig(
        dim=256, heads=4, depth=4,
        layer=LayerConfig(window=(16, 16)),
        overrides={2: LayerConfig(memory=MemoryConfig(n_keys=64))},
    )

(an override replaces the whole :class:`LayerConfig` of its layer, so layer 2 above is
dense), or a dense layer 0, a sparse-pattern layer 1 and an LSH layer 2::

    StackConfig(
        dim=256, heads=4, depth=3,
        overrides={
            1: LayerConfig(sparse_pattern=SparsePatternConfig("fixed", stride=16)),
            2: LayerConfig(lsh=LSHConfig(n_buckets=8, chunk_length=32)),
        },
    )

:class:`TransformerEncoder` and :class:`TransformerDecoder` apply the layers in order,
then, for pre-LN stacks, one final LayerNorm (``norm``), and return a
:class:`StackOutput`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeGuard, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..attention.entmax import MIN_ALPHA, EntmaxAlpha
from ..attention.normalizers import available_normalizers
from ..attention.positional import check_position
from ..attention.product_key import QUERY_NORMS
from ..attention.sparse_patterns import PARTS, PATTERNS
from ..attention.validation import check_int, check_probability, check_rank, check_size
from .feed_forward import ACTIVATIONS
from .layers import (
    DecoderLayer,
    EncoderLayer,
    LayerCache,
    check_decoding_cache,
    check_self_attention_choice,
    check_window,
)


@dataclass
class MemoryConfig:
    """Product-key memory options (:class:`~attnzoo.attention.product_key.ProductKeyMemory`).

    Attributes:
        n_keys: sub-keys per half; the memory has ``n_keys ** 2`` slots.
        heads: memory read heads.
        k_dim: query/key width per head (even).
        topk: slots read per head (``<= n_keys``).
        query_norm: ``"batchnorm"`` (the paper's), ``"layernorm"`` or None.
        input_dropout, query_dropout, value_dropout: the memory's dropout rates.
    """

    n_keys: int = 128
    heads: int = 4
    k_dim: int = 128
    topk: int = 32
    query_norm: str | None = "batchnorm"
    input_dropout: float = 0.0
    query_dropout: float = 0.0
    value_dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_keys", "heads", "k_dim", "topk"):
            check_int(getattr(self, name), name)
        if self.k_dim % 2:
            raise ValueError(f"`k_dim` must be even, got {self.k_dim}")
        if self.topk > self.n_keys:
            raise ValueError(f"`topk` must be <= n_keys = {self.n_keys}, got {self.topk}")
        if self.query_norm not in QUERY_NORMS:
            raise ValueError(f"`query_norm` must be one of {QUERY_NORMS}, got {self.query_norm!r}")
        for name in ("input_dropout", "query_dropout", "value_dropout"):
            check_probability(getattr(self, name), name)


@dataclass
class SparsePatternConfig:
    """Sparse Transformer attention options
    (:class:`~attnzoo.attention.sparse_patterns.SparseTransformerAttention`).

    Attributes:
        pattern: ``"strided"`` or ``"fixed"`` (Child et al. 2019).
        stride: ``l``, the local width / block length (the paper takes ``l ~ sqrt(n)``).
        summary: ``c``, summary columns per block of the fixed pattern, in ``[1, stride]``.
        part: ``"union"`` (merged head), ``"local"``, ``"global"`` or ``"split"`` (first
            half of the heads local, second half global; needs an even number of heads).
    """

    pattern: str = "strided"
    stride: int = 16
    summary: int = 1
    part: str = "union"

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"`pattern` must be one of {PATTERNS}, got {self.pattern!r}")
        check_int(self.stride, "stride")
        check_int(self.summary, "summary")
        if self.pattern == "fixed" and self.summary > self.stride:
            raise ValueError(f"`summary` must be <= stride = {self.stride}, got {self.summary}")
        if self.part not in PARTS:
            raise ValueError(f"`part` must be one of {PARTS}, got {self.part!r}")


@dataclass
class LSHConfig:
    """LSH attention options (:class:`~attnzoo.attention.lsh.LSHAttention`; softmax only).

    Attributes:
        n_buckets: buckets per hash round, an even int >= 2 (about ``n / chunk_length``).
        n_hashes: hash rounds.
        chunk_length: positions per chunk (each chunk also sees the one before it).
        attend_across_buckets: let a query see keys of other buckets in its chunk window.
        seed: fixed hashing drawn once from this seed; None draws new rotations at every
            call (the Reformer's way). Decoding with a cache needs a seed.
    """

    n_buckets: int = 8
    n_hashes: int = 1
    chunk_length: int = 64
    attend_across_buckets: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        check_int(self.n_buckets, "n_buckets", minimum=2)
        if self.n_buckets % 2:
            raise ValueError(f"`n_buckets` must be an even int >= 2, got {self.n_buckets}")
        check_int(self.n_hashes, "n_hashes")
        check_int(self.chunk_length, "chunk_length")
        if not isinstance(self.attend_across_buckets, bool):
            raise TypeError(
                "`attend_across_buckets` must be a bool, "
                f"got {type(self.attend_across_buckets).__name__}"
            )
        if self.seed is not None:
            check_int(self.seed, "seed", minimum=0)


@dataclass
class AdaptiveSpanConfig:
    """Adaptive attention span options
    (:class:`~attnzoo.attention.adaptive_span.AdaptiveSpanAttention`).

    Attributes:
        max_span: ``S``, the longest span a head may learn.
        ramp: ``R``, width of the soft mask's ramp from 1 to 0 (the paper's is 32).
        init_span: initial span of every head, in ``(0, max_span)``; default
            ``max_span / 2``.
    """

    max_span: int
    ramp: int = 32
    init_span: float | None = None

    def __post_init__(self) -> None:
        check_int(self.max_span, "max_span")
        check_int(self.ramp, "ramp")
        if self.init_span is not None:
            if isinstance(self.init_span, bool) or not isinstance(self.init_span, (int, float)):
                raise TypeError(
                    f"`init_span` must be a number or None, got {type(self.init_span).__name__}"
                )
            if not 0 < self.init_span < self.max_span:
                raise ValueError(
                    f"`init_span` must be in (0, max_span={self.max_span}), got {self.init_span}"
                )


_ATTENTION_CONFIGS: dict[str, type] = {
    "sparse_pattern": SparsePatternConfig,
    "lsh": LSHConfig,
    "adaptive_span": AdaptiveSpanConfig,
}


@dataclass
class LayerConfig:
    """What may differ between the layers of a stack.

    Attributes:
        normalizer: attention normaliser (registry name): ``"softmax"``, ``"sparsemax"``,
            ``"entmax15"``, ``"entmax"``, ...
        alpha: for ``"entmax"``: the fixed alpha (> 1), or the initial learned alpha (in
            ``(1.01, 2)``) with ``learn_alpha``; default 1.5.
        learn_alpha: one learned alpha per head (Correia et al. 2019); needs ``"entmax"``.
        window: ``(before, after)`` for sliding-window self-attention (encoder layers only);
            None = dense attention.
        memory: a :class:`MemoryConfig` to replace the feed-forward network by a product-key
            memory; None = feed-forward.
        position: ``"rotary"`` (Su et al. 2021) or ``"alibi"`` (Press et al. 2022) inside
            the self-attention, for every normaliser (dense attention only); None = none.
        sparse_pattern: a :class:`SparsePatternConfig` for Sparse Transformer
            self-attention (Child et al. 2019), any normaliser with a fixed alpha.
        lsh: an :class:`LSHConfig` for the Reformer's LSH self-attention (Kitaev et al.
            2020); softmax only.
        adaptive_span: an :class:`AdaptiveSpanConfig` for self-attention with a learned
            span per head (Sukhbaatar et al. 2019); any normaliser, ``learn_alpha`` too.

    At most one of ``window``, ``sparse_pattern``, ``lsh``, ``adaptive_span``; none of
    them takes ``position``. Decoder layers use them causally (a decoding cache works with
    all of them; ``lsh`` needs a ``seed``), encoder layers bidirectionally.
    """

    normalizer: str = "softmax"
    alpha: float | None = None
    learn_alpha: bool = False
    window: tuple[int, int] | None = None
    memory: MemoryConfig | None = None
    position: str | None = None
    sparse_pattern: SparsePatternConfig | None = None
    lsh: LSHConfig | None = None
    adaptive_span: AdaptiveSpanConfig | None = None

    def __post_init__(self) -> None:
        check_position(self.position)
        if self.normalizer not in available_normalizers():
            raise ValueError(
                f"`normalizer` must be one of {available_normalizers()}, got {self.normalizer!r}"
            )
        if self.alpha is not None:
            if self.normalizer != "entmax":
                raise ValueError(
                    f"`alpha` only applies to normalizer='entmax', got {self.normalizer!r}"
                )
            low = MIN_ALPHA if self.learn_alpha else 1.0
            high = 2.0 if self.learn_alpha else float("inf")
            if not low < self.alpha < high:
                raise ValueError(f"`alpha` must be in ({low}, {high}), got {self.alpha}")
        if self.learn_alpha and self.normalizer != "entmax":
            raise ValueError(
                f"`learn_alpha=True` needs normalizer='entmax', got {self.normalizer!r}"
            )
        if self.window is not None:
            self.window = check_window(self.window)
        for name, kind in _ATTENTION_CONFIGS.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise TypeError(
                    f"`{name}` must be a {kind.__name__} or None, got {type(value).__name__}"
                )
        check_self_attention_choice(
            normalizer=self.normalizer,
            alpha=self.alpha,
            learn_alpha=self.learn_alpha,
            position=self.position,
            window=self.window,
            sparse_pattern=self.sparse_pattern,
            lsh=self.lsh,
            adaptive_span=self.adaptive_span,
        )
        if self.memory is not None and not isinstance(self.memory, MemoryConfig):
            raise TypeError(
                f"`memory` must be a MemoryConfig or None, got {type(self.memory).__name__}"
            )

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`EncoderLayer`/:class:`DecoderLayer`."""
        kwargs: dict[str, Any] = {
            "normalizer": self.normalizer,
            "alpha": self.alpha,
            "learn_alpha": self.learn_alpha,
            "memory": asdict(self.memory) if self.memory is not None else None,
        }
        if self.window is not None:
            kwargs["window"] = self.window
        if self.position is not None:
            kwargs["position"] = self.position
        for name in _ATTENTION_CONFIGS:
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = asdict(value)
        return kwargs


@dataclass
class StackConfig:
    """Shape of an encoder or decoder stack.

    Attributes:
        dim: model width.
        heads: attention heads (``dim`` divisible by it).
        depth: number of layers.
        ffn_dim: feed-forward hidden width; default ``4 * dim``.
        activation: ``"relu"``, ``"gelu"``, ``"gelu_tanh"`` or ``"geglu"``.
        dropout: residual and feed-forward dropout.
        attention_dropout: attention-weight dropout; default ``dropout``.
        activation_dropout: dropout on the feed-forward hidden activations; default
            ``dropout`` (as PyTorch's layers; the Hugging Face families use 0).
        attention_output_dropout: dropout on each attention sub-layer's output before its
            residual sum; default ``dropout`` (DistilBERT uses 0).
        norm_first: pre-LN (True; the stack ends with a LayerNorm) or post-LN (False).
        layer_norm_eps: LayerNorm epsilon.
        bias: biases in linear maps and LayerNorms.
        layer: the :class:`LayerConfig` of every layer without an override.
        overrides: ``{index: LayerConfig}`` for layers that differ (0-based).
    """

    dim: int = 512
    heads: int = 8
    depth: int = 6
    ffn_dim: int | None = None
    activation: str = "relu"
    dropout: float = 0.1
    attention_dropout: float | None = None
    activation_dropout: float | None = None
    attention_output_dropout: float | None = None
    norm_first: bool = False
    layer_norm_eps: float = 1e-5
    bias: bool = True
    layer: LayerConfig = field(default_factory=LayerConfig)
    overrides: dict[int, LayerConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int(self.dim, "dim")
        check_int(self.heads, "heads")
        check_int(self.depth, "depth")
        if self.dim % self.heads:
            raise ValueError(f"`dim` ({self.dim}) must be divisible by `heads` ({self.heads})")
        if self.ffn_dim is not None:
            check_int(self.ffn_dim, "ffn_dim")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {self.activation!r}")
        check_probability(self.dropout, "dropout")
        if self.attention_dropout is not None:
            check_probability(self.attention_dropout, "attention_dropout")
        if self.activation_dropout is not None:
            check_probability(self.activation_dropout, "activation_dropout")
        if self.attention_output_dropout is not None:
            check_probability(self.attention_output_dropout, "attention_output_dropout")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0, got {self.layer_norm_eps}")
        if not isinstance(self.layer, LayerConfig):
            raise TypeError(f"`layer` must be a LayerConfig, got {type(self.layer).__name__}")
        for index, config in self.overrides.items():
            if isinstance(index, bool) or not isinstance(index, int):
                raise TypeError(f"`overrides` keys must be int layer indices, got {index!r}")
            if not 0 <= index < self.depth:
                raise ValueError(
                    f"`overrides` keys must be layer indices in [0, {self.depth}), got {index}"
                )
            if not isinstance(config, LayerConfig):
                raise TypeError(
                    f"`overrides[{index}]` must be a LayerConfig, got {type(config).__name__}"
                )
        for index in range(self.depth):
            pattern = self.layer_config(index).sparse_pattern
            if pattern is not None and pattern.part == "split" and self.heads % 2:
                raise ValueError(
                    f"layer {index}: sparse_pattern part='split' needs an even number of "
                    f"`heads`, got {self.heads}"
                )

    def layer_config(self, index: int) -> LayerConfig:
        """The :class:`LayerConfig` of layer ``index``."""
        return self.overrides.get(index, self.layer)

    def layer_kwargs(self, index: int) -> dict[str, Any]:
        """Keyword arguments of layer ``index`` (shared shape + its :class:`LayerConfig`)."""
        return {
            "dim": self.dim,
            "heads": self.heads,
            "ffn_dim": self.ffn_dim,
            "activation": self.activation,
            "dropout": self.dropout,
            "attention_dropout": self.attention_dropout,
            "activation_dropout": self.activation_dropout,
            "attention_output_dropout": self.attention_output_dropout,
            "norm_first": self.norm_first,
            "layer_norm_eps": self.layer_norm_eps,
            "bias": self.bias,
            **self.layer_config(index).layer_kwargs(),
        }


@dataclass
class StackOutput:
    """What a stack returns.

    Attributes:
        last_hidden_state: ``(batch, n, dim)``, after the final LayerNorm of a pre-LN stack.
        hidden_states: with ``output_hidden_states``: the input and every layer's output,
            ``depth + 1`` tensors ``(batch, n, dim)``; the last is ``last_hidden_state``.
        attentions: with ``output_attentions``: every layer's (self-)attention weights,
            ``(batch, heads, n, n_k)`` (a sliding-window layer gives its band
            ``(batch, heads, n, before + after + 1)``; an LSH layer has no weights, so
            asking for them is a ``ValueError``).
        cross_attentions: decoder with ``output_attentions``: every layer's weights over
            the context ``(batch, heads, n, n_c)``.
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None


class _Stack(nn.Module):
    def __init__(self, config: StackConfig) -> None:
        super().__init__()
        if not isinstance(config, StackConfig):
            raise TypeError(f"`config` must be a StackConfig, got {type(config).__name__}")
        self.config = config
        eps, bias = config.layer_norm_eps, config.bias
        self.norm = nn.LayerNorm(config.dim, eps=eps, bias=bias) if config.norm_first else None
        # Set by `gradient_checkpointing_enable()` / `set_gradient_checkpointing`.
        self.gradient_checkpointing = False

    def _run_layer(self, layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return run_layer(self, layer, *args, **kwargs)

    def _check_input(self, x: Tensor) -> None:
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.config.dim, "x", "dim")

    def _finish(
        self,
        x: Tensor,
        hidden: list[Tensor] | None,
        attentions: list[Tensor] | None,
        cross: list[Tensor] | None = None,
    ) -> StackOutput:
        if self.norm is not None:
            x = self.norm(x)
        if hidden is not None:
            hidden[-1] = x
        return StackOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
            cross_attentions=tuple(cross) if cross is not None else None,
        )


class TransformerEncoder(_Stack):
    """A stack of :class:`EncoderLayer` built from a :class:`StackConfig`.

    Parameters: ``layers.{i}.*`` (see :mod:`attnzoo.transformers_zoo.layers`) and, for
    pre-LN, the final ``norm``.
    """

    def __init__(self, config: StackConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(
            EncoderLayer(**config.layer_kwargs(i)) for i in range(config.depth)
        )

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> StackOutput:
        """Encode ``x`` ``(batch, n, dim)``.

        Args:
            x: the embedded input.
            mask: key-padding mask ``(batch, n)``, True = real token (dense layers also take
                a rank-4 mask, see :class:`EncoderLayer`).
            output_attentions: collect every layer's attention weights.
            output_hidden_states: collect the input and every layer's output.
        """
        self._check_input(x)
        hidden = [x] if output_hidden_states else None
        attentions: list[Tensor] | None = [] if output_attentions else None
        for layer in self.layers:
            if attentions is not None:
                x, weights = self._run_layer(layer, x, mask=mask, output_attentions=True)
                attentions.append(weights)
            else:
                x = self._run_layer(layer, x, mask=mask)
            if hidden is not None:
                hidden.append(x)
        return self._finish(x, hidden, attentions)


class TransformerDecoder(_Stack):
    """A stack of :class:`DecoderLayer` built from a :class:`StackConfig`.

    Args:
        config: the stack's shape; a layer config with ``window`` is rejected (sliding
            windows are for encoders); ``sparse_pattern``, ``lsh`` and ``adaptive_span``
            layers attend causally. Decoding with a ``cache`` needs a ``seed`` in every LSH
            layer (fixed hashing).
        context_dim: width of the encoder output; default ``config.dim``.
        cross_attention: False gives a decoder-only stack (no ``context``).
    """

    def __init__(
        self, config: StackConfig, context_dim: int | None = None, cross_attention: bool = True
    ) -> None:
        super().__init__(config)
        for i in range(config.depth):
            if config.layer_config(i).window is not None:
                raise ValueError(
                    f"`config`: layer {i} has a `window`, but sliding-window attention is "
                    "available in encoder layers only"
                )
        self.layers = nn.ModuleList(
            DecoderLayer(
                **config.layer_kwargs(i),
                context_dim=context_dim,
                cross_attention=cross_attention,
            )
            for i in range(config.depth)
        )

    def new_cache(self) -> list[LayerCache]:
        """Empty decoding caches, one :class:`LayerCache` per layer (see
        :meth:`~attnzoo.transformers_zoo.layers.DecoderLayer.new_cache`)."""
        return [cast(DecoderLayer, layer).new_cache() for layer in self.layers]

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: list[LayerCache] | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> StackOutput:
        """Decode ``x`` ``(batch, n, dim)`` causally, attending to ``context``.

        Args:
            x: the embedded target positions (with a cache: only the new ones).
            context: encoder output ``(batch, n_c, context_dim)``.
            mask: self-attention key-padding mask ``(batch, n_cached + n)``.
            context_mask: key-padding mask of ``context`` ``(batch, n_c)``.
            cache: from :meth:`new_cache`, updated in place; pass the same list at every
                decoding step (a ``ValueError`` if an LSH layer has no ``seed``: its
                hashing changes at every call). An LSH layer's cached steps see every
                earlier key of the query's buckets
                (:func:`~attnzoo.attention.lsh.lsh_cached_attention`).
            output_attentions: collect every layer's self- and cross-attention weights.
            output_hidden_states: collect the input and every layer's output.
        """
        self._check_input(x)
        if cache is not None and len(cache) != len(self.layers):
            raise ValueError(
                f"`cache` must hold one LayerCache per layer ({len(self.layers)}), got {len(cache)}"
            )
        if cache is not None:
            # Checked before any layer runs, so no layer's cache is left half-updated.
            for i, layer in enumerate(self.layers):
                attention = cast(DecoderLayer, layer).self_attention
                check_decoding_cache(attention, cache[i].self_attention, f"layer {i}")
        hidden = [x] if output_hidden_states else None
        attentions: list[Tensor] | None = [] if output_attentions else None
        cross: list[Tensor] | None = [] if output_attentions else None
        for i, layer in enumerate(self.layers):
            result = self._run_layer(
                layer,
                x,
                context,
                mask=mask,
                context_mask=context_mask,
                cache=cache[i] if cache is not None else None,
                output_attentions=output_attentions,
            )
            if attentions is not None and cross is not None:
                x, self_weights, cross_weights = result
                attentions.append(self_weights)
                if cross_weights is not None:
                    cross.append(cross_weights)
            else:
                x = result
            if hidden is not None:
                hidden.append(x)
        return self._finish(x, hidden, attentions, cross or None)


def run_layer(owner: nn.Module, layer: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``layer(*args, **kwargs)``, recomputed in backward when ``owner`` checkpoints.

    The one rule of every model's layer loop: ``owner`` (a stack, or a model with its own
    loop) recomputes ``layer`` when its ``gradient_checkpointing`` flag is on, it is in
    training mode, gradients are on and no ``cache`` keyword is given.
    """
    # Recomputing a layer in backward trades compute for the activations it would keep;
    # it only pays when a backward pass follows, and a KV cache is filled in place, so a
    # second (recomputed) forward would append twice.
    if (
        getattr(owner, "gradient_checkpointing", False)
        and owner.training
        and torch.is_grad_enabled()
        and kwargs.get("cache") is None
    ):
        return checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)


class _CheckpointFlagged(Protocol):
    """A stack, or a model with its own layer loop, that :func:`run_layer` may checkpoint."""

    gradient_checkpointing: bool


def _has_checkpoint_flag(module: nn.Module) -> TypeGuard[_CheckpointFlagged]:
    return isinstance(getattr(module, "gradient_checkpointing", None), bool)


def set_gradient_checkpointing(module: nn.Module, enabled: bool = True) -> int:
    """Switch activation checkpointing on (or off) in every encoder/decoder stack of ``module``.

    With it on, a stack in training mode keeps only each layer's input and recomputes the
    layer in the backward pass (``torch.utils.checkpoint``, non-reentrant, dropout masks
    replayed), so the saved activations shrink from every layer's intermediates to one
    ``(batch, n, dim)`` tensor per layer, at the price of a second forward. Evaluation, no-grad
    calls and decoding with a KV cache are unaffected.

    Besides the stacks, the models that loop over their own layers through
    :func:`run_layer` (ALBERT's shared groups, XLM, XLNet's two streams) carry the same
    ``gradient_checkpointing`` flag and are switched too.

    Returns:
        how many stacks (or models with their own layer loop) were switched.

    Raises:
        ValueError: ``module`` holds no such stack (its layers would not be checkpointed).
    """
    stacks = [sub for sub in module.modules() if _has_checkpoint_flag(sub)]
    if not stacks:
        raise ValueError(
            f"`module` ({type(module).__name__}) has no TransformerEncoder/TransformerDecoder "
            "stack, so gradient checkpointing cannot be switched on"
        )
    for stack in stacks:
        stack.gradient_checkpointing = bool(enabled)
    return len(stacks)


def learned_alphas(module: nn.Module) -> dict[str, Tensor]:
    """Every learned per-head entmax alpha in ``module``, by attention-module name.

    Returns:
        ``{name: (heads,) tensor}`` (detached), e.g. ``"layers.0.attention"``; empty when
        no attention learns its alpha.
    """
    with torch.no_grad():
        return {
            name.removesuffix(".alpha"): sub().detach().flatten()
            for name, sub in module.named_modules()
            if isinstance(sub, EntmaxAlpha)
        }


__all__ = [
    "AdaptiveSpanConfig",
    "LSHConfig",
    "LayerConfig",
    "MemoryConfig",
    "SparsePatternConfig",
    "StackConfig",
    "StackOutput",
    "TransformerDecoder",
    "TransformerEncoder",
    "learned_alphas",
    "set_gradient_checkpointing",
]
