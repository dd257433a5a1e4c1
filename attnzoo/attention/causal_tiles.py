"""Causal attention by tiles of queries, each over the keys up to its last query.

Under a bottom-right causal mask (the ``n_q`` queries are the last ``n_q`` of ``n_k``
positions) query ``i`` sees keys ``j <= i + n_k - n_q``. A kernel that takes the mask as a
tensor (SDPA with a boolean or float mask, a materialised score matrix) scores every key
and discards the future ones, half of the pairs when ``n_q = n_k``. Cut into tiles of
queries, each tile scores only the keys up to its last query: at 8 tiles about 56% of the
pairs. The tiles run on a CPU only, where a tile of :data:`CAUSAL_TILE` rows keeps the
matrix products efficient; a GPU kernel needs many rows per call to fill the device (not
measured there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

CAUSAL_TILE = 256
"""Query rows per tile."""


def tiles_pay(q: Tensor) -> bool:
    """Whether causal attention of the queries ``q`` ``(..., n_q, d)`` goes by tiles: on a
    CPU, with at least two full tiles."""
    return q.device.type == "cpu" and q.shape[-2] >= 2 * CAUSAL_TILE


def causal_key_count(stop: int, n_q: int, n_k: int) -> int:
    """How many keys (the first ones) queries ``.. stop - 1`` may see under the bottom-right
    causal mask: those up to query ``stop - 1``, between 0 and ``n_k``."""
    return max(0, min(n_k, stop + n_k - n_q))


def query_tiles(n_q: int, n_k: int) -> Iterator[tuple[int, int, int]]:
    """``(start, stop, keys)`` of each tile of :data:`CAUSAL_TILE` queries, in order:
    query rows ``start:stop`` and the number of keys they may see (0 for queries before
    every key, when ``n_q > n_k``)."""
    for start in range(0, n_q, CAUSAL_TILE):
        stop = min(n_q, start + CAUSAL_TILE)
        yield start, stop, causal_key_count(stop, n_q, n_k)


def tile_of(x: Tensor, start: int, stop: int, keys: int) -> Tensor:
    """Query rows ``start:stop`` and the first ``keys`` keys of a mask or bias broadcastable
    to scores ``(..., n_q, n_k)`` (axes of size 1, or absent, broadcast and stay)."""
    if x.dim() >= 2 and x.shape[-2] > 1:
        x = x[..., start:stop, :]
    return x[..., :keys] if x.shape[-1] > 1 else x


@dataclass(frozen=True)
class QueryTile:
    """One tile: query rows ``start:stop``, which may see the first ``keys`` keys; the
    tile's queries ``q``, those keys and values ``k``, ``v``, and the mask cut to them."""

    start: int
    stop: int
    keys: int
    q: Tensor
    k: Tensor
    v: Tensor
    mask: Tensor | None


TileAttention = Callable[[QueryTile], Tensor]
"""Causal attention of one :class:`QueryTile`: ``(..., stop - start, d_v)``."""


def by_query_tiles(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, attend_tile: TileAttention
) -> Tensor:
    """Causal attention of ``q`` ``(..., n_q, d)`` over ``k``, ``v`` ``(..., n_k, .)``, one
    tile of queries at a time.

    ``attend_tile`` gets each :class:`QueryTile` (``mask``, broadcastable to the scores,
    cut to the tile) and computes causal attention over it (the tile's queries are the
    last ones of its keys: the bottom-right alignment holds within the tile). A tile before
    every key gives zeros.

    Returns:
        ``(..., n_q, d_v)``.
    """
    n_q, n_k = q.shape[-2], k.shape[-2]
    outs = []
    for start, stop, keys in query_tiles(n_q, n_k):
        if keys == 0:
            outs.append(q.new_zeros(*q.shape[:-2], stop - start, v.shape[-1]))
            continue
        mask_t = None if mask is None else tile_of(mask, start, stop, keys)
        q_t, k_t, v_t = q[..., start:stop, :], k[..., :keys, :], v[..., :keys, :]
        outs.append(attend_tile(QueryTile(start, stop, keys, q_t, k_t, v_t, mask_t)))
    return torch.cat(outs, dim=-2)


__all__ = [
    "CAUSAL_TILE",
    "QueryTile",
    "TileAttention",
    "by_query_tiles",
    "causal_key_count",
    "query_tiles",
    "tile_of",
    "tiles_pay",
]
