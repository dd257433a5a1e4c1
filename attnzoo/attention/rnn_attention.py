"""Attention for RNN encoder-decoders: Bahdanau et al. (2015) and Luong et al. (2015).

All modules share one calling convention:

* ``query``: the decoder state, ``(batch, query_dim)`` for one step or
  ``(batch, n_q, query_dim)`` for several steps at once;
* ``keys``: the encoder outputs (memory), ``(batch, n_k, key_dim)``; they are also the
  values, as in both papers;
* ``mask``: ``(batch, n_k)`` boolean key-padding mask, True = real source token;
* the result is ``(context, weights)``: context ``(batch, [n_q,] key_dim)`` and weights
  ``(batch, [n_q,] n_k)``, padded positions with weight exactly 0, a query with no
  allowed key with zero weights and a zero context.

The key side of the score is computed once per source with ``precompute(keys)`` and
passed back as ``projected_keys=``; a decoder step then costs ``O(n_k * hidden)``
(``O(window * hidden)`` for :class:`LocalAttention`, which scores only its window)::

    cache = attn.precompute(encoder_out)
    for t in range(steps):
        context, weights = attn(state, encoder_out, mask, projected_keys=cache)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .normalizers import Normalizer, get_normalizer, masked_normalize
from .scores import AdditiveScore, ScoreModule, make_score
from .validation import (
    check_bool_mask,
    check_broadcastable_to,
    check_non_negative,
    check_positive,
    check_rank,
    check_size,
    check_tensor,
)

LUONG_SCORES = ("dot", "general", "concat")
LOCAL_MODES = ("local-m", "local-p")


def _as_steps(query: Tensor, query_dim: int) -> tuple[Tensor, bool]:
    """``(batch, d)`` or ``(batch, n_q, d)`` -> ``(batch, n_q, d)`` and whether it was one step."""
    check_tensor(query, "query")
    if query.dim() not in (2, 3):
        raise ValueError(
            "`query` must have 2 dimensions (batch, query_dim) or 3 dimensions "
            f"(batch, n_q, query_dim), got shape {tuple(query.shape)}"
        )
    check_size(query, -1, query_dim, "query", "query_dim")
    single = query.dim() == 2
    return (query.unsqueeze(1) if single else query), single


def _check_memory(keys: Tensor, key_dim: int, batch: int) -> None:
    check_rank(keys, 3, "keys", "(batch, n_k, key_dim)")
    check_size(keys, 0, batch, "keys", "batch (from `query`)")
    check_size(keys, -1, key_dim, "keys", "key_dim")
    if keys.shape[1] == 0:
        raise ValueError(
            f"`keys` must hold at least one source position, got shape {tuple(keys.shape)}"
        )


def _check_key_mask(mask: Tensor | None, batch: int, n_k: int) -> Tensor | None:
    if mask is None:
        return None
    check_bool_mask(mask, "mask")
    check_rank(mask, 2, "mask", "(batch, n_k)")
    check_size(mask, 0, batch, "mask", "batch")
    check_size(mask, 1, n_k, "mask", "n_k (from `keys`)")
    return mask


def _context(weights: Tensor, keys: Tensor, mask: Tensor | None) -> Tensor:
    """``(batch, n_q, n_k) @ (batch, n_k, d)``; padded keys are zeroed first so that
    whatever sits in the padding (even inf/NaN) cannot leak into the context."""
    if mask is not None:
        keys = keys.masked_fill(~mask[..., None], 0.0)
    return weights @ keys


def _resolve_normalizer(
    normalizer: str | Normalizer, options: Mapping[str, object] | None
) -> Normalizer:
    return get_normalizer(normalizer, **dict(options or {}))


class _ScoredAttention(nn.Module):
    """Shared machinery: validation, key cache, scores, masked normalisation, context."""

    score: ScoreModule

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        normalizer: str | Normalizer,
        normalizer_options: Mapping[str, object] | None,
    ) -> None:
        super().__init__()
        check_positive(query_dim, "query_dim")
        check_positive(key_dim, "key_dim")
        self.query_dim = query_dim
        self.key_dim = key_dim
        self.normalize = _resolve_normalizer(normalizer, normalizer_options)

    def precompute(self, keys: Tensor) -> Tensor:
        """Key side of the score, to pass as ``projected_keys=`` at every decoder step.

        Args:
            keys: ``(batch, n_k, key_dim)``.
        Returns:
            ``(batch, n_k, p)`` with ``p`` the score's projection size (``key_dim`` for
            "dot", ``query_dim`` for "general", ``hidden_dim`` for additive/"concat").
        """
        check_rank(keys, 3, "keys", "(batch, n_k, key_dim)")
        check_size(keys, -1, self.key_dim, "keys", "key_dim")
        return self.score.project_keys(keys)

    def _validate(
        self, query: Tensor, keys: Tensor, mask: Tensor | None, projected_keys: Tensor | None
    ) -> tuple[Tensor, bool, Tensor | None]:
        """Check the inputs; return query ``(batch, n_q, d)``, the one-step flag and the mask."""
        query, single = _as_steps(query, self.query_dim)
        batch = query.shape[0]
        _check_memory(keys, self.key_dim, batch)
        mask = _check_key_mask(mask, batch, keys.shape[1])
        if projected_keys is not None:
            check_rank(projected_keys, 3, "projected_keys", "(batch, n_k, p)")
            check_size(projected_keys, 0, batch, "projected_keys", "batch")
            check_size(projected_keys, 1, keys.shape[1], "projected_keys", "n_k (from `keys`)")
        return query, single, mask

    def _prepare(
        self, query: Tensor, keys: Tensor, mask: Tensor | None, projected_keys: Tensor | None
    ) -> tuple[Tensor, bool, Tensor | None, Tensor]:
        """Validate the inputs; return query ``(batch, n_q, d)``, one-step flag, mask, scores."""
        query, single, mask = self._validate(query, keys, mask, projected_keys)
        if projected_keys is None:
            projected_keys = self.score.project_keys(keys)
        scores = self.score.score_projected(query, projected_keys)
        return query, single, mask, scores

    def _finish(
        self, weights: Tensor, keys: Tensor, mask: Tensor | None, single: bool
    ) -> tuple[Tensor, Tensor]:
        context = _context(weights, keys, mask)
        if single:
            return context.squeeze(1), weights.squeeze(1)
        return context, weights

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Global attention of each query over all (unpadded) keys.

        Args:
            query: ``(batch, query_dim)`` or ``(batch, n_q, query_dim)``.
            keys: ``(batch, n_k, key_dim)``, also the values.
            mask: ``(batch, n_k)`` bool, True = real token.
            projected_keys: cached :meth:`precompute` output for these keys.
        Returns:
            context ``(batch, [n_q,] key_dim)`` and weights ``(batch, [n_q,] n_k)``.
        """
        query, single, mask, scores = self._prepare(query, keys, mask, projected_keys)
        key_mask = None if mask is None else mask[:, None, :]
        weights = masked_normalize(scores, key_mask, self.normalize)
        return self._finish(weights, keys, mask, single)


class BahdanauAttention(_ScoredAttention):
    """Additive attention of Bahdanau et al. (2015): ``e_j = v^T tanh(W s + U h_j + b)``.

    The score is :class:`~attnzoo.attention.scores.AdditiveScore`, computed in bounded
    memory; ``precompute(keys)`` caches ``U h_j + b`` so a decoder step costs
    ``O(n_k * hidden_dim)``.

    Args:
        query_dim: decoder state size.
        key_dim: encoder output size (the annotations ``h_j``).
        hidden_dim: size of the tanh layer.
        normalizer: registry name or callable (``"softmax"``, ``"sparsemax"``, ...).
        normalizer_options: options of a named normaliser, e.g. ``{"alpha": 1.3}``.
        chunk_size: query rows per tile of the additive score.

    Shapes: see :meth:`forward`.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        hidden_dim: int,
        normalizer: str | Normalizer = "softmax",
        normalizer_options: Mapping[str, object] | None = None,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(query_dim, key_dim, normalizer, normalizer_options)
        self.score = AdditiveScore(query_dim, key_dim, hidden_dim, chunk_size=chunk_size)


def _luong_score(score: str, query_dim: int, key_dim: int, hidden_dim: int | None) -> ScoreModule:
    if score not in LUONG_SCORES:
        raise ValueError(f"`score` must be one of {list(LUONG_SCORES)}, got {score!r}")
    return make_score(score, query_dim, key_dim, hidden_dim)


class LuongAttention(_ScoredAttention):
    """Global attention of Luong et al. (2015), eq. 8 scores.

    * ``"dot"``: ``h_t^T h_s`` (needs ``query_dim == key_dim``);
    * ``"general"``: ``h_t^T W_a h_s``;
    * ``"concat"``: ``v_a^T tanh(W_a [h_t; h_s])``, computed as the bounded-memory additive
      score (``W_a [h_t; h_s] = W h_t + U h_s``).

    The attentional hidden state ``h~_t = tanh(W_c [c_t; h_t])`` (eq. 5) is the separate
    module :class:`AttentionalHidden`, so that the same combination serves local attention.

    Args:
        query_dim: decoder state size.
        key_dim: encoder output size.
        score: ``"dot"``, ``"general"`` or ``"concat"``.
        hidden_dim: tanh size of ``"concat"`` (defaults to ``query_dim``).
        normalizer: registry name or callable.
        normalizer_options: options of a named normaliser.
    """

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        score: str = "general",
        hidden_dim: int | None = None,
        normalizer: str | Normalizer = "softmax",
        normalizer_options: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(query_dim, key_dim, normalizer, normalizer_options)
        self.score_name = score
        self.score = _luong_score(score, query_dim, key_dim, hidden_dim)


class AttentionalHidden(nn.Module):
    """Luong et al. (2015) eq. 5: ``h~_t = tanh(W_c [c_t; h_t])``, the state fed to the output.

    Args:
        query_dim: decoder state size (``h_t``).
        key_dim: context size (``c_t``).
        output_dim: size of ``h~_t``; defaults to ``query_dim``.
    """

    def __init__(self, query_dim: int, key_dim: int, output_dim: int | None = None) -> None:
        super().__init__()
        check_positive(query_dim, "query_dim")
        check_positive(key_dim, "key_dim")
        output_dim = query_dim if output_dim is None else output_dim
        check_positive(output_dim, "output_dim")
        self.query_dim = query_dim
        self.key_dim = key_dim
        self.combine = nn.Linear(key_dim + query_dim, output_dim, bias=False)

    def forward(self, context: Tensor, query: Tensor) -> Tensor:
        """``(..., key_dim)`` and ``(..., query_dim)`` -> ``(..., output_dim)``."""
        check_tensor(context, "context")
        check_tensor(query, "query")
        check_size(context, -1, self.key_dim, "context", "key_dim")
        check_size(query, -1, self.query_dim, "query", "query_dim")
        if context.shape[:-1] != query.shape[:-1]:
            raise ValueError(
                f"`context` {tuple(context.shape)} and `query` {tuple(query.shape)} must "
                "agree in all but the last dimension"
            )
        return torch.tanh(self.combine(torch.cat([context, query], dim=-1)))


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x`` ``(batch, n_k, d)`` at ``index`` ``(batch, n_q, w)`` -> ``(batch, n_q, w, d)``."""
    batch, n_k, dim = x.shape
    # Whole rows by index_select on the flattened batch: far faster than an expanded gather.
    rows = index + torch.arange(batch, device=index.device)[:, None, None] * n_k
    return x.reshape(batch * n_k, dim).index_select(0, rows.flatten()).reshape(*index.shape, dim)


def _scatter_window(weights: Tensor, index: Tensor, n_k: int) -> Tensor:
    """Window weights ``(..., width)`` at positions ``index`` -> ``(..., n_k)``, zeros elsewhere."""
    return weights.new_zeros(*weights.shape[:-1], n_k).scatter(-1, index, weights)


@dataclass
class LocalWindow:
    """What :meth:`LocalAttention.attend_window` returns; ``[n_q]`` is present for a 3-D query.

    Each query sees ``width = min(2 * window + 1, n_k)`` distinct, increasing source
    positions: the ``2D + 1`` around the nearest integer to ``p_t``, shifted inwards where
    they would leave the source. Every position with ``|s - p_t| <= D`` is among them;
    those of them outside that bound or padded have weight exactly 0.

    Attributes:
        context: ``(batch, [n_q,] key_dim)``.
        weights: ``(batch, [n_q,] width)`` alignment weights of the positions in ``index``.
        index: ``(batch, [n_q,] width)`` int64 source positions.
        position: ``(batch, [n_q])`` the aligned position ``p_t`` (float, at least float32);
            for local-p it carries the gradient to the position predictor.
        source_length: ``n_k``, the length of the (padded) source.
    """

    context: Tensor
    weights: Tensor
    index: Tensor
    position: Tensor
    source_length: int

    def dense_weights(self) -> Tensor:
        """The weights over the whole source, ``(batch, [n_q,] n_k)``, zero outside the window."""
        return _scatter_window(self.weights, self.index, self.source_length)


class LocalAttention(_ScoredAttention):
    """Local attention of Luong et al. (2015), section 3.2.

    Each target step ``t`` attends only to source positions ``s`` with ``|s - p_t| <= D``
    (``D = window``), where the aligned position is

    * ``"local-m"`` (monotonic): ``p_t = t``, the decoder step, given as ``position=`` or
      taken from the query index of a ``(batch, n_q, query_dim)`` query;
    * ``"local-p"`` (predictive): ``p_t = (S - 1) * sigmoid(v_p^T tanh(W_p h_t))`` with ``S``
      the real source length of that sequence (its number of True mask entries), so
      ``p_t`` lies in ``[0, S - 1]``. The paper writes ``S * sigmoid(...)`` with 1-based
      positions; ``S - 1`` is the same range for 0-based indices.

    The weights inside the window are the normaliser's output over the window's keys; with
    ``gaussian`` they are then multiplied by ``exp(-(s - p_t)^2 / (2 sigma^2))``,
    ``sigma = D / 2`` (eq. 10). As in the paper, the Gaussian multiplies the alignment
    weights after normalisation (not the scores), and the result is not renormalised, so the
    weights sum to at most one. The paper uses the Gaussian for local-p only, which is the
    default (``gaussian=None``); it is what carries a gradient to ``W_p, v_p``.

    A local-m position beyond the real source is clamped to its last token, so a target
    longer than its source still attends somewhere. Only the ``2D + 1`` source positions
    around ``p_t`` are normalised (see :class:`LocalWindow`), and a decoder step gathers
    and scores only their keys: it costs ``O(D)`` whatever the source length, given the
    cached ``precompute(keys)`` (without it, only the window's keys are projected). Many
    queries over a short source (teacher forcing) instead take their window's scores from
    one matrix product over the source, which is faster there; the numbers are the same.
    :meth:`attend_window` returns the window as it is; :meth:`forward` also scatters its
    weights over the whole source, the ``(batch, [n_q,] n_k)`` output of every module here.

    Args:
        query_dim: decoder state size.
        key_dim: encoder output size.
        window: half-width ``D`` (>= 0; >= 1 for local-p, whose real-valued ``p_t`` would
            otherwise leave an empty window).
        mode: ``"local-m"`` or ``"local-p"``.
        score: ``"dot"``, ``"general"`` or ``"concat"``.
        hidden_dim: size of the tanh layers of "concat" and of the local-p predictor
            (defaults to ``query_dim``).
        gaussian: multiply by the Gaussian; ``None`` = the paper's choice (local-p only).
        normalizer: registry name or callable.
        normalizer_options: options of a named normaliser.
    """

    # Relative cost of copying one gathered key element against one multiply-add of a
    # matrix product (CPU, float32); see ``_gathers_keys``.
    GATHER_COST = 32.0

    def __init__(
        self,
        query_dim: int,
        key_dim: int,
        window: int,
        mode: str = "local-p",
        score: str = "general",
        hidden_dim: int | None = None,
        gaussian: bool | None = None,
        normalizer: str | Normalizer = "softmax",
        normalizer_options: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(query_dim, key_dim, normalizer, normalizer_options)
        if mode not in LOCAL_MODES:
            raise ValueError(f"`mode` must be one of {list(LOCAL_MODES)}, got {mode!r}")
        if not isinstance(window, int) or isinstance(window, bool):
            raise TypeError(f"`window` must be an int, got {type(window).__name__}")
        check_non_negative(window, "window")
        if mode == "local-p" and window < 1:
            raise ValueError(f"`window` must be >= 1 for mode='local-p', got {window}")
        hidden_dim = query_dim if hidden_dim is None else hidden_dim
        check_positive(hidden_dim, "hidden_dim")
        self.window = window
        self.mode = mode
        self.gaussian = (mode == "local-p") if gaussian is None else gaussian
        self.score_name = score
        self.score = _luong_score(score, query_dim, key_dim, hidden_dim)
        if mode == "local-p":
            self.position_proj = nn.Linear(query_dim, hidden_dim, bias=False)  # W_p
            self.position_v = nn.Linear(hidden_dim, 1, bias=False)  # v_p

    def predict_position(self, query: Tensor, lengths: Tensor) -> Tensor:
        """Local-p aligned position ``p_t = (S - 1) * sigmoid(v_p^T tanh(W_p h_t))``.

        Args:
            query: ``(batch, n_q, query_dim)``.
            lengths: ``(batch,)`` real source lengths ``S``.
        Returns:
            ``(batch, n_q)`` real-valued positions in ``[0, S - 1]``.
        """
        if self.mode != "local-p":
            raise ValueError(f"`mode` must be 'local-p' to predict positions, got {self.mode!r}")
        check_rank(query, 3, "query", "(batch, n_q, query_dim)")
        check_size(query, -1, self.query_dim, "query", "query_dim")
        check_rank(lengths, 1, "lengths", "(batch,)")
        check_size(lengths, 0, query.shape[0], "lengths", "batch (from `query`)")
        gate = torch.sigmoid(self.position_v(torch.tanh(self.position_proj(query)))).squeeze(-1)
        last = (lengths - 1).clamp_min(0).to(gate.dtype)
        return last[:, None] * gate

    def _monotonic_position(
        self, position: int | Tensor | None, batch: int, n_q: int, single: bool, device
    ) -> Tensor:
        """Local-m ``p_t = t`` as ``(batch, n_q)`` int64."""
        if position is None:
            if single:
                raise ValueError(
                    "`position` is required for mode='local-m' with a one-step query "
                    "(batch, query_dim): pass the decoder step t"
                )
            return torch.arange(n_q, device=device).expand(batch, n_q)
        if isinstance(position, int) and not isinstance(position, bool):
            return torch.full((batch, n_q), position, device=device)
        check_tensor(position, "position")
        assert isinstance(position, Tensor)
        if position.is_floating_point() or position.dtype == torch.bool:
            raise TypeError(f"`position` must be an integer tensor, got dtype {position.dtype}")
        if single:
            check_broadcastable_to(position, (batch,), "position", "(batch,)")
            position = position[..., None]
        check_broadcastable_to(position, (batch, n_q), "position", "(batch, n_q)")
        return position.to(device=device, dtype=torch.long).expand(batch, n_q)

    def _aligned_position(
        self,
        query: Tensor,
        lengths: Tensor,
        position: int | Tensor | None,
        single: bool,
        dtype: torch.dtype,
    ) -> Tensor:
        """``p_t`` as ``(batch, n_q)`` of ``dtype``: predicted (local-p) or the clamped step."""
        if self.mode == "local-p":
            if position is not None:
                raise ValueError("`position` is only used by mode='local-m'")
            return self.predict_position(query, lengths).to(dtype)
        batch, n_q = query.shape[:2]
        t = self._monotonic_position(position, batch, n_q, single, query.device)
        return torch.minimum(t, (lengths[:, None] - 1).clamp_min(0)).clamp_min(0).to(dtype)

    def _window_index(self, position: Tensor, n_k: int) -> Tensor:
        """``(batch, n_q)`` positions -> ``(batch, n_q, width)`` int64 window positions.

        The window is centred on the nearest integer ``c`` to ``p_t``: with ``|c - p_t| <= 1/2``
        every ``s`` with ``|s - p_t| <= D`` (even after rounding of ``s - p_t``) lies in
        ``[c - D, c + D]``. Shifting it to fit into ``[0, n_k)`` keeps those positions in.
        """
        width = min(2 * self.window + 1, n_k)
        start = (torch.round(position).long() - self.window).clamp(0, n_k - width)
        return start[..., None] + torch.arange(width, device=position.device)

    def _gathers_keys(self, n_q: int, n_k: int, width: int) -> bool:
        """Whether to gather each window's keys, rather than score the whole source at once.

        Gathering copies ``n_q * width`` key rows. The alternative, one matrix product of
        all queries with all ``n_k`` keys whose window entries are then picked, reads every
        key once and costs ``n_q * n_k`` multiply-adds, each about ``GATHER_COST`` times
        cheaper than copying one gathered element. So a decoder step (``n_q = 1``) always
        gathers, and many queries over a short source share one product. The additive
        ("concat") score gains nothing from a matrix product: it always gathers.
        """
        if isinstance(self.score, AdditiveScore):
            return True
        return n_q * width < n_k + n_q * n_k / self.GATHER_COST

    def _scores_by_gathering(
        self,
        query: Tensor,
        window_keys: Tensor,
        keys: Tensor,
        projected_keys: Tensor | None,
        index: Tensor,
    ) -> Tensor:
        """Scores ``(batch, n_q, width)`` of each query against its gathered window keys."""
        if projected_keys is not None:
            window_projected = _gather_rows(projected_keys, index)
        elif index[0].numel() < keys.shape[1]:
            # The windows hold fewer rows than the source: project only those.
            window_projected = self.score.project_keys(window_keys)
        else:
            window_projected = _gather_rows(self.score.project_keys(keys), index)
        return self.score.score_projected(query.unsqueeze(-2), window_projected).squeeze(-2)

    def _window_weights(self, scores: Tensor, allowed: Tensor, distance: Tensor) -> Tensor:
        """Normalise ``(batch, n_q, width)`` scores over the allowed positions, then eq. 10."""
        weights = masked_normalize(scores, allowed, self.normalize)
        if self.gaussian and self.window > 0:
            sigma = self.window / 2
            weights = weights * torch.exp(-distance.square() / (2 * sigma**2)).to(weights.dtype)
        return weights

    def attend_window(
        self,
        query: Tensor,
        keys: Tensor,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
        position: int | Tensor | None = None,
    ) -> LocalWindow:
        """Local attention around the aligned position, computed on the window only.

        Args:
            query: ``(batch, query_dim)`` or ``(batch, n_q, query_dim)``.
            keys: ``(batch, n_k, key_dim)``.
            mask: ``(batch, n_k)`` bool, True = real token.
            projected_keys: cached :meth:`precompute` output for these keys.
            position: local-m only: the decoder step ``t`` as an int, or an integer tensor
                broadcastable to ``(batch,)`` for a one-step query or ``(batch, n_q)``;
                default ``t = 0 .. n_q - 1``.
        Returns:
            :class:`LocalWindow`: context ``(batch, [n_q,] key_dim)``, weights and source
            positions ``(batch, [n_q,] width)``, ``p_t`` ``(batch, [n_q])``.
        """
        query, single, mask = self._validate(query, keys, mask, projected_keys)
        batch, n_k = keys.shape[:2]
        if mask is None:
            lengths = torch.full((batch,), n_k, device=keys.device)
        else:
            lengths = mask.sum(dim=-1)
        # Positions in at least float32: float16 cannot count past 2048 exactly.
        pos_dtype = torch.promote_types(query.dtype, torch.float32)
        p = self._aligned_position(query, lengths, position, single, pos_dtype)
        index = self._window_index(p.detach(), n_k)  # (batch, n_q, width)
        distance = index.to(pos_dtype) - p[..., None]
        allowed = distance.detach().abs() <= self.window
        real = None
        if mask is not None:
            real = mask.gather(1, index.reshape(batch, -1)).reshape(index.shape)
            allowed = allowed & real
        if self._gathers_keys(query.shape[1], n_k, index.shape[-1]):
            window_keys = _gather_rows(keys, index)  # (batch, n_q, width, key_dim)
            if real is not None:
                # Whatever sits in the padding (even inf/NaN) must not leak into the context.
                window_keys = window_keys.masked_fill(~real[..., None], 0.0)
            scores = self._scores_by_gathering(query, window_keys, keys, projected_keys, index)
            weights = self._window_weights(scores, allowed, distance)
            context = (weights.unsqueeze(-2) @ window_keys).squeeze(-2)
        else:
            if projected_keys is None:
                projected_keys = self.score.project_keys(keys)
            scores = self.score.score_projected(query, projected_keys).gather(-1, index)
            weights = self._window_weights(scores, allowed, distance)
            context = _context(_scatter_window(weights, index, n_k), keys, mask)
        if single:
            context, weights, index, p = (x.squeeze(1) for x in (context, weights, index, p))
        return LocalWindow(context, weights, index, p, n_k)

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        keys: Tensor,
        mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
        position: int | Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Local attention around the aligned position (see :meth:`attend_window`).

        Args:
            query: ``(batch, query_dim)`` or ``(batch, n_q, query_dim)``.
            keys: ``(batch, n_k, key_dim)``.
            mask: ``(batch, n_k)`` bool, True = real token.
            projected_keys: cached :meth:`precompute` output for these keys.
            position: local-m only: the decoder step ``t`` (see :meth:`attend_window`).
        Returns:
            context ``(batch, [n_q,] key_dim)`` and weights ``(batch, [n_q,] n_k)``, the
            window's weights scattered over the whole source.
        """
        window = self.attend_window(query, keys, mask, projected_keys, position)
        return window.context, window.dense_weights()

    def extra_repr(self) -> str:
        return f"window={self.window}, mode={self.mode!r}, gaussian={self.gaussian}"


__all__ = [
    "AttentionalHidden",
    "BahdanauAttention",
    "LocalAttention",
    "LocalWindow",
    "LuongAttention",
]
