"""Attention kernels: normalisers, score functions, attention modules, memories, pooling.

Everything here takes batch-first tensors and boolean masks (True = may attend / real
token); every attention takes ``normalizer=`` (a registry name or a callable).

* Normalisers: :func:`softmax`, :func:`sparsemax`, :func:`entmax15`,
  :func:`alpha_entmax` and :func:`entmax_bisect` (any alpha > 1, per-head tensors,
  differentiable in alpha),
  :func:`hardmax`, :func:`gumbel_softmax`; their registry :func:`get_normalizer`;
  :class:`EntmaxAlpha` for a learnable alpha per head.
* The functional core :func:`attend` (SDPA fast path for softmax) and
  :class:`MultiHeadAttention` with a :class:`KVCache`; :func:`blockwise_attention` for
  sparsemax/entmax attention in query tiles, without the ``n x n`` scores.
* Scores for RNN decoders and their attention: :class:`AdditiveScore` (bounded memory),
  :class:`GeneralScore`, :class:`BahdanauAttention`, :class:`LuongAttention`,
  :class:`LocalAttention`, :class:`HardAttention`.
* :func:`sliding_window_attention` / :class:`SlidingWindowAttention` (exact token band,
  O(n * window) memory), :class:`ProductKeyMemory`, :class:`AttentionPooling`,
  :class:`SelfAttention2d`.
* Positions inside attention: :class:`RotaryEmbedding` and :class:`ALiBi`
  (``MultiHeadAttention(position="rotary" | "alibi")``), Transformer-XL's
  :class:`RelativeMultiHeadAttention` with segment memory, and the adaptive span of
  :class:`AdaptiveSpanAttention` (its penalty :func:`span_penalty`).
* Sparse and hashed attention: the Sparse Transformer's strided and fixed patterns as
  masks (:func:`sparse_pattern_mask`) and as a gather kernel that never builds the
  ``n x n`` scores (:func:`sparse_pattern_attention`, :class:`SparseTransformerAttention`);
  the Reformer's shared-QK LSH attention (:func:`lsh_attention`, :class:`LSHAttention`).
"""

from .adaptive_span import AdaptiveSpanAttention, AdaptiveSpanMask, learned_spans, span_penalty
from .blockwise import blockwise_attention
from .entmax import (
    MIN_ALPHA,
    AlphaEntmax,
    AlphaEntmaxFunction,
    Entmax15,
    Entmax15Function,
    EntmaxAlpha,
    EntmaxBisect,
    EntmaxBisectFunction,
    Sparsemax,
    SparsemaxFunction,
    alpha_entmax,
    entmax15,
    entmax_bisect,
    sparsemax,
)
from .functional import attend, causal_mask, padding_mask_to_attention_mask
from .hard import (
    HardAttention,
    HardAttentionOutput,
    MovingAverageBaseline,
    categorical_entropy,
    reinforce_loss,
)
from .lsh import (
    LSHAttention,
    LSHCache,
    lsh_allowed_mask,
    lsh_attention,
    lsh_buckets,
    lsh_cached_attention,
    random_rotations,
)
from .multi_head import AttentionProjections, KVCache, MultiHeadAttention
from .normalizers import (
    Normalizer,
    available_normalizers,
    get_normalizer,
    gumbel_softmax,
    hardmax,
    masked_normalize,
    register_normalizer,
    softmax,
)
from .pooling import AttentionPooling
from .positional import ALiBi, RotaryEmbedding, alibi_bias, alibi_slopes, apply_rotary
from .product_key import MemoryUsage, ProductKeyMemory, memory_usage
from .relative import RelativeMultiHeadAttention, rel_shift, sinusoidal_relative_encoding
from .rnn_attention import (
    AttentionalHidden,
    BahdanauAttention,
    LocalAttention,
    LocalWindow,
    LuongAttention,
)
from .scores import (
    SCORE_NAMES,
    AdditiveScore,
    DotScore,
    GeneralScore,
    ScoreModule,
    additive_score,
    dot_score,
    make_score,
    scaled_dot_score,
)
from .self_attention_2d import SelfAttention2d
from .sliding_window import SlidingWindowAttention, band_to_dense, sliding_window_attention
from .sparse_patterns import (
    SparseTransformerAttention,
    fixed_pattern,
    pattern_weights_to_dense,
    sparse_pattern_attention,
    sparse_pattern_index,
    sparse_pattern_mask,
    strided_pattern,
)

__all__ = [
    "MIN_ALPHA",
    "SCORE_NAMES",
    "ALiBi",
    "AdaptiveSpanAttention",
    "AdaptiveSpanMask",
    "AdditiveScore",
    "AlphaEntmax",
    "AlphaEntmaxFunction",
    "AttentionPooling",
    "AttentionProjections",
    "AttentionalHidden",
    "BahdanauAttention",
    "DotScore",
    "Entmax15",
    "Entmax15Function",
    "EntmaxAlpha",
    "EntmaxBisect",
    "EntmaxBisectFunction",
    "GeneralScore",
    "HardAttention",
    "HardAttentionOutput",
    "KVCache",
    "LSHAttention",
    "LSHCache",
    "LocalAttention",
    "LocalWindow",
    "LuongAttention",
    "MemoryUsage",
    "MovingAverageBaseline",
    "MultiHeadAttention",
    "Normalizer",
    "ProductKeyMemory",
    "RelativeMultiHeadAttention",
    "RotaryEmbedding",
    "ScoreModule",
    "SelfAttention2d",
    "SlidingWindowAttention",
    "SparseTransformerAttention",
    "Sparsemax",
    "SparsemaxFunction",
    "additive_score",
    "alibi_bias",
    "alibi_slopes",
    "alpha_entmax",
    "apply_rotary",
    "attend",
    "available_normalizers",
    "band_to_dense",
    "blockwise_attention",
    "categorical_entropy",
    "causal_mask",
    "dot_score",
    "entmax15",
    "entmax_bisect",
    "fixed_pattern",
    "get_normalizer",
    "gumbel_softmax",
    "hardmax",
    "learned_spans",
    "lsh_allowed_mask",
    "lsh_attention",
    "lsh_buckets",
    "lsh_cached_attention",
    "make_score",
    "masked_normalize",
    "memory_usage",
    "padding_mask_to_attention_mask",
    "pattern_weights_to_dense",
    "random_rotations",
    "register_normalizer",
    "reinforce_loss",
    "rel_shift",
    "scaled_dot_score",
    "sinusoidal_relative_encoding",
    "sliding_window_attention",
    "softmax",
    "span_penalty",
    "sparse_pattern_attention",
    "sparse_pattern_index",
    "sparse_pattern_mask",
    "sparsemax",
    "strided_pattern",
]
