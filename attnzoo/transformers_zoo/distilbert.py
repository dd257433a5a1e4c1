"""DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of BERT: smaller, faster,
cheaper and lighter"), read top to bottom, loading and saving Hugging Face checkpoints.

DistilBERT is BERT-base with half the layers, no segment (token-type) embeddings and no
pooler: token + position embeddings, LayerNorm (eps 1e-12, fixed as in Hugging Face) and
dropout, then ``n_layers`` post-LN
:class:`~attnzoo.transformers_zoo.layers.EncoderLayer` s (a
:class:`~attnzoo.transformers_zoo.stacks.TransformerEncoder`, LayerNorm eps 1e-12).
:class:`DistilBertForMaskedLM` adds the masked-LM head: ``vocab_transform`` (Linear
``dim -> dim``), the activation, ``vocab_layer_norm``, and ``vocab_projector``, whose
weight is the word embedding matrix when tied.

With ``sinusoidal_pos_embds`` the position table starts as the fixed sinusoids of Vaswani et
al. 2017 and is frozen (``requires_grad=False``); it stays a state-dict entry, as in the
Hugging Face checkpoint.

Hugging Face key map (``DistilBertModel``; ``DistilBertForMaskedLM`` adds ``distilbert.``)::

    embeddings.LayerNorm.*                       -> embeddings.norm.*
    embeddings.{word,position}_embeddings.*      -> the same
    transformer.layer.{i}.attention.q_lin.*      -> encoder.layers.{i}.attention.query.*
        (k_lin -> key, v_lin -> value, out_lin -> out)
    transformer.layer.{i}.sa_layer_norm.*        -> encoder.layers.{i}.attention_norm.*
    transformer.layer.{i}.ffn.lin1.*             -> encoder.layers.{i}.ffn.intermediate.*
    transformer.layer.{i}.ffn.lin2.*             -> encoder.layers.{i}.ffn.output.*
    transformer.layer.{i}.output_layer_norm.*    -> encoder.layers.{i}.ffn_norm.*
    vocab_transform.*, vocab_layer_norm.*, vocab_projector.bias: the same
    vocab_projector.weight (untied only; a tied copy is dropped on load)

``attention_mask`` may be boolean or integer 0/1 (Hugging Face's interface; 1 = real token),
see :func:`~attnzoo.transformers_zoo.checkpoints.hf_attention_mask`.

Dropout sits where Hugging Face's DistilBERT puts it: on the embeddings, the attention
weights and the feed-forward output; none on the attention output or the feed-forward hidden
activations.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int, check_probability, check_tensor
from .albert import (
    config_from_dict,
    drop_tied_copy,
    embed,
)
from .bert import masked_lm_loss
from .checkpoints import PretrainedMixin, hf_activation, hf_attention_mask, init_hf_weights
from .embeddings import Embeddings, LearnedPositionalEmbedding, sinusoidal_table
from .feed_forward import activate
from .stacks import StackConfig, StackOutput, TransformerEncoder, set_gradient_checkpointing

LAYER_NORM_EPS = 1e-12
"""DistilBERT's LayerNorm epsilon (fixed in Hugging Face, not a config field)."""


@dataclass
class DistilBertConfig:
    """Configuration of :class:`DistilBertModel`, in Hugging Face's field names and defaults
    (those of distilbert-base).

    Attributes:
        vocab_size: token vocabulary size.
        max_position_embeddings: number of positions.
        sinusoidal_pos_embds: start the position table as fixed (frozen) sinusoids.
        n_layers: encoder layers.
        n_heads: attention heads (``dim`` divisible by it).
        dim: model width.
        hidden_dim: feed-forward hidden width.
        dropout: embedding, residual and feed-forward dropout.
        attention_dropout: attention-weight dropout.
        activation: ``"gelu"``, ``"gelu_new"``, ``"gelu_pytorch_tanh"`` or ``"relu"``.
        initializer_range: std of the normal initialisation.
        pad_token_id: padding token (its embedding row starts at zero); None for none.
        tie_word_embeddings: the MLM output projection reuses the word embeddings.
    """

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "max_position_embeddings",
            "n_layers",
            "n_heads",
            "dim",
            "hidden_dim",
        ):
            check_int(getattr(self, name), name)
        if self.dim % self.n_heads:
            raise ValueError(f"`dim` ({self.dim}) must be divisible by `n_heads` ({self.n_heads})")
        hf_activation(self.activation, "activation")
        check_probability(self.dropout, "dropout")
        check_probability(self.attention_dropout, "attention_dropout")
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"`pad_token_id` must be in [0, {self.vocab_size}) or None, got {self.pad_token_id}"
            )

    def stack_config(self) -> StackConfig:
        """The encoder's :class:`~attnzoo.transformers_zoo.stacks.StackConfig` (post-LN)."""
        return StackConfig(
            dim=self.dim,
            heads=self.n_heads,
            depth=self.n_layers,
            ffn_dim=self.hidden_dim,
            activation=hf_activation(self.activation, "activation"),
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            activation_dropout=0.0,
            attention_output_dropout=0.0,
            norm_first=False,
            layer_norm_eps=LAYER_NORM_EPS,
        )


# Per-layer sub-keys, Hugging Face's -> the library's (plain strings, escaped in the rules).
_LAYER_NAMES = (
    ("attention.q_lin.", "attention.query."),
    ("attention.k_lin.", "attention.key."),
    ("attention.v_lin.", "attention.value."),
    ("attention.out_lin.", "attention.out."),
    ("sa_layer_norm.", "attention_norm."),
    ("ffn.lin1.", "ffn.intermediate."),
    ("ffn.lin2.", "ffn.output."),
    ("output_layer_norm.", "ffn_norm."),
)
_PREFIX = r"^((?:distilbert\.)?)"


class _DistilBertPretrained(PretrainedMixin):
    """The checkpoint conversion both DistilBERT classes share (with or without
    ``distilbert.``); group 1 of every rule is that optional prefix."""

    config_class = DistilBertConfig
    hf_to_zoo_rules = (
        (rf"{_PREFIX}embeddings\.LayerNorm\.", r"\1embeddings.norm."),
        *(
            (rf"{_PREFIX}transformer\.layer\.(\d+)\.{re.escape(hf)}", rf"\1encoder.layers.\2.{zoo}")
            for hf, zoo in _LAYER_NAMES
        ),
    )
    zoo_to_hf_rules = (
        (rf"{_PREFIX}embeddings\.norm\.", r"\1embeddings.LayerNorm."),
        *(
            (rf"{_PREFIX}encoder\.layers\.(\d+)\.{re.escape(zoo)}", rf"\1transformer.layer.\2.{hf}")
            for hf, zoo in _LAYER_NAMES
        ),
    )

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute every encoder layer in the backward pass instead of keeping its
        activations (:func:`~attnzoo.transformers_zoo.stacks.set_gradient_checkpointing`);
        ``enabled=False`` switches it back off."""
        set_gradient_checkpointing(self, enabled)  # type: ignore[arg-type]

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> DistilBertConfig:
        return config_from_dict(DistilBertConfig, hf, "distilbert")

    @classmethod
    def config_to_hf(cls, config: DistilBertConfig) -> dict[str, Any]:
        return {**asdict(config), "model_type": "distilbert", "architectures": [cls.__name__]}

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        state = dict(state)
        drop_tied_copy(
            state, "vocab_projector.weight", "distilbert.embeddings.word_embeddings.weight"
        )
        return state


class DistilBertModel(_DistilBertPretrained, nn.Module):
    """DistilBERT encoder.

    Parameters: ``embeddings`` (word and position embeddings, ``norm``) and ``encoder``
    (a :class:`~attnzoo.transformers_zoo.stacks.TransformerEncoder`, ``layers.{i}``).
    """

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        if not isinstance(config, DistilBertConfig):
            raise TypeError(f"`config` must be a DistilBertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = Embeddings(
            config.vocab_size,
            config.dim,
            max_len=config.max_position_embeddings,
            positions="learned",
            type_vocab_size=0,
            layer_norm_eps=LAYER_NORM_EPS,
            dropout=config.dropout,
            padding_idx=config.pad_token_id,
        )
        self.encoder = TransformerEncoder(config.stack_config())
        init_hf_weights(self, config.initializer_range)
        if config.sinusoidal_pos_embds:
            position = self.embeddings.position_embeddings
            assert isinstance(position, LearnedPositionalEmbedding)
            with torch.no_grad():
                position.weight.copy_(sinusoidal_table(config.max_position_embeddings, config.dim))
            position.weight.requires_grad_(False)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> StackOutput:
        """Encode ``input_ids``.

        Args:
            input_ids: ``(batch, n)`` ids in ``[0, vocab_size)``.
            attention_mask: ``(batch, n)`` boolean or integer 0/1, 1/True = real token;
                default all real.
            position_ids: ``(batch, n)`` or ``(1, n)``; default ``0 .. n - 1``.
            output_attentions: return every layer's weights ``(batch, heads, n, n)``.
            output_hidden_states: return the embeddings and every layer's output.

        Returns:
            a :class:`~attnzoo.transformers_zoo.stacks.StackOutput` with
            ``last_hidden_state`` ``(batch, n, dim)``.
        """
        mask = hf_attention_mask(attention_mask, check_tensor(input_ids, "input_ids").shape)
        x = embed(self.embeddings, input_ids, position_ids=position_ids)
        return self.encoder(
            x,
            mask=mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )


@dataclass
class DistilBertMaskedLMOutput:
    """What :class:`DistilBertForMaskedLM` returns.

    Attributes:
        loss: with ``labels``: mean cross-entropy over labels != -100, a scalar.
        logits: ``(batch, n, vocab_size)``.
        hidden_states, attentions: as in :class:`DistilBertModel`'s output.
    """

    loss: Tensor | None
    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


class VocabProjector(nn.Module):
    """The output projection ``dim -> vocab`` with its own ``bias``; the weight is the word
    embedding matrix (tied) or its own ``weight`` (untied)."""

    def __init__(self, dim: int, vocab_size: int, tied: bool) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.weight = None if tied else nn.Parameter(torch.empty(vocab_size, dim))

    def forward(self, x: Tensor, word_embeddings: Tensor) -> Tensor:
        """``(batch, n, dim)`` -> ``(batch, n, vocab)``."""
        return F.linear(x, word_embeddings if self.weight is None else self.weight, self.bias)


class DistilBertForMaskedLM(_DistilBertPretrained, nn.Module):
    """DistilBERT with its masked-LM head.

    Parameters: ``distilbert`` (:class:`DistilBertModel`), ``vocab_transform``,
    ``vocab_layer_norm`` and ``vocab_projector`` (:class:`VocabProjector`).
    """

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        self.config = config
        self.distilbert = DistilBertModel(config)
        self.activation = hf_activation(config.activation, "activation")
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.vocab_projector = VocabProjector(
            config.dim, config.vocab_size, config.tie_word_embeddings
        )
        init_hf_weights(self.vocab_transform, config.initializer_range)
        if self.vocab_projector.weight is not None:
            nn.init.normal_(self.vocab_projector.weight, std=config.initializer_range)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> DistilBertMaskedLMOutput:
        """Masked-LM logits and, with ``labels``, the loss.

        Args:
            input_ids, attention_mask, position_ids, output_attentions,
                output_hidden_states: as in :meth:`DistilBertModel.forward`.
            labels: ``(batch, n)`` targets in ``[0, vocab_size)``, -100 = ignored.
        """
        out = self.distilbert(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        h = activate(self.vocab_transform(out.last_hidden_state), self.activation)
        word_embeddings = self.distilbert.embeddings.word_embeddings.weight
        logits = self.vocab_projector(self.vocab_layer_norm(h), word_embeddings)
        loss = masked_lm_loss(logits, labels) if labels is not None else None
        return DistilBertMaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


__all__ = [
    "DistilBertConfig",
    "DistilBertForMaskedLM",
    "DistilBertMaskedLMOutput",
    "DistilBertModel",
    "VocabProjector",
]
