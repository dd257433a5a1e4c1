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
* Pretrained families on the same blocks, loading and saving Hugging Face-format
  directories (``from_pretrained`` / ``save_pretrained``, strict key maps, no network):
  BERT (:class:`BertModel` and its heads), RoBERTa, ALBERT, DistilBERT, GPT-2 (with
  :meth:`GPT2LMHeadModel.generate`), XLNet (two-stream relative attention) and XLM,
  each equal to ``transformers``; :class:`EncoderDecoderModel` pairs two of them.
* Decoding for any step function: :func:`greedy_search`, :func:`beam_search`; the
  training loop :func:`fit`; seeded tasks in :mod:`attnzoo.transformers_zoo.tasks`.
"""

from .act import ACT, ACTConfig, ACTOutput
from .albert import AlbertConfig, AlbertForPreTraining, AlbertModel
from .bert import (
    BertConfig,
    BertForMaskedLM,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from .checkpoints import PretrainedMixin, read_hf_directory, write_hf_directory
from .distilbert import DistilBertConfig, DistilBertForMaskedLM, DistilBertModel
from .embeddings import (
    Embeddings,
    LanguageEmbedding,
    LearnedPositionalEmbedding,
    SegmentEmbedding,
    SinusoidalPositionalEmbedding,
    TokenEmbedding,
)
from .encoder_decoder import EncoderDecoderModel
from .feed_forward import FeedForward
from .generation import (
    GenerationOptions,
    apply_repetition_penalty,
    beam_search,
    generate_tokens,
    greedy_search,
    reorder_state,
    top_k_filter,
    top_p_filter,
)
from .gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model, few_shot_classify
from .han import (
    AttentionBiLSTM,
    AttentionBiLSTMConfig,
    HANConfig,
    HierarchicalAttentionNetwork,
)
from .layers import DecoderLayer, EncoderLayer, LayerCache
from .ntm import NTM, LSTMBaseline, NTMConfig
from .objectives import (
    DynamicMaskingCollator,
    build_pmi_vocabulary,
    causal_lm_labels,
    mask_tokens,
    nsp_pairs,
    pmi_mask_tokens,
    sop_pairs,
    tlm_batch,
)
from .pointer_network import PointerNetwork, PointerNetworkConfig
from .rnn_seq2seq import RNNSeq2Seq, RNNSeq2SeqConfig
from .roberta import RobertaConfig, RobertaForMaskedLM, RobertaModel
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
from .xlm import XLMConfig, XLMModel, XLMWithLMHeadModel
from .xlnet import XLNetConfig, XLNetLMHeadModel, XLNetModel

__all__ = [
    "ACT",
    "NTM",
    "SNAIL",
    "ACTConfig",
    "ACTOutput",
    "AlbertConfig",
    "AlbertForPreTraining",
    "AlbertModel",
    "AttentionBiLSTM",
    "AttentionBiLSTMConfig",
    "BertConfig",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "DecoderLayer",
    "DistilBertConfig",
    "DistilBertForMaskedLM",
    "DistilBertModel",
    "DynamicMaskingCollator",
    "Embeddings",
    "EncoderDecoderModel",
    "EncoderLayer",
    "FeedForward",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GenerationOptions",
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
    "PretrainedMixin",
    "RNNSeq2Seq",
    "RNNSeq2SeqConfig",
    "RobertaConfig",
    "RobertaForMaskedLM",
    "RobertaModel",
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
    "XLMConfig",
    "XLMModel",
    "XLMWithLMHeadModel",
    "XLNetConfig",
    "XLNetLMHeadModel",
    "XLNetModel",
    "apply_repetition_penalty",
    "beam_search",
    "build_pmi_vocabulary",
    "causal_lm_labels",
    "few_shot_classify",
    "fit",
    "generate_tokens",
    "greedy_search",
    "mask_tokens",
    "nsp_pairs",
    "pmi_mask_tokens",
    "read_hf_directory",
    "reorder_state",
    "sop_pairs",
    "tlm_batch",
    "top_k_filter",
    "top_p_filter",
    "write_hf_directory",
]
