"""XLNet (Yang et al. 2019, "XLNet: Generalized Autoregressive Pretraining for Language
Understanding"), read top to bottom.

XLNet is a post-LN transformer encoder whose attention scores are relative (Transformer-XL,
Dai et al. 2019) and which runs two streams of hidden states:

* the **content stream** ``h`` starts from the word embeddings; its query at position ``i``
  may always see its own token;
* the **query stream** ``g`` (only with ``target_mapping``) starts from the learned
  ``mask_emb`` for each of the ``n_predict`` targets; a target at position ``i`` sees the
  content of the keys ``perm_mask`` allows, but never its own token, which is what it predicts.

Both streams use the same weights. For a query ``q_i`` and a key position ``j`` the score of a
head is::

    score_ij = ((q_i + r_w_bias) . k_j                         content
              + (q_i + r_r_bias) . r_{i-j}                     relative position
              + (q_i + r_s_bias) . seg_embed[s_ij]) / sqrt(d_head)   segment

where ``r_{i-j}`` is the sinusoidal encoding of the relative distance ``i - j`` (clamped to
``[-clamp_len, clamp_len]`` when ``clamp_len > 0``) projected by ``r``, and ``s_ij`` is 1
when tokens ``i`` and ``j`` have different ``token_type_ids`` (0 otherwise; the term is left
out without ``token_type_ids``). Each layer then does, for each stream ``x`` (``h`` or ``g``)::

    x = LayerNorm(x + dropout(o(attention(x))))
    x = LayerNorm(x + dropout(layer_2(dropout(act(layer_1(x))))))

The model computes what Hugging Face ``transformers``' ``XLNetModel`` and
``XLNetLMHeadModel`` compute (bidirectional attention, ``attn_type="bi"``, with the
recurrence memory) and loads and saves their checkpoints (:meth:`XLNetModel.from_pretrained`,
:meth:`XLNetModel.save_pretrained`).

**Memory** (Transformer-XL's recurrence, Hugging Face's ``mems``). With ``use_mems`` a call
returns, per layer, that layer's input over ``[mems; segment]`` (the first ``reuse_len``
positions of the segment appended, the last ``mem_len`` kept, detached:
:func:`cache_memory`); a later call given ``mems`` puts its ``n`` tokens after those ``m``
positions: keys and values of both streams run over the ``m + n`` positions, relative
distances over them too, the memory is visible to every query whatever the masks say, and
it counts as segment 0 for ``token_type_ids``. Memories are batch-first
``(batch, m, d_model)`` (Hugging Face's are ``(m, batch, d_model)``). ``use_mems`` defaults
to the config's ``use_mems_eval`` (True) in eval mode and ``use_mems_train`` (False) in
training mode, as in Hugging Face; it only decides whether a memory is returned.

Masks, as Hugging Face documents them (the one place the library takes 0/1 masks, because
this is Hugging Face's interface; they are converted to boolean masks at once):

* ``attention_mask`` ``(batch, n)``: 1/True = real token; or its negation ``input_mask``
  (1/True = padding, the original XLNet's convention); at most one of the two. Padded keys
  are hidden from every query (a content-stream query still sees its own position).
* ``perm_mask`` ``(batch, n, n)``: ``perm_mask[b, i, j] = 1`` means that ``i`` may *not*
  attend to ``j`` (the factorisation order of permutation language modelling). Boolean,
  integer or floating (Hugging Face's examples build it as a float tensor) with values 0/1.
* ``target_mapping`` ``(batch, n_predict, n)``: ``target_mapping[b, k, j] = 1`` when the
  ``k``-th prediction is for position ``j``; it is a mapping matrix (used in a product), so
  any numeric dtype is accepted. With it the model returns the query stream
  ``(batch, n_predict, d_model)``; without it, the content stream ``(batch, n, d_model)``.

One deliberate difference: a query-stream query that ``perm_mask`` and the padding leave
with no key (the first token of the factorisation order) gets zero attention weights (the
library's convention); Hugging Face gives it uniform weights over all keys. Its output only
matters if ``target_mapping`` selects that position, which permutation language modelling
never does (the first token in the order has nothing to be predicted from), and a memory
never allows (every query sees it).

Parameter names are Hugging Face's, and the attention projections keep its layout: ``q``,
``k``, ``v``, ``o`` and ``r`` are parameters of shape ``(d_model, n_head, d_head)`` (not
Linear layers; ``o`` maps back with the same layout), so checkpoints load without
reshaping. The feed-forward network is the library's
:class:`~attnzoo.transformers_zoo.feed_forward.FeedForward`, so only its keys are renamed
(per layer ``i``; ``XLNetLMHeadModel`` adds the ``transformer.`` prefix)::

    Hugging Face                 attnzoo
    word_embedding.weight        word_embedding.weight
    mask_emb                     mask_emb                  (1, 1, d_model)
    layer.i.rel_attn.*           layer.i.rel_attn.*        q k v o r r_w_bias r_r_bias
                                                           r_s_bias seg_embed layer_norm
    layer.i.ff.layer_1.*         layer.i.ff.ffn.intermediate.*
    layer.i.ff.layer_2.*         layer.i.ff.ffn.output.*
    layer.i.ff.layer_norm.*      layer.i.ff.layer_norm.*
    lm_loss.{weight,bias}        lm_loss.{weight,bias}     (weight tied to word_embedding)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.normalizers import masked_normalize
from ..attention.projection import project
from ..attention.relative import rel_shift, sinusoidal_relative_encoding
from ..attention.validation import (
    check_int,
    check_probability,
    check_rank,
    check_size,
    check_tensor,
    check_token_ids,
)
from .checkpoints import PretrainedMixin, hf_activation, hf_attention_mask, init_hf_weights
from .feed_forward import FeedForward
from .generation import GenerationMixin, GenerationOptions, GenerationStart, check_unpadded_prompt
from .stacks import run_layer, set_gradient_checkpointing

IGNORE_INDEX = -100
"""Label value the LM loss skips (as ``torch.nn.functional.cross_entropy``)."""


# --------------------------------------------------------------------------- configuration


@dataclass
class XLNetConfig:
    """Configuration of :class:`XLNetModel`, with Hugging Face ``XLNetConfig``'s field names.

    Attributes:
        vocab_size: number of tokens.
        d_model: model width.
        n_layer: number of layers.
        n_head: attention heads (``d_model`` divisible by it).
        d_inner: feed-forward hidden width.
        d_head: width of a head; must be ``d_model // n_head`` (None: set to it).
        ff_activation: Hugging Face activation name: ``"gelu"`` (exact), ``"gelu_new"``
            (tanh approximation) or ``"relu"``.
        attn_type: only ``"bi"`` (bidirectional; the causal ``"uni"`` is not available).
        initializer_range: std of the normal initialisation.
        layer_norm_eps: epsilon of every LayerNorm.
        dropout: dropout on the embeddings, the position encodings, the attention weights,
            the residual branches and the output.
        mem_len: positions of the recurrence memory kept per layer (the last ``mem_len``
            of ``[mems; segment]``); None or 0 keeps them all. Hugging Face's default, 512.
        reuse_len: with a memory, only the first ``reuse_len`` positions of a segment enter
            it (None or 0: all), as in the original pretraining pipeline.
        use_mems_eval: whether ``forward`` returns ``mems`` in eval mode when it is not
            told (``use_mems=None``); Hugging Face's default, True.
        use_mems_train: the same in training mode; Hugging Face's default, False.
        bi_data: only False (no bidirectional data pipeline).
        clamp_len: relative distances are clamped to ``[-clamp_len, clamp_len]`` when > 0.
        same_length: only False (it only matters for ``attn_type="uni"``).
        untie_r: kept for the round trip; every layer has its own ``r_w_bias``, ``r_r_bias``
            and ``r_s_bias``, as in Hugging Face's model whatever the value.
        pad_token_id, bos_token_id, eos_token_id: special ids (the model does not use them).
        tie_word_embeddings: the LM head reuses the word-embedding matrix.
        extra: other ``config.json`` entries (e.g. ``summary_type``), written back unchanged.
    """

    vocab_size: int = 32000
    d_model: int = 1024
    n_layer: int = 24
    n_head: int = 16
    d_inner: int = 4096
    d_head: int | None = None
    ff_activation: str = "gelu"
    attn_type: str = "bi"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    mem_len: int | None = 512
    reuse_len: int | None = None
    use_mems_eval: bool = True
    use_mems_train: bool = False
    bi_data: bool = False
    clamp_len: int = -1
    same_length: bool = False
    untie_r: bool = True
    pad_token_id: int | None = 5
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_inner"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}")
        if self.d_model % self.n_head:
            raise ValueError(
                f"`d_model` ({self.d_model}) must be divisible by `n_head` ({self.n_head})"
            )
        if self.d_head is None:
            self.d_head = self.d_model // self.n_head
        if self.d_head != self.d_model // self.n_head:
            raise ValueError(
                f"`d_head` must be d_model // n_head = {self.d_model // self.n_head}, "
                f"got {self.d_head}"
            )
        hf_activation(self.ff_activation, "ff_activation")
        if self.attn_type != "bi":
            raise ValueError(
                f"`attn_type` must be 'bi' (bidirectional attention), got {self.attn_type!r}"
            )
        for name in ("mem_len", "reuse_len"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=0)
        for name in ("use_mems_eval", "use_mems_train"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, got {getattr(self, name)!r}")
        if self.bi_data:
            raise ValueError("`bi_data` must be False, got True")
        if self.same_length:
            raise ValueError("`same_length` must be False, got True")
        check_probability(self.dropout, "dropout")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0, got {self.layer_norm_eps}")
        if not self.initializer_range >= 0:
            raise ValueError(f"`initializer_range` must be >= 0, got {self.initializer_range}")

    @property
    def activation(self) -> str:
        """The :class:`FeedForward` activation of ``ff_activation``."""
        return hf_activation(self.ff_activation, "ff_activation")


# Entries of a config.json that describe the file rather than the model.
_HF_BOOKKEEPING = ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype")


def config_from_hf(hf: dict[str, Any]) -> XLNetConfig:
    """Hugging Face XLNet ``config.json`` dict -> :class:`XLNetConfig`."""
    hf = dict(hf)
    if hf.get("model_type", "xlnet") != "xlnet":
        raise ValueError(f"`config.json` must describe an XLNet model, got {hf['model_type']!r}")
    if "n_token" in hf and "vocab_size" not in hf:
        hf["vocab_size"] = hf.pop("n_token")
    kwargs = {f.name: hf.pop(f.name) for f in fields(XLNetConfig) if f.name in hf}
    kwargs.pop("extra", None)
    for name in _HF_BOOKKEEPING:
        hf.pop(name, None)
    return XLNetConfig(**kwargs, extra=hf)


def config_to_hf(config: XLNetConfig, architecture: str) -> dict[str, Any]:
    """:class:`XLNetConfig` -> Hugging Face XLNet ``config.json`` dict."""
    hf: dict[str, Any] = dict(config.extra)
    for f in fields(XLNetConfig):
        if f.name != "extra":
            hf[f.name] = getattr(config, f.name)
    hf["model_type"] = "xlnet"
    hf["architectures"] = [architecture]
    return hf


# --------------------------------------------------------------------------- key maps

_P = r"^(transformer\.)?"
HF_TO_ZOO_RULES: list[tuple[str, str]] = [
    (_P + r"layer\.(\d+)\.ff\.layer_1\.", r"\1layer.\2.ff.ffn.intermediate."),
    (_P + r"layer\.(\d+)\.ff\.layer_2\.", r"\1layer.\2.ff.ffn.output."),
]
"""Hugging Face XLNet keys -> attnzoo keys (all other names are the same)."""

ZOO_TO_HF_RULES: list[tuple[str, str]] = [
    (_P + r"layer\.(\d+)\.ff\.ffn\.intermediate\.", r"\1layer.\2.ff.layer_1."),
    (_P + r"layer\.(\d+)\.ff\.ffn\.output\.", r"\1layer.\2.ff.layer_2."),
]
"""attnzoo keys -> Hugging Face XLNet keys."""

_BASE_PREFIX = "transformer."

_RERUN_TOKENS = 2
"""Generation with a memory runs the last two tokens again at every step (Hugging Face's
``offset = 2``), not only the newest one."""


# --------------------------------------------------------------------------- outputs


@dataclass
class XLNetModelOutput:
    """What :class:`XLNetModel` returns.

    Attributes:
        last_hidden_state: ``(batch, n, d_model)`` (content stream), or with
            ``target_mapping`` ``(batch, n_predict, d_model)`` (query stream).
        hidden_states: with ``output_hidden_states``: the input of every layer and the last
            output, ``n_layer + 1`` tensors; with ``target_mapping`` each is followed by the
            query stream's (``2 * (n_layer + 1)`` tensors, ``h0, g0, h1, g1, ...``), as in
            Hugging Face.
        attentions: with ``output_attentions``: every layer's weights
            ``(batch, n_head, n, m + n)`` (``m`` memory positions, 0 without ``mems``);
            with ``target_mapping`` a pair per layer (content stream, query stream), the
            query stream's rows indexed by position.
        mems: with ``use_mems``: the memory for the next call, one detached
            ``(batch, m', d_model)`` tensor per layer (that layer's input over
            ``[mems; segment]``, see :func:`cache_memory`); None otherwise.
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None
    mems: tuple[Tensor, ...] | None = None


@dataclass
class XLNetLMHeadModelOutput:
    """What :class:`XLNetLMHeadModel` returns.

    Attributes:
        loss: with ``labels``: the mean cross-entropy over labels other than -100.
        logits: ``(batch, n, vocab_size)``, or ``(batch, n_predict, vocab_size)`` with
            ``target_mapping``.
        hidden_states, attentions, mems: as in :class:`XLNetModelOutput`.
    """

    loss: Tensor | None
    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Any, ...] | None = None
    mems: tuple[Tensor, ...] | None = None


# --------------------------------------------------------------------------- inputs


def _padding_mask(
    attention_mask: Tensor | None, input_mask: Tensor | None, shape: tuple[int, int]
) -> Tensor | None:
    """Boolean ``(batch, n)``, True = padding, from ``attention_mask`` (1 = real) or
    ``input_mask`` (1 = padding); None when neither is given."""
    if attention_mask is not None and input_mask is not None:
        raise ValueError(
            "give at most one of `attention_mask` (1 = real token) and `input_mask` "
            "(1 = padding), got both"
        )
    if attention_mask is not None:
        return ~hf_attention_mask(attention_mask, shape)
    if input_mask is not None:
        try:
            return hf_attention_mask(input_mask, shape)
        except (TypeError, ValueError) as error:  # same checks, the right argument name
            message = str(error).replace("`attention_mask`", "`input_mask`")
            raise type(error)(message.replace("1 = real token", "1 = padding")) from None
    return None


def _perm_mask(perm_mask: Tensor | None, shape: tuple[int, int, int]) -> Tensor | None:
    """Boolean ``(batch, n, n)``, True = may not attend, from Hugging Face's ``perm_mask``."""
    if perm_mask is None:
        return None
    check_tensor(perm_mask, "perm_mask")
    if tuple(perm_mask.shape) != shape:
        raise ValueError(
            f"`perm_mask` must have shape (batch, n, n) = {shape}, got {tuple(perm_mask.shape)}"
        )
    if perm_mask.dtype == torch.bool:
        return perm_mask
    if perm_mask.is_complex():
        raise TypeError(f"`perm_mask` must be a boolean or 0/1 tensor, got {perm_mask.dtype}")
    bad = perm_mask[(perm_mask != 0) & (perm_mask != 1)]
    if bad.numel():
        raise ValueError(f"`perm_mask` must hold 0 or 1 (1 = may not attend), got {bad[0].item()}")
    return perm_mask == 1


def relative_positions(
    n: int, d_model: int, clamp_len: int, device: torch.device, memory_len: int = 0
) -> Tensor:
    """Sinusoidal encodings of the relative distances ``m + n, m + n - 1, ..., -n + 1``
    between ``n`` queries and the ``m + n`` keys of ``[memory; segment]`` (``m =
    memory_len``; the first, ``m + n``, is never read, as in Hugging Face's table).

    Row ``p`` encodes the distance ``m + n - p`` as ``[sin(d * f), cos(d * f)]`` with the
    frequencies ``f_k = 10000 ** (-2k / d_model)``; distances are clamped to
    ``[-clamp_len, clamp_len]`` when ``clamp_len > 0``.

    Returns:
        ``(m + 2 n, d_model)`` float32.
    """
    distance = torch.arange(memory_len + n, -n, -1, device=device)
    if clamp_len > 0:
        distance = distance.clamp(-clamp_len, clamp_len)
    return sinusoidal_relative_encoding(distance, d_model)


def cache_memory(
    layer_input: Tensor, memory: Tensor | None, mem_len: int | None, reuse_len: int | None
) -> Tensor:
    """The memory one layer hands to the next call (Hugging Face's ``cache_mem``).

    The first ``reuse_len`` positions of the segment (all of them when None or 0) are
    appended to ``memory`` and the last ``mem_len`` positions of the result kept (all of
    them when None or 0); no gradient flows back through a memory.

    Args:
        layer_input: ``(batch, n, d_model)``, the layer's input over the segment.
        memory: ``(batch, m, d_model)``, the memory the layer attended to, or None.
        mem_len, reuse_len: as in :class:`XLNetConfig`.

    Returns:
        ``(batch, m', d_model)``, detached.
    """
    if reuse_len:
        layer_input = layer_input[:, :reuse_len]
    joined = layer_input if memory is None else torch.cat([memory, layer_input], dim=1)
    if mem_len:
        joined = joined[:, -mem_len:]
    return joined.detach()


def _memory_length(
    mems: Sequence[Tensor] | None,
    batch: int,
    config: XLNetConfig,
    dtype: torch.dtype,
    device: torch.device,
) -> int:
    """Check ``mems`` (one ``(batch, m, d_model)`` tensor per layer, the same ``m`` in
    each, the model's ``dtype``, on the input's ``device``) and return ``m`` (0 when
    ``mems`` is None)."""
    if mems is None:
        return 0
    if not isinstance(mems, (list, tuple)):
        raise TypeError(
            f"`mems` must be a tuple of tensors (one per layer), got {type(mems).__name__}"
        )
    if len(mems) != config.n_layer:
        raise ValueError(
            f"`mems` must hold one tensor per layer (n_layer = {config.n_layer}), got {len(mems)}"
        )
    for i, mem in enumerate(mems):
        check_tensor(mem, f"mems[{i}]")
        check_rank(mem, 3, f"mems[{i}]", "(batch, m, d_model)")
        check_size(mem, 0, batch, f"mems[{i}]", "the batch size of `input_ids`")
        check_size(mem, 1, mems[0].shape[1], f"mems[{i}]", "the memory length of `mems[0]`")
        check_size(mem, 2, config.d_model, f"mems[{i}]", "d_model")
        if mem.dtype != dtype:
            raise TypeError(f"`mems[{i}]` must have the model's dtype {dtype}, got {mem.dtype}")
        if mem.device != device:
            raise ValueError(
                f"`mems[{i}]` must be on the device of `input_ids` ({device}), got {mem.device}"
            )
    return mems[0].shape[1]


# --------------------------------------------------------------------------- layers


class XLNetRelativeAttention(nn.Module):
    """Two-stream relative multi-head attention with its residual and post-LayerNorm.

    Parameters: ``q``, ``k``, ``v``, ``o``, ``r`` ``(d_model, n_head, d_head)``;
    ``r_w_bias``, ``r_r_bias``, ``r_s_bias`` ``(n_head, d_head)``; ``seg_embed``
    ``(2, n_head, d_head)`` (same segment, different segment); ``layer_norm``.
    """

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        d, heads, d_head = config.d_model, config.n_head, config.d_head
        assert d_head is not None
        self.scale = 1 / math.sqrt(d_head)
        for name in ("q", "k", "v", "o", "r"):
            setattr(self, name, nn.Parameter(torch.empty(d, heads, d_head)))
        self.r_r_bias = nn.Parameter(torch.empty(heads, d_head))
        self.r_s_bias = nn.Parameter(torch.empty(heads, d_head))
        self.r_w_bias = nn.Parameter(torch.empty(heads, d_head))
        self.seg_embed = nn.Parameter(torch.empty(2, heads, d_head))
        self.layer_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        h: Tensor,
        g: Tensor | None,
        mask_h: Tensor | None,
        mask_g: Tensor | None,
        positions: Tensor,
        other_segment: Tensor | None,
        target_mapping: Tensor | None,
        memory: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """One attention sub-layer for both streams.

        Keys and values come from ``[memory; h]`` (``k = m + n`` positions, ``m`` = 0
        without ``memory``); queries from ``h`` (and ``g``) only.

        Args:
            h: content stream ``(batch, n, d_model)``.
            g: query stream ``(batch, n_predict, d_model)`` or None.
            mask_h, mask_g: boolean ``(batch, n, k)`` (or broadcastable), True = may
                attend; None = everything allowed.
            positions: relative encodings ``(batch, m + 2 n, d_model)``
                (:func:`relative_positions`).
            other_segment: boolean ``(batch, n, k)``, True where the tokens' segments
                differ, or None (no segment term).
            target_mapping: ``(batch, n_predict, n)`` when ``g`` is given.
            memory: ``(batch, m, d_model)`` this layer's memory (its input at earlier
                positions), or None.

        Returns:
            ``(h, g, weights_h, weights_g)``: the new streams and the attention weights
            ``(batch, n_head, n, k)`` (``g`` and ``weights_g`` None without ``g``).
        """
        keys = h if memory is None else torch.cat([memory, h], dim=1)
        k = torch.einsum("bjh,hnd->bnjd", keys, self.k)
        v = torch.einsum("bjh,hnd->bnjd", keys, self.v)
        k_r = torch.einsum("bph,hnd->bnpd", positions, self.r)
        q_h = torch.einsum("bih,hnd->bnid", h, self.q)
        vec_h, weights_h = self._attend(q_h, k, v, k_r, other_segment, mask_h)
        out_h = self._residual(h, vec_h)
        if g is None:
            return out_h, None, weights_h, None
        assert target_mapping is not None
        # The k-th target's query is placed at its position, attends there, and comes back.
        q_g = torch.einsum("bmh,hnd->bnmd", g, self.q)
        q_g = torch.einsum("bnmd,bml->bnld", q_g, target_mapping)
        vec_g, weights_g = self._attend(q_g, k, v, k_r, other_segment, mask_g)
        vec_g = torch.einsum("bnld,bml->bnmd", vec_g, target_mapping)
        return out_h, self._residual(g, vec_g), weights_h, weights_g

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        k_r: Tensor,
        other_segment: Tensor | None,
        mask: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """Relative attention: ``q`` ``(batch, heads, n, d_head)``, ``k``/``v``
        ``(batch, heads, m + n, d_head)`` (``m`` memory positions first), ``k_r``
        ``(batch, heads, m + 2 n, d_head)`` -> ``(output (batch, heads, n, d_head),
        weights (batch, heads, n, m + n))``."""
        n_keys = k.shape[2]
        content = torch.einsum("bnid,bnjd->bnij", q + self.r_w_bias[:, None], k)
        # Row p of k_r encodes the distance m + n - p; without its first row (never read)
        # the distances run m + n - 1 .. -(n - 1), the order `rel_shift` takes.
        position = torch.einsum("bnid,bnpd->bnip", q + self.r_r_bias[:, None], k_r[:, :, 1:])
        scores = content + rel_shift(position, n_keys)
        if other_segment is not None:
            segment = torch.einsum("bnid,snd->bnis", q + self.r_s_bias[:, None], self.seg_embed)
            scores = scores + torch.where(
                other_segment[:, None], segment[..., 1:], segment[..., :1]
            )
        scores = scores * self.scale
        weights = masked_normalize(scores, None if mask is None else mask[:, None], "softmax")
        weights = self.dropout(weights)
        return torch.einsum("bnij,bnjd->bnid", weights, v), weights

    def _residual(self, x: Tensor, vec: Tensor) -> Tensor:
        """``LayerNorm(x + dropout(o(vec)))``: heads ``(batch, heads, m, d_head)`` back to
        ``(batch, m, d_model)``."""
        out = torch.einsum("bnid,hnd->bih", vec, self.o)
        return self.layer_norm(self.dropout(out) + x)


class XLNetFeedForward(nn.Module):
    """``LayerNorm(x + dropout(FeedForward(x)))``, the feed-forward network with dropout
    on its hidden activations. Parameters ``ffn`` and ``layer_norm``."""

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        self.ffn = FeedForward(
            config.d_model, config.d_inner, activation=config.activation, dropout=config.dropout
        )
        self.layer_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, m, d_model) -> (batch, m, d_model)``."""
        return self.layer_norm(self.dropout(self.ffn(x)) + x)


class XLNetLayer(nn.Module):
    """One XLNet layer: ``rel_attn`` then ``ff``, applied to both streams."""

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        self.rel_attn = XLNetRelativeAttention(config)
        self.ff = XLNetFeedForward(config)

    def forward(
        self,
        h: Tensor,
        g: Tensor | None,
        mask_h: Tensor | None,
        mask_g: Tensor | None,
        positions: Tensor,
        other_segment: Tensor | None,
        target_mapping: Tensor | None,
        memory: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """See :meth:`XLNetRelativeAttention.forward`; returns ``(h, g, weights_h,
        weights_g)``."""
        h, g, weights_h, weights_g = self.rel_attn(
            h, g, mask_h, mask_g, positions, other_segment, target_mapping, memory
        )
        return self.ff(h), None if g is None else self.ff(g), weights_h, weights_g


# --------------------------------------------------------------------------- the model


class XLNetPreTrainedModel(PretrainedMixin, nn.Module):
    """What the XLNet classes share: the config and the checkpoint key maps."""

    config_class: ClassVar[type] = XLNetConfig
    hf_to_zoo_rules: ClassVar[list[tuple[str, str]]] = HF_TO_ZOO_RULES
    zoo_to_hf_rules: ClassVar[list[tuple[str, str]]] = ZOO_TO_HF_RULES

    config: XLNetConfig

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> XLNetConfig:
        return config_from_hf(hf)

    @classmethod
    def config_to_hf(cls, config: XLNetConfig) -> dict[str, Any]:
        return config_to_hf(config, cls.__name__)


class XLNetModel(XLNetPreTrainedModel):
    """The XLNet encoder (Hugging Face ``XLNetModel``, ``attn_type="bi"``).

    Args:
        config: an :class:`XLNetConfig`.

    Parameters: ``word_embedding`` (``vocab_size x d_model``), ``mask_emb``
    ``(1, 1, d_model)`` (the query stream's start) and ``layer.{i}`` (:class:`XLNetLayer`);
    see the module docstring for the Hugging Face key map.
    """

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        if not isinstance(config, XLNetConfig):
            raise TypeError(f"`config` must be an XLNetConfig, got {type(config).__name__}")
        self.config = config
        self.word_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.mask_emb = nn.Parameter(torch.empty(1, 1, config.d_model))
        self.layer = nn.ModuleList(XLNetLayer(config) for _ in range(config.n_layer))
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()
        self.gradient_checkpointing = False

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Recompute every layer (both streams) in the backward pass instead of keeping its
        activations, by the encoder stacks' rule
        (:func:`~attnzoo.transformers_zoo.stacks.set_gradient_checkpointing`): only in
        training mode with gradients on. ``enabled=False`` switches it back off."""
        set_gradient_checkpointing(self, enabled)

    def reset_parameters(self) -> None:
        """Hugging Face's initialisation: normal(0, ``initializer_range``) for every weight,
        attention projection, relative bias, segment embedding and ``mask_emb``; zero
        linear biases; LayerNorm 1 and 0."""
        std = self.config.initializer_range
        init_hf_weights(self, std)
        for module in self.modules():
            if isinstance(module, XLNetRelativeAttention):
                for name in ("q", "k", "v", "o", "r", "r_r_bias", "r_s_bias", "r_w_bias"):
                    nn.init.normal_(getattr(module, name), std=std)
                nn.init.normal_(module.seg_embed, std=std)
        nn.init.normal_(self.mask_emb, std=std)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        perm_mask: Tensor | None = None,
        target_mapping: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        input_mask: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        mems: Sequence[Tensor] | None = None,
        use_mems: bool | None = None,
    ) -> XLNetModelOutput:
        """Encode ``input_ids``, after the memory ``mems`` when it is given.

        With ``mems`` (``m`` positions per layer) the segment's ``n`` tokens sit at
        positions ``m ... m + n - 1``: every query also attends to the memory (both
        streams; masks, padding and ``perm_mask`` cover the segment only, the memory is
        always visible, and it counts as segment 0 for ``token_type_ids``), as in Hugging
        Face.

        Args:
            input_ids: ``(batch, n)`` token ids in ``[0, vocab_size)``.
            attention_mask: ``(batch, n)``, True or 1 = real token (Hugging Face's
                interface: boolean or 0/1 integer).
            perm_mask: ``(batch, n, n)``, 1/True = ``i`` may not attend to ``j``.
            target_mapping: ``(batch, n_predict, n)`` one-hot rows selecting the predicted
                positions; turns on the query stream.
            token_type_ids: ``(batch, n)`` integer segment ids (only equality matters).
            input_mask: ``(batch, n)``, True or 1 = padding (instead of ``attention_mask``).
            output_attentions: return every layer's attention weights.
            output_hidden_states: return every layer's input and the last output.
            mems: the memory, one ``(batch, m, d_model)`` tensor per layer (a previous
                call's ``mems``), or None.
            use_mems: return the memory for the next call (``mems`` of the output); None =
                ``config.use_mems_train`` in training mode, ``config.use_mems_eval`` in
                eval mode. A given ``mems`` is attended to either way.

        Returns:
            :class:`XLNetModelOutput`; ``last_hidden_state`` is ``(batch, n, d_model)``, or
            ``(batch, n_predict, d_model)`` with ``target_mapping``.
        """
        check_rank(input_ids, 2, "input_ids", "(batch, n)")
        check_token_ids(input_ids, self.config.vocab_size, "input_ids")
        batch, n = input_ids.shape
        device = input_ids.device
        config = self.config
        if use_mems is None:
            use_mems = config.use_mems_train if self.training else config.use_mems_eval
        elif not isinstance(use_mems, bool):
            raise TypeError(f"`use_mems` must be a bool or None, got {use_mems!r}")
        memory_len = _memory_length(
            mems, batch, config, self.word_embedding.weight.dtype, input_ids.device
        )
        padding = _padding_mask(attention_mask, input_mask, (batch, n))
        blocked = _perm_mask(perm_mask, (batch, n, n))
        if padding is not None:
            blocked = padding[:, None, :] if blocked is None else blocked | padding[:, None, :]
        if blocked is None:
            mask_h = mask_g = None
        else:
            mask_g = F.pad(~blocked, (memory_len, 0), value=True)
            # A content-stream query always sees its own token (query i is key m + i).
            own = torch.arange(memory_len + n, device=device) == (
                torch.arange(n, device=device)[:, None] + memory_len
            )
            mask_h = mask_g | own

        h = self.dropout(self.word_embedding(input_ids))
        g = None
        if target_mapping is not None:
            check_tensor(target_mapping, "target_mapping")
            if (
                target_mapping.dim() != 3
                or target_mapping.shape[0] != batch
                or target_mapping.shape[2] != n
            ):
                raise ValueError(
                    f"`target_mapping` must have shape (batch, n_predict, n) = "
                    f"({batch}, n_predict, {n}), got {tuple(target_mapping.shape)}"
                )
            target_mapping = target_mapping.to(h.dtype)
            g = self.dropout(self.mask_emb.expand(batch, target_mapping.shape[1], -1))

        other_segment = None
        if token_type_ids is not None:
            check_tensor(token_type_ids, "token_type_ids")
            if tuple(token_type_ids.shape) != (batch, n):
                raise ValueError(
                    f"`token_type_ids` must have shape {(batch, n)}, "
                    f"got {tuple(token_type_ids.shape)}"
                )
            key_types = token_type_ids
            if memory_len:
                key_types = torch.cat([token_type_ids.new_zeros(batch, memory_len), key_types], 1)
            other_segment = token_type_ids[:, :, None] != key_types[:, None, :]

        positions = relative_positions(n, config.d_model, config.clamp_len, device, memory_len)
        # One dropout draw per sequence, as Hugging Face (which expands to the batch first).
        positions = self.dropout(positions.to(h.dtype).expand(batch, -1, -1))

        hidden: list[Tensor] | None = [] if output_hidden_states else None
        attentions: list[Any] | None = [] if output_attentions else None
        new_mems: list[Tensor] = []
        for index, layer in enumerate(self.layer):
            memory = None if mems is None else mems[index]
            if use_mems:
                new_mems.append(cache_memory(h, memory, config.mem_len, config.reuse_len))
            if hidden is not None:
                hidden.extend([h] if g is None else [h, g])
            h, g, weights_h, weights_g = run_layer(
                self,
                layer,
                h,
                g,
                mask_h,
                mask_g,
                positions,
                other_segment,
                target_mapping,
                memory,
            )
            if attentions is not None:
                attentions.append(weights_h if g is None else (weights_h, weights_g))
        if hidden is not None:
            hidden.extend([h] if g is None else [h, g])
        return XLNetModelOutput(
            last_hidden_state=self.dropout(h if g is None else g),
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attentions) if attentions is not None else None,
            mems=tuple(new_mems) if use_mems else None,
        )

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Accept the encoder of an ``XLNetLMHeadModel`` checkpoint too: its
        ``transformer.`` prefix is dropped and its LM head left out (as Hugging Face does)."""
        if not any(key.startswith(_BASE_PREFIX) for key in state):
            return state
        return {
            key.removeprefix(_BASE_PREFIX): value
            for key, value in state.items()
            if not key.startswith("lm_loss.")
        }


class XLNetLMHeadModel(GenerationMixin, XLNetPreTrainedModel):
    """XLNet with its language-modelling head (Hugging Face ``XLNetLMHeadModel``).

    ``generate`` (:meth:`~attnzoo.transformers_zoo.generation.GenerationMixin.generate`)
    decodes as Hugging Face's XLNet does: every step appends a dummy token (id 0) that
    ``perm_mask`` hides from every position and predicts it through the query stream
    (``target_mapping`` selects it). By default (``use_mems`` None, with the config's
    ``use_mems_eval=True`` in eval mode) the steps carry the memory as Hugging Face's do:
    after the first step (the whole prompt), a step runs only the last two tokens and the
    dummy on top of the memory of the earlier positions, whose hidden states stay as the
    step that computed them saw them (before each step the memory drops its last two
    positions, the previous step's last token and dummy; ``mem_len`` bounds it).
    ``generate(..., use_mems=False)`` recomputes the whole sequence every step (slower;
    every position sees every token), as Hugging Face's ``use_mems=False``. The two can
    pick different tokens.

    Args:
        config: an :class:`XLNetConfig`.

    Parameters: ``transformer`` (:class:`XLNetModel`) and ``lm_loss`` (Linear
    ``d_model -> vocab_size`` with bias; its weight is the word embedding when
    ``tie_word_embeddings``).
    """

    def __init__(self, config: XLNetConfig) -> None:
        super().__init__()
        self.transformer = XLNetModel(config)
        self.config = config
        self.lm_loss = nn.Linear(config.d_model, config.vocab_size, bias=True)
        nn.init.normal_(self.lm_loss.weight, std=config.initializer_range)
        nn.init.zeros_(self.lm_loss.bias)
        if config.tie_word_embeddings:
            self.lm_loss.weight = self.transformer.word_embedding.weight

    def gradient_checkpointing_enable(self, enabled: bool = True) -> None:
        """Checkpoint the encoder's layers (:meth:`XLNetModel.gradient_checkpointing_enable`)."""
        self.transformer.gradient_checkpointing_enable(enabled)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        perm_mask: Tensor | None = None,
        target_mapping: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        input_mask: Tensor | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        mems: Sequence[Tensor] | None = None,
        use_mems: bool | None = None,
    ) -> XLNetLMHeadModelOutput:
        """Scores over the vocabulary (arguments as :meth:`XLNetModel.forward`).

        Args:
            labels: ``(batch, n)``, or ``(batch, n_predict)`` with ``target_mapping``:
                target ids, -100 = ignored; labels are not shifted (with ``perm_mask`` and
                ``target_mapping`` the factorisation order does the work).

        Returns:
            :class:`XLNetLMHeadModelOutput`; ``logits`` ``(batch, n or n_predict,
            vocab_size)``, ``loss`` the mean cross-entropy when ``labels`` is given,
            ``mems`` the memory for the next segment with ``use_mems``.
        """
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            perm_mask=perm_mask,
            target_mapping=target_mapping,
            token_type_ids=token_type_ids,
            input_mask=input_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            mems=mems,
            use_mems=use_mems,
        )
        logits = project(out.last_hidden_state, self.lm_loss)
        loss = None
        if labels is not None:
            check_tensor(labels, "labels")
            if tuple(labels.shape) != tuple(logits.shape[:2]):
                raise ValueError(
                    f"`labels` must have shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}"
                )
            loss = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
            )
        return XLNetLMHeadModelOutput(
            loss=loss,
            logits=logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            mems=out.mems,
        )

    def _begin_generation(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        options: GenerationOptions,
        use_mems: bool | None = None,
    ) -> GenerationStart:
        """Generation's start: unpadded prompts ``input_ids`` ``(batch, n)`` (Hugging Face's
        XLNet ``generate`` ignores ``attention_mask``, so a mask with padding is a
        ``ValueError``); EOS and padding default to ``config.eos_token_id`` and
        ``config.pad_token_id``. ``options`` is unused: relative positions set no length
        limit. ``use_mems``: carry the memory from step to step (None: the config's
        ``use_mems_eval`` or ``use_mems_train``, by the model's mode), see the class
        docstring."""
        check_unpadded_prompt(input_ids, attention_mask, "XLNet")
        check_token_ids(input_ids, self.config.vocab_size, "input_ids")
        if use_mems is not None and not isinstance(use_mems, bool):
            raise TypeError(f"`use_mems` must be a bool or None, got {use_mems!r}")
        return GenerationStart(
            step=functools.partial(self._generation_step, use_mems=use_mems),
            state={"tokens": input_ids, "mems": None, "first": True},
            history=input_ids,
            prefix=input_ids,
            eos=self.config.eos_token_id,
            pad=self.config.pad_token_id,
        )

    def _generation_step(
        self, prev_tokens: Tensor, state: dict[str, Any], use_mems: bool | None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Append the previous token (not at the first step), run the tokens the memory
        does not cover and the hidden dummy token, and return the dummy's logits
        ``(N, vocab_size)``.

        ``state``: ``tokens`` ``(N, t)`` every token so far; ``mems`` the memory of the
        previous step (one ``(N, m, d_model)`` tensor per layer; beam search reorders it
        with the beams) or None, in which case the whole sequence runs."""
        tokens = state["tokens"]
        if not state["first"]:
            tokens = torch.cat([tokens, prev_tokens[:, None]], dim=1)
        mems = state["mems"]
        fed = tokens
        if mems is not None:
            # The memory ends with the previous step's last real token and its dummy;
            # both are dropped and that token is run again next to the new one.
            fed = tokens[:, -_RERUN_TOKENS:]
            mems = tuple(mem[:, :-_RERUN_TOKENS] for mem in mems)
        batch, n = fed.shape
        ids = F.pad(fed, (0, 1), value=0)
        hidden_dummy = torch.zeros(batch, n + 1, n + 1, dtype=torch.bool, device=ids.device)
        hidden_dummy[:, :, -1] = True
        target_mapping = torch.zeros(batch, 1, n + 1, device=ids.device)
        target_mapping[:, 0, -1] = 1.0
        out = self.transformer(
            ids,
            perm_mask=hidden_dummy,
            target_mapping=target_mapping,
            mems=mems,
            use_mems=use_mems,
        )
        logits = project(out.last_hidden_state[:, 0], self.lm_loss)
        return logits, {"tokens": tokens, "mems": out.mems, "first": False}

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fill in ``lm_loss.weight`` from the word embedding when the file leaves it out,
        as Hugging Face does for tied weights (an untied checkpoint always holds it)."""
        state = dict(state)
        source = _BASE_PREFIX + "word_embedding.weight"
        if "lm_loss.weight" not in state and source in state:
            state["lm_loss.weight"] = state[source]
        return state


__all__ = [
    "HF_TO_ZOO_RULES",
    "IGNORE_INDEX",
    "ZOO_TO_HF_RULES",
    "XLNetConfig",
    "XLNetFeedForward",
    "XLNetLMHeadModel",
    "XLNetLMHeadModelOutput",
    "XLNetLayer",
    "XLNetModel",
    "XLNetModelOutput",
    "XLNetRelativeAttention",
    "cache_memory",
    "config_from_hf",
    "config_to_hf",
    "relative_positions",
]
