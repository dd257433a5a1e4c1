"""Sparse Transformer attention patterns (Child et al. 2019), as masks and as a kernel.

A factorised pattern lets query ``i`` see only ``O(sqrt(n))`` keys, in two parts (the paper's
two heads ``A^(1)`` and ``A^(2)``), with stride ``l`` (``stride``):

* **strided** (for data with a periodic structure, e.g. image rows):
  ``A^(1)_i = {j : i - l <= j <= i}`` (the previous ``l`` positions and itself) and
  ``A^(2)_i = {j : (i - j) mod l = 0}`` (every ``l``-th position back);
* **fixed** (for text): with ``c`` summary columns (``summary``) per block of ``l``,
  ``A^(1)_i = {j : floor(j / l) = floor(i / l)}`` (its own block) and
  ``A^(2)_i = {j : j mod l >= l - c}`` (the last ``c`` positions of every block).

The paper's patterns are causal (only ``j <= i``); ``causal=False`` drops that restriction
(for strided attention the local part then becomes ``|i - j| <= l``), which gives the
bidirectional fixed pattern used for encoders.

Which part a head attends over (``part``):

* ``"union"``: both parts at once, ``A^(1) u A^(2)`` (the paper's "merged head");
* ``"local"`` / ``"global"``: only ``A^(1)`` / only ``A^(2)``;
* ``"split"``: the two factorised heads side by side, the first half of the heads over
  ``A^(1)`` and the second half over ``A^(2)`` (so ``heads`` must be even).

:func:`strided_pattern`, :func:`fixed_pattern` and :func:`sparse_pattern_mask` build the
dense boolean ``(n, n)`` masks (True = may attend) to pass to
:func:`~attnzoo.attention.functional.attend` or to plot. :func:`sparse_pattern_attention`
computes attention over exactly the same keys without an ``n x n`` tensor, with any
normaliser of the registry (a masked score gets exactly zero weight, so the result equals
dense attention with the pattern mask), in one of two ways:

* a full pass (as many queries as keys, no weights returned) goes block by block
  (:mod:`~attnzoo.attention.sparse_pattern_blocks`): both patterns are regular in blocks of
  ``l`` positions, so each part is a batched matmul over views of the inputs, and the two
  parts' scores of a query are normalised together;
* otherwise (decoding, or ``return_weights=True``) a table of the allowed key indices of
  every query, ``(n, k_max)`` with ``k_max = O(l + n / l)``, built by arithmetic once per
  ``(n, pattern)`` and cached (:func:`sparse_pattern_index`), selects the keys and values
  each query reads; only those are scored and normalised (a slot past a query's own key
  count is masked). The two products, scores against gathered keys and the weighted sum of
  gathered values, are custom autograd Functions (:class:`GatheredDot`,
  :class:`GatheredSum`) that gather blocks of query rows at a time, forwards and
  backwards, so the ``(n, k_max, d)`` gathered tensor is never held whole.

Either way memory is ``O(n * k_max)`` (the scores and weights), ``O(n sqrt(n))`` for
``l ~ sqrt(n)``, and work is ``O(n * k_max * d)``.

A causal pattern also decodes step by step: query ``t`` sees only keys ``j <= t``, all
already computed, so :class:`SparseTransformerAttention` takes the
:class:`~attnzoo.attention.multi_head.KVCache` of dense attention, appends the new
positions' keys and values, and attends each new query over its allowed cached keys,
gathered through the rows of the same index table for those queries alone
(``sparse_pattern_index(..., start=n_cached)``): ``O(l + n / l)`` keys per new position,
and exactly the rows of the full causal pass.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .multi_head import AttentionProjections, KVCache, resolve_dim_head
from .normalizers import Normalizer, get_normalizer, masked_normalize
from .sliding_window import check_local_attention_inputs
from .sparse_pattern_blocks import blocked_pattern_attention
from .validation import (
    check_bool_mask,
    check_int,
    check_probability,
    check_rank,
    check_size,
    check_tensor,
)

PATTERNS = ("strided", "fixed")
"""Names accepted by ``pattern``."""
PARTS = ("union", "local", "global", "split")
"""Names accepted by ``part``."""


# --------------------------------------------------------------------------- dense masks


def strided_pattern(n: int, stride: int, *, causal: bool = True, part: str = "union") -> Tensor:
    """Dense mask of the strided pattern: ``i - l <= j <= i`` and/or ``(i - j) mod l = 0``.

    Args:
        n: sequence length.
        stride: ``l``, an int >= 1 (the paper takes ``l ~ sqrt(n)``).
        causal: keep only ``j <= i`` (the paper's pattern); False makes the local part
            ``|i - j| <= l`` and the strided part reach forwards too.
        part: ``"union"``, ``"local"`` (``A^(1)``) or ``"global"`` (``A^(2)``).

    Returns:
        ``(n, n)`` boolean, True = query ``i`` (row) may attend to key ``j`` (column).
    """
    return sparse_pattern_mask(n, "strided", stride, causal=causal, part=part)


def fixed_pattern(
    n: int, stride: int, summary: int = 1, *, causal: bool = True, part: str = "union"
) -> Tensor:
    """Dense mask of the fixed pattern: own block and/or the last ``c`` columns of each block.

    Args:
        n: sequence length.
        stride: block length ``l``, an int >= 1.
        summary: ``c``, the summary columns per block, an int in ``[1, l]``.
        causal: keep only ``j <= i`` (the paper's pattern); False gives the bidirectional
            variant.
        part: ``"union"``, ``"local"`` (``A^(1)``, the block) or ``"global"`` (``A^(2)``,
            the summary columns).

    Returns:
        ``(n, n)`` boolean, True = may attend.
    """
    return sparse_pattern_mask(n, "fixed", stride, summary=summary, causal=causal, part=part)


def sparse_pattern_mask(
    n: int,
    pattern: str,
    stride: int,
    *,
    summary: int = 1,
    causal: bool = True,
    part: str = "union",
    heads: int | None = None,
) -> Tensor:
    """Dense mask of a Sparse Transformer pattern, written from the paper's set definitions.

    Args:
        n: sequence length.
        pattern: ``"strided"`` or ``"fixed"``.
        stride: ``l``, an int >= 1.
        summary: ``c`` for the fixed pattern, in ``[1, l]`` (ignored by ``"strided"``).
        causal: keep only ``j <= i``.
        part: ``"union"``, ``"local"``, ``"global"``, or ``"split"`` (needs ``heads``).
        heads: number of heads, only for ``part="split"``.

    Returns:
        ``(n, n)`` boolean, or ``(heads, n, n)`` for ``"split"`` (the first ``heads // 2``
        heads over the local part, the others over the global part), which broadcasts
        against scores ``(batch, heads, n, n)``.
    """
    _check_pattern(n, pattern, stride, summary, causal, part)
    if part == "split":
        _check_split_heads(heads)
        assert heads is not None
        local = sparse_pattern_mask(
            n, pattern, stride, summary=summary, causal=causal, part="local"
        )
        other = sparse_pattern_mask(
            n, pattern, stride, summary=summary, causal=causal, part="global"
        )
        return torch.stack([local] * (heads // 2) + [other] * (heads // 2))
    if heads is not None:
        raise ValueError(f"`heads` only applies to part='split', got part={part!r}")
    i = torch.arange(n).unsqueeze(-1)
    j = torch.arange(n)
    if pattern == "strided":
        local = (i - j).abs() <= stride
        other = (i - j) % stride == 0
    else:
        local = j // stride == i // stride
        other = (j % stride >= stride - summary).expand(n, n)
    allowed = {"local": local, "global": other, "union": local | other}[part]
    return allowed & (j <= i) if causal else allowed


# --------------------------------------------------------------------------- index tables


def sparse_pattern_index(
    n: int,
    pattern: str,
    stride: int,
    *,
    summary: int = 1,
    causal: bool = True,
    part: str = "union",
    heads: int | None = None,
    start: int = 0,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """The allowed key indices of every query, built by arithmetic (no ``n x n`` tensor).

    Row ``i`` lists the keys of query ``start + i`` in increasing order, then padding
    slots. Each row costs ``O(its allowed keys)``, so the rows of the last few queries
    (``start = n - n_new``, decoding with cached keys) are cheap whatever ``n``. Whole
    tables (``start = 0``) are cached per ``(n, pattern, stride, summary, causal, part,
    heads, device)``: treat them as read-only.

    Args:
        n, pattern, stride, summary, causal: as for :func:`sparse_pattern_mask`.
        part: ``"union"``, ``"local"``, ``"global"``, or ``"split"`` (needs ``heads``).
        heads: number of heads, only for ``part="split"``.
        start: the first query listed, in ``[0, n]``; keys range over all ``0 .. n - 1``.
        device: where the tables live.

    Returns:
        ``index`` ``(n - start, k_max)`` int64 (a padding slot holds 0) and ``valid`` of the
        same shape, boolean (False on padding slots), ``k_max`` the largest number of keys
        of a listed query. For ``"split"``: ``(heads, n - start, k_max)`` each, the first
        half of the heads' rows from the local table and the others from the global one
        (padded to one width): the layout of the weights :func:`sparse_pattern_attention`
        returns.
    """
    _check_pattern(n, pattern, stride, summary, causal, part)
    check_int(start, "start", minimum=0)
    if start > n:
        raise ValueError(f"`start` must be <= n = {n}, got {start}")
    device = torch.device("cpu") if device is None else torch.device(device)
    if part == "split":
        _check_split_heads(heads)
    elif heads is not None:
        raise ValueError(f"`heads` only applies to part='split', got part={part!r}")
    build = _cached_index if start == 0 else _index
    return build(start, n, pattern, stride, summary, causal, part, heads, device)


def _index(
    start: int,
    n: int,
    pattern: str,
    stride: int,
    summary: int,
    causal: bool,
    part: str,
    heads: int | None,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Rows ``start .. n - 1`` of the table of :func:`sparse_pattern_index` (checked args)."""
    if part == "split":
        assert heads is not None
        tables = [
            _index(start, n, pattern, stride, summary, causal, p, None, device)
            for p in ("local", "global")
        ]
        width = max(index.shape[-1] for index, _ in tables)
        index = torch.stack([F.pad(t, (0, width - t.shape[-1])) for t, _ in tables])
        valid = torch.stack([F.pad(v, (0, width - v.shape[-1])) for _, v in tables])
        which = (torch.arange(heads, device=device) >= heads // 2).long()  # 0: local, 1: global
        return index[which], valid[which]
    parts = ("local", "global") if part == "union" else (part,)
    candidates = torch.cat(
        [_candidates(start, n, pattern, stride, summary, causal, p) for p in parts], 1
    )
    return _compact(candidates, n, device)


_cached_index = functools.lru_cache(maxsize=64)(_index)


def _candidates(
    start: int, n: int, pattern: str, stride: int, summary: int, causal: bool, part: str
) -> Tensor:
    """``(n - start, K)`` key indices that may hold the keys of queries ``start .. n - 1``;
    ``n`` marks a non-key.

    Each part is a fixed arithmetic progression relative to the query (or to its block),
    so its candidates are one broadcast sum; out-of-range and (when causal) future keys
    become ``n``. ``K`` is of the order of a query's key count, whatever ``start``.
    """
    i = torch.arange(start, n).unsqueeze(-1)
    l, c = stride, summary
    if pattern == "strided" and part == "local":
        keys = i - l + torch.arange(l + 1 if causal else 2 * l + 1)
    elif pattern == "strided":
        steps = torch.arange(-(-n // l) + 1)
        # Causal: i, i - l, i - 2l, ...; otherwise every j with j = i (mod l).
        keys = i - l * steps if causal else i % l + l * steps
    elif part == "local":
        keys = (i // l) * l + torch.arange(l)
    else:
        blocks = torch.arange(-(-n // l)).unsqueeze(-1)
        columns = (blocks * l + (l - c) + torch.arange(c)).flatten()
        keys = columns.expand(n - start, -1)
    outside = (keys < 0) | (keys >= n)
    if causal:
        outside = outside | (keys > i)
    return keys.masked_fill(outside, n)


def _compact(candidates: Tensor, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Sort each row, drop duplicates (a key in both parts) and padding, trim to ``k_max``."""
    keys, _ = candidates.sort(dim=-1)
    repeated = torch.zeros_like(keys, dtype=torch.bool)
    repeated[:, 1:] = keys[:, 1:] == keys[:, :-1]
    keys, _ = keys.masked_fill(repeated, n).sort(dim=-1)
    valid = keys < n
    k_max = int(valid.sum(-1).max()) if valid.numel() else 0
    keys, valid = keys[:, :k_max], valid[:, :k_max]
    return keys.masked_fill(~valid, 0).to(device), valid.to(device)


# --------------------------------------------------------------------------- the kernel


def sparse_pattern_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    pattern: str,
    stride: int,
    summary: int = 1,
    causal: bool = True,
    part: str = "union",
    mask: Tensor | None = None,
    normalizer: str | Normalizer = "softmax",
    alpha: float | Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    return_weights: bool = False,
    training: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Self-attention over a Sparse Transformer pattern, without an ``n x n`` tensor.

    Equals ``attend(q, k, v, mask=sparse_pattern_mask(...) & padding)`` for every
    normaliser (up to floating-point summation order).

    With ``causal=True`` the keys may extend before the queries (decoding with cached
    keys): ``k`` and ``v`` then hold all ``n_k`` positions and ``q`` the last ``n_q`` of
    them, positions ``n_k - n_q .. n_k - 1``; the result is those rows of the full pass.
    Only the allowed keys of those queries are gathered (:func:`sparse_pattern_index` with
    ``start = n_k - n_q``), so one new position costs ``O(l + n_k / l)``, not ``O(n_k)``.

    Args:
        q: queries ``(batch, heads, n_q, d)``; ``n_q = n_k`` unless ``causal``.
        k: keys ``(batch, heads, n_k, d)``, ``n_k >= n_q``.
        v: values ``(batch, heads, n_k, d_v)``.
        pattern: ``"strided"`` or ``"fixed"``.
        stride: ``l``, an int >= 1.
        summary: ``c`` of the fixed pattern, in ``[1, l]``.
        causal: keep only keys ``j <= i``.
        part: ``"union"``, ``"local"``, ``"global"`` or ``"split"`` (first half of the
            heads local, second half global; ``heads`` even).
        mask: key-padding mask ``(batch, n_k)``, True = real token. A query with no allowed
            key returns zeros.
        normalizer: registry name or a callable ``f(scores, dim)`` giving ``-inf`` scores
            zero weight.
        alpha: the ``"entmax"`` exponent: a float, or a tensor broadcastable to
            ``(batch, heads, 1, 1)``.
        scale: score scale, > 0; default ``1 / sqrt(d)``.
        dropout: probability of zeroing an attention weight, in [0, 1).
        return_weights: also return the weights.
        training: apply dropout only when True.

    Returns:
        ``out`` ``(batch, heads, n_q, d_v)``, or ``(out, weights)`` with the compact weights
        ``(batch, heads, n_q, k_max)`` (before dropout) whose column ``s`` of row ``i`` is
        the weight of key ``index[i, s]`` (``index[h, i, s]`` for ``"split"``) of
        ``sparse_pattern_index(n_k, ..., start=n_k - n_q)`` (zero on padding slots);
        :func:`pattern_weights_to_dense` expands them to ``(..., n_q, n_k)``.
    """
    _check_kernel_inputs(q, k, v, mask, normalizer, alpha, scale, dropout, causal)
    heads, n_q, d = q.shape[1:]
    n_k = k.shape[2]
    _check_pattern(n_k, pattern, stride, summary, causal, part)
    if part == "split":
        _check_split_heads(heads)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    p_drop = dropout if training else 0.0
    if n_q == n_k > 0 and not return_weights:
        return blocked_pattern_attention(
            q,
            k,
            v,
            pattern=pattern,
            stride=stride,
            summary=summary,
            causal=causal,
            part=part,
            mask=mask,
            normalizer=normalizer,
            alpha=alpha,
            scale=scale,
            p_drop=p_drop,
        )

    index, valid = sparse_pattern_index(
        n_k,
        pattern,
        stride,
        summary=summary,
        causal=causal,
        part=part,
        heads=heads if part == "split" else None,
        start=n_k - n_q,
        device=q.device,
    )
    if part != "split":  # one table for every head
        index, valid = index.unsqueeze(0), valid.unsqueeze(0)

    scores = GatheredDot.apply(q, k, index) * scale  # (b, h, n_q, k_max)
    allowed = valid.unsqueeze(0)  # (1, 1|h, n_q, k_max)
    if mask is not None:
        allowed = allowed & mask[:, index]  # (b, 1|h, n_q, k_max)
    options = {} if alpha is None else {"alpha": alpha}
    # No listed query has a key (k_max = 0: the summary columns of a fixed pattern lie past
    # the sequence): the empty scores are the empty weights, and the output is zeros.
    weights = (
        masked_normalize(scores, allowed, normalizer, dim=-1, **options)
        if scores.shape[-1]
        else scores
    )
    dropped = F.dropout(weights, p_drop, training=p_drop > 0)
    out = GatheredSum.apply(dropped, v, index)
    return (out, weights) if return_weights else out


def _check_kernel_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    normalizer: str | Normalizer,
    alpha: float | Tensor | None,
    scale: float | None,
    dropout: float,
    causal: object,
) -> None:
    """Raise naming the first bad kernel argument; keys may outnumber queries when causal."""
    check_rank(q, 4, "q", "(batch, heads, n_q, d)")
    check_rank(k, 4, "k", "(batch, heads, n_k, d)")
    n_q, n_k = q.shape[2], k.shape[2]
    if n_k > n_q and causal is True:
        expected = (*q.shape[:2], n_k, q.shape[3])
        if tuple(k.shape) != expected:
            raise ValueError(
                f"`k` must have shape (batch, heads, n_k, d) = {expected} (the batch, heads "
                f"and d of `q`), got {tuple(k.shape)}"
            )
        check_rank(v, 4, "v", "(batch, heads, n_k, d_v)")
        if v.shape[:3] != k.shape[:3]:
            raise ValueError(
                f"`v` must have the (batch, heads, n_k) of `k` {tuple(k.shape[:3])}, "
                f"got shape {tuple(v.shape)}"
            )
        if mask is not None:
            check_bool_mask(mask, "mask")
            if tuple(mask.shape) != (q.shape[0], n_k):
                raise ValueError(
                    f"`mask` must have shape (batch, n_k) = {(q.shape[0], n_k)}, "
                    f"got {tuple(mask.shape)}"
                )
        # The rest (dtypes, devices, normaliser options) is checked on the keys, values and
        # mask of the query positions, which now have the shapes of the full-pass case.
        start = n_k - n_q
        k, v = k[:, :, start:], v[:, :, start:]
        mask = None if mask is None else mask[:, start:]
    elif n_k > n_q:
        raise ValueError(
            f"`k` must have the shape of `q` {tuple(q.shape)}: keys may outnumber the "
            f"queries only with causal=True (decoding), got {tuple(k.shape)} and "
            f"causal={causal!r}"
        )
    check_local_attention_inputs(q, k, v, mask, normalizer, alpha, scale, dropout)


# Rows of queries handled at once are chosen so that the gathered keys or values of one
# block hold at most this many elements: large enough for efficient batched products, small
# enough that the (n, k_max, d) gathered tensor is never held whole.
_GATHER_BUDGET = 1 << 22


def _row_blocks(x: Tensor, index: Tensor) -> list[slice]:
    """Blocks of query rows (of ``index`` ``(1 | heads, n, k)``) for gathering from or
    scattering into ``x`` ``(b, h, n_x, d)``."""
    b, h, _, d = x.shape
    n, k = index.shape[1:]
    rows = max(1, _GATHER_BUDGET // max(1, b * h * k * d))
    return [slice(start, start + rows) for start in range(0, n, rows)]


def _select(x: Tensor, index: Tensor) -> Tensor:
    """Rows of ``x`` ``(batch, heads, n, d)`` at ``index`` ``(1 | heads, rows, k)`` ->
    ``(batch, heads, rows, k, d)``."""
    if index.shape[0] == 1:
        return x.index_select(2, index[0].flatten()).unflatten(2, index.shape[1:])
    head = torch.arange(index.shape[0], device=index.device)[:, None, None]
    return x[:, head, index]


def _gathered_dot(a: Tensor, x: Tensor, index: Tensor) -> Tensor:
    """``out[..., i, s] = a[..., i, :] . x[..., index[i, s], :]``, block by block of rows."""
    b, h, n, _ = a.shape
    out = a.new_empty(b, h, n, index.shape[-1])
    for rows in _row_blocks(x, index):
        out[:, :, rows] = torch.einsum(
            "bhnd,bhnkd->bhnk", a[:, :, rows], _select(x, index[:, rows])
        )
    return out


def _gathered_sum(w: Tensor, x: Tensor, index: Tensor) -> Tensor:
    """``out[..., i, :] = sum_s w[..., i, s] * x[..., index[i, s], :]``, block by block."""
    b, h, n, _ = w.shape
    out = x.new_empty(b, h, n, x.shape[-1])
    for rows in _row_blocks(x, index):
        out[:, :, rows] = torch.einsum(
            "bhnk,bhnkd->bhnd", w[:, :, rows], _select(x, index[:, rows])
        )
    return out


def _scatter_outer(w: Tensor, a: Tensor, index: Tensor, n_x: int) -> Tensor:
    """The gradient of ``x`` in both products: ``out[..., index[i, s], :] += w[..., i, s] *
    a[..., i, :]``, ``(b, h, n_x, d)``."""
    b, h = w.shape[:2]
    out = a.new_zeros(b, h, n_x, a.shape[-1])
    for rows in _row_blocks(a, index):
        contrib = w[:, :, rows, :, None] * a[:, :, rows, None, :]  # (b, h, r, k, d)
        target = index[:, rows].expand(h, -1, -1).flatten(1)  # (h, r * k)
        target = target[None, :, :, None].expand(b, h, target.shape[-1], a.shape[-1])
        out.scatter_add_(2, target, contrib.flatten(2, 3))
    return out


class GatheredDot(torch.autograd.Function):
    """Scores against gathered keys, ``(b, h, n, d) x (b, h, n_k, d) -> (b, h, n, k)``:
    ``out[..., i, s] = q[..., i, :] . key[..., index[i, s], :]``.

    ``index`` is ``(1 | heads, n, k)``. Neither direction holds the gathered keys
    ``(b, h, n, k, d)`` whole (blocks of query rows); backward recomputes them.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, key: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(q, key, index)
        return _gathered_dot(q, key, index)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        q, key, index = ctx.saved_tensors
        grad_q = _gathered_sum(grad, key, index) if ctx.needs_input_grad[0] else None
        grad_key = _scatter_outer(grad, q, index, key.shape[2]) if ctx.needs_input_grad[1] else None
        return grad_q, grad_key, None


class GatheredSum(torch.autograd.Function):
    """Weighted sum of gathered values, ``(b, h, n, k) x (b, h, n_k, d) -> (b, h, n, d)``:
    ``out[..., i, :] = sum_s w[..., i, s] * value[..., index[i, s], :]``.

    Like :class:`GatheredDot`, never holds the gathered values whole.
    """

    @staticmethod
    def forward(ctx: Any, w: Tensor, value: Tensor, index: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(w, value, index)
        return _gathered_sum(w, value, index)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        w, value, index = ctx.saved_tensors
        grad_w = _gathered_dot(grad, value, index) if ctx.needs_input_grad[0] else None
        grad_value = (
            _scatter_outer(w, grad, index, value.shape[2]) if ctx.needs_input_grad[1] else None
        )
        return grad_w, grad_value, None


def pattern_weights_to_dense(
    weights: Tensor, index: Tensor, valid: Tensor, *, n_keys: int | None = None
) -> Tensor:
    """Expand compact weights ``(..., n_q, k_max)`` to dense ``(..., n_q, n_keys)`` (for
    plots, tests).

    Args:
        weights: compact weights from :func:`sparse_pattern_attention`.
        index: ``(n_q, k_max)`` or per head ``(heads, n_q, k_max)`` key indices.
        valid: boolean of the shape of ``index``, False on padding slots.
        n_keys: number of keys ``n_k``; default ``n_q`` (the full pass). When decoding with
            cached keys, the ``n_k`` of :func:`sparse_pattern_attention`.

    Returns:
        ``(..., n_q, n_keys)``: entry ``[..., i, index[i, s]]`` is ``weights[..., i, s]``.
    """
    check_tensor(weights, "weights")
    check_tensor(index, "index")
    check_bool_mask(valid, "valid")
    if index.shape != valid.shape or index.shape[-2:] != weights.shape[-2:]:
        raise ValueError(
            f"`index` {tuple(index.shape)} and `valid` {tuple(valid.shape)} must have the "
            f"(n, k_max) of `weights` {tuple(weights.shape)}"
        )
    n_q = weights.shape[-2]
    n_keys = n_q if n_keys is None else check_int(n_keys, "n_keys", minimum=0)
    if index.numel() and int(index.max()) >= n_keys:
        raise ValueError(
            f"`n_keys` must exceed every key index (max {int(index.max())}), got {n_keys}"
        )
    values = weights.masked_fill(~valid, 0.0)
    dense = weights.new_zeros(*weights.shape[:-1], n_keys)
    return dense.scatter_add(-1, index.expand_as(values), values)


# --------------------------------------------------------------------------- the module


class SparseTransformerAttention(AttentionProjections):
    """Multi-head self-attention over a Sparse Transformer pattern (Child et al. 2019).

    Parameters: ``query``, ``key``, ``value`` (``dim -> heads * dim_head``) and ``out``
    (``heads * dim_head -> dim``), named like those of
    :class:`~attnzoo.attention.multi_head.MultiHeadAttention` so that weights move between
    the two; Xavier-uniform weights and zero biases.

    Args:
        dim: model width.
        heads: number of heads (even for ``part="split"``).
        pattern: ``"strided"`` or ``"fixed"``.
        stride: ``l``, an int >= 1.
        summary: ``c`` of the fixed pattern, in ``[1, stride]``.
        causal: keep only keys ``j <= i`` (the paper's autoregressive setting).
        part: ``"union"`` (merged head), ``"local"``, ``"global"`` or ``"split"`` (the two
            factorised heads: first half of the heads local, second half global).
        dim_head: width of a head; default ``dim // heads``.
        normalizer: registry name or callable, see :func:`sparse_pattern_attention`.
        dropout: attention-weight dropout, in training mode only.
        bias: whether the projections have biases.
        alpha: the ``"entmax"`` exponent (only with ``normalizer="entmax"``).

    A causal module decodes step by step with a
    :class:`~attnzoo.attention.multi_head.KVCache` (see :meth:`forward`); a bidirectional
    one refuses a cache.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        pattern: str = "strided",
        stride: int = 16,
        summary: int = 1,
        causal: bool = True,
        part: str = "union",
        dim_head: int | None = None,
        normalizer: str | Normalizer = "softmax",
        dropout: float = 0.0,
        bias: bool = True,
        alpha: float | None = None,
    ) -> None:
        super().__init__()
        dim_head = resolve_dim_head(dim, heads, dim_head)
        _check_pattern(0, pattern, stride, summary, causal, part)
        if part == "split":
            _check_split_heads(heads)
        check_probability(dropout, "dropout")
        if alpha is not None and normalizer != "entmax":
            raise ValueError(f"`alpha` only applies to normalizer='entmax', got {normalizer!r}")
        get_normalizer(normalizer, **({} if alpha is None else {"alpha": alpha}))
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.pattern, self.stride, self.summary = pattern, stride, summary
        self.causal, self.part = causal, part
        self.normalizer, self.alpha, self.dropout = normalizer, alpha, dropout
        self.add_projections(dim, heads * dim_head, bias=bias)
        self.reset_parameters()

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        return_weights: bool = False,
        cache: KVCache | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend over the pattern.

        Args:
            x: ``(batch, n, dim)``: the whole sequence, or with a ``cache`` the ``n`` new
                positions that follow the ``n_cached`` cached ones (a prompt, then one
                token at a time).
            mask: key-padding mask ``(batch, n_cached + n)``, True = real token.
            return_weights: also return the compact weights ``(batch, heads, n, k_max)``
                (layout of :func:`sparse_pattern_attention`, with ``n_k = n_cached + n``).
            cache: a :class:`~attnzoo.attention.multi_head.KVCache` (the one dense
                attention uses), causal layers only: the new keys and values are appended
                to it, and each new position attends over the allowed keys among all
                cached ones, so the outputs are those rows of the full causal pass.

        Returns:
            ``(batch, n, dim)``, or ``(out, weights)``.
        """
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        if cache is not None:
            self._check_cache(cache, x)
        q, k, v = (self._split_heads(proj(x)) for proj in (self.query, self.key, self.value))
        if cache is not None:
            if mask is not None:
                # Checked before the cache grows, so a bad mask leaves it untouched.
                check_bool_mask(mask, "mask")
                expected = (x.shape[0], len(cache) + x.shape[1])
                if tuple(mask.shape) != expected:
                    raise ValueError(
                        f"`mask` must have shape (batch, n_cached + n) = {expected} (cached "
                        f"positions included), got {tuple(mask.shape)}"
                    )
            k, v = cache.append(k, v)
        result = sparse_pattern_attention(
            q,
            k,
            v,
            pattern=self.pattern,
            stride=self.stride,
            summary=self.summary,
            causal=self.causal,
            part=self.part,
            mask=mask,
            normalizer=self.normalizer,
            alpha=self.alpha,
            dropout=self.dropout,
            return_weights=return_weights,
            training=self.training,
        )
        return self._project_out(result)

    def _check_cache(self, cache: object, x: Tensor) -> None:
        """Refuse a cache this layer cannot extend, before anything is appended to it."""
        if not isinstance(cache, KVCache):
            raise TypeError(f"`cache` must be a KVCache, got {type(cache).__name__}")
        if not self.causal:
            raise ValueError(
                "`cache` given, but the layer has causal=False: a bidirectional pattern "
                "lets earlier positions see later ones, so it cannot decode step by step"
            )
        if cache.key is None:
            return
        expected = (x.shape[0], self.heads, self.dim_head)
        got = (cache.key.shape[0], cache.key.shape[1], cache.key.shape[-1])
        if cache.key.dim() != 4 or got != expected:
            raise ValueError(
                "`cache` must hold keys (batch, heads, n_cached, dim_head) with "
                f"(batch, heads, dim_head) = {expected}, got shape {tuple(cache.key.shape)}"
            )

    def extra_repr(self) -> str:
        summary = f", summary={self.summary}" if self.pattern == "fixed" else ""
        return (
            f"heads={self.heads}, pattern={self.pattern!r}, stride={self.stride}{summary}, "
            f"causal={self.causal}, part={self.part!r}, normalizer={self.normalizer!r}"
        )


# --------------------------------------------------------------------------- checks


def _check_pattern(
    n: int, pattern: object, stride: object, summary: object, causal: object, part: object
) -> None:
    """Raise ``ValueError``/``TypeError`` naming the first bad pattern argument."""
    check_int(n, "n", minimum=0)
    if pattern not in PATTERNS:
        raise ValueError(f"`pattern` must be one of {PATTERNS}, got {pattern!r}")
    check_int(stride, "stride")
    check_int(summary, "summary")
    assert isinstance(stride, int) and isinstance(summary, int)
    if pattern == "fixed" and summary > stride:
        raise ValueError(f"`summary` must be <= stride = {stride}, got {summary}")
    if not isinstance(causal, bool):
        raise TypeError(f"`causal` must be a bool, got {type(causal).__name__}")
    if part not in PARTS:
        raise ValueError(f"`part` must be one of {PARTS}, got {part!r}")


def _check_split_heads(heads: int | None) -> None:
    if heads is None or isinstance(heads, bool) or not isinstance(heads, int):
        raise TypeError(f"`heads` must be an even int for part='split', got {heads!r}")
    if heads < 2 or heads % 2:
        raise ValueError(f"`heads` must be an even int >= 2 for part='split', got {heads}")


__all__ = [
    "PARTS",
    "PATTERNS",
    "GatheredDot",
    "GatheredSum",
    "SparseTransformerAttention",
    "fixed_pattern",
    "pattern_weights_to_dense",
    "sparse_pattern_attention",
    "sparse_pattern_index",
    "sparse_pattern_mask",
    "strided_pattern",
]
