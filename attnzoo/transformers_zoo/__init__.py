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
* :class:`TransformerXLLMHeadModel` (Dai et al. 2019): segment-level recurrence with
  relative attention; any stack takes ``LayerConfig(position="rotary" | "alibi")``.
* Reversible residual stacks whose backward recomputes the activations
  (:class:`ReversibleEncoder`, any attention; :class:`ReformerLM` with LSH attention and a
  chunked feed-forward), and the :class:`UniversalTransformerEncoder` (one shared layer
  over depth, ACT halting per position).
* Decoding for any step function: :func:`greedy_search`, :func:`beam_search`; the
  training loop :func:`fit`; seeded tasks in :mod:`attnzoo.transformers_zoo.tasks`.
"""

from .act import ACT, ACTConfig, ACTOutput
from .adaptive_softmax import AdaptiveEmbedding, AdaptiveSoftmax
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
from .distributed import (
    init_distributed,
    local_shard,
    rank_and_world_size,
    sharded_batches,
    wrap_model,
)
from .dual_encoder import ConvImageEncoder, DualEncoder, ViTImageEncoder, clip_loss, shape_captions
from .elmo import BiLM, ELMoConfig, ScalarMix, mean_elmo
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
    PermutationLMCollator,
    build_pmi_vocabulary,
    causal_lm_labels,
    mask_tokens,
    nsp_pairs,
    permutation_lm_batch,
    pmi_mask_tokens,
    sop_pairs,
    tlm_batch,
)
from .pointer_network import PointerNetwork, PointerNetworkConfig
from .recipes import (
    finetune_question_answering,
    finetune_sequence_classifier,
    finetune_token_classifier,
)
from .reversible import (
    AttentionSublayer,
    FeedForwardSublayer,
    ReformerConfig,
    ReformerLM,
    ReversibleBlock,
    ReversibleEncoder,
    ReversibleSequence,
)
from .rnn_seq2seq import RNNSeq2Seq, RNNSeq2SeqConfig
from .roberta import RobertaConfig, RobertaForMaskedLM, RobertaModel
from .schedules import (
    GradualUnfreezing,
    OneCycleSchedule,
    SlantedTriangularLR,
    discriminative_param_groups,
)
from .sentence import EmbeddingIndex, SentenceEncoder, cos_sim, semantic_search
from .sentence_losses import (
    SoftmaxLoss,
    cosine_similarity_loss,
    multiple_negatives_ranking_loss,
    triplet_loss,
)
from .snail import SNAIL, SNAILConfig
from .stacks import (
    AdaptiveSpanConfig,
    LayerConfig,
    LSHConfig,
    MemoryConfig,
    SparsePatternConfig,
    StackConfig,
    StackOutput,
    TransformerDecoder,
    TransformerEncoder,
    run_layer,
    set_gradient_checkpointing,
)
from .tabert import TaBERTColumnSelector, TaBERTConfig, TaBERTForPreTraining, TaBERTModel
from .text_cnn import TextCNN, TextCNNConfig
from .train_state import TrainState, load_checkpoint, save_checkpoint
from .training import TrainConfig, TrainHistory, fit
from .transformer import Transformer, TransformerConfig
from .transformer_xl import (
    TransformerXLConfig,
    TransformerXLLMHeadModel,
    TransformerXLLMOutput,
    TransformerXLModel,
    TransformerXLOutput,
)
from .ulmfit import AWDLSTMConfig, AWDLSTMLanguageModel, ULMFiTClassifier
from .universal import UniversalOutput, UniversalTransformerEncoder
from .xlm import XLMConfig, XLMModel, XLMWithLMHeadModel
from .xlnet import XLNetConfig, XLNetLMHeadModel, XLNetModel

__all__ = [
    "ACT",
    "NTM",
    "SNAIL",
    "ACTConfig",
    "ACTOutput",
    "AWDLSTMConfig",
    "AWDLSTMLanguageModel",
    "AdaptiveEmbedding",
    "AdaptiveSoftmax",
    "AdaptiveSpanConfig",
    "AlbertConfig",
    "AlbertForPreTraining",
    "AlbertModel",
    "AttentionBiLSTM",
    "AttentionBiLSTMConfig",
    "AttentionSublayer",
    "BertConfig",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BiLM",
    "ConvImageEncoder",
    "DecoderLayer",
    "DistilBertConfig",
    "DistilBertForMaskedLM",
    "DistilBertModel",
    "DualEncoder",
    "DynamicMaskingCollator",
    "ELMoConfig",
    "EmbeddingIndex",
    "Embeddings",
    "EncoderDecoderModel",
    "EncoderLayer",
    "FeedForward",
    "FeedForwardSublayer",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GenerationOptions",
    "GradualUnfreezing",
    "HANConfig",
    "HierarchicalAttentionNetwork",
    "LSHConfig",
    "LSTMBaseline",
    "LanguageEmbedding",
    "LayerCache",
    "LayerConfig",
    "LearnedPositionalEmbedding",
    "MemoryConfig",
    "NTMConfig",
    "OneCycleSchedule",
    "PermutationLMCollator",
    "PointerNetwork",
    "PointerNetworkConfig",
    "PretrainedMixin",
    "RNNSeq2Seq",
    "RNNSeq2SeqConfig",
    "ReformerConfig",
    "ReformerLM",
    "ReversibleBlock",
    "ReversibleEncoder",
    "ReversibleSequence",
    "RobertaConfig",
    "RobertaForMaskedLM",
    "RobertaModel",
    "SNAILConfig",
    "ScalarMix",
    "SegmentEmbedding",
    "SentenceEncoder",
    "SinusoidalPositionalEmbedding",
    "SlantedTriangularLR",
    "SoftmaxLoss",
    "SparsePatternConfig",
    "StackConfig",
    "StackOutput",
    "TaBERTColumnSelector",
    "TaBERTConfig",
    "TaBERTForPreTraining",
    "TaBERTModel",
    "TextCNN",
    "TextCNNConfig",
    "TokenEmbedding",
    "TrainConfig",
    "TrainHistory",
    "TrainState",
    "Transformer",
    "TransformerConfig",
    "TransformerDecoder",
    "TransformerEncoder",
    "TransformerXLConfig",
    "TransformerXLLMHeadModel",
    "TransformerXLLMOutput",
    "TransformerXLModel",
    "TransformerXLOutput",
    "ULMFiTClassifier",
    "UniversalOutput",
    "UniversalTransformerEncoder",
    "ViTImageEncoder",
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
    "clip_loss",
    "cos_sim",
    "cosine_similarity_loss",
    "discriminative_param_groups",
    "few_shot_classify",
    "finetune_question_answering",
    "finetune_sequence_classifier",
    "finetune_token_classifier",
    "fit",
    "generate_tokens",
    "greedy_search",
    "init_distributed",
    "load_checkpoint",
    "local_shard",
    "mask_tokens",
    "mean_elmo",
    "multiple_negatives_ranking_loss",
    "nsp_pairs",
    "permutation_lm_batch",
    "pmi_mask_tokens",
    "rank_and_world_size",
    "read_hf_directory",
    "reorder_state",
    "run_layer",
    "save_checkpoint",
    "semantic_search",
    "set_gradient_checkpointing",
    "shape_captions",
    "sharded_batches",
    "sop_pairs",
    "tlm_batch",
    "top_k_filter",
    "top_p_filter",
    "triplet_loss",
    "wrap_model",
    "write_hf_directory",
]
