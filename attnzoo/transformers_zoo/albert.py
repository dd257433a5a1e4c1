"""ALBERT (Lan et al. 2020, "ALBERT: A Lite BERT for Self-supervised Learning of Language
Representations"), read top to bottom, loading and saving Hugging Face checkpoints.

ALBERT is BERT with two parameter reductions:

* **factorised embeddings**: tokens, positions and segments are embedded in a small width
  ``E = embedding_size`` (then LayerNorm), and one linear map ``embedding_hidden_mapping_in``
  projects them to the model width ``H = hidden_size``, so the vocabulary costs ``V * E``
  parameters instead of ``V * H``;
* **cross-layer sharing**: the ``num_hidden_layers`` layers are ``num_hidden_groups``
  post-LN :class:`~attnzoo.transformers_zoo.layers.EncoderLayer` modules, each applied to a
  run of consecutive layers (one group, the default and the paper's: the SAME layer applied
  ``num_hidden_layers`` times). Layer ``i`` uses group ``int(i / (num_hidden_layers /
  num_hidden_groups))``, as Hugging Face computes it.

:class:`AlbertForPreTraining` adds the two pre-training heads: masked-language modelling (a
dense map back to width ``E``, the activation, LayerNorm, then the output projection tied
to the word embeddings, with its own bias) and sentence-order prediction (a linear map of
the pooled first token to two classes).

Hugging Face key map (``AlbertModel``; ``AlbertForPreTraining`` adds the ``albert.`` prefix
to these, and the heads)::

    embeddings.LayerNorm.*                                -> embeddings.norm.*
    embeddings.{word,position,token_type}_embeddings.*   -> the same
    encoder.embedding_hidden_mapping_in.*                 -> embedding_hidden_mapping_in.*
    encoder.albert_layer_groups.{g}.albert_layers.0.
        attention.{query,key,value}.*                     -> layer_groups.{g}.attention.{...}.*
        attention.dense.*                                 -> layer_groups.{g}.attention.out.*
        attention.LayerNorm.*                             -> layer_groups.{g}.attention_norm.*
        ffn.*                                             -> layer_groups.{g}.ffn.intermediate.*
        ffn_output.*                                      -> layer_groups.{g}.ffn.output.*
        full_layer_layer_norm.*                           -> layer_groups.{g}.ffn_norm.*
    pooler.*                                              -> pooler.*
    predictions.{dense,bias}.* / predictions.LayerNorm.*  -> predictions.{dense,bias} / .norm
    predictions.decoder.weight (untied only)              -> predictions.decoder.weight
    sop_classifier.classifier.*                           -> sop_classifier.*

``predictions.decoder.bias`` is a tied copy of ``predictions.bias`` and is dropped on load
(as is a ``predictions.decoder.weight`` equal to the word embeddings: older checkpoints
store the tied copy).

Masks: ``attention_mask`` is Hugging Face's documented interface, so here (and only in the
model families' ``forward``) it may be an integer 0/1 tensor as well as a boolean one;
1/True = real token. It is converted to the library's boolean key-padding mask.

Differences in training mode only: the library's layer puts its dropout on the
feed-forward hidden activations and on both residual branches; Hugging Face's ALBERT layer
has no dropout in its feed-forward branch (ALBERT's default dropout is 0 anyway).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import (
    check_int,
    check_probability,
    check_rank,
    check_tensor,
    check_token_ids,
)
from .bert import masked_lm_loss
from .checkpoints import PretrainedMixin, hf_activation, hf_attention_mask, init_hf_weights
from .embeddings import Embeddings
from .embeddings import position_ids as default_position_ids
from .feed_forward import activate
from .layers import EncoderLayer
from .stacks import run_layer, set_gradient_checkpointing


def embed(
    embeddings: Embeddings,
    input_ids: Tensor,
    token_type_ids: Tensor | None = None,
    position_ids: Tensor | None = None,
) -> Tensor:
    """Token + position (+ segment) embeddings, LayerNorm and dropout, with optional
    explicit ``position_ids`` (Hugging Face's interface).

    Args:
        embeddings: an :class:`~attnzoo.transformers_zoo.embeddings.Embeddings` with learned
            positions.
        input_ids: ``(batch, n)``.
        token_type_ids: ``(batch, n)``; default zeros (needs a segment embedding).
        position_ids: ``(batch, n)`` or ``(1, n)``; default ``0 .. n - 1``.

    Returns:
        ``(batch, n, dim)``.
    """
    check_rank(input_ids, 2, "input_ids", "(batch, n)")
    x = embeddings.word_embeddings(input_ids)
    n = input_ids.shape[1]
    if position_ids is None:
        position_ids = default_position_ids(n, device=input_ids.device)
    else:
        check_rank(position_ids, 2, "position_ids", "(batch, n)")
        if position_ids.shape[1] != n or position_ids.shape[0] not in (1, input_ids.shape[0]):
            raise ValueError(
                f"`position_ids` must have shape (batch, n) or (1, n) with n = {n}, "
                f"got {tuple(position_ids.shape)}"
            )
    assert embeddings.position_embeddings is not None
    x = x + embeddings.position_embeddings(position_ids)
    if embeddings.token_type_embeddings is not None:
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"`token_type_ids` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                f"got {tuple(token_type_ids.shape)}"
            )
        x = x + embeddings.token_type_embeddings(token_type_ids)
    elif token_type_ids is not None:
        raise ValueError("`token_type_ids` given, but the model has no segment embedding")
    assert embeddings.norm is not None
    return embeddings.dropout(embeddings.norm(x))


def config_from_dict(config_class: type, hf: dict[str, Any], model_type: str) -> Any:
    """Build ``config_class`` from a ``config.json`` dict: its own fields are read, the
    rest (``architectures``, ``transformers_version``, ...) ignored; a wrong
    ``model_type`` is a ``ValueError``."""
    found = hf.get("model_type", model_type)
    if found != model_type:
        raise ValueError(f"config.json `model_type` must be {model_type!r}, got {found!r}")
    names = {f.name for f in fields(config_class)}
    return config_class(**{key: value for key, value in hf.items() if key in names})


def drop_tied_copy(state: dict[str, Tensor], copy_key: str, source_key: str) -> None:
    """Remove ``state[copy_key]`` if it is a copy of ``state[source_key]`` (a tied weight
    that some checkpoints store twice)."""
    copy, source = state.get(copy_key), state.get(source_key)
    if copy is not None and source is not None and torch.equal(copy, source):
        del state[copy_key]


@dataclass
class AlbertConfig:
    """Configuration of :class:`AlbertModel`, in Hugging Face's field names and defaults
    (those of ALBERT-xxlarge; the tests use tiny ones).

    Attributes:
        vocab_size: token vocabulary size.
        embedding_size: embedding width ``E`` (factorised: ``E`` is small).
        hidden_size: model width ``H``.
        num_hidden_layers: how many layers are applied.
        num_hidden_groups: how many distinct (parameter sets of) layers; 1 = all shared.
        num_attention_heads: attention heads (``hidden_size`` divisible by it).
        intermediate_size: feed-forward hidden width.
        inner_group_num: layers per group; only 1 (every released ALBERT) is supported.
        hidden_act: ``"gelu_new"`` (tanh GELU), ``"gelu"``, ``"gelu_pytorch_tanh"``, ``"relu"``.
        hidden_dropout_prob: embedding and residual dropout.
        attention_probs_dropout_prob: attention-weight dropout.
        max_position_embeddings: number of learned positions.
        type_vocab_size: number of segment types.
        initializer_range: std of the normal initialisation.
        layer_norm_eps: epsilon of every LayerNorm.
        classifier_dropout_prob: dropout before the sentence-order classifier.
        pad_token_id: padding token (its embedding row starts at zero); None for none.
        tie_word_embeddings: the MLM output projection reuses the word embeddings.
        num_labels: sentence-order classes (2).
    """

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_dropout_prob: float = 0.1
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True
    num_labels: int = 2

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "embedding_size",
            "hidden_size",
            "num_hidden_layers",
            "num_hidden_groups",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "num_labels",
        ):
            check_int(getattr(self, name), name)
        check_int(self.type_vocab_size, "type_vocab_size", minimum=0)
        if self.inner_group_num != 1:
            raise ValueError(
                f"`inner_group_num` must be 1 (one layer per group), got {self.inner_group_num}"
            )
        if self.num_hidden_groups > self.num_hidden_layers:
            raise ValueError(
                f"`num_hidden_groups` must be <= num_hidden_layers = {self.num_hidden_layers}, "
                f"got {self.num_hidden_groups}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be divisible by "
                f"`num_attention_heads` ({self.num_attention_heads})"
            )
        hf_activation(self.hidden_act, "hidden_act")
        for name in (
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "classifier_dropout_prob",
        ):
            check_probability(getattr(self, name), name)
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0, got {self.layer_norm_eps}")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"`pad_token_id` must be in [0, {self.vocab_size}) or None, got {self.pad_token_id}"
            )


@dataclass
class AlbertModelOutput:
    """What :class:`AlbertModel` returns.

    Attributes:
        last_hidden_state: ``(batch, n, hidden_size)``.
        pooler_output: ``tanh(pooler(first token))`` ``(batch, hidden_size)``; None without
            a pooler.
        hidden_states: with ``output_hidden_states``: the projected embeddings and every
            layer's output, ``num_hidden_layers + 1`` tensors ``(batch, n, hidden_size)``.
        attentions: with ``output_attentions``: every layer's weights
            ``(batch, heads, n, n)``.
    """

    last_hidden_state: Tensor
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


# Regex pieces of the key maps: group 1 is the optional "albert." prefix, group 2 the group.
_HF_LAYER = r"encoder\.albert_layer_groups\.(\d+)\.albert_layers\.0\."
_HF_LAYER_OUT = r"encoder.albert_layer_groups.\2.albert_layers.0."
_GROUP = r"layer_groups\.(\d+)\."


class _AlbertPretrained(PretrainedMixin):
    """The checkpoint conversion both ALBERT classes share (with or without ``albert.``)."""

    config_class = AlbertConfig
    hf_to_zoo_rules = (
        (r"^((?:albert\.)?)embeddings\.LayerNorm\.", r"\1embeddings.norm."),
        (
            r"^((?:albert\.)?)encoder\.embedding_hidden_mapping_in\.",
            r"\1embedding_hidden_mapping_in.",
        ),
        (rf"^((?:albert\.)?){_HF_LAYER}attention\.dense\.", r"\1layer_groups.\2.attention.out."),
        (
            rf"^((?:albert\.)?){_HF_LAYER}attention\.LayerNorm\.",
            r"\1layer_groups.\2.attention_norm.",
        ),
        (rf"^((?:albert\.)?){_HF_LAYER}attention\.", r"\1layer_groups.\2.attention."),
        (rf"^((?:albert\.)?){_HF_LAYER}ffn_output\.", r"\1layer_groups.\2.ffn.output."),
        (rf"^((?:albert\.)?){_HF_LAYER}ffn\.", r"\1layer_groups.\2.ffn.intermediate."),
        (rf"^((?:albert\.)?){_HF_LAYER}full_layer_layer_norm\.", r"\1layer_groups.\2.ffn_norm."),
        (r"^predictions\.LayerNorm\.", "predictions.norm."),
        (r"^sop_classifier\.classifier\.", "sop_classifier."),
    )
    zoo_to_hf_rules = (
        (r"^((?:albert\.)?)embeddings\.norm\.", r"\1embeddings.LayerNorm."),
        (
            r"^((?:albert\.)?)embedding_hidden_mapping_in\.",
            r"\1encoder.embedding_hidden_mapping_in.",
        ),
        (rf"^((?:albert\.)?){_GROUP}attention\.out\.", rf"\1{_HF_LAYER_OUT}attention.dense."),
        (rf"^((?:albert\.)?){_GROUP}attention_norm\.", rf"\1{_HF_LAYER_OUT}attention.LayerNorm."),
        (rf"^((?:albert\.)?){_GROUP}attention\.", rf"\1{_HF_LAYER_OUT}attention."),
        (rf"^((?:albert\.)?){_GROUP}ffn\.intermediate\.", rf"\1{_HF_LAYER_OUT}ffn."),
        (rf"^((?:albert\.)?){_GROUP}ffn\.output\.", rf"\1{_HF_LAYER_OUT}ffn_output."),
        (rf"^((?:albert\.)?){_GROUP}ffn_norm\.", rf"\1{_HF_LAYER_OUT}full_layer_layer_norm."),
        (r"^predictions\.norm\.", "predictions.LayerNorm."),
        (r"^sop_classifier\.", "sop_classifier.classifier."),
    )

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> AlbertConfig:
        if "num_labels" not in hf and isinstance(hf.get("id2label"), dict):
            hf = {**hf, "num_labels": len(hf["id2label"])}
        return config_from_dict(AlbertConfig, hf, "albert")

    @classmethod
    def config_to_hf(cls, config: AlbertConfig) -> dict[str, Any]:
        hf = asdict(config)
        del hf["num_labels"]  # transformers derives it from id2label
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(config.num_labels)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(config.num_labels)}
        return {**hf, "model_type": "albert", "architectures": [cls.__name__]}

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        state = dict(state)
        # predictions.decoder.bias is Hugging Face's tied alias of predictions.bias.
        state.pop("predictions.decoder.bias", None)
        drop_tied_copy(
            state, "predictions.decoder.weight", "albert.embeddings.word_embeddings.weight"
        )
        return state

    @classmethod
    def transform_to_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        state = dict(state)
        # transformers keeps the bias as predictions.decoder.bias too; an untied checkpoint
        # needs it written out.
        if "predictions.bias" in state:
            state["predictions.decoder.bias"] = state["predictions.bias"]
        return state


class AlbertModel(_AlbertPretrained, nn.Module):
    """ALBERT encoder: factorised embeddings, shared layers, pooler.

    Args:
        config: an :class:`AlbertConfig`.
        add_pooling_layer: include the pooler (``pooler``, Linear ``H -> H`` then tanh on the
            first token).

    Parameters: ``embeddings`` (width ``E``), ``embedding_hidden_mapping_in`` (Linear
    ``E -> H``), ``layer_groups.{g}`` (``num_hidden_groups`` encoder layers) and ``pooler``.
    """

    def __init__(self, config: AlbertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        if not isinstance(config, AlbertConfig):
            raise TypeError(f"`config` must be an AlbertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = Embeddings(
            config.vocab_size,
            config.embedding_size,
            max_len=config.max_position_embeddings,
            positions="learned",
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.layer_norm_eps,
            dropout=config.hidden_dropout_prob,
            padding_idx=config.pad_token_id,
        )
        self.embedding_hidden_mapping_in = nn.Linear(config.embedding_size, config.hidden_size)
        self.layer_groups = nn.ModuleList(
            EncoderLayer(
                config.hidden_size,
                config.num_attention_heads,
                ffn_dim=config.intermediate_size,
                activation=hf_activation(config.hidden_act, "hidden_act"),
                dropout=config.hidden_dropout_prob,
                attention_dropout=config.attention_probs_dropout_prob,
                activation_dropout=0.0,
                norm_first=False,
                layer_norm_eps=config.layer_norm_eps,
            )
            for _ in range(config.num_hidden_groups)
        )
        self.pooler = (
            nn.Linear(config.hidden_size, config.hidden_size) if add_pooling_layer else None
        )
        init_hf_weights(self, config.initializer_range)
        self.gradient_checkpointing = False

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute every layer in the backward pass instead of keeping its activations (a
        shared layer once per use), by the encoder stacks' rule
        (:func:`~attnzoo.transformers_zoo.stacks.set_gradient_checkpointing`): only in
        training mode with gradients on. ``enabled=False`` switches it back off."""
        set_gradient_checkpointing(self, enabled)

    def group_of_layer(self, index: int) -> int:
        """Which of ``layer_groups`` computes layer ``index`` (Hugging Face's formula)."""
        config = self.config
        return int(index / (config.num_hidden_layers / config.num_hidden_groups))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> AlbertModelOutput:
        """Encode ``input_ids``.

        Args:
            input_ids: ``(batch, n)`` ids in ``[0, vocab_size)``.
            attention_mask: ``(batch, n)`` boolean or integer 0/1, 1/True = real token
                (Hugging Face's interface, see the module docstring); default all real.
            token_type_ids: ``(batch, n)`` segment ids; default zeros.
            position_ids: ``(batch, n)`` or ``(1, n)``; default ``0 .. n - 1``.
            output_attentions: return every layer's attention weights.
            output_hidden_states: return the projected embeddings and every layer's output.
        """
        mask = hf_attention_mask(attention_mask, check_tensor(input_ids, "input_ids").shape)
        x = embed(self.embeddings, input_ids, token_type_ids, position_ids)  # (b, n, E)
        x = self.embedding_hidden_mapping_in(x)  # (b, n, H)
        hidden = [x] if output_hidden_states else None
        attentions: list[Tensor] | None = [] if output_attentions else None
        for i in range(self.config.num_hidden_layers):
            layer = self.layer_groups[self.group_of_layer(i)]  # shared across layers
            if attentions is not None:
                x, weights = run_layer(self, layer, x, mask=mask, output_attentions=True)
                attentions.append(weights)
            else:
                x = run_layer(self, layer, x, mask=mask)
            if hidden is not None:
                hidden.append(x)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return AlbertModelOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )


class AlbertMLMHead(nn.Module):
    """Masked-LM head: ``dense`` (``H -> E``), activation, ``norm``, then the output
    projection ``(E -> vocab)``, whose weight is the word embedding matrix when tied (else
    its own ``decoder``) and whose bias is ``bias``."""

    def __init__(self, config: AlbertConfig) -> None:
        super().__init__()
        self.activation = hf_activation(config.hidden_act, "hidden_act")
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.norm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.embedding_size, config.vocab_size, bias=False)
        )

    def forward(self, x: Tensor, word_embeddings: Tensor) -> Tensor:
        """``(batch, n, H)`` -> logits ``(batch, n, vocab)``; ``word_embeddings`` is the
        ``(vocab, E)`` matrix used when tied."""
        h = self.norm(activate(self.dense(x), self.activation))
        weight = word_embeddings if self.decoder is None else self.decoder.weight
        return F.linear(h, weight, self.bias)


@dataclass
class AlbertForPreTrainingOutput:
    """What :class:`AlbertForPreTraining` returns.

    Attributes:
        loss: with both ``labels`` and ``sentence_order_label``: MLM cross-entropy (over
            labels != -100) + sentence-order cross-entropy, a scalar.
        prediction_logits: ``(batch, n, vocab_size)``.
        sop_logits: ``(batch, num_labels)``.
        hidden_states, attentions: as in :class:`AlbertModelOutput`.
    """

    loss: Tensor | None
    prediction_logits: Tensor
    sop_logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


class AlbertForPreTraining(_AlbertPretrained, nn.Module):
    """ALBERT with its masked-LM and sentence-order-prediction heads.

    Parameters: ``albert`` (:class:`AlbertModel`), ``predictions`` (:class:`AlbertMLMHead`)
    and ``sop_classifier`` (Linear ``H -> num_labels``).
    """

    def __init__(self, config: AlbertConfig) -> None:
        super().__init__()
        self.config = config
        self.albert = AlbertModel(config)
        self.predictions = AlbertMLMHead(config)
        self.sop_dropout = nn.Dropout(config.classifier_dropout_prob)
        self.sop_classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_hf_weights(self.predictions, config.initializer_range)
        init_hf_weights(self.sop_classifier, config.initializer_range)
        nn.init.zeros_(self.predictions.bias)

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Checkpoint the encoder's layers (:meth:`AlbertModel.gradient_checkpointing_enable`)."""
        self.albert.gradient_checkpointing_enable(enabled)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        sentence_order_label: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> AlbertForPreTrainingOutput:
        """Pre-training logits and, with both label tensors, the summed loss.

        Args:
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions,
                output_hidden_states: as in :meth:`AlbertModel.forward`.
            labels: ``(batch, n)`` MLM targets in ``[0, vocab_size)``, -100 = ignored.
            sentence_order_label: ``(batch,)`` 0 = original order, 1 = swapped.
        """
        if (labels is None) != (sentence_order_label is None):
            missing = "sentence_order_label" if labels is not None else "labels"
            raise ValueError(f"`{missing}` is required too: the loss needs both label tensors")
        out = self.albert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        assert out.pooler_output is not None
        word_embeddings = self.albert.embeddings.word_embeddings.weight
        prediction_logits = self.predictions(out.last_hidden_state, word_embeddings)
        sop_logits = self.sop_classifier(self.sop_dropout(out.pooler_output))
        loss = None
        if labels is not None and sentence_order_label is not None:
            loss = masked_lm_loss(prediction_logits, labels) + sequence_label_loss(
                sop_logits, sentence_order_label, "sentence_order_label"
            )
        return AlbertForPreTrainingOutput(
            loss=loss,
            prediction_logits=prediction_logits,
            sop_logits=sop_logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


def sequence_label_loss(logits: Tensor, labels: Tensor, name: str) -> Tensor:
    """Mean cross-entropy of ``logits`` ``(batch, classes)`` against ``labels`` ``(batch,)``."""
    check_rank(labels, 1, name, "(batch,)")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(f"`{name}` must have {logits.shape[0]} entries, got {labels.shape[0]}")
    check_token_ids(labels, logits.shape[-1], name)
    return F.cross_entropy(logits.float(), labels)


__all__ = [
    "AlbertConfig",
    "AlbertForPreTraining",
    "AlbertForPreTrainingOutput",
    "AlbertMLMHead",
    "AlbertModel",
    "AlbertModelOutput",
]
