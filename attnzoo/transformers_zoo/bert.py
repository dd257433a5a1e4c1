"""BERT (Devlin et al. 2019) on the library's blocks, loading Hugging Face checkpoints.

The model is :class:`BertEmbeddings` (token + segment + learned position, LayerNorm,
dropout), a post-LN :class:`~attnzoo.transformers_zoo.stacks.TransformerEncoder`, and a
pooler (``tanh(dense(h[:, 0]))``). The heads are the ones Hugging Face ``transformers``
ships: masked LM (transform ``dense -> act -> LayerNorm`` then the word embeddings,
transposed, plus a bias), pre-training (masked LM + next-sentence prediction), sequence
classification (pooled output), token classification and extractive question answering
(per-token logits). With labels each head returns the loss Hugging Face computes.

Checkpoints: ``from_pretrained(dir)`` reads a local Hugging Face directory
(``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) and loads it strictly
(any missing or unknown key is a ``ValueError`` listing them); ``save_pretrained(dir)``
writes one that ``transformers.BertModel.from_pretrained`` (or the matching head class)
reads back. The key map (Hugging Face -> here; headed models keep the ``bert.`` prefix)::

    embeddings.LayerNorm                       -> embeddings.norm
    encoder.layer.{i}.attention.self.{q,k,v}   -> encoder.layers.{i}.attention.{q,k,v}
    encoder.layer.{i}.attention.output.dense   -> encoder.layers.{i}.attention.out
    encoder.layer.{i}.attention.output.LayerNorm -> encoder.layers.{i}.attention_norm
    encoder.layer.{i}.intermediate.dense       -> encoder.layers.{i}.ffn.intermediate
    encoder.layer.{i}.output.dense             -> encoder.layers.{i}.ffn.output
    encoder.layer.{i}.output.LayerNorm         -> encoder.layers.{i}.ffn_norm
    cls.predictions.transform.LayerNorm        -> cls.predictions.transform.norm

Every other key keeps its name. ``cls.predictions.decoder.{weight,bias}`` are copies of the
word embeddings and of ``cls.predictions.bias`` (tied); they are checked to be equal and
dropped on load, and left out on save, as ``transformers`` does. The constant
``embeddings.position_ids`` buffer that older checkpoints hold is dropped.

Masks: ``attention_mask`` follows Hugging Face's documented interface, 1 (or True) = real
token, 0 (or False) = padding; an integer 0/1 tensor is accepted here, as the one exception
to the library's boolean-only masks. A float mask is a ``TypeError``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_rank, check_tensor, check_token_ids
from .checkpoints import PretrainedMixin, hf_activation, hf_attention_mask, init_hf_weights
from .embeddings import Embeddings
from .feed_forward import activate
from .stacks import StackConfig, TransformerEncoder, set_gradient_checkpointing

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


@dataclass
class BertConfig:
    """BERT hyper-parameters, with Hugging Face ``BertConfig``'s names and defaults.

    Attributes:
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads, intermediate_size:
            the model's shape.
        hidden_act: ``"gelu"`` (erf), ``"gelu_new"``/``"gelu_pytorch_tanh"`` (tanh
            approximation) or ``"relu"``; used in the feed-forward and the LM transform.
        hidden_dropout_prob: embedding, residual and feed-forward dropout.
        attention_probs_dropout_prob: dropout on the attention weights.
        max_position_embeddings: number of learned positions.
        type_vocab_size: number of segment types.
        layer_norm_eps: epsilon of every LayerNorm.
        pad_token_id: the padding token (its embedding row is kept at zero).
        initializer_range: std of the normal initialisation of a model built from scratch.
        num_labels: outputs of the classification heads (2 for question answering).
        classifier_dropout: dropout before the classifiers; default ``hidden_dropout_prob``.
        problem_type: sequence-classification loss: ``"regression"`` (MSE),
            ``"single_label_classification"`` (cross-entropy),
            ``"multi_label_classification"`` (BCE with logits), or None to choose from the
            labels as Hugging Face does.
    """

    model_type: ClassVar[str] = "bert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    num_labels: int = 2
    classifier_dropout: float | None = None
    problem_type: str | None = None

    def __post_init__(self) -> None:
        hf_activation(self.hidden_act, "hidden_act")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"`problem_type` must be one of {PROBLEM_TYPES} or None, got {self.problem_type!r}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"`pad_token_id` must be in [0, {self.vocab_size}), got {self.pad_token_id}"
            )

    def stack_config(self) -> StackConfig:
        """The post-LN encoder stack of this config."""
        return StackConfig(
            dim=self.hidden_size,
            heads=self.num_attention_heads,
            depth=self.num_hidden_layers,
            ffn_dim=self.intermediate_size,
            activation=hf_activation(self.hidden_act, "hidden_act"),
            dropout=self.hidden_dropout_prob,
            attention_dropout=self.attention_probs_dropout_prob,
            activation_dropout=0.0,
            norm_first=False,
            layer_norm_eps=self.layer_norm_eps,
        )

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> BertConfig:
        """Build the config from a Hugging Face ``config.json`` dict.

        Raises:
            ValueError: the ``model_type`` is another family's, or the checkpoint uses a
                feature this implementation lacks (relative positions, a decoder).
        """
        model_type = hf.get("model_type", cls.model_type)
        if model_type != cls.model_type:
            raise ValueError(
                f"config.json `model_type` must be {cls.model_type!r}, got {model_type!r}"
            )
        position_type = hf.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(
                f"config.json `position_embedding_type` must be 'absolute', got {position_type!r}"
            )
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ValueError("config.json describes a decoder; only the encoder is implemented")
        values = {f.name: hf[f.name] for f in fields(cls) if f.name in hf}
        if "id2label" in hf:
            values["num_labels"] = len(hf["id2label"])
        return cls(**values)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` dict of this config."""
        hf = asdict(self)
        labels = hf.pop("num_labels")
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(labels)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(labels)}
        hf.update(model_type=self.model_type, position_embedding_type="absolute")
        return hf


# Hugging Face -> library key rules; the first that matches a key rewrites it.
_LAYER = r"(^|\.)encoder\.layer\.(\d+)\."
HF_TO_ZOO_RULES: tuple[tuple[str, str], ...] = (
    (
        _LAYER + r"attention\.self\.(query|key|value)\.",
        r"\g<1>encoder.layers.\g<2>.attention.\g<3>.",
    ),
    (_LAYER + r"attention\.output\.dense\.", r"\g<1>encoder.layers.\g<2>.attention.out."),
    (_LAYER + r"attention\.output\.LayerNorm\.", r"\g<1>encoder.layers.\g<2>.attention_norm."),
    (_LAYER + r"intermediate\.dense\.", r"\g<1>encoder.layers.\g<2>.ffn.intermediate."),
    (_LAYER + r"output\.dense\.", r"\g<1>encoder.layers.\g<2>.ffn.output."),
    (_LAYER + r"output\.LayerNorm\.", r"\g<1>encoder.layers.\g<2>.ffn_norm."),
    (r"(^|\.)embeddings\.LayerNorm\.", r"\g<1>embeddings.norm."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "cls.predictions.transform.norm."),
)
_ZOO_LAYER = r"(^|\.)encoder\.layers\.(\d+)\."
ZOO_TO_HF_RULES: tuple[tuple[str, str], ...] = (
    (
        _ZOO_LAYER + r"attention\.(query|key|value)\.",
        r"\g<1>encoder.layer.\g<2>.attention.self.\g<3>.",
    ),
    (_ZOO_LAYER + r"attention\.out\.", r"\g<1>encoder.layer.\g<2>.attention.output.dense."),
    (_ZOO_LAYER + r"attention_norm\.", r"\g<1>encoder.layer.\g<2>.attention.output.LayerNorm."),
    (_ZOO_LAYER + r"ffn\.intermediate\.", r"\g<1>encoder.layer.\g<2>.intermediate.dense."),
    (_ZOO_LAYER + r"ffn\.output\.", r"\g<1>encoder.layer.\g<2>.output.dense."),
    (_ZOO_LAYER + r"ffn_norm\.", r"\g<1>encoder.layer.\g<2>.output.LayerNorm."),
    (r"(^|\.)embeddings\.norm\.", r"\g<1>embeddings.LayerNorm."),
    (r"^cls\.predictions\.transform\.norm\.", "cls.predictions.transform.LayerNorm."),
)


class BertEmbeddings(Embeddings):
    """Token + segment + learned position embeddings, LayerNorm, dropout (BERT's).

    Parameters ``word_embeddings``, ``position_embeddings``, ``token_type_embeddings``,
    ``norm`` (see :class:`~attnzoo.transformers_zoo.embeddings.Embeddings`).
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__(
            config.vocab_size,
            config.hidden_size,
            max_len=config.max_position_embeddings,
            positions="learned",
            type_vocab_size=config.type_vocab_size,
            layer_norm_eps=config.layer_norm_eps,
            dropout=config.hidden_dropout_prob,
            padding_idx=config.pad_token_id,
        )
        self.pad_token_id = config.pad_token_id

    def default_position_ids(self, input_ids: Tensor) -> Tensor:
        """``0 .. n - 1`` for every row: ``(1, n)`` int64."""
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Embed ``input_ids`` ``(batch, n)`` into ``(batch, n, hidden_size)``.

        ``token_type_ids`` ``(batch, n)`` default to 0; ``position_ids`` (broadcastable to
        ``(batch, n)``) default to :meth:`default_position_ids`.
        """
        check_rank(input_ids, 2, "input_ids", "(batch, n)")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        elif token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"`token_type_ids` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                f"got {tuple(token_type_ids.shape)}"
            )
        if position_ids is None:
            position_ids = self.default_position_ids(input_ids)
        assert self.token_type_embeddings is not None and self.position_embeddings is not None
        assert self.norm is not None
        # The sum in Hugging Face's order, so float32 results agree to the last bits.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(position_ids)
        return self.dropout(self.norm(x))


class BertPooler(nn.Module):
    """``tanh(dense(h[:, 0]))``: ``(batch, n, dim) -> (batch, dim)``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


@dataclass
class BertModelOutput:
    """:class:`BertModel` output.

    Attributes:
        last_hidden_state: ``(batch, n, hidden_size)``.
        pooler_output: ``(batch, hidden_size)``, or None without a pooler.
        hidden_states: with ``output_hidden_states``: the embeddings and every layer's
            output, ``num_hidden_layers + 1`` tensors ``(batch, n, hidden_size)``.
        attentions: with ``output_attentions``: every layer's ``(batch, heads, n, n)``.
    """

    last_hidden_state: Tensor
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class HeadOutput:
    """Output of the heads.

    Attributes:
        logits: the head's scores: ``(batch, n, vocab_size)`` (masked LM),
            ``(batch, num_labels)`` (sequence classification), ``(batch, n, num_labels)``
            (token classification); None for question answering.
        loss: scalar, when labels were given.
        hidden_states, attentions: as in :class:`BertModelOutput`.
        seq_relationship_logits: pre-training: next-sentence scores ``(batch, 2)``.
        start_logits, end_logits: question answering: ``(batch, n)`` each.
    """

    logits: Tensor | None = None
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    seq_relationship_logits: Tensor | None = None
    start_logits: Tensor | None = None
    end_logits: Tensor | None = None


class BertPreTrainedModel(PretrainedMixin, nn.Module):
    """What every BERT-family class shares: the config, the checkpoint key maps, and the
    dropping of constant buffers and tied copies found in Hugging Face checkpoints."""

    config_class: ClassVar[type] = BertConfig
    base_model_prefix: ClassVar[str] = "bert"
    hf_to_zoo_rules = HF_TO_ZOO_RULES
    zoo_to_hf_rules = ZOO_TO_HF_RULES
    # Tied copies in Hugging Face checkpoints: {copy key: key it must equal}.
    tied_copies: ClassVar[dict[str, str]] = {}

    config: BertConfig

    def init_weights(self) -> None:
        """Hugging Face's initialisation: normal(0, ``initializer_range``) for linear and
        embedding weights, zero biases and padding rows, LayerNorm 1 and 0. PyTorch's
        defaults (unit-normal embeddings feeding a tied output layer) start pretraining far
        above the chance-level loss; checkpoints overwrite all of it."""
        init_hf_weights(self, self.config.initializer_range)

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute every encoder layer in the backward pass instead of keeping its
        activations (:func:`~attnzoo.transformers_zoo.stacks.set_gradient_checkpointing`);
        ``enabled=False`` switches it back off."""
        set_gradient_checkpointing(self, enabled)  # type: ignore[arg-type]

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> BertConfig:
        return cls.config_class.from_hf(hf)  # type: ignore[attr-defined, no-any-return]

    @classmethod
    def config_to_hf(cls, config: BertConfig) -> dict[str, Any]:
        hf = config.to_hf()
        hf["architectures"] = [cls.__name__]
        return hf

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Drop constant buffers and check-then-drop tied copies."""
        state = {
            key: value
            for key, value in state.items()
            if not key.endswith(("embeddings.position_ids", "embeddings.token_type_ids"))
        }
        for copy, source in cls.tied_copies.items():
            if copy in state:
                if source in state and not torch.equal(state[copy], state[source]):
                    raise ValueError(
                        f"checkpoint key {copy!r} differs from {source!r}; this model ties "
                        "them and cannot load untied weights"
                    )
                del state[copy]
        return state

    def _base(self) -> BertModel:
        return getattr(self, self.base_model_prefix)  # type: ignore[no-any-return]

    def _classifier_dropout(self) -> nn.Dropout:
        rate = self.config.classifier_dropout
        return nn.Dropout(self.config.hidden_dropout_prob if rate is None else rate)


class BertModel(BertPreTrainedModel):
    """BERT encoder: embeddings, post-LN transformer encoder, optional pooler.

    Args:
        config: a :class:`BertConfig`.
        add_pooling_layer: build the pooler (the masked-LM and token heads go without).

    Parameters: ``embeddings.*``, ``encoder.layers.{i}.*``, ``pooler.dense``.
    """

    embeddings_class: ClassVar[type[BertEmbeddings]] = BertEmbeddings

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"`config` must be a {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.config = config
        self.embeddings = self.embeddings_class(config)
        self.encoder = TransformerEncoder(config.stack_config())
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> BertModelOutput:
        """Encode ``input_ids``.

        Args:
            input_ids: ``(batch, n)`` in ``[0, vocab_size)``.
            attention_mask: ``(batch, n)`` bool or integer 0/1, 1 = real token (see
                :func:`~attnzoo.transformers_zoo.checkpoints.hf_attention_mask`); None = no padding.
            token_type_ids: ``(batch, n)`` segment ids; default 0.
            position_ids: ``(batch, n)`` (or ``(1, n)``); default the family's positions.
            output_attentions, output_hidden_states: collect them.
        """
        mask = hf_attention_mask(attention_mask, input_ids.shape)
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        out = self.encoder(
            x,
            mask=mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        pooled = self.pooler(out.last_hidden_state) if self.pooler is not None else None
        return BertModelOutput(out.last_hidden_state, pooled, out.hidden_states, out.attentions)


class BertPredictionHeadTransform(nn.Module):
    """``norm(act(dense(h)))``, the masked-LM transform: ``(..., dim) -> (..., dim)``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.activation = hf_activation(config.hidden_act, "hidden_act")

    def forward(self, h: Tensor) -> Tensor:
        return self.norm(activate(self.dense(h), self.activation))


class BertLMPredictionHead(nn.Module):
    """Transform, then scores over the vocabulary with the (tied) word embeddings.

    ``forward(h, word_embeddings)``: ``(batch, n, dim)``, ``(vocab, dim)`` ->
    ``(batch, n, vocab)``. Parameters ``transform.*`` and ``bias`` ``(vocab,)``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: Tensor, word_embeddings: Tensor) -> Tensor:
        return F.linear(self.transform(h), word_embeddings, self.bias)


class BertHeads(nn.Module):
    """``predictions`` (masked LM) and, for pre-training, ``seq_relationship`` (NSP)."""

    def __init__(self, config: BertConfig, next_sentence: bool) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2) if next_sentence else None


_LM_TIES = {
    "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the vocabulary; label -100 = not predicted (Hugging Face's)."""
    check_tensor(labels, "labels")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`labels` must have shape {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}"
        )
    check_token_ids(labels[labels != -100], logits.shape[-1], "labels")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


class BertForMaskedLM(BertPreTrainedModel):
    """BERT with the masked-LM head (no pooler).

    ``forward(..., labels=None)``: ``labels`` ``(batch, n)``, -100 where not predicted;
    returns :class:`HeadOutput` with ``logits`` ``(batch, n, vocab_size)``.
    """

    tied_copies = _LM_TIES

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertHeads(config, next_sentence=False)
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
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_attentions,
            output_hidden_states,
        )
        words = self.bert.embeddings.word_embeddings.weight
        logits = self.cls.predictions(out.last_hidden_state, words)
        loss = masked_lm_loss(logits, labels) if labels is not None else None
        return HeadOutput(logits, loss, out.hidden_states, out.attentions)


class BertForPreTraining(BertPreTrainedModel):
    """BERT with the masked-LM and next-sentence heads.

    ``forward(..., labels=None, next_sentence_label=None)``: ``labels`` ``(batch, n)``
    (-100 = not predicted), ``next_sentence_label`` ``(batch,)`` (0 = B follows A). Both
    or neither: the loss is their sum, as Hugging Face computes it. Returns
    :class:`HeadOutput` with ``logits`` ``(batch, n, vocab_size)`` and
    ``seq_relationship_logits`` ``(batch, 2)``.
    """

    tied_copies = _LM_TIES

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertHeads(config, next_sentence=True)
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        next_sentence_label: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> HeadOutput:
        if (labels is None) != (next_sentence_label is None):
            raise ValueError(
                "`labels` and `next_sentence_label` must be given together (the loss is their sum)"
            )
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_attentions,
            output_hidden_states,
        )
        words = self.bert.embeddings.word_embeddings.weight
        logits = self.cls.predictions(out.last_hidden_state, words)
        assert self.cls.seq_relationship is not None and out.pooler_output is not None
        nsp = self.cls.seq_relationship(out.pooler_output)
        loss = None
        if labels is not None and next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp.reshape(-1, 2), next_sentence_label.reshape(-1))
            loss = masked_lm_loss(logits, labels) + nsp_loss
        return HeadOutput(logits, loss, out.hidden_states, out.attentions, nsp)


def sequence_classification_loss(
    logits: Tensor, labels: Tensor, problem_type: str | None
) -> Tensor:
    """Hugging Face's sequence-classification loss.

    ``problem_type`` None chooses: one label -> regression (MSE), integer labels ->
    single-label (cross-entropy), else multi-label (BCE with logits, float ``labels``
    ``(batch, num_labels)``).
    """
    num_labels = logits.shape[-1]
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.reshape(-1, num_labels), labels.reshape(-1))
    return F.binary_cross_entropy_with_logits(logits, labels)


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT with a classifier (or regressor) on the pooled output.

    ``forward(..., labels=None)``: ``labels`` ``(batch,)`` class ids, ``(batch,)`` floats
    (``num_labels == 1``), or ``(batch, num_labels)`` 0/1 floats (multi-label); see
    :func:`sequence_classification_loss`. Returns ``logits`` ``(batch, num_labels)``.
    Parameters ``bert.*``, ``classifier``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.dropout = self._classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
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
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_attentions,
            output_hidden_states,
        )
        assert out.pooler_output is not None
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, self.config.problem_type)
        return HeadOutput(logits, loss, out.hidden_states, out.attentions)


class BertForTokenClassification(BertPreTrainedModel):
    """BERT with a per-token classifier (no pooler).

    ``forward(..., labels=None)``: ``labels`` ``(batch, n)``, -100 = ignored; returns
    ``logits`` ``(batch, n, num_labels)``. Parameters ``bert.*``, ``classifier``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.dropout = self._classifier_dropout()
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
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
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_attentions,
            output_hidden_states,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return HeadOutput(logits, loss, out.hidden_states, out.attentions)


class BertForQuestionAnswering(BertPreTrainedModel):
    """BERT with span start/end scores per token (no pooler).

    ``qa_outputs`` maps each token to ``num_labels`` (= 2) scores: start and end.
    ``forward(..., start_positions=None, end_positions=None)``: ``(batch,)`` token
    indices; positions outside ``[0, n)`` are clamped to ``n`` and ignored, and the loss is
    the mean of the start and end cross-entropies (Hugging Face's). Returns
    ``start_logits`` and ``end_logits`` ``(batch, n)``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.num_labels != 2:
            raise ValueError(
                f"`num_labels` must be 2 (start, end) for question answering, "
                f"got {config.num_labels}"
            )
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        start_positions: Tensor | None = None,
        end_positions: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> HeadOutput:
        if (start_positions is None) != (end_positions is None):
            raise ValueError("`start_positions` and `end_positions` must be given together")
        out = self.bert(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            output_attentions,
            output_hidden_states,
        )
        start, end = self.qa_outputs(out.last_hidden_state).unbind(dim=-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start.shape[1]
            start_positions = start_positions.reshape(-1).clamp(0, ignored)
            end_positions = end_positions.reshape(-1).clamp(0, ignored)
            start_loss = F.cross_entropy(start, start_positions, ignore_index=ignored)
            end_loss = F.cross_entropy(end, end_positions, ignore_index=ignored)
            loss = (start_loss + end_loss) / 2
        return HeadOutput(
            None, loss, out.hidden_states, out.attentions, start_logits=start, end_logits=end
        )


__all__ = [
    "BertConfig",
    "BertEmbeddings",
    "BertForMaskedLM",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertModelOutput",
    "BertPooler",
    "BertPreTrainedModel",
    "HeadOutput",
    "masked_lm_loss",
    "sequence_classification_loss",
]
