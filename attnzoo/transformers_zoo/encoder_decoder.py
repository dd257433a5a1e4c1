"""Encoder-decoder models warm-started from pretrained encoders and decoders.

Rothe et al. (2020), "Leveraging Pre-trained Checkpoints for Sequence Generation Tasks":
a sequence-to-sequence transformer whose encoder is a pretrained BERT and whose decoder is
a pretrained BERT (BERT2BERT) or GPT-2 (BERT2GPT2). The decoder turns causal and gains,
in every layer, a cross-attention sub-layer over the encoder output; only those
cross-attention weights start from scratch, everything else is loaded. This is what
Hugging Face's ``EncoderDecoderModel`` builds, and the weights convert both ways.

The model, top to bottom::

    h_enc = encoder(input_ids, attention_mask).last_hidden_state     # BertModel
    h_enc = enc_to_dec_proj(h_enc)        # only when the two widths differ (new weights)
    x = decoder embeddings(decoder_input_ids)
    for each decoder layer (a DecoderLayer):
        causal self-attention -> cross-attention to h_enc -> feed-forward
        (post-LN for a BERT decoder, pre-LN + final LayerNorm for GPT-2)
    logits = LM head(x)                   # tied to the decoder's word embeddings

The decoders:

* :class:`BertDecoder`: Hugging Face ``BertLMHeadModel`` with ``is_decoder=True,
  add_cross_attention=True``: :class:`~attnzoo.transformers_zoo.bert.BertEmbeddings`, a
  post-LN :class:`~attnzoo.transformers_zoo.stacks.TransformerDecoder`, the masked-LM
  head (``cls.predictions``) used as the next-token head.
* :class:`GPT2Decoder`: Hugging Face ``GPT2LMHeadModel`` with ``add_cross_attention=True``:
  the GPT-2 embeddings, a pre-LN decoder stack with cross-attention (``ln_cross_attn``
  before it), the tied ``lm_head``.

Key maps (Hugging Face -> here, per layer ``i``; the ``bert.`` / ``transformer.`` prefix
of head checkpoints is optional)::

    BERT  encoder.layer.{i}.attention.self.{q,k,v}      -> decoder.layers.{i}.self_attention.{q,k,v}
          encoder.layer.{i}.attention.output.dense      -> decoder.layers.{i}.self_attention.out
          encoder.layer.{i}.attention.output.LayerNorm  -> decoder.layers.{i}.self_attention_norm
          encoder.layer.{i}.crossattention.*            -> the same with cross_attention
          encoder.layer.{i}.intermediate.dense          -> decoder.layers.{i}.ffn.intermediate
          encoder.layer.{i}.output.dense                -> decoder.layers.{i}.ffn.output
          encoder.layer.{i}.output.LayerNorm            -> decoder.layers.{i}.ffn_norm
          embeddings.*  (LayerNorm -> norm)             -> embeddings.*
    GPT-2 h.{i}.crossattention.q_attn                   -> decoder.layers.{i}.cross_attention.query
          h.{i}.crossattention.c_attn (fused k|v)       -> decoder.layers.{i}.cross_attention.{k,v}
          h.{i}.crossattention.c_proj                   -> decoder.layers.{i}.cross_attention.out
          h.{i}.ln_cross_attn                           -> decoder.layers.{i}.cross_attention_norm
          everything else as in :mod:`attnzoo.transformers_zoo.gpt2`

A composite Hugging Face checkpoint prefixes them with ``encoder.`` / ``decoder.``.

Masks: ``attention_mask`` and ``decoder_attention_mask`` follow Hugging Face's documented
interface, ``(batch, n)``, 1/True = real token, 0/False = padding; integer 0/1 and boolean
tensors are both accepted (the one place the library takes a 0/1 mask; see
:func:`~attnzoo.transformers_zoo.checkpoints.hf_attention_mask`); a float mask is a
``TypeError``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.projection import project
from ..attention.validation import check_int, check_rank, check_token_ids
from .bert import HF_TO_ZOO_RULES as BERT_HF_TO_ZOO_RULES
from .bert import BertConfig, BertEmbeddings, BertHeads, BertModel
from .checkpoints import (
    hf_attention_mask,
    load_state_strict,
    read_hf_directory,
    rename_keys,
    write_hf_directory,
)
from .embeddings import LearnedPositionalEmbedding, TokenEmbedding
from .generation import (
    GenerationMixin,
    GenerationOptions,
    GenerationStart,
    check_generation_length,
)
from .gpt2 import (
    GPT2Config,
    gpt2_config_from_hf,
    gpt2_config_to_hf,
    gpt2_hf_to_zoo_rules,
    gpt2_state_from_hf,
    gpt2_state_to_hf,
)
from .layers import LayerCache
from .stacks import StackOutput, TransformerDecoder

# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------


@dataclass
class DecoderOutput:
    """What a decoder returns.

    Attributes:
        logits: ``(batch, n, vocab_size)``.
        hidden_states: with ``output_hidden_states``: ``depth + 1`` tensors ``(batch, n, dim)``.
        attentions: with ``output_attentions``: every layer's ``(batch, heads, n, n_k)``.
        cross_attentions: with ``output_attentions``: every layer's ``(batch, heads, n, n_c)``.
    """

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None


@dataclass
class Seq2SeqLMOutput:
    """What :class:`EncoderDecoderModel` returns.

    Attributes:
        logits: ``(batch, n_dec, vocab_size)`` next-token scores of the decoder.
        loss: with ``labels``: mean cross-entropy over the labels != -100.
        encoder_last_hidden_state: ``(batch, n_enc, encoder hidden size)``.
        encoder_attentions, decoder_attentions, cross_attentions: with
            ``output_attentions``: per-layer weights ``(batch, heads, n_q, n_k)``.
        decoder_hidden_states, encoder_hidden_states: with ``output_hidden_states``.
    """

    logits: Tensor
    loss: Tensor | None = None
    encoder_last_hidden_state: Tensor | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
    decoder_attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    decoder_hidden_states: tuple[Tensor, ...] | None = None


def _cache_length(cache: list[LayerCache] | None) -> int:
    return 0 if cache is None else len(cache[0].self_attention)


def _is_cross_attention_key(key: str) -> bool:
    return ".cross_attention." in key or ".cross_attention_norm." in key


# ---------------------------------------------------------------------------------------
# BERT as a decoder
# ---------------------------------------------------------------------------------------

_BERT_PREFIX = r"^(?:bert\.)?"
_BERT_LAYER = _BERT_PREFIX + r"encoder\.layer\.(\d+)\."
_BERT_DST = r"decoder.layers.\1."
BERT_DECODER_HF_RULES: tuple[tuple[str, str], ...] = (
    (_BERT_LAYER + r"attention\.self\.(query|key|value)\.", _BERT_DST + r"self_attention.\2."),
    (_BERT_LAYER + r"attention\.output\.dense\.", _BERT_DST + "self_attention.out."),
    (_BERT_LAYER + r"attention\.output\.LayerNorm\.", _BERT_DST + "self_attention_norm."),
    (
        _BERT_LAYER + r"crossattention\.self\.(query|key|value)\.",
        _BERT_DST + r"cross_attention.\2.",
    ),
    (_BERT_LAYER + r"crossattention\.output\.dense\.", _BERT_DST + "cross_attention.out."),
    (_BERT_LAYER + r"crossattention\.output\.LayerNorm\.", _BERT_DST + "cross_attention_norm."),
    (_BERT_LAYER + r"intermediate\.dense\.", _BERT_DST + "ffn.intermediate."),
    (_BERT_LAYER + r"output\.dense\.", _BERT_DST + "ffn.output."),
    (_BERT_LAYER + r"output\.LayerNorm\.", _BERT_DST + "ffn_norm."),
    (_BERT_PREFIX + r"embeddings\.LayerNorm\.", "embeddings.norm."),
    (_BERT_PREFIX + r"embeddings\.", "embeddings."),
    (_BERT_PREFIX + r"pooler\.", "pooler."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "cls.predictions.transform.norm."),
)
"""Hugging Face BERT (``BertModel``, ``BertLMHeadModel``, ``BertForMaskedLM``,
``BertForPreTraining``) -> :class:`BertDecoder` key rules."""

_ZOO_LAYER = r"^decoder\.layers\.(\d+)\."
_HF_LAYER = r"bert.encoder.layer.\1."
BERT_DECODER_ZOO_RULES: tuple[tuple[str, str], ...] = (
    (_ZOO_LAYER + r"self_attention\.(query|key|value)\.", _HF_LAYER + r"attention.self.\2."),
    (_ZOO_LAYER + r"self_attention\.out\.", _HF_LAYER + "attention.output.dense."),
    (_ZOO_LAYER + r"self_attention_norm\.", _HF_LAYER + "attention.output.LayerNorm."),
    (
        _ZOO_LAYER + r"cross_attention\.(query|key|value)\.",
        _HF_LAYER + r"crossattention.self.\2.",
    ),
    (_ZOO_LAYER + r"cross_attention\.out\.", _HF_LAYER + "crossattention.output.dense."),
    (_ZOO_LAYER + r"cross_attention_norm\.", _HF_LAYER + "crossattention.output.LayerNorm."),
    (_ZOO_LAYER + r"ffn\.intermediate\.", _HF_LAYER + "intermediate.dense."),
    (_ZOO_LAYER + r"ffn\.output\.", _HF_LAYER + "output.dense."),
    (_ZOO_LAYER + r"ffn_norm\.", _HF_LAYER + "output.LayerNorm."),
    (r"^embeddings\.norm\.", "bert.embeddings.LayerNorm."),
    (r"^embeddings\.", "bert.embeddings."),
    (r"^cls\.predictions\.transform\.norm\.", "cls.predictions.transform.LayerNorm."),
)
""":class:`BertDecoder` -> Hugging Face ``BertLMHeadModel`` key rules (the inverse of
:data:`BERT_DECODER_HF_RULES`)."""


class BertDecoder(nn.Module):
    """BERT as a causal decoder with cross-attention (Hugging Face ``BertLMHeadModel`` with
    ``is_decoder=True, add_cross_attention=True``).

    Args:
        config: a :class:`~attnzoo.transformers_zoo.bert.BertConfig`.

    Parameters: ``embeddings.*`` (:class:`BertEmbeddings`), ``decoder.layers.{i}.*``
    (post-LN :class:`DecoderLayer`: ``self_attention``, ``self_attention_norm``,
    ``cross_attention``, ``cross_attention_norm``, ``ffn``, ``ffn_norm``), ``cls.predictions``
    (transform + bias; the output matrix is the word embeddings).
    """

    model_type: ClassVar[str] = "bert"
    # Checkpoint keys a warm start may leave unused (an encoder's pooler, the NSP head).
    unused_patterns: ClassVar[tuple[str, ...]] = (r"^pooler\.", r"^cls\.seq_relationship\.")

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"`config` must be a BertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.decoder = TransformerDecoder(config.stack_config(), cross_attention=True)
        self.cls = BertHeads(config, next_sentence=False)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_positions(self) -> int:
        return self.config.max_position_embeddings

    def new_cache(self) -> list[LayerCache]:
        """Empty per-layer self- and cross-attention caches."""
        return self.decoder.new_cache()

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> BertConfig:
        """A BERT ``config.json`` dict (encoder or decoder) -> :class:`BertConfig`."""
        hf = {k: v for k, v in hf.items() if k not in ("is_decoder", "add_cross_attention")}
        return BertConfig.from_hf(hf)

    @classmethod
    def state_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename a Hugging Face BERT state dict; drop constant buffers and tied copies."""
        state = rename_keys(state, BERT_DECODER_HF_RULES)
        state = {
            key: value
            for key, value in state.items()
            if key not in ("embeddings.position_ids", "embeddings.token_type_ids")
        }
        ties = {
            "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias",
        }
        for copy, source in ties.items():
            if copy in state:
                if source in state and not torch.equal(state[copy], state[source]):
                    raise ValueError(
                        f"checkpoint key {copy!r} differs from {source!r}; this model ties them"
                    )
                del state[copy]
        return state

    @classmethod
    def warm_start_new(cls, state: dict[str, Tensor]) -> tuple[str, ...]:
        """Regex patterns of the parameters a warm start may initialise afresh: the
        cross-attention always, the LM head when the checkpoint has none (a ``BertModel``)."""
        new = [r"\.cross_attention\.", r"\.cross_attention_norm\."]
        if not any(key.startswith("cls.predictions.") for key in state):
            new.append(r"^cls\.predictions\.")
        return tuple(new)

    @classmethod
    def config_to_hf(cls, config: BertConfig) -> dict[str, Any]:
        """The ``config.json`` dict of a Hugging Face ``BertLMHeadModel`` decoder."""
        hf = config.to_hf()
        hf.update(is_decoder=True, add_cross_attention=True, architectures=["BertLMHeadModel"])
        return hf

    def hf_config(self) -> dict[str, Any]:
        """:meth:`config_to_hf` of this decoder's own config."""
        return self.config_to_hf(self.config)

    @classmethod
    def state_to_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hugging Face ``BertLMHeadModel`` names; the tied output matrix is not written
        (Hugging Face ties it to the word embeddings on load)."""
        return rename_keys(state, BERT_DECODER_ZOO_RULES)

    def forward(
        self,
        input_ids: Tensor,
        context: Tensor,
        attention_mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: list[LayerCache] | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> DecoderOutput:
        """Next-token logits for ``input_ids`` ``(batch, n)`` (with a cache: the new tokens).

        Args:
            context: encoder output ``(batch, n_c, hidden_size)``.
            attention_mask: boolean ``(batch, n_past + n)`` key-padding mask, or None.
            context_mask: boolean ``(batch, n_c)``, or None.
            cache: from :meth:`new_cache`, extended in place.
        """
        n_past = _cache_length(cache)
        positions = torch.arange(n_past, n_past + input_ids.shape[1], device=input_ids.device)
        x = self.embeddings(input_ids, position_ids=positions[None])
        out = self.decoder(
            x,
            context,
            mask=attention_mask,
            context_mask=context_mask,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        words = self.embeddings.word_embeddings.weight
        logits = self.cls.predictions(out.last_hidden_state, words)
        return _decoder_output(logits, out)


def _decoder_output(logits: Tensor, out: StackOutput) -> DecoderOutput:
    return DecoderOutput(logits, out.hidden_states, out.attentions, out.cross_attentions)


# ---------------------------------------------------------------------------------------
# GPT-2 as a decoder
# ---------------------------------------------------------------------------------------

_GPT2_LAYER = r"^(?:transformer\.)?h\.(\d+)\."
GPT2_CROSS_HF_RULES: tuple[tuple[str, str], ...] = (
    (_GPT2_LAYER + r"crossattention\.q_attn\.", r"decoder.layers.\1.cross_attention.query."),
    (_GPT2_LAYER + r"crossattention\.c_attn\.", r"decoder.layers.\1.cross_attention.c_attn."),
    (_GPT2_LAYER + r"crossattention\.c_proj\.", r"decoder.layers.\1.cross_attention.out."),
    (_GPT2_LAYER + r"crossattention\.(bias|masked_bias)$", r"decoder.layers.\1.cross_hf_\2"),
    (_GPT2_LAYER + r"ln_cross_attn\.", r"decoder.layers.\1.cross_attention_norm."),
)
"""Hugging Face GPT-2 cross-attention keys -> :class:`GPT2Decoder` (before the fused
``c_attn`` is split and the Conv1D weights transposed); the other keys follow
:mod:`attnzoo.transformers_zoo.gpt2`."""

_GPT2_CROSS_KV = re.compile(r"^(.*cross_attention\.)c_attn\.(weight|bias)$")
_GPT2_CROSS_CONV1D = re.compile(r"cross_attention\.(query|out)\.weight$")


class GPT2Decoder(nn.Module):
    """GPT-2 as a decoder with cross-attention (Hugging Face ``GPT2LMHeadModel`` with
    ``add_cross_attention=True``).

    Args:
        config: a :class:`~attnzoo.transformers_zoo.gpt2.GPT2Config`.

    Parameters: ``word_embeddings``, ``position_embeddings``, ``decoder`` (pre-LN
    :class:`TransformerDecoder` with cross-attention and the final ``norm``), ``lm_head``
    (tied to ``word_embeddings``).
    """

    model_type: ClassVar[str] = "gpt2"
    unused_patterns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        if not isinstance(config, GPT2Config):
            raise TypeError(f"`config` must be a GPT2Config, got {type(config).__name__}")
        self.config = config
        self.word_embeddings = TokenEmbedding(config.vocab_size, config.n_embd)
        self.position_embeddings = LearnedPositionalEmbedding(config.n_positions, config.n_embd)
        self.dropout = nn.Dropout(config.embd_pdrop)
        self.decoder = TransformerDecoder(config.stack_config(), cross_attention=True)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.word_embeddings.weight

    @property
    def hidden_size(self) -> int:
        return self.config.n_embd

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_positions(self) -> int:
        return self.config.n_positions

    def new_cache(self) -> list[LayerCache]:
        """Empty per-layer self- and cross-attention caches."""
        return self.decoder.new_cache()

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> GPT2Config:
        """A GPT-2 ``config.json`` dict (with or without cross-attention) -> config."""
        return gpt2_config_from_hf({**hf, "add_cross_attention": False})

    @classmethod
    def state_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rename, split the fused projections, transpose the Conv1D weights, tie the head."""
        state = gpt2_state_from_hf(
            rename_keys(state, GPT2_CROSS_HF_RULES + gpt2_hf_to_zoo_rules(""))
        )
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            if re.search(r"\.cross_hf_(bias|masked_bias)$", key):
                continue  # a constant mask buffer of old checkpoints
            fused = _GPT2_CROSS_KV.match(key)
            if fused:
                base, kind = fused.groups()
                # Conv1D (in, 2 * out) -> Linear key and value (out, in); bias (2 * out,).
                parts = (value.t() if kind == "weight" else value).chunk(2, dim=0)
                for name, part in zip(("key", "value"), parts, strict=True):
                    out[f"{base}{name}.{kind}"] = part.contiguous()
            elif _GPT2_CROSS_CONV1D.search(key):
                out[key] = value.t().contiguous()
            else:
                out[key] = value
        head = out.pop("lm_head.weight", None)
        words = out.get("word_embeddings.weight")
        if head is not None and words is not None and not torch.equal(head, words):
            raise ValueError("checkpoint keys `lm_head.weight` and `wte.weight` differ; tied here")
        if words is not None:
            out["lm_head.weight"] = words
        return out

    @classmethod
    def warm_start_new(cls, state: dict[str, Tensor]) -> tuple[str, ...]:
        """Regex patterns of the parameters a warm start initialises afresh."""
        return (r"\.cross_attention\.", r"\.cross_attention_norm\.")

    @classmethod
    def config_to_hf(cls, config: GPT2Config) -> dict[str, Any]:
        """The ``config.json`` dict of a Hugging Face ``GPT2LMHeadModel`` with
        cross-attention."""
        return {**gpt2_config_to_hf(config), "add_cross_attention": True}

    def hf_config(self) -> dict[str, Any]:
        """:meth:`config_to_hf` of this decoder's own config."""
        return self.config_to_hf(self.config)

    @classmethod
    def state_to_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fuse the cross-attention key/value into ``c_attn``, transpose to Conv1D, rename
        to Hugging Face ``GPT2LMHeadModel`` names; the tied ``lm_head`` is not written."""
        out: dict[str, Tensor] = {}
        fused: dict[str, dict[str, Tensor]] = {}
        for key, value in state.items():
            if key == "lm_head.weight":
                continue
            match = re.match(
                r"^decoder\.layers\.(\d+)\.cross_attention\.(\w+)\.(weight|bias)$", key
            )
            norm = re.match(r"^decoder\.layers\.(\d+)\.cross_attention_norm\.(.*)$", key)
            if match:
                layer, name, kind = match.groups()
                base = f"transformer.h.{layer}.crossattention."
                weight = value.t() if kind == "weight" else value
                if name in ("key", "value"):
                    fused.setdefault(f"{base}c_attn.{kind}", {})[name] = value
                else:
                    out[base + {"query": "q_attn", "out": "c_proj"}[name] + f".{kind}"] = weight
            elif norm:
                out[f"transformer.h.{norm.group(1)}.ln_cross_attn.{norm.group(2)}"] = value
            else:
                out[key] = value
        for key, parts in fused.items():
            joined = torch.cat([parts["key"], parts["value"]], dim=0)
            out[key] = joined.t() if key.endswith("weight") else joined
        rest = {k: v for k, v in out.items() if not k.startswith("transformer.h.")}
        crossed = {k: v for k, v in out.items() if k.startswith("transformer.h.")}
        renamed = {f"transformer.{key}": value for key, value in gpt2_state_to_hf(rest).items()}
        return {**crossed, **renamed}

    def forward(
        self,
        input_ids: Tensor,
        context: Tensor,
        attention_mask: Tensor | None = None,
        context_mask: Tensor | None = None,
        cache: list[LayerCache] | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> DecoderOutput:
        """As :meth:`BertDecoder.forward`."""
        n_past = _cache_length(cache)
        positions = torch.arange(n_past, n_past + input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids, name="decoder_input_ids")
        x = self.dropout(x + self.position_embeddings(positions[None]))
        out = self.decoder(
            x,
            context,
            mask=attention_mask,
            context_mask=context_mask,
            cache=cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return _decoder_output(project(out.last_hidden_state, self.lm_head), out)


DECODER_CLASSES: dict[str, type[BertDecoder] | type[GPT2Decoder]] = {
    "bert": BertDecoder,
    "gpt2": GPT2Decoder,
}
"""Hugging Face ``model_type`` -> decoder class."""


# ---------------------------------------------------------------------------------------
# Loading (strict, with the warm start's new parameters named)
# ---------------------------------------------------------------------------------------


@dataclass
class LoadingInfo:
    """What a warm start did not load.

    Attributes:
        new_keys: parameters initialised afresh (``encoder.``/``decoder.`` prefixed names).
        unused_keys: checkpoint keys (after renaming) that the model has no place for.
    """

    new_keys: list[str]
    unused_keys: list[str]


def _fill(
    model: nn.Module,
    state: dict[str, Tensor],
    new_patterns: Sequence[str],
    unused_patterns: Sequence[str],
) -> tuple[list[str], list[str]]:
    """Load ``state`` into ``model`` strictly, except that parameters matching
    ``new_patterns`` may be missing (they keep their fresh initialisation) and checkpoint
    keys matching ``unused_patterns`` may be left over. Returns ``(new, unused)``."""
    expected = model.state_dict()
    new = sorted(
        key for key in expected if key not in state and any(re.search(p, key) for p in new_patterns)
    )
    unused = sorted(
        key
        for key in state
        if key not in expected and any(re.search(p, key) for p in unused_patterns)
    )
    full = {key: value for key, value in state.items() if key not in unused}
    full.update({key: expected[key] for key in new})
    load_state_strict(model, full)  # lists any other missing/unexpected key
    return new, unused


def _load_encoder(
    encoder_class: type[BertModel], hf: dict[str, Any], state: dict[str, Tensor]
) -> tuple[BertModel, list[str]]:
    """A BERT-family encoder from a Hugging Face config and state (``BertModel`` or a head
    checkpoint: the ``bert.`` prefix is dropped, the heads are left unused)."""
    if not (isinstance(encoder_class, type) and issubclass(encoder_class, BertModel)):
        raise TypeError(f"`encoder_class` must be a BertModel subclass, got {encoder_class!r}")
    prefix = encoder_class.base_model_prefix + "."
    unused = sorted(key for key in state if key.startswith("cls."))
    state = {key.removeprefix(prefix): value for key, value in state.items() if key not in unused}
    config = encoder_class.config_from_hf(
        {k: v for k, v in hf.items() if k not in ("is_decoder", "add_cross_attention")}
    )
    pooled = any(key.startswith("pooler.") for key in state)
    encoder = encoder_class(config, add_pooling_layer=pooled)
    state = encoder_class.transform_from_hf(rename_keys(state, BERT_HF_TO_ZOO_RULES))
    load_state_strict(encoder, state)
    return encoder, unused


def _load_decoder(
    decoder_class: type[BertDecoder] | type[GPT2Decoder] | None,
    hf: dict[str, Any],
    state: dict[str, Tensor],
    warm_start: bool,
) -> tuple[BertDecoder | GPT2Decoder, list[str], list[str]]:
    if decoder_class is None:
        model_type = hf.get("model_type")
        if model_type not in DECODER_CLASSES:
            raise ValueError(
                f"decoder config.json `model_type` must be one of {sorted(DECODER_CLASSES)}, "
                f"got {model_type!r}"
            )
        decoder_class = DECODER_CLASSES[model_type]
    if decoder_class not in (BertDecoder, GPT2Decoder):
        raise TypeError(
            f"`decoder_class` must be BertDecoder or GPT2Decoder, got {decoder_class!r}"
        )
    decoder = decoder_class(decoder_class.config_from_hf(hf))  # type: ignore[arg-type]
    state = decoder_class.state_from_hf(state)
    new_patterns = decoder_class.warm_start_new(state) if warm_start else ()
    unused_patterns = decoder_class.unused_patterns if warm_start else ()
    new, unused = _fill(decoder, state, new_patterns, unused_patterns)
    return decoder, new, unused


# ---------------------------------------------------------------------------------------
# The encoder-decoder model
# ---------------------------------------------------------------------------------------


def shift_tokens_right(labels: Tensor, pad_token_id: int, decoder_start_token_id: int) -> Tensor:
    """Decoder inputs from labels: ``[start, labels[:, :-1]]`` with -100 replaced by pad.

    ``(batch, n)`` -> ``(batch, n)`` int64 (Hugging Face's teacher-forcing inputs).
    """
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class EncoderDecoderModel(GenerationMixin, nn.Module):
    """A BERT-family encoder and a decoder with cross-attention, as one seq2seq model.

    ``generate`` (:meth:`~attnzoo.transformers_zoo.generation.GenerationMixin.generate`)
    decodes from the encoded source; see :meth:`_begin_generation` for ``use_cache``.

    Args:
        encoder: a :class:`~attnzoo.transformers_zoo.bert.BertModel` (or subclass).
        decoder: a :class:`BertDecoder` or :class:`GPT2Decoder`.
        decoder_start_token_id: the first decoder input (BERT2BERT uses ``[CLS]``); default
            GPT-2's ``bos_token_id``; needed by :meth:`generate` and by ``labels`` without
            ``decoder_input_ids``.
        eos_token_id: :meth:`generate` stops a row after it; default the decoder's
            (GPT-2's ``eos_token_id``; none for BERT: pass ``[SEP]``).
        pad_token_id: written after EOS and used for shifted labels; default the
            decoder's pad id, else ``eos_token_id``, else 0.

    Parameters: ``encoder.*``, ``decoder.*``, and ``enc_to_dec_proj`` (a fresh
    ``nn.Linear``) when the encoder's and the decoder's widths differ.
    """

    def __init__(
        self,
        encoder: BertModel,
        decoder: BertDecoder | GPT2Decoder,
        decoder_start_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(encoder, BertModel):
            raise TypeError(f"`encoder` must be a BertModel, got {type(encoder).__name__}")
        if not isinstance(decoder, (BertDecoder, GPT2Decoder)):
            raise TypeError(
                f"`decoder` must be a BertDecoder or GPT2Decoder, got {type(decoder).__name__}"
            )
        self.encoder = encoder
        self.decoder = decoder
        encoder_dim = encoder.config.hidden_size
        self.enc_to_dec_proj = (
            nn.Linear(encoder_dim, decoder.hidden_size)
            if encoder_dim != decoder.hidden_size
            else None
        )
        if isinstance(decoder, GPT2Decoder):
            start = decoder.config.bos_token_id
            eos = decoder.config.eos_token_id
            pad = decoder.config.pad_token_id
        else:
            start, eos, pad = None, None, decoder.config.pad_token_id
        self.decoder_start_token_id = (
            start if decoder_start_token_id is None else decoder_start_token_id
        )
        self.eos_token_id = eos if eos_token_id is None else eos_token_id
        pad = pad if pad_token_id is None else pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_id or 0)
        for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if (
                value is not None
                and not 0 <= check_int(value, name, minimum=0) < decoder.vocab_size
            ):
                raise ValueError(f"`{name}` must be in [0, {decoder.vocab_size}), got {value}")

    # ----- loading -------------------------------------------------------------------

    @overload
    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_path: str | os.PathLike[str],
        decoder_path: str | os.PathLike[str],
        encoder_class: type[BertModel] = ...,
        decoder_class: type[BertDecoder] | type[GPT2Decoder] | None = ...,
        output_loading_info: Literal[False] = ...,
        **token_ids: int | None,
    ) -> EncoderDecoderModel: ...

    @overload
    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_path: str | os.PathLike[str],
        decoder_path: str | os.PathLike[str],
        encoder_class: type[BertModel] = ...,
        decoder_class: type[BertDecoder] | type[GPT2Decoder] | None = ...,
        *,
        output_loading_info: Literal[True],
        **token_ids: int | None,
    ) -> tuple[EncoderDecoderModel, LoadingInfo]: ...

    @overload
    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_path: str | os.PathLike[str],
        decoder_path: str | os.PathLike[str],
        encoder_class: type[BertModel] = ...,
        decoder_class: type[BertDecoder] | type[GPT2Decoder] | None = ...,
        output_loading_info: bool = ...,
        **token_ids: int | None,
    ) -> EncoderDecoderModel | tuple[EncoderDecoderModel, LoadingInfo]: ...

    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_path: str | os.PathLike[str],
        decoder_path: str | os.PathLike[str],
        encoder_class: type[BertModel] = BertModel,
        decoder_class: type[BertDecoder] | type[GPT2Decoder] | None = None,
        output_loading_info: bool = False,
        **token_ids: int | None,
    ) -> EncoderDecoderModel | tuple[EncoderDecoderModel, LoadingInfo]:
        """Warm-start from an encoder and a decoder checkpoint (Rothe et al. 2020).

        Every weight of both checkpoints is loaded; the decoder's cross-attention (and its
        LM head when the decoder checkpoint is a bare ``BertModel``, and
        ``enc_to_dec_proj`` when the widths differ) is freshly initialised. Any other
        missing or unknown key is a ``ValueError`` listing them.

        Args:
            encoder_path: Hugging Face BERT directory (``BertModel`` or a head model).
            decoder_path: Hugging Face BERT or GPT-2 directory.
            encoder_class: the encoder's class (a :class:`BertModel` subclass).
            decoder_class: :class:`BertDecoder` or :class:`GPT2Decoder`; default from the
                decoder's ``model_type``.
            output_loading_info: also return a :class:`LoadingInfo`.
            **token_ids: ``decoder_start_token_id``, ``eos_token_id``, ``pad_token_id``.

        Returns:
            The model in eval mode (and the :class:`LoadingInfo`).
        """
        enc_hf, enc_state = read_hf_directory(encoder_path)
        dec_hf, dec_state = read_hf_directory(decoder_path)
        encoder, enc_unused = _load_encoder(encoder_class, enc_hf, enc_state)
        decoder, new, dec_unused = _load_decoder(decoder_class, dec_hf, dec_state, True)
        model = cls(encoder, decoder, **token_ids)
        new = [f"decoder.{key}" for key in new]
        if model.enc_to_dec_proj is not None:
            new += ["enc_to_dec_proj.bias", "enc_to_dec_proj.weight"]
        info = LoadingInfo(
            new_keys=new,
            unused_keys=[f"encoder.{k}" for k in enc_unused] + [f"decoder.{k}" for k in dec_unused],
        )
        model.eval()
        return (model, info) if output_loading_info else model

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], encoder_class: type[BertModel] = BertModel
    ) -> EncoderDecoderModel:
        """Load a Hugging Face ``EncoderDecoderModel`` directory, strictly (every key).

        The ``config.json`` holds ``encoder`` and ``decoder`` configs and the token ids;
        the weights are ``encoder.*``, ``decoder.*`` and, when the widths differ,
        ``enc_to_dec_proj.*``.
        """
        hf, state = read_hf_directory(path)
        for part in ("encoder", "decoder"):
            if not isinstance(hf.get(part), dict):
                raise ValueError(
                    f"config.json in {str(path)!r} must hold an `{part}` config "
                    "(a Hugging Face EncoderDecoderModel directory)"
                )
        parts: dict[str, dict[str, Tensor]] = {"encoder": {}, "decoder": {}, "enc_to_dec_proj": {}}
        unknown = []
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head in parts:
                parts[head][rest] = value
            else:
                unknown.append(key)
        if unknown:
            raise ValueError(f"unexpected keys ({len(unknown)}): {', '.join(sorted(unknown))}")
        encoder, _ = _load_encoder(encoder_class, hf["encoder"], parts["encoder"])
        decoder, _, _ = _load_decoder(None, hf["decoder"], parts["decoder"], False)
        model = cls(
            encoder,
            decoder,
            decoder_start_token_id=hf.get("decoder_start_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )
        if model.enc_to_dec_proj is not None:
            load_state_strict(model.enc_to_dec_proj, parts["enc_to_dec_proj"])
        elif parts["enc_to_dec_proj"]:
            raise ValueError("unexpected keys: enc_to_dec_proj.* (the widths are equal)")
        model.eval()
        return model

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write a Hugging Face ``EncoderDecoderModel`` directory: ``config.json`` with the
        ``encoder`` and ``decoder`` configs and the token ids, and ``model.safetensors``
        with ``encoder.*``, ``decoder.*`` (and ``enc_to_dec_proj.*``) weights; both this
        class's :meth:`from_pretrained` and ``transformers.EncoderDecoderModel`` read it."""
        encoder_class = type(self.encoder)
        encoder_state = encoder_class.transform_to_hf(dict(self.encoder.state_dict()))
        encoder_state = rename_keys(encoder_state, encoder_class.zoo_to_hf_rules)
        decoder_state = type(self.decoder).state_to_hf(dict(self.decoder.state_dict()))
        state = {f"encoder.{key}": value for key, value in encoder_state.items()}
        state.update({f"decoder.{key}": value for key, value in decoder_state.items()})
        if self.enc_to_dec_proj is not None:
            for key, value in self.enc_to_dec_proj.state_dict().items():
                state[f"enc_to_dec_proj.{key}"] = value
        config = {
            "model_type": "encoder-decoder",
            "architectures": ["EncoderDecoderModel"],
            "is_encoder_decoder": True,
            "encoder": encoder_class.config_to_hf(self.encoder.config),
            "decoder": self.decoder.hf_config(),
            "decoder_start_token_id": self.decoder_start_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        write_hf_directory(path, config, state)

    # ----- forward -------------------------------------------------------------------

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> tuple[Tensor, Any]:
        """Encoder output projected to the decoder width ``(batch, n_enc, dim_dec)``, and
        the encoder's full output."""
        check_rank(input_ids, 2, "input_ids", "(batch, n)")
        check_token_ids(input_ids, self.encoder.config.vocab_size, "input_ids")
        out = self.encoder(
            input_ids,
            attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        context = out.last_hidden_state
        if self.enc_to_dec_proj is not None:
            context = self.enc_to_dec_proj(context)
        return context, out

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        decoder_input_ids: Tensor | None = None,
        decoder_attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> Seq2SeqLMOutput:
        """Teacher-forced decoder logits and, with ``labels``, the loss.

        Args:
            input_ids: source ``(batch, n_enc)`` in the encoder's vocabulary.
            attention_mask: ``(batch, n_enc)`` 1/True = real token (bool or 0/1).
            decoder_input_ids: ``(batch, n_dec)``; default ``labels`` shifted right
                (:func:`shift_tokens_right`).
            decoder_attention_mask: ``(batch, n_dec)`` 1/True = real token (bool or 0/1).
            labels: ``(batch, n_dec)`` targets aligned with the logits (``labels[:, t]`` is
                predicted at position ``t``, no shift inside), -100 = ignored.
            output_attentions, output_hidden_states: collect them.
        """
        context, enc = self.encode(
            input_ids, attention_mask, output_attentions, output_hidden_states
        )
        context_mask = hf_attention_mask(attention_mask, input_ids.shape)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("`decoder_input_ids` or `labels` is required")
            decoder_input_ids = shift_tokens_right(
                labels, self.pad_token_id, self._start_token("labels without decoder_input_ids")
            )
        check_rank(decoder_input_ids, 2, "decoder_input_ids", "(batch, n)")
        check_token_ids(decoder_input_ids, self.decoder.vocab_size, "decoder_input_ids")
        if decoder_input_ids.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"`decoder_input_ids` must have batch size {input_ids.shape[0]} (as "
                f"`input_ids`), got {decoder_input_ids.shape[0]}"
            )
        mask = hf_attention_mask(decoder_attention_mask, decoder_input_ids.shape)
        out = self.decoder(
            decoder_input_ids,
            context,
            attention_mask=mask,
            context_mask=context_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        loss = None
        if labels is not None:
            if labels.shape != decoder_input_ids.shape:
                raise ValueError(
                    f"`labels` must have shape {tuple(decoder_input_ids.shape)}, "
                    f"got {tuple(labels.shape)}"
                )
            loss = F.cross_entropy(
                out.logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100
            )
        return Seq2SeqLMOutput(
            logits=out.logits,
            loss=loss,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_attentions=enc.attentions,
            decoder_attentions=out.attentions,
            cross_attentions=out.cross_attentions,
            encoder_hidden_states=enc.hidden_states,
            decoder_hidden_states=out.hidden_states,
        )

    def _start_token(self, why: str) -> int:
        if self.decoder_start_token_id is None:
            raise ValueError(
                f"`decoder_start_token_id` is required for {why}; set it on the model "
                "(BERT2BERT usually starts from [CLS])"
            )
        return self.decoder_start_token_id

    # ----- generation ----------------------------------------------------------------

    def _begin_generation(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        options: GenerationOptions,
        use_cache: bool = True,
    ) -> GenerationStart:
        """Generation's start (:meth:`GenerationMixin.generate`): encode the source.

        With ``use_cache`` every step feeds one token and reuses the decoder's
        self-attention keys/values and the cross-attention keys/values of the encoder
        output (computed at the first step); without it every step recomputes the whole
        prefix (same tokens, for checking). The repetition penalty counts the decoder's
        tokens (its start token included), as Hugging Face does.

        Args:
            input_ids: source ``(batch, n_enc)``.
            attention_mask: ``(batch, n_enc)`` 1/True = real token (bool or 0/1).
            options: the generation options (for the length check).
            use_cache: incremental decoding with KV caches.

        ``generate`` returns ``(batch, 1 + n_new)``: ``decoder_start_token_id``, then the
        generated tokens; EOS and padding default to the model's ``eos_token_id`` and
        ``pad_token_id``.
        """
        start = self._start_token("generate")
        check_generation_length(
            1, options.max_new_tokens, self.decoder.max_positions, "the decoder's positions"
        )
        context, _ = self.encode(input_ids, attention_mask)
        context_mask = hf_attention_mask(attention_mask, input_ids.shape)
        batch = input_ids.shape[0]
        if context_mask is None:
            context_mask = torch.ones(input_ids.shape, dtype=torch.bool, device=input_ids.device)
        state: dict[str, Any] = {"context": context, "context_mask": context_mask}
        if use_cache:
            state["cache"] = self.decoder.new_cache()
        else:
            state["prefix"] = input_ids.new_zeros((batch, 0))
        first = torch.full((batch, 1), start, dtype=torch.long, device=input_ids.device)
        return GenerationStart(
            step=self._generation_step,
            state=state,
            history=first,
            prefix=first,
            eos=self.eos_token_id,
            pad=self.pad_token_id,
            start=start,
        )

    def _generation_step(
        self, tokens: Tensor, state: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Any]]:
        """One decoder step: the new token with the caches, or the whole prefix without;
        returns the last position's logits ``(N, vocab)``."""
        if "cache" in state:
            out = self.decoder(
                tokens[:, None],
                state["context"],
                context_mask=state["context_mask"],
                cache=state["cache"],
            )
            return out.logits[:, -1], state
        prefix = torch.cat([state["prefix"], tokens[:, None]], dim=1)
        out = self.decoder(prefix, state["context"], context_mask=state["context_mask"])
        return out.logits[:, -1], {**state, "prefix": prefix}


# ---------------------------------------------------------------------------------------
# Demo: BERT2BERT warm-started from two tiny BERTs, trained on the copy task
# ---------------------------------------------------------------------------------------


def run_demo(steps: int | None = None, progress: bool = True, seed: int = 0) -> dict[str, float]:
    """BERT2BERT on :func:`~attnzoo.transformers_zoo.tasks.copy_task`.

    Two tiny random BERTs (width 32, 2 layers, 4 heads) are built with the task's
    vocabulary (``PAD = 0`` is BERT's pad id, ``BOS`` the decoder start, ``EOS`` the end),
    saved as Hugging Face directories, warm-started into a BERT2BERT (fresh
    cross-attention), trained with teacher forcing and decoded greedily with the caches.

    Returns:
        ``{"loss": final training loss, "exact_match": share of 256 held-out sources
        copied exactly, "new_keys": number of freshly initialised tensors}``.
    """
    import tempfile

    from .tasks import BOS, EOS, FIRST_SYMBOL, PAD, copy_task
    from .training import TrainConfig, fit

    steps = 600 if steps is None else steps
    n_symbols, min_len, max_len = 8, 3, 6
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=FIRST_SYMBOL + n_symbols,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
    )
    with tempfile.TemporaryDirectory() as directory:
        encoder_dir, decoder_dir = f"{directory}/encoder", f"{directory}/decoder"
        BertModel(config).save_pretrained(encoder_dir)
        BertModel(config).save_pretrained(decoder_dir)
        model, info = EncoderDecoderModel.from_encoder_decoder_pretrained(
            encoder_dir,
            decoder_dir,
            output_loading_info=True,
            decoder_start_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
        )

    def batch(step: int) -> Any:
        return copy_task(
            32, min_len, max_len, n_symbols, torch.Generator().manual_seed(seed + step)
        )

    def loss_fn(model: nn.Module, data: Any) -> Tensor:
        labels = data.tgt.masked_fill(~data.tgt_mask, -100)
        return model(data.src, data.src_mask, labels=labels).loss  # type: ignore[no-any-return]

    history = fit(
        model,
        loss_fn,
        batch,
        TrainConfig(steps=steps, lr=2e-3, warmup=50, progress=progress, description="bert2bert"),
    )
    test = copy_task(256, min_len, max_len, n_symbols, torch.Generator().manual_seed(10**6 + seed))
    out = model.generate(test.src, test.src_mask, max_new_tokens=max_len + 1)[:, 1:]
    width = test.tgt.shape[1]
    out = torch.nn.functional.pad(out, (0, max(0, width - out.shape[1])), value=PAD)[:, :width]
    exact = (out == test.tgt).all(dim=1).float().mean()
    return {
        "loss": float(history.losses[-1]),
        "exact_match": float(exact),
        "new_keys": float(len(info.new_keys)),
    }


__all__ = [
    "BERT_DECODER_HF_RULES",
    "DECODER_CLASSES",
    "GPT2_CROSS_HF_RULES",
    "BertDecoder",
    "DecoderOutput",
    "EncoderDecoderModel",
    "GPT2Decoder",
    "LoadingInfo",
    "Seq2SeqLMOutput",
    "run_demo",
    "shift_tokens_right",
]
