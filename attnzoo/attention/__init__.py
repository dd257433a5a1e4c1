"""Attention kernels: normalisers, score functions, attention modules, memories, pooling.

Everything here takes batch-first tensors and boolean masks (True = may attend / real
token); every attention takes ``normalizer=`` (a registry name or a callable).

* Normalisers: :func:`softmax`, :func:`sparsemax`, :func:`entmax15`,
  :func:`entmax_bisect` (any alpha > 1, per-head tensors, differentiable in alpha),
  :func:`hardmax`, :func:`gumbel_softmax`; their registry :func:`get_normalizer`;
  :class:`EntmaxAlpha` for a learnable alpha per head.
* The functional core :func:`attend` (SDPA fast path for softmax) and
  :class:`MultiHeadAttention` with a :class:`KVCache`.
* Scores for RNN decoders and their attention: :class:`AdditiveScore` (bounded memory),
  :class:`GeneralScore`, :class:`BahdanauAttention`, :class:`LuongAttention`,
  :class:`LocalAttention`, :class:`HardAttention`.
* :func:`sliding_window_attention` / :class:`SlidingWindowAttention` (exact token band,
  O(n * window) memory), :class:`ProductKeyMemory`, :class:`AttentionPooling`,
  :class:`SelfAttention2d`.
"""

from .entmax import (
    MIN_ALPHA,
    Entmax15,
    Entmax15Function,
    EntmaxAlpha,
    EntmaxBisect,
    EntmaxBisectFunction,
    Sparsemax,
    SparsemaxFunction,
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
from .multi_head import KVCache, MultiHeadAttention
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
from .product_key import MemoryUsage, ProductKeyMemory, memory_usage
from .rnn_attention import AttentionalHidden, BahdanauAttention, LocalAttention, LuongAttention
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

__all__ = [
    "MIN_ALPHA",
    "SCORE_NAMES",
    "AdditiveScore",
    "AttentionPooling",
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
    "LocalAttention",
    "LuongAttention",
    "MemoryUsage",
    "MovingAverageBaseline",
    "MultiHeadAttention",
    "Normalizer",
    "ProductKeyMemory",
    "ScoreModule",
    "SelfAttention2d",
    "SlidingWindowAttention",
    "Sparsemax",
    "SparsemaxFunction",
    "additive_score",
    "attend",
    "available_normalizers",
    "band_to_dense",
    "categorical_entropy",
    "causal_mask",
    "dot_score",
    "entmax15",
    "entmax_bisect",
    "get_normalizer",
    "gumbel_softmax",
    "hardmax",
    "make_score",
    "masked_normalize",
    "memory_usage",
    "padding_mask_to_attention_mask",
    "register_normalizer",
    "reinforce_loss",
    "scaled_dot_score",
    "sliding_window_attention",
    "softmax",
    "sparsemax",
]
