"""Sparse attention in query tiles: sparsemax / entmax attention without the ``(n, n)`` matrix.

``blockwise_attention(q, k, v, normalizer="entmax15")`` equals
``attend(q, k, v, normalizer="entmax15")`` (and likewise for ``"sparsemax"`` and
``"entmax"`` with any alpha, learnable ones included) but never holds the
``(..., n_q, n_k)`` scores or weights. The queries are cut into tiles of ``block_size``
rows; for each tile, with every batch entry and head at once:

1. the scores of the tile, ``(batch, block_size, n_k)``, go into a reused buffer;
2. each row's threshold ``tau`` is found exactly over the whole row (the same sort-free
   solvers as :mod:`attnzoo.attention.entmax`; for 1.5-entmax starting from the previous
   tile's thresholds, which are close), in place in that buffer;
3. the tile's output is ``weights @ v``.

A row is the unit of a threshold, and it is only ``n_k`` numbers, so a tile of whole rows
(rather than a tile of keys, whose threshold would need several passes over all of them)
gives the exact result in one pass with extra memory ``O(block_size * n_k)`` per batch
entry and head instead of ``O(n_q * n_k)``. The threshold of each row is kept, in score
units (``O(n_q)`` numbers): the custom backward recomputes a tile's scores, gets its
weights from that threshold without solving again, and accumulates the gradients of
``q``, ``k``, ``v`` (and of a tensor ``alpha``) tile by tile.

Because no full-size tensor is allocated, this is also faster than the dense path on a
CPU, where a fresh ``(n, n)`` tensor of tens of MiB costs more in page faults than the
arithmetic done on it.

Not supported here (use :func:`~attnzoo.attention.functional.attend`): returning the
weights, attention dropout, and normalisers outside the entmax family.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .causal_tiles import causal_key_count, tile_of
from .entmax import (
    LOW_PRECISION,
    _maybe_any,
    _row_denominator,
    _shift_,
    _solve_rows,
    block_entries,
    check_alpha,
    triton_installed,
)
from .validation import (
    check_bool_mask,
    check_broadcastable_to,
    check_int,
    check_min_rank,
    check_positive,
    check_rank,
    check_size,
)

# The fixed alpha of each normaliser; "entmax" takes it from the caller.
BLOCKWISE_NORMALIZERS: dict[str, float | None] = {"sparsemax": 2.0, "entmax15": 1.5, "entmax": None}


def blockwise_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    normalizer: str = "entmax15",
    alpha: float | Tensor | None = None,
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    block_size: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """Sparse attention ``normalize(q @ k^T * scale) @ v`` computed in query tiles.

    Same result as :func:`~attnzoo.attention.functional.attend` with the same
    normaliser, mask and ``causal`` (bottom-right aligned), with extra memory
    ``O(batch * block_size * n_k)`` instead of ``O(batch * n_q * n_k)``; differentiable in
    ``q``, ``k``, ``v`` and a tensor ``alpha`` (a custom backward recomputes the scores
    tile by tile). A query row with no allowed key returns zeros.

    Args:
        q: queries ``(..., n_q, d)``, e.g. ``(batch, heads, n_q, d)``.
        k: keys ``(..., n_k, d)`` with the leading axes of ``q``.
        v: values ``(..., n_k, d_v)``.
        normalizer: ``"sparsemax"``, ``"entmax15"`` or ``"entmax"`` (alpha-entmax).
        alpha: only for ``"entmax"`` (default 1.5): a float > 1, or a tensor
            broadcastable to ``(..., n_q, 1)``, e.g. ``(1, heads, 1, 1)`` for one
            (learnable) alpha per head.
        mask: boolean, True = may attend, broadcastable to ``(..., n_q, n_k)``; a
            key-padding mask is ``(batch, 1, 1, n_k)``.
        causal: also forbid query ``i`` the keys ``j > i + (n_k - n_q)``.
        scale: score scale, > 0; default ``1 / sqrt(d)``.
        block_size: query rows per tile; default: as many as fit
            ``2 ** 20`` scores over all batch entries and heads (at least 1).
        backend: ``"torch"`` (these tiles), ``"triton"`` (the flash-style kernels of
            :mod:`attnzoo.attention.triton_entmax`; an unsupported call raises, naming what
            is unsupported) or ``"auto"``: Triton for CUDA tensors when it is installed and
            supports the call (``(batch, heads, n, d)`` with d in 16/32/64/128, ``d_v = d``,
            alpha <= 2 as a float or one per head, learnable only in float16/bfloat16, no
            mask or a key-padding mask ``(batch, 1, 1, n_k)``), else torch. ``block_size``
            is ignored by Triton.

    Returns:
        ``(..., n_q, d_v)``, in the dtype of ``q`` (float16/bfloat16 are computed in
        float32).
    """
    alpha_value = _check_inputs(q, k, v, normalizer, alpha, mask, causal, scale, block_size)
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"`backend` must be 'auto', 'torch' or 'triton', got {backend!r}")
    # Under "auto" a learnable alpha in float32 stays on the torch tiles: compiled for an
    # H100 (sm_90), the kernel variant that also gives the alpha gradient spills 12 KB of
    # registers per thread with exact float32 products, against 0.2 KB in half precision.
    learned_float32 = (
        isinstance(alpha, Tensor)
        and alpha.requires_grad
        and torch.is_grad_enabled()
        and q.dtype == torch.float32
    )
    if backend == "triton" or (backend == "auto" and q.is_cuda and not learned_float32):
        if not triton_installed():  # triton is optional: its kernels only when asked for
            if backend == "triton":
                raise ValueError("backend='triton' needs the `triton` package, not installed")
        else:
            from . import triton_entmax

            call_alpha = alpha if isinstance(alpha, Tensor) else alpha_value
            reason = triton_entmax.triton_unsupported(q, k, v, call_alpha, mask)
            if reason is None:
                return triton_entmax.blockwise_call(
                    q, k, v, alpha=call_alpha, mask=mask, causal=causal, scale=scale
                )
            if backend == "triton":
                raise ValueError(f"backend='triton' does not support this call: {reason}")
    lead, n_q, d = q.shape[:-2], q.shape[-2], q.shape[-1]
    n_k, d_v = k.shape[-2], v.shape[-1]
    batch = math.prod(lead)
    if batch == 0 or n_q == 0:
        return v.new_zeros(*lead, n_q, d_v)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if block_size is None:
        # A tile buffer holds the scores of all batch entries and heads for a few query
        # rows, as many entries as a block of the normalisers: on a CPU four such float
        # buffers (16 MiB in float32) stay in the last-level cache between the passes over
        # a tile, and a tile is still large enough for efficient matrix products.
        block_size = block_entries(q.device) // max(1, batch * n_k)
    block_size = max(1, min(block_size, n_q))
    compute = torch.float32 if q.dtype in LOW_PRECISION else q.dtype
    qf, kf, vf = (x.to(compute).reshape(batch, *x.shape[-2:]) for x in (q, k, v))
    alpha_rows: float | Tensor = alpha_value
    if isinstance(alpha, Tensor):
        # Expanded outside the Function, so autograd sums the per-row gradient back.
        alpha_rows = alpha.to(device=q.device, dtype=compute).expand(*lead, n_q, 1)
        alpha_rows = alpha_rows.reshape(batch, n_q, 1)
    tiles = _Tiles(mask, causal, lead, n_q, n_k, block_size, q.device)
    out = BlockwiseEntmaxFunction.apply(qf, kf, vf, alpha_rows, tiles, scale)
    return out.reshape(*lead, n_q, d_v).to(q.dtype)


class _Tiles:
    """The query tiles of one call and the boolean mask of each (True = may attend)."""

    def __init__(
        self,
        mask: Tensor | None,
        causal: bool,
        lead: torch.Size,
        n_q: int,
        n_k: int,
        block_size: int,
        device: torch.device,
    ) -> None:
        self.mask, self.causal, self.lead = mask, causal, lead
        self.n_q, self.n_k, self.block_size, self.device = n_q, n_k, block_size, device

    def __iter__(self):
        """Yield the row slices ``start:stop`` of the tiles, in order."""
        for start in range(0, self.n_q, self.block_size):
            yield slice(start, min(start + self.block_size, self.n_q))

    def keys(self, rows: slice) -> int:
        """How many keys (the first ones) the tile's queries may see: all of them, or under
        ``causal`` those up to its last query; a tile never scores the keys after it."""
        if not self.causal:
            return self.n_k
        return causal_key_count(rows.stop, self.n_q, self.n_k)

    def allowed(self, rows: slice) -> Tensor | None:
        """``(batch or 1, rows, keys(rows))`` boolean for the tile's query rows, or None
        (all)."""
        n_k = self.keys(rows)
        allowed = None
        if self.mask is not None:
            m = tile_of(self.mask, rows.start, rows.stop, n_k)
            q_rows = m.shape[-2] if m.dim() >= 2 else 1  # 1: broadcast over the queries
            allowed = m.expand(*self.lead, q_rows, n_k).reshape(-1, q_rows, n_k)
        if self.causal:
            i = torch.arange(rows.start, rows.stop, device=self.device).unsqueeze(-1)
            j = torch.arange(n_k, device=self.device)
            tri = j <= i + (self.n_k - self.n_q)
            allowed = tri.unsqueeze(0) if allowed is None else allowed & tri
        return allowed


def _tile_scores(
    out: Tensor, q: Tensor, k: Tensor, scale: Tensor | float, allowed: Tensor | None
) -> Tensor:
    """``(q * scale) @ k^T`` into ``out`` ``(batch, rows, n_k)``, ``-inf`` where not allowed.

    ``scale`` is a float or ``(batch, rows, 1)`` (one per query row): scaling the queries
    instead of the scores saves a pass over the tile.
    """
    torch.bmm(q * scale, k.transpose(1, 2), out=out)
    if allowed is not None:
        out.masked_fill_(allowed.logical_not(), float("-inf"))
    return out


def _buffers(count: int, entries: int, like: Tensor) -> list[Tensor]:
    return [like.new_empty(entries) for _ in range(count)]


def _view(buffer: Tensor, *shape: int) -> Tensor:
    """The first ``prod(shape)`` entries of a flat buffer as a contiguous tensor."""
    return buffer[: math.prod(shape)].view(*shape)


class BlockwiseEntmaxFunction(torch.autograd.Function):
    """alpha-entmax attention over query tiles (see :func:`blockwise_attention`).

    Inputs: ``q`` ``(B, n_q, d)``, ``k`` ``(B, n_k, d)``, ``v`` ``(B, n_k, d_v)``,
    ``alpha`` a float or ``(B, n_q, 1)``, the tiles, the score scale. Output
    ``(B, n_q, d_v)``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        alpha: Tensor | float,
        tiles: _Tiles,
        scale: float,
    ) -> Tensor:
        batch, n_q, _ = q.shape
        n_k = k.shape[1]
        out = q.new_empty(batch, n_q, v.shape[-1])
        # Each row's threshold in score units: weights = [(alpha - 1) s - c]_+ ** r.
        thresholds = q.new_empty(batch, n_q, 1)
        entries = batch * tiles.block_size * n_k
        scores, u, w = _buffers(3, entries, q)
        flags = torch.empty(entries, dtype=torch.bool, device=q.device)
        guess = None  # the previous tile's thresholds: same heads, nearby queries
        for rows in tiles:
            count, seen = rows.stop - rows.start, tiles.keys(rows)
            if seen == 0:  # queries before every key (causal, n_q > n_k): no weight
                out[:, rows] = 0.0
                thresholds[:, rows] = float("inf")
                continue
            s = _view(scores, batch, count, seen)
            a_t = alpha[:, rows] if isinstance(alpha, Tensor) else alpha
            # Scores times alpha - 1, the units of the threshold.
            _tile_scores(s, q[:, rows], k[:, :seen], scale * (a_t - 1), tiles.allowed(rows))
            z = s.view(batch * count, seen)
            a = a_t.reshape(-1, 1) if isinstance(a_t, Tensor) else a_t
            top, empty = _shift_(z, 1.0)
            scratch = [_view(u, batch * count, seen), _view(w, batch * count, seen)]
            if guess is not None:
                guess = guess.view(batch, -1)[:, :count].reshape(-1, 1)
            _solve_rows(z, a, scratch, _view(flags, batch * count, seen), guess)
            # Weights [z - tau]_+ ** r with row max z = 0, so max(p) = (-tau) ** r.
            tau = -(z.amax(dim=-1, keepdim=True) ** (a - 1))
            guess = tau
            c = top + tau
            if _maybe_any(empty):
                z.masked_fill_(empty, 0.0)
                c = c.masked_fill(empty, float("inf"))
            thresholds[:, rows] = c.view(batch, count, 1)
            out[:, rows] = torch.bmm(s, v[:, :seen])
        ctx.tiles, ctx.scale = tiles, scale
        if isinstance(alpha, Tensor):
            ctx.save_for_backward(q, k, v, thresholds, alpha)
        else:
            ctx.save_for_backward(q, k, v, thresholds)
            ctx.alpha = alpha
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, thresholds, *rest = ctx.saved_tensors
        alpha: Tensor | float = rest[0] if rest else ctx.alpha
        need_alpha = bool(rest) and ctx.needs_input_grad[3]
        tiles, scale = ctx.tiles, ctx.scale
        batch, n_q, _ = q.shape
        n_k = k.shape[1]
        grad_out = grad_out.to(q.dtype).contiguous()
        grad_q = torch.empty_like(q)
        # grad_k and grad_v are accumulated transposed, (B, d, n_k): a tile then adds
        # (d x rows) @ (rows x n_k), which BLAS runs markedly faster than the transposed
        # tile times a (rows x d) block.
        grad_k_t = k.new_zeros(batch, k.shape[2], n_k)
        grad_v_t = v.new_zeros(batch, v.shape[2], n_k)
        grad_alpha = q.new_empty(batch, n_q, 1) if need_alpha else None
        entries = batch * tiles.block_size * n_k
        buffers = _buffers(4, entries, q)
        for rows in tiles:
            count, seen = rows.stop - rows.start, tiles.keys(rows)
            if seen == 0:  # no weight, no gradient
                grad_q[:, rows] = 0.0
                if grad_alpha is not None:
                    grad_alpha[:, rows] = 0.0
                continue
            shape = (batch, count, seen)
            offsets, weights, grad_w, work = (_view(b, *shape) for b in buffers)
            q_t, g_t = q[:, rows], grad_out[:, rows]
            k_t, v_t = k[:, :seen], v[:, :seen]
            a = alpha[:, rows] if isinstance(alpha, Tensor) else alpha
            _tile_scores(offsets, q_t, k_t, scale * (a - 1), tiles.allowed(rows))
            # u = [(alpha - 1) s - c]_+; -inf scores and empty rows (c = inf) give 0.
            offsets.sub_(thresholds[:, rows]).clamp_(min=0)
            support, log_u = _weights_and_support(offsets, a, weights, work, need_alpha)
            torch.bmm(g_t, v_t.transpose(1, 2), out=grad_w)
            if log_u is not None:
                assert isinstance(a, Tensor) and grad_alpha is not None
                neg_entropy, gplogp = _entropy_terms(log_u, weights, grad_w, a)
                gp = torch.mul(grad_w, weights, out=work).sum(dim=-1, keepdim=True)
            # The score gradient (Peters et al. 2019): s * (g - mean), mean = <g, s> / sum(s),
            # as g * s - mean * s from the product the mean is summed from (one pass less).
            total = support.sum(dim=-1, keepdim=True)
            g_s = torch.mul(grad_w, support, out=work)
            mean = g_s.sum(dim=-1, keepdim=True) / _row_denominator(total)
            if log_u is not None:
                assert grad_alpha is not None  # allocated whenever alpha is a tensor
                # In alpha (Correia et al. 2019): (<g, p> - mean) / (alpha - 1) ** 2
                # - (<g, p log p> - mean H) / (alpha - 1).
                am1 = a - 1
                grad_alpha[:, rows] = (gp - mean) / am1**2 - (gplogp - mean * neg_entropy) / am1
            grad_s = torch.addcmul(g_s, support, mean, value=-1, out=grad_w)
            grad_v_t[..., :seen].baddbmm_(g_t.transpose(1, 2), weights)
            grad_q[:, rows] = torch.bmm(grad_s, k_t).mul_(scale)
            grad_k_t[..., :seen].baddbmm_(q_t.transpose(1, 2), grad_s, alpha=scale)
        # Returned as transposed views: a consumer that needs them contiguous copies them
        # anyway (the heads are usually transposed back), so a copy here would be paid twice.
        grad_k, grad_v = grad_k_t.transpose(1, 2), grad_v_t.transpose(1, 2)
        return grad_q, grad_k, grad_v, grad_alpha, None, None


def _weights_and_support(
    u: Tensor, alpha: Tensor | float, weights: Tensor, work: Tensor, need_log: bool
) -> tuple[Tensor, Tensor | None]:
    """Weights ``p = u ** r`` (into ``weights``) and ``s = u ** (r - 1)``, ``r = 1/(alpha-1)``.

    ``s`` is ``p ** (2 - alpha)`` on the support and 0 off it, the vector of the entmax
    Jacobian; it overwrites ``u`` (for 1.5-entmax it is ``u`` itself).

    Args:
        u: ``(B, rows, n_k)`` offsets ``[(alpha - 1) s - c]_+``, overwritten by ``s``.
        alpha: a float or ``(B, rows, 1)``.
        weights, work: scratch of the shape of ``u``.
        need_log: also return ``log(max(u, tiny))`` (for the alpha gradient), written to
            ``work``.
    Returns:
        ``(s, log_u)``; ``log_u`` is None unless asked for a general alpha.
    """
    if isinstance(alpha, float) and alpha == 2.0:
        weights.copy_(u)
        return torch.gt(u, 0, out=u), None  # the support indicator, as 0/1 floats
    if isinstance(alpha, float) and alpha == 1.5:
        torch.mul(u, u, out=weights)
        return u, None
    tiny = torch.finfo(u.dtype).tiny
    if not need_log:
        torch.pow(u, 1.0 / (alpha - 1), out=weights)
        # s = u ** r / u; off the support 0 / tiny = 0.
        torch.div(weights, u.clamp_(min=tiny), out=u)
        return u, None
    log_u = torch.clamp(u, min=tiny, out=work).log_()
    # With the log at hand, p = exp(r log u) costs less than a generic power. The exponent
    # is floored at log(tiny) + 1, where exp is still fast (an exp whose result is at or
    # below tiny is 10-40x slower): off the support p is then e * tiny instead of 0, which
    # changes the sums it enters (p^T g, <g, p>, p log p) by O(n * tiny).
    torch.mul(log_u, 1.0 / (alpha - 1), out=weights).clamp_(min=math.log(tiny) + 1).exp_()
    # s = p / u, exactly 0 off the support: offsets below tiny are set to 0 and their
    # quotient (inf) to 0.
    torch.threshold_(u, tiny, 0.0)
    torch.div(weights, u, out=u).nan_to_num_(nan=0.0, posinf=0.0)
    return u, log_u


def _entropy_terms(
    log_u: Tensor, weights: Tensor, grad_w: Tensor, alpha: Tensor
) -> tuple[Tensor, Tensor]:
    """``H = sum(p log p)`` and ``<g, p log p>`` per row; ``log p = log(u) / (alpha - 1)``.

    Consumes ``log_u`` (overwritten).
    """
    plogp = log_u.mul_(weights).div_(alpha - 1)  # 0 off the support
    neg_entropy = plogp.sum(dim=-1, keepdim=True)
    return neg_entropy, plogp.mul_(grad_w).sum(dim=-1, keepdim=True)


def _check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    normalizer: object,
    alpha: object,
    mask: Tensor | None,
    causal: object,
    scale: float | None,
    block_size: object,
) -> float:
    """Raise naming the first bad argument; return alpha as a float (or 0 for a tensor)."""
    check_min_rank(q, 2, "q", "(..., n_q, d)")
    check_rank(k, q.dim(), "k", f"(..., n_k, d) with the {q.dim() - 2} leading axes of `q`")
    check_rank(v, q.dim(), "v", f"(..., n_k, d_v) with the {q.dim() - 2} leading axes of `q`")
    if not q.is_floating_point():
        raise TypeError(f"`q` must be a floating-point tensor, got dtype {q.dtype}")
    lead = q.shape[:-2]
    for name, x in (("k", k), ("v", v)):
        if x.shape[:-2] != lead:
            raise ValueError(
                f"`{name}` must have the leading (batch) axes of `q` {tuple(lead)}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.dtype != q.dtype:
            raise TypeError(f"`{name}` must have the dtype of `q` ({q.dtype}), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"`{name}` must be on the device of `q` ({q.device}), got {x.device}")
    check_size(k, -1, q.shape[-1], "k", "the feature size d of `q`")
    check_size(v, -2, k.shape[-2], "v", "the number of keys n_k of `k`")
    if not isinstance(normalizer, str) or normalizer not in BLOCKWISE_NORMALIZERS:
        raise ValueError(
            f"`normalizer` must be one of {sorted(BLOCKWISE_NORMALIZERS)}, got {normalizer!r}"
        )
    fixed = BLOCKWISE_NORMALIZERS[normalizer]
    if fixed is not None:
        if alpha is not None:
            raise ValueError(f"`alpha` only applies to normalizer='entmax', got {normalizer!r}")
        alpha_value = fixed
    else:
        alpha = 1.5 if alpha is None else alpha
        check_alpha(alpha)
        if isinstance(alpha, Tensor):
            rows = (*lead, q.shape[-2], 1)
            check_broadcastable_to(alpha, rows, "alpha", "one value per query row (..., n_q, 1) =")
            alpha_value = 0.0
        else:
            alpha_value = float(alpha)  # type: ignore[arg-type]
    if mask is not None:
        check_bool_mask(mask, "mask")
        check_broadcastable_to(mask, (*lead, q.shape[-2], k.shape[-2]), "mask", "scores of shape")
        if mask.device != q.device:
            raise ValueError(f"`mask` must be on the device of `q` ({q.device}), got {mask.device}")
    if not isinstance(causal, bool):
        raise TypeError(f"`causal` must be a bool, got {type(causal).__name__}")
    if scale is not None:
        check_positive(scale, "scale")
    if block_size is not None:
        check_int(block_size, "block_size")
    return alpha_value


__all__ = ["BLOCKWISE_NORMALIZERS", "BlockwiseEntmaxFunction", "blockwise_attention"]
