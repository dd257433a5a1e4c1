"""Sparse Transformer patterns over the whole sequence, computed block by block.

Both patterns of Child et al. (2019) are regular in blocks of ``l`` positions (``stride``).
Padding the sequence to ``m * l`` positions, ``m = ceil(n / l)``, and reading position
``r * l + c`` as row ``r``, column ``c`` of an ``(m, l)`` grid, every part is a dense
product over views of the inputs:

* strided, local (``i - l <= j <= i``; ``|i - j| <= l`` when not causal): a sliding window.
  Query block ``r`` reads key blocks ``r - 1, r`` (and ``r + 1``) through the overlapping
  key windows of :mod:`~attnzoo.attention.sliding_window`: ``(l, 2l)`` scores a block
  (``(l, 3l)`` when not causal).
* strided, global (``(i - j) mod l = 0``): the keys of query ``(r, c)`` are column ``c`` of
  the grid, so transposing the grid turns it into attention along each column: ``(m, m)``
  scores a column.
* fixed, local (the query's own block) and global (the last ``c`` positions of every block,
  ``m * c`` summary keys): all queries of a block read the same keys, so block ``r`` scores
  its own ``l`` keys and the summary keys in one product, ``(l, l + m * c)`` scores a block.

For ``part="union"`` the two parts' scores of each query are concatenated and normalised
together, so every normaliser sees exactly the allowed scores of the dense row. A key in
both parts is kept in the local one only: for strided ``j = i`` and ``j = i - l``
(``i + l`` too when not causal), for fixed the summary columns of the query's own block.

Against the gather kernel of :func:`~attnzoo.attention.sparse_patterns.sparse_pattern_attention`
(an index table of each query's keys) the work is the same order, ``O(n (l + n / l) d)``,
but it is done by batched matmuls instead of gathering ``(n, k_max, d)`` keys and values,
and autograd's backward of a matmul is another matmul instead of a scatter-add.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

from .normalizers import Normalizer, masked_normalize
from .sliding_window import alpha_for_blocks, band_block_mask, key_windows

# One part of a pattern: its scores (b, h, m, l, K) for every query slot of the grid, which
# of them are allowed (broadcasting to the scores), and how its weights read the values.
Part = tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]


def blocked_pattern_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    pattern: str,
    stride: int,
    summary: int,
    causal: bool,
    part: str,
    mask: Tensor | None,
    normalizer: str | Normalizer,
    alpha: float | Tensor | None,
    scale: float,
    p_drop: float,
) -> Tensor:
    """Self-attention over a Sparse Transformer pattern, every query at once.

    The arguments are those of
    :func:`~attnzoo.attention.sparse_patterns.sparse_pattern_attention`, already checked,
    with ``q``, ``k`` ``(batch, heads, n, d)`` and ``v`` ``(batch, heads, n, d_v)`` over the
    same ``n >= 1`` positions, ``scale`` resolved and ``p_drop`` the dropout probability
    in effect.

    Returns:
        ``(batch, heads, n, d_v)``; a query with no allowed key gets zeros.
    """
    if part == "split":
        half = q.shape[1] // 2
        first, second = _split_heads_alpha(alpha, q.shape[1])
        attend_part = partial(
            blocked_pattern_attention,
            pattern=pattern,
            stride=stride,
            summary=summary,
            causal=causal,
            mask=mask,
            normalizer=normalizer,
            scale=scale,
            p_drop=p_drop,
        )
        local = attend_part(q[:, :half], k[:, :half], v[:, :half], part="local", alpha=first)
        other = attend_part(q[:, half:], k[:, half:], v[:, half:], part="global", alpha=second)
        return torch.cat([local, other], dim=1)

    n, l = q.shape[2], stride
    m = -(-n // l)
    tail = m * l - n  # positions added so that the blocks tile the sequence
    # Scaling the queries (n * d entries) instead of the scores (n * k_max) saves a pass.
    padded = [x if tail == 0 else F.pad(x, (0, 0, 0, tail)) for x in (q * scale, k, v)]
    q_grid, k_grid, v_grid = (x.unflatten(2, (m, l)) for x in padded)  # (b, h, m, l, .)
    # Which of the m * l grid positions are real keys: inside [0, n), and unpadded.
    if mask is None:
        real = (torch.arange(m * l, device=q.device) < n).unsqueeze(0)
    else:
        real = F.pad(mask, (0, tail), value=False)
    real = real.unflatten(-1, (m, l))  # (b | 1, m, l)

    union = part == "union"
    parts: list[Part] = []
    if pattern == "strided":
        if part != "global":
            parts.append(_strided_local(q_grid, k, v, mask, l, causal, tail))
        if part != "local":
            parts.append(_strided_global(q_grid, k_grid, v_grid, real, causal, union))
    else:
        parts.append(_fixed(q_grid, k_grid, v_grid, real, summary, causal, part))

    scores = parts[0][0] if len(parts) == 1 else torch.cat([s for s, _, _ in parts], dim=-1)
    allowed = _side_by_side([a for _, a, _ in parts])
    options = {} if alpha is None else {"alpha": alpha_for_blocks(alpha)}
    weights = masked_normalize(scores, allowed, normalizer, dim=-1, **options)
    weights = F.dropout(weights, p_drop, training=p_drop > 0)
    widths = [s.shape[-1] for s, _, _ in parts]
    outs = [read(w) for (_, _, read), w in zip(parts, weights.split(widths, -1), strict=True)]
    out = outs[0] if len(outs) == 1 else outs[0] + outs[1]
    return out.flatten(2, 3)[:, :, :n]


def _strided_local(
    q_grid: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, l: int, causal: bool, tail: int
) -> Part:
    """Keys ``i - l .. i`` (``.. i + l`` when not causal): the sliding window of width
    ``l``, with the grid's rows as its query blocks. Scores ``(b, h, m, l, L)``, window
    column ``t`` of block ``r`` being key ``r * l - before + t``."""
    n, m = k.shape[2], q_grid.shape[2]
    # A query never sees more than n - 1 keys on either side (the sliding window's clamp).
    before, after = min(l, n - 1), 0 if causal else min(l, n - 1)
    k_win = key_windows(k, before, after + tail, l)  # (b, h, m, L, d)
    v_win = key_windows(v, before, after + tail, l)
    allowed = band_block_mask(mask, n, before, after, l, m, k.device)  # (b | 1, 1, m, l, L)
    scores = torch.matmul(q_grid, k_win.transpose(-2, -1))
    return scores, allowed, lambda w: torch.matmul(w, v_win)


def _strided_global(
    q_grid: Tensor, k_grid: Tensor, v_grid: Tensor, real: Tensor, causal: bool, union: bool
) -> Part:
    """Keys ``j = i (mod l)``: column ``c`` of the grid for query ``(r, c)``. Scores
    ``(b, h, m, l, m)``, entry ``[r, c, s]`` against key ``(s, c)``."""
    m = q_grid.shape[2]
    columns = torch.matmul(q_grid.transpose(2, 3), k_grid.transpose(2, 3).transpose(-2, -1))
    rows = torch.arange(m, device=q_grid.device)
    step = rows.unsqueeze(0) - rows.unsqueeze(1)  # [r, s] = s - r, in strides
    if causal:
        # The union leaves s = r (the query itself) and s = r - 1 to the local window.
        ok = step <= (-2 if union else 0)
    else:
        ok = step.abs() >= 2 if union else torch.ones_like(step, dtype=torch.bool)
    allowed = ok.unsqueeze(1) & real.transpose(-2, -1).unsqueeze(-3)  # (b | 1, m, l, m)
    values = v_grid.transpose(2, 3)  # (b, h, l, m, d_v)

    def read(weights: Tensor) -> Tensor:
        return torch.matmul(weights.transpose(2, 3), values).transpose(2, 3)

    return columns.transpose(2, 3), allowed.unsqueeze(1), read


def _fixed(
    q_grid: Tensor,
    k_grid: Tensor,
    v_grid: Tensor,
    real: Tensor,
    summary: int,
    causal: bool,
    part: str,
) -> Part:
    """The query's own block (local) and the last ``summary`` keys of every block (global):
    the keys of all queries of a block are the same, so block ``r`` reads its own ``l``
    keys and then the ``m * summary`` summary keys, one matmul for both parts. Scores
    ``(b, h, m, l, K)``, ``K = l + m * summary`` for the union."""
    m, l = q_grid.shape[2:4]
    device = q_grid.device
    keys, values, allowed = [], [], []
    if part != "global":
        keys.append(k_grid)
        values.append(v_grid)
        own = real.unsqueeze(-2)  # (b | 1, m, 1, l)
        if causal:
            own = own & torch.ones(l, l, dtype=torch.bool, device=device).tril()
        allowed.append(own)
    if part != "local":
        # The summary keys, repeated for every block: m * m * summary rows of d entries,
        # no more than the (n, m * summary) scores they produce while d <= l.
        width = m * summary
        for x, group in ((k_grid, keys), (v_grid, values)):
            shared = x[:, :, :, l - summary :].flatten(2, 3).unsqueeze(2)  # (b, h, 1, mc, .)
            group.append(shared.expand(-1, -1, m, -1, -1))
        other = real[:, :, l - summary :].flatten(1).view(-1, 1, 1, width)
        key_block = torch.arange(m, device=device).repeat_interleave(summary)
        if causal:
            position = torch.arange(m * l, device=device).view(m, l, 1)  # the query's
            offset = torch.arange(summary, device=device).repeat(m)
            other = other & (key_block * l + (l - summary) + offset <= position)
        if part == "union":  # the own block's summary keys belong to the local part
            other = other & (key_block != torch.arange(m, device=device).view(m, 1, 1))
        allowed.append(other)
    block_keys = keys[0] if len(keys) == 1 else torch.cat(keys, dim=3)
    block_values = values[0] if len(values) == 1 else torch.cat(values, dim=3)
    scores = torch.matmul(q_grid, block_keys.transpose(-2, -1))
    allowed_keys = _side_by_side(allowed).unsqueeze(1)
    return scores, allowed_keys, lambda w: torch.matmul(w, block_values)


def _side_by_side(masks: list[Tensor]) -> Tensor:
    """Boolean masks joined along the last axis, their other axes broadcast first."""
    if len(masks) == 1:
        return masks[0]
    lead = torch.broadcast_shapes(*(a.shape[:-1] for a in masks))
    return torch.cat([a.expand(*lead, a.shape[-1]) for a in masks], dim=-1)


def _split_heads_alpha(
    alpha: float | Tensor | None, heads: int
) -> tuple[float | Tensor | None, float | Tensor | None]:
    """The alphas of the first and second halves of the heads (``alpha`` broadcasts to
    ``(batch, heads, 1, 1)``)."""
    if not isinstance(alpha, Tensor) or alpha.dim() < 3 or alpha.shape[-3] == 1:
        return alpha, alpha
    half = heads // 2
    return alpha[..., :half, :, :], alpha[..., half:, :, :]
