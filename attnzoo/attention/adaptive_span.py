"""Adaptive attention span (Sukhbaatar et al. 2019, "Adaptive Attention Span in
Transformers").

Each head ``h`` of a causal attention learns how far back it looks. Its weights are
multiplied by a soft mask of the distance ``x = i - j`` between query and key and
renormalised::

    m_z(x) = clamp((R + z_h - x) / R, 0, 1)         a ramp of width R after the span z_h
    w_ij   = m_z(x_ij) a_ij / sum_j' m_z(x_ij') a_ij'      a = softmax(scores)

with ``z_h = S * sigmoid(s_h)`` learned (``S`` the maximum span, ``s_h`` the parameter),
so ``z_h`` stays in ``(0, S)`` without clamping after each step. The span penalty
(:meth:`AdaptiveSpanMask.penalty`, the mean span over heads: an L1 penalty, as spans are
positive) times a small coefficient is added to the loss, so heads that gain nothing from
distant keys shrink their span.

The product renormalised is softmax with the additive bias ``log m`` (``-inf`` where
``m = 0``), which is how it is computed: through
:func:`~attnzoo.attention.functional.attend`'s ``bias``, on its SDPA path. Every other
normaliser gets the same bias before it normalises (``entmax(scores + log m)``): keys
beyond the span are excluded before the threshold is found, rather than after, so that
dropping them changes nothing for any normaliser.

Keys at a distance ``>= min(S, ceil(R + max_h z_h))`` get zero weight in every head, so
:class:`AdaptiveSpanAttention` drops them before the scores are computed and keeps only
that many keys in its :class:`~attnzoo.attention.multi_head.KVCache`: memory and compute
per query follow the largest *learned* span, not the maximum one.

The paper's attention is causal. ``causal=False`` gives the bidirectional variant for
encoders: the same soft mask of the distance ``|i - j|``, so a head sees ``z_h`` keys on
either side. There every key is still scored (the mask only zeroes the far ones) and
there is no cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import attend
from .multi_head import KVCache, MultiHeadAttention
from .normalizers import Normalizer
from .validation import check_int, check_rank, check_size


class AdaptiveSpanMask(nn.Module):
    """The learnable soft span mask of ``heads`` heads.

    Args:
        heads: number of heads.
        max_span: ``S``, the longest span (keys at a distance ``>= S`` are never seen).
        ramp: ``R``, width of the linear ramp from weight 1 to 0 (the paper uses 32).
        init_span: initial span of every head, in ``(0, max_span)``; default ``S / 2``.

    Parameters: ``span_logit`` ``(heads,)``, with ``z = max_span * sigmoid(span_logit)``.
    """

    def __init__(
        self, heads: int, max_span: int, ramp: int = 32, init_span: float | None = None
    ) -> None:
        super().__init__()
        check_int(heads, "heads")
        check_int(max_span, "max_span")
        check_int(ramp, "ramp")
        init = max_span / 2 if init_span is None else init_span
        if not 0 < init < max_span:
            raise ValueError(f"`init_span` must be in (0, max_span={max_span}), got {init}")
        self.heads, self.max_span, self.ramp = heads, max_span, ramp
        fraction = init / max_span
        self.span_logit = nn.Parameter(torch.full((heads,), math.log(fraction / (1 - fraction))))

    def spans(self) -> Tensor:
        """The current spans ``z`` ``(heads,)``, in positions (differentiable)."""
        return self.max_span * torch.sigmoid(self.span_logit)

    def penalty(self) -> Tensor:
        """The span penalty: the mean span over heads, a scalar in positions.

        Add ``coefficient * penalty()`` to the loss (the paper's coefficient is 2e-6 per
        position and head, summed over layers; toy tasks need larger ones).
        """
        return self.spans().mean()

    def reach(self) -> int:
        """How many distances ``0 .. reach - 1`` some head can still see:
        ``min(S, ceil(R + max_h z_h))``. Reads the spans on the host."""
        longest = float(self.spans().detach().max())
        return min(self.max_span, math.ceil(self.ramp + longest))

    def forward(self, n_q: int, n_k: int, symmetric: bool = False) -> Tensor:
        """The soft mask for ``n_q`` queries that are the last ``n_q`` of ``n_k`` positions.

        Query ``i`` is at position ``i + n_k - n_q``; its distance to key ``j`` is
        ``x = i + n_k - n_q - j``. Keys after the query (``x < 0``) get 1: the causal
        mask, not this one, hides them. With ``symmetric`` the distance is ``|x|``, so
        keys after the query fade out like keys before it (bidirectional attention).

        Returns:
            ``(heads, n_q, n_k)`` in ``[0, 1]``, the dtype of the parameter.
        """
        device = self.span_logit.device
        rows = torch.arange(n_k - n_q, n_k, device=device)
        distance = (rows[:, None] - torch.arange(n_k, device=device)[None, :]).to(
            self.span_logit.dtype
        )
        if symmetric:
            distance = distance.abs()
        z = self.spans()[:, None, None]
        soft = ((self.ramp + z - distance) / self.ramp).clamp(0.0, 1.0)
        return soft.masked_fill(distance >= self.max_span, 0.0)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, max_span={self.max_span}, ramp={self.ramp}"


class AdaptiveSpanAttention(MultiHeadAttention):
    """Multi-head self-attention with an adaptive span per head (causal by default).

    Args:
        dim, heads, dim_head, normalizer, learn_alpha, dropout, bias, alpha: as for
            :class:`~attnzoo.attention.multi_head.MultiHeadAttention` (self-attention
            only; no ``position`` scheme, the span mask is the position signal).
        max_span, ramp, init_span: of the :class:`AdaptiveSpanMask` ``span``.
        causal: True (the paper's setting): query ``i`` sees keys ``j <= i`` within its
            span, and decoding with a cache is supported. False: bidirectional, the span
            mask applies to the distance ``|i - j|``; no cache.

    Parameters: those of ``MultiHeadAttention`` and ``span.span_logit``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        max_span: int,
        ramp: int = 32,
        init_span: float | None = None,
        dim_head: int | None = None,
        normalizer: str | Normalizer = "softmax",
        learn_alpha: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        alpha: float | None = None,
        causal: bool = True,
    ) -> None:
        if not isinstance(causal, bool):
            raise TypeError(f"`causal` must be a bool, got {type(causal).__name__}")
        super().__init__(
            dim,
            heads,
            dim_head,
            normalizer=normalizer,
            learn_alpha=learn_alpha,
            causal=causal,
            dropout=dropout,
            bias=bias,
            alpha=alpha,
        )
        self.span = AdaptiveSpanMask(heads, max_span, ramp, init_span)

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        mask: Tensor | None = None,
        cache: KVCache | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``x`` to itself (and, causal, the cached positions) within the span.

        Args:
            x: ``(batch, n, dim)``.
            mask: boolean over the ``n_k = len(cache) + n`` keys (read ``len(cache)``
                before the call), True = may attend: key-padding ``(batch, n_k)`` or a
                rank-4 mask broadcastable to ``(batch, heads, n, n_k)``.
            cache: a :class:`KVCache` (causal only), updated in place; after the call it
                holds only the ``span.reach() - 1`` most recent positions, the ones a later
                query can still see (exact while the parameters stay fixed, as in decoding).
            return_weights: also return the weights ``(batch, heads, n, n_k)`` (zero on
                the keys beyond the span).

        Returns:
            ``(batch, n, dim)``, or ``(out, weights)``.
        """
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        if cache is not None and not self.causal:
            raise ValueError(
                "`cache` given, but decoding step by step needs causal=True (a "
                "bidirectional query also attends to later positions)"
            )
        q = self._split_heads(self.query(x))
        k, v = self._keys_values(x, None, cache)
        n_q, n_k = q.shape[-2], k.shape[-2]
        full_mask = self._attention_mask(mask, x.shape[0], n_k)
        # Bidirectional: keys on both sides can be within the span, so none is dropped.
        reach = self.span.reach() if self.causal else n_k + 1
        if cache is not None:
            # Later queries are further away: the oldest keys they could see are these.
            # Copied, so that the longer tensor they were cut from is freed.
            start = max(0, n_k - (reach - 1))
            if start == n_k:
                cache.reset()
            elif start > 0:
                cache.key, cache.value = k[..., start:, :].clone(), v[..., start:, :].clone()
        # The first query sees distances 0 .. reach - 1; nothing older gets weight.
        keep = min(n_k, n_q - 1 + reach)
        k, v = k[..., n_k - keep :, :], v[..., n_k - keep :, :]
        if full_mask is not None and full_mask.shape[-1] != 1:
            full_mask = full_mask[..., n_k - keep :]
        result = attend(
            q,
            k,
            v,
            mask=full_mask,
            bias=log_mask(self.span(n_q, keep, symmetric=not self.causal))[None],
            causal=self.causal,
            normalizer=self.normalizer,
            alpha=self.alpha() if self.alpha is not None else self.fixed_alpha,
            dropout=self.dropout,
            return_weights=return_weights,
            training=self.training,
        )
        projected = self._project_out(result)
        if not isinstance(projected, tuple):
            return projected
        out, weights = projected
        return out, F.pad(weights, (n_k - keep, 0))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, dim_head={self.dim_head}, "
            f"normalizer={self.normalizer!r}, causal={self.causal}, dropout={self.dropout}"
        )


def log_mask(soft: Tensor) -> Tensor:
    """``log(soft)`` as an additive score bias: ``-inf`` where ``soft`` is 0, with a zero
    gradient there (the plain ``log`` would pass ``0 * inf = NaN`` back)."""
    tiny = torch.finfo(soft.dtype).tiny
    return soft.clamp_min(tiny).log().masked_fill(soft == 0, float("-inf"))


def span_penalty(module: nn.Module) -> Tensor:
    """Sum of :meth:`AdaptiveSpanMask.penalty` over every span mask in ``module``.

    Returns:
        a scalar (0 when ``module`` has no adaptive span).
    """
    penalties = [m.penalty() for m in module.modules() if isinstance(m, AdaptiveSpanMask)]
    if not penalties:
        return torch.zeros(())
    return torch.stack(penalties).sum()


def learned_spans(module: nn.Module) -> dict[str, Tensor]:
    """Every adaptive span in ``module``, by attention-module name.

    Returns:
        ``{name: (heads,) tensor}`` of spans in positions (detached), e.g.
        ``"layers.0.self_attention"``.
    """
    with torch.no_grad():
        return {
            name.removesuffix(".span"): sub.spans().detach()
            for name, sub in module.named_modules()
            if isinstance(sub, AdaptiveSpanMask)
        }


__all__ = ["AdaptiveSpanAttention", "AdaptiveSpanMask", "learned_spans", "log_mask", "span_penalty"]
