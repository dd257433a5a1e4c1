"""alpha-entmax of score rows by one Triton kernel: each row read once and written once.

On a GPU the torch path of :func:`~attnzoo.attention.entmax.sparsemax`,
:func:`~attnzoo.attention.entmax.entmax15` and
:func:`~attnzoo.attention.entmax.alpha_entmax` makes several passes over memory per
threshold step, each a kernel launch. Here a program loads ``block_m`` whole rows into
registers and finds their thresholds there, with the steps of the attention kernels
(:mod:`~attnzoo.attention.triton_entmax`): Newton on ``||[z - tau]_+||_r - 1`` from the
lower bound -1 (``z = (alpha - 1) * x`` shifted to row maximum 0), and for sparsemax and
1.5-entmax the exact root on the current support, certified when every entry of the
support lies at or above it. The passes stop when every row of the program is certified
(a general ``alpha``: when no row's step moves), at the latest after ``n_iter``. Then
``p = [z - tau]_+ ** r / sum(...)``, as the torch path and the ``entmax`` package
normalise.

Rows of up to :data:`MAX_ROW` entries, float32, ``alpha`` in ``(1, 2]`` (one value, or one
per row); everything else stays on the torch path, which also does the backward pass.
Importing this module imports ``triton``; :mod:`attnzoo.attention.entmax` imports it only
for CUDA tensors. With ``TRITON_INTERPRET=1`` at its first import the kernel runs in
Triton's interpreter on CPU tensors (for tests), as the attention kernels do.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .triton_entmax import (
    _ENTMAX15,
    _GENERAL,
    _SPARSEMAX,
    INTERPRETED,
    _max,
    _newton_update,
    _powers,
    _sum,
    _threshold_sums,
)

# Longest row the kernel holds in registers (16 warps, 16 floats per thread).
MAX_ROW = 8192
# Threshold steps per row at most; rows settle in under 10 (they are register-only).
MAX_STEPS = 50
# Entries per program: several short rows share one.
_ENTRIES_PER_PROGRAM = 4096


@triton.jit
def _entmax_rows(
    X,
    AM1,
    OUT,
    n_rows,
    n,
    am1_stride,
    n_iter,
    KIND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_valid = rows < n_rows
    inside = row_valid[:, None] & (cols[None, :] < n)
    offsets = rows.to(tl.int64)[:, None] * n + cols[None, :]
    x = tl.load(X + offsets, mask=inside, other=float("-inf"))
    am1 = tl.load(AM1 + rows.to(tl.int64) * am1_stride, mask=row_valid, other=0.5)
    r = (1.0 / am1)[:, None]
    top = _max(x, axis=1)
    has_key = top > float("-inf")
    top = tl.where(has_key, top, 0.0)
    # Shifted before scaling, as the torch path does: x - max is exact near the top, where
    # the weights are, and (x * (alpha - 1)) - max would round at the scale of x.
    z = (x - top[:, None]) * am1[:, None]  # -inf stays -inf: [z - tau]_+ is 0 there

    # From the bound tau >= -1 (the largest weight (-tau) ** r is at most 1).
    tau = tl.full([BLOCK_M], -1.0, tl.float32)
    done = (row_valid == 0) | (has_key == 0)
    final = tau
    it = n_iter * 0
    go = it + 1
    while (it < n_iter) & (go > 0):
        sum_w, sum_s, sum_u, size, low = _threshold_sums(z, tau, r, KIND)
        step, root, certified = _newton_update(tau, sum_w, sum_s, sum_u, size, low, am1, KIND)
        if KIND == 0:
            # No closed-form root: a row is done when its step no longer moves.
            certified = step <= tau
            root = step
        final = tl.where(certified & (done == 0), root, final)
        done = done | certified
        tau = step
        it += 1
        go = _max(tl.where(done, 0, 1), axis=0)
    # Rows still open after n_iter keep their last lower bound.
    tau = tl.where(done & has_key, final, tau)

    u = tl.maximum(z - tau[:, None], 0.0)
    w, _ = _powers(u, r, KIND)
    total = _sum(w, axis=1)
    scale = tl.where(total > 0, 1.0 / tl.maximum(total, 1.1754943508222875e-38), 0.0)
    tl.store(OUT + offsets, w * scale[:, None], mask=inside)


def rows_unsupported(x: Tensor, alpha: float | Tensor) -> str | None:
    """Why :func:`entmax_rows` cannot take these rows, or None if it can.

    ``x``: ``(..., n)`` scores; ``alpha`` a float or a tensor of one value per row.
    A tensor ``alpha`` on a GPU is read back once (its range decides the path).
    """
    if not (x.is_cuda or INTERPRETED):
        return f"x on {x.device} (the kernel needs CUDA tensors)"
    if x.dtype != torch.float32:
        return f"dtype {x.dtype} (the kernel takes float32)"
    if x.dim() == 0 or not 0 < x.shape[-1] <= MAX_ROW:
        return f"rows of {x.shape[-1] if x.dim() else 0} entries (at most {MAX_ROW})"
    if isinstance(alpha, Tensor):
        if alpha.numel() != x.numel() // x.shape[-1]:
            return f"alpha of {alpha.numel()} values for {x.numel() // x.shape[-1]} rows"
        if not bool(((alpha > 1) & (alpha <= 2)).all()):
            return "an alpha outside (1, 2]"
    elif not 1 < alpha <= 2:
        return f"alpha = {alpha} outside (1, 2]"
    return None


def entmax_rows(x: Tensor, alpha: float | Tensor) -> Tensor:
    """alpha-entmax of the rows of ``x`` along its last axis (see the module docstring).

    Args:
        x: ``(..., n)`` float32 scores on a CUDA device, ``n <= MAX_ROW``; ``-inf`` marks
            masked entries.
        alpha: a float in ``(1, 2]``, or a tensor of one alpha in ``(1, 2]`` per row
            (any shape with that many elements, e.g. ``(..., 1)``).
    Returns:
        weights of the shape of ``x``; an all ``-inf`` row gives zeros.
    """
    n = x.shape[-1]
    rows = x.numel() // n
    flat = x.contiguous()
    if isinstance(alpha, Tensor):
        am1 = (alpha.detach().to(dtype=torch.float32) - 1).contiguous().view(-1)
        stride, kind = 1, _GENERAL
    else:
        am1 = torch.full((1,), alpha - 1, dtype=torch.float32, device=x.device)
        stride, kind = 0, {2.0: _SPARSEMAX, 1.5: _ENTMAX15}.get(float(alpha), _GENERAL)
    out = torch.empty_like(flat)
    block_n = triton.next_power_of_2(n)
    block_m = max(1, _ENTRIES_PER_PROGRAM // block_n)
    warps = max(4, min(16, block_m * block_n // 512))
    _entmax_rows[(triton.cdiv(rows, block_m),)](
        flat,
        am1,
        out,
        rows,
        n,
        stride,
        MAX_STEPS,
        KIND=kind,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        num_warps=warps,
    )
    return out


__all__ = ["MAX_ROW", "entmax_rows", "rows_unsupported"]
