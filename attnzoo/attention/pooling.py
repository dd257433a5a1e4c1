"""Attention pooling with a learned context vector.

The word-level attention of the hierarchical attention network (Yang et al. 2016) and of
attention-based BiLSTM classifiers: each position is scored against one learned context
vector ``u_w`` after a one-layer tanh projection,

    u_t = tanh(W h_t + b),   a = normalise(u_t^T u_w over real tokens),   s = sum_t a_t h_t,

so a sequence ``(batch, seq, dim)`` becomes one vector per sequence ``(batch, dim)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .normalizers import Normalizer, get_normalizer, masked_normalize
from .validation import check_bool_mask, check_positive, check_rank, check_size


class AttentionPooling(nn.Module):
    """Pool a sequence into one vector by attention against a learned context vector.

    Args:
        dim: width ``d`` of the input states ``h_t``.
        hidden_dim: width of ``u_t`` and of the context vector; defaults to ``dim``.
        normalizer: registry name (``"softmax"``, ``"sparsemax"``, ``"entmax15"``, ...) or
            callable ``f(scores, dim)`` mapping the scores to weights.
        **normalizer_options: options of a named normaliser (e.g. ``alpha=1.3`` for
            ``"entmax"``).

    Parameters: ``proj`` (Linear ``dim -> hidden_dim``, the ``W``, ``b`` above) and
    ``context`` ``(hidden_dim,)`` (``u_w``).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        normalizer: str | Normalizer = "softmax",
        **normalizer_options: object,
    ) -> None:
        super().__init__()
        hidden_dim = dim if hidden_dim is None else hidden_dim
        check_positive(dim, "dim")
        check_positive(hidden_dim, "hidden_dim")
        self.dim = dim
        self.hidden_dim = hidden_dim
        # Resolved once, so that a bad name fails at construction rather than at the
        # first forward pass.
        self.normalize = get_normalizer(normalizer, **normalizer_options)
        self.proj = nn.Linear(dim, hidden_dim)
        self.context = nn.Parameter(torch.empty(hidden_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``proj`` as ``nn.Linear``; ``context`` uniform in ``±1/sqrt(hidden_dim)``.

        The context vector is a random initialisation learned jointly (Yang et al. 2016);
        the bound keeps ``u_t^T u_w`` of order one since ``|u_t| <= 1`` entry-wise.
        """
        self.proj.reset_parameters()
        bound = 1.0 / math.sqrt(self.hidden_dim)
        nn.init.uniform_(self.context, -bound, bound)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}"

    def forward(
        self, x: Tensor, mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool ``x`` over its sequence axis.

        Args:
            x: ``(batch, seq, dim)``.
            mask: optional boolean ``(batch, seq)``, True = real token.
            return_weights: also return the attention weights.

        Returns:
            pooled ``(batch, dim)``, and with ``return_weights=True`` the weights
            ``(batch, seq)``: zero on padding, summing to one over the real tokens of each
            sequence. A sequence without real tokens pools to a zero vector with zero
            weights (never NaN).
        """
        check_rank(x, 3, "x", "(batch, seq, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        if mask is not None:
            check_bool_mask(mask)
            check_rank(mask, 2, "mask", "(batch, seq)")
            if mask.shape != x.shape[:2]:
                raise ValueError(
                    f"`mask` must have shape (batch, seq) = {tuple(x.shape[:2])} to match "
                    f"`x`, got {tuple(mask.shape)}"
                )
            # Zero the padded states so that their content (even inf/NaN) cannot leak
            # into the sum through 0 * value.
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
        u = torch.tanh(self.proj(x))  # (batch, seq, hidden_dim)
        scores = u @ self.context.to(u.dtype)  # (batch, seq)
        weights = masked_normalize(scores, mask, self.normalize, dim=-1)
        pooled = torch.einsum("bs,bsd->bd", weights.to(x.dtype), x)
        if return_weights:
            return pooled, weights
        return pooled


__all__ = ["AttentionPooling"]
