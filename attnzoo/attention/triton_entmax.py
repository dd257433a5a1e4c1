"""alpha-entmax attention as Triton kernels, flash-style: no ``(n_q, n_k)`` tensor at all.

``triton_entmax_attention(q, k, v, alpha=1.5)`` computes
``entmax_alpha(q @ k^T * scale) @ v`` (``alpha = 2`` is sparsemax, ``1.5`` is 1.5-entmax)
with one program per (batch * head, block of ``block_m`` queries) that walks over the key
tiles several times, recomputing each score tile instead of storing it:

1. **Candidates**: one pass keeps, entry-wise over the key tiles, the two largest
   ``z = (alpha - 1) * scores`` of each row in each class of keys ``j mod block_n``
   (three element-wise operations per entry, no reduction): ``2 * block_n`` of the row's
   own entries, among them its maximum ``m``. The threshold of this subset alone is a
   lower bound of the row's (a subset's r-norm at any threshold is at most the row's),
   and a close one: the support is the row's largest entries, and a class rarely holds
   three of them. A few iterations on the candidates, in registers, find it.
2. **Newton passes** on ``h(tau) = ||[z - m - tau]_+||_r - 1``, ``r = 1 / (alpha - 1)``,
   from that bound. For ``alpha <= 2`` (``r >= 1``) ``h`` is convex and decreasing, so a
   Newton step from a lower bound of the root is again a lower bound: the iterates climb
   monotonically and never overshoot. For sparsemax and 1.5-entmax each pass also forms
   the exact root on its support ``S = {z > tau}`` (Michelot's step; the smaller root of
   the quadratic of :func:`~attnzoo.attention.entmax.entmax15`) and the smallest entry of
   ``S``: where that entry lies at or above the root, the root is the threshold
   (certified), and the passes stop when every row of the block is certified.
3. **Output pass**: ``out = sum_j p_ij v_j / sum_j p_ij`` (the division makes a threshold a
   few ulps short of the root still give weights that sum to one), recording which key
   tiles hold any non-zero weight: the backward visits only those, which is the block
   sparsity of AdaSplash (Goncalves et al. 2025).

Tiles wholly inside the keys and below the causal diagonal skip the mask arithmetic.

The number of Newton passes is capped per call (no host synchronisation):
``ceil(log2(n_k) / 2) + 3`` (``+ 1`` for a float ``alpha < 2``). From the lower bound
``max(-1, Jensen)`` alone, measured on rows of ``q . k / sqrt(d)`` with Gaussian ``q, k``
times 0.1 to 10, ``n_k`` from 50 to 8192, the iterates reached the float64 result to 2e-6
in at most 4 (50), 7 (512), 8 (4096) and 10 (8192) passes for sparsemax, the slowest case
(a near-uniform row, whose support shrinks by a roughly constant fraction per Michelot
step), and in at most 6 for ``alpha <= 1.5``; the cap covers each of them. From the
candidates' bound, blocks of 64 such rows (``q, k`` unit Gaussian, 4096 keys) are
certified after 2 passes for 1.5-entmax and 1 or 2 for sparsemax. A general ``alpha``
runs all the passes of the cap. ``n_iter`` overrides it.

The backward (a custom autograd Function) reuses the saved per-row ``m``, ``tau`` and
``1 / sum(p)`` and the surviving tiles: with ``s = [z - m - tau]_+ ** (r - 1)``
(``p ** (2 - alpha)``, the support indicator for sparsemax), ``dP = dO V^T``,
``delta_i = sum_j s_ij dP_ij / sum_j s_ij`` and ``dS = s * (dP - delta)``. ``delta`` needs
``sum_j s_ij v_j``, which the forward pass accumulates next to the output when a gradient
is needed (one more tile product there instead of a separate pass over all keys in the
backward). Then one kernel per query block forms ``delta`` and ``dQ = scale * dS K`` over
the block's list of surviving tiles, and one per key tile ``dK = scale * dS^T Q`` and
``dV = P^T dO`` over the query blocks that flagged it, so no atomics are needed and the
gradients are deterministic. A learnable alpha (a tensor that requires grad) compiles a
forward variant whose output pass also sums ``w ln u`` and ``w ln u v_j`` per row (one
more tile product); the gradient in alpha is then a few row dots in torch
(:func:`_alpha_gradient`).

Memory beyond the inputs: the output, five floats per query row, one int32 and one int8
per (query block, key tile) for the tile lists and flags (``n_q * n_k / (block_m *
block_n)`` each, 4 KiB and 1 KiB per head at n = 4096), and when a gradient is needed
``sum_j s_ij v_j`` (the size of the output, float32); a learnable alpha adds as much again
and one float per query row.

Kernels run on CUDA tensors. With ``TRITON_INTERPRET=1`` in the environment when this
module is first imported, Triton's interpreter runs them on CPU tensors instead (slow;
for tests): :data:`INTERPRETED` records which mode the kernels were built in. Importing
this module imports ``triton`` (an optional extra); ``import attnzoo`` never does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable
from triton import knobs

from .entmax import check_alpha
from .validation import check_bool_mask, check_int, check_positive, check_rank, check_tensor

# Whether the kernels below were built for Triton's CPU interpreter: ``triton.jit``
# decides it when it decorates them, from TRITON_INTERPRET at this module's import.
INTERPRETED: bool = bool(knobs.runtime.interpret)

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# Kinds of map, by the power the weights take: a general alpha (u ** r with exp2/log2),
# 1.5-entmax (a square) and sparsemax (the identity).
_GENERAL, _ENTMAX15, _SPARSEMAX = 0, 1, 2

# Default tile sizes: 64 x 64 tiles with d = 128 in half precision use about 64 KiB of
# shared memory, well within an H100's 228 KiB, as in Triton's fused-attention tutorial.
BLOCK_M = 64
BLOCK_N = 64
# Iterations of the threshold on the 2 * BLOCK_N candidates of a row (see the forward
# kernel): in registers, far cheaper than a pass over the keys.
CANDIDATE_STEPS = 6


# ----------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------


# Reductions through ``tl.reduce`` with Triton's own combine functions (what ``tl.sum`` and
# ``tl.max`` do for floats and int32). Triton's interpreter patches ``tl.reduce`` and
# recognises these combine functions, whereas ``tl.sum``/``tl.max`` (like ``tl.zeros`` and
# ``tl.cdiv``, which the kernels avoid too) are themselves jitted in interpreted or compiled
# form when ``triton`` is first imported: so the kernels also run in the interpreter when
# ``triton`` was imported before TRITON_INTERPRET was set.
@triton.jit
def _sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _max(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@triton.jit
def _min(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_min)


@triton.jit
def _allowed(rows, cols, keep, n_q, n_k, CAUSAL: tl.constexpr):
    """True where query ``rows`` may attend key ``cols`` (broadcast index tensors)."""
    ok = (rows < n_q) & (cols < n_k) & keep
    if CAUSAL:
        # Bottom-right aligned: the last query sees every key.
        ok = ok & (cols <= rows + (n_k - n_q))
    return ok


@triton.jit
def _key_keep(kpm_row, offs_n, n_k, HAS_KPM: tl.constexpr):
    """``(block_n,)`` True for the keys of this tile the key-padding mask keeps."""
    # A constexpr if statement, which Triton resolves when compiling (no ternary here).
    if HAS_KPM:  # noqa: SIM108
        keep = tl.load(kpm_row + offs_n, mask=offs_n < n_k, other=0) != 0
    else:
        keep = offs_n < n_k
    return keep


@triton.jit
def _powers(u, r, KIND: tl.constexpr):
    """``(u ** r, u ** (r - 1))``, both 0 where ``u == 0``."""
    if KIND == 2:
        w = u
        s = (u > 0).to(tl.float32)
    elif KIND == 1:
        w = u * u
        s = u
    else:
        lg = tl.log2(tl.maximum(u, 1.1754943508222875e-38))
        on = u > 0
        w = tl.where(on, tl.exp2(r * lg), 0.0)
        s = tl.where(on, tl.exp2((r - 1.0) * lg), 0.0)
    return w, s


@triton.jit
def _row_pow(x, e):
    """``x ** e`` for a vector of ``x >= 0`` (0 ** e = 0 for e > 0)."""
    return tl.where(x > 0, tl.exp2(e * tl.log2(tl.maximum(x, 1.1754943508222875e-38))), 0.0)


@triton.jit
def _load_tile(base, offs_n, offs_d, n_k, HEAD_DIM: tl.constexpr):
    """Rows ``offs_n`` of a ``(n_k, HEAD_DIM)`` matrix, transposed: ``(HEAD_DIM, BLOCK_N)``,
    zeros past ``n_k``."""
    return tl.load(
        base + offs_n[None, :] * HEAD_DIM + offs_d[:, None],
        mask=offs_n[None, :] < n_k,
        other=0.0,
    )


@triton.jit
def _score_tile(
    q, k_base, offs_n, offs_d, coef, n_k, HEAD_DIM: tl.constexpr, PRECISION: tl.constexpr
):
    """``(BLOCK_M, BLOCK_N)`` scores times ``alpha - 1`` of the query block ``q`` against the
    keys ``offs_n`` (keys past ``n_k`` score 0: mask them with :func:`_masked`)."""
    kt = _load_tile(k_base, offs_n, offs_d, n_k, HEAD_DIM)
    return tl.dot(q, kt, input_precision=PRECISION) * coef


@triton.jit
def _masked(z, kpm_row, offs_m, offs_n, n_q, n_k, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr):
    """The score tile ``z`` ``(BLOCK_M, BLOCK_N)`` with ``-inf`` where query ``offs_m`` may not
    attend key ``offs_n``.

    Only the tiles on the causal diagonal, at the ragged end of the keys or under a padding
    mask need it: the leading tiles of a block (:func:`_unmasked_tiles`) skip the index
    arithmetic on every entry (their query rows past ``n_q`` are zeros, and are given
    infinite thresholds or zero output gradients instead).
    """
    keep = _key_keep(kpm_row, offs_n, n_k, HAS_KPM)
    ok = _allowed(offs_m[:, None], offs_n[None, :], keep[None, :], n_q, n_k, CAUSAL)
    return tl.where(ok, z, float("-inf"))


@triton.jit
def _unmasked_tiles(
    first_row, n_q, n_k, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr, BLOCK_N: tl.constexpr
):
    """How many leading key tiles a query block starting at ``first_row`` sees whole: inside
    the keys, no padding mask, and (causal) below the diagonal for its first row."""
    n_full = n_k // BLOCK_N
    if CAUSAL:
        n_full = tl.minimum(n_full, tl.maximum(first_row + n_k - n_q + 1, 0) // BLOCK_N)
    if HAS_KPM:
        n_full = 0
    return n_full


@triton.jit
def _keep_two_largest(first, second, z):
    """Entry-wise, the two largest of ``first >= second`` and ``z``: ``(first, second)``."""
    return tl.maximum(first, z), tl.maximum(second, tl.minimum(first, z))


@triton.jit
def _threshold_sums(z, c, r, KIND: tl.constexpr):
    """Row sums of one score tile at the thresholds ``c`` ``(BLOCK_M,)``.

    With ``u = [z - c]_+``: ``(sum u ** r, sum u ** (r - 1), sum u, #{u > 0}, min{u > 0})``.
    Only the sums a kind needs are computed (1.5-entmax: ``u ** (r - 1) = u``; sparsemax:
    ``u ** r = u`` and ``u ** (r - 1)`` is the support indicator); the smallest entry of the
    support (``inf`` if empty) only where a root is certified (sparsemax, 1.5-entmax).
    """
    u = tl.maximum(z - c[:, None], 0.0)
    on = u > 0
    size = _sum(tl.where(on, 1.0, 0.0), axis=1)
    sum_u = _sum(u, axis=1)
    if KIND == 2:
        sum_w = sum_u
        sum_s = size
    elif KIND == 1:
        sum_w = _sum(u * u, axis=1)
        sum_s = sum_u
    else:
        w, s = _powers(u, r, KIND)
        sum_w = _sum(w, axis=1)
        sum_s = _sum(s, axis=1)
    if KIND == 0:  # noqa: SIM108 (a constexpr if: Triton resolves it when compiling)
        low = size
    else:
        low = _min(tl.where(on, u, float("inf")), axis=1)
    return sum_w, sum_s, sum_u, size, low


@triton.jit
def _newton_update(tau, sum_w, sum_s, sum_u, size, low, am1, KIND: tl.constexpr):
    """One update of the row thresholds from the sums of :func:`_threshold_sums` at the
    lower bounds ``tau`` ``(BLOCK_M,)`` (offsets from the row max).

    Returns ``(step, root, certified)``: the next lower bound, the larger of a Newton step
    on ``||[z - tau]_+||_r - 1`` and Jensen's bound on the entries above ``tau``; and, for
    sparsemax and 1.5-entmax, the exact root on the support ``S = {z > tau}`` (Michelot's
    step; the smaller root of ``sum_S (z - t) ** 2 = 1``), ``certified`` where it is the
    threshold: every entry of ``S`` lies at or above it (entries outside ``S`` lie at or
    below ``tau``, below the root).
    """
    # Newton on the r-norm: h = F ** (1/r) - 1, h' = -F ** (1/r - 1) * sum(s).
    norm = _row_pow(sum_w, am1)
    newton = tau + tl.where(
        sum_s > 0, (norm - 1.0) * sum_w / tl.maximum(norm * sum_s, 1.1754943508222875e-38), 0.0
    )
    size1 = tl.maximum(size, 1.0)
    # Jensen on the entries above tau: another lower bound, free from the same sums.
    jensen = tau + tl.where(size > 0, sum_u / size1 - _row_pow(size, -am1), 0.0)
    step = tl.maximum(newton, jensen)
    # The root is not below tau (tau is a lower bound of the threshold): an offset below 0
    # is rounding, where tau has reached the threshold itself.
    if KIND == 2:
        offset = (sum_u - 1.0) / size1
        certified = (size > 0) & (low >= offset)
    elif KIND == 1:
        mu = sum_u / size1
        gap = (1.0 - (sum_w - size * mu * mu)) / size1
        offset = mu - tl.sqrt(tl.maximum(gap, 0.0))
        certified = (size > 0) & (gap >= 0) & (low >= offset)
    else:
        # A general alpha has no closed-form root on a support: never certified here.
        offset = step - tau
        certified = size < 0
    return step, tau + tl.maximum(offset, 0.0), certified


@triton.jit
def _output_tile(z, c, vt, acc, acc_s, norm_sum, den, r, KIND, NEED_S, PRECISION):
    """Add one key tile's weights ``[z - c]_+ ** r`` times its values ``vt`` to the output
    accumulators; also returns the tile's row sums of the weights."""
    u = tl.maximum(z - c[:, None], 0.0)
    w, s = _powers(u, r, KIND)
    acc += tl.dot(w.to(vt.dtype), vt, input_precision=PRECISION)
    tile_w = _sum(w, axis=1)
    norm_sum += tile_w
    if NEED_S:
        acc_s += tl.dot(s.to(vt.dtype), vt, input_precision=PRECISION)
        den += _sum(s, axis=1)
    return acc, acc_s, norm_sum, den, tile_w


@triton.jit
def _log_weight_tile(z, c, vt, acc_l, ent, r, PRECISION: tl.constexpr):
    """Add one key tile's ``w ln u`` (``u = [z - c]_+``, ``w = u ** r``, 0 off the support)
    times its values ``vt`` to ``acc_l``, and its row sums to ``ent``: the sums the gradient
    in alpha needs (see :func:`_alpha_gradient`)."""
    u = tl.maximum(z - c[:, None], 0.0)
    lg = tl.log2(tl.maximum(u, 1.1754943508222875e-38))
    wl = tl.where(u > 0, tl.exp2(r * lg) * (lg * 0.6931471805599453), 0.0)
    acc_l += tl.dot(wl.to(vt.dtype), vt, input_precision=PRECISION)
    ent += _sum(wl, axis=1)
    return acc_l, ent


@triton.jit
def _load_rows(base, offs_n, offs_d, n_k, HEAD_DIM: tl.constexpr):
    """Rows ``offs_n`` of a ``(n_k, HEAD_DIM)`` matrix, ``(BLOCK_N, HEAD_DIM)``, zeros past
    ``n_k``."""
    return tl.load(
        base + offs_n[:, None] * HEAD_DIM + offs_d[None, :], mask=offs_n[:, None] < n_k, other=0.0
    )


@triton.jit
def _entmax_fwd(
    Q,
    K,
    V,
    KPM,
    AM1,
    OUT,
    OUT_S,
    ROW_M,
    ROW_TAU,
    ROW_INVZ,
    ROW_DEN,
    OUT_L,
    ROW_ENT,
    TILES,
    COUNTS,
    FLAGS,
    scale,
    n_q,
    n_k,
    heads,
    n_iter,
    m_blocks,
    n_tiles,
    KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    NEED_S: tl.constexpr,
    ALPHA_GRAD: tl.constexpr,
    CANDIDATE_STEPS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    head = bh % heads
    bh64 = bh.to(tl.int64)
    am1 = tl.load(AM1 + head)
    r = 1.0 / am1
    coef = scale * am1
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    arange_n = tl.arange(0, BLOCK_N)
    row_valid = offs_m < n_q
    q_base = Q + bh64 * n_q * HEAD_DIM
    k_base = K + bh64 * n_k * HEAD_DIM
    v_base = V + bh64 * n_k * HEAD_DIM
    kpm_row = KPM + (bh // heads).to(tl.int64) * n_k
    q = tl.load(
        q_base + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
        mask=offs_m[:, None] < n_q,
        other=0.0,
    )

    # Key tiles a causal query block can see at all, and the leading ones that need no
    # mask: wholly inside the keys, no padding mask, and (causal) below the diagonal for
    # the block's first row.
    hi = n_k
    if CAUSAL:
        hi = tl.minimum(tl.maximum((pid_m + 1) * BLOCK_M + n_k - n_q, 0), n_k)
    n_full = _unmasked_tiles(pid_m * BLOCK_M, n_q, n_k, CAUSAL, HAS_KPM, BLOCK_N)
    reach = (hi + BLOCK_N - 1) // BLOCK_N
    n_full = tl.minimum(n_full, reach)

    # Pass A: the two largest z of each row in each of the BLOCK_N classes of keys
    # ``j mod BLOCK_N`` (three element-wise operations per entry, no reduction): 2 * BLOCK_N
    # of the row's own entries, and the row max among them.
    first = tl.full([BLOCK_M, BLOCK_N], float("-inf"), tl.float32)
    second = first
    for tile in range(0, n_full):
        z = _score_tile(
            q, k_base, tile * BLOCK_N + arange_n, offs_d, coef, n_k, HEAD_DIM, PRECISION
        )
        first, second = _keep_two_largest(first, second, z)
    for tile in range(n_full, reach):
        offs_n = tile * BLOCK_N + arange_n
        z = _score_tile(q, k_base, offs_n, offs_d, coef, n_k, HEAD_DIM, PRECISION)
        z = _masked(z, kpm_row, offs_m, offs_n, n_q, n_k, CAUSAL, HAS_KPM)
        first, second = _keep_two_largest(first, second, z)
    top = _max(first, axis=1)
    has_key = top > float("-inf")
    # Shift each row's max to 0 (rows with no allowed key: 0, their z stays -inf).
    top = tl.where(has_key, top, 0.0)

    # The threshold of the candidates alone is a lower bound of the row's (a subset's
    # r-norm at any threshold is at most the whole row's), and a close one: the support
    # is the row's largest entries, and a class rarely holds three of them. It comes from
    # iterations on the candidates in registers, from the bound tau >= -1 (the largest
    # weight (-tau) ** r is at most 1); a candidate root certified exact may sit a rounding
    # error above the row's threshold, hence the small step down.
    first = first - top[:, None]
    second = second - top[:, None]
    tau = tl.full([BLOCK_M], -1.0, tl.float32)
    start = tau
    for _ in tl.static_range(CANDIDATE_STEPS):
        sum_w, sum_s, sum_u, size, low = _threshold_sums(first, tau, r, KIND)
        w2, s2, u2, size2, low2 = _threshold_sums(second, tau, r, KIND)
        step, root, certified = _newton_update(
            tau,
            sum_w + w2,
            sum_s + s2,
            sum_u + u2,
            size + size2,
            tl.minimum(low, low2),
            am1,
            KIND,
        )
        start = tl.maximum(start, tl.where(certified, root - 1e-6, step))
        tau = step
    tau = tl.where(row_valid & has_key, start, -1.0)

    # Newton passes over the keys, until n_iter or (sparsemax, 1.5-entmax) every row of
    # the block holds a certified exact threshold. Rows past n_q and rows with no allowed
    # key are done.
    done = (offs_m >= n_q) | (has_key == 0)
    final = tau
    it = n_iter * 0
    go = it + 1
    while (it < n_iter) & (go > 0):
        c = tl.where(row_valid, top + tau, float("inf"))
        sum_w = tl.full([BLOCK_M], 0.0, tl.float32)
        sum_s = tl.full([BLOCK_M], 0.0, tl.float32)
        sum_u = tl.full([BLOCK_M], 0.0, tl.float32)
        size = tl.full([BLOCK_M], 0.0, tl.float32)
        low = tl.full([BLOCK_M], float("inf"), tl.float32)
        for tile in range(0, n_full):
            offs_n = tile * BLOCK_N + arange_n
            z = _score_tile(q, k_base, offs_n, offs_d, coef, n_k, HEAD_DIM, PRECISION)
            t_w, t_s, t_u, t_size, t_low = _threshold_sums(z, c, r, KIND)
            sum_w += t_w
            sum_s += t_s
            sum_u += t_u
            size += t_size
            low = tl.minimum(low, t_low)
        for tile in range(n_full, reach):
            offs_n = tile * BLOCK_N + arange_n
            z = _score_tile(q, k_base, offs_n, offs_d, coef, n_k, HEAD_DIM, PRECISION)
            z = _masked(z, kpm_row, offs_m, offs_n, n_q, n_k, CAUSAL, HAS_KPM)
            t_w, t_s, t_u, t_size, t_low = _threshold_sums(z, c, r, KIND)
            sum_w += t_w
            sum_s += t_s
            sum_u += t_u
            size += t_size
            low = tl.minimum(low, t_low)
        step, root, certified = _newton_update(tau, sum_w, sum_s, sum_u, size, low, am1, KIND)
        final = tl.where(certified & (done == 0), root, final)
        done = done | certified
        tau = step
        it += 1
        if KIND != 0:
            go = _max(tl.where(done, 0, 1), axis=0)
    if KIND != 0:
        # Certified rows take their root; the others (n_iter ran out) the last lower bound.
        tau = tl.where(done & has_key & row_valid, final, tau)

    # Output pass, recording the key tiles that hold any non-zero weight: the backward
    # visits only those.
    c = tl.where(row_valid, top + tau, float("inf"))
    acc = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    acc_s = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    norm_sum = tl.full([BLOCK_M], 0.0, tl.float32)
    den = tl.full([BLOCK_M], 0.0, tl.float32)
    acc_l = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    ent = tl.full([BLOCK_M], 0.0, tl.float32)
    tiles = TILES + (bh64 * m_blocks + pid_m) * n_tiles
    flags = FLAGS + (bh64 * m_blocks + pid_m) * n_tiles
    kept = reach * 0
    for tile in range(0, reach):
        offs_n = tile * BLOCK_N + arange_n
        z = _score_tile(q, k_base, offs_n, offs_d, coef, n_k, HEAD_DIM, PRECISION)
        if tile >= n_full:
            z = _masked(z, kpm_row, offs_m, offs_n, n_q, n_k, CAUSAL, HAS_KPM)
        vt = _load_rows(v_base, offs_n, offs_d, n_k, HEAD_DIM)
        acc, acc_s, norm_sum, den, tile_w = _output_tile(
            z, c, vt, acc, acc_s, norm_sum, den, r, KIND, NEED_S, PRECISION
        )
        if ALPHA_GRAD:
            acc_l, ent = _log_weight_tile(z, c, vt, acc_l, ent, r, PRECISION)
        active = (_max(tile_w, axis=0) > 0).to(tl.int32)
        tl.store(tiles + kept, tile)
        tl.store(flags + tile, active.to(tl.int8))
        kept += active
    for tile in range(reach, n_tiles):
        tl.store(flags + tile, tl.full([], 0, tl.int8))
    tl.store(COUNTS + bh64 * m_blocks + pid_m, kept)

    inv_z = tl.where(norm_sum > 0, 1.0 / tl.maximum(norm_sum, 1.1754943508222875e-38), 0.0)
    rows = bh64 * n_q + offs_m
    out_ptrs = OUT + rows[:, None] * HEAD_DIM + offs_d[None, :]
    tl.store(out_ptrs, (acc * inv_z[:, None]).to(OUT.dtype.element_ty), mask=row_valid[:, None])
    tl.store(ROW_M + rows, top, mask=row_valid)
    tl.store(ROW_TAU + rows, tau, mask=row_valid)
    tl.store(ROW_INVZ + rows, inv_z, mask=row_valid)
    if NEED_S:
        s_ptrs = OUT_S + rows[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(s_ptrs, acc_s, mask=row_valid[:, None])
        tl.store(ROW_DEN + rows, den, mask=row_valid)
    if ALPHA_GRAD:
        l_ptrs = OUT_L + rows[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(l_ptrs, acc_l, mask=row_valid[:, None])
        tl.store(ROW_ENT + rows, ent, mask=row_valid)


@triton.jit
def _entmax_bwd_dq(
    Q,
    K,
    V,
    KPM,
    AM1,
    DO,
    DQ,
    OUT_S,
    ROW_M,
    ROW_TAU,
    ROW_DEN,
    ROW_DELTA,
    TILES,
    COUNTS,
    scale,
    n_q,
    n_k,
    heads,
    m_blocks,
    n_tiles,
    KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    head = bh % heads
    bh64 = bh.to(tl.int64)
    am1 = tl.load(AM1 + head)
    r = 1.0 / am1
    coef = scale * am1
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    arange_n = tl.arange(0, BLOCK_N)
    k_base = K + bh64 * n_k * HEAD_DIM
    v_base = V + bh64 * n_k * HEAD_DIM
    kpm_row = KPM + (bh // heads).to(tl.int64) * n_k
    tiles = TILES + (bh64 * m_blocks + pid_m) * n_tiles
    count = tl.load(COUNTS + bh64 * m_blocks + pid_m)
    rows = bh64 * n_q + offs_m
    row_mask = offs_m < n_q
    q = tl.load(Q + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_mask[:, None], other=0.0)
    do = tl.load(DO + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_mask[:, None], other=0.0)
    top = tl.load(ROW_M + rows, mask=row_mask, other=0.0)
    tau = tl.load(ROW_TAU + rows, mask=row_mask, other=0.0)
    # delta_i = sum_j s_ij (dO_i . v_j) / sum_j s_ij = dO_i . (sum_j s_ij v_j) / sum_j s_ij,
    # stored for the dK/dV kernel, which runs next.
    out_s = tl.load(
        OUT_S + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=row_mask[:, None], other=0.0
    )
    den = tl.load(ROW_DEN + rows, mask=row_mask, other=0.0)
    numer = _sum(do.to(tl.float32) * out_s, axis=1)
    delta = tl.where(den > 0, numer / tl.maximum(den, 1.1754943508222875e-38), 0.0)
    tl.store(ROW_DELTA + rows, delta, mask=row_mask)
    # The thresholds exactly as the forward pass formed them, so the supports agree.
    c = top + tau
    n_full = _unmasked_tiles(pid_m * BLOCK_M, n_q, n_k, CAUSAL, HAS_KPM, BLOCK_N)
    dq = tl.full([BLOCK_M, HEAD_DIM], 0.0, tl.float32)
    for t in range(0, count):
        tile = tl.load(tiles + t)
        offs_n = tile * BLOCK_N + arange_n
        z = _score_tile(q, k_base, offs_n, offs_d, coef, n_k, HEAD_DIM, PRECISION)
        if tile >= n_full:
            z = _masked(z, kpm_row, offs_m, offs_n, n_q, n_k, CAUSAL, HAS_KPM)
        u = tl.maximum(z - c[:, None], 0.0)
        _, s = _powers(u, r, KIND)
        vt = _load_tile(v_base, offs_n, offs_d, n_k, HEAD_DIM)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = s * (dp - delta[:, None])
        k = _load_rows(k_base, offs_n, offs_d, n_k, HEAD_DIM)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * scale
    tl.store(
        DQ + rows[:, None] * HEAD_DIM + offs_d[None, :],
        dq.to(DQ.dtype.element_ty),
        mask=row_mask[:, None],
    )


@triton.jit
def _entmax_bwd_dkdv(
    Q,
    K,
    V,
    KPM,
    AM1,
    DO,
    DK,
    DV,
    ROW_M,
    ROW_TAU,
    ROW_INVZ,
    ROW_DELTA,
    FLAGS,
    scale,
    n_q,
    n_k,
    heads,
    m_blocks,
    n_tiles,
    KIND: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    head = bh % heads
    bh64 = bh.to(tl.int64)
    am1 = tl.load(AM1 + head)
    r = 1.0 / am1
    coef = scale * am1
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    arange_m = tl.arange(0, BLOCK_M)
    q_base = Q + bh64 * n_q * HEAD_DIM
    do_base = DO + bh64 * n_q * HEAD_DIM
    keys = bh64 * n_k + offs_n
    key_mask = offs_n < n_k
    k = tl.load(K + keys[:, None] * HEAD_DIM + offs_d[None, :], mask=key_mask[:, None], other=0.0)
    v = tl.load(V + keys[:, None] * HEAD_DIM + offs_d[None, :], mask=key_mask[:, None], other=0.0)
    kpm_row = KPM + (bh // heads).to(tl.int64) * n_k
    keep = _key_keep(kpm_row, offs_n, n_k, HAS_KPM)
    # The forward flagged, per query block, the key tiles holding any non-zero weight.
    flags = FLAGS + bh64 * m_blocks * n_tiles + pid_n
    dk = tl.full([BLOCK_N, HEAD_DIM], 0.0, tl.float32)
    dv = tl.full([BLOCK_N, HEAD_DIM], 0.0, tl.float32)
    for block in range(0, m_blocks):
        if tl.load(flags + block * n_tiles) != 0:
            offs_m = block * BLOCK_M + arange_m
            row_mask = offs_m < n_q
            rows = bh64 * n_q + offs_m
            qt = tl.load(
                q_base + offs_m[None, :] * HEAD_DIM + offs_d[:, None],
                mask=row_mask[None, :],
                other=0.0,
            )
            do = tl.load(
                do_base + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                mask=row_mask[:, None],
                other=0.0,
            )
            top = tl.load(ROW_M + rows, mask=row_mask, other=0.0)
            tau = tl.load(ROW_TAU + rows, mask=row_mask, other=0.0)
            inv_z = tl.load(ROW_INVZ + rows, mask=row_mask, other=0.0)
            delta = tl.load(ROW_DELTA + rows, mask=row_mask, other=0.0)
            # Transposed tile: keys along axis 0, queries along axis 1.
            zt = tl.dot(k, qt, input_precision=PRECISION) * coef
            if pid_n >= _unmasked_tiles(block * BLOCK_M, n_q, n_k, CAUSAL, HAS_KPM, BLOCK_N):
                ok = _allowed(offs_m[None, :], offs_n[:, None], keep[:, None], n_q, n_k, CAUSAL)
                zt = tl.where(ok, zt, float("-inf"))
            ut = tl.maximum(zt - (top + tau)[None, :], 0.0)
            wt, st = _powers(ut, r, KIND)
            pt = wt * inv_z[None, :]
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
            dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            dst = st * (dpt - delta[None, :])
            dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION)
    dk = dk * scale
    tl.store(
        DK + keys[:, None] * HEAD_DIM + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=key_mask[:, None],
    )
    tl.store(
        DV + keys[:, None] * HEAD_DIM + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=key_mask[:, None],
    )


# ----------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------


class _Config:
    """The non-tensor settings of one call, shared by the forward and backward launches."""

    def __init__(
        self,
        kind: int,
        causal: bool,
        scale: float,
        n_iter: int,
        block_m: int,
        block_n: int,
        heads: int,
        need_grad: bool,
        alpha_grad: bool,
    ) -> None:
        self.kind, self.causal, self.scale, self.n_iter = kind, causal, scale, n_iter
        self.block_m, self.block_n, self.heads = block_m, block_n, heads
        # Set outside the Function: inside its forward, grad mode is always off.
        self.need_grad, self.alpha_grad = need_grad, alpha_grad

    def launch_options(self, dtype: torch.dtype, head_dim: int) -> dict[str, Any]:
        # float32 inputs: exact float32 products, as the torch path computes (no TF32).
        precision = "ieee" if dtype == torch.float32 else "tf32"
        # Two float32 accumulators of (block_m, 128) need the registers of 8 warps.
        warps = 8 if head_dim == 128 else 4
        return {
            "KIND": self.kind,
            "CAUSAL": self.causal,
            "BLOCK_M": self.block_m,
            "BLOCK_N": self.block_n,
            "HEAD_DIM": head_dim,
            "PRECISION": precision,
            "num_warps": warps,
        }


class TritonEntmaxFunction(torch.autograd.Function):
    """Flash-style alpha-entmax attention (see :func:`triton_entmax_attention`).

    Inputs: contiguous ``q`` ``(B*H, n_q, d)``, ``k``, ``v`` ``(B*H, n_k, d)``, ``am1`` =
    ``alpha - 1`` per head ``(H,)`` float32 (differentiable when ``cfg.alpha_grad``), the
    key-padding mask ``(B, n_k)`` as uint8 (or None), a :class:`_Config`. Output
    ``(B*H, n_q, d)`` in the dtype of ``q``.
    """

    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, am1: Tensor, kpm: Tensor | None, cfg: _Config
    ) -> Tensor:
        bh, n_q, d = q.shape
        n_k = k.shape[1]
        need_s = cfg.need_grad
        m_blocks = triton.cdiv(n_q, cfg.block_m)
        n_tiles = max(1, triton.cdiv(n_k, cfg.block_n))
        f32, dev = torch.float32, q.device
        out = torch.empty_like(q)
        row_m, row_tau, row_invz = (torch.empty(bh, n_q, dtype=f32, device=dev) for _ in range(3))
        out_s = torch.empty(bh, n_q, d, dtype=f32, device=dev) if need_s else row_m
        row_den = torch.empty(bh, n_q, dtype=f32, device=dev) if need_s else row_m
        out_l = torch.empty(bh, n_q, d, dtype=f32, device=dev) if cfg.alpha_grad else row_m
        row_ent = torch.empty(bh, n_q, dtype=f32, device=dev) if cfg.alpha_grad else row_m
        tiles = torch.empty(bh, m_blocks, n_tiles, dtype=torch.int32, device=q.device)
        counts = torch.empty(bh, m_blocks, dtype=torch.int32, device=q.device)
        flags = torch.empty(bh, m_blocks, n_tiles, dtype=torch.int8, device=q.device)
        mask = kpm if kpm is not None else counts  # never read without HAS_KPM
        _entmax_fwd[(m_blocks, bh)](
            q,
            k,
            v,
            mask,
            am1,
            out,
            out_s,
            row_m,
            row_tau,
            row_invz,
            row_den,
            out_l,
            row_ent,
            tiles,
            counts,
            flags,
            cfg.scale,
            n_q,
            n_k,
            cfg.heads,
            cfg.n_iter,
            m_blocks,
            n_tiles,
            HAS_KPM=kpm is not None,
            NEED_S=need_s,
            ALPHA_GRAD=cfg.alpha_grad,
            CANDIDATE_STEPS=CANDIDATE_STEPS,
            **cfg.launch_options(q.dtype, d),
        )
        if need_s:
            # The output is saved through save_for_backward, never on ctx (a reference cycle).
            alpha_sums = (out, out_l, row_ent) if cfg.alpha_grad else ()
            ctx.save_for_backward(
                q,
                k,
                v,
                am1,
                kpm,
                row_m,
                row_tau,
                row_invz,
                out_s,
                row_den,
                tiles,
                counts,
                flags,
                *alpha_sums,
            )
        ctx.cfg = cfg
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (q, k, v, am1, kpm, row_m, row_tau, row_invz, out_s, row_den, tiles, counts, flags) = (
            ctx.saved_tensors[:13]
        )
        cfg: _Config = ctx.cfg
        bh, n_q, d = q.shape
        n_k = k.shape[1]
        m_blocks, n_tiles = tiles.shape[1], tiles.shape[2]
        grad_out = grad_out.to(q.dtype).contiguous()
        delta = torch.empty_like(row_den)
        grad_q, grad_k, grad_v = (torch.empty_like(x) for x in (q, k, v))
        mask = kpm if kpm is not None else counts
        options = cfg.launch_options(q.dtype, d)
        _entmax_bwd_dq[(m_blocks, bh)](
            q,
            k,
            v,
            mask,
            am1,
            grad_out,
            grad_q,
            out_s,
            row_m,
            row_tau,
            row_den,
            delta,
            tiles,
            counts,
            cfg.scale,
            n_q,
            n_k,
            cfg.heads,
            m_blocks,
            n_tiles,
            HAS_KPM=kpm is not None,
            **options,
        )
        _entmax_bwd_dkdv[(triton.cdiv(n_k, cfg.block_n), bh)](
            q,
            k,
            v,
            mask,
            am1,
            grad_out,
            grad_k,
            grad_v,
            row_m,
            row_tau,
            row_invz,
            delta,
            flags,
            cfg.scale,
            n_q,
            n_k,
            cfg.heads,
            m_blocks,
            n_tiles,
            HAS_KPM=kpm is not None,
            **options,
        )
        grad_am1 = None
        if cfg.alpha_grad:
            out, out_l, row_ent = ctx.saved_tensors[13:]
            grad_am1 = _alpha_gradient(grad_out, out, out_l, row_ent, row_invz, delta, am1)
        return grad_q, grad_k, grad_v, grad_am1, None, None


def _alpha_gradient(
    grad_out: Tensor,
    out: Tensor,
    out_l: Tensor,
    row_ent: Tensor,
    row_invz: Tensor,
    delta: Tensor,
    am1: Tensor,
) -> Tensor:
    """The gradient in ``alpha - 1`` per head ``(H,)``, from per-row sums alone.

    The ``entmax`` package's gradient of ``p = entmax_alpha(x)`` in alpha, with
    ``dP_ij = dO_i . v_j``, ``p_hat = s / sum_j s`` and ``H_i = sum_j p ln p``::

        d_i = sum_j dP_ij [(p - p_hat) / (alpha - 1) ** 2 - (p ln p - p_hat H_i) / (alpha - 1)]

    Every sum over keys is a row dot: ``sum_j dP_ij p_ij = dO_i . O_i``, ``sum_j dP_ij
    p_hat_ij = delta_i`` (the backward's own), and, with ``p = w / Z`` and ``ln p = r ln u
    - ln Z``, ``sum_j dP_ij p ln p = r / Z dO_i . L_i - ln Z dO_i . O_i`` and ``H_i =
    r / Z e_i - ln Z``, where ``L_i = sum_j w ln u v_j`` and ``e_i = sum_j w ln u`` come from
    the forward's output pass (:func:`_log_weight_tile`).

    Args:
        grad_out, out: ``(B*H, n_q, d)``; ``out_l``: ``L``, float32, same shape.
        row_ent: ``e``, ``row_invz``: ``1 / Z`` (0 for a row with no key), ``delta``: all
            float32 ``(B*H, n_q)``.
        am1: ``alpha - 1`` per head ``(H,)``.
    """
    heads = am1.shape[0]
    am1_rows = am1.detach().repeat(out.shape[0] // heads)[:, None]  # bh = b * H + h
    g = grad_out.float()
    dot_out = (g * out.float()).sum(-1)
    live = row_invz > 0
    log_invz = torch.where(live, row_invz, 1.0).log()
    dot_plogp = row_invz * (g * out_l).sum(-1) / am1_rows + log_invz * dot_out
    entropy = row_invz * row_ent / am1_rows + log_invz
    rows = (dot_out - delta) / am1_rows**2 - (dot_plogp - delta * entropy) / am1_rows
    return torch.where(live, rows, 0.0).view(-1, heads, out.shape[1]).sum((0, 2))


def default_newton_steps(n_k: int, alpha: float | None) -> int:
    """Newton passes for rows of ``n_k`` keys (see the module docstring for the measurements).

    ``alpha`` is the float alpha, or None for one alpha per head (sized for sparsemax,
    the slowest).
    """
    base = math.ceil(math.log2(max(n_k, 2)) / 2)
    return base + (1 if alpha is not None and alpha < 2 else 3)


def _check_block(value: object, name: str) -> int:
    check_int(value, name, minimum=16)
    assert isinstance(value, int)
    if value & (value - 1):
        raise ValueError(f"`{name}` must be a power of two >= 16, got {value}")
    return value


def _per_head_alpha(alpha: object, heads: int, device: torch.device) -> tuple[Tensor, float | None]:
    """``(alpha - 1 per head as float32 (heads,), the float alpha or None)``; raise if bad."""
    if isinstance(alpha, Tensor):
        check_alpha(alpha)
        if alpha.shape != (heads,):
            raise ValueError(
                f"`alpha` must be a float or a tensor of one alpha per head ({heads},), "
                f"got shape {tuple(alpha.shape)}"
            )
        # One host sync on a GPU alpha: above 2 the Newton passes are not safeguarded,
        # and a silently inexact result would be worse than the wait.
        if bool((alpha > 2).any()):
            raise ValueError(f"`alpha` must be in (1, 2], got max {alpha.max().item()}")
        # Differentiable: a learned alpha gets its gradient through alpha - 1.
        am1 = (alpha.to(device=device, dtype=torch.float32) - 1).contiguous()
        return am1, None
    check_alpha(alpha)
    value = float(alpha)  # type: ignore[arg-type]
    if value > 2:
        raise ValueError(f"`alpha` must be in (1, 2] (2 = sparsemax), got {value}")
    return torch.full((heads,), value - 1, dtype=torch.float32, device=device), value


def triton_entmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    alpha: float | Tensor,
    causal: bool = False,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    n_iter: int | None = None,
    block_m: int = BLOCK_M,
    block_n: int = BLOCK_N,
) -> Tensor:
    """alpha-entmax attention ``entmax_alpha(q @ k^T * scale) @ v`` by Triton kernels.

    Equals ``blockwise_attention(q, k, v, normalizer="entmax", alpha=alpha, ...)`` (to
    float32 rounding) without any ``(n_q, n_k)`` tensor; differentiable in ``q``, ``k``,
    ``v`` and a tensor ``alpha``. See the module docstring for the algorithm.

    Args:
        q: queries ``(batch, heads, n_q, d)``, ``d`` in 16, 32, 64, 128; float16, bfloat16
            or float32 (computed in float32, products of half inputs in their dtype).
        k: keys ``(batch, heads, n_k, d)``.
        v: values ``(batch, heads, n_k, d)``.
        alpha: in ``(1, 2]`` (2 = sparsemax, 1.5 = 1.5-entmax): a float, or a tensor
            ``(heads,)`` of one alpha per head, learnable (its range is checked with one
            host synchronisation).
        causal: forbid query ``i`` the keys ``j > i + (n_k - n_q)`` (bottom-right aligned).
        key_padding_mask: boolean ``(batch, n_k)``, True = may attend.
        scale: score scale, > 0; default ``1 / sqrt(d)``.
        n_iter: Newton passes over the keys; default :func:`default_newton_steps`.
        block_m, block_n: query rows and keys per tile, powers of two >= 16.

    Returns:
        ``(batch, heads, n_q, d)`` in the dtype of ``q``; rows with no allowed key are 0.
    """
    _check_tensors(q, k, v)
    batch, heads, n_q, d = q.shape
    n_k = k.shape[2]
    if not isinstance(causal, bool):
        raise TypeError(f"`causal` must be a bool, got {type(causal).__name__}")
    if scale is not None:
        check_positive(scale, "scale")
    block_m = _check_block(block_m, "block_m")
    block_n = _check_block(block_n, "block_n")
    am1, alpha_value = _per_head_alpha(alpha, heads, q.device)
    steps = default_newton_steps(n_k, alpha_value) if n_iter is None else n_iter
    check_int(steps, "n_iter")
    kpm = _padding_mask(key_padding_mask, batch, n_k, q.device)
    if batch * heads == 0 or n_q == 0:
        return q.new_zeros(batch, heads, n_q, d)
    if n_k == 0:
        return q.new_zeros(batch, heads, n_q, d)  # no key: every row is empty
    kind = {2.0: _SPARSEMAX, 1.5: _ENTMAX15}.get(alpha_value, _GENERAL)  # type: ignore[arg-type]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    alpha_grad = torch.is_grad_enabled() and am1.requires_grad
    need_grad = alpha_grad or (torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)))
    cfg = _Config(kind, causal, scale, steps, block_m, block_n, heads, need_grad, alpha_grad)
    flat = [x.contiguous().view(batch * heads, x.shape[2], d) for x in (q, k, v)]
    out = TritonEntmaxFunction.apply(*flat, am1, kpm, cfg)
    return out.view(batch, heads, n_q, d)


def _check_tensors(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_rank(x, 4, name, "(batch, heads, seq, d)")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"`q` must be float16, bfloat16 or float32, got {q.dtype}")
    d = q.shape[-1]
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"`q` must have a head size d in {SUPPORTED_HEAD_DIMS}, got {d}")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"`{name}` must have the dtype of `q` ({q.dtype}), got {x.dtype}")
        if x.device != q.device:
            raise ValueError(f"`{name}` must be on the device of `q` ({q.device}), got {x.device}")
        if x.shape[:2] != q.shape[:2] or x.shape[-1] != d:
            raise ValueError(
                f"`{name}` must have shape (batch, heads, n_k, d) = "
                f"({q.shape[0]}, {q.shape[1]}, n_k, {d}), got {tuple(x.shape)}"
            )
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"`v` must have the n_k = {k.shape[2]} keys of `k`, got {v.shape[2]}")
    if not (q.is_cuda or INTERPRETED):
        raise ValueError(
            f"the Triton kernels need CUDA tensors, got `q` on {q.device} (on a CPU they run "
            "only in Triton's interpreter: TRITON_INTERPRET=1 before this module is imported)"
        )


def _padding_mask(mask: object, batch: int, n_k: int, device: torch.device) -> Tensor | None:
    """The key-padding mask as a contiguous uint8 ``(batch, n_k)``, or None."""
    if mask is None:
        return None
    check_tensor(mask, "key_padding_mask")
    check_bool_mask(mask, "key_padding_mask")
    assert isinstance(mask, Tensor)
    if tuple(mask.shape) != (batch, n_k):
        raise ValueError(
            f"`key_padding_mask` must have shape (batch, n_k) = ({batch}, {n_k}), "
            f"got {tuple(mask.shape)}"
        )
    if mask.device != device:
        raise ValueError(
            f"`key_padding_mask` must be on the device of `q` ({device}), got {mask.device}"
        )
    return mask.to(torch.uint8).contiguous()


def triton_unsupported(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    alpha: float | Tensor,
    mask: Tensor | None,
) -> str | None:
    """Why the Triton kernel cannot take a :func:`blockwise_attention` call, or None if it can.

    ``alpha`` is the call's alpha (2.0 for sparsemax, 1.5 for entmax15); ``mask`` its mask
    (only a key-padding mask ``(batch, 1, 1, n_k)`` is supported).
    """
    if q.dim() != 4:
        return f"q of shape {tuple(q.shape)} (the kernel takes (batch, heads, n, d))"
    if not (q.is_cuda or INTERPRETED):
        return f"q on {q.device} (the kernel needs CUDA tensors)"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype {q.dtype}"
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head size d = {q.shape[-1]} (supported: {SUPPORTED_HEAD_DIMS})"
    if v.shape[-1] != q.shape[-1]:
        return f"a value size {v.shape[-1]} different from the head size {q.shape[-1]}"
    if isinstance(alpha, Tensor):
        shape = (1,) * (4 - alpha.dim()) + tuple(alpha.shape)
        if alpha.dim() > 4 or shape[0] != 1 or shape[2:] != (1, 1):
            return f"alpha of shape {tuple(alpha.shape)} (only one alpha per head)"
        if bool((alpha > 2).any()):  # a host sync for a GPU alpha; the torch path takes it
            return f"alpha up to {alpha.max().item()} > 2"
    elif float(alpha) > 2:
        return f"alpha = {alpha} > 2"
    if mask is not None:
        batch, n_k = q.shape[0], k.shape[-2]
        if mask.dim() != 4 or mask.shape[1:3] != (1, 1) or mask.shape[0] not in (1, batch):
            return f"mask of shape {tuple(mask.shape)} (only key padding (batch, 1, 1, n_k))"
        if mask.shape[-1] != n_k:
            return f"mask of shape {tuple(mask.shape)}"
    return None


def blockwise_call(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    alpha: float | Tensor,
    mask: Tensor | None,
    causal: bool,
    scale: float | None,
) -> Tensor:
    """Run a (checked, supported) :func:`blockwise_attention` call on the Triton kernel.

    ``alpha`` a float or a per-head tensor broadcastable to ``(1, heads, 1, 1)``; ``mask``
    None or ``(batch or 1, 1, 1, n_k)``.
    """
    heads = q.shape[1]
    if isinstance(alpha, Tensor):
        alpha = alpha.reshape(-1).expand(heads)
    kpm = None
    if mask is not None:
        kpm = mask.reshape(mask.shape[0], mask.shape[-1]).expand(q.shape[0], -1)
    return triton_entmax_attention(
        q, k, v, alpha=alpha, causal=causal, key_padding_mask=kpm, scale=scale
    )


__all__ = [
    "INTERPRETED",
    "TritonEntmaxFunction",
    "blockwise_call",
    "default_newton_steps",
    "triton_entmax_attention",
    "triton_unsupported",
]
