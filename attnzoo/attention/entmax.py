"""Sparse normalisers: sparsemax, 1.5-entmax and alpha-entmax, with a learnable alpha.

alpha-entmax (Peters et al. 2019, "Sparse Sequence-to-Sequence Models") maps scores
``x`` to ``p = [(alpha - 1) x - tau]_+ ** (1 / (alpha - 1))`` with the threshold ``tau``
chosen so that ``p`` sums to one. ``alpha = 2`` is sparsemax (Martins & Astudillo 2016),
``alpha -> 1`` recovers softmax. Unlike softmax, scores far enough below the maximum get
exactly zero weight.

* :func:`sparsemax` and :func:`entmax15` find ``tau`` exactly without sorting:
  Michelot's steps from a lower bound for sparsemax, and for 1.5-entmax the closed-form
  root on the current support, which brackets the threshold from alternating sides until
  the support is found (the sorted algorithm is the fallback for rows that do not
  settle).
* :func:`alpha_entmax` finds ``tau`` for any ``alpha > 1``, a float or a tensor (e.g.
  one per head), by safeguarded Newton steps on a bracket, and is differentiable in
  ``alpha`` too (Correia et al. 2019, "Adaptively Sparse Transformers").
* :func:`entmax_bisect` computes the same map by plain bisection with a fixed number of
  steps, as the ``entmax`` package's ``entmax_bisect`` does.
* :class:`EntmaxAlpha` holds one learnable ``alpha`` per head that stays in
  ``[MIN_ALPHA, 2]`` whatever the optimiser does.

Every function has the library's normaliser guarantees: ``-inf`` scores get exactly
zero weight, a slice that is entirely ``-inf`` gets zeros and a zero gradient (the
``entmax`` package returns NaN or fails there, entmax issue #19), and float16/bfloat16
scores are computed in float32 and returned in their own dtype, finite for logits
anywhere in ``±1e4`` (entmax issue #30). The backward passes are closed-form custom
autograd Functions; they are differentiable once (no double backward).

Speed. The thresholds and the backward passes work through blocks of rows with scratch
buffers that are allocated once and stay in cache, so that a map allocates one
full-size tensor forward (its output) and one backward (the score gradient): on a CPU a
fresh tensor of tens of MiB costs more in page faults than several passes of arithmetic.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .validation import broadcasts_to, check_int, check_tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)

MIN_ALPHA = 1.01
"""Smallest alpha :class:`EntmaxAlpha` can produce.

At ``alpha = 1`` the entmax map divides by ``alpha - 1 = 0``; just above it the
exponent ``1 / (alpha - 1)`` explodes and the alpha gradient, which carries
``1 / (alpha - 1) ** 2``, becomes ill-conditioned. Keeping ``alpha >= 1.01`` (the bound
Correia et al. 2019 clamp to) costs nothing in expressiveness: 1.01-entmax is already
all but dense, like softmax.
"""

# After shifting the row maximum to 0 (and scaling by alpha - 1), every threshold
# satisfies tau >= -1, because the largest weight (0 - tau) ** (1 / (alpha - 1)) is at
# most 1. A score at or below -1 therefore gets weight 0, and raising it to _FLOOR < -1
# changes nothing in the result while removing -inf (no -inf - -inf = NaN in the sorted
# cumulative sums) and huge magnitudes (no cancellation in entmax15's variance).
_FLOOR = -2.0


# ----------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------


def _check_scores(x: object, dim: object) -> int:
    """Validate ``x`` (a floating tensor) and ``dim``; return ``dim`` as a non-negative axis."""
    check_tensor(x, "x")
    assert isinstance(x, Tensor)
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating-point tensor, got dtype {x.dtype}")
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"`dim` must be an int, got {type(dim).__name__}")
    if x.dim() == 0:
        raise ValueError("`x` must have at least one dimension, got a 0-d tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(
            f"`dim` must be in [{-x.dim()}, {x.dim() - 1}] for `x` of shape "
            f"{tuple(x.shape)}, got {dim}"
        )
    return dim % x.dim()


def check_n_iter(n_iter: object) -> int:
    """Return ``n_iter`` if it is a positive int, else raise naming ``n_iter``."""
    return check_int(n_iter, "n_iter")


def check_alpha(alpha: object) -> None:
    """Raise unless ``alpha`` is a finite float > 1 or a floating tensor with all values > 1.

    The values of a tensor ``alpha`` are checked when it lives on the CPU. On an
    accelerator they are not read back: that would cost a device synchronisation at every
    forward pass of every layer. Keep a learned alpha in range with :class:`EntmaxAlpha`.
    """
    if isinstance(alpha, Tensor):
        if not alpha.is_floating_point():
            raise TypeError(f"`alpha` must be a floating-point tensor, got dtype {alpha.dtype}")
        values = alpha.detach()
        if values.device.type != "cpu":
            return
        if values.numel() and not bool(((values > 1) & torch.isfinite(values)).all()):
            raise ValueError(
                f"`alpha` must be > 1 and finite everywhere, got min {values.min().item()}, "
                f"max {values.max().item()}"
            )
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"`alpha` must be a float or a tensor, got {type(alpha).__name__}")
    if not (alpha > 1 and math.isfinite(alpha)):
        raise ValueError(f"`alpha` must be a finite number > 1, got {alpha}")


def _row_shape(x: Tensor, dim: int) -> tuple[int, ...]:
    """``x.shape`` with 1 at ``dim``: the shape of one value per normalised slice."""
    return (*x.shape[:dim], 1, *x.shape[dim + 1 :])


def _alpha_rows(alpha: Tensor, x: Tensor, dim: int) -> Tensor:
    """Broadcast a tensor ``alpha`` to one value per slice: ``x.shape`` with 1 at ``dim``.

    Raises ``ValueError`` when ``alpha`` does not broadcast to ``x`` or varies along
    ``dim`` (one alpha per normalised slice, not per entry).
    """
    shape = tuple(x.shape)
    row_shape = _row_shape(x, dim)
    if not broadcasts_to(tuple(alpha.shape), row_shape):
        raise ValueError(
            f"`alpha` of shape {tuple(alpha.shape)} must broadcast to `x` of shape {shape} "
            f"with size 1 along dim {dim} (one alpha per normalised slice), e.g. {row_shape}"
        )
    return alpha.expand(row_shape)


# ----------------------------------------------------------------------------------
# shared pieces (all along the last axis)
# ----------------------------------------------------------------------------------


def _upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32 (differentiable): thresholds need the precision."""
    return x.float() if x.dtype in LOW_PRECISION else x


def _shift(x: Tensor) -> tuple[Tensor, Tensor]:
    """Shift each row so its maximum is 0; rows that are entirely ``-inf`` become 0.

    Args:
        x: ``(..., n)`` scores.
    Returns:
        ``(z, empty)``: ``z`` of shape ``(..., n)`` with max 0 per non-empty row, ``-inf``
        kept where ``x`` was ``-inf``; ``empty`` of shape ``(..., 1)``, True for all-``-inf``
        rows.
    """
    empty = torch.isneginf(x).all(dim=-1, keepdim=True)
    top = x.max(dim=-1, keepdim=True).values
    # An empty row's max is -inf; x - max would be -inf - -inf = NaN.
    top = top.masked_fill(empty, 0.0)
    return x - top, empty


def _row_denominator(total: Tensor) -> Tensor:
    """``total`` with zeros (empty rows, whose numerators are 0 too) replaced by 1."""
    return torch.where(total > 0, total, torch.ones_like(total))


# The sort-free thresholds and the backward passes iterate over blocks of rows of about
# this many entries: their scratch buffers are allocated once and stay in cache across the
# passes (a fresh full-size temporary costs more in page faults than the arithmetic),
# while a block is still large enough that the per-operation overhead does not dominate.
_BLOCK = 1 << 20

# On an accelerator there is no cache to keep warm, and every operation is a kernel
# launch costing microseconds of host time: blocks of 2 ** 20 entries left an H100 idle
# most of the time (entmax15 of 32768 rows of 1024: 9383 launches, 189 ms, the GPU busy
# for 32 ms of it). Blocks this large keep the scratch bounded (64 MiB per float32 buffer)
# and the launches few.
DEVICE_BLOCK = 1 << 24


def block_entries(device: torch.device) -> int:
    """Entries per block of rows that the torch paths process at a time on ``device``."""
    return _BLOCK if device.type == "cpu" else DEVICE_BLOCK


# Newton steps before a block falls back to the sorting algorithm. Attention rows settle
# in 5-8 steps; only contrived rows (exact ties at the threshold) reach the cap.
_MAX_NEWTON = 30

# On an accelerator, reading a convergence flag back costs a device synchronisation, so
# the loops test it only every few steps (rows that have settled are frozen meanwhile);
# on the CPU the test is free and runs at every step.
_CHECK_EVERY_ON_DEVICE = 4


def _settled(done: Tensor, step: int) -> bool:
    """Whether every row is done; on an accelerator only read back every few steps."""
    if done.device.type != "cpu" and (step + 1) % _CHECK_EVERY_ON_DEVICE:
        return False
    return bool(done.all())


def _maybe_any(mask: Tensor) -> bool:
    """``mask.any()`` on the CPU; True elsewhere, where reading it back would synchronise
    (the caller then does its masked work unconditionally)."""
    return mask.device.type != "cpu" or bool(mask.any())


def _shift_(z: Tensor, scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """In place: rows of ``z`` shifted to maximum 0, times ``scale``.

    ``-inf`` entries stay ``-inf``: the sort-free solvers only ever look at entries above
    a threshold ``>= -1`` (``[z - tau]_+`` is 0 for them), and the sorted fallbacks floor
    the scores first (see ``_FLOOR``). Skipping the floor here saves a pass over the block.

    Args:
        z: ``(rows, n)`` scores, overwritten.
        scale: a float or ``(rows, 1)``, the ``alpha - 1`` of the map.
    Returns:
        ``(top, empty)``, both ``(rows, 1)``: the row maxima that were subtracted (0 for
        empty rows) and True for all-``-inf`` rows, whose ``z`` is set to 0 so every
        threshold stays finite there.
    """
    top = z.amax(dim=-1, keepdim=True)
    # An empty row's max is -inf; x - max would be -inf - -inf = NaN.
    empty = torch.isneginf(top)
    top.masked_fill_(empty, 0.0)
    z.sub_(top)
    if isinstance(scale, Tensor) or scale != 1.0:
        z.mul_(scale)
    if _maybe_any(empty):
        z.masked_fill_(empty, 0.0)
    return top, empty


def _shifted_rows(x: Tensor, scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """:func:`_shift_` on a copy of ``x``: ``(z, empty)`` with ``z`` a new ``(rows, n)`` tensor.

    ``z`` becomes the output, so the map allocates one full-size tensor.
    """
    n = x.shape[-1]
    z = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x).view(-1, n)
    scale_rows = scale.reshape(-1, 1) if isinstance(scale, Tensor) else scale
    return z, _shift_(z, scale_rows)[1]


def _row_blocks(like: Tensor, buffers: int, bool_buffers: int = 0):
    """Split the rows of a ``(rows, n)`` tensor into blocks of about
    :func:`block_entries` entries.

    Yields ``(rows, scratch, flags)``: the block's row slice, ``buffers`` scratch tensors of
    the block's shape and dtype, and ``bool_buffers`` boolean ones. The scratch is
    allocated once and reused by every block.
    """
    n_rows, n = like.shape
    per_block = max(1, block_entries(like.device) // max(n, 1))
    size = (min(per_block, n_rows), n)
    scratch = [like.new_empty(size) for _ in range(buffers)]
    flags = [torch.empty(size, dtype=torch.bool, device=like.device) for _ in range(bool_buffers)]
    for start in range(0, n_rows, per_block):
        stop = min(start + per_block, n_rows)
        count = stop - start
        yield slice(start, stop), [b[:count] for b in scratch], [b[:count] for b in flags]


def _finish(p: Tensor, empty: Tensor, shape: torch.Size) -> Tensor:
    """Zero the empty rows of ``(rows, n)`` weights ``p`` and give them ``shape``."""
    if _maybe_any(empty):
        p.masked_fill_(empty, 0.0)
    return p.view(shape)


# ----------------------------------------------------------------------------------
# sparsemax
# ----------------------------------------------------------------------------------


def _sparsemax_threshold(z: Tensor) -> Tensor:
    """Exact sparsemax threshold by sorting (Martins & Astudillo 2016, Algorithm 1).

    Args:
        z: ``(..., n)`` finite scores with row maximum 0.
    Returns:
        ``tau`` of shape ``(..., 1)`` with ``sum(clamp(z - tau, 0)) == 1`` per row.
    """
    srt = z.sort(dim=-1, descending=True).values
    rank = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    csum = srt.cumsum(dim=-1) - 1
    # Sorted entry k (1-based) is in the support iff 1 + k z_(k) > sum_{j<=k} z_(j); the
    # condition holds for a prefix of ranks, so the support size is its largest rank.
    support = (rank * srt > csum).to(z.dtype).mul(rank).amax(dim=-1, keepdim=True)
    index = support.long() - 1
    return csum.gather(-1, index) / support


def _sparsemax_newton(z: Tensor, work: Tensor) -> bool:
    """Overwrite ``z`` with its sparsemax weights, sort-free; False if it did not settle.

    Newton's method on ``f(tau) = sum(clamp(z - tau, 0)) - 1`` (Michelot's algorithm):
    from a lower bound of ``tau`` the step ``tau' = (sum_{z > tau} z - 1) / |{z > tau}|``
    is the exact threshold of the current candidate support, never overshoots, and the
    support only shrinks, so the iteration stops, at the very formula the sorted
    algorithm evaluates on the true support. A handful of passes over the row replace the
    sort, the dominant cost of the sorted algorithm.

    Args:
        z: ``(rows, n)`` scores with row maximum 0 (``-inf`` allowed), overwritten.
        work: scratch of the shape of ``z``.
    Returns:
        True when ``z`` now holds the weights.
    """
    n = z.shape[-1]
    # Every subset S gives a lower bound (sum_S z - 1) / |S| <= tau; {argmax} gives -1.
    tau = ((z.sum(dim=-1, keepdim=True) - 1) / n).clamp(min=-1.0)
    for iteration in range(_MAX_NEWTON):
        torch.sub(z, tau, out=work).clamp_(min=0)
        total = work.sum(dim=-1, keepdim=True)
        # The support size, counted through a float comparison (cheaper than sign).
        nxt = tau + (total - 1) / torch.gt(work, 0, out=work).sum(dim=-1, keepdim=True)
        # A step of 0 (in floating point) is the fixed point: the support is final.
        if _settled(nxt <= tau, iteration):
            torch.sub(z, tau, out=z).clamp_(min=0)
            return True
        tau = torch.maximum(tau, nxt)
    return False


class SparsemaxFunction(torch.autograd.Function):
    """sparsemax along the last axis; backward: ``g - mean(g over support)`` on the support."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        p = _normalize(x, 2.0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        return _entmax_backward(grad, p, 2.0, need_alpha=False)[0]


# ----------------------------------------------------------------------------------
# 1.5-entmax
# ----------------------------------------------------------------------------------


def _entmax15_threshold(z: Tensor) -> Tensor:
    """Exact 1.5-entmax threshold by sorting (Peters et al. 2019, Algorithm 2).

    Solves ``sum(clamp(z - tau, 0) ** 2) == 1``: on a support of the top ``k`` sorted
    entries this is a quadratic in ``tau`` with root ``mean_k - sqrt((1 - ss_k) / k)``,
    ``ss_k`` the sum of squared deviations from ``mean_k``; the support is the largest
    ``k`` whose root lies below the ``k``-th largest entry.

    Args:
        z: ``(..., n)`` scores in ``[_FLOOR, 0]`` with row maximum 0.
    Returns:
        ``tau`` of shape ``(..., 1)``.
    """
    srt = z.sort(dim=-1, descending=True).values
    rank = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    mean = srt.cumsum(dim=-1) / rank
    mean_sq = (srt * srt).cumsum(dim=-1) / rank
    ss = rank * (mean_sq - mean * mean)
    # delta < 0 means no root on that support (too spread out); clamping to 0 gives a
    # tau = mean_k > z_(k), which the support test below rejects.
    delta = ((1 - ss) / rank).clamp(min=0)
    tau = mean - delta.sqrt()
    support = (tau <= srt).to(z.dtype).mul(rank).amax(dim=-1, keepdim=True)
    return tau.gather(-1, support.long() - 1)


# Once at most this fraction of a CPU block's rows are still open, those rows are copied
# out and finished on their own: the last step or two are then paid for a few rows
# instead of the whole block (the copy costs about one pass over those rows).
_OPEN_ROWS_FRACTION = 0.125


def _open_rows(done: Tensor) -> Tensor | None:
    """Indices of the rows not ``done`` (``(rows, 1)``) when few enough to finish apart.

    CPU only: the count is read back, which on an accelerator would synchronise.
    """
    if done.device.type != "cpu" or done.shape[0] < 8:
        return None
    index = done.view(-1).logical_not().nonzero().view(-1)
    if index.numel() > _OPEN_ROWS_FRACTION * done.shape[0]:
        return None
    return index


def _entmax15_step(
    tau: Tensor,
    total: Tensor,
    norm: Tensor,
    squares: Tensor,
    size: Tensor,
    lo: Tensor,
    hi: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The next trial threshold of :func:`_entmax15_newton` and the tightened bracket.

    Args:
        tau: ``(rows, 1)`` the threshold just evaluated.
        total, norm, squares, size: ``(rows, 1)`` the sum of ``u``, its 2-norm, the
            norm squared and the number of ``u > 0``, for ``u = [z - tau]_+``.
        lo, hi: ``(rows, 1)`` the bracket before this evaluation.
    Returns:
        ``(next, lo, hi)``.
    """
    above = squares >= 1  # f(tau) >= 0: tau is a lower bound of the root
    lo = torch.where(above, tau, lo)
    hi = torch.where(above, hi, tau)
    # Root of the quadratic on the current support, in offsets from tau (less cancellation
    # than in raw moments): mean - sqrt((1 - ss) / k), ss the squared deviations of u.
    mean = total / size
    delta = (1 - (squares - total * mean)) / size
    root = tau + mean - delta.clamp(min=0).sqrt()
    # Newton on ||u||_2 - 1, convex and nearly linear in tau (far better than on f when the
    # support is much too large): from a lower bound it stays one.
    newton = tau + (squares - norm) / total
    nxt = torch.where(delta >= 0, root, newton)
    # Strictly inside the bracket, else bisection: a step onto an end would cycle.
    nxt = torch.where((nxt > lo) & (nxt < hi), nxt, (lo + hi) / 2)
    return nxt, lo, hi


def _entmax15_newton(z: Tensor, work: Tensor, square: Tensor, guess: Tensor | None = None) -> None:
    """Overwrite ``z`` with its 1.5-entmax weights, sort-free (sorting only as a fallback).

    ``f(tau) = sum(u ** 2) - 1`` with ``u = [z - tau]_+`` is convex and decreasing, and
    piecewise quadratic: on a fixed support of ``k`` entries its root is
    ``mean - sqrt((1 - ss) / k)`` (the sorted algorithm's formula). From a trial point
    ``tau`` with support ``S``, the root of that quadratic is an upper bound of the
    threshold when ``tau`` is a lower bound (the quadratic majorises ``f`` to the right of
    ``tau``) and a lower bound when ``tau`` is an upper bound (it minorises ``f`` to the
    left), and it is exact once ``S`` is the final support, so this step, alternating sides,
    pins the support in a few passes. Where the quadratic has no root (support much too
    large) a Newton step on ``||u||_2 - 1`` is taken instead. Every trial point is kept
    inside a bracket ``[lo, hi]`` (bisection otherwise), starting from
    ``[-1, -(1/n) ** (1/2)]``: the top entry alone weighs 1 at ``-1``, every entry at most
    ``1/n`` at the upper end. A row is done when ``sum(p) = 1`` to a few ulps or its step
    vanishes. From ``-1`` attention rows take 4-6 passes; from a guess near the threshold
    (that of a neighbouring row) 3-5. Rows that do not settle in ``_MAX_NEWTON`` passes
    (exact ties at the threshold) fall back to the sorted algorithm.

    Args:
        z: ``(rows, n)`` scores times 1/2 with row maximum 0 (``-inf`` allowed),
            overwritten with the weights.
        work, square: scratch of the shape of ``z``.
        guess: ``(rows, 1)`` first trial thresholds (any finite values), or None for -1.
    """
    rows, n = z.shape
    tol = 16 * torch.finfo(z.dtype).eps
    hi = z.new_full((rows, 1), -(n**-0.5))
    # Just below -1, so that a trial at exactly -1 (the root of a one-entry support) is
    # strictly inside the bracket, while -1 itself has not been evaluated.
    lo = z.new_full((rows, 1), -1.0 - tol)
    tau = hi.new_full((rows, 1), -1.0) if guess is None else torch.clamp(guess, -1.0, -(n**-0.5))
    _entmax15_iterate(z, tau, lo, hi, work, square, 0)


def _entmax15_iterate(
    z: Tensor, tau: Tensor, lo: Tensor, hi: Tensor, work: Tensor, square: Tensor, first: int
) -> None:
    """The passes of :func:`_entmax15_newton` from trial ``tau`` in bracket ``[lo, hi]``."""
    tol = 16 * torch.finfo(z.dtype).eps
    for step in range(first, _MAX_NEWTON):
        u = torch.sub(z, tau, out=work).clamp_(min=0)
        total = u.sum(dim=-1, keepdim=True)
        norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        size = torch.gt(u, 0, out=square).sum(dim=-1, keepdim=True)
        squares = norm * norm
        nxt, lo, hi = _entmax15_step(tau, total, norm, squares, size, lo, hi)
        done = ((squares - 1).abs() <= tol) | (nxt == tau)
        if _settled(done, step):
            torch.mul(u, u, out=z)
            return
        tau = torch.where(done, tau, nxt)
        index = _open_rows(done)
        if index is not None:
            open_z = z.index_select(0, index)
            torch.mul(u, u, out=z)  # the settled rows' weights; the open rows' follow
            count = index.numel()
            state = (tau[index], lo[index], hi[index])
            _entmax15_iterate(open_z, *state, work[:count], square[:count], step + 1)
            z.index_copy_(0, index, open_z)
            return
    z.clamp_(min=_FLOOR)
    z.sub_(_entmax15_threshold(z)).clamp_(min=0).square_()


class Entmax15Function(torch.autograd.Function):
    """1.5-entmax along the last axis; backward with ``1 / g''(p) = sqrt(p)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        # 1.5-entmax is p = [z / 2 - tau]_+ ** 2 (alpha - 1 = 1/2 scales the scores).
        p = _normalize(x, 1.5)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        return _entmax_backward(grad, p, 1.5, need_alpha=False)[0]


# ----------------------------------------------------------------------------------
# backward, shared by every map of the family
# ----------------------------------------------------------------------------------


def _support_weights(
    p: Tensor, alpha: Tensor | float, out: Tensor, log_p: Tensor, flags: Tensor
) -> Tensor:
    """``s = p ** (2 - alpha)`` on the support, 0 off it (``1 / g''(p)`` of Peters et al.).

    Written around the slow paths of the CPU's vectorised ``sqrt``, ``log`` and ``exp``
    at exactly 0 and on underflow (several times their normal cost, and most entries of a
    sparse ``p`` are 0): ``log`` and ``sqrt`` see ``max(p, tiny)``, and the support
    indicator zeroes what that leaves off the support.

    Args:
        p: ``(rows, n)`` weights.
        alpha: a float or ``(rows, 1)``.
        out: ``(rows, n)`` scratch receiving ``s``.
        log_p: ``(rows, n)`` scratch; for a general ``alpha`` it receives
            ``log(max(p, tiny))`` (the alpha gradient uses it too).
        flags: ``(rows, n)`` scratch.
    Returns:
        ``out``.
    """
    tiny = torch.finfo(p.dtype).tiny
    if isinstance(alpha, float) and alpha == 2.0:
        return torch.gt(p, 0, out=out)  # the support indicator, as 0/1 floats
    if isinstance(alpha, float) and alpha == 1.5:
        # sqrt(p) as p / sqrt(p), exactly 0 off the support.
        return torch.div(p, torch.clamp(p, min=tiny, out=out).sqrt_(), out=out)
    torch.clamp(p, min=tiny, out=log_p).log_()
    at_least_two = _maybe_any(alpha >= 2) if isinstance(alpha, Tensor) else alpha >= 2
    if at_least_two:
        # exp((2 - alpha) log tiny) overflows for alpha > 3: take the power, then mask.
        torch.pow(p, 2 - alpha, out=out)
        return out.masked_fill_(p == 0, 0.0)
    # For 1 < alpha < 2, (2 - alpha) log(tiny) stays in exp's normal range.
    torch.mul(log_p, 2 - alpha, out=out).exp_()
    return out.mul_(torch.gt(p, 0, out=flags))


def _entmax_backward(
    grad: Tensor, p: Tensor, alpha: Tensor | float, need_alpha: bool
) -> tuple[Tensor, Tensor | None]:
    """Vector-Jacobian products of alpha-entmax in its scores and in ``alpha``.

    In the scores (Peters et al. 2019, Proposition 1): ``J = diag(s) - s s^T / sum(s)``
    with ``s = p ** (2 - alpha)`` on the support and 0 off it, so
    ``grad_x = s * (g - q)`` with ``q = <g, s> / sum(s)``. In ``alpha`` (Correia et al.
    2019, Proposition 1): ``dp/dalpha = (p - s~) / (alpha - 1) ** 2
    - (p log p - s~ H) / (alpha - 1)`` with ``s~ = s / sum(s)`` and ``H = sum(p log p)``,
    so ``<g, dp/dalpha> = (<g, p> - q) / (alpha - 1) ** 2 - (<g, p log p> - q H) / (alpha - 1)``.

    Row blocks with reused scratch: the only full-size allocation is ``grad_x`` itself.

    Args:
        grad: ``(..., n)`` gradient w.r.t. the weights.
        p: ``(..., n)`` the weights.
        alpha: a float, or ``(..., 1)``.
        need_alpha: also return the gradient w.r.t. ``alpha`` (a tensor ``alpha`` only).
    Returns:
        ``grad_x`` of shape ``(..., n)`` and ``grad_alpha`` of shape ``(..., 1)`` (or None).
    """
    n = p.shape[-1]
    p_rows = p.reshape(-1, n)
    g_rows = grad.to(p.dtype).contiguous().view(-1, n)
    grad_x = torch.empty_like(p_rows)
    a_rows = alpha.reshape(-1, 1) if isinstance(alpha, Tensor) else alpha
    grad_alpha = p_rows.new_empty(p_rows.shape[0], 1) if need_alpha else None
    for rows, (s, log_p, work), _ in _row_blocks(p_rows, 3):
        pb, gb = p_rows[rows], g_rows[rows]
        a = a_rows[rows] if isinstance(a_rows, Tensor) else a_rows
        _support_weights(pb, a, s, log_p, work)
        total = s.sum(dim=-1, keepdim=True)
        q = torch.mul(gb, s, out=work).sum(dim=-1, keepdim=True) / _row_denominator(total)
        torch.sub(gb, q, out=grad_x[rows]).mul_(s)
        if grad_alpha is not None:
            gp = torch.mul(gb, pb, out=s).sum(dim=-1, keepdim=True)
            # p log p with 0 log 0 = 0: log_p is log(max(p, tiny)), finite.
            plogp = log_p.mul_(pb)
            neg_entropy = plogp.sum(dim=-1, keepdim=True)
            gplogp = plogp.mul_(gb).sum(dim=-1, keepdim=True)
            am1 = a - 1
            grad_alpha[rows] = (gp - q) / am1**2 - (gplogp - q * neg_entropy) / am1
    grad_x = grad_x.view(p.shape)
    if grad_alpha is not None:
        return grad_x, grad_alpha.view(*p.shape[:-1], 1)
    return grad_x, None


# ----------------------------------------------------------------------------------
# alpha-entmax by safeguarded Newton
# ----------------------------------------------------------------------------------

# Safeguarded Newton steps before the threshold is taken as it is. A step is Newton's
# unless it leaves the bracket, then bisection's, so the bracket at least halves every
# second step: 64 steps pin tau to float64 resolution even in the worst case. Attention
# rows with alpha in [1.01, 2] settle in 4-8 steps; alpha > 2 takes 10-30.
_MAX_ALPHA_STEPS = 64


def _cheap_power(r: Tensor | float) -> bool:
    """Whether ``u ** r`` has an arithmetic form (no transcendental functions)."""
    return isinstance(r, float) and r in (1.0, 2.0)


def _power(u: Tensor, r: Tensor | float, out: Tensor) -> Tensor:
    """``u ** r`` into ``out``, with the cheap exact forms of the common exponents."""
    if _cheap_power(r):
        return out.copy_(u) if r == 1.0 else torch.mul(u, u, out=out)
    return torch.pow(u, r, out=out)


# A CPU block switches to its candidate entries (those above the bracket's lower end,
# the only ones that can be in the support) once they are at most this fraction of the
# block: each step's transcendental power then runs on them alone. The gather costs about
# as much as one dense step with a transcendental power, so it pays when it removes most
# of the entries and the power is not a plain square; on an accelerator the dense steps
# are cheap and the gather would synchronise, so it is not used.
_CANDIDATE_FRACTION = 0.25


class _Candidates:
    """The entries of a ``(rows, n)`` block above a per-row lower bound, gathered flat.

    Evaluates the Newton moments on them alone and writes the final weights back.
    """

    def __init__(self, z: Tensor, flags: Tensor, r: Tensor | float) -> None:
        self.rows, n = z.shape
        self.index = flags.view(-1).nonzero().squeeze(1)
        self.row = torch.div(self.index, n, rounding_mode="floor")
        self.values = z.view(-1).index_select(0, self.index)
        self.r = r.view(-1).index_select(0, self.row) if isinstance(r, Tensor) else r
        self.pruned = False

    def prune(self, lo: Tensor) -> None:
        """Drop the candidates at or below the raised lower bound ``lo``, once.

        The first steps raise the bound the most; later ones would pay the gather again
        for little.
        """
        if self.pruned:
            return
        self.pruned = True
        keep = torch.gt(self.values, lo.view(-1).index_select(0, self.row)).nonzero().squeeze(1)
        self.index, self.row = self.index[keep], self.row[keep]
        self.values = self.values[keep]
        if isinstance(self.r, Tensor):
            self.r = self.r[keep]

    def _row_sum(self, values: Tensor) -> Tensor:
        total = values.new_zeros(self.rows)
        return total.index_add_(0, self.row, values).unsqueeze(1)

    def _offsets(self, tau: Tensor) -> Tensor:
        """``u = [z - tau]_+`` on the candidates."""
        return (self.values - tau.view(-1).index_select(0, self.row)).clamp_(min=0)

    def moments(self, tau: Tensor, tiny: float) -> tuple[Tensor, Tensor]:
        """``sum(u ** r)`` and ``sum(u ** (r - 1))`` per row, ``(rows, 1)`` each."""
        u = self._offsets(tau)
        w = _power(u, self.r, torch.empty_like(u))
        total = self._row_sum(w)
        return total, self._row_sum(w.div_(u.clamp_(min=tiny)))

    def write(self, z: Tensor, tau: Tensor) -> None:
        """Overwrite ``z`` with the normalised weights at ``tau`` (0 off the candidates)."""
        u = self._offsets(tau)
        p = _power(u, self.r, u)
        p.div_(self._row_sum(p).view(-1).index_select(0, self.row))
        z.zero_().view(-1).index_copy_(0, self.index, p)


def _dense_moments(
    z: Tensor, tau: Tensor, r: Tensor | float, u: Tensor, w: Tensor, tiny: float
) -> tuple[Tensor, Tensor]:
    """``sum([z - tau]_+ ** r)`` and ``sum([z - tau]_+ ** (r - 1))`` per row, in scratch."""
    torch.sub(z, tau, out=u).clamp_(min=0)
    total = _power(u, r, w).sum(dim=-1, keepdim=True)
    # u ** (r - 1) as u ** r / u; entries off the support give 0 / tiny = 0.
    slope = torch.div(w, u.clamp_(min=tiny), out=w).sum(dim=-1, keepdim=True)
    return total, slope


def _gather_candidates(
    z: Tensor, lo: Tensor, r: Tensor | float, count: Tensor, flags: Tensor
) -> _Candidates | None:
    """The candidates ``z > lo`` of a CPU block, if few enough to be worth gathering.

    Args:
        z: ``(rows, n)``; lo: ``(rows, 1)``; r: the exponent.
        count: float scratch of the shape of ``z``; flags: boolean scratch.
    """
    if z.device.type != "cpu" or _cheap_power(r):
        return None
    # Counting through a float comparison is several times cheaper than a boolean sum.
    if float(torch.gt(z, lo, out=count).sum()) > _CANDIDATE_FRACTION * z.numel():
        return None
    return _Candidates(z, torch.gt(z, lo, out=flags), r)


# Pow-free refinements of the starting lower bound (see _jensen_bound): each costs two
# cheap passes and, for attention rows, about halves the entries above the bound.
_JENSEN_STEPS = 3


def _jensen_bound(z: Tensor, lo: Tensor, am1: Tensor | float, work: Tensor) -> Tensor:
    """A lower bound of the alpha-entmax threshold of each row, better than ``lo``.

    For ``alpha <= 2`` the map ``t -> [t]_+ ** r`` is convex, so by Jensen's inequality any
    set ``S`` of entries gives ``F(t) >= |S| [mean_S(z) - t]_+ ** r``, which is 1 at
    ``t_S = mean_S(z) - |S| ** -(alpha - 1)``: a lower bound of the threshold. Starting
    from ``S`` = all entries, taking ``S`` = the entries above the current bound and
    repeating raises it; for ``alpha = 2`` this is Michelot's sparsemax iteration. Rows
    with ``alpha > 2`` keep ``lo``.

    Args:
        z: ``(rows, n)`` scores times ``alpha - 1``, row max 0.
        lo: ``(rows, 1)`` a lower bound (-1).
        am1: ``alpha - 1``, a float or ``(rows, 1)``.
        work: scratch of the shape of ``z``.
    Returns:
        ``(rows, 1)``, at least ``lo``.
    """
    convex = am1 <= 1
    if not isinstance(convex, Tensor) and not convex:
        return lo.clone()
    n = z.shape[-1]
    bound = torch.maximum(lo, z.mean(dim=-1, keepdim=True) - n ** (-am1))
    for _ in range(_JENSEN_STEPS):
        # |S| and sum_S (z - t) for S = {z > t}, with t = bound (the row max 0 is in S).
        size = torch.gt(z, bound, out=work).sum(dim=-1, keepdim=True)
        excess = torch.sub(z, bound, out=work).clamp_(min=0).sum(dim=-1, keepdim=True)
        bound = torch.maximum(bound, bound + excess / size - size ** (-am1))
    return torch.where(convex, bound, lo) if isinstance(convex, Tensor) else bound


def _alpha_entmax_newton(
    z: Tensor, am1: Tensor | float, u: Tensor, w: Tensor, flags: Tensor
) -> None:
    """Overwrite ``z`` with its alpha-entmax weights; the threshold by safeguarded Newton.

    With ``r = 1 / (alpha - 1)`` and ``u = [z - tau]_+``, the threshold solves
    ``F(tau) = sum(u ** r) = 1``. Newton runs on ``h(tau) = F ** (1 / r) - 1``, the
    ``r``-norm of ``u`` minus 1, rather than on ``F - 1``: for ``alpha <= 2`` (``r >= 1``)
    ``h`` is convex and decreasing, so steps from a lower bound climb monotonically to the
    root, and ``h`` is close to linear (exactly linear for a one-entry support; for
    ``alpha = 2`` the step is Michelot's), where ``F`` itself is as curved as ``u ** r``
    (``r = 100`` at ``alpha = 1.01``). The step is
    ``tau + (F - F ** (2 - alpha)) / sum(u ** (r - 1))``. A bracket ``[lo, hi]`` with
    ``F(lo) >= 1 >= F(hi)`` starts at ``[-1, -(1/n) ** (alpha - 1)]`` (the top entry alone
    weighs 1 at ``tau = -1``; every entry weighs at most ``1/n`` at ``hi``) and tightens
    with the sign of ``F - 1`` at each trial point; a step that leaves it is replaced by
    the bisection midpoint (needed for ``alpha > 2``, where ``h`` is not convex). A row is
    done when ``|F - 1|`` is a few ulps or its step vanishes; the weights are then
    renormalised to sum to one, as the ``entmax`` package does. On the CPU, once the
    entries above ``lo`` are few, the steps run on those alone (:class:`_Candidates`).

    Args:
        z: ``(rows, n)`` scores times ``alpha - 1``, row max 0 (``-inf`` allowed);
            overwritten with the weights.
        am1: ``alpha - 1``, a float or ``(rows, 1)``.
        u, w: scratch of the shape of ``z``; flags: boolean scratch of that shape.
    """
    rows, n = z.shape
    info = torch.finfo(z.dtype)
    tol = 16 * info.eps
    r = 1.0 / am1
    lo = z.new_full((rows, 1), -1.0)
    hi = lo.new_full((rows, 1), 1.0).mul_(-((1.0 / n) ** am1))
    tau = _jensen_bound(z, lo, am1, u)
    # The bound holds exactly; the margin covers its rounding, so that no entry of the
    # support can fall below the candidates' threshold.
    lo = torch.clamp(tau - 64 * info.eps * (1 + tau.abs()), min=-1.0)
    candidates = _gather_candidates(z, lo, r, u, flags)
    for step in range(_MAX_ALPHA_STEPS):
        if candidates is None:
            total, slope = _dense_moments(z, tau, r, u, w, info.tiny)
        else:
            total, slope = candidates.moments(tau, info.tiny)
        above = total >= 1
        lo = torch.where(above, tau, lo)
        hi = torch.where(above, hi, tau)
        nxt = tau + (total - total ** (1 - am1)) / slope
        # Strictly inside: a step back onto an end of the bracket would cycle.
        nxt = torch.where((nxt > lo) & (nxt < hi), nxt, (lo + hi) / 2)
        done = ((total - 1).abs() <= tol) | (nxt == tau)
        if _settled(done, step):
            break
        tau = torch.where(done, tau, nxt)
        if candidates is None:
            candidates = _gather_candidates(z, lo, r, u, flags)
        else:
            candidates.prune(lo)
    if candidates is not None:
        candidates.write(z, tau)
        return
    torch.sub(z, tau, out=u).clamp_(min=0)
    _power(u, r, z)
    # tau < 0 = max(z), so the top entry is positive and the sum is too.
    z.div_(z.sum(dim=-1, keepdim=True))


def _solve_rows(
    z: Tensor,
    alpha: Tensor | float,
    scratch: list[Tensor],
    flags: Tensor,
    guess: Tensor | None = None,
) -> None:
    """Overwrite a block of shifted scores with its alpha-entmax weights.

    The exact algorithm for the alpha at hand: Michelot's for sparsemax, the bracketing
    closed-form roots for 1.5-entmax (each with the sorted algorithm as fallback), and the
    safeguarded Newton for any other alpha.

    Args:
        z: ``(rows, n)`` from :func:`_shift_` with scale ``alpha - 1``, overwritten.
        alpha: a float or ``(rows, 1)``.
        scratch: two float tensors of the shape of ``z``; flags: a boolean one.
        guess: ``(rows, 1)`` thresholds to start 1.5-entmax from, e.g. those of
            neighbouring rows (other maps start from their own bounds).
    """
    u, w = scratch
    if isinstance(alpha, float) and alpha == 2.0:
        if not _sparsemax_newton(z, u):
            z.clamp_(min=_FLOOR)
            z.sub_(_sparsemax_threshold(z)).clamp_(min=0)
    elif isinstance(alpha, float) and alpha == 1.5:
        _entmax15_newton(z, u, w, guess)
    else:
        _alpha_entmax_newton(z, alpha - 1, u, w, flags)


@functools.cache
def triton_installed() -> bool:
    """Whether the optional ``triton`` package is importable (its kernels are imported
    lazily, for CUDA tensors only)."""
    return importlib.util.find_spec("triton") is not None


def _normalize(x: Tensor, alpha: Tensor | float) -> Tensor:
    """alpha-entmax of ``x`` ``(..., n)`` along the last axis, as a new tensor.

    ``alpha``: a float or ``(..., 1)``. CUDA rows that the Triton row kernel takes (see
    :mod:`~attnzoo.attention.triton_rows`) go to it: one read and one write per row.
    """
    if x.is_cuda and triton_installed():
        from . import triton_rows

        if triton_rows.rows_unsupported(x, alpha) is None:
            return triton_rows.entmax_rows(x, alpha)
    p, empty = _shifted_rows(x, alpha - 1)
    alpha_rows = alpha.reshape(-1, 1) if isinstance(alpha, Tensor) else alpha
    for rows, scratch, (flags,) in _row_blocks(p, 2, 1):
        block_alpha = alpha_rows[rows] if isinstance(alpha_rows, Tensor) else alpha_rows
        _solve_rows(p[rows], block_alpha, scratch, flags)
    return _finish(p, empty, x.shape)


class AlphaEntmaxFunction(torch.autograd.Function):
    """alpha-entmax along the last axis by safeguarded Newton; differentiable in ``alpha``.

    ``alpha`` is a float or a ``(..., 1)`` tensor (one value per row).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor | float) -> Tensor:
        p = _normalize(x, alpha)
        if isinstance(alpha, Tensor):
            ctx.save_for_backward(p, alpha)
        else:
            ctx.save_for_backward(p)
            ctx.alpha = alpha
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None]:
        p, *rest = ctx.saved_tensors
        alpha = rest[0] if rest else ctx.alpha
        need_alpha = bool(rest) and ctx.needs_input_grad[1]
        return _entmax_backward(grad, p, alpha, need_alpha)


# ----------------------------------------------------------------------------------
# alpha-entmax by bisection
# ----------------------------------------------------------------------------------


def _entmax_power(u: Tensor, alpha: Tensor) -> Tensor:
    """``clamp(u, 0) ** (1 / (alpha - 1))``, the entmax weights at offset ``u = z - tau``."""
    return u.clamp(min=0) ** (1 / (alpha - 1))


def _bisect_threshold(z: Tensor, alpha: Tensor, n_iter: int) -> Tensor:
    """Threshold of alpha-entmax by bisection.

    ``f(tau) = sum(p(tau)) - 1`` decreases in ``tau``; ``f(-1) >= 0`` (the top entry
    alone weighs 1) and ``f(-(1/n) ** (alpha - 1)) <= 0`` (every entry weighs at most
    ``1/n``), so halving that bracket ``n_iter`` times pins ``tau`` to
    ``2 ** -n_iter``; 50 halvings reach float64 resolution.

    Args:
        z: ``(..., n)`` scores times ``alpha - 1``, row max 0, floored at ``_FLOOR``.
        alpha: ``(..., 1)``.
    Returns:
        ``(..., 1)`` the lower end of the final bracket, where ``sum(p) >= 1``.
    """
    lo = torch.full_like(alpha, -1.0)
    width = -((1.0 / z.shape[-1]) ** (alpha - 1)) - lo
    for _ in range(n_iter):
        width = width / 2
        mid = lo + width
        big = _entmax_power(z - mid, alpha).sum(dim=-1, keepdim=True) >= 1
        lo = torch.where(big, mid, lo)
    return lo


class EntmaxBisectFunction(torch.autograd.Function):
    """alpha-entmax along the last axis by bisection, differentiable in ``x`` and ``alpha``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: Tensor, n_iter: int) -> Tensor:
        z, empty = _shift(x)
        z = (z * (alpha - 1)).clamp(min=_FLOOR)
        p = _entmax_power(z - _bisect_threshold(z, alpha, n_iter), alpha)
        # The bracket's lower end has sum(p) >= 1 > 0; dividing makes the sum exactly 1
        # up to rounding, as the entmax package's ensure_sum_one does.
        p = (p / _row_denominator(p.sum(dim=-1, keepdim=True))).masked_fill(empty, 0.0)
        ctx.save_for_backward(p, alpha)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        p, alpha = ctx.saved_tensors
        grad_x, grad_alpha = _entmax_backward(grad, p, alpha, ctx.needs_input_grad[1])
        return grad_x, grad_alpha, None


# ----------------------------------------------------------------------------------
# functional forms
# ----------------------------------------------------------------------------------


def _along(fn, x: Tensor, dim: int, *args: object) -> Tensor:
    """Apply a last-axis Function ``fn`` along ``dim`` of ``x``, in float32 for half types."""
    if x.numel() == 0:
        return x.clone()
    z = _upcast(x).movedim(dim, -1)
    return fn.apply(z, *args).movedim(-1, dim).to(x.dtype)


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """sparsemax: Euclidean projection of ``x`` onto the simplex along ``dim``.

    ``argmin_p ||p - x||^2`` s.t. ``p >= 0, sum(p) = 1`` (Martins & Astudillo 2016), solved
    exactly (sort-free Newton steps); 2-entmax.

    Args:
        x: scores of any shape ``(..., n, ...)``; ``-inf`` marks masked entries.
        dim: the axis to normalise.
    Returns:
        weights of the shape and dtype of ``x``; an all ``-inf`` slice gives zeros.
    """
    dim = _check_scores(x, dim)
    return _along(SparsemaxFunction, x, dim)


def entmax15(x: Tensor, dim: int = -1) -> Tensor:
    """1.5-entmax along ``dim``, exact (Peters et al. 2019).

    ``p = [x / 2 - tau]_+ ** 2`` with ``tau`` such that ``sum(p) = 1``: sparse like
    sparsemax but smoother.

    Args:
        x: scores of any shape ``(..., n, ...)``; ``-inf`` marks masked entries.
        dim: the axis to normalise.
    Returns:
        weights of the shape and dtype of ``x``; an all ``-inf`` slice gives zeros.
    """
    dim = _check_scores(x, dim)
    return _along(Entmax15Function, x, dim)


def entmax_bisect(
    x: Tensor, alpha: float | Tensor = 1.5, dim: int = -1, n_iter: int = 50
) -> Tensor:
    """alpha-entmax along ``dim`` by bisection on the threshold (Peters et al. 2019).

    ``p = [(alpha - 1) x - tau]_+ ** (1 / (alpha - 1))`` with ``tau`` such that
    ``sum(p) = 1``; the output is renormalised after bisection so it sums to one.
    Differentiable in ``x`` and, when it is a tensor that requires grad, in ``alpha``
    (Correia et al. 2019).

    Args:
        x: scores of any shape, e.g. ``(batch, heads, n_q, n_k)``; ``-inf`` marks masked
            entries.
        alpha: > 1; a float, or a tensor broadcastable to ``x`` with size 1 along ``dim``
            (one alpha per slice), e.g. ``(1, heads, 1, 1)`` for one alpha per head.
            ``2`` is sparsemax; values near 1 approach softmax.
        dim: the axis to normalise.
        n_iter: bisection steps (positive); the threshold is found to ``2 ** -n_iter``.
    Returns:
        weights of the shape and dtype of ``x``; an all ``-inf`` slice gives zeros.
    """
    dim = _check_scores(x, dim)
    check_n_iter(n_iter)
    alpha_t = _alpha_argument(alpha, x, dim)
    if not isinstance(alpha_t, Tensor):
        compute = torch.float32 if x.dtype in LOW_PRECISION else x.dtype
        alpha_t = torch.full(_row_shape(x, dim), alpha_t, dtype=compute, device=x.device)
        alpha_t = alpha_t.movedim(dim, -1)
    return _along(EntmaxBisectFunction, x, dim, alpha_t, n_iter)


def _alpha_argument(alpha: float | Tensor, x: Tensor, dim: int) -> Tensor | float:
    """A checked ``alpha``: a float, or a tensor of one value per slice, ``(..., 1)`` after
    moving ``dim`` last, in the dtype the map computes in (float32 for half types)."""
    check_alpha(alpha)
    if not isinstance(alpha, Tensor):
        return float(alpha)
    compute = torch.float32 if x.dtype in LOW_PRECISION else x.dtype
    return _alpha_rows(alpha, x, dim).to(device=x.device, dtype=compute).movedim(dim, -1)


def alpha_entmax(x: Tensor, alpha: float | Tensor = 1.5, dim: int = -1) -> Tensor:
    """alpha-entmax along ``dim``, exact to rounding (Peters et al. 2019).

    ``p = [(alpha - 1) x - tau]_+ ** (1 / (alpha - 1))`` with ``tau`` such that
    ``sum(p) = 1``, found by safeguarded Newton steps (4-8 passes over the scores for
    ``alpha`` in ``[1.01, 2]``) instead of bisection; the output is renormalised to sum to
    one. Differentiable in ``x`` and, when it is a tensor that requires grad, in ``alpha``
    (Correia et al. 2019). This is the registry's ``"entmax"``.

    Args:
        x: scores of any shape, e.g. ``(batch, heads, n_q, n_k)``; ``-inf`` marks masked
            entries.
        alpha: > 1; a float, or a tensor broadcastable to ``x`` with size 1 along ``dim``
            (one alpha per slice), e.g. ``(1, heads, 1, 1)`` for one alpha per head.
            ``2`` is sparsemax, ``1.5`` is 1.5-entmax; values near 1 approach softmax.
        dim: the axis to normalise.
    Returns:
        weights of the shape and dtype of ``x``; an all ``-inf`` slice gives zeros.
    """
    dim = _check_scores(x, dim)
    return _along(AlphaEntmaxFunction, x, dim, _alpha_argument(alpha, x, dim))


# ----------------------------------------------------------------------------------
# module forms
# ----------------------------------------------------------------------------------


class Sparsemax(nn.Module):
    """Module form of :func:`sparsemax`: ``(..., n, ...) -> (..., n, ...)`` along ``dim``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return sparsemax(x, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Entmax15(nn.Module):
    """Module form of :func:`entmax15`: ``(..., n, ...) -> (..., n, ...)`` along ``dim``."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return entmax15(x, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class EntmaxBisect(nn.Module):
    """Module form of :func:`entmax_bisect` with a fixed ``alpha`` (float or tensor).

    For a learnable alpha, pass ``EntmaxAlpha(heads)()`` to :func:`entmax_bisect` (or to
    :func:`alpha_entmax`, the faster exact solver).
    """

    def __init__(self, alpha: float | Tensor = 1.5, dim: int = -1, n_iter: int = 50) -> None:
        super().__init__()
        check_alpha(alpha)
        check_n_iter(n_iter)
        self.alpha = alpha
        self.dim = dim
        self.n_iter = n_iter

    def forward(self, x: Tensor) -> Tensor:
        return entmax_bisect(x, alpha=self.alpha, dim=self.dim, n_iter=self.n_iter)

    def extra_repr(self) -> str:
        alpha = self.alpha if not isinstance(self.alpha, Tensor) else tuple(self.alpha.shape)
        return f"alpha={alpha}, dim={self.dim}, n_iter={self.n_iter}"


class AlphaEntmax(nn.Module):
    """Module form of :func:`alpha_entmax` with a fixed ``alpha`` (float or tensor).

    For a learnable alpha, pass ``EntmaxAlpha(heads)()`` to :func:`alpha_entmax`.
    """

    def __init__(self, alpha: float | Tensor = 1.5, dim: int = -1) -> None:
        super().__init__()
        check_alpha(alpha)
        self.alpha = alpha
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return alpha_entmax(x, alpha=self.alpha, dim=self.dim)

    def extra_repr(self) -> str:
        alpha = self.alpha if not isinstance(self.alpha, Tensor) else tuple(self.alpha.shape)
        return f"alpha={alpha}, dim={self.dim}"


class EntmaxAlpha(nn.Module):
    """One learnable entmax alpha per head, confined to ``[MIN_ALPHA, 2]``.

    ``alpha = MIN_ALPHA + (2 - MIN_ALPHA) * sigmoid(raw)`` with an unconstrained
    parameter ``raw``: any value an optimiser gives ``raw`` (even ``±inf``) maps inside
    the range, so alpha can never reach 1, where entmax divides by zero (entmax issues
    #39, #24). The floor :data:`MIN_ALPHA` keeps the threshold solvers and the alpha gradient
    well-conditioned. As in Correia et al. 2019, heads start at ``init`` and learn how
    sparse to be.

    Args:
        heads: number of heads (positive int).
        init: starting alpha of every head, in the open range ``(MIN_ALPHA, 2)``.

    ``forward()`` returns alpha of shape ``(1, heads, 1, 1)``, which broadcasts over
    ``(batch, heads, n_q, n_k)`` scores: ``alpha_entmax(scores, alpha=module())``.
    """

    def __init__(self, heads: int, init: float = 1.5) -> None:
        super().__init__()
        check_int(heads, "heads")
        if isinstance(init, bool) or not isinstance(init, (int, float)):
            raise TypeError(f"`init` must be a float, got {type(init).__name__}")
        if not MIN_ALPHA < init < 2:
            raise ValueError(f"`init` must be in the open range ({MIN_ALPHA}, 2), got {init}")
        self.heads = heads
        fraction = (init - MIN_ALPHA) / (2 - MIN_ALPHA)
        raw = math.log(fraction / (1 - fraction))  # inverse sigmoid
        self.raw = nn.Parameter(torch.full((heads,), raw))

    def forward(self) -> Tensor:
        """Alpha per head, shape ``(1, heads, 1, 1)``, values in ``[MIN_ALPHA, 2]``."""
        alpha = MIN_ALPHA + (2 - MIN_ALPHA) * torch.sigmoid(self.raw)
        return alpha.view(1, self.heads, 1, 1)

    def extra_repr(self) -> str:
        return f"heads={self.heads}"


__all__ = [
    "MIN_ALPHA",
    "AlphaEntmax",
    "AlphaEntmaxFunction",
    "Entmax15",
    "Entmax15Function",
    "EntmaxAlpha",
    "EntmaxBisect",
    "EntmaxBisectFunction",
    "Sparsemax",
    "SparsemaxFunction",
    "alpha_entmax",
    "check_alpha",
    "check_n_iter",
    "entmax15",
    "entmax_bisect",
    "sparsemax",
]
