"""RoBERTa (Liu et al. 2019) as BERT with other positions and LM head.

The encoder is BERT's (:mod:`attnzoo.transformers_zoo.bert`); two things differ:

* positions: a padding token has position ``padding_idx`` and real tokens count up from
  ``padding_idx + 1`` (Hugging Face's ``create_position_ids_from_input_ids``), so
  ``max_position_embeddings`` is ``max_len + padding_idx + 1`` (514 for 512 tokens);
* the masked-LM head ``lm_head`` is ``layer_norm(gelu(dense(h)))`` (exact GELU whatever
  ``hidden_act`` says) then the tied word embeddings plus ``lm_head.bias``.

Checkpoint keys follow BERT's map with the ``roberta.`` prefix; ``lm_head.dense``,
``lm_head.layer_norm`` and ``lm_head.bias`` keep their names, and the tied copies
``lm_head.decoder.{weight,bias}`` are checked and dropped on load and left out on save.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bert import (
    BertConfig,
    BertEmbeddings,
    BertModel,
    BertPreTrainedModel,
    HeadOutput,
    masked_lm_loss,
)


@dataclass
class RobertaConfig(BertConfig):
    """RoBERTa hyper-parameters: :class:`BertConfig`'s fields with Hugging Face
    ``RobertaConfig``'s defaults (``pad_token_id=1``, 514 positions, one segment type,
    LayerNorm epsilon 1e-5), plus the ``bos_token_id``/``eos_token_id`` it records."""

    model_type: ClassVar[str] = "roberta"

    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2


def create_position_ids_from_input_ids(input_ids: Tensor, padding_idx: int) -> Tensor:
    """RoBERTa's positions: ``padding_idx`` at padding, ``padding_idx + 1, ...`` counting
    the real tokens from the left.

    Args:
        input_ids: ``(batch, n)``.
        padding_idx: the padding token id.

    Returns:
        ``(batch, n)`` int64.
    """
    real = input_ids.ne(padding_idx).long()
    return torch.cumsum(real, dim=1) * real + padding_idx


class RobertaEmbeddings(BertEmbeddings):
    """BERT's embeddings with positions counted after ``padding_idx``; the padding row of
    the position table, like the word table's, gets no gradient (as in Hugging Face)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        assert self.position_embeddings is not None
        self.position_embeddings.padding_idx = config.pad_token_id

    def default_position_ids(self, input_ids: Tensor) -> Tensor:
        return create_position_ids_from_input_ids(input_ids, self.pad_token_id)


class RobertaPreTrainedModel(BertPreTrainedModel):
    """Config, key maps and tied copies of the RoBERTa classes."""

    config_class: ClassVar[type] = RobertaConfig
    base_model_prefix: ClassVar[str] = "roberta"


class RobertaModel(RobertaPreTrainedModel, BertModel):
    """RoBERTa encoder: :class:`RobertaEmbeddings`, BERT's encoder and pooler.

    ``forward`` is :meth:`BertModel.forward`; default ``position_ids`` are
    :func:`create_position_ids_from_input_ids`.
    """

    embeddings_class = RobertaEmbeddings


class RobertaLMHead(nn.Module):
    """``layer_norm(gelu(dense(h)))`` then the tied word embeddings plus ``bias``:
    ``forward(h, word_embeddings)``: ``(batch, n, dim)``, ``(vocab, dim)`` ->
    ``(batch, n, vocab)``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: Tensor, word_embeddings: Tensor) -> Tensor:
        h = self.layer_norm(F.gelu(self.dense(h)))
        return F.linear(h, word_embeddings, self.bias)


class RobertaForMaskedLM(RobertaPreTrainedModel):
    """RoBERTa with its masked-LM head (no pooler).

    ``forward(..., labels=None)``: ``labels`` ``(batch, n)``, -100 where not predicted;
    returns :class:`~attnzoo.transformers_zoo.bert.HeadOutput` with ``logits``
    ``(batch, n, vocab_size)``. Parameters ``roberta.*``, ``lm_head.*``.
    """

    tied_copies: ClassVar[dict[str, str]] = {
        "lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
        "lm_head.decoder.bias": "lm_head.bias",
    }

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> HeadOutput:
        out = self.roberta(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_attentions,
            output_hidden_states,
        )
        words = self.roberta.embeddings.word_embeddings.weight
        logits = self.lm_head(out.last_hidden_state, words)
        loss = masked_lm_loss(logits, labels) if labels is not None else None
        return HeadOutput(logits, loss, out.hidden_states, out.attentions)


__all__ = [
    "RobertaConfig",
    "RobertaEmbeddings",
    "RobertaForMaskedLM",
    "RobertaLMHead",
    "RobertaModel",
    "RobertaPreTrainedModel",
    "create_position_ids_from_input_ids",
]
