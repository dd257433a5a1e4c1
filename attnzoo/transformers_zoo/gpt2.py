"""GPT-2 (Radford et al. 2019) on the library's decoder blocks, with Hugging Face parity.

The model, top to bottom::

    x = word_embeddings(input_ids) + position_embeddings(position_ids)   # wte, wpe
    x = dropout(x)                                                      # embd_pdrop
    for each of n_layer pre-LN decoder layers (no cross-attention):
        x = x + dropout(self_attention(ln_1(x)))    # causal, attn_pdrop on the weights
        x = x + dropout(mlp(ln_2(x)))               # c_fc -> gelu_new -> c_proj
    h = ln_f(x)                                     # the stack's final ``norm``
    logits = h @ word_embeddings.weight^T           # GPT2LMHeadModel, tied ``lm_head``

The layers are :class:`~attnzoo.transformers_zoo.stacks.TransformerDecoder` with
``cross_attention=False`` and ``norm_first=True``; incremental decoding goes through its
:class:`~attnzoo.transformers_zoo.layers.LayerCache` list (``past_key_values``), one
forward per new token. In training mode the feed-forward block also applies
``resid_pdrop`` to its hidden activations (the library's :class:`FeedForward`), where
Hugging Face applies it after ``c_proj`` only; in eval mode the two are identical.

``attention_mask`` follows Hugging Face's documented interface: ``(batch, n_past + n)``,
1/True = real token, 0/False = padding; both integer 0/1 and boolean masks are accepted
(this is the one place in the library where a 0/1 mask is, since it is what tokenizers
return). A float mask is a ``TypeError``. As in Hugging Face, ``position_ids`` default to
``n_past .. n_past + n - 1`` whatever the mask; for left-padded batches pass
:func:`position_ids_from_attention_mask` (``generate`` does so itself).

Hugging Face key map (``transformer.`` prefix kept for :class:`GPT2LMHeadModel`)::

    wte / wpe                       -> word_embeddings / position_embeddings
    h.{i}.ln_1 / ln_2               -> decoder.layers.{i}.self_attention_norm / ffn_norm
    h.{i}.attn.c_attn (fused q|k|v) -> decoder.layers.{i}.self_attention.{query,key,value}
    h.{i}.attn.c_proj               -> decoder.layers.{i}.self_attention.out
    h.{i}.mlp.c_fc / c_proj         -> decoder.layers.{i}.ffn.intermediate / ffn.output
    ln_f                            -> decoder.norm
    lm_head                         -> lm_head (tied to word_embeddings)

Hugging Face's ``Conv1D`` stores weights as ``(in, out)``: they are transposed to
``nn.Linear``'s ``(out, in)``. The causal-mask buffers ``h.{i}.attn.bias`` and
``h.{i}.attn.masked_bias`` of old checkpoints carry no learned value and are dropped by
name (any other unknown key is an error).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.projection import project
from ..attention.validation import check_int, check_probability, check_rank
from .checkpoints import PretrainedMixin, hf_activation, hf_attention_mask, rename_keys
from .embeddings import LearnedPositionalEmbedding, TokenEmbedding
from .generation import (
    GenerationMixin,
    GenerationOptions,
    GenerationStart,
    check_generation_length,
)
from .layers import LayerCache
from .stacks import StackConfig, TransformerDecoder, set_gradient_checkpointing

# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


@dataclass
class GPT2Config:
    """GPT-2 hyper-parameters, with Hugging Face ``GPT2Config`` field names.

    Attributes:
        vocab_size: token vocabulary size.
        n_positions: number of learned positions (the longest sequence).
        n_embd: model width.
        n_layer: number of decoder layers.
        n_head: attention heads (``n_embd`` divisible by it).
        n_inner: feed-forward hidden width; default ``4 * n_embd``.
        activation_function: ``"gelu_new"`` (tanh GELU, GPT-2's), ``"gelu_pytorch_tanh"``,
            ``"gelu"`` or ``"relu"``.
        resid_pdrop: dropout on every residual branch (and the feed-forward hidden units).
        embd_pdrop: dropout on the summed embeddings.
        attn_pdrop: dropout on the attention weights.
        layer_norm_epsilon: LayerNorm epsilon.
        initializer_range: std of the normal initialisation.
        bos_token_id, eos_token_id, pad_token_id: special token ids (``pad`` may be None).
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            check_int(getattr(self, name), name)
        if self.n_inner is not None:
            check_int(self.n_inner, "n_inner")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"`n_embd` ({self.n_embd}) must be divisible by `n_head` ({self.n_head})"
            )
        hf_activation(self.activation_function, "activation_function")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            check_probability(getattr(self, name), name)
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"`layer_norm_epsilon` must be > 0, got {self.layer_norm_epsilon}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= check_int(value, name, minimum=0) < self.vocab_size:
                raise ValueError(f"`{name}` must be in [0, {self.vocab_size}), got {value}")

    def stack_config(self) -> StackConfig:
        """The :class:`StackConfig` of the decoder layers (pre-LN, final LayerNorm)."""
        return StackConfig(
            dim=self.n_embd,
            heads=self.n_head,
            depth=self.n_layer,
            ffn_dim=self.n_inner,
            activation=hf_activation(self.activation_function, "activation_function"),
            dropout=self.resid_pdrop,
            attention_dropout=self.attn_pdrop,
            activation_dropout=0.0,
            norm_first=True,
            layer_norm_eps=self.layer_norm_epsilon,
        )


_CONFIG_FIELDS = (
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "activation_function",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "layer_norm_epsilon",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)

# Hugging Face options that change the computation and that this model does not implement:
# a checkpoint that sets them differently is refused rather than silently run wrong.
_UNSUPPORTED_HF = {
    "scale_attn_weights": True,
    "scale_attn_by_inverse_layer_idx": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}


def gpt2_config_from_hf(hf: dict[str, Any]) -> GPT2Config:
    for key, supported in _UNSUPPORTED_HF.items():
        if key in hf and hf[key] != supported:
            raise ValueError(
                f"config.json `{key}` must be {supported} for this GPT-2 model, got {hf[key]!r}"
            )
    return GPT2Config(**{name: hf[name] for name in _CONFIG_FIELDS if name in hf})


def gpt2_config_to_hf(config: GPT2Config) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of ``config`` (a ``GPT2LMHeadModel``)."""
    hf = {name: getattr(config, name) for name in _CONFIG_FIELDS}
    hf.update(_UNSUPPORTED_HF)
    hf.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_ctx=config.n_positions)
    return hf


# ---------------------------------------------------------------------------------------
# Checkpoint conversion (keys in the library's names; see the module docstring)
# ---------------------------------------------------------------------------------------


def gpt2_hf_to_zoo_rules(prefix: str) -> tuple[tuple[str, str], ...]:
    """Hugging Face -> library rename rules; ``prefix`` is ``"transformer."`` or ``""``."""
    src = r"^(?:transformer\.)?"
    layer = src + r"h\.(\d+)\."
    dst = prefix + r"decoder.layers.\1."
    return (
        (src + r"wte\.", prefix + "word_embeddings."),
        (src + r"wpe\.", prefix + "position_embeddings."),
        (layer + r"ln_1\.", dst + "self_attention_norm."),
        (layer + r"ln_2\.", dst + "ffn_norm."),
        (layer + r"attn\.c_attn\.", dst + "self_attention.c_attn."),
        (layer + r"attn\.c_proj\.", dst + "self_attention.out."),
        (layer + r"attn\.(bias|masked_bias)$", dst + r"self_attention.hf_\2"),
        (layer + r"mlp\.c_fc\.", dst + "ffn.intermediate."),
        (layer + r"mlp\.c_proj\.", dst + "ffn.output."),
        (src + r"ln_f\.", prefix + "decoder.norm."),
    )


def _zoo_rules(prefix: str) -> tuple[tuple[str, str], ...]:
    """Library -> Hugging Face rename rules (the inverse of :func:`gpt2_hf_to_zoo_rules`)."""
    p = re.escape(prefix)
    layer = "^" + p + r"decoder\.layers\.(\d+)\."
    dst = prefix + r"h.\1."
    return (
        ("^" + p + r"word_embeddings\.", prefix + "wte."),
        ("^" + p + r"position_embeddings\.", prefix + "wpe."),
        (layer + r"self_attention_norm\.", dst + "ln_1."),
        (layer + r"ffn_norm\.", dst + "ln_2."),
        (layer + r"self_attention\.c_attn\.", dst + "attn.c_attn."),
        (layer + r"self_attention\.out\.", dst + "attn.c_proj."),
        (layer + r"ffn\.intermediate\.", dst + "mlp.c_fc."),
        (layer + r"ffn\.output\.", dst + "mlp.c_proj."),
        ("^" + p + r"decoder\.norm\.", prefix + "ln_f."),
    )


_CONV1D = re.compile(r"(self_attention\.out|ffn\.intermediate|ffn\.output)\.weight$")
_FUSED = re.compile(r"^(.*self_attention\.)c_attn\.(weight|bias)$")
_MASK_BUFFER = re.compile(r"self_attention\.hf_(bias|masked_bias)$")


def gpt2_state_from_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Split the fused ``c_attn`` into query/key/value, transpose Conv1D weights, drop the
    causal-mask buffers (renamed ``self_attention.hf_bias``/``hf_masked_bias``)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if _MASK_BUFFER.search(key):
            continue  # a constant causal mask, not a learned weight
        fused = _FUSED.match(key)
        if fused:
            base, kind = fused.groups()
            # Conv1D: weight (in, 3 * out) -> three Linear weights (out, in); bias (3 * out,).
            parts = (value.t() if kind == "weight" else value).chunk(3, dim=0)
            for name, part in zip(("query", "key", "value"), parts, strict=True):
                out[f"{base}{name}.{kind}"] = part.contiguous()
        elif _CONV1D.search(key):
            out[key] = value.t().contiguous()
        else:
            out[key] = value
    return out


def gpt2_state_to_hf(state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Library state (keys starting at ``prefix``, e.g. ``""`` or ``"transformer."``) ->
    Hugging Face names: query/key/value fused into ``c_attn``, Conv1D weights transposed to
    ``(in, out)``. The inverse of :func:`gpt2_state_from_hf` after renaming."""
    return rename_keys(_state_to_hf(state), _zoo_rules(prefix))


def _state_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fuse query/key/value into ``c_attn`` and transpose to Conv1D ``(in, out)``."""
    out: dict[str, Tensor] = {}
    fused: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = re.match(r"^(.*self_attention\.)(query|key|value)\.(weight|bias)$", key)
        if match:
            base, name, kind = match.groups()
            fused.setdefault(f"{base}c_attn.{kind}", {})[name] = value
        elif _CONV1D.search(key):
            out[key] = value.t()
        else:
            out[key] = value
    for key, parts in fused.items():
        joined = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        out[key] = joined.t() if key.endswith("weight") else joined
    return out


# ---------------------------------------------------------------------------------------
# Masks and positions
# ---------------------------------------------------------------------------------------


def position_ids_from_attention_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, as Hugging Face ``generate`` does.

    ``(batch, n)`` mask (bool or 0/1) -> int64 ``(batch, n)``: ``cumsum(mask) - 1`` on real
    tokens, 0 on padding; a left-padded row thus starts its text at position 0.
    """
    check_rank(attention_mask, 2, "attention_mask", "(batch, n)")
    mask = hf_attention_mask(attention_mask, attention_mask.shape)
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(~mask, 0)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


@dataclass
class GPT2Output:
    """What :class:`GPT2Model` returns.

    Attributes:
        last_hidden_state: ``(batch, n, n_embd)``, after ``ln_f``.
        past_key_values: the per-layer caches (with ``use_cache``), updated in place.
        hidden_states: with ``output_hidden_states``: ``n_layer + 1`` tensors, the
            embeddings and every layer's output (the last after ``ln_f``).
        attentions: with ``output_attentions``: ``n_layer`` tensors
            ``(batch, n_head, n, n_past + n)``; a padding query row is all zeros.
    """

    last_hidden_state: Tensor
    past_key_values: list[LayerCache] | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class CausalLMOutput:
    """What :class:`GPT2LMHeadModel` returns.

    Attributes:
        logits: ``(batch, n, vocab_size)``.
        loss: with ``labels``: mean next-token cross-entropy over labels != -100.
        past_key_values, hidden_states, attentions: as in :class:`GPT2Output`.
    """

    logits: Tensor
    loss: Tensor | None = None
    past_key_values: list[LayerCache] | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


def _cache_length(cache: list[LayerCache] | None) -> int:
    return 0 if cache is None else len(cache[0].self_attention)


class GPT2Model(PretrainedMixin, nn.Module):
    """The GPT-2 transformer without a head.

    Parameters: ``word_embeddings`` ``(vocab_size, n_embd)``, ``position_embeddings``
    ``(n_positions, n_embd)``, ``decoder`` (:class:`TransformerDecoder`: ``layers.{i}.*``
    and the final ``norm``). Initialisation as GPT-2: normal(0, ``initializer_range``),
    the residual output projections scaled by ``1 / sqrt(2 * n_layer)``.
    """

    config_class = GPT2Config
    hf_to_zoo_rules = gpt2_hf_to_zoo_rules("")
    zoo_to_hf_rules = _zoo_rules("")

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute every decoder layer in the backward pass instead of keeping its
        activations (:func:`~attnzoo.transformers_zoo.stacks.set_gradient_checkpointing`);
        ``enabled=False`` switches it back off."""
        set_gradient_checkpointing(self, enabled)  # type: ignore[arg-type]

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"`config` must be a GPT2Config, got {type(config).__name__}")
        self.config = config
        self.word_embeddings = TokenEmbedding(config.vocab_size, config.n_embd)
        self.position_embeddings = LearnedPositionalEmbedding(config.n_positions, config.n_embd)
        self.dropout = nn.Dropout(config.embd_pdrop)
        self.decoder = TransformerDecoder(config.stack_config(), cross_attention=False)
        self._init_weights()

    def _init_weights(self) -> None:
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, parameter in self.named_parameters():
            if name.endswith(("self_attention.out.weight", "ffn.output.weight")):
                nn.init.normal_(parameter, 0.0, std / math.sqrt(2 * self.config.n_layer))

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> GPT2Config:
        return gpt2_config_from_hf(hf)

    @classmethod
    def config_to_hf(cls, config: GPT2Config) -> dict[str, Any]:
        return gpt2_config_to_hf(config)

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        state = gpt2_state_from_hf(state)
        head = state.pop("lm_head.weight", None)
        # A head checkpoint read as a bare model: only a tied copy of wte may be left out.
        if head is not None and not torch.equal(head, state.get("word_embeddings.weight", head)):
            raise ValueError(
                "checkpoint key `lm_head.weight` is not tied to `wte.weight`: "
                "load it with GPT2LMHeadModel"
            )
        return state

    @classmethod
    def transform_to_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return _state_to_hf(state)

    def new_cache(self) -> list[LayerCache]:
        """Empty per-layer caches for incremental decoding."""
        return self.decoder.new_cache()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: list[LayerCache] | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        check_ids: bool = True,
    ) -> GPT2Output:
        """Run GPT-2 over ``input_ids`` ``(batch, n)``.

        Args:
            input_ids: token ids ``(batch, n)`` in ``[0, vocab_size)`` (with a cache: the
                new tokens only).
            attention_mask: ``(batch, n_past + n)``, 1/True = real token, 0/False = padding
                (bool or 0/1 integers; see the module docstring).
            token_type_ids: ``(batch, n)`` ids embedded with ``word_embeddings`` and added
                (Hugging Face's GPT-2 behaviour).
            position_ids: ``(batch, n)`` or ``(1, n)``; default ``n_past .. n_past + n - 1``.
            past_key_values: caches from an earlier call (or :meth:`new_cache`); extended in
                place by this call's keys and values.
            use_cache: return caches (new ones when ``past_key_values`` is None).
            output_attentions: return every layer's attention weights.
            output_hidden_states: return the embeddings and every layer's output.
            check_ids: check that every token id and position is in range. The check
                reads the ids back to the host, on a GPU a sync that stalls the kernel
                queue; ``generate`` turns it off for the tokens it made itself (drawn from
                the vocabulary, positions checked once per call). With False the
                embeddings are looked up directly (their modules' hooks do not run).

        Returns:
            :class:`GPT2Output`.
        """
        check_rank(input_ids, 2, "input_ids", "(batch, n)")
        batch, n = input_ids.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = self.new_cache()
        n_past = _cache_length(cache)
        if position_ids is None:
            position_ids = torch.arange(n_past, n_past + n, device=input_ids.device)[None]
        else:
            check_rank(position_ids, 2, "position_ids", "(batch, n)")
            if position_ids.shape[-1] != n or position_ids.shape[0] not in (1, batch):
                raise ValueError(
                    f"`position_ids` must have shape ({batch}, {n}) or (1, {n}), "
                    f"got {tuple(position_ids.shape)}"
                )
        if check_ids:
            x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        else:
            x = nn.Embedding.forward(self.word_embeddings, input_ids) + nn.Embedding.forward(
                self.position_embeddings, position_ids
            )
        if token_type_ids is not None:
            if token_type_ids.shape != input_ids.shape:
                raise ValueError(
                    f"`token_type_ids` must have the shape of `input_ids` {(batch, n)}, "
                    f"got {tuple(token_type_ids.shape)}"
                )
            x = x + self.word_embeddings(token_type_ids, name="token_type_ids")
        mask = None
        if attention_mask is not None:
            mask = hf_attention_mask(attention_mask, (batch, n_past + n))
        out = self.decoder(
            self.dropout(x),
            mask=mask,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return GPT2Output(
            last_hidden_state=out.last_hidden_state,
            past_key_values=cache if (use_cache or past_key_values is not None) else None,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )


class GPT2LMHeadModel(GenerationMixin, PretrainedMixin, nn.Module):
    """GPT-2 with its language-model head (``lm_head``, tied to ``word_embeddings``).

    ``generate`` (:meth:`~attnzoo.transformers_zoo.generation.GenerationMixin.generate`)
    continues LEFT-padded prompts with one cached forward per new token.

    Parameters: ``transformer`` (:class:`GPT2Model`) and ``lm_head`` (no bias; the same
    tensor as ``transformer.word_embeddings.weight``).
    """

    config_class = GPT2Config
    hf_to_zoo_rules = gpt2_hf_to_zoo_rules("transformer.")
    zoo_to_hf_rules = _zoo_rules("transformer.")

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute every decoder layer in the backward pass instead of keeping its
        activations (:func:`~attnzoo.transformers_zoo.stacks.set_gradient_checkpointing`);
        ``enabled=False`` switches it back off."""
        set_gradient_checkpointing(self, enabled)  # type: ignore[arg-type]

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.word_embeddings.weight

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> GPT2Config:
        return gpt2_config_from_hf(hf)

    @classmethod
    def config_to_hf(cls, config: GPT2Config) -> dict[str, Any]:
        return gpt2_config_to_hf(config)

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        state = gpt2_state_from_hf(state)
        embeddings = state.get("transformer.word_embeddings.weight")
        head = state.get("lm_head.weight")
        if embeddings is not None and head is None:
            state["lm_head.weight"] = embeddings  # saved once, as transformers does for ties
        elif embeddings is not None and head is not None and not torch.equal(head, embeddings):
            raise ValueError(
                "checkpoint keys `lm_head.weight` and `transformer.wte.weight` differ, but "
                "this model ties them"
            )
        return state

    @classmethod
    def transform_to_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return _state_to_hf(state)

    def new_cache(self) -> list[LayerCache]:
        """Empty per-layer caches for incremental decoding."""
        return self.transformer.new_cache()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: list[LayerCache] | None = None,
        use_cache: bool = False,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> CausalLMOutput:
        """Next-token logits ``(batch, n, vocab_size)``; arguments as :meth:`GPT2Model.forward`.

        Args:
            labels: ``(batch, n)`` target ids (usually ``input_ids``), -100 = ignored; the
                loss compares ``logits[:, t]`` with ``labels[:, t + 1]`` (shifted inside,
                as Hugging Face does), averaged over the non-ignored targets.
        """
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = project(out.last_hidden_state, self.lm_head)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                    f"got {tuple(labels.shape)}"
                )
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1),
                labels[:, 1:].flatten().to(logits.device),
                ignore_index=-100,
            )
        return CausalLMOutput(
            logits=logits,
            loss=loss,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )

    def _begin_generation(
        self, input_ids: Tensor, attention_mask: Tensor | None, options: GenerationOptions
    ) -> GenerationStart:
        """Generation's start (:meth:`GenerationMixin.generate`): one forward per new token.

        A batch of unequal prompts ``input_ids`` ``(batch, n)`` must be LEFT-padded, with
        ``attention_mask`` ``(batch, n)`` 1/True = real token; positions count real tokens
        only, as in Hugging Face. Returns the prompt followed by the generated tokens; EOS
        and padding default to ``config.eos_token_id`` and ``config.pad_token_id``.
        """
        check_rank(input_ids, 2, "input_ids", "(batch, n)")
        batch, n = input_ids.shape
        check_generation_length(n, options.max_new_tokens, self.config.n_positions, "n_positions")
        if attention_mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            mask = hf_attention_mask(attention_mask, (batch, n)).to(input_ids.device)
        # One read-back for the whole call: are the prompts left-padded, and padded at all?
        # Without padding every step runs with no mask (the causal one aside), so no layer
        # spends kernels on mask handling.
        left_padded, unpadded = torch.stack([mask[:, -1].all(), mask.all()]).tolist()
        if not left_padded:
            raise ValueError(
                "`attention_mask`: generate needs LEFT-padded prompts (every row's last "
                "position a real token)"
            )
        state = {
            "cache": self.new_cache(),
            "tokens": input_ids,
            "mask": None if unpadded else mask,
            "positions": position_ids_from_attention_mask(mask),
        }
        return GenerationStart(
            step=self._step,
            state=state,
            history=input_ids,
            history_mask=mask,
            prefix=input_ids,
            eos=self.config.eos_token_id,
            pad=self.config.pad_token_id,
            vocab_size=self.config.vocab_size,
        )

    def _step(self, prev_tokens: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict]:
        """One forward: the whole prompt first (empty cache), then the previous token.

        Returns the last position's logits ``(N, vocab)`` and the updated state (the cache
        is extended in place; mask and positions are new tensors). The prompt's ids are
        checked; the generated tokens' are not (``check_ids=False``: no host sync per
        token), as ``generate`` vouches for them: drawn from the vocabulary or the padding
        id it checked, at positions below ``n_positions`` (checked for the whole call).
        """
        cache = state["cache"]
        prompt = _cache_length(cache) == 0
        if prompt:
            ids, positions = state["tokens"], state["positions"]
        else:
            ids = prev_tokens[:, None]
            positions = state["positions"][:, -1:] + 1
            state = {
                "cache": cache,
                "mask": None if state["mask"] is None else F.pad(state["mask"], (0, 1), value=True),
                "positions": positions,
            }
        out = self.transformer(
            ids,
            attention_mask=state["mask"],
            position_ids=positions,
            past_key_values=cache,
            check_ids=prompt,
        )
        # Only the last position's logits are needed: the vocabulary projection, the
        # largest matrix of the model, runs on one row per sequence, also for the prompt.
        return project(out.last_hidden_state[:, -1], self.lm_head), state


# ---------------------------------------------------------------------------------------
# Few-shot classification (Brown et al. 2020)
# ---------------------------------------------------------------------------------------


def format_few_shot(demonstrations: Sequence[tuple[str, str]], query: str) -> str:
    """The prompt: one ``"Input: {text}\\nLabel: {label}\\n\\n"`` block per demonstration,
    then ``"Input: {query}\\nLabel:"``; a label is scored as the continuation ``" {label}"``."""
    blocks = [f"Input: {text}\nLabel: {label}\n\n" for text, label in demonstrations]
    return "".join(blocks) + f"Input: {query}\nLabel:"


@torch.no_grad()
def few_shot_classify(
    model: GPT2LMHeadModel,
    tokenizer_fn: Callable[[str], Sequence[int]],
    demonstrations: Sequence[tuple[str, str]],
    query: str,
    labels: Sequence[str],
    return_scores: bool = False,
) -> str | tuple[str, dict[str, float]]:
    """Classify ``query`` in context: the label with the highest log-likelihood wins.

    The ``k`` demonstrations ``(text, label)`` and the query are formatted by
    :func:`format_few_shot`; the prompt and each label continuation ``" {label}"`` are
    tokenised separately by ``tokenizer_fn`` (str -> ids) and concatenated, and a label's
    score is the summed log-probability of its tokens given the prompt (GPT-3's in-context
    setting with no gradient update; summed, so shorter labels are not favoured by
    averaging).

    Returns:
        the best label, or ``(label, {label: log-likelihood})`` with ``return_scores``.
    """
    if not labels:
        raise ValueError("`labels` must name at least one label, got none")
    device = next(model.parameters()).device
    prompt = list(tokenizer_fn(format_few_shot(demonstrations, query)))
    scores: dict[str, float] = {}
    for label in labels:
        continuation = list(tokenizer_fn(" " + label))
        if not prompt or not continuation:
            raise ValueError(f"`tokenizer_fn` gave no tokens for the prompt or label {label!r}")
        ids = torch.tensor([prompt + continuation], device=device)
        if ids.shape[1] > model.config.n_positions:
            raise ValueError(
                f"the few-shot prompt with label {label!r} has {ids.shape[1]} tokens, more "
                f"than n_positions ({model.config.n_positions}): use fewer demonstrations"
            )
        log_probs = model(ids).logits[0, :-1].float().log_softmax(dim=-1)
        targets = ids[0, 1:]
        token_scores = log_probs.gather(-1, targets[:, None]).squeeze(-1)
        scores[label] = float(token_scores[len(prompt) - 1 :].sum())
    best = max(labels, key=lambda label: scores[label])
    return (best, scores) if return_scores else best


__all__ = [
    "CausalLMOutput",
    "GPT2Config",
    "GPT2LMHeadModel",
    "GPT2Model",
    "GPT2Output",
    "few_shot_classify",
    "format_few_shot",
    "gpt2_config_from_hf",
    "gpt2_config_to_hf",
    "gpt2_hf_to_zoo_rules",
    "gpt2_state_from_hf",
    "gpt2_state_to_hf",
    "position_ids_from_attention_mask",
]
