"""Sparse normalisers: sparsemax, 1.5-entmax and alpha-entmax, with a learnable alpha.

alpha-entmax (Peters et al. 2019, "Sparse Sequence-to-Sequence Models") maps scores
``x`` to ``p = [(alpha - 1) x - tau]_+ ** (1 / (alpha - 1))`` with the threshold ``tau``
chosen so that ``p`` sums to one. ``alpha = 2`` is sparsemax (Martins & Astudillo 2016),
``alpha -> 1`` recovers softmax. Unlike softmax, scores far enough below the maximum get
exactly zero weight.

* :func:`sparsemax` and :func:`entmax15` find ``tau`` exactly without sorting: Newton
  steps from a lower bound, finished by the closed-form threshold on the support found
  (the sorted algorithm is the fallback for rows that do not settle).
* :func:`entmax_bisect` finds ``tau`` by bisection for any ``alpha > 1``, a float or a
  tensor (e.g. one per head), and is differentiable in ``alpha`` too (Correia et al.
  2019, "Adaptively Sparse Transformers").
* :class:`EntmaxAlpha` holds one learnable ``alpha`` per head that stays in
  ``[MIN_ALPHA, 2]`` whatever the optimiser does.

Every function has the library's normaliser guarantees: ``-inf`` scores get exactly
zero weight, a slice that is entirely ``-inf`` gets zeros and a zero gradient (the
``entmax`` package returns NaN or fails there, entmax issue #19), and float16/bfloat16
scores are computed in float32 and returned in their own dtype, finite for logits
anywhere in ``±1e4`` (entmax issue #30). The backward passes are closed-form custom
autograd Functions; they are differentiable once (no double backward).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .validation import check_int, check_tensor

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
    try:
        fits = torch.broadcast_shapes(tuple(alpha.shape), row_shape) == row_shape
    except RuntimeError:
        fits = False
    if not fits:
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


# The sort-free thresholds iterate over blocks of rows of about this many entries: their
# scratch buffers are allocated once and stay in cache across the passes (a fresh
# full-size temporary per pass costs more in page faults than the arithmetic), while a
# block is still large enough that the per-operation overhead does not dominate.
_BLOCK = 1 << 20

# Newton steps before a block falls back to the sorting algorithm. Attention rows settle
# in 5-8 steps; only contrived rows (exact ties at the threshold) reach the cap.
_MAX_NEWTON = 30


def _shifted_rows(x: Tensor, scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """Rows of ``x`` shifted to maximum 0, times ``scale``, floored at ``_FLOOR``.

    Args:
        x: ``(..., n)`` scores.
        scale: a float or ``(..., 1)``, the ``alpha - 1`` of the map.
    Returns:
        ``(z, empty)``: ``z`` a new contiguous ``(rows, n)`` tensor (it becomes the output,
        so the map allocates one full-size tensor); ``empty`` ``(rows, 1)``, True for
        all-``-inf`` rows, whose ``z`` is set to 0 so every threshold stays finite there.
    """
    n = x.shape[-1]
    top = x.amax(dim=-1, keepdim=True)
    # An empty row's max is -inf; x - max would be -inf - -inf = NaN.
    empty = torch.isneginf(top)
    top = top.masked_fill(empty, 0.0)
    z = torch.sub(x, top, out=torch.empty(x.shape, dtype=x.dtype, device=x.device))
    if isinstance(scale, Tensor) or scale != 1.0:
        z.mul_(scale)
    z = z.clamp_(min=_FLOOR).view(-1, n)
    empty = empty.reshape(-1, 1)
    if bool(empty.any()):
        z.masked_fill_(empty, 0.0)
    return z, empty


def _row_blocks(z: Tensor, buffers: int):
    """Yield ``(block, scratch)``: consecutive row blocks of ``z`` with scratch buffers."""
    rows = max(1, _BLOCK // z.shape[-1])
    scratch = [
        torch.empty((min(rows, z.shape[0]), z.shape[-1]), dtype=z.dtype, device=z.device)
        for _ in range(buffers)
    ]
    for start in range(0, z.shape[0], rows):
        block = z[start : start + rows]
        yield block, [buf[: block.shape[0]] for buf in scratch]


def _finish(p: Tensor, empty: Tensor, shape: torch.Size) -> Tensor:
    """Zero the empty rows of ``(rows, n)`` weights ``p`` and give them ``shape``."""
    if bool(empty.any()):
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
        z: ``(rows, n)`` finite scores with row maximum 0, overwritten.
        work: scratch of the shape of ``z``.
    Returns:
        True when ``z`` now holds the weights.
    """
    n = z.shape[-1]
    # Every subset S gives a lower bound (sum_S z - 1) / |S| <= tau; {argmax} gives -1.
    tau = ((z.sum(dim=-1, keepdim=True) - 1) / n).clamp(min=-1.0)
    for _ in range(_MAX_NEWTON):
        torch.sub(z, tau, out=work).clamp_(min=0)
        total = work.sum(dim=-1, keepdim=True)
        nxt = tau + (total - 1) / torch.sign(work, out=work).sum(dim=-1, keepdim=True)
        # A step of 0 (in floating point) is the fixed point: the support is final.
        if bool((nxt <= tau).all()):
            torch.sub(z, tau, out=z).clamp_(min=0)
            return True
        tau = torch.maximum(tau, nxt)
    return False


class SparsemaxFunction(torch.autograd.Function):
    """sparsemax along the last axis; backward: ``g - mean(g over support)`` on the support."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        p, empty = _shifted_rows(x, 1.0)
        for z, work in _row_blocks(p, 1):
            if not _sparsemax_newton(z, work[0]):
                z.sub_(_sparsemax_threshold(z)).clamp_(min=0)
        p = _finish(p, empty, x.shape)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        # sign(p) is the support indicator, 0/1 (p >= 0): s = 1 in the entmax Jacobian.
        return _entmax_input_grad(grad, torch.sign(p))


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


def _entmax15_newton(z: Tensor, work: Tensor, square: Tensor) -> bool:
    """Overwrite ``z`` with its 1.5-entmax weights, sort-free; False if it did not settle.

    ``f(tau) = sum(clamp(z - tau, 0) ** 2) - 1`` is convex and decreasing, so Newton's
    method from the lower bound ``tau = -1`` climbs monotonically towards the root. Once
    two successive steps see the same support, the next trial point is the exact root of
    the quadratic on that support (the sorted algorithm's formula); if that overshoots
    (the support was still too large) the iteration resumes with a Newton step from the
    last lower bound. A row is done when ``sum(p) = 1`` to a few ulps, or when its step
    vanishes in floating point.

    Args:
        z: ``(rows, n)`` scores in ``[_FLOOR, 0]`` with row maximum 0, overwritten.
        work, square: scratch of the shape of ``z``.
    Returns:
        True when ``z`` now holds the weights.
    """
    tol = 16 * torch.finfo(z.dtype).eps
    tau = torch.full_like(z[:, :1], -1.0)
    lower = tau
    lower_step = None
    last_size = None
    for _ in range(_MAX_NEWTON):
        torch.sub(z, tau, out=work).clamp_(min=0)
        total = work.sum(dim=-1, keepdim=True)
        residual = torch.mul(work, work, out=square).sum(dim=-1, keepdim=True) - 1
        size = torch.sign(work, out=work).sum(dim=-1, keepdim=True)
        above = residual >= 0  # tau is a lower bound of the root
        step = tau + residual / (2 * total)
        if lower_step is not None:
            step = torch.where(above, step, lower_step)
        # Exact root of sum_{support} (z - t) ** 2 = 1, in offsets from tau (less
        # cancellation than in raw moments): mean - sqrt((1 - ss) / k).
        mean = total / size
        delta = (1 - (residual + 1 - total * mean)) / size
        exact = tau + mean - delta.clamp(min=0).sqrt()
        settled = above & (delta >= 0) & (exact >= tau)
        if last_size is not None:
            settled &= size == last_size
        nxt = torch.where(settled, exact, step)
        done = (residual.abs() <= tol) | (nxt == tau)
        if bool(done.all()):
            z.copy_(square)
            return True
        lower = torch.where(above, tau, lower)
        lower_step = torch.where(above, step, lower_step if lower_step is not None else step)
        last_size = torch.where(above, size, last_size if last_size is not None else size)
        tau = torch.where(done, tau, nxt)
    return False


class Entmax15Function(torch.autograd.Function):
    """1.5-entmax along the last axis; backward with ``1 / g''(p) = sqrt(p)``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        # 1.5-entmax is p = [z / 2 - tau]_+ ** 2 (alpha - 1 = 1/2 scales the scores).
        p, empty = _shifted_rows(x, 0.5)
        for z, (work, square) in _row_blocks(p, 2):
            if not _entmax15_newton(z, work, square):
                z.sub_(_entmax15_threshold(z)).clamp_(min=0).square_()
        p = _finish(p, empty, x.shape)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (p,) = ctx.saved_tensors
        return _entmax_input_grad(grad, p.sqrt())


def _entmax_input_grad(grad: Tensor, gppr: Tensor) -> Tensor:
    """Vector-Jacobian product of alpha-entmax in its input.

    ``J = diag(s) - s s^T / sum(s)`` with ``s = 1 / g''(p) = p ** (2 - alpha)`` on the
    support and 0 off it (Peters et al. 2019, Proposition 1).

    Args:
        grad: ``(..., n)`` gradient w.r.t. the output.
        gppr: ``(..., n)`` the vector ``s``.
    Returns:
        ``(..., n)`` gradient w.r.t. the scores.
    """
    weighted = grad * gppr
    q = weighted.sum(dim=-1, keepdim=True) / _row_denominator(gppr.sum(dim=-1, keepdim=True))
    return weighted - q * gppr


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
        support = p > 0
        tiny = torch.finfo(p.dtype).tiny
        # Clamp before the power and the log so the masked-out branch is finite too.
        safe = p.clamp(min=tiny)
        gppr = torch.where(support, safe ** (2 - alpha), torch.zeros_like(p))
        grad_x = _entmax_input_grad(grad, gppr)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            plogp = torch.where(support, p * safe.log(), torch.zeros_like(p))
            grad_alpha = _alpha_grad(grad, p, gppr, plogp, alpha)
        return grad_x, grad_alpha, None


def _alpha_grad(grad: Tensor, p: Tensor, gppr: Tensor, plogp: Tensor, alpha: Tensor) -> Tensor:
    """Vector-Jacobian product of alpha-entmax in ``alpha`` (Correia et al. 2019, Prop. 1).

    ``dp/dalpha = (p - s~) / (alpha - 1) ** 2 - (p log p - s~ H) / (alpha - 1)`` with
    ``s~ = s / sum(s)``, ``s = p ** (2 - alpha)`` on the support and
    ``H = sum(p log p)``.

    Args:
        grad, p, gppr, plogp: ``(..., n)``.
        alpha: ``(..., 1)``.
    Returns:
        ``(..., 1)`` gradient w.r.t. each slice's alpha.
    """
    skewed = gppr / _row_denominator(gppr.sum(dim=-1, keepdim=True))
    neg_entropy = plogp.sum(dim=-1, keepdim=True)
    am1 = alpha - 1
    dp = (p - skewed) / am1**2 - (plogp - skewed * neg_entropy) / am1
    return (grad * dp).sum(dim=-1, keepdim=True)


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
    check_alpha(alpha)
    check_n_iter(n_iter)
    compute = torch.float32 if x.dtype in LOW_PRECISION else x.dtype
    if isinstance(alpha, Tensor):
        alpha_t = _alpha_rows(alpha, x, dim).to(device=x.device, dtype=compute)
    else:
        alpha_t = torch.full(_row_shape(x, dim), float(alpha), dtype=compute, device=x.device)
    return _along(EntmaxBisectFunction, x, dim, alpha_t.movedim(dim, -1), n_iter)


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

    For a learnable alpha, pass ``EntmaxAlpha(heads)()`` to :func:`entmax_bisect`.
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


class EntmaxAlpha(nn.Module):
    """One learnable entmax alpha per head, confined to ``[MIN_ALPHA, 2]``.

    ``alpha = MIN_ALPHA + (2 - MIN_ALPHA) * sigmoid(raw)`` with an unconstrained
    parameter ``raw``: any value an optimiser gives ``raw`` (even ``±inf``) maps inside
    the range, so alpha can never reach 1, where entmax divides by zero (entmax issues
    #39, #24). The floor :data:`MIN_ALPHA` keeps the bisection and the alpha gradient
    well-conditioned. As in Correia et al. 2019, heads start at ``init`` and learn how
    sparse to be.

    Args:
        heads: number of heads (positive int).
        init: starting alpha of every head, in the open range ``(MIN_ALPHA, 2)``.

    ``forward()`` returns alpha of shape ``(1, heads, 1, 1)``, which broadcasts over
    ``(batch, heads, n_q, n_k)`` scores: ``entmax_bisect(scores, alpha=module())``.
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
    "Entmax15",
    "Entmax15Function",
    "EntmaxAlpha",
    "EntmaxBisect",
    "EntmaxBisectFunction",
    "Sparsemax",
    "SparsemaxFunction",
    "check_alpha",
    "check_n_iter",
    "entmax15",
    "entmax_bisect",
    "sparsemax",
]
