"""Sliding-window (banded) attention: query ``i`` sees keys ``i - before .. i + after``.

The window is counted in tokens, exactly: with ``before=3, after=0`` (causal) query 10
attends to keys 7, 8, 9 and 10, whatever the sequence length, and queries near the edges
see fewer keys (keys outside ``[0, n)`` are masked out, they are not zero vectors that
receive weight). The result equals dense attention with the band mask
``i - before <= j <= i + after`` for every normaliser, but no ``n x n`` tensor is built.

How it is computed (block-local attention). The queries are cut into blocks of ``B``
consecutive positions. The keys a block needs are contiguous: ``B + before + after``
of them, starting ``before`` positions before the block. Padding the keys and taking
overlapping windows with ``unfold`` (a strided view, no copy) gives every block its keys,
so the scores of all blocks come from one batched matmul of shape
``(B, d) @ (d, B + before + after)``. Inside a block, query row ``r`` may attend to
window columns ``r .. r + before + after``: a fixed band that is ANDed with the
key-padding mask and with "key index inside ``[0, n)``". Memory and work are
``O(n * (B + before + after))`` with ``B`` half the window width (at least 32).

Softmax without returned weights hands all blocks to one
:func:`torch.nn.functional.scaled_dot_product_attention` call, blocks on its batch axis and
heads on its head axis, with that mask as an additive float mask shared by the heads (for a
batch of one, the queries and key windows are views, nothing is copied); the backward of the
overlapping key windows is a few shifted adds. Every other case normalises the block scores
with
:func:`~attnzoo.attention.normalizers.masked_normalize` (a masked entry gets exactly zero
weight, so normalising the block row equals normalising the band row).

Weights layout. ``return_weights=True`` gives the band ``(batch, heads, n, before + after + 1)``
in which column ``j`` of row ``i`` is the weight of key ``i - before + j``; columns whose key
falls outside ``[0, n)`` are zero. :func:`band_to_dense` expands it to ``(..., n, n)`` for
plotting.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .multi_head import AttentionProjections, resolve_dim_head
from .normalizers import Normalizer, masked_normalize
from .validation import (
    check_bool_mask,
    check_broadcastable_to,
    check_int,
    check_positive,
    check_probability,
    check_rank,
    check_size,
    check_tensor,
)

# Smallest query block. A block of a few rows makes many tiny matmuls whose overhead
# dominates; 32 rows keep the matmuls efficient while a narrow window still costs little.
_MIN_BLOCK = 32


def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    before: int,
    after: int,
    mask: Tensor | None = None,
    normalizer: str | Normalizer = "softmax",
    alpha: float | Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    return_weights: bool = False,
    training: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Banded self-attention: query ``i`` attends to keys ``max(0, i - before) .. i + after``.

    Args:
        q: queries ``(batch, heads, n, d)``.
        k: keys ``(batch, heads, n, d)``.
        v: values ``(batch, heads, n, d_v)``.
        before: how many keys before the query each query sees, an int >= 0.
        after: how many keys after the query each query sees, an int >= 0
            (``after=0`` is causal attention).
        mask: key-padding mask ``(batch, n)``, boolean, True = real token. A query whose
            window holds no real key returns zeros.
        normalizer: registry name (``"softmax"``, ``"sparsemax"``, ``"entmax15"``,
            ``"entmax"``, ``"hardmax"``, ``"gumbel"``) or a callable ``f(scores, dim)``
            that gives ``-inf`` scores zero weight.
        alpha: the ``"entmax"`` exponent: a float, or a tensor broadcastable to
            ``(batch, heads, 1, 1)`` (e.g. one learnable alpha per head).
        scale: score scale, > 0; default ``1 / sqrt(d)``.
        dropout: probability of zeroing an attention weight, in [0, 1).
        return_weights: also return the banded weights.
        training: apply dropout only when True (pass ``module.training``).

    Returns:
        ``out`` of shape ``(batch, heads, n, d_v)``, or ``(out, weights)`` with the banded
        weights ``(batch, heads, n, before + after + 1)`` (before dropout): column ``j`` of
        row ``i`` holds the weight of key ``i - before + j``, zero where that key is outside
        ``[0, n)``. See :func:`band_to_dense`.
    """
    check_local_attention_inputs(q, k, v, mask, normalizer, alpha, scale, dropout)
    check_int(before, "before", minimum=0)
    check_int(after, "after", minimum=0)
    batch, heads, n, d = q.shape
    p_drop = dropout if training else 0.0
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if n == 0:
        out = v.new_zeros(batch, heads, 0, v.shape[-1])
        return (out, q.new_zeros(batch, heads, 0, before + after + 1)) if return_weights else out

    # A query never sees more than n - 1 keys on either side: clamp the window so that a
    # huge `before`/`after` costs O(n * n) (what such a band holds), not O(n * window).
    lo, hi = min(before, n - 1), min(after, n - 1)
    width = lo + hi + 1
    block = _block_size(n, width)
    n_blocks = -(-n // block)
    tail = n_blocks * block - n  # query positions added so that the blocks tile evenly

    allowed = band_block_mask(mask, n, lo, hi, block, n_blocks, q.device)  # (b|1, 1, nb, B, L)
    q_padded = q if tail == 0 else F.pad(q, (0, 0, 0, tail))
    q_blocks = q_padded.unflatten(2, (n_blocks, block))  # (b, h, nb, B, d)
    k_win = key_windows(k, lo, hi + tail, block)  # (b, h, nb, L, d)
    v_win = key_windows(v, lo, hi + tail, block)  # (b, h, nb, L, d_v)

    if isinstance(normalizer, str) and normalizer == "softmax" and not return_weights:
        # Without a padding mask every query sees at least itself: no empty row to zero.
        out = _sdpa_blocks(q_blocks, k_win, v_win, allowed, p_drop, scale, mask is not None)
        return out.flatten(2, 3)[:, :, :n]

    scores = torch.matmul(q_blocks, k_win.transpose(-2, -1)) * scale  # (b, h, nb, B, L)
    options = {} if alpha is None else {"alpha": alpha_for_blocks(alpha)}
    weights = masked_normalize(scores, allowed, normalizer, dim=-1, **options)
    dropped = F.dropout(weights, p_drop, training=p_drop > 0)
    out = torch.matmul(dropped, v_win).flatten(2, 3)[:, :, :n]
    if not return_weights:
        return out
    band = _blocks_to_band(weights, width).flatten(2, 3)[:, :, :n]  # (b, h, n, width)
    # Restore the columns of a window that was clamped to the sequence: they are keys
    # outside [0, n) for every query, hence zero.
    band = F.pad(band, (before - lo, after - hi))
    return out, band


def band_to_dense(weights_band: Tensor, before: int, after: int) -> Tensor:
    """Expand banded weights ``(..., n, before + after + 1)`` to dense ``(..., n, n)``.

    Entry ``[..., i, i - before + j]`` of the result is ``weights_band[..., i, j]``; every
    other entry is zero, and band columns whose key falls outside ``[0, n)`` are dropped.
    Meant for visualisation and tests: the result has ``n * n`` entries.
    """
    check_tensor(weights_band, "weights_band")
    check_int(before, "before", minimum=0)
    check_int(after, "after", minimum=0)
    if weights_band.dim() < 2:
        raise ValueError(
            "`weights_band` must have at least 2 dimensions (..., n, before + after + 1), "
            f"got shape {tuple(weights_band.shape)}"
        )
    check_size(weights_band, -1, before + after + 1, "weights_band", "before + after + 1")
    n = weights_band.shape[-2]
    rows = torch.arange(n, device=weights_band.device).unsqueeze(-1)
    keys = rows - before + torch.arange(before + after + 1, device=weights_band.device)
    inside = (keys >= 0) & (keys < n)
    # Out-of-range columns carry zero and are sent to a valid column, where they add 0.
    values = weights_band.masked_fill(~inside, 0.0)
    index = keys.clamp(0, max(n - 1, 0)).expand_as(values)
    dense = weights_band.new_zeros(*weights_band.shape[:-1], n)
    return dense.scatter_add(-1, index, values)


class SlidingWindowAttention(AttentionProjections):
    """Multi-head self-attention in which token ``i`` attends to tokens ``i - before .. i + after``.

    Parameters: ``query``, ``key``, ``value`` (``dim -> heads * dim_head``) and ``out``
    (``heads * dim_head -> dim``), all :class:`torch.nn.Linear`, named like those of
    :class:`~attnzoo.attention.multi_head.MultiHeadAttention` so weights move between the
    two; Xavier-uniform weights and zero biases.

    Args:
        dim: model width.
        heads: number of heads.
        before: keys before each query it sees (int >= 0).
        after: keys after each query it sees (int >= 0; 0 = causal).
        dim_head: width of a head; default ``dim // heads`` (then ``dim`` must divide).
        normalizer: registry name or callable, see :func:`sliding_window_attention`.
        dropout: attention-weight dropout, applied in training mode only.
        bias: whether the projections have biases.
        alpha: the ``"entmax"`` exponent (only with ``normalizer="entmax"``).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        before: int,
        after: int,
        dim_head: int | None = None,
        normalizer: str | Normalizer = "softmax",
        dropout: float = 0.0,
        bias: bool = True,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        dim_head = resolve_dim_head(dim, heads, dim_head)
        check_int(before, "before", minimum=0)
        check_int(after, "after", minimum=0)
        check_probability(dropout, "dropout")
        if alpha is not None and normalizer != "entmax":
            raise ValueError(f"`alpha` only applies to normalizer='entmax', got {normalizer!r}")
        self.heads, self.before, self.after = heads, before, after
        self.normalizer, self.alpha, self.dropout = normalizer, alpha, dropout
        self.add_projections(dim, heads * dim_head, bias=bias)
        self.reset_parameters()

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend within the window.

        Args:
            x: ``(batch, n, dim)``.
            mask: key-padding mask ``(batch, n)``, True = real token.
            return_weights: also return the banded weights
                ``(batch, heads, n, before + after + 1)`` (layout of
                :func:`sliding_window_attention`).

        Returns:
            ``(batch, n, dim)``, or ``(out, weights)``.
        """
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.query.in_features, "x", "dim")
        q, k, v = (self._split_heads(proj(x)) for proj in (self.query, self.key, self.value))
        result = sliding_window_attention(
            q,
            k,
            v,
            before=self.before,
            after=self.after,
            mask=mask,
            normalizer=self.normalizer,
            alpha=self.alpha,
            dropout=self.dropout,
            return_weights=return_weights,
            training=self.training,
        )
        return self._project_out(result)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, before={self.before}, after={self.after}, "
            f"normalizer={self.normalizer!r}"
        )


def _block_size(n: int, width: int) -> int:
    """Query block length ``B``: half the window width, at least ``_MIN_BLOCK``, at most n.

    Each block computes ``B * (B + width - 1)`` scores for ``B * width`` useful ones, so a
    block of half the window computes 1.5 scores per useful one; a smaller block wastes less
    but makes the matmuls too small to run efficiently. Measured on CPU, one thread,
    forward+backward at n = 8192: ``width // 2`` beat ``width``, ``width // 4`` and
    ``width // 8`` for causal windows of 128 and 256 and for a window of 64 + 1 + 64;
    ``width // 4`` was 5 % faster for a causal window of 512 and has the faster forward.
    """
    return max(1, min(n, max(width // 2, _MIN_BLOCK)))


def key_windows(x: Tensor, pad_front: int, pad_back: int, block: int) -> Tensor:
    """Overlapping key windows, one per query block.

    Args:
        x: ``(batch, heads, n, d)``.
        pad_front: zero rows before position 0 (the window's ``before``).
        pad_back: zero rows after position ``n - 1``.
        block: query block length ``B``; window ``t`` starts at padded row ``t * B``.

    Returns:
        ``(batch, heads, n_blocks, L, d)``, ``n_blocks = ceil(n / B)``, with ``L`` the padded
        length minus ``(n_blocks - 1) * B`` (``B + before + after`` as the caller pads): a
        strided view of the padded keys (windows overlap, nothing is copied). Window ``t``
        row ``c`` is key ``t * B - pad_front + c``.
    """
    padded = F.pad(x, (0, 0, pad_front, pad_back))
    n_blocks = -(-x.shape[2] // block)
    span = padded.shape[2] - (n_blocks - 1) * block
    return _OverlappingWindows.apply(padded, span, block)


class _OverlappingWindows(torch.autograd.Function):
    """``padded.unfold(2, span, step).transpose(-2, -1)`` with a backward of shifted adds.

    Autograd's own backward of ``unfold`` (``unfold_backward``) was a sixth of the whole
    forward+backward time at n = 8192, window 256. Here the windows' gradient
    ``(b, h, nb, L, d)`` is cut into ``m = ceil(L / step)`` slices of ``step`` rows (the
    last one shorter when ``step`` does not divide ``L``); slice ``j`` of window ``t`` lands
    on rows ``(t + j) * step ..`` of the padded input, so the input gradient is one copy and
    ``m - 1`` strided adds of ``nb`` slices each.
    """

    @staticmethod
    def forward(ctx: Any, padded: Tensor, span: int, step: int) -> Tensor:
        ctx.padded_shape, ctx.step = padded.shape, step
        return padded.unfold(2, span, step).transpose(-2, -1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        batch, heads, n_blocks, span, width = grad.shape
        step = ctx.step  # span >= step: the first slice is always whole
        m = -(-span // step)
        total = grad.new_empty(batch, heads, n_blocks + m - 1, step, width)
        total[:, :, :n_blocks] = grad[:, :, :, :step]
        total[:, :, n_blocks:] = 0
        for j in range(1, m):
            part = grad[:, :, :, j * step : (j + 1) * step]  # the last may be shorter
            total[:, :, j : j + n_blocks, : part.shape[3]] += part
        return total.flatten(2, 3)[:, :, : ctx.padded_shape[2]], None, None


def band_block_mask(
    mask: Tensor | None,
    n: int,
    before: int,
    after: int,
    block: int,
    n_blocks: int,
    device: torch.device,
) -> Tensor:
    """Boolean ``(batch or 1, 1, n_blocks, B, L)``: True where the block query may see the key.

    Row ``r`` of block ``t`` is query ``t * B + r``; column ``c`` is key
    ``t * B - before + c``. The query sees it iff ``r <= c <= r + before + after`` (the
    band), the key index lies in ``[0, n)`` and the key is a real token.
    """
    span = block + before + after
    rows = torch.arange(block, device=device).unsqueeze(-1)
    cols = torch.arange(span, device=device)
    band = (cols >= rows) & (cols <= rows + before + after)  # (B, L)
    padded_len = (n_blocks - 1) * block + span
    if mask is None:
        real = torch.zeros(1, padded_len, dtype=torch.bool, device=device)
        real[:, before : before + n] = True
    else:
        real = F.pad(mask, (before, padded_len - before - n), value=False)
    key_ok = real.unfold(-1, span, block)  # (b|1, nb, L)
    return (band & key_ok[:, :, None, :]).unsqueeze(1)


def _sdpa_blocks(
    q_blocks: Tensor,
    k_win: Tensor,
    v_win: Tensor,
    allowed: Tensor,
    p_drop: float,
    scale: float,
    zero_empty_rows: bool,
) -> Tensor:
    """Softmax attention of every block through one SDPA call.

    Args:
        q_blocks: ``(b, h, nb, B, d)``; k_win, v_win: ``(b, h, nb, L, d | d_v)``.
        allowed: ``(b | 1, 1, nb, B, L)`` boolean, True where the query sees the key.
        zero_empty_rows: zero the output of rows with no allowed key (needed only when a
            real query can have none, i.e. with a key-padding mask).

    Returns:
        ``(b, h, nb, B, d_v)``.

    SDPA gets the blocks on its batch axis and the heads on its head axis: for batch 1
    these are strided views of the inputs (the overlapping key windows included), and the
    additive float mask ``(b * nb, 1, B, L)`` broadcasts over the heads. A boolean mask, or
    a mask that varies along SDPA's head axis, would be converted to a float mask of
    ``b * h * nb * B * L`` entries on every call; with heads and blocks flattened into one
    axis the key windows were copied as well (measured on CPU at n = 8192, window 256,
    one thread: forward 197 -> 109 ms, forward+backward 569 -> 379 ms with
    :class:`_OverlappingWindows`).

    Rows with no allowed key (the padding that completes the last block, queries whose
    window is all padding) attend to the whole block window instead of to nothing, which
    some SDPA backends turn into NaN values and gradients; their output is dropped or
    zeroed afterwards, so both the output and the gradient there are exactly zero.
    """
    batch, heads, n_blocks, block, _ = q_blocks.shape
    span = k_win.shape[-2]
    has_key = allowed.any(dim=-1, keepdim=True)
    blocked = ~allowed & has_key
    bias = torch.zeros(allowed.shape, dtype=q_blocks.dtype, device=q_blocks.device)
    bias = bias.masked_fill_(blocked, float("-inf")).expand(batch, -1, -1, -1, -1)
    bias = bias.transpose(1, 2).reshape(batch * n_blocks, 1, block, span)

    def blocks_first(x: Tensor) -> Tensor:
        return x.transpose(1, 2).reshape(batch * n_blocks, heads, *x.shape[-2:])

    out = F.scaled_dot_product_attention(
        blocks_first(q_blocks),
        blocks_first(k_win),
        blocks_first(v_win),
        attn_mask=bias,
        dropout_p=p_drop,
        scale=scale,
    )
    out = out.unflatten(0, (batch, n_blocks)).transpose(1, 2)  # (b, h, nb, B, d_v)
    return out.masked_fill(~has_key, 0.0) if zero_empty_rows else out


def _blocks_to_band(weights: Tensor, width: int) -> Tensor:
    """Block weights ``(..., B, L)`` -> band ``(..., B, width)``, ``out[r, j] = w[r, r + j]``.

    With ``L = B + width - 1``, flattening the rows and re-reading them with a row length of
    ``L + 1`` shifts row ``r`` left by ``r``, which lines the band up in the first ``width``
    columns (row ``r`` ends at column ``r + width - 1 <= L - 1``, so it never spills).
    """
    block, span = weights.shape[-2:]
    flat = F.pad(weights.flatten(-2), (0, block))  # (..., B * (L + 1))
    return flat.unflatten(-1, (block, span + 1))[..., :width]


def alpha_for_blocks(alpha: float | Tensor) -> float | Tensor:
    """Reshape a per-(batch, head) alpha ``(..., 1, 1)`` to the block scores' 5-D layout."""
    if not isinstance(alpha, Tensor) or alpha.dim() == 0:
        return alpha
    return alpha.reshape((1,) * (4 - alpha.dim()) + tuple(alpha.shape)).unsqueeze(2)


def check_local_attention_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    normalizer: str | Normalizer,
    alpha: float | Tensor | None,
    scale: float | None,
    dropout: float,
) -> None:
    """Raise ``ValueError``/``TypeError`` naming the first bad argument of a self-attention
    kernel over ``(batch, heads, n, d)`` with a ``(batch, n)`` key-padding mask (the
    sliding-window and sparse-pattern kernels)."""
    check_rank(q, 4, "q", "(batch, heads, n, d)")
    check_rank(k, 4, "k", "(batch, heads, n, d)")
    check_rank(v, 4, "v", "(batch, heads, n, d_v)")
    if k.shape != q.shape:
        raise ValueError(
            f"`k` must have the shape of `q` {tuple(q.shape)} (batch, heads, n, d), "
            f"got {tuple(k.shape)}"
        )
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"`v` must have the (batch, heads, n) of `q` {tuple(q.shape[:3])}, "
            f"got shape {tuple(v.shape)}"
        )
    if not q.is_floating_point():
        raise TypeError(f"`q` must be a floating-point tensor, got dtype {q.dtype}")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"`{name}` must have the dtype of `q` ({q.dtype}), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"`{name}` must be on the device of `q` ({q.device}), got {x.device}")
    if mask is not None:
        check_bool_mask(mask, "mask")
        check_rank(mask, 2, "mask", "(batch, n) key-padding mask")
        if tuple(mask.shape) != (q.shape[0], q.shape[2]):
            raise ValueError(
                f"`mask` must have shape (batch, n) = {(q.shape[0], q.shape[2])}, "
                f"got {tuple(mask.shape)}"
            )
        if mask.device != q.device:
            raise ValueError(f"`mask` must be on the device of `q` ({q.device}), got {mask.device}")
    if alpha is not None:
        if normalizer != "entmax":
            raise ValueError(f"`alpha` only applies to normalizer='entmax', got {normalizer!r}")
        if isinstance(alpha, Tensor):
            per_head = (q.shape[0], q.shape[1], 1, 1)
            check_broadcastable_to(alpha, per_head, "alpha", "(batch, heads, 1, 1) =")
    check_probability(dropout, "dropout")
    if scale is not None:
        check_positive(scale, "scale")


__all__ = ["SlidingWindowAttention", "band_to_dense", "sliding_window_attention"]
