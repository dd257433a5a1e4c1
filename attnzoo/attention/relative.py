"""Relative multi-head attention of Transformer-XL (Dai et al. 2019), with segment memory.

For a query at position ``i`` and a key at position ``j`` (distance ``t = i - j``) a head
scores::

    score_ij = ((q_i + u) . k_j  +  (q_i + v) . W_r R_t) / sqrt(d_head)

where ``R_t`` is the sinusoidal encoding of the distance ``t``
(:func:`sinusoidal_relative_encoding`), ``W_r`` a learned projection (``relative``) and
``u``, ``v`` learned per-head biases (``r_w_bias``, ``r_r_bias``, the names of the
original code and of Hugging Face). No absolute position enters the model, which is what
lets keys and values of the previous segment (the *memory*) be reused as they are.

The position term is computed for every query against the ``P`` distances once,
``(q + v) @ (W_r R)^T`` of shape ``(..., n_q, P)``, and then moved into place by the
relative shift (:func:`rel_shift`), a strided view instead of a gather.
The sum is then :func:`~attnzoo.attention.functional.attend`'s additive ``bias``, so every
normaliser, mask and the SDPA fast path apply unchanged. Causal attention on a CPU goes by
tiles of queries (:mod:`~attnzoo.attention.causal_tiles`), each with the position scores of
the keys up to its last query only.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from . import causal_tiles
from .multi_head import MultiHeadAttention
from .normalizers import Normalizer
from .validation import check_int, check_rank, check_size, check_tensor


def sinusoidal_relative_encoding(
    distances: Tensor, dim: int, base: float = 10000.0, dtype: torch.dtype | None = None
) -> Tensor:
    """Sinusoidal encodings ``[sin(t f_k), cos(t f_k)]`` of the distances ``t``.

    ``f_k = base ** (-2k / dim)``, sines in the first half of the features and cosines in
    the second (Transformer-XL's layout).

    Args:
        distances: ``(P,)`` (any numeric dtype).
        dim: encoding width, even.
        dtype: of the result; default float32. Computed in float64.

    Returns:
        ``(P, dim)``.
    """
    check_tensor(distances, "distances")
    check_int(dim, "dim")
    if dim % 2:
        raise ValueError(f"`dim` must be even (sine and cosine halves), got {dim}")
    frequencies = base ** (
        -torch.arange(0, dim, 2, dtype=torch.float64, device=distances.device) / dim
    )
    angles = distances.to(torch.float64)[:, None] * frequencies[None, :]
    encoding = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return encoding.to(torch.float32 if dtype is None else dtype)


def relative_distances(n_q: int, n_k: int, causal: bool, device: torch.device) -> Tensor:
    """The distances :func:`rel_shift` expects, in its order: ``n_k - 1, n_k - 2, ..., d_min``.

    The ``n_q`` queries are the last ``n_q`` of ``n_k`` positions (keys = memory + the
    segment), so distances run from ``n_k - 1`` (last query to first key) down to 0
    (``causal``) or to ``-(n_q - 1)`` (first query to last key).

    Returns:
        ``(P,)`` int64, ``P = n_k`` (causal) or ``n_k + n_q - 1``.
    """
    lowest = 0 if causal else -(n_q - 1)
    return torch.arange(n_k - 1, lowest - 1, -1, device=device)


def rel_shift(scores: Tensor, n_k: int) -> Tensor:
    """Move per-distance scores into query/key layout: the relative shift.

    ``scores[..., i, p]`` is query ``i``'s score against the distance ``d_p = n_k - 1 - p``
    (the order of :func:`relative_distances`); query ``i`` (position ``i + n_k - n_q``) and
    key ``j`` are at distance ``i + n_k - n_q - j``, i.e. column ``p = j + n_q - 1 - i``.
    Each row is thus shifted left by ``n_q - 1 - i``. In a row-major ``(n_q, P)`` matrix
    that entry sits at offset ``n_q - 1 + i (P - 1) + j``: the result is a strided view of
    ``scores`` with a row stride one shorter, no copy (Transformer-XL pads a zero column
    and reshapes to the same effect, with two copies of the matrix).

    Args:
        scores: ``(..., n_q, P)`` with ``P >= n_k``. With ``P = n_k + n_q - 1`` every entry
            of the result is defined; with ``P = n_k`` (distances >= 0 only) the entries
            of keys after their query (``j > i + n_k - n_q``) are arbitrary finite values
            (other entries of ``scores``) that a causal mask must hide.
        n_k: number of keys.

    Returns:
        ``(..., n_q, n_k)``: ``out[..., i, j] = scores[..., i, j + n_q - 1 - i]``, a view
        of ``scores`` (of a contiguous copy when its last two axes are not row-major).
    """
    check_tensor(scores, "scores")
    if scores.dim() < 2:
        raise ValueError(
            f"`scores` must have at least 2 dimensions (..., n_q, P), got {scores.dim()}"
        )
    n_q, p = scores.shape[-2:]
    if p < n_k:
        raise ValueError(f"`scores` must have P >= n_k = {n_k} distance columns, got {p}")
    if n_q == 0 or n_k == 0:
        return scores[..., :n_k]
    if p == 1:  # n_k = 1: only the last query's entry is defined, and it is column 0
        return scores
    return _RelShift.apply(scores, n_k)


def _shifted_view(scores: Tensor, width: int, first: int = 0) -> Tensor:
    """Columns ``first .. first + width - 1`` of the shifted ``scores`` (row-major in its
    last two axes), as a view: entry ``(i, j)`` at offset ``n_q - 1 + i (P - 1) + first + j``."""
    n_q, p = scores.shape[-2:]
    return scores.as_strided(
        (*scores.shape[:-2], n_q, width),
        (*scores.stride()[:-2], p - 1, 1),
        scores.storage_offset() + n_q - 1 + first,
    )


class _RelShift(torch.autograd.Function):
    """:func:`rel_shift` with a backward that writes the gradient into place.

    Autograd's own backward of an ``as_strided`` view is slow when the view overlaps itself,
    which it does for ``P = n_k``: entry ``(i, n_k - 1)`` is entry ``(i + 1, 0)``. Here the
    first ``P - 1`` columns (never overlapping) are copied, and a last column that overlaps
    is added after them.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, n_k: int) -> Tensor:  # type: ignore[override]
        if scores.stride()[-2:] != (scores.shape[-1], 1):
            scores = scores.contiguous()
        ctx.shape, ctx.n_k = scores.shape, n_k
        return _shifted_view(scores, n_k)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        n_k, p = ctx.n_k, ctx.shape[-1]
        grad_scores = grad.new_zeros(ctx.shape)
        width = min(n_k, p - 1)
        _shifted_view(grad_scores, width).copy_(grad[..., :width])
        if width < n_k:  # P = n_k: the last column lands on the next row's first entry
            _shifted_view(grad_scores, 1, first=n_k - 1).add_(grad[..., n_k - 1 :])
        return grad_scores, None


class RelativeMultiHeadAttention(MultiHeadAttention):
    """Transformer-XL's relative self-attention over a segment and its memory.

    Args:
        dim, heads, dim_head, normalizer, learn_alpha, dropout, bias, alpha: as for
            :class:`~attnzoo.attention.multi_head.MultiHeadAttention`.
        causal: query ``i`` sees keys up to its own position (a language model); False
            lets it see the whole segment (and the memory).
        base: frequency base of the sinusoidal distance encodings.

    Parameters: ``query``, ``key``, ``value``, ``out`` as in ``MultiHeadAttention``;
    ``relative`` (``dim -> heads * dim_head``, no bias: ``W_r``); ``r_w_bias`` (``u``) and
    ``r_r_bias`` (``v``), ``(heads, dim_head)``, initialised N(0, 0.02) as in
    Transformer-XL.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int | None = None,
        normalizer: str | Normalizer = "softmax",
        learn_alpha: bool = False,
        causal: bool = True,
        dropout: float = 0.0,
        bias: bool = True,
        alpha: float | None = None,
        base: float = 10000.0,
    ) -> None:
        super().__init__(
            dim,
            heads,
            dim_head,
            normalizer=normalizer,
            learn_alpha=learn_alpha,
            causal=causal,
            dropout=dropout,
            bias=bias,
            alpha=alpha,
        )
        if dim % 2:
            raise ValueError(f"`dim` must be even (sinusoidal distance encodings), got {dim}")
        self.base = base
        inner = self.heads * self.dim_head
        self.relative = nn.Linear(dim, inner, bias=False)
        self.r_w_bias = nn.Parameter(torch.empty(heads, self.dim_head))
        self.r_r_bias = nn.Parameter(torch.empty(heads, self.dim_head))
        nn.init.xavier_uniform_(self.relative.weight)
        nn.init.normal_(self.r_w_bias, std=0.02)
        nn.init.normal_(self.r_r_bias, std=0.02)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from the segment ``x`` to the memory and the segment.

        Args:
            x: the segment ``(batch, n, dim)``.
            memory: hidden states of the previous positions ``(batch, m, dim)`` (the
                keys and values are computed from ``[memory; x]``); pass it detached to
                stop gradients at the segment boundary, as Transformer-XL does.
            mask: boolean over the ``n_k = m + n`` keys, True = may attend: a key-padding
                mask ``(batch, n_k)`` or a rank-4 mask broadcastable to
                ``(batch, heads, n, n_k)``; the causal mask is applied on top.
            return_weights: also return the weights ``(batch, heads, n, n_k)``.

        Returns:
            ``(batch, n, dim)``, or ``(out, weights)``.
        """
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        keys_input = x
        if memory is not None:
            check_rank(memory, 3, "memory", "(batch, m, dim)")
            check_size(memory, 0, x.shape[0], "memory", "the batch size of `x`")
            check_size(memory, -1, self.dim, "memory", "dim")
            if memory.dtype != x.dtype:
                raise TypeError(
                    f"`memory` must have the dtype of `x` ({x.dtype}), got {memory.dtype}"
                )
            keys_input = torch.cat([memory, x], dim=1)
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(keys_input))
        v = self._split_heads(self.value(keys_input))
        n_q, n_k = q.shape[-2], k.shape[-2]

        distances = relative_distances(n_q, n_k, self.causal, x.device)
        encoding = sinusoidal_relative_encoding(distances, self.dim, self.base, dtype=x.dtype)
        r = rearrange(self.relative(encoding), "p (h d) -> h p d", h=self.heads)
        scale = self.dim_head**-0.5
        # Scaled on the (n, d) side rather than on the (n, P) product.
        q_position = (q + self.r_r_bias[:, None]) * scale
        q_content = q + self.r_w_bias[:, None]
        full_mask = self._attention_mask(mask, x.shape[0], n_k)
        if self.causal and not return_weights and causal_tiles.tiles_pay(q):
            # Tile by tile, the keys after a tile's last query are neither scored nor given
            # a position score. A tile's distances, ``keys - 1 .. 0``, are the last rows of
            # the table (which runs ``n_k - 1 .. 0``).
            def tile(t: causal_tiles.QueryTile) -> Tensor:
                table = r[:, n_k - t.keys :].transpose(-2, -1)
                position = q_position[..., t.start : t.stop, :] @ table
                bias = rel_shift(position, t.keys)
                out = self._attend(t.q, t.k, t.v, t.mask, bias, False, scale)
                assert isinstance(out, Tensor)  # no weights asked for
                return out

            return self._project_out(causal_tiles.by_query_tiles(q_content, k, v, full_mask, tile))
        position = q_position @ r.transpose(-2, -1)  # (b, h, n, P)
        bias = rel_shift(position, n_k)
        result = self._attend(q_content, k, v, full_mask, bias, return_weights, scale)
        return self._project_out(result)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, "
            f"normalizer={self.normalizer!r}, causal={self.causal}, dropout={self.dropout}"
        )


__all__ = [
    "RelativeMultiHeadAttention",
    "rel_shift",
    "relative_distances",
    "sinusoidal_relative_encoding",
]
