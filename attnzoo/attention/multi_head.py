"""Multi-head attention (Vaswani et al. 2017) with any normaliser, and its decoding cache.

One module covers self-attention, cross-attention (``context`` with its own width
``kv_dim``), causal masking, incremental decoding through :class:`KVCache`, sparse
attention with one learnable entmax alpha per head (Correia et al. 2019, "Adaptively Sparse
Transformers"), and relative positions inside self-attention (``position="rotary"`` or
``"alibi"``, see :mod:`attnzoo.attention.positional`). The attention itself is
:func:`~attnzoo.attention.functional.attend`.

Parameter names follow Hugging Face ``modeling_bert.py``, so a BERT checkpoint converts with
this key map (per layer, ``encoder.layer.{i}.`` prefix dropped)::

    attention.self.query.{weight,bias}   -> query.{weight,bias}
    attention.self.key.{weight,bias}     -> key.{weight,bias}
    attention.self.value.{weight,bias}   -> value.{weight,bias}
    attention.output.dense.{weight,bias} -> out.{weight,bias}

(BERT's ``attention.output.LayerNorm`` belongs to the encoder layer, not to this module.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import causal_tiles
from .entmax import MIN_ALPHA, EntmaxAlpha
from .functional import attend, padding_mask_to_attention_mask
from .normalizers import Normalizer, get_normalizer
from .positional import ALiBi, RotaryEmbedding, check_position
from .projection import project, project_jointly
from .validation import (
    check_bool_mask,
    check_int,
    check_positive,
    check_probability,
    check_rank,
    check_size,
)


@dataclass
class KVCache:
    """Keys and values kept between decoding steps of one :class:`MultiHeadAttention`.

    ``key`` and ``value`` are ``(batch, heads, n_cached, dim_head)``, or None while empty.
    For self-attention each call appends the new positions' keys and values; for
    cross-attention the first call stores the context's keys and values and later calls
    reuse them. Use one cache per module and per sequence batch.
    """

    key: Tensor | None = None
    value: Tensor | None = None

    def __len__(self) -> int:
        """Number of cached positions ``n_cached``."""
        return 0 if self.key is None else self.key.shape[-2]

    def append(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Add ``(batch, heads, n_new, dim_head)`` keys/values; return all cached ones."""
        if self.key is None or self.value is None:
            self.key, self.value = key, value
        else:
            self.key = torch.cat([self.key, key], dim=-2)
            self.value = torch.cat([self.value, value], dim=-2)
        return self.key, self.value

    def reset(self) -> None:
        """Empty the cache (start a new sequence)."""
        self.key = self.value = None


class AttentionProjections(nn.Module):
    """Separate query, key, value and output projections (Hugging Face BERT's layout), the
    parameters every multi-head attention module of this package shares.

    Subclasses call :meth:`add_projections` in ``__init__`` and get ``query`` (Linear
    ``dim -> inner``), ``key`` and ``value`` (Linear ``kv_dim -> inner``), ``out`` (Linear
    ``inner -> dim``) and :meth:`reset_parameters`.
    """

    def add_projections(
        self, dim: int, inner: int, kv_dim: int | None = None, bias: bool = True
    ) -> None:
        """Create the four projections; ``kv_dim`` (default ``dim``) is the keys' input width."""
        kv_dim = dim if kv_dim is None else kv_dim
        self.query = nn.Linear(dim, inner, bias=bias)
        self.key = nn.Linear(kv_dim, inner, bias=bias)
        self.value = nn.Linear(kv_dim, inner, bias=bias)
        self.out = nn.Linear(inner, dim, bias=bias)

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases."""
        xavier_init_(self.query, self.key, self.value, self.out)

    def _split_heads(self, x: Tensor) -> Tensor:
        """``(batch, n, heads * dim_head)`` -> ``(batch, heads, n, dim_head)`` (a view)."""
        # Plain view ops: this runs several times per layer and decoding step, where the
        # Python cost of a pattern parser shows.
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _project_out(
        self, result: Tensor | tuple[Tensor, Tensor]
    ) -> Tensor | tuple[Tensor, Tensor]:
        """An attention result ``(batch, heads, n, dim_head)`` (or ``(out, weights)``) with
        its heads merged and projected by ``out``: ``(batch, n, dim)`` (or ``(out, weights)``)."""
        out, weights = result if isinstance(result, tuple) else (result, None)
        out = project(out.transpose(1, 2).flatten(2), self.out)
        return (out, weights) if weights is not None else out


class MultiHeadAttention(AttentionProjections):
    """Multi-head attention over ``(batch, seq, dim)`` inputs.

    Args:
        dim: width of the queries' input ``x`` and of the output.
        heads: number of heads.
        dim_head: width of one head; default ``dim // heads`` (then ``dim`` must divide).
        normalizer: registry name or callable, see :mod:`attnzoo.attention.normalizers`.
        learn_alpha: learn one entmax alpha per head (needs ``normalizer="entmax"``).
        causal: bottom-right causal masking (query ``i`` of ``n_q`` sees keys
            ``j <= i + n_k - n_q``), so it stays correct when decoding with a cache.
        dropout: dropout on the attention weights, in [0, 1).
        kv_dim: width of ``context`` for cross-attention; default ``dim``.
        bias: biases in the four projections.
        alpha: fixed entmax alpha (> 1) for ``normalizer="entmax"``, or the initial value of
            the learned alpha (in ``(MIN_ALPHA, 2)``) when ``learn_alpha``; default 1.5.
        position: relative positions inside self-attention: ``"rotary"`` (queries and keys
            rotated, :class:`~attnzoo.attention.positional.RotaryEmbedding` over
            ``dim_head``), ``"alibi"`` (per-head linear distance bias,
            :class:`~attnzoo.attention.positional.ALiBi`), or None. Positions count from
            the first cached position, so decoding with a :class:`KVCache` sees the
            positions a full pass sees. Not available for cross-attention.
        rotary_base: frequency base of the rotary angles.

    Parameters: ``query`` (dim -> heads * dim_head), ``key`` and ``value``
    (kv_dim -> heads * dim_head), ``out`` (heads * dim_head -> dim), named as in Hugging Face
    BERT (see the module docstring for the key map). Initialisation: Xavier-uniform weights
    and zero biases, as :class:`torch.nn.MultiheadAttention` does for separate projections;
    pretrained checkpoints overwrite both. At inference (autograd off) self-attention runs
    its three input projections as one matrix product over weights that share one storage
    block (:func:`project_jointly`); names, shapes and ``state_dict`` stay as they are.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int | None = None,
        normalizer: str | Normalizer = "softmax",
        learn_alpha: bool = False,
        causal: bool = False,
        dropout: float = 0.0,
        kv_dim: int | None = None,
        bias: bool = True,
        alpha: float | None = None,
        position: str | None = None,
        rotary_base: float = 10000.0,
    ) -> None:
        super().__init__()
        dim_head = resolve_dim_head(dim, heads, dim_head)
        self.position = check_position(position)
        kv_dim = dim if kv_dim is None else kv_dim
        check_positive(kv_dim, "kv_dim")
        check_probability(dropout, "dropout")
        _check_normalizer(normalizer, learn_alpha, alpha)

        self.dim, self.heads, self.dim_head, self.kv_dim = dim, heads, dim_head, kv_dim
        self.normalizer, self.causal, self.dropout = normalizer, causal, dropout
        self.add_projections(dim, heads * dim_head, kv_dim, bias)
        self.alpha = (
            EntmaxAlpha(heads, init=1.5 if alpha is None else alpha) if learn_alpha else None
        )
        self.fixed_alpha = None if learn_alpha else alpha
        # Neither has parameters: "no position" builds (and initialises) the same weights.
        self.rotary = RotaryEmbedding(dim_head, rotary_base) if position == "rotary" else None
        self.alibi = ALiBi(heads) if position == "alibi" else None
        self.reset_parameters()

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``x`` to itself (``context=None``) or to ``context``.

        Args:
            x: queries' input ``(batch, n_q, dim)``.
            context: cross-attention input ``(batch, n_c, kv_dim)``; with a filled ``cache``
                its keys/values come from the cache and only its batch size is checked.
            mask: boolean, True = may attend, over all ``n_k`` keys (cached ones included):
                a key-padding mask ``(batch, n_k)``, or a rank-4 mask broadcastable to
                ``(batch, heads, n_q, n_k)``. Other ranks are rejected, so that a
                ``(batch, n_q, n_k)`` mask is never silently read as per-head.
            cache: a :class:`KVCache`, updated in place (self-attention: this call's keys and
                values are appended; cross-attention: the context's are stored once).
            return_weights: also return the weights ``(batch, heads, n_q, n_k)``.

        Returns:
            ``(batch, n_q, dim)``, or ``(out, weights)`` when ``return_weights``.
        """
        check_rank(x, 3, "x", "(batch, n_q, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        if context is not None and self.position is not None:
            raise ValueError(
                f"`context` given, but position={self.position!r} applies to self-attention "
                "only (queries and keys of different sequences have no relative position)"
            )
        offset = len(cache) if cache is not None else 0
        if context is None:
            q, k, v = self._self_attention_inputs(x, cache, offset)
        else:  # no rotary embedding here: positions were refused for cross-attention above
            q = self._split_heads(self.query(x))
            k, v = self._keys_values(x, context, cache, offset)
        n_q, n_k = q.shape[-2], k.shape[-2]
        full_mask = self._attention_mask(mask, x.shape[0], n_k)
        alibi = self.alibi
        if alibi is not None and self.causal and not return_weights and causal_tiles.tiles_pay(q):
            # ALiBi's bias is as large as the scores: by tiles, only the part up to each
            # tile's last query is built (a tile's queries are the last of its keys, the
            # alignment the bias is defined in).
            def tile(t: causal_tiles.QueryTile) -> Tensor:
                bias = alibi(t.stop - t.start, t.keys, q.device, q.dtype)
                out = self._attend(t.q, t.k, t.v, t.mask, bias, False)
                assert isinstance(out, Tensor)  # no weights asked for
                return out

            return self._project_out(causal_tiles.by_query_tiles(q, k, v, full_mask, tile))
        bias = alibi(n_q, n_k, q.device, q.dtype) if alibi is not None else None
        return self._project_out(self._attend(q, k, v, full_mask, bias, return_weights))

    def _attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        bias: Tensor | None,
        return_weights: bool,
        scale: float | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """:func:`attend` with this module's normaliser, alpha, dropout and ``causal``."""
        return attend(
            q,
            k,
            v,
            mask=mask,
            bias=bias,
            causal=self.causal,
            normalizer=self.normalizer,
            alpha=self.alpha() if self.alpha is not None else self.fixed_alpha,
            dropout=self.dropout,
            scale=scale,
            return_weights=return_weights,
            training=self.training,
        )

    def _self_attention_inputs(
        self, x: Tensor, cache: KVCache | None, offset: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention queries ``(batch, heads, n, dim_head)`` and keys and values
        ``(batch, heads, n_k, dim_head)`` of ``x`` ``(batch, n, dim)``, through the cache if any.

        The three projections run as one matrix product at inference
        (:func:`project_jointly`). Queries and keys are rotated (``position="rotary"``) as
        positions ``offset ..``, keys before they are cached.
        """
        self._check_self_attention()
        projected = project_jointly(x, (self.query, self.key, self.value))
        q, k, v = (self._split_heads(part) for part in projected)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            k, v = cache.append(k, v)
        return q, k, v

    def _check_self_attention(self) -> None:
        if self.kv_dim != self.dim:
            raise ValueError(
                f"`context` of width kv_dim={self.kv_dim} is required: self-attention "
                f"needs kv_dim == dim ({self.dim})"
            )

    def _keys_values(
        self, x: Tensor, context: Tensor | None, cache: KVCache | None, offset: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Keys and values ``(batch, heads, n_k, dim_head)``, through the cache if any.

        Self-attention keys are rotated (``position="rotary"``) before they are cached, as
        positions ``offset ..``.
        """
        if context is None:
            self._check_self_attention()
            k, v = self._split_heads(self.key(x)), self._split_heads(self.value(x))
            if self.rotary is not None:
                k = self.rotary(k, offset)
            return cache.append(k, v) if cache is not None else (k, v)

        check_rank(context, 3, "context", "(batch, n_c, kv_dim)")
        check_size(context, 0, x.shape[0], "context", "the batch size of `x`")
        if cache is not None and cache.key is not None and cache.value is not None:
            # Cross-attention keys/values depend on the context only: reuse them.
            check_size(cache.key, 0, x.shape[0], "cache.key", "the batch size of `x`")
            return cache.key, cache.value
        check_size(context, -1, self.kv_dim, "context", "kv_dim")
        k = self._split_heads(self.key(context))
        v = self._split_heads(self.value(context))
        return cache.append(k, v) if cache is not None else (k, v)

    def _attention_mask(self, mask: Tensor | None, batch: int, n_k: int) -> Tensor | None:
        """Key-padding ``(batch, n_k)`` -> ``(batch, 1, 1, n_k)``; rank-4 masks pass through."""
        if mask is None:
            return None
        check_bool_mask(mask, "mask")
        if mask.dim() == 2:
            check_size(mask, 0, batch, "mask", "the batch size of `x`")
            check_size(mask, 1, n_k, "mask", "the number of keys n_k (cached ones included)")
            return padding_mask_to_attention_mask(mask)
        if mask.dim() != 4:
            raise ValueError(
                "`mask` must be a key-padding mask (batch, n_k) or a rank-4 mask broadcastable "
                f"to (batch, heads, n_q, n_k), got shape {tuple(mask.shape)}"
            )
        return mask

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, "
            f"kv_dim={self.kv_dim}, normalizer={self.normalizer!r}, causal={self.causal}, "
            f"dropout={self.dropout}, position={self.position!r}"
        )


def resolve_dim_head(dim: int, heads: int, dim_head: int | None) -> int:
    """Width of one head: ``dim_head`` if given, else ``dim // heads`` (which must divide)."""
    check_int(dim, "dim")
    check_int(heads, "heads")
    if dim_head is None:
        if dim % heads != 0:
            raise ValueError(
                f"`dim` ({dim}) must be divisible by `heads` ({heads}) unless `dim_head` is given"
            )
        return dim // heads
    return check_int(dim_head, "dim_head")


def xavier_init_(*linears: nn.Linear) -> None:
    """Xavier-uniform weights and zero biases, as ``torch.nn.MultiheadAttention`` does."""
    for linear in linears:
        nn.init.xavier_uniform_(linear.weight)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)


def _check_normalizer(normalizer: str | Normalizer, learn_alpha: bool, alpha: float | None) -> None:
    """Fail at construction, not at the first forward, on a bad normaliser setting."""
    get_normalizer(normalizer)  # unknown names raise ValueError naming `normalizer`
    if learn_alpha and normalizer != "entmax":
        raise ValueError(
            f"`learn_alpha=True` needs normalizer='entmax' (alpha-entmax), got {normalizer!r}"
        )
    if alpha is None:
        return
    if normalizer != "entmax":
        raise ValueError(f"`alpha` only applies to normalizer='entmax', got {normalizer!r}")
    if learn_alpha and not MIN_ALPHA < alpha < 2:
        raise ValueError(
            f"`alpha` (the initial learned alpha) must be in ({MIN_ALPHA}, 2), got {alpha}"
        )
    get_normalizer("entmax", alpha=alpha)  # a fixed alpha must be a finite float > 1


__all__ = ["KVCache", "MultiHeadAttention", "project_jointly"]
