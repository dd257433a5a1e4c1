"""Input embeddings: tokens, positions (learned or sinusoidal), segments and languages.

:class:`Embeddings` sums them and optionally normalises, as the model families do:

* Vaswani et al. 2017: ``sqrt(dim) * token + sinusoidal position``, then dropout
  (``positions="sinusoidal", scale=True, layer_norm=False``);
* BERT: ``token + learned position + segment``, then LayerNorm and dropout
  (``positions="learned", type_vocab_size=2``);
* XLM: ``token + learned or sinusoidal position + language``, then LayerNorm and dropout
  (``n_langs=...``).

Every lookup checks its ids: an id outside ``[0, size)`` is a ``ValueError`` naming the
argument (``input_ids``, ``token_type_ids``, ``langs``, ``position_ids``) with the range and
the offending value, instead of an index error deep inside PyTorch (or a silent read of
another row on some devices).

Parameter names follow Hugging Face ``modeling_bert.py`` (``embeddings.`` prefix dropped)::

    word_embeddings.weight        -> word_embeddings.weight
    position_embeddings.weight    -> position_embeddings.weight
    token_type_embeddings.weight  -> token_type_embeddings.weight
    LayerNorm.{weight,bias}       -> norm.{weight,bias}

and XLM's ``lang_embeddings.weight`` keeps its name.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..attention.validation import (
    check_int,
    check_probability,
    check_rank,
    check_tensor,
    check_token_ids,
)

POSITIONS = ("learned", "sinusoidal", None)
"""Values of :class:`Embeddings` ``positions``."""


def sinusoidal_table(n: int, dim: int, base: float = 10000.0) -> Tensor:
    """The sinusoidal position table of Vaswani et al. 2017, in float64.

    ``table[pos, 2i] = sin(pos / base ** (2i / dim))`` and
    ``table[pos, 2i + 1] = cos(pos / base ** (2i / dim))``: sines on even features,
    cosines on odd ones (an odd ``dim`` ends with a sine).

    Returns:
        ``(n, dim)`` float64.
    """
    check_int(n, "n", minimum=0)
    check_int(dim, "dim")
    positions = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    even = torch.arange(0, dim, 2, dtype=torch.float64)
    angles = positions / base ** (even / dim)  # (n, ceil(dim / 2))
    table = torch.zeros(n, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


class TokenEmbedding(nn.Embedding):
    """:class:`torch.nn.Embedding` that checks its ids and can scale by ``sqrt(dim)``.

    Args:
        vocab_size: number of rows.
        dim: embedding width.
        padding_idx: row kept at zero and never updated (as in ``nn.Embedding``).
        scale: multiply the output by ``sqrt(dim)`` (Vaswani et al. 2017, Section 3.4).
        name: the argument name errors use (``"input_ids"``).

    ``forward(ids)``: integer ``(...)`` -> ``(..., dim)``. The parameter is ``weight``
    ``(vocab_size, dim)``, so an output projection can be tied to it.
    """

    ids_name = "input_ids"

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        padding_idx: int | None = None,
        scale: bool = False,
    ) -> None:
        check_int(vocab_size, "vocab_size")
        check_int(dim, "dim")
        super().__init__(vocab_size, dim, padding_idx=padding_idx)
        self.scale = math.sqrt(dim) if scale else None

    def forward(self, ids: Tensor, name: str | None = None) -> Tensor:
        """Look up ``ids``; ``name`` overrides the argument name used in errors."""
        check_token_ids(ids, self.num_embeddings, name or self.ids_name)
        out = super().forward(ids)
        return out * self.scale if self.scale is not None else out


class SegmentEmbedding(TokenEmbedding):
    """Segment (token-type) embedding, BERT's sentence A/B; ids are ``token_type_ids``."""

    ids_name = "token_type_ids"


class LanguageEmbedding(TokenEmbedding):
    """Language embedding of XLM (one vector per language); ids are ``langs``."""

    ids_name = "langs"


class LearnedPositionalEmbedding(nn.Embedding):
    """One learned vector per position ``0 .. max_len - 1`` (BERT, GPT-2).

    ``forward(position_ids)``: integer ``(...)`` -> ``(..., dim)``; a position
    ``>= max_len`` is a ``ValueError`` naming ``position_ids``.
    """

    def __init__(self, max_len: int, dim: int) -> None:
        check_int(max_len, "max_len")
        check_int(dim, "dim")
        super().__init__(max_len, dim)

    def forward(self, position_ids: Tensor) -> Tensor:
        check_token_ids(position_ids, self.num_embeddings, "position_ids")
        return super().forward(position_ids)


class SinusoidalPositionalEmbedding(nn.Module):
    """Fixed sinusoidal positions (Vaswani et al. 2017, Section 3.5).

    The table of :func:`sinusoidal_table` is a non-persistent buffer ``(max_len, dim)``:
    it follows the module's device and dtype and is not saved in the state dict (it is a
    function of ``dim`` and ``max_len``). It is computed in float64 and stored in the
    default dtype.

    ``forward(position_ids)``: integer ``(...)`` -> ``(..., dim)``. For decoding with a
    cache, pass positions ``offset .. offset + n - 1`` (see :func:`position_ids`).
    """

    table: Tensor

    def __init__(self, dim: int, max_len: int = 512, base: float = 10000.0) -> None:
        super().__init__()
        check_int(dim, "dim")
        check_int(max_len, "max_len")
        self.dim, self.max_len, self.base = dim, max_len, base
        table = sinusoidal_table(max_len, dim, base).to(torch.get_default_dtype())
        self.register_buffer("table", table, persistent=False)

    def forward(self, position_ids: Tensor) -> Tensor:
        check_token_ids(position_ids, self.max_len, "position_ids")
        return self.table[position_ids]

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_len={self.max_len}"


def position_ids(n: int, offset: int = 0, device: torch.device | str | None = None) -> Tensor:
    """Positions ``offset .. offset + n - 1`` as an int64 ``(1, n)`` tensor (broadcasts over
    the batch); ``offset`` is the number of positions already decoded (cached)."""
    check_int(offset, "offset", minimum=0)
    return torch.arange(offset, offset + n, device=device).unsqueeze(0)


class Embeddings(nn.Module):
    """Token + position (+ segment) (+ language) embeddings, then LayerNorm and dropout.

    Args:
        vocab_size: token vocabulary size.
        dim: embedding width.
        max_len: number of positions.
        positions: ``"learned"``, ``"sinusoidal"`` or ``None`` (no position embedding).
        type_vocab_size: number of segment types (0: no segment embedding; BERT uses 2).
        n_langs: number of languages (0: no language embedding; XLM uses one per language).
        layer_norm: LayerNorm after the sum (BERT, XLM) or not (Vaswani et al. 2017).
        layer_norm_eps: its epsilon (BERT uses 1e-12).
        dropout: dropout on the result, in [0, 1).
        scale: multiply the token embedding by ``sqrt(dim)`` (Vaswani et al. 2017).
        padding_idx: token row kept at zero.

    Parameters: ``word_embeddings`` (:class:`TokenEmbedding`), ``position_embeddings``
    (:class:`LearnedPositionalEmbedding` or :class:`SinusoidalPositionalEmbedding`),
    ``token_type_embeddings``, ``lang_embeddings`` and ``norm``, each present only when
    configured (see the module docstring for the Hugging Face key map).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        max_len: int = 512,
        positions: str | None = "learned",
        type_vocab_size: int = 0,
        n_langs: int = 0,
        layer_norm: bool = True,
        layer_norm_eps: float = 1e-12,
        dropout: float = 0.0,
        scale: bool = False,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        if positions not in POSITIONS:
            raise ValueError(f"`positions` must be one of {POSITIONS}, got {positions!r}")
        check_int(type_vocab_size, "type_vocab_size", minimum=0)
        check_int(n_langs, "n_langs", minimum=0)
        check_probability(dropout, "dropout")
        self.word_embeddings = TokenEmbedding(vocab_size, dim, padding_idx, scale=scale)
        self.position_embeddings: (
            LearnedPositionalEmbedding | SinusoidalPositionalEmbedding | None
        ) = None
        if positions == "learned":
            self.position_embeddings = LearnedPositionalEmbedding(max_len, dim)
        elif positions == "sinusoidal":
            self.position_embeddings = SinusoidalPositionalEmbedding(dim, max_len)
        self.token_type_embeddings = (
            SegmentEmbedding(type_vocab_size, dim) if type_vocab_size else None
        )
        self.lang_embeddings = LanguageEmbedding(n_langs, dim) if n_langs else None
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps) if layer_norm else None
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        input_ids: Tensor,
        token_type_ids: Tensor | None = None,
        langs: Tensor | None = None,
        offset: int = 0,
        *,
        name: str = "input_ids",
    ) -> Tensor:
        """Embed ``(batch, n)`` ids into ``(batch, n, dim)``.

        Args:
            input_ids: token ids ``(batch, n)`` in ``[0, vocab_size)``.
            token_type_ids: segment ids ``(batch, n)`` (needs ``type_vocab_size > 0``);
                default all zeros, as BERT does.
            langs: language ids ``(batch, n)`` (needs ``n_langs > 0``); required when
                the module has a language embedding.
            offset: position of the first token (the number of cached positions when
                decoding incrementally).
            name: how errors refer to ``input_ids`` (a model passes e.g. ``"src"``).
        """
        check_rank(input_ids, 2, name, "(batch, n)")
        x = self.word_embeddings(input_ids, name=name)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids(input_ids.shape[1], offset, x.device))
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            _check_same_shape(token_type_ids, input_ids, "token_type_ids", name)
            x = x + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("`token_type_ids` given, but the module has no segment embedding")
        if self.lang_embeddings is not None:
            if langs is None:
                raise ValueError("`langs` is required: the module has a language embedding")
            _check_same_shape(langs, input_ids, "langs", name)
            x = x + self.lang_embeddings(langs)
        elif langs is not None:
            raise ValueError("`langs` given, but the module has no language embedding")
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


def _check_same_shape(x: Tensor, ref: Tensor, name: str, ref_name: str) -> None:
    check_tensor(x, name)
    if x.shape != ref.shape:
        raise ValueError(
            f"`{name}` must have the shape of `{ref_name}` {tuple(ref.shape)}, got {tuple(x.shape)}"
        )


__all__ = [
    "POSITIONS",
    "Embeddings",
    "LanguageEmbedding",
    "LearnedPositionalEmbedding",
    "SegmentEmbedding",
    "SinusoidalPositionalEmbedding",
    "TokenEmbedding",
    "position_ids",
    "sinusoidal_table",
]
