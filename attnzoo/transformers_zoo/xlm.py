"""XLM (Lample and Conneau 2019, "Cross-lingual Language Model Pretraining"), read top to bottom.

The model is a post-LN transformer encoder over the sum of token, position and (optionally)
language embeddings, with a LayerNorm on that sum; it computes what Hugging Face
``transformers``' ``XLMModel`` and ``XLMWithLMHeadModel`` compute, and loads and saves their
checkpoints (:meth:`XLMModel.from_pretrained`, :meth:`XLMModel.save_pretrained`).

Forward pass of :class:`XLMModel` on ``input_ids`` ``(batch, n)``::

    x = word(input_ids) + position(position_ids) [+ lang(langs)] [+ word(token_type_ids)]
    x = dropout(LayerNorm(x)) * real                 # real: (batch, n, 1), 1 = real token
    for each layer:
        x = LayerNorm(x + dropout(attention(x)))     # post-LN, attention masked as below
        x = LayerNorm(x + dropout(ffn(x)))           # ffn: Linear(d, 4d), GELU or ReLU, Linear
        x = x * real                                 # padded positions are reset to zero

Hugging Face conventions this module keeps, so that outputs match theirs:

* **Which tokens are real.** ``attention_mask`` ``(batch, n)`` when given (1/True = real);
  else ``lengths`` ``(batch,)`` (the first ``lengths[b]`` tokens are real); else the number of
  tokens that are not ``pad_index`` counts as the length (right padding assumed).
* **Attention mask.** An encoder (``causal=False``) masks the padded keys; a causal model masks
  the future only (the padding mask then only zeroes the padded outputs, as in Hugging Face).
* **Token types** (``token_type_ids``) are looked up in the *word* embedding, as XLM does.
* **Languages.** ``langs`` ``(batch, n)`` adds a language embedding when the model has one
  (``use_lang_emb`` and ``n_langs > 1``); otherwise ``langs`` is ignored, as in Hugging Face.
  Without ``langs`` no language vector is added.
* **Sinusoidal positions** (``sinusoidal_embeddings``) are the position table initialised with
  the fixed sinusoids and frozen (``requires_grad=False``, the original XLM's choice); the
  table is a parameter, so it is saved and loaded like a learned one.
* **LM head.** ``pred_layer`` is a Linear with bias whose weight is tied to the word
  embedding; the loss is the mean cross-entropy over all positions whose label is not -100
  (labels are *not* shifted).

The one place the library accepts a 0/1 integer mask is ``attention_mask`` here: it is Hugging
Face's documented interface; it is converted to a boolean mask (values other than 0/1 are a
``ValueError``, floating masks a ``TypeError``). A sequence with no real token gives zero
attention weights (Hugging Face gives uniform ones); its outputs are zero in both.

Parameter names (per layer ``i``; ``XLMWithLMHeadModel`` adds the ``transformer.`` prefix)::

    Hugging Face                      attnzoo
    embeddings.weight                 embeddings.word_embeddings.weight
    position_embeddings.weight        embeddings.position_embeddings.weight
    lang_embeddings.weight            embeddings.lang_embeddings.weight
    layer_norm_emb.*                  embeddings.norm.*
    attentions.i.{q,k,v,out}_lin.*    layers.i.attention.{query,key,value,out}.*
    layer_norm1.i.*                   layers.i.attention_norm.*
    ffns.i.lin1.* / ffns.i.lin2.*     layers.i.ffn.intermediate.* / layers.i.ffn.output.*
    layer_norm2.i.*                   layers.i.ffn_norm.*
    pred_layer.proj.*                 pred_layer.*
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.projection import project
from ..attention.validation import (
    check_int,
    check_probability,
    check_rank,
    check_tensor,
    check_token_ids,
)
from .checkpoints import PretrainedMixin, hf_attention_mask
from .embeddings import Embeddings, LearnedPositionalEmbedding, sinusoidal_table
from .generation import (
    GenerationMixin,
    GenerationOptions,
    GenerationStart,
    check_generation_length,
    check_unpadded_prompt,
)
from .layers import EncoderLayer
from .stacks import run_layer, set_gradient_checkpointing

IGNORE_INDEX = -100
"""Label value the LM loss skips (as ``torch.nn.functional.cross_entropy``)."""


# --------------------------------------------------------------------------- configuration


@dataclass
class XLMConfig:
    """Configuration of :class:`XLMModel`, with Hugging Face ``XLMConfig``'s field names.

    Attributes:
        vocab_size: number of tokens (Hugging Face also calls it ``n_words``).
        emb_dim: model width; the feed-forward width is ``4 * emb_dim``.
        n_layers: number of encoder layers.
        n_heads: attention heads (``emb_dim`` divisible by it).
        dropout: dropout on the embeddings and on every residual branch.
        attention_dropout: dropout on the attention weights.
        gelu_activation: GELU (exact, erf) in the feed-forward network; False gives ReLU.
        sinusoidal_embeddings: initialise the position table with fixed sinusoids and freeze it.
        causal: causal (left-to-right) attention, for CLM-trained checkpoints.
        asm: adaptive softmax head; only False is available (a ``ValueError`` otherwise).
        n_langs: number of languages.
        use_lang_emb: add a language embedding (used only when ``n_langs > 1``).
        max_position_embeddings: number of positions.
        layer_norm_eps: epsilon of every LayerNorm.
        pad_index: padding token (its embedding row starts at zero).
        embed_init_std: std of the normal initialisation of the embeddings; default
            ``emb_dim ** -0.5``.
        init_std: std of the normal initialisation of the linear maps.
        is_encoder: must be True (Hugging Face's XLM is an encoder only).
        tie_word_embeddings: the LM head reuses the word-embedding matrix.
        bos_index, eos_index, unk_index, mask_index, lang_id, mask_token_id: special ids,
            kept for the round trip to Hugging Face (the model does not use them).
        extra: other ``config.json`` entries (e.g. ``lang2id``), written back unchanged.
    """

    vocab_size: int = 30145
    emb_dim: int = 2048
    n_layers: int = 12
    n_heads: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.1
    gelu_activation: bool = True
    sinusoidal_embeddings: bool = False
    causal: bool = False
    asm: bool = False
    n_langs: int = 1
    use_lang_emb: bool = True
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    pad_index: int = 2
    embed_init_std: float | None = None
    init_std: float = 0.02
    is_encoder: bool = True
    tie_word_embeddings: bool = True
    bos_index: int = 0
    eos_index: int = 1
    unk_index: int = 3
    mask_index: int = 5
    lang_id: int = 0
    mask_token_id: int | None = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "emb_dim", "n_layers", "n_heads", "n_langs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if self.emb_dim % self.n_heads:
            raise ValueError(
                f"`emb_dim` ({self.emb_dim}) must be divisible by `n_heads` ({self.n_heads})"
            )
        check_probability(self.dropout, "dropout")
        check_probability(self.attention_dropout, "attention_dropout")
        if self.asm:
            raise ValueError(
                "`asm` must be False: the adaptive-softmax head is not available, got True"
            )
        if not self.is_encoder:
            raise ValueError("`is_encoder` must be True (XLM is an encoder), got False")
        if not 0 <= self.pad_index < self.vocab_size:
            raise ValueError(f"`pad_index` must be in [0, {self.vocab_size}), got {self.pad_index}")
        if self.max_position_embeddings < 1:
            raise ValueError(
                f"`max_position_embeddings` must be >= 1, got {self.max_position_embeddings}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0, got {self.layer_norm_eps}")
        if self.embed_init_std is None:
            self.embed_init_std = self.emb_dim**-0.5

    @property
    def has_lang_embeddings(self) -> bool:
        """Whether the model has a language embedding (as Hugging Face decides it)."""
        return self.use_lang_emb and self.n_langs > 1


# Hugging Face config.json names of the fields whose names differ (or that it renames).
_HF_NAMES = {
    "pad_index": "pad_token_id",
    "bos_index": "bos_token_id",
    "eos_index": "eos_token_id",
}
# Entries of a config.json that describe the file rather than the model.
_HF_BOOKKEEPING = ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype")


def config_from_hf(hf: dict[str, Any]) -> XLMConfig:
    """Hugging Face XLM ``config.json`` dict -> :class:`XLMConfig`."""
    hf = dict(hf)
    if hf.get("model_type", "xlm") != "xlm":
        raise ValueError(f"`config.json` must describe an XLM model, got {hf['model_type']!r}")
    if "n_words" in hf and "vocab_size" not in hf:
        hf["vocab_size"] = hf.pop("n_words")
    kwargs: dict[str, Any] = {}
    for f in fields(XLMConfig):
        if f.name == "extra":
            continue
        key = _HF_NAMES.get(f.name, f.name)
        for name in (key, f.name):  # older files may use the XLM names (pad_index, ...)
            if name in hf:
                kwargs[f.name] = hf.pop(name)
                break
    for name in _HF_NAMES:
        hf.pop(name, None)
    for name in _HF_BOOKKEEPING:
        hf.pop(name, None)
    return XLMConfig(**kwargs, extra=hf)


def config_to_hf(config: XLMConfig, architecture: str) -> dict[str, Any]:
    """:class:`XLMConfig` -> Hugging Face XLM ``config.json`` dict."""
    hf: dict[str, Any] = dict(config.extra)
    for f in fields(XLMConfig):
        if f.name != "extra":
            hf[_HF_NAMES.get(f.name, f.name)] = getattr(config, f.name)
    hf["model_type"] = "xlm"
    hf["architectures"] = [architecture]
    return hf


# --------------------------------------------------------------------------- key maps

_P = r"^(transformer\.)?"
HF_TO_ZOO_RULES: list[tuple[str, str]] = [
    (_P + r"embeddings\.weight$", r"\1embeddings.word_embeddings.weight"),
    (_P + r"position_embeddings\.weight$", r"\1embeddings.position_embeddings.weight"),
    (_P + r"lang_embeddings\.weight$", r"\1embeddings.lang_embeddings.weight"),
    (_P + r"layer_norm_emb\.", r"\1embeddings.norm."),
    (_P + r"attentions\.(\d+)\.q_lin\.", r"\1layers.\2.attention.query."),
    (_P + r"attentions\.(\d+)\.k_lin\.", r"\1layers.\2.attention.key."),
    (_P + r"attentions\.(\d+)\.v_lin\.", r"\1layers.\2.attention.value."),
    (_P + r"attentions\.(\d+)\.out_lin\.", r"\1layers.\2.attention.out."),
    (_P + r"layer_norm1\.(\d+)\.", r"\1layers.\2.attention_norm."),
    (_P + r"ffns\.(\d+)\.lin1\.", r"\1layers.\2.ffn.intermediate."),
    (_P + r"ffns\.(\d+)\.lin2\.", r"\1layers.\2.ffn.output."),
    (_P + r"layer_norm2\.(\d+)\.", r"\1layers.\2.ffn_norm."),
    (r"^pred_layer\.proj\.", "pred_layer."),
]
"""Hugging Face XLM keys -> attnzoo keys (an optional ``transformer.`` prefix is kept)."""

ZOO_TO_HF_RULES: list[tuple[str, str]] = [
    (_P + r"embeddings\.word_embeddings\.weight$", r"\1embeddings.weight"),
    (_P + r"embeddings\.position_embeddings\.weight$", r"\1position_embeddings.weight"),
    (_P + r"embeddings\.lang_embeddings\.weight$", r"\1lang_embeddings.weight"),
    (_P + r"embeddings\.norm\.", r"\1layer_norm_emb."),
    (_P + r"layers\.(\d+)\.attention\.query\.", r"\1attentions.\2.q_lin."),
    (_P + r"layers\.(\d+)\.attention\.key\.", r"\1attentions.\2.k_lin."),
    (_P + r"layers\.(\d+)\.attention\.value\.", r"\1attentions.\2.v_lin."),
    (_P + r"layers\.(\d+)\.attention\.out\.", r"\1attentions.\2.out_lin."),
    (_P + r"layers\.(\d+)\.attention_norm\.", r"\1layer_norm1.\2."),
    (_P + r"layers\.(\d+)\.ffn\.intermediate\.", r"\1ffns.\2.lin1."),
    (_P + r"layers\.(\d+)\.ffn\.output\.", r"\1ffns.\2.lin2."),
    (_P + r"layers\.(\d+)\.ffn_norm\.", r"\1layer_norm2.\2."),
    (r"^pred_layer\.", "pred_layer.proj."),
]
"""attnzoo keys -> Hugging Face XLM keys."""

_BASE_PREFIX = "transformer."


# --------------------------------------------------------------------------- outputs


@dataclass
class XLMModelOutput:
    """What :class:`XLMModel` returns.

    Attributes:
        last_hidden_state: ``(batch, n, emb_dim)``; padded positions are zero.
        hidden_states: with ``output_hidden_states``: the embeddings and every layer's
            output, ``n_layers + 1`` tensors ``(batch, n, emb_dim)``.
        attentions: with ``output_attentions``: every layer's weights
            ``(batch, n_heads, n, n)``.
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class XLMLMOutput:
    """What :class:`XLMWithLMHeadModel` returns.

    Attributes:
        loss: with ``labels``: the mean cross-entropy over labels other than -100.
        logits: ``(batch, n, vocab_size)``.
        hidden_states, attentions: as in :class:`XLMModelOutput`.
    """

    loss: Tensor | None
    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


# --------------------------------------------------------------------------- masks


def real_token_mask(
    input_ids: Tensor,
    pad_index: int,
    attention_mask: Tensor | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """Which positions hold real tokens, decided as Hugging Face's XLM decides it.

    Args:
        input_ids: ``(batch, n)``.
        pad_index: the padding token.
        attention_mask: ``(batch, n)`` boolean, or integer with values 0/1 (1 = real token);
            takes precedence over ``lengths``.
        lengths: ``(batch,)`` integer lengths in ``[0, n]``: the first ``lengths[b]``
            positions of row ``b`` are real.

    Returns:
        Boolean ``(batch, n)``; without ``attention_mask`` and ``lengths`` the first
        ``(input_ids != pad_index).sum(-1)`` positions of each row (right padding).
    """
    batch, n = input_ids.shape
    if attention_mask is not None:
        return hf_attention_mask(attention_mask, (batch, n))
    if lengths is None:
        lengths = (input_ids != pad_index).sum(dim=1)
    else:
        check_rank(lengths, 1, "lengths", "(batch,)")
        if tuple(lengths.shape) != (batch,):
            raise ValueError(f"`lengths` must have shape {(batch,)}, got {tuple(lengths.shape)}")
        check_token_ids(lengths, n + 1, "lengths")
    return torch.arange(n, device=input_ids.device) < lengths.unsqueeze(1)


# --------------------------------------------------------------------------- the model


class XLMModel(PretrainedMixin, nn.Module):
    """The XLM encoder (Hugging Face ``XLMModel``).

    Args:
        config: an :class:`XLMConfig`.

    Parameters: ``embeddings`` (:class:`~attnzoo.transformers_zoo.embeddings.Embeddings`:
    ``word_embeddings``, ``position_embeddings``, ``lang_embeddings`` when the model has
    one, ``norm``) and ``layers.{i}`` (post-LN
    :class:`~attnzoo.transformers_zoo.layers.EncoderLayer`); see the module docstring for
    the Hugging Face key map.
    """

    config_class: ClassVar[type] = XLMConfig
    hf_to_zoo_rules: ClassVar[list[tuple[str, str]]] = HF_TO_ZOO_RULES
    zoo_to_hf_rules: ClassVar[list[tuple[str, str]]] = ZOO_TO_HF_RULES

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        if not isinstance(config, XLMConfig):
            raise TypeError(f"`config` must be an XLMConfig, got {type(config).__name__}")
        self.config = config
        dim = config.emb_dim
        self.embeddings = Embeddings(
            config.vocab_size,
            dim,
            max_len=config.max_position_embeddings,
            positions="learned",  # a parameter even when sinusoidal, as in the checkpoints
            n_langs=config.n_langs if config.has_lang_embeddings else 0,
            layer_norm=True,
            layer_norm_eps=config.layer_norm_eps,
            dropout=config.dropout,
            padding_idx=config.pad_index,
        )
        self.layers = nn.ModuleList(
            EncoderLayer(
                dim,
                config.n_heads,
                ffn_dim=4 * dim,
                activation="gelu" if config.gelu_activation else "relu",
                dropout=config.dropout,
                attention_dropout=config.attention_dropout,
                activation_dropout=0.0,
                norm_first=False,
                layer_norm_eps=config.layer_norm_eps,
            )
            for _ in range(config.n_layers)
        )
        self.reset_parameters()
        self.gradient_checkpointing = False

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute every layer in the backward pass instead of keeping its activations, by
        the encoder stacks' rule
        (:func:`~attnzoo.transformers_zoo.stacks.set_gradient_checkpointing`): only in
        training mode with gradients on. ``enabled=False`` switches it back off."""
        set_gradient_checkpointing(self, enabled)

    def reset_parameters(self) -> None:
        """XLM's initialisation: normal embeddings (padding row zero), normal linear
        weights with zero biases, unit LayerNorms, sinusoids in a frozen position table."""
        config = self.config
        embed_std = config.embed_init_std
        assert embed_std is not None  # __post_init__ fills in the default
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=embed_std)
                if module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=config.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        positions = self.embeddings.position_embeddings
        assert isinstance(positions, LearnedPositionalEmbedding)
        if config.sinusoidal_embeddings:
            table = sinusoidal_table(config.max_position_embeddings, config.emb_dim)
            with torch.no_grad():
                positions.weight.copy_(table)
            positions.weight.requires_grad_(False)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        langs: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        lengths: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> XLMModelOutput:
        """Encode ``input_ids``.

        Args:
            input_ids: ``(batch, n)`` token ids in ``[0, vocab_size)``.
            attention_mask: ``(batch, n)``, True or 1 = real token (boolean or 0/1 integer,
                Hugging Face's interface); see the module docstring for the default.
            langs: ``(batch, n)`` language ids in ``[0, n_langs)``.
            token_type_ids: ``(batch, n)`` ids looked up in the word embedding.
            position_ids: ``(batch, n)`` or ``(1, n)``; default ``0 .. n - 1``.
            lengths: ``(batch,)`` sequence lengths (used when ``attention_mask`` is None).
            output_attentions: return every layer's attention weights.
            output_hidden_states: return the embeddings and every layer's output.

        Returns:
            :class:`XLMModelOutput` with ``last_hidden_state`` ``(batch, n, emb_dim)``.
        """
        check_rank(input_ids, 2, "input_ids", "(batch, n)")
        n = input_ids.shape[1]
        config = self.config
        if n > config.max_position_embeddings:
            raise ValueError(
                f"`input_ids` must have at most max_position_embeddings = "
                f"{config.max_position_embeddings} positions, got {n}"
            )
        real = real_token_mask(input_ids, config.pad_index, attention_mask, lengths)
        # Encoders mask the padded keys; causal models the future only (as Hugging Face).
        if config.causal:
            attend_mask = torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril()
            attend_mask = attend_mask[None, None]  # (1, 1, n, n)
        else:
            attend_mask = real  # (batch, n) key-padding mask
        keep = real.unsqueeze(-1)  # (batch, n, 1)

        x = self._embed(input_ids, langs, token_type_ids, position_ids)
        x = x * keep.to(x.dtype)
        hidden: list[Tensor] | None = [x] if output_hidden_states else None
        attentions: list[Tensor] | None = [] if output_attentions else None
        for layer in self.layers:
            if attentions is not None:
                x, weights = run_layer(self, layer, x, mask=attend_mask, output_attentions=True)
                attentions.append(weights)
            else:
                x = run_layer(self, layer, x, mask=attend_mask)
            x = x * keep.to(x.dtype)  # padded positions restart every layer from zero
            if hidden is not None:
                hidden.append(x)
        return XLMModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
        )

    def _embed(
        self,
        input_ids: Tensor,
        langs: Tensor | None,
        token_type_ids: Tensor | None,
        position_ids: Tensor | None,
    ) -> Tensor:
        """``dropout(LayerNorm(word + position [+ lang] [+ word(token types)]))``,
        ``(batch, n)`` -> ``(batch, n, emb_dim)``."""
        emb = self.embeddings
        batch, n = input_ids.shape
        x = emb.word_embeddings(input_ids, name="input_ids")
        if position_ids is None:
            position_ids = torch.arange(n, device=input_ids.device).unsqueeze(0)
        else:
            check_tensor(position_ids, "position_ids")
            if (
                position_ids.dim() != 2
                or position_ids.shape[1] != n
                or position_ids.shape[0] not in (1, batch)
            ):
                raise ValueError(
                    f"`position_ids` must have shape {(batch, n)} or {(1, n)}, "
                    f"got {tuple(position_ids.shape)}"
                )
        assert emb.position_embeddings is not None
        x = x + emb.position_embeddings(position_ids)
        if langs is not None:
            _check_like(langs, input_ids, "langs")
            if emb.lang_embeddings is not None:
                x = x + emb.lang_embeddings(langs)
        if token_type_ids is not None:
            _check_like(token_type_ids, input_ids, "token_type_ids")
            x = x + emb.word_embeddings(token_type_ids, name="token_type_ids")
        assert emb.norm is not None
        return emb.dropout(emb.norm(x))

    # ----------------------------------------------------------------- checkpoints

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> XLMConfig:
        return config_from_hf(hf)

    @classmethod
    def config_to_hf(cls, config: XLMConfig) -> dict[str, Any]:
        return config_to_hf(config, "XLMModel")

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Accept the encoder of an ``XLMWithLMHeadModel`` checkpoint too: its
        ``transformer.`` prefix is dropped and its LM head left out (as Hugging Face does)."""
        if not any(key.startswith(_BASE_PREFIX) for key in state):
            return state
        return {
            key.removeprefix(_BASE_PREFIX): value
            for key, value in state.items()
            if not key.startswith("pred_layer.")
        }


class XLMWithLMHeadModel(GenerationMixin, PretrainedMixin, nn.Module):
    """XLM with its masked/causal language-modelling head (Hugging Face
    ``XLMWithLMHeadModel``).

    ``generate`` (:meth:`~attnzoo.transformers_zoo.generation.GenerationMixin.generate`)
    decodes as Hugging Face's XLM does: every step appends ``config.mask_token_id`` to the
    sequence, runs the whole sequence (XLM has no cache) and predicts the token at that
    position; see :meth:`_begin_generation` for ``langs`` and ``lang_id``.

    Args:
        config: an :class:`XLMConfig`.

    Parameters: ``transformer`` (:class:`XLMModel`) and ``pred_layer`` (Linear
    ``emb_dim -> vocab_size`` with bias; its weight is the word embedding when
    ``tie_word_embeddings``).
    """

    config_class: ClassVar[type] = XLMConfig
    hf_to_zoo_rules: ClassVar[list[tuple[str, str]]] = HF_TO_ZOO_RULES
    zoo_to_hf_rules: ClassVar[list[tuple[str, str]]] = ZOO_TO_HF_RULES

    def __init__(self, config: XLMConfig) -> None:
        super().__init__()
        self.transformer = XLMModel(config)
        self.config = config
        self.pred_layer = nn.Linear(config.emb_dim, config.vocab_size, bias=True)
        nn.init.normal_(self.pred_layer.weight, std=config.init_std)
        nn.init.zeros_(self.pred_layer.bias)
        if config.tie_word_embeddings:
            self.pred_layer.weight = self.transformer.embeddings.word_embeddings.weight

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Checkpoint the encoder's layers (:meth:`XLMModel.gradient_checkpointing_enable`)."""
        self.transformer.gradient_checkpointing_enable(enabled)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        langs: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        lengths: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> XLMLMOutput:
        """Token logits, and the LM loss when ``labels`` are given.

        Args:
            input_ids, attention_mask, langs, token_type_ids, position_ids, lengths,
            output_attentions, output_hidden_states: as in :meth:`XLMModel.forward`.
            labels: ``(batch, n)`` target ids in ``[0, vocab_size)`` or -100 (ignored);
                not shifted (for masked language modelling, label the masked positions).

        Returns:
            :class:`XLMLMOutput` with ``logits`` ``(batch, n, vocab_size)``.
        """
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            langs=langs,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            lengths=lengths,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = project(out.last_hidden_state, self.pred_layer)
        loss = None
        if labels is not None:
            _check_like(labels, input_ids, "labels")
            scored = labels[labels != IGNORE_INDEX]
            check_token_ids(scored, self.config.vocab_size, "labels")
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
        return XLMLMOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )

    def _begin_generation(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        options: GenerationOptions,
        langs: Tensor | None = None,
        lang_id: int | None = None,
    ) -> GenerationStart:
        """Generation's start: unpadded prompts, languages, EOS ``eos_index``, padding
        ``pad_index`` (Hugging Face's ``eos_token_id`` and ``pad_token_id`` of XLM).

        Hugging Face's XLM ``generate`` drops ``attention_mask`` and reads each row's length
        from its ``pad_index`` tokens, so a padded prompt is refused: a mask with padding,
        or ``pad_index`` in ``input_ids``, is a ``ValueError``.

        Args:
            input_ids: ``(batch, n)`` prompts.
            attention_mask: ``(batch, n)``, all real tokens (or None).
            options: the generation options (for the length check).
            langs: ``(batch, n)`` language ids of the prompt (a model without language
                embeddings ignores them); default ``lang_id`` everywhere, as Hugging Face.
            lang_id: the language of the generated tokens and of the appended mask token;
                default ``config.lang_id``. Required with ``langs`` (when the model has
                language embeddings).
        """
        config = self.config
        check_unpadded_prompt(input_ids, attention_mask, "XLM")
        check_token_ids(input_ids, config.vocab_size, "input_ids")
        if bool((input_ids == config.pad_index).any()):
            raise ValueError(
                f"`input_ids` must not hold pad_index ({config.pad_index}): XLM reads a row's "
                "length from its padding, so XLM generate takes unpadded prompts only"
            )
        if config.mask_token_id is None:
            raise ValueError("`config.mask_token_id` must be set for XLM generate, got None")
        check_generation_length(
            input_ids.shape[1],
            options.max_new_tokens,
            config.max_position_embeddings,
            "max_position_embeddings",
        )
        lang_id = config.lang_id if lang_id is None else lang_id
        uses_langs = config.has_lang_embeddings and (langs is not None or lang_id is not None)
        if uses_langs:
            if lang_id is None:
                raise ValueError("`lang_id` (the language of the generated tokens) is required")
            check_int(lang_id, "lang_id", minimum=0)
            if lang_id >= config.n_langs:
                raise ValueError(f"`lang_id` must be in [0, {config.n_langs}), got {lang_id}")
            if langs is None:
                langs = torch.full_like(input_ids, lang_id)
            else:
                _check_like(langs, input_ids, "langs")
                check_token_ids(langs, config.n_langs, "langs")
        state = {
            "tokens": input_ids,
            "langs": langs if uses_langs else None,
            "lang_id": lang_id,
            "first": True,
        }
        return GenerationStart(
            step=self._generation_step,
            state=state,
            history=input_ids,
            prefix=input_ids,
            eos=config.eos_index,
            pad=config.pad_index,
        )

    def _generation_step(
        self, prev_tokens: Tensor, state: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Any]]:
        """Append the previous token (not at the first step), then the mask token, run the
        whole sequence and return the mask position's logits ``(N, vocab_size)``."""
        tokens, langs = state["tokens"], state["langs"]
        if not state["first"]:
            tokens = torch.cat([tokens, prev_tokens[:, None]], dim=1)
            if langs is not None:
                langs = F.pad(langs, (0, 1), value=state["lang_id"])
        masked = F.pad(tokens, (0, 1), value=self.config.mask_token_id)
        masked_langs = None if langs is None else F.pad(langs, (0, 1), value=state["lang_id"])
        # No attention_mask: the lengths come from pad_index, as in Hugging Face's generate.
        hidden = self.transformer(masked, langs=masked_langs).last_hidden_state
        logits = project(hidden[:, -1], self.pred_layer)
        return logits, {**state, "tokens": tokens, "langs": langs, "first": False}

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> XLMConfig:
        return config_from_hf(hf)

    @classmethod
    def config_to_hf(cls, config: XLMConfig) -> dict[str, Any]:
        return config_to_hf(config, "XLMWithLMHeadModel")

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hugging Face leaves the tied head weight out of its files: take it from the word
        embedding (a file that holds it keeps it, e.g. an untied model's)."""
        state = dict(state)
        embedding = _BASE_PREFIX + "embeddings.word_embeddings.weight"
        if "pred_layer.weight" not in state and embedding in state:
            state["pred_layer.weight"] = state[embedding]
        return state


def _check_like(x: Tensor, ref: Tensor, name: str) -> None:
    """``x`` must be a tensor with the shape of ``input_ids``."""
    check_tensor(x, name)
    if x.shape != ref.shape:
        raise ValueError(
            f"`{name}` must have the shape of `input_ids` {tuple(ref.shape)}, got {tuple(x.shape)}"
        )


__all__ = [
    "HF_TO_ZOO_RULES",
    "IGNORE_INDEX",
    "ZOO_TO_HF_RULES",
    "XLMConfig",
    "XLMLMOutput",
    "XLMModel",
    "XLMModelOutput",
    "XLMWithLMHeadModel",
    "config_from_hf",
    "config_to_hf",
    "real_token_mask",
]
