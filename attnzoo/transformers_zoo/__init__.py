"""Transformer blocks and the model families built from them.

Stands on :mod:`attnzoo.attention`.

* Blocks, one configurable family: :class:`FeedForward`, :class:`Embeddings` (token,
  learned or sinusoidal positions, segments, languages), :class:`EncoderLayer`,
  :class:`DecoderLayer`, :class:`TransformerEncoder` / :class:`TransformerDecoder` whose
  :class:`StackConfig` picks per layer the attention normaliser (softmax, sparsemax,
  entmax15, entmax with a learned alpha per head), a sliding window, or a
  product-key memory in place of the feed-forward.
* Classic attention models, each with a synthetic task it is shown to solve:
  :class:`Transformer` (Vaswani et al. 2017), :class:`RNNSeq2Seq` (Bahdanau / Luong /
  local attention, or none), :class:`PointerNetwork`, :class:`NTM`, :class:`ACT`,
  :class:`HierarchicalAttentionNetwork`, :class:`AttentionBiLSTM`, :class:`TextCNN`,
  :class:`SNAIL`.
* Decoding for any step function: :func:`greedy_search`, :func:`beam_search`; the
  training loop :func:`fit`; seeded tasks in :mod:`attnzoo.transformers_zoo.tasks`.
"""

from .act import ACT, ACTConfig, ACTOutput
from .embeddings import (
    Embeddings,
    LanguageEmbedding,
    LearnedPositionalEmbedding,
    SegmentEmbedding,
    SinusoidalPositionalEmbedding,
    TokenEmbedding,
)
from .feed_forward import FeedForward
from .generation import beam_search, greedy_search, reorder_state
from .han import (
    AttentionBiLSTM,
    AttentionBiLSTMConfig,
    HANConfig,
    HierarchicalAttentionNetwork,
)
from .layers import DecoderLayer, EncoderLayer, LayerCache
from .ntm import NTM, LSTMBaseline, NTMConfig
from .pointer_network import PointerNetwork, PointerNetworkConfig
from .rnn_seq2seq import RNNSeq2Seq, RNNSeq2SeqConfig
from .snail import SNAIL, SNAILConfig
from .stacks import (
    LayerConfig,
    MemoryConfig,
    StackConfig,
    StackOutput,
    TransformerDecoder,
    TransformerEncoder,
)
from .text_cnn import TextCNN, TextCNNConfig
from .training import TrainConfig, TrainHistory, fit
from .transformer import Transformer, TransformerConfig

__all__ = [
    "ACT",
    "NTM",
    "SNAIL",
    "ACTConfig",
    "ACTOutput",
    "AttentionBiLSTM",
    "AttentionBiLSTMConfig",
    "DecoderLayer",
    "Embeddings",
    "EncoderLayer",
    "FeedForward",
    "HANConfig",
    "HierarchicalAttentionNetwork",
    "LSTMBaseline",
    "LanguageEmbedding",
    "LayerCache",
    "LayerConfig",
    "LearnedPositionalEmbedding",
    "MemoryConfig",
    "NTMConfig",
    "PointerNetwork",
    "PointerNetworkConfig",
    "RNNSeq2Seq",
    "RNNSeq2SeqConfig",
    "SNAILConfig",
    "SegmentEmbedding",
    "SinusoidalPositionalEmbedding",
    "StackConfig",
    "StackOutput",
    "TextCNN",
    "TextCNNConfig",
    "TokenEmbedding",
    "TrainConfig",
    "TrainHistory",
    "Transformer",
    "TransformerConfig",
    "TransformerDecoder",
    "TransformerEncoder",
    "beam_search",
    "fit",
    "greedy_search",
    "reorder_state",
]
