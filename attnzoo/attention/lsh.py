"""LSH attention, the attention of the Reformer (Kitaev et al. 2020).

Shared-QK attention: one projection gives the queries, and the keys are the same vectors
normalised to unit length, ``k_j = q_j / ||q_j||``. Softmax attention is dominated by the
keys closest to the query, so instead of scoring all ``n`` keys every query only scores
the keys that land in its hash bucket:

1. **Angular LSH.** A random matrix ``R`` ``(d, n_buckets / 2)`` projects every vector;
   its bucket is ``argmax([x R; -x R])`` (``n_buckets`` even). Nearby directions tend to
   share a bucket. ``n_hashes`` rounds use independent matrices.
2. **Sort and chunk.** In every round the positions are sorted by ``(bucket, position)``
   and cut into chunks of ``chunk_length``; each chunk attends to itself and to the
   chunk before it (the look-back), so a bucket that straddles a chunk boundary is still
   seen. Scores ``(n / m) x m x 2m`` instead of ``n x n``.
3. **Rules.** A query never attends to itself unless no other key is available (its own
   key would always score highest); a causal query only sees positions ``j <= i``; padded
   keys are never seen; ``attend_across_buckets=False`` also hides keys of other buckets
   that share the chunk window.
4. **Several rounds.** Each round gives an output and the log-sum-exp of its scores; the
   rounds are combined with weights ``softmax_r(lse_r)``. A key seen in ``N_ij`` rounds has
   ``log N_ij`` taken off its score in each of them (the paper's duplicate counting), so
   the result is exactly softmax attention over the union of the rounds' key sets.
5. Undo the sort.

With ``chunk_length >= n`` every round sees every key and the result is dense shared-QK
attention with the self rule; :func:`lsh_allowed_mask` gives the key set a query sees in
general, for tests and plots.

Randomness: without ``rotations`` the random matrices are drawn at every call (from
``generator``, else the global RNG), as the Reformer does; pass ``rotations`` (see
:func:`random_rotations`) or give :class:`LSHAttention` a ``seed`` for fixed hashing.
Only softmax is supported: combining rounds needs the log-sum-exp of the scores.

**Decoding with a cache** (causal only, fixed rotations only). An :class:`LSHCache` keeps
the keys (the shared vectors normalised), the values and every cached position's bucket in
every round. A step (:func:`lsh_cached_attention`, or :class:`LSHAttention` called with
``cache=``) hashes the ``n`` new vectors with the same rotations and appends them; new
query ``i`` then sees, in round ``r``, every cached or new key ``j <= i``, ``j != i``, that
is a real token and whose round-``r`` bucket equals its own, *whatever its distance in the
sorted order*: there is no chunk window. The rounds are combined as in the full pass
(``log N_ij`` taken off, weights ``softmax_r(lse_r)``), so a step is exactly softmax
attention over the union of the query's same-bucket causal keys, with the same self rule.
This key set depends on positions ``j <= i`` only, so decoding token by token, in blocks,
or a whole prompt through an empty cache all give the same outputs; and it is NOT the
chunked full pass's: there, a query sees the keys of its own and the previous chunk of the
order sorted by ``(bucket, position)`` (keys of other buckets too, unless
``attend_across_buckets=False``), and which keys fall in that window also depends on the
later positions. The two agree exactly when the full pass is a single chunk
(``chunk_length >= n``) with ``attend_across_buckets=False``. (Hugging Face's Reformer,
decoding with ``past_buckets_states``, instead gathers a window of chunks of the
bucket-sorted cached order around the new query.) A step scores every cached key once
(``O(n_hashes * n * (n_cached + n))`` work and memory), as dense decoding does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .multi_head import KVCache, resolve_dim_head, xavier_init_
from .validation import (
    check_bool_mask,
    check_int,
    check_positive,
    check_probability,
    check_rank,
    check_size,
)

LOW_PRECISION = (torch.float16, torch.bfloat16)


def random_rotations(
    heads: int,
    dim_head: int,
    n_buckets: int,
    n_hashes: int = 1,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Random projections of the angular LSH, standard normal entries.

    Args:
        heads: number of heads (each hashes with its own matrices).
        dim_head: width of the hashed vectors.
        n_buckets: number of buckets, an even int >= 2.
        n_hashes: number of hash rounds.
        generator: optional ``torch.Generator`` (on ``device``) for reproducible hashing.

    Returns:
        ``(heads, n_hashes, dim_head, n_buckets // 2)``.
    """
    check_int(heads, "heads")
    check_int(dim_head, "dim_head")
    _check_buckets(n_buckets)
    check_int(n_hashes, "n_hashes")
    shape = (heads, n_hashes, dim_head, n_buckets // 2)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def lsh_buckets(x: Tensor, rotations: Tensor) -> Tensor:
    """Bucket of every vector in every round: ``argmax([x R; -x R])``.

    Args:
        x: ``(batch, heads, n, d)``.
        rotations: ``(heads, n_hashes, d, n_buckets // 2)``.

    Returns:
        ``(batch, heads, n_hashes, n)`` int64 in ``[0, n_buckets)``.
    """
    check_rank(x, 4, "x", "(batch, heads, n, d)")
    _check_rotations(rotations, x.shape[1], x.shape[-1])
    projected = torch.einsum("bhnd,hrdk->bhrnk", x, rotations.to(x.dtype))
    return torch.cat([projected, -projected], dim=-1).argmax(dim=-1)


def lsh_allowed_mask(
    buckets: Tensor,
    chunk_length: int,
    *,
    causal: bool = False,
    attend_across_buckets: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    """The keys each query sees in some round, as a dense mask (for tests and plots).

    Query ``i`` sees key ``j != i`` when, in some round, ``j``'s chunk (in the order sorted
    by ``(bucket, position)``) is ``i``'s chunk or the one before it, ``j`` is a real token,
    ``j <= i`` when causal, and the buckets agree unless ``attend_across_buckets``. The
    self key is not included: :func:`lsh_attention` falls back to it only when a query
    sees nothing else. ``O(n^2)`` memory.

    Args:
        buckets: ``(batch, heads, n_hashes, n)`` from :func:`lsh_buckets`.
        chunk_length: positions per chunk, an int >= 1.
        mask: key-padding mask ``(batch, n)``, True = real token.

    Returns:
        ``(batch, heads, n, n)`` boolean.
    """
    check_rank(buckets, 4, "buckets", "(batch, heads, n_hashes, n)")
    check_int(chunk_length, "chunk_length")
    n = buckets.shape[-1]
    positions = torch.arange(n, device=buckets.device)
    order = (buckets * n + positions).argsort(dim=-1)
    rank = torch.empty_like(order).scatter_(-1, order, positions.expand_as(order))
    chunk = rank // chunk_length  # (b, h, r, n)
    offset = chunk[..., :, None] - chunk[..., None, :]  # query chunk - key chunk
    seen = (offset == 0) | (offset == 1)
    if not attend_across_buckets:
        seen = seen & (buckets[..., :, None] == buckets[..., None, :])
    allowed = seen.any(dim=2) & ~torch.eye(n, dtype=torch.bool, device=buckets.device)
    if causal:
        allowed = allowed & (positions[None, :] <= positions[:, None])
    if mask is not None:
        check_bool_mask(mask, "mask")
        allowed = allowed & mask[:, None, None, :]
    return allowed


def lsh_attention(
    qk: Tensor,
    v: Tensor,
    *,
    n_buckets: int,
    n_hashes: int = 1,
    chunk_length: int = 64,
    causal: bool = False,
    mask: Tensor | None = None,
    attend_across_buckets: bool = True,
    rotations: Tensor | None = None,
    generator: torch.Generator | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    training: bool = True,
) -> Tensor:
    """Shared-QK softmax attention over LSH buckets (see the module docstring).

    Args:
        qk: shared queries/keys ``(batch, heads, n, d)``; keys are ``qk`` normalised.
        v: values ``(batch, heads, n, d_v)``.
        n_buckets: buckets per round, an even int >= 2.
        n_hashes: hash rounds, an int >= 1.
        chunk_length: positions per chunk, an int >= 1; each chunk also sees the previous.
        causal: query ``i`` only sees keys ``j <= i``.
        mask: key-padding mask ``(batch, n)``, True = real token.
        attend_across_buckets: let a query see keys of other buckets that share its chunk
            window (the Reformer's default); False restricts it to its own bucket.
        rotations: fixed ``(heads, n_hashes, d, n_buckets // 2)`` projections; default:
            drawn now by :func:`random_rotations` from ``generator``.
        generator: ``torch.Generator`` for the drawn rotations (global RNG if None).
        scale: score scale, > 0; default ``1 / sqrt(d)``.
        dropout: attention-weight dropout, in [0, 1).
        training: apply dropout only when True.

    Returns:
        ``(batch, heads, n, d_v)``. A query that sees no key at all (all padding) gives
        zeros; one that sees only itself gives its own value.
    """
    _check_inputs(qk, v, mask, n_buckets, n_hashes, chunk_length, causal, scale, dropout)
    heads, n, d = qk.shape[1:]
    if rotations is None:
        rotations = random_rotations(
            heads, d, n_buckets, n_hashes, generator=generator, device=qk.device
        )
    else:
        _check_rotations(rotations, heads, d, n_buckets, n_hashes)
    dtype = qk.dtype
    if dtype in LOW_PRECISION:  # scores, exponentials and log-sum-exps in float32
        qk, v = qk.float(), v.float()
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    p_drop = dropout if training else 0.0
    if n == 0:
        return v.to(dtype)

    buckets = lsh_buckets(qk, rotations)  # (b, h, r, n)
    positions = torch.arange(n, device=qk.device)
    order = (buckets * n + positions).argsort(dim=-1)  # sorted slot -> position
    rank = torch.empty_like(order).scatter_(-1, order, positions.expand_as(order))

    m = min(chunk_length, n)
    n_chunks = -(-n // m)
    # Slots past n (the last chunk's padding) hold position -1.
    slot_pos = F.pad(order, (0, n_chunks * m - n), value=-1)  # (b, h, r, N)
    q_pos = slot_pos.unflatten(-1, (n_chunks, m))  # (b, h, r, C, m)
    k_pos = _with_previous_chunk(q_pos, fill=-1)  # (b, h, r, C, 2m)

    keys = F.normalize(qk, dim=-1)
    # Scaled on the (n, d) side: the scores are the largest tensor here, and every pass
    # over them (or fresh copy of them) counts; below they are changed in place.
    q_chunks = _gather_positions(qk * scale, q_pos)  # (b, h, r, C, m, d)
    k_chunks = _gather_positions(keys, k_pos)  # (b, h, r, C, 2m, d)
    v_chunks = _gather_positions(v, k_pos)
    scores = torch.matmul(q_chunks, k_chunks.transpose(-2, -1))  # (b, h, r, C, m, 2m)

    allowed = _allowed(q_pos, k_pos, buckets, mask, causal, attend_across_buckets)
    if n_hashes > 1:
        counts = _round_counts(
            q_pos, k_pos, rank // m, n_chunks, buckets, attend_across_buckets, scores.dtype
        )
        scores = scores.sub_(counts.log_())
    weights, lse = _round_softmax(scores, allowed, p_drop)
    out_sorted = torch.matmul(weights, v_chunks).flatten(3, 4)[..., :n, :]  # (b, h, r, n, dv)
    lse_sorted = lse.flatten(3, 5)[..., :n]  # (b, h, r, n)
    seen_sorted = allowed.any(dim=-1).flatten(3, 4)[..., :n]

    # Undo the sort: position p sits at slot rank[p] of its round.
    out = out_sorted.gather(-2, rank.unsqueeze(-1).expand(*rank.shape, v.shape[-1]))
    out = _combine_rounds(out, lse_sorted.gather(-1, rank))
    seen = seen_sorted.gather(-1, rank).any(dim=2)  # (b, h, n)
    return _self_if_alone(out, v, seen, None if mask is None else mask[:, None, :]).to(dtype)


@dataclass
class LSHCache(KVCache):
    """Decoding cache of causal LSH attention: a :class:`KVCache` that also keeps the
    bucket of every cached position in every hash round.

    ``key`` holds the cached keys (the shared query/key vectors normalised to unit length)
    and ``value`` the values, ``(batch, heads, n_cached, dim_head)`` each; ``buckets`` is
    ``(batch, heads, n_hashes, n_cached)`` int64; all None while empty. Batch-first, so beam
    search can reorder it. It is filled by :func:`lsh_cached_attention` (or
    :class:`LSHAttention` called with ``cache=``) through :meth:`extend`, which keeps the
    three aligned; use one cache per module and per sequence batch.
    """

    buckets: Tensor | None = None

    def extend(self, key: Tensor, value: Tensor, buckets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Add ``(batch, heads, n_new, dim_head)`` keys/values and their buckets
        ``(batch, heads, n_hashes, n_new)``; return all cached ones."""
        key, value = self.append(key, value)
        self.buckets = buckets if self.buckets is None else torch.cat([self.buckets, buckets], -1)
        return key, value, self.buckets

    def reset(self) -> None:
        """Empty the cache (start a new sequence)."""
        super().reset()
        self.buckets = None


def lsh_cached_attention(
    qk: Tensor,
    v: Tensor,
    cache: LSHCache,
    *,
    rotations: Tensor | None,
    mask: Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    training: bool = True,
) -> Tensor:
    """One decoding step of causal shared-QK LSH attention over an :class:`LSHCache`.

    The ``n`` new positions follow the ``n_cached`` cached ones: they are hashed with
    ``rotations`` and appended to ``cache`` (in place). New query ``i`` sees, in each round,
    the cached and new keys ``j <= i``, ``j != i``, that are real tokens and share its bucket
    in that round (no chunk window: see the module docstring for how this key set differs
    from the chunked full pass); the rounds are combined with the ``log N_ij`` correction,
    which makes the result softmax attention over the union of the rounds' key sets. A query
    that sees no key attends to itself (a padded one gives zeros).

    Args:
        qk: new shared queries/keys ``(batch, heads, n, d)``.
        v: new values ``(batch, heads, n, d_v)``.
        cache: the :class:`LSHCache` of the earlier steps (empty for the first).
        rotations: the FIXED ``(heads, n_hashes, d, n_buckets // 2)`` projections every step
            of the sequence uses (required: hashing drawn anew at every step would put the
            new positions in buckets unrelated to the cached ones).
        mask: key-padding mask ``(batch, n_cached + n)``, True = real token.
        scale: score scale, > 0; default ``1 / sqrt(d)``.
        dropout: attention-weight dropout (on every round's weights), in [0, 1).
        training: apply dropout only when True.

    Returns:
        ``(batch, heads, n, d_v)``. The cache is extended only when every argument is valid.
    """
    _check_qk_v(qk, v)
    if not isinstance(cache, LSHCache):
        raise TypeError(
            f"`cache` must be an LSHCache (keys, values and buckets), got {type(cache).__name__}"
        )
    if rotations is None:
        raise ValueError(
            "`rotations` must be the fixed (heads, n_hashes, d, n_buckets // 2) projections "
            "to decode with a cache (rotations drawn anew at every step would hash the new "
            "positions unlike the cached ones), got None"
        )
    b, heads, n, d = qk.shape
    _check_rotations(rotations, heads, d)
    n_hashes = rotations.shape[1]
    _check_cache_shapes(cache, (b, heads, d, v.shape[-1], n_hashes), qk.dtype)
    n_cached = len(cache)
    n_keys = n_cached + n
    if mask is not None:
        check_bool_mask(mask, "mask")
        if tuple(mask.shape) != (b, n_keys):
            raise ValueError(
                f"`mask` must have shape (batch, n_cached + n) = {(b, n_keys)} "
                f"({n_cached} cached positions), got {tuple(mask.shape)}"
            )
    check_probability(dropout, "dropout")
    if scale is not None:
        check_positive(scale, "scale")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    p_drop = dropout if training else 0.0

    dtype = qk.dtype
    work = torch.float32 if dtype in LOW_PRECISION else dtype  # as the full pass computes
    qk_w, v_w = qk.to(work), v.to(work)
    new_buckets = lsh_buckets(qk_w, rotations)  # (b, h, r, n)
    keys, values, buckets = cache.extend(F.normalize(qk_w, dim=-1).to(dtype), v, new_buckets)
    if n == 0:
        return v

    query_pos = torch.arange(n_cached, n_keys, device=qk.device).unsqueeze(-1)
    key_pos = torch.arange(n_keys, device=qk.device)
    visible = (key_pos <= query_pos) & (key_pos != query_pos)  # (n, n_keys)
    if mask is not None:
        visible = visible & mask[:, None, None, None, :]  # (b, 1, 1, n, n_keys)
    allowed = (new_buckets.unsqueeze(-1) == buckets.unsqueeze(-2)) & visible  # (b, h, r, n, k)
    scores = torch.matmul(qk_w, keys.to(work).transpose(-2, -1)).unsqueeze(2) * scale
    if n_hashes > 1:
        counts = allowed.sum(dim=2, keepdim=True).clamp_min(1)  # N_ij, (b, h, 1, n, k)
        scores = scores - torch.log(counts.to(scores.dtype))
    weights, lse = _round_softmax(scores, allowed, p_drop)
    out = _combine_rounds(torch.matmul(weights, values.to(work).unsqueeze(2)), lse.squeeze(-1))
    seen = allowed.any(dim=-1).any(dim=2)  # (b, h, n)
    real_query = None if mask is None else mask[:, None, n_cached:]
    return _self_if_alone(out, v_w, seen, real_query).to(dtype)


def _check_cache_shapes(
    cache: LSHCache, expected: tuple[int, int, int, int, int], dtype: torch.dtype
) -> None:
    """A filled ``cache`` must continue inputs of ``(batch, heads, d, d_v, n_hashes)`` and
    ``dtype``."""
    if cache.key is None or cache.value is None or cache.buckets is None:
        if not (cache.key is None and cache.value is None and cache.buckets is None):
            raise ValueError(
                "`cache` must hold keys, values and buckets together (or none of them); "
                "fill it through lsh_cached_attention or LSHAttention, not KVCache.append"
            )
        return
    if cache.key.dtype != dtype or cache.value.dtype != dtype:
        raise TypeError(
            f"`cache` holds keys/values of dtype {cache.key.dtype}/{cache.value.dtype}, but "
            f"the new `qk` and `v` are {dtype}"
        )
    b, heads, d, d_v, n_hashes = expected
    n_cached = cache.key.shape[-2] if cache.key.dim() == 4 else -1
    for name, got, want in (
        ("key", cache.key.shape, (b, heads, n_cached, d)),
        ("value", cache.value.shape, (b, heads, n_cached, d_v)),
        ("buckets", cache.buckets.shape, (b, heads, n_hashes, n_cached)),
    ):
        if tuple(got) != want:
            raise ValueError(
                f"`cache` holds {name} of shape {tuple(got)}, but the inputs (batch, heads, "
                f"d, d_v, n_hashes) = {expected} continue a cache of shape {want}"
            )


def _round_softmax(scores: Tensor, allowed: Tensor, p_drop: float) -> tuple[Tensor, Tensor]:
    """Every round's softmax over its allowed keys (the last dimension), with dropout, and
    its log-sum-exp ``(..., 1)``.

    Forbidden keys get the lowest float, not ``-inf``: in a row with an allowed key their
    weight underflows to exactly 0, and a row with none stays finite (uniform weights, a
    log-sum-exp near the lowest float, so the rounds' combination gives it weight 0, and a
    query with no key in any round is replaced by :func:`_self_if_alone`). ``scores`` is
    overwritten when it has the shape of ``allowed``.
    """
    lowest = torch.finfo(scores.dtype).min
    fill = scores.masked_fill_ if scores.shape == allowed.shape else scores.masked_fill
    weights, lse = _SoftmaxAndLogSumExp.apply(fill(~allowed, lowest))
    return F.dropout(weights, p_drop, training=p_drop > 0), lse


class _SoftmaxAndLogSumExp(torch.autograd.Function):
    """Softmax along the last axis and its log-sum-exp ``(..., 1)``, from one fused softmax.

    At a row's maximum ``s_k``, ``w_k = exp(s_k - lse)``, so ``lse = max(s) - log(max(w))``:
    two reductions instead of logsumexp's own passes and copies. The backward is one fused
    softmax backward plus the log-sum-exp's term, ``w * g_lse`` (autograd through the two
    maxima would cost several passes over the scores).
    """

    @staticmethod
    def forward(ctx: Any, scores: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        weights = torch.softmax(scores, dim=-1)
        lse = scores.amax(dim=-1, keepdim=True) - weights.amax(dim=-1, keepdim=True).log()
        ctx.save_for_backward(weights)
        return weights, lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_weights: Tensor | None, grad_lse: Tensor | None) -> Tensor:  # type: ignore[override]
        (weights,) = ctx.saved_tensors
        if grad_weights is None:
            grad = torch.zeros_like(weights)
        else:
            grad = torch.ops.aten._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
        if grad_lse is not None:
            grad.addcmul_(weights, grad_lse)
        return grad


def _combine_rounds(out: Tensor, lse: Tensor) -> Tensor:
    """Rounds' outputs ``(b, h, r, n, dv)`` weighted by ``softmax_r`` of their log-sum-exps
    ``(b, h, r, n)`` -> ``(b, h, n, dv)``: softmax over the union of the rounds' keys (the
    scores already carry the ``log N_ij`` duplicate correction)."""
    return (torch.softmax(lse, dim=2).unsqueeze(-1) * out).sum(dim=2)


def _self_if_alone(out: Tensor, v: Tensor, seen: Tensor, real_query: Tensor | None) -> Tensor:
    """A query that saw no key in any round (``seen`` ``(b, h, n)`` False) attends to itself
    (``v`` ``(b, h, n, dv)``), unless it is padding (``real_query`` broadcastable to
    ``(b, h, n)``, False), which gives zeros (its ``out`` is a finite average of no
    meaning, see :func:`_round_softmax`)."""
    alone = ~seen if real_query is None else ~seen & real_query
    return torch.where(alone.unsqueeze(-1), v, out * seen.unsqueeze(-1))


def _with_previous_chunk(positions: Tensor, fill: int) -> Tensor:
    """``(..., C, m)`` -> ``(..., C, 2m)``: each chunk's slots preceded by those of the chunk
    before it (``fill`` before the first chunk; no wrap-around)."""
    previous = torch.roll(positions, 1, dims=-2)
    previous[..., 0, :] = fill
    return torch.cat([previous, positions], dim=-1)


def _gather_positions(x: Tensor, positions: Tensor) -> Tensor:
    """Rows of ``x`` ``(b, h, n, d)`` at ``positions`` ``(b, h, r, C, s)`` (-1 gives row 0)
    -> ``(b, h, r, C, s, d)``."""
    b, h, _, d = x.shape
    flat = positions.clamp_min(0).flatten(2)  # (b, h, r * C * s)
    rows = x.gather(2, flat.unsqueeze(-1).expand(b, h, flat.shape[-1], d))
    return rows.view(*positions.shape, d)


def _allowed(
    q_pos: Tensor,
    k_pos: Tensor,
    buckets: Tensor,
    mask: Tensor | None,
    causal: bool,
    attend_across_buckets: bool,
) -> Tensor:
    """``(b, h, r, C, m, 2m)`` boolean: the key slot is a real, visible, non-self key."""
    qp, kp = q_pos.unsqueeze(-1), k_pos.unsqueeze(-2)
    allowed = (qp >= 0) & (kp >= 0) & (qp != kp)
    if causal:
        allowed = allowed & (kp <= qp)
    if mask is not None:
        real = mask[:, None, None, None, :].expand(*k_pos.shape[:-1], mask.shape[-1])
        allowed = allowed & real.gather(-1, k_pos.clamp_min(0)).unsqueeze(-2)
    if not attend_across_buckets:
        q_bucket = _gather_last(buckets, q_pos)
        k_bucket = _gather_last(buckets, k_pos)
        allowed = allowed & (q_bucket.unsqueeze(-1) == k_bucket.unsqueeze(-2))
    return allowed


def _gather_last(per_position: Tensor, positions: Tensor) -> Tensor:
    """``per_position`` ``(b, h, r, n)`` read at ``positions`` ``(b, h, r, C, s)`` of the same
    round (-1 reads position 0)."""
    flat = positions.clamp_min(0).flatten(3)  # (b, h, r, C * s)
    return per_position.gather(-1, flat).view(positions.shape)


def _round_counts(
    q_pos: Tensor,
    k_pos: Tensor,
    chunk: Tensor,
    n_chunks: int,
    buckets: Tensor,
    attend_across_buckets: bool,
    dtype: torch.dtype,
) -> Tensor:
    """``N_ij``: in how many rounds key ``j`` is in the window of query ``i``, for every
    ``(b, h, r, C, m, 2m)`` slot pair (at least 1 where the pair is real), in ``dtype``.

    ``chunk`` ``(b, h, r', n)`` is the chunk (below ``n_chunks``) of every position in every
    round; the pair is in round ``r'``'s window when ``chunk_r'(i) - chunk_r'(j)`` is 0 or 1
    (and the buckets agree without ``attend_across_buckets``). One round at a time, on the
    narrowest integers: every pass over the pairs is memory-bound, and the pairs of all
    rounds at once in int64 took most of the forward pass (n = 2048, four rounds).
    """
    rounds = chunk.shape[2]
    chunk = chunk.to(torch.int16 if n_chunks < 2**15 else torch.int32)

    def at_pairs(per_position: Tensor, other: int) -> tuple[Tensor, Tensor]:
        """Round ``other``'s value of each query ``(..., m, 1)`` and key ``(..., 1, 2m)``."""
        in_round = per_position[:, :, other : other + 1].expand_as(per_position)
        return (
            _gather_last(in_round, q_pos).unsqueeze(-1),
            _gather_last(in_round, k_pos).unsqueeze(-2),
        )

    # At most `rounds` per pair: uint8 holds it (hash rounds are far fewer than 256).
    count_dtype = torch.uint8 if rounds < 256 else torch.int32
    counts = torch.zeros(q_pos.shape + k_pos.shape[-1:], dtype=count_dtype, device=q_pos.device)
    for other in range(rounds):
        q_chunk, k_chunk = at_pairs(chunk, other)
        # (offset & ~1) is zero exactly for offsets 0 and 1 (two's complement).
        seen = (q_chunk - k_chunk).bitwise_and_(-2) == 0
        if not attend_across_buckets:
            q_bucket, k_bucket = at_pairs(buckets, other)
            seen = seen & (q_bucket == k_bucket)
        counts += seen
    return counts.clamp_min_(1).to(dtype)


class LSHAttention(nn.Module):
    """Multi-head shared-QK LSH self-attention (the Reformer's attention layer).

    Parameters: ``query_key`` (``dim -> heads * dim_head``, the shared projection),
    ``value`` (``dim -> heads * dim_head``) and ``out`` (``heads * dim_head -> dim``);
    Xavier-uniform weights and zero biases.

    Args:
        dim: model width.
        heads: number of heads.
        n_buckets: buckets per hash round, an even int >= 2 (the paper takes about
            ``n / chunk_length``).
        n_hashes: hash rounds (more rounds: closer to full attention, more work).
        chunk_length: positions per chunk.
        causal: query ``i`` only sees keys ``j <= i``.
        attend_across_buckets: see :func:`lsh_attention`.
        dim_head: width of a head; default ``dim // heads``.
        dropout: attention-weight dropout, in training mode only.
        bias: whether the projections have biases.
        seed: fixed hashing: the rotations are drawn once from this seed (a buffer, not
            saved in the state dict). None draws new rotations at every call from the
            global RNG, as the Reformer does (reproducible with ``torch.manual_seed``).
    """

    rotations: Tensor | None

    def __init__(
        self,
        dim: int,
        heads: int,
        n_buckets: int = 8,
        n_hashes: int = 1,
        chunk_length: int = 64,
        causal: bool = False,
        attend_across_buckets: bool = True,
        dim_head: int | None = None,
        dropout: float = 0.0,
        bias: bool = True,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        dim_head = resolve_dim_head(dim, heads, dim_head)
        _check_buckets(n_buckets)
        check_int(n_hashes, "n_hashes")
        check_int(chunk_length, "chunk_length")
        check_probability(dropout, "dropout")
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.n_buckets, self.n_hashes, self.chunk_length = n_buckets, n_hashes, chunk_length
        self.causal, self.attend_across_buckets, self.dropout = (
            causal,
            attend_across_buckets,
            dropout,
        )
        self.seed = seed
        inner = heads * dim_head
        self.query_key = nn.Linear(dim, inner, bias=bias)
        self.value = nn.Linear(dim, inner, bias=bias)
        self.out = nn.Linear(inner, dim, bias=bias)
        rotations = None
        if seed is not None:
            check_int(seed, "seed", minimum=0)
            generator = torch.Generator().manual_seed(seed)
            rotations = random_rotations(heads, dim_head, n_buckets, n_hashes, generator=generator)
        self.register_buffer("rotations", rotations, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases."""
        xavier_init_(self.query_key, self.value, self.out)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, cache: LSHCache | None = None
    ) -> Tensor:
        """Attend within the hash buckets.

        Args:
            x: ``(batch, n, dim)``: the whole sequence, or with a ``cache`` the ``n`` new
                positions that follow the ``n_cached`` cached ones (a prompt, then one
                token per step).
            mask: key-padding mask ``(batch, n_cached + n)`` (``n_cached = 0`` without a
                cache), True = real token.
            cache: an :class:`LSHCache`, extended in place: decode step by step with
                :func:`lsh_cached_attention` (same-bucket causal keys, no chunk window; see
                the module docstring). Needs ``causal=True`` and a ``seed``
                (:meth:`check_cache`).

        Returns:
            ``(batch, n, dim)``.
        """
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        if cache is not None:
            self.check_cache(cache)
        qk = rearrange(self.query_key(x), "b n (h d) -> b h n d", h=self.heads)
        v = rearrange(self.value(x), "b n (h d) -> b h n d", h=self.heads)
        if cache is not None:
            out = lsh_cached_attention(
                qk,
                v,
                cache,
                rotations=self.rotations,
                mask=mask,
                dropout=self.dropout,
                training=self.training,
            )
            return self.out(rearrange(out, "b h n d -> b n (h d)"))
        out = lsh_attention(
            qk,
            v,
            n_buckets=self.n_buckets,
            n_hashes=self.n_hashes,
            chunk_length=self.chunk_length,
            causal=self.causal,
            mask=mask,
            attend_across_buckets=self.attend_across_buckets,
            rotations=self.rotations,
            dropout=self.dropout,
            training=self.training,
        )
        return self.out(rearrange(out, "b h n d -> b n (h d)"))

    def new_cache(self) -> LSHCache:
        """An empty :class:`LSHCache` for decoding with this module."""
        return LSHCache()

    def check_cache(self, cache: object) -> None:
        """Raise if this module cannot decode step by step with ``cache``: it must be
        causal, hash with fixed rotations (a ``seed``) and ``cache`` must be an
        :class:`LSHCache`. Checked before anything is appended to the cache."""
        if not self.causal:
            raise ValueError(
                "`cache` given, but this LSHAttention has causal=False: bidirectional LSH "
                "attention cannot decode step by step (every position sees later ones); run "
                "the whole sequence without a cache"
            )
        if self.rotations is None:
            raise ValueError(
                "`cache` given, but this LSHAttention has seed=None: it draws new rotations "
                "at every call, so it cannot decode step by step (the new positions would be "
                "hashed unlike the cached ones); give it a `seed` for fixed rotations"
            )
        if not isinstance(cache, LSHCache):
            raise TypeError(
                "`cache` of LSH attention must be an LSHCache (keys, values and buckets; "
                f"see new_cache), got {type(cache).__name__}"
            )

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, n_buckets={self.n_buckets}, n_hashes={self.n_hashes}, "
            f"chunk_length={self.chunk_length}, causal={self.causal}, seed={self.seed}"
        )


def _check_buckets(n_buckets: object) -> None:
    check_int(n_buckets, "n_buckets", minimum=2)
    assert isinstance(n_buckets, int)
    if n_buckets % 2:
        raise ValueError(f"`n_buckets` must be an even int >= 2, got {n_buckets}")


def _check_rotations(
    rotations: object,
    heads: int,
    dim_head: int,
    n_buckets: int | None = None,
    n_hashes: int | None = None,
) -> None:
    """``rotations`` must be ``(heads, n_hashes, dim_head, n_buckets // 2)``."""
    check_rank(rotations, 4, "rotations", "(heads, n_hashes, d, n_buckets // 2)")  # type: ignore[arg-type]
    assert isinstance(rotations, Tensor)
    expected = (
        heads,
        rotations.shape[1] if n_hashes is None else n_hashes,
        dim_head,
        rotations.shape[3] if n_buckets is None else n_buckets // 2,
    )
    if tuple(rotations.shape) != expected:
        raise ValueError(
            "`rotations` must have shape (heads, n_hashes, d, n_buckets // 2) = "
            f"{expected}, got {tuple(rotations.shape)}"
        )


def _check_inputs(
    qk: Tensor,
    v: Tensor,
    mask: Tensor | None,
    n_buckets: int,
    n_hashes: int,
    chunk_length: int,
    causal: bool,
    scale: float | None,
    dropout: float,
) -> None:
    """Raise ``ValueError``/``TypeError`` naming the first bad argument."""
    _check_qk_v(qk, v)
    if mask is not None:
        check_bool_mask(mask, "mask")
        if tuple(mask.shape) != (qk.shape[0], qk.shape[2]):
            raise ValueError(
                f"`mask` must have shape (batch, n) = {(qk.shape[0], qk.shape[2])}, "
                f"got {tuple(mask.shape)}"
            )
    _check_buckets(n_buckets)
    check_int(n_hashes, "n_hashes")
    check_int(chunk_length, "chunk_length")
    if not isinstance(causal, bool):
        raise TypeError(f"`causal` must be a bool, got {type(causal).__name__}")
    check_probability(dropout, "dropout")
    if scale is not None:
        check_positive(scale, "scale")


def _check_qk_v(qk: Tensor, v: Tensor) -> None:
    """``qk`` ``(batch, heads, n, d)`` floating point; ``v`` ``(batch, heads, n, d_v)`` of
    its dtype and device."""
    check_rank(qk, 4, "qk", "(batch, heads, n, d)")
    check_rank(v, 4, "v", "(batch, heads, n, d_v)")
    if not qk.is_floating_point():
        raise TypeError(f"`qk` must be a floating-point tensor, got dtype {qk.dtype}")
    if v.shape[:3] != qk.shape[:3]:
        raise ValueError(
            f"`v` must have the (batch, heads, n) of `qk` {tuple(qk.shape[:3])}, "
            f"got shape {tuple(v.shape)}"
        )
    if v.dtype != qk.dtype:
        raise TypeError(f"`v` must have the dtype of `qk` ({qk.dtype}), got {v.dtype}")
    if v.device != qk.device:
        raise ValueError(f"`v` must be on the device of `qk` ({qk.device}), got {v.device}")


__all__ = [
    "LSHAttention",
    "LSHCache",
    "lsh_allowed_mask",
    "lsh_attention",
    "lsh_buckets",
    "lsh_cached_attention",
    "random_rotations",
]
