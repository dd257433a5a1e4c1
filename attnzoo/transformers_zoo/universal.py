"""The Universal Transformer encoder (Dehghani et al. 2019).

ONE encoder layer (:class:`EncoderLayer`, so any normaliser, window or memory option) is
applied recurrently over depth. Before step ``t`` (``t = 1 .. max_steps``) the state gets
the coordinate embedding of position ``i`` and step ``t``, the sum of two sinusoidal
tables, ``P[i] + P[t]`` (``P`` of :func:`~attnzoo.transformers_zoo.embeddings.sinusoidal_table`)::

    h^t = layer(h^{t-1} + P[positions] + P[t])

With ``act=True`` every position decides itself how many steps it takes, by Adaptive
Computation Time (Graves 2016), exactly as :class:`~attnzoo.transformers_zoo.act.ACT`
does for a recurrent cell and with the same halting weights
(:func:`~attnzoo.transformers_zoo.act.halting_distribution`): after step ``t`` a halting
unit gives ``p^t_i = sigmoid(w . h^t_i + b)``; position ``i`` halts at the first step
``N_i`` where ``p^1_i + ... + p^{N_i}_i >= 1 - epsilon`` (or at ``max_steps``), and its
output is the mean-field ``sum_t w^t_i h^t_i`` with ``w^t = p^t`` before ``N_i`` and the
remainder ``R_i = 1 - sum_{t < N_i} p^t_i`` at ``N_i``. Once a position has halted its
state is copied forward unchanged (the other positions keep attending to it) until every
position has halted. The ponder cost ``N_i + R_i`` (:attr:`UniversalOutput.ponder_cost`)
times a small ``time_penalty``, added to the loss, trades accuracy against computation.

With ``act=False`` the layer runs exactly ``max_steps`` times at every position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.validation import check_bool_mask, check_int, check_rank, check_size
from .act import halting_distribution
from .embeddings import sinusoidal_table
from .layers import EncoderLayer


@dataclass
class UniversalOutput:
    """What :meth:`UniversalTransformerEncoder.forward` returns.

    Attributes:
        last_hidden_state: ``(batch, n, dim)``: the mean-field states (ACT), else the state
            after ``max_steps`` steps; after the final LayerNorm of a pre-LN layer.
        ponder_cost: ``(batch, n)`` ``N + R`` per position (0 on padding); add
            ``time_penalty * ponder_cost`` averaged over the real tokens to the loss.
        n_updates: ``(batch, n)`` int64 steps ``N`` per position (0 on padding).
        halting_weights: ``(batch, n, steps)`` the weights ``w^t`` of each step's state
            (ACT only; ``steps`` is the number of steps run), None without ACT.
    """

    last_hidden_state: Tensor
    ponder_cost: Tensor
    n_updates: Tensor
    halting_weights: Tensor | None = None


class UniversalTransformerEncoder(nn.Module):
    """One :class:`EncoderLayer` applied over depth, with per-position ACT halting.

    Args:
        dim: model width.
        heads: attention heads.
        max_steps: the most recurrent steps (the paper's ``T``).
        act: adaptive computation time per position; False runs ``max_steps`` steps.
        epsilon: halt once the halting probabilities sum to ``1 - epsilon``; in (0, 1).
        halting_bias_init: initial bias of the halting unit (higher: fewer first steps).
        coordinates: add the position + step coordinate embedding before every step.
        max_len: longest sequence (rows of the position table).
        **layer_options: keyword arguments of the shared :class:`EncoderLayer` (``ffn_dim``,
            ``activation``, ``dropout``, ``norm_first``, ``normalizer``, ``window``, ...).

    Parameters: ``layer`` (the shared :class:`EncoderLayer`), ``halting`` (Linear
    ``dim -> 1``) and, for a pre-LN layer, the final LayerNorm ``norm``.
    """

    position_table: Tensor

    def __init__(
        self,
        dim: int,
        heads: int,
        max_steps: int = 6,
        *,
        act: bool = True,
        epsilon: float = 0.01,
        halting_bias_init: float = 1.0,
        coordinates: bool = True,
        max_len: int = 512,
        **layer_options: Any,
    ) -> None:
        super().__init__()
        check_int(max_steps, "max_steps")
        check_int(max_len, "max_len")
        if not isinstance(act, bool):
            raise TypeError(f"`act` must be a bool, got {type(act).__name__}")
        if not 0 < epsilon < 1:
            raise ValueError(f"`epsilon` must be in (0, 1), got {epsilon}")
        self.dim, self.max_steps, self.act, self.epsilon = dim, max_steps, act, epsilon
        self.coordinates, self.max_len = coordinates, max_len
        self.layer = EncoderLayer(dim, heads, **layer_options)
        self.halting = nn.Linear(dim, 1)
        nn.init.constant_(self.halting.bias, halting_bias_init)
        self.norm = nn.LayerNorm(dim) if self.layer.norm_first else None
        # Kept in float64 (cast at use): the sum of two tables is exact in any model dtype.
        table = sinusoidal_table(max(max_len, max_steps + 1), dim)
        self.register_buffer("position_table", table, persistent=False)

    def coordinate_embedding(self, n: int, step: int) -> Tensor:
        """``P[0..n-1] + P[step]``: ``(n, dim)``, the embedding added before step ``step``."""
        return self.position_table[:n] + self.position_table[step]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> UniversalOutput:
        """Encode ``x``.

        Args:
            x: ``(batch, n, dim)``.
            mask: key-padding mask ``(batch, n)``, True = real token (the shared layer
                also takes a rank-4 mask for dense attention; padding positions then
                count as real for halting).

        Returns:
            a :class:`UniversalOutput`.
        """
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        if x.shape[1] > self.max_len:
            raise ValueError(
                f"`x` must have at most max_len = {self.max_len} positions, got {x.shape[1]}"
            )
        real = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if mask is not None:
            check_bool_mask(mask, "mask")
            if mask.dim() == 2:
                check_size(mask, 0, x.shape[0], "mask", "the batch size of `x`")
                check_size(mask, 1, x.shape[1], "mask", "n of `x`")
                real = mask
        if not self.act:
            state = x
            for t in range(1, self.max_steps + 1):
                state = self._step(state, t, mask)
            steps = torch.full(x.shape[:2], self.max_steps, device=x.device) * real
            return UniversalOutput(self._final(state), steps.to(x.dtype), steps)
        return self._adaptive(x, mask, real)

    def _step(self, state: Tensor, t: int, mask: Tensor | None) -> Tensor:
        """One application of the shared layer at step ``t`` (1-based)."""
        if self.coordinates:
            state = state + self.coordinate_embedding(state.shape[1], t).to(state.dtype)
        out = self.layer(state, mask=mask)
        assert isinstance(out, Tensor)
        return out

    def _adaptive(self, x: Tensor, mask: Tensor | None, real: Tensor) -> UniversalOutput:
        """The ACT loop: run until every real position has halted or ``max_steps``."""
        state, states, probs = x, [], []
        for t in range(1, self.max_steps + 1):
            h = self._step(state, t, mask)
            states.append(h)
            probs.append(torch.sigmoid(self.halting(h)).squeeze(-1))
            stacked = torch.stack(probs, dim=-1)  # (b, n, t)
            halted = stacked.detach().sum(-1) >= 1.0 - self.epsilon
            if t == self.max_steps or bool((halted | ~real).all()):
                break
            # A halted position's weights no longer change: copy its final (mean-field)
            # state forward; the others continue from this step's state.
            weights, _, _ = halting_distribution(stacked, self.epsilon)
            done = _mean_field(weights, states)
            state = torch.where(halted.unsqueeze(-1), done, h)
        weights, n_updates, remainder = halting_distribution(torch.stack(probs, -1), self.epsilon)
        out = self._final(_mean_field(weights, states))
        ponder = (n_updates + remainder) * real
        return UniversalOutput(out, ponder, n_updates * real, weights * real.unsqueeze(-1))

    def _final(self, state: Tensor) -> Tensor:
        return self.norm(state) if self.norm is not None else state

    def extra_repr(self) -> str:
        return (
            f"max_steps={self.max_steps}, act={self.act}, epsilon={self.epsilon}, "
            f"coordinates={self.coordinates}"
        )


def _mean_field(weights: Tensor, states: list[Tensor]) -> Tensor:
    """``sum_t weights[..., t] * states[t]``: weights ``(b, n, T)``, T states ``(b, n, d)``."""
    return torch.einsum("bnt,bntd->bnd", weights, torch.stack(states, dim=2))


__all__ = ["UniversalOutput", "UniversalTransformerEncoder"]
