"""Position schemes that act inside attention: rotary embeddings and ALiBi biases.

Both make attention depend on the *relative* position of a query and a key, which is what
lets a model trained on short sequences run on longer ones:

* **Rotary** (Su et al. 2021, "RoFormer"): each pair of features of a query or key at
  position ``m`` is rotated by the angle ``m * theta_k`` with ``theta_k = base ** (-2k / d)``.
  Seen as complex numbers ``z_k = x_{2k} + i x_{2k+1}``, the rotation is
  ``z_k * exp(i m theta_k)``, so ``<rot(q, m), rot(k, n)>`` depends on ``m - n`` only.
  :class:`RotaryEmbedding` keeps a cos/sin table and takes a position ``offset`` for
  decoding with cached (already rotated) keys.
* **ALiBi** (Press et al. 2022, "Train Short, Test Long"): no position embedding at all;
  head ``h`` adds ``-m_h * (i - j)`` to the score of query ``i`` and key ``j``, with the
  paper's geometric head slopes ``m_h`` (:func:`alibi_slopes`, including its rule for a head
  count that is not a power of two). :func:`alibi_bias` builds the bias for
  :func:`~attnzoo.attention.functional.attend`, so it works with every normaliser.

:class:`~attnzoo.attention.multi_head.MultiHeadAttention` takes either as
``position="rotary"`` or ``position="alibi"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .validation import check_int, check_positive, check_size, check_tensor

POSITION_SCHEMES = ("rotary", "alibi")
"""Values of ``position=`` besides None (no position inside attention)."""


def check_position(position: object) -> str | None:
    """Return ``position`` if it is None or one of :data:`POSITION_SCHEMES`, else raise."""
    if position is not None and position not in POSITION_SCHEMES:
        raise ValueError(f"`position` must be None or one of {POSITION_SCHEMES}, got {position!r}")
    return position  # type: ignore[return-value]


# --------------------------------------------------------------------------- rotary


def rotary_frequencies(dim: int, base: float = 10000.0) -> Tensor:
    """The rotation speeds ``theta_k = base ** (-2k / dim)``, ``k = 0 .. dim/2 - 1``.

    Returns:
        ``(dim // 2,)`` float64.
    """
    check_int(dim, "dim")
    if dim % 2:
        raise ValueError(f"`dim` must be even (features are rotated in pairs), got {dim}")
    check_positive(base, "base")
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = True) -> Tensor:
    """Rotate feature pairs of ``x`` by the angles whose cosines and sines are given.

    Args:
        x: ``(..., n, d)``, ``d`` even.
        cos, sin: ``(n, d // 2)``: ``cos(m * theta_k)`` and ``sin(m * theta_k)`` of the
            position ``m`` of each row.
        interleaved: pairs are ``(x_{2k}, x_{2k+1})`` (RoFormer's layout); False pairs
            ``(x_k, x_{k + d/2})`` (the "rotate half" layout of GPT-NeoX and LLaMA).

    Returns:
        the rotated ``x``, same shape and dtype.
    """
    cos_full, signed_sin = rotary_tables(cos.to(x.dtype), sin.to(x.dtype), interleaved)
    return _rotate(x, cos_full, signed_sin, interleaved)


def rotary_tables(cos: Tensor, sin: Tensor, interleaved: bool = True) -> tuple[Tensor, Tensor]:
    """The ``(n, d // 2)`` cosines and sines spread over all ``d`` features of a pair layout.

    A pair ``(a, b)`` rotates to ``(a cos - b sin, b cos + a sin)``: with ``cos`` given to
    both features of each pair and ``sin`` with the sign of its feature (``-sin`` on
    ``a``), the rotation is ``x * cos_full + swap(x) * signed_sin``, ``swap`` exchanging the
    two features of every pair: three passes over ``x`` instead of a pass per product.

    Returns:
        ``(cos_full, signed_sin)``, each ``(n, d)``.
    """
    if interleaved:
        return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)


def _rotate(x: Tensor, cos_full: Tensor, signed_sin: Tensor, interleaved: bool) -> Tensor:
    """``x * cos_full + swap(x) * signed_sin`` (see :func:`rotary_tables`), tables ``(n, d)``."""
    if interleaved:
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    else:
        first, second = x.chunk(2, dim=-1)
        swapped = torch.cat((second, first), dim=-1)
    return torch.addcmul(x * cos_full, swapped, signed_sin)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding of one head width, with a cos/sin table grown on demand.

    Args:
        dim: feature size of the rotated tensors (the head width), even.
        base: the frequency base of ``theta_k = base ** (-2k / dim)``.
        interleaved: pair layout, see :func:`apply_rotary`.

    The module has no parameters and no state-dict entries. Its table is computed and kept
    in float64 on the input's device (rebuilt, to the next power of two, when a longer
    sequence comes; it is ``n * dim`` numbers, small beside the attention), so float64
    inputs are rotated to float64 precision. The spread tables of :func:`rotary_tables`
    are kept too, cast once per input dtype.
    """

    def __init__(self, dim: int, base: float = 10000.0, interleaved: bool = True) -> None:
        super().__init__()
        self.dim, self.base, self.interleaved = dim, base, interleaved
        self.frequencies = rotary_frequencies(dim, base)
        # Plain attributes, not buffers: `module.half()` must not round the table.
        self._cos = torch.empty(0, dim // 2, dtype=torch.float64)
        self._sin = torch.empty(0, dim // 2, dtype=torch.float64)
        self._spread: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    @property
    def cached_positions(self) -> int:
        """Number of positions the cos/sin table currently covers."""
        return self._cos.shape[0]

    def cos_sin(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``cos`` and ``sin`` of the angles of positions ``0 .. n - 1``, ``(n, dim // 2)``."""
        if self._cos.shape[0] < n or self._cos.device != device:
            length = max(16, 2 ** math.ceil(math.log2(max(n, 1))))
            positions = torch.arange(length, dtype=torch.float64)
            angles = positions[:, None] * self.frequencies[None, :]
            self._cos = angles.cos().to(device)
            self._sin = angles.sin().to(device)
            self._spread = {}
        return self._cos[:n], self._sin[:n]

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Rotate ``x`` ``(..., n, dim)`` whose rows are positions ``offset .. offset + n - 1``.

        With a key/value cache, pass the number of cached positions as ``offset`` and rotate
        only the new queries and keys (the cached keys were rotated when they were new).
        """
        check_tensor(x, "x")
        if x.dim() < 2:
            raise ValueError(f"`x` must have at least 2 dimensions (..., n, dim), got {x.dim()}")
        check_size(x, -1, self.dim, "x", "the rotary dim")
        check_int(offset, "offset", minimum=0)
        n = x.shape[-2]
        self.cos_sin(offset + n, x.device)
        if x.dtype not in self._spread:
            cos, sin = self._cos.to(x.dtype), self._sin.to(x.dtype)
            self._spread[x.dtype] = rotary_tables(cos, sin, self.interleaved)
        cos_full, signed_sin = self._spread[x.dtype]
        return _rotate(
            x, cos_full[offset : offset + n], signed_sin[offset : offset + n], self.interleaved
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}, interleaved={self.interleaved}"


# --------------------------------------------------------------------------- ALiBi


def alibi_slopes(heads: int) -> Tensor:
    """The per-head slopes of ALiBi (Press et al. 2022).

    For ``heads = 2^a`` the slopes are the geometric sequence ``2^(-8/heads * h)``,
    ``h = 1 .. heads`` (for 8 heads: 1/2, 1/4, ..., 1/256). Otherwise, with ``p`` the
    largest power of two below ``heads``, they are the ``p`` slopes of ``p`` heads followed
    by the first ``heads - p`` odd-indexed slopes of ``2p`` heads (``2^(-4/p * (2j + 1))``),
    which interleave with the first ones.

    Returns:
        ``(heads,)`` float64.
    """
    check_int(heads, "heads")
    power = 2 ** math.floor(math.log2(heads))
    exponents = [8 * h / power for h in range(1, power + 1)]
    exponents += [4 * (2 * j + 1) / power for j in range(heads - power)]
    return torch.tensor([2.0**-e for e in exponents], dtype=torch.float64)


def alibi_bias(
    slopes: Tensor, n_q: int, n_k: int, symmetric: bool = True, dtype: torch.dtype | None = None
) -> Tensor:
    """ALiBi's additive score bias for ``n_q`` queries that are the last ``n_q`` of ``n_k``
    positions (the alignment of self-attention with cached keys).

    Query ``i`` sits at position ``i + n_k - n_q``; its distance to key ``j`` is
    ``t = i + n_k - n_q - j``. The bias of head ``h`` is ``-slopes[h] * |t|``
    (``symmetric=True``, for bidirectional attention) or ``-slopes[h] * t`` (the paper's
    causal form, which rewards future keys and so must go with a causal mask). Under a
    causal mask the two are equal.

    Args:
        slopes: ``(heads,)``, e.g. :func:`alibi_slopes`.
        dtype: of the result; default that of ``slopes``. The bias is computed in the
            wider of float32 and ``slopes``' dtype.

    Returns:
        ``(heads, n_q, n_k)``.
    """
    check_tensor(slopes, "slopes")
    if slopes.dim() != 1:
        raise ValueError(f"`slopes` must have 1 dimension (heads,), got {tuple(slopes.shape)}")
    check_int(n_q, "n_q", minimum=0)
    check_int(n_k, "n_k", minimum=0)
    wide = torch.promote_types(slopes.dtype, torch.float32)
    rows = torch.arange(n_k - n_q, n_k, device=slopes.device, dtype=wide)
    cols = torch.arange(n_k, device=slopes.device, dtype=wide)
    distance = rows[:, None] - cols[None, :]
    if symmetric:
        distance = distance.abs()
    bias = -slopes.to(wide)[:, None, None] * distance
    return bias.to(slopes.dtype if dtype is None else dtype)


class ALiBi(nn.Module):
    """ALiBi biases for a fixed number of heads (no parameters, no state-dict entries).

    Args:
        heads: number of heads; the slopes are :func:`alibi_slopes` ``(heads)``.
        symmetric: ``-m |i - j|`` (True) or the causal form ``-m (i - j)``, see
            :func:`alibi_bias`.
    """

    def __init__(self, heads: int, symmetric: bool = True) -> None:
        super().__init__()
        self.heads, self.symmetric = heads, symmetric
        # A plain attribute, not a buffer: `module.half()` must not round the slopes.
        self.slopes = alibi_slopes(heads).float()

    def forward(self, n_q: int, n_k: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The bias ``(1, heads, n_q, n_k)`` for scores ``(batch, heads, n_q, n_k)``."""
        if self.slopes.device != device:
            self.slopes = self.slopes.to(device)
        return alibi_bias(self.slopes, n_q, n_k, self.symmetric, dtype=dtype)[None]

    def extra_repr(self) -> str:
        return f"heads={self.heads}, symmetric={self.symmetric}"


__all__ = [
    "POSITION_SCHEMES",
    "ALiBi",
    "RotaryEmbedding",
    "alibi_bias",
    "alibi_slopes",
    "apply_rotary",
    "check_position",
    "rotary_frequencies",
    "rotary_tables",
]
