"""Capture every layer's and head's attention from a zoo model, with the token strings.

Any model whose ``forward`` takes ``output_attentions`` works: encoders (BERT, RoBERTa,
ALBERT, DistilBERT, XLM), decoders (GPT-2) and :class:`EncoderDecoderModel` (encoder,
decoder and cross-attention). :func:`capture_attention` runs one forward pass and returns
one :class:`AttentionCapture` per sentence, cut to its real (unpadded) tokens.

:func:`word_attention` turns sub-word attention into word attention as Clark et al. (2019)
do: attention *to* a word is the sum over its pieces, attention *from* a word the mean
over its pieces, so every word row still sums to the attention its pieces gave to words.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...attention.validation import check_rank, check_tensor


@dataclass
class AttentionView:
    """One attention family of a capture, ready to show or analyse.

    Attributes:
        name: ``"self"``, ``"encoder"``, ``"decoder"`` or ``"cross"``.
        weights: ``(layers, heads, n_query, n_key)``.
        query_tokens: the ``n_query`` token strings.
        key_tokens: the ``n_key`` token strings.
    """

    name: str
    weights: Tensor
    query_tokens: list[str]
    key_tokens: list[str]


@dataclass
class AttentionCapture:
    """The attention of one sentence through every layer and head.

    Attributes:
        tokens: the ``n`` input token strings (the encoder's, or a decoder-only model's).
        attention: self-attention ``(layers, heads, n, n)`` over ``tokens``.
        decoder_tokens: encoder-decoder only: the ``m`` decoder token strings.
        decoder_attention: encoder-decoder only: ``(layers, heads, m, m)``.
        cross_attention: encoder-decoder only: ``(layers, heads, m, n)``.
        word_ids: per token of ``tokens``, its word index (None for specials), when given.
    """

    tokens: list[str]
    attention: Tensor
    decoder_tokens: list[str] | None = None
    decoder_attention: Tensor | None = None
    cross_attention: Tensor | None = None
    word_ids: list[int | None] | None = None

    def word_level(self) -> Tensor:
        """:func:`word_attention` of :attr:`attention`: ``(layers, heads, W, W)``."""
        if self.word_ids is None:
            raise ValueError("this capture has no word_ids: pass `word_ids` to capture_attention")
        return word_attention(self.attention, self.word_ids)

    @property
    def num_layers(self) -> int:
        return int(self.attention.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.attention.shape[1])

    def views(self) -> list[AttentionView]:
        """Every attention family: ``[self]`` for one stack, ``[encoder, decoder, cross]``
        for an encoder-decoder."""
        if self.decoder_attention is None or self.decoder_tokens is None:
            return [AttentionView("self", self.attention, self.tokens, self.tokens)]
        views = [
            AttentionView("encoder", self.attention, self.tokens, self.tokens),
            AttentionView(
                "decoder", self.decoder_attention, self.decoder_tokens, self.decoder_tokens
            ),
        ]
        if self.cross_attention is not None:
            views.append(
                AttentionView("cross", self.cross_attention, self.decoder_tokens, self.tokens)
            )
        return views


def _cut(word_ids: list[int | None] | None, n: int) -> list[int | None] | None:
    return None if word_ids is None else word_ids[:n]


def _stack(layers: Sequence[Tensor] | None, what: str, model: nn.Module) -> Tensor:
    if not layers:
        raise ValueError(
            f"{type(model).__name__} returned no {what} with output_attentions=True "
            "(its attention normaliser or layers do not expose weights)"
        )
    return torch.stack([a.detach().float().cpu() for a in layers], dim=1)  # (b, L, H, q, k)


def _check_tokens(
    tokens: Sequence[Sequence[str]] | None, ids: Tensor, name: str
) -> list[list[str]]:
    if tokens is None:
        return [[str(int(i)) for i in row] for row in ids]
    if len(tokens) != ids.shape[0] or any(len(t) != ids.shape[1] for t in tokens):
        raise ValueError(
            f"`{name}` must hold {ids.shape[0]} lists of {ids.shape[1]} token strings "
            f"(one per id), got lengths {[len(t) for t in tokens]}"
        )
    return [list(t) for t in tokens]


def _lengths(mask: Tensor | None, ids: Tensor, name: str) -> list[int]:
    if mask is None:
        return [ids.shape[1]] * ids.shape[0]
    check_tensor(mask, name)
    real = mask.bool()
    if real.shape != ids.shape:
        raise ValueError(f"`{name}` must have shape {tuple(ids.shape)}, got {tuple(real.shape)}")
    if not bool((real.cummin(dim=1).values == real).all()):
        raise ValueError(f"`{name}` must be right padding (real tokens first)")
    return real.sum(dim=1).tolist()


@torch.no_grad()
def capture_attention(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
    *,
    decoder_input_ids: Tensor | None = None,
    decoder_attention_mask: Tensor | None = None,
    decoder_tokens: Sequence[Sequence[str]] | None = None,
    word_ids: Sequence[Sequence[int | None]] | None = None,
    **forward_kwargs: Any,
) -> list[AttentionCapture]:
    """Run ``model`` once and collect every layer's attention weights per sentence.

    Args:
        model: a zoo model whose ``forward`` takes ``output_attentions`` (put in eval mode
            for the pass, its mode restored after).
        input_ids: ``(batch, n)`` token ids, right-padded.
        attention_mask: ``(batch, n)`` 1/True = real token; padding is cut away.
        tokens: per sentence, the ``n`` token strings (default: the ids as strings).
        decoder_input_ids, decoder_attention_mask, decoder_tokens: the same for the
            decoder of an :class:`~attnzoo.transformers_zoo.EncoderDecoderModel`.
        word_ids: per sentence, the ``n`` word indices of the tokens (None for specials and
            padding), as :func:`encode_texts` returns; kept (cut) on the captures for
            :meth:`AttentionCapture.word_level`.
        **forward_kwargs: passed to ``model`` (e.g. ``token_type_ids``).

    Returns:
        ``batch`` captures; weights are float32 on CPU, ``(layers, heads, n_i, n_i)``.

    Raises:
        TypeError: ``model`` cannot return attentions.
        ValueError: mismatched tokens or masks, or the model returned no attentions.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    if "output_attentions" not in inspect.signature(model.forward).parameters:
        raise TypeError(
            f"{type(model).__name__} cannot return attentions: its forward takes no "
            "`output_attentions` argument"
        )
    check_tensor(input_ids, "input_ids")
    check_rank(input_ids, 2, "input_ids", "(batch, n)")
    token_lists = _check_tokens(tokens, input_ids, "tokens")
    lengths = _lengths(attention_mask, input_ids, "attention_mask")
    if word_ids is not None and (
        len(word_ids) != input_ids.shape[0] or any(len(w) != input_ids.shape[1] for w in word_ids)
    ):
        raise ValueError(
            f"`word_ids` must hold {input_ids.shape[0]} lists of {input_ids.shape[1]} entries, "
            f"got lengths {[len(w) for w in word_ids]}"
        )
    words: list[list[int | None] | None] = (
        [None] * len(lengths) if word_ids is None else [list(w) for w in word_ids]
    )
    if decoder_input_ids is not None:
        forward_kwargs["decoder_input_ids"] = decoder_input_ids
        if decoder_attention_mask is not None:
            forward_kwargs["decoder_attention_mask"] = decoder_attention_mask
    was_training = model.training
    model.eval()
    try:
        if attention_mask is not None:
            forward_kwargs["attention_mask"] = attention_mask
        out = model(input_ids, output_attentions=True, **forward_kwargs)
    finally:
        model.train(was_training)
    if hasattr(out, "cross_attentions") and hasattr(out, "encoder_attentions"):
        if decoder_input_ids is None:
            raise ValueError("an encoder-decoder model needs `decoder_input_ids`")
        encoder = _stack(out.encoder_attentions, "encoder attentions", model)
        decoder = _stack(out.decoder_attentions, "decoder attentions", model)
        cross = _stack(out.cross_attentions, "cross attentions", model)
        dec_tokens = _check_tokens(decoder_tokens, decoder_input_ids, "decoder_tokens")
        dec_lengths = _lengths(decoder_attention_mask, decoder_input_ids, "decoder_attention_mask")
        return [
            AttentionCapture(
                tokens=token_lists[b][:n],
                attention=encoder[b, :, :, :n, :n],
                decoder_tokens=dec_tokens[b][:m],
                decoder_attention=decoder[b, :, :, :m, :m],
                cross_attention=cross[b, :, :, :m, :n],
                word_ids=_cut(words[b], n),
            )
            for b, (n, m) in enumerate(zip(lengths, dec_lengths, strict=True))
        ]
    weights = _stack(getattr(out, "attentions", None), "attentions", model)
    return [
        AttentionCapture(
            tokens=token_lists[b][:n],
            attention=weights[b, :, :, :n, :n],
            word_ids=_cut(words[b], n),
        )
        for b, n in enumerate(lengths)
    ]


def word_attention(attention: Tensor, word_ids: Sequence[int | None]) -> Tensor:
    """Sub-word attention to word attention (Clark et al. 2019).

    Args:
        attention: ``(..., n, n)`` token-level weights (rows: from, columns: to).
        word_ids: per token, its word index in ``0 .. W - 1``, or None (or -1) for tokens
            outside every word (``[CLS]``, ``[SEP]``, padding); those are dropped.

    Returns:
        ``(..., W, W)``: to a word = sum over its pieces, from a word = mean over its pieces.
    """
    check_tensor(attention, "attention")
    n = attention.shape[-1]
    if attention.dim() < 2 or attention.shape[-2] != n:
        raise ValueError(f"`attention` must be (..., n, n), got shape {tuple(attention.shape)}")
    if len(word_ids) != n:
        raise ValueError(f"`word_ids` must have one entry per token ({n}), got {len(word_ids)}")
    ids = [-1 if w is None else int(w) for w in word_ids]
    n_words = max(ids) + 1
    if n_words == 0:
        raise ValueError("`word_ids` names no word")
    members = torch.zeros(n_words, n, dtype=attention.dtype, device=attention.device)
    for token, word in enumerate(ids):
        if word >= 0:
            members[word, token] = 1.0
    counts = members.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        missing = [w for w in range(n_words) if counts[w] == 0]
        raise ValueError(f"`word_ids` must cover words 0..{n_words - 1}; missing {missing}")
    to_words = attention @ members.T  # (..., n, W)
    return (members / counts) @ to_words


def encode_words(
    tokenizer: Any, words: Sequence[str]
) -> tuple[Tensor, list[str], list[int | None]]:
    """Tokenise pre-split ``words`` with a ``tokenizers.Tokenizer``.

    Returns:
        ``(ids (1, n), token strings, word_ids)``; ``word_ids[i]`` is the index of the word
        token ``i`` belongs to, None for special tokens.
    """
    _check_tokenizer(tokenizer)
    encoding = tokenizer.encode(list(words), is_pretokenized=True)
    return torch.tensor([encoding.ids]), list(encoding.tokens), list(encoding.word_ids)


def encode_texts(
    tokenizer: Any, texts: Sequence[str]
) -> tuple[Tensor, Tensor, list[list[str]], list[list[int | None]]]:
    """Tokenise and right-pad ``texts`` with a ``tokenizers.Tokenizer``.

    Returns:
        ``(ids (batch, n), mask (batch, n) bool, tokens, word_ids)``; ``tokens`` and
        ``word_ids`` are per sentence, padded to ``n`` with ``"[PAD]"`` and None.
    """
    _check_tokenizer(tokenizer)
    if isinstance(texts, str):
        raise TypeError("`texts` must be a sequence of strings, got one str")
    encodings = [tokenizer.encode(text) for text in texts]
    n = max(len(e.ids) for e in encodings)
    pad = tokenizer.token_to_id("[PAD]") or 0
    ids = torch.full((len(texts), n), pad, dtype=torch.long)
    mask = torch.zeros(len(texts), n, dtype=torch.bool)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = torch.tensor(encoding.ids)
        mask[row, : len(encoding.ids)] = True
    tokens = [list(e.tokens) + ["[PAD]"] * (n - len(e.ids)) for e in encodings]
    word_ids = [list(e.word_ids) + [None] * (n - len(e.ids)) for e in encodings]
    return ids, mask, tokens, word_ids


def _check_tokenizer(tokenizer: Any) -> None:
    if tokenizer is None:
        raise ValueError(
            "a tokenizer is required (a `tokenizers.Tokenizer`, e.g. "
            "Tokenizer.from_file('tokenizer.json'))"
        )
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(
            f"`tokenizer` must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}"
        )


__all__ = [
    "AttentionCapture",
    "AttentionView",
    "capture_attention",
    "encode_texts",
    "encode_words",
    "word_attention",
]
