"""Score functions: how well each query matches each key, before normalisation.

Every score maps queries ``(..., n_q, d_q)`` and keys ``(..., n_k, d_k)`` to scores
``(..., n_q, n_k)``; the leading dimensions must broadcast against each other.

* :func:`dot_score` — ``q k^T`` (Luong et al. 2015, "dot").
* :func:`scaled_dot_score` — ``q k^T / sqrt(d)`` (Vaswani et al. 2017).
* :class:`GeneralScore` — ``q W k^T`` (Luong et al. 2015, "general", bilinear).
* :class:`AdditiveScore` — ``v^T tanh(W q + U k)`` (Bahdanau et al. 2015; Luong's "concat"),
  computed in bounded memory by a custom autograd Function.

The score modules share one interface so that attention modules can cache the key side
of the score once per source sequence and reuse it at every decoder step:
``project_keys(keys)`` returns the cached form and ``score_projected(query, projected)``
scores against it; ``forward(query, keys)`` is the two in a row.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from .validation import check_min_rank, check_positive, check_size, check_tensor

SCORE_NAMES = ("dot", "scaled_dot", "general", "additive", "concat")


def _check_pair(query: Tensor, keys: Tensor, query_dim: int | None, key_dim: int | None) -> None:
    """Ranks, feature sizes and broadcastable leading dimensions of a query/key pair."""
    check_min_rank(query, 2, "query", "(..., n_q, d_q)")
    check_min_rank(keys, 2, "keys", "(..., n_k, d_k)")
    if query_dim is not None:
        check_size(query, -1, query_dim, "query", "query_dim")
    if key_dim is not None:
        check_size(keys, -1, key_dim, "keys", "key_dim")
    try:
        torch.broadcast_shapes(query.shape[:-2], keys.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"leading dimensions of `query` {tuple(query.shape)} and `keys` "
            f"{tuple(keys.shape)} do not broadcast"
        ) from None


def dot_score(query: Tensor, keys: Tensor) -> Tensor:
    """Dot-product score ``q k^T``.

    Args:
        query: ``(..., n_q, d)``.
        keys: ``(..., n_k, d)``.
    Returns:
        scores ``(..., n_q, n_k)``.
    """
    _check_pair(query, keys, None, None)
    check_size(keys, -1, query.shape[-1], "keys", "the feature size of `query`")
    return query @ keys.transpose(-1, -2)


def scaled_dot_score(query: Tensor, keys: Tensor, scale: float | None = None) -> Tensor:
    """Scaled dot-product score ``scale * q k^T``; ``scale`` defaults to ``1 / sqrt(d)``.

    Args:
        query: ``(..., n_q, d)``.
        keys: ``(..., n_k, d)``.
        scale: positive multiplier of the scores.
    Returns:
        scores ``(..., n_q, n_k)``.
    """
    if scale is None:
        check_tensor(query, "query")
        scale = 1.0 / math.sqrt(query.shape[-1])
    check_positive(scale, "scale")
    return dot_score(query, keys) * scale


class DotScore(nn.Module):
    """Module form of :func:`dot_score` / :func:`scaled_dot_score` (no parameters).

    Args:
        dim: feature size of queries and keys.
        scale: multiplier of the scores; ``None`` is the plain dot product (Luong's "dot"),
            use ``1 / sqrt(dim)`` for the scaled form.
    """

    def __init__(self, dim: int, scale: float | None = None) -> None:
        super().__init__()
        check_positive(dim, "dim")
        if scale is not None:
            check_positive(scale, "scale")
        self.dim = dim
        self.scale = scale

    def project_keys(self, keys: Tensor) -> Tensor:
        """``(..., n_k, dim)`` -> the same tensor: a dot score has nothing to precompute."""
        check_min_rank(keys, 2, "keys", "(..., n_k, dim)")
        check_size(keys, -1, self.dim, "keys", "dim")
        return keys

    def score_projected(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """``(..., n_q, dim)`` x ``(..., n_k, dim)`` -> ``(..., n_q, n_k)``."""
        _check_pair(query, projected_keys, self.dim, self.dim)
        scores = query @ projected_keys.transpose(-1, -2)
        return scores if self.scale is None else scores * self.scale

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        """``(..., n_q, dim)`` x ``(..., n_k, dim)`` -> ``(..., n_q, n_k)``."""
        return self.score_projected(query, self.project_keys(keys))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


class GeneralScore(nn.Module):
    """Bilinear score ``q W k^T`` (Luong et al. 2015, "general").

    ``W k`` is computed once per key, so scoring one decoder step against a cached
    source costs ``O(n_k * query_dim)``.

    Args:
        query_dim: ``d_q``.
        key_dim: ``d_k``.
    """

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        check_positive(query_dim, "query_dim")
        check_positive(key_dim, "key_dim")
        self.query_dim = query_dim
        self.key_dim = key_dim
        # Maps keys into query space: score = q . (W k).
        self.weight = nn.Linear(key_dim, query_dim, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        """``(..., n_k, key_dim)`` -> ``W k`` of shape ``(..., n_k, query_dim)``."""
        check_min_rank(keys, 2, "keys", "(..., n_k, key_dim)")
        check_size(keys, -1, self.key_dim, "keys", "key_dim")
        return self.weight(keys)

    def score_projected(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """``(..., n_q, query_dim)`` x ``(..., n_k, query_dim)`` -> ``(..., n_q, n_k)``."""
        _check_pair(query, projected_keys, self.query_dim, None)
        check_size(projected_keys, -1, self.query_dim, "projected_keys", "query_dim")
        return query @ projected_keys.transpose(-1, -2)

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        """``(..., n_q, query_dim)`` x ``(..., n_k, key_dim)`` -> ``(..., n_q, n_k)``."""
        return self.score_projected(query, self.project_keys(keys))


class _ChunkedAdditive(torch.autograd.Function):
    """``scores[r, j] = v . tanh(qp[r] + kp[b(r), j])``, one chunk of query rows at a time.

    Memory: the ``(rows, n_k, hidden)`` activation is never held for all rows. Forward
    builds it ``chunk`` rows at a time and keeps only the ``(rows, n_k)`` scores; backward
    recomputes the same tile per chunk (``tanh`` is cheap next to storing it) and
    accumulates the key and ``v`` gradients. Only the inputs are saved for backward, so
    peak extra memory is ``O(chunk * n_k * hidden)`` in both passes.

    Inputs:
        qp: ``(rows, hidden)`` projected queries, all leading dimensions flattened.
        kp: ``(groups, n_k, hidden)`` projected keys.
        v: ``(hidden,)``.
        group: ``(rows,)`` int64, the key group of each query row.
        chunk: rows per tile.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, qp: Tensor, kp: Tensor, v: Tensor, group: Tensor, chunk: int
    ) -> Tensor:
        out = qp.new_empty(qp.shape[0], kp.shape[1])
        for start in range(0, qp.shape[0], chunk):
            rows = slice(start, start + chunk)
            # The gather is a fresh tensor: add and tanh in place to hold one tile, not three.
            tile = kp[group[rows]].add_(qp[rows, None, :]).tanh_()
            out[rows] = tile @ v
        ctx.save_for_backward(qp, kp, v, group)
        ctx.chunk = chunk  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor):  # type: ignore[override]
        qp, kp, v, group = ctx.saved_tensors  # type: ignore[attr-defined]
        chunk: int = ctx.chunk  # type: ignore[attr-defined]
        # float16/bfloat16 gradients are summed over many tiles: accumulate in float32.
        acc = torch.float32 if qp.dtype in (torch.float16, torch.bfloat16) else qp.dtype
        grad_qp = torch.empty_like(qp)
        grad_kp = torch.zeros(kp.shape, dtype=acc, device=kp.device)
        grad_v = torch.zeros(v.shape, dtype=acc, device=v.device)
        for start in range(0, qp.shape[0], chunk):
            rows = slice(start, start + chunk)
            tile = kp[group[rows]].add_(qp[rows, None, :]).tanh_()  # (c, n_k, hidden)
            g = grad_out[rows, :, None]  # (c, n_k, 1)
            grad_v += (g * tile).sum(dim=(0, 1)).to(acc)
            # d tanh(x) = 1 - tanh(x)^2; reuse the tile's storage for the pre-activation grad.
            tile = tile.square_().neg_().add_(1.0).mul_(g * v)
            grad_qp[rows] = tile.sum(dim=1)
            grad_kp.index_add_(0, group[rows], tile.to(acc))
        return grad_qp, grad_kp.to(kp.dtype), grad_v.to(v.dtype), None, None


def additive_score_naive(projected_query: Tensor, projected_keys: Tensor, v: Tensor) -> Tensor:
    """Reference ``v^T tanh(qp + kp)`` that builds the full ``(..., n_q, n_k, hidden)`` tensor.

    For tests and tiny inputs only; :class:`AdditiveScore` computes the same in bounded memory.

    Args:
        projected_query: ``(..., n_q, hidden)``.
        projected_keys: ``(..., n_k, hidden)``.
        v: ``(hidden,)``.
    Returns:
        scores ``(..., n_q, n_k)``.
    """
    return torch.tanh(projected_query[..., :, None, :] + projected_keys[..., None, :, :]) @ v


def additive_score(
    projected_query: Tensor, projected_keys: Tensor, v: Tensor, chunk_size: int = 64
) -> Tensor:
    """``v^T tanh(qp + kp)`` in bounded memory (functional form of :class:`AdditiveScore`).

    Args:
        projected_query: ``(..., n_q, hidden)``, e.g. ``W q``.
        projected_keys: ``(..., n_k, hidden)``, e.g. ``U k + b``; leading dimensions
            broadcast against those of ``projected_query``.
        v: ``(hidden,)``.
        chunk_size: query rows per tile (> 0); peak extra memory is
            ``O(chunk_size * n_k * hidden)`` in forward and backward.
    Returns:
        scores ``(..., n_q, n_k)``, equal to :func:`additive_score_naive`.
    """
    _check_pair(projected_query, projected_keys, None, None)
    hidden = projected_query.shape[-1]
    check_size(projected_keys, -1, hidden, "projected_keys", "hidden (from `projected_query`)")
    check_tensor(v, "v")
    if tuple(v.shape) != (hidden,):
        raise ValueError(f"`v` must have shape ({hidden},), got {tuple(v.shape)}")
    _check_chunk_size(chunk_size)
    lead = torch.broadcast_shapes(projected_query.shape[:-2], projected_keys.shape[:-2])
    n_q, n_k = projected_query.shape[-2], projected_keys.shape[-2]
    qp = projected_query.expand(*lead, n_q, hidden).reshape(-1, hidden)
    kp = projected_keys.expand(*lead, n_k, hidden).reshape(-1, n_k, hidden)
    # Query row r belongs to key group r // n_q.
    group = torch.arange(kp.shape[0], device=qp.device).repeat_interleave(n_q)
    scores = _ChunkedAdditive.apply(qp, kp, v, group, chunk_size)
    return scores.reshape(*lead, n_q, n_k)


def _check_chunk_size(chunk_size: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
        raise TypeError(f"`chunk_size` must be an int, got {type(chunk_size).__name__}")
    check_positive(chunk_size, "chunk_size")


class AdditiveScore(nn.Module):
    """Additive score ``v^T tanh(W q + U k + b)`` (Bahdanau et al. 2015; Luong's "concat").

    Luong's ``v^T tanh(W_a [q; k])`` is the same function with ``W_a = [W, U]``.

    Computed in bounded memory: the ``(..., n_q, n_k, hidden)`` activation of the naive
    formula is never materialised. Query rows (all leading dimensions flattened) are
    processed ``chunk_size`` at a time by a custom autograd Function whose backward
    recomputes each tile instead of storing it, so peak extra memory is
    ``O(chunk_size * n_k * hidden)`` in forward and in backward. Values and gradients
    equal the naive formula (:func:`additive_score_naive`) up to floating-point rounding.

    Args:
        query_dim: ``d_q``.
        key_dim: ``d_k``.
        hidden_dim: size of the tanh layer.
        chunk_size: query rows per tile (> 0); lower saves memory, higher saves loop overhead.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int, chunk_size: int = 64) -> None:
        super().__init__()
        check_positive(query_dim, "query_dim")
        check_positive(key_dim, "key_dim")
        check_positive(hidden_dim, "hidden_dim")
        _check_chunk_size(chunk_size)
        self.query_dim = query_dim
        self.key_dim = key_dim
        self.hidden_dim = hidden_dim
        self.chunk_size = chunk_size
        self.query_proj = nn.Linear(query_dim, hidden_dim, bias=False)
        # One bias inside tanh is enough; it lives on the key side, which is cached.
        self.key_proj = nn.Linear(key_dim, hidden_dim, bias=True)
        self.v = nn.Parameter(torch.empty(hidden_dim))
        nn.init.uniform_(self.v, -1.0 / math.sqrt(hidden_dim), 1.0 / math.sqrt(hidden_dim))

    def project_keys(self, keys: Tensor) -> Tensor:
        """``(..., n_k, key_dim)`` -> ``U k + b`` of shape ``(..., n_k, hidden_dim)``."""
        check_min_rank(keys, 2, "keys", "(..., n_k, key_dim)")
        check_size(keys, -1, self.key_dim, "keys", "key_dim")
        return self.key_proj(keys)

    def score_projected(self, query: Tensor, projected_keys: Tensor) -> Tensor:
        """Score raw queries against cached :meth:`project_keys` output.

        Args:
            query: ``(..., n_q, query_dim)``.
            projected_keys: ``(..., n_k, hidden_dim)``.
        Returns:
            scores ``(..., n_q, n_k)``.
        """
        _check_pair(query, projected_keys, self.query_dim, None)
        check_size(projected_keys, -1, self.hidden_dim, "projected_keys", "hidden_dim")
        return additive_score(self.query_proj(query), projected_keys, self.v, self.chunk_size)

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        """``(..., n_q, query_dim)`` x ``(..., n_k, key_dim)`` -> ``(..., n_q, n_k)``."""
        _check_pair(query, keys, self.query_dim, self.key_dim)
        return additive_score(self.query_proj(query), self.key_proj(keys), self.v, self.chunk_size)

    def extra_repr(self) -> str:
        return (
            f"query_dim={self.query_dim}, key_dim={self.key_dim}, "
            f"hidden_dim={self.hidden_dim}, chunk_size={self.chunk_size}"
        )


ScoreModule = DotScore | GeneralScore | AdditiveScore


def make_score(
    name: str,
    query_dim: int,
    key_dim: int,
    hidden_dim: int | None = None,
    chunk_size: int = 64,
) -> ScoreModule:
    """Build a score module by name.

    Args:
        name: ``"dot"``, ``"scaled_dot"`` (both need ``query_dim == key_dim``),
            ``"general"``, or ``"additive"`` / ``"concat"`` (the same function).
        query_dim: ``d_q``.
        key_dim: ``d_k``.
        hidden_dim: tanh size of the additive score; defaults to ``query_dim``.
        chunk_size: query rows per tile of the additive score.
    """
    if name not in SCORE_NAMES:
        raise ValueError(f"`score` must be one of {list(SCORE_NAMES)}, got {name!r}")
    if name in ("dot", "scaled_dot"):
        if query_dim != key_dim:
            raise ValueError(
                f"`score`={name!r} needs query_dim == key_dim, got query_dim={query_dim} "
                f"and key_dim={key_dim}; use 'general' or 'additive'"
            )
        scale = 1.0 / math.sqrt(query_dim) if name == "scaled_dot" else None
        return DotScore(query_dim, scale=scale)
    if name == "general":
        return GeneralScore(query_dim, key_dim)
    return AdditiveScore(query_dim, key_dim, hidden_dim or query_dim, chunk_size=chunk_size)


__all__ = [
    "SCORE_NAMES",
    "AdditiveScore",
    "DotScore",
    "GeneralScore",
    "ScoreModule",
    "additive_score",
    "additive_score_naive",
    "dot_score",
    "make_score",
    "scaled_dot_score",
]
