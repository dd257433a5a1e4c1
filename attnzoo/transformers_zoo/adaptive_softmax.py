"""Adaptive softmax (Grave et al. 2017) and adaptive input embeddings (Baevski & Auli 2019),
in the projected form of Transformer-XL (Dai et al. 2019).

The vocabulary is ranked by frequency and split by ``cutoffs = (c_1, ..., c_k)`` into
clusters: cluster 0 holds ids ``[0, c_1)`` (the frequent *shortlist*), cluster ``i`` holds
``[c_i, c_{i+1})`` and the last one ends at ``vocab_size``. Cluster ``i`` lives in a width
``embed_dim // div_val ** i``: rare words get small vectors, and a projection maps between
that width and the model width ``dim`` wherever the two differ.

:class:`AdaptiveSoftmax` scores the shortlist and one logit per tail cluster in its *head*;
a tail cluster's word then has ``log p(w) = log p_head(cluster) + log p_cluster(w)``. The loss
(:meth:`AdaptiveSoftmax.forward`) evaluates, for each token, the head and only the tail
cluster its target falls in, so the full ``(tokens, vocab)`` distribution is never built.
:class:`AdaptiveEmbedding` is the input side with the same clusters, scaled by ``sqrt(dim)``
as in Transformer-XL; :meth:`AdaptiveSoftmax.tie_to` shares its tables (and projections)
with the output layer.

Parameters, per cluster ``i`` (``clusters.{i}.``): ``weight`` ``(size_i, width_i)``,
``bias`` ``(size_i,)`` (softmax only), ``projection`` ``(dim, width_i)`` or absent where
``width_i == dim``; the head's cluster logits are ``cluster_weight`` ``(k, width_0)`` and
``cluster_bias`` ``(k,)``. Transformer-XL's code reads its cluster logits in reverse order
(cluster ``i`` at head column ``-i``); here cluster ``i`` is head column
``c_1 + i - 1``, the order of ``torch.nn.AdaptiveLogSoftmaxWithLoss``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int, check_min_rank, check_size, check_token_ids

IGNORE_INDEX = -100
"""Label value that :meth:`AdaptiveSoftmax.forward` skips (loss 0, no gradient)."""

REDUCTIONS = ("none", "mean", "sum")
"""Values of :meth:`AdaptiveSoftmax.forward` ``reduction``."""


def cluster_bounds(vocab_size: int, cutoffs: Sequence[int]) -> list[int]:
    """``[0, c_1, ..., c_k, vocab_size]`` after checking the cutoffs.

    Args:
        vocab_size: number of token ids.
        cutoffs: strictly increasing ints in ``[1, vocab_size)`` (may be empty: one cluster).

    Raises:
        TypeError: ``cutoffs`` is not a sequence of ints.
        ValueError: a cutoff is out of range or the cutoffs are not strictly increasing.
    """
    check_int(vocab_size, "vocab_size")
    if isinstance(cutoffs, (str, bytes)) or not isinstance(cutoffs, Sequence):
        raise TypeError(f"`cutoffs` must be a sequence of ints, got {type(cutoffs).__name__}")
    for c in cutoffs:
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"`cutoffs` must hold ints, got {type(c).__name__} in {cutoffs!r}")
    bounds = [0, *cutoffs, vocab_size]
    if any(a >= b for a, b in pairwise(bounds)):
        raise ValueError(
            f"`cutoffs` must be strictly increasing ints in [1, vocab_size = {vocab_size}), "
            f"got {list(cutoffs)}"
        )
    return bounds


def cluster_widths(embed_dim: int, div_val: float, n_clusters: int) -> list[int]:
    """Width of each cluster: ``int(embed_dim // div_val ** i)`` for ``i < n_clusters``.

    Raises:
        ValueError: ``div_val < 1`` or a width below 1.
    """
    check_int(embed_dim, "embed_dim")
    if isinstance(div_val, bool) or not isinstance(div_val, (int, float)) or not div_val >= 1:
        raise ValueError(f"`div_val` must be a number >= 1, got {div_val!r}")
    widths = [int(embed_dim // div_val**i) for i in range(n_clusters)]
    if widths[-1] < 1:
        raise ValueError(
            f"`div_val` = {div_val} leaves cluster {n_clusters - 1} a width "
            f"embed_dim // div_val ** {n_clusters - 1} = {widths[-1]} < 1 "
            f"(embed_dim = {embed_dim})"
        )
    return widths


class AdaptiveCluster(nn.Module):
    """One cluster's table ``weight`` ``(size, width)``, optional ``bias`` ``(size,)`` and
    ``projection`` ``(dim, width)`` (None where ``width == dim``)."""

    def __init__(self, size: int, width: int, dim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, width))
        self.bias = nn.Parameter(torch.zeros(size)) if bias else None
        self.projection = nn.Parameter(torch.empty(dim, width)) if width != dim else None
        nn.init.normal_(self.weight, std=0.02)
        if self.projection is not None:
            # Unit-scale entries per output: a projected cluster's vectors then have the
            # scale of an unprojected one, on the input and on the output side.
            nn.init.normal_(self.projection, std=width**-0.5)

    def embed(self, ids: Tensor) -> Tensor:
        """Ids local to the cluster ``(m,)`` -> ``(m, dim)`` (before any scaling)."""
        out = F.embedding(ids, self.weight)
        return F.linear(out, self.projection) if self.projection is not None else out

    def down(self, hidden: Tensor) -> Tensor:
        """``(m, dim)`` -> ``(m, width)``: into the cluster's width (identity if equal)."""
        return hidden @ self.projection if self.projection is not None else hidden


def _cluster_list(clusters: nn.ModuleList) -> list[AdaptiveCluster]:
    """The entries of a ``clusters`` list (built from :class:`AdaptiveCluster` only), typed."""
    return cast("list[AdaptiveCluster]", list(clusters))


class AdaptiveEmbedding(nn.Module):
    """Adaptive input embedding (Baevski & Auli 2019; Transformer-XL's ``AdaptiveEmbedding``).

    Cluster ``i`` of the vocabulary (see :func:`cluster_bounds`) has a table of width
    ``embed_dim // div_val ** i``, projected to ``dim`` where it differs; the output is
    multiplied by ``sqrt(dim)``.

    Args:
        vocab_size: number of token ids, ranked by frequency (id 0 the most frequent).
        dim: output (model) width.
        cutoffs: cluster boundaries, strictly increasing in ``[1, vocab_size)``.
        embed_dim: width of cluster 0; default ``dim``.
        div_val: width divisor from one cluster to the next (1: all clusters ``embed_dim``).

    ``forward(input_ids)``: integer ``(...)`` -> ``(..., dim)``.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        cutoffs: Sequence[int],
        embed_dim: int | None = None,
        div_val: float = 1,
    ) -> None:
        super().__init__()
        check_int(dim, "dim")
        self.vocab_size, self.dim = vocab_size, dim
        self.bounds = cluster_bounds(vocab_size, cutoffs)
        self.embed_dim = dim if embed_dim is None else embed_dim
        self.div_val = div_val
        self.widths = cluster_widths(self.embed_dim, div_val, len(self.bounds) - 1)
        self.clusters = nn.ModuleList(
            AdaptiveCluster(hi - lo, width, dim, bias=False)
            for (lo, hi), width in zip(pairwise(self.bounds), self.widths, strict=True)
        )
        self.scale = math.sqrt(dim)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Integer ids ``(...)`` in ``[0, vocab_size)`` -> embeddings ``(..., dim)``."""
        check_token_ids(input_ids, self.vocab_size, "input_ids")
        flat = input_ids.reshape(-1)
        clusters = _cluster_list(self.clusters)
        out = torch.zeros(
            flat.shape[0], self.dim, dtype=clusters[0].weight.dtype, device=flat.device
        )
        for (lo, hi), cluster in zip(pairwise(self.bounds), clusters, strict=True):
            rows = ((flat >= lo) & (flat < hi)).nonzero().squeeze(1)
            if rows.numel():
                out = out.index_copy(0, rows, cluster.embed(flat[rows] - lo))
        return (out * self.scale).reshape(*input_ids.shape, self.dim)


class AdaptiveSoftmax(nn.Module):
    """Projected adaptive log-softmax (Grave et al. 2017; Transformer-XL's output layer).

    Args:
        vocab_size: number of token ids, ranked by frequency (id 0 the most frequent).
        dim: width of the hidden states it reads.
        cutoffs: cluster boundaries, strictly increasing in ``[1, vocab_size)``; the head
            scores ``cutoffs[0]`` shortlist words and ``len(cutoffs)`` clusters.
        embed_dim: width of cluster 0 (the head); default ``dim``.
        div_val: width divisor from one cluster to the next.
        bias: output biases (per word and per cluster logit).

    Methods: ``log_prob(hidden)`` ``(..., dim)`` -> ``(..., vocab_size)``;
    ``forward(hidden, labels)`` -> per-token negative log-likelihood ``(...)``;
    ``predict(hidden)`` -> most likely ids ``(...)``. Log-probabilities are float32 for
    half-precision inputs, the input dtype otherwise.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        cutoffs: Sequence[int],
        embed_dim: int | None = None,
        div_val: float = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_int(dim, "dim")
        self.vocab_size, self.dim = vocab_size, dim
        self.bounds = cluster_bounds(vocab_size, cutoffs)
        self.embed_dim = dim if embed_dim is None else embed_dim
        self.div_val = div_val
        self.widths = cluster_widths(self.embed_dim, div_val, len(self.bounds) - 1)
        self.clusters = nn.ModuleList(
            AdaptiveCluster(hi - lo, width, dim, bias)
            for (lo, hi), width in zip(pairwise(self.bounds), self.widths, strict=True)
        )
        self.shortlist = self.bounds[1]
        n_tails = len(self.clusters) - 1
        self.cluster_weight = nn.Parameter(torch.empty(n_tails, self.widths[0]))
        nn.init.normal_(self.cluster_weight, std=0.02)
        self.cluster_bias = nn.Parameter(torch.zeros(n_tails)) if bias else None

    # ------------------------------------------------------------------ tying

    def tie_to(
        self,
        embedding: AdaptiveEmbedding,
        tie_weight: bool = True,
        tie_projs: bool | Sequence[bool] = False,
    ) -> None:
        """Share parameters with an input :class:`AdaptiveEmbedding` of the same layout.

        Args:
            embedding: built with the same ``vocab_size``, ``dim``, cutoffs and widths.
            tie_weight: every cluster's ``weight`` becomes the embedding's table.
            tie_projs: share the projections: one bool for all clusters or one per
                cluster (Transformer-XL's ``tie_projs``); a cluster of width ``dim`` has no
                projection and nothing to tie.

        Raises:
            TypeError / ValueError: ``embedding`` is not an :class:`AdaptiveEmbedding` of
                the same layout, or ``tie_projs`` has the wrong length.
        """
        if not isinstance(embedding, AdaptiveEmbedding):
            raise TypeError(
                f"`embedding` must be an AdaptiveEmbedding, got {type(embedding).__name__}"
            )
        mine = (self.vocab_size, self.dim, self.bounds, self.widths)
        theirs = (embedding.vocab_size, embedding.dim, embedding.bounds, embedding.widths)
        if mine != theirs:
            raise ValueError(
                "`embedding` must have the same (vocab_size, dim, cluster bounds, widths) "
                f"{mine}, got {theirs}"
            )
        projs = [tie_projs] * len(self.clusters) if isinstance(tie_projs, bool) else tie_projs
        if len(projs) != len(self.clusters):
            raise ValueError(
                f"`tie_projs` must be a bool or one per cluster ({len(self.clusters)}), "
                f"got {len(projs)}"
            )
        ours_all, theirs_all = _cluster_list(self.clusters), _cluster_list(embedding.clusters)
        for ours, source, share_proj in zip(ours_all, theirs_all, projs, strict=True):
            if tie_weight:
                ours.weight = source.weight
            if share_proj and ours.projection is not None:
                ours.projection = source.projection

    # ------------------------------------------------------------------ scoring

    def log_prob(self, hidden: Tensor) -> Tensor:
        """Full log-probabilities over the vocabulary.

        Args:
            hidden: ``(..., dim)``.

        Returns:
            ``(..., vocab_size)``; ``exp`` of each row sums to 1.
        """
        flat = self._flat_hidden(hidden)
        head = self._head_log_prob(flat)
        return self._full_log_prob(flat, head).reshape(*hidden.shape[:-1], self.vocab_size)

    def forward(self, hidden: Tensor, labels: Tensor, reduction: str = "none") -> Tensor:
        """Negative log-likelihood of ``labels``, scoring only each target's cluster.

        Args:
            hidden: ``(..., dim)``.
            labels: integer ``(...)`` (the leading shape of ``hidden``) in
                ``[0, vocab_size)``, or -100 to skip a position.
            reduction: ``"none"``: per-token NLL ``(...)``, 0 at skipped positions;
                ``"mean"``: its mean over the positions not skipped (0 if none is);
                ``"sum"``: its sum.

        Returns:
            ``(...)`` or a scalar, by ``reduction``.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
        flat = self._flat_hidden(hidden)
        targets = self._flat_labels(labels, hidden)
        keep = targets != IGNORE_INDEX
        targets = targets.masked_fill(~keep, 0)

        head = self._head_log_prob(flat)
        # Head column of each target: the word itself in the shortlist, else its cluster.
        cluster = torch.bucketize(targets, targets.new_tensor(self.bounds[1:-1]), right=True)
        column = torch.where(cluster == 0, targets, self.shortlist + cluster - 1)
        target_log_prob = head.gather(1, column[:, None]).squeeze(1)
        for i in range(1, len(self.clusters)):
            rows = ((cluster == i) & keep).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            tail = self._tail_log_prob(flat.index_select(0, rows), i)
            local = (targets.index_select(0, rows) - self.bounds[i])[:, None]
            target_log_prob = target_log_prob.index_add(0, rows, tail.gather(1, local).squeeze(1))
        nll = (-target_log_prob).masked_fill(~keep, 0.0)
        if reduction == "sum":
            return nll.sum()
        if reduction == "mean":
            return nll.sum() / keep.sum().clamp(min=1)
        return nll.reshape(labels.shape)

    def predict(self, hidden: Tensor) -> Tensor:
        """The most likely id at each position: ``log_prob(hidden).argmax(-1)``.

        Where the head's best entry is a shortlist word, no tail can beat it (a tail word's
        probability is at most its cluster's), so only the other rows score their tails.

        Args:
            hidden: ``(..., dim)``.

        Returns:
            integer ``(...)``.
        """
        flat = self._flat_hidden(hidden)
        head = self._head_log_prob(flat)
        best = head.argmax(-1)
        unsure = (best >= self.shortlist).nonzero().squeeze(1)
        if unsure.numel():
            full = self._full_log_prob(flat.index_select(0, unsure), head.index_select(0, unsure))
            best = best.index_copy(0, unsure, full.argmax(-1))
        return best.reshape(hidden.shape[:-1])

    # ------------------------------------------------------------------ internals

    def _flat_hidden(self, hidden: Tensor) -> Tensor:
        check_min_rank(hidden, 1, "hidden", "(..., dim)")
        check_size(hidden, -1, self.dim, "hidden", "dim")
        if not hidden.is_floating_point():
            raise TypeError(f"`hidden` must be a floating tensor, got dtype {hidden.dtype}")
        return hidden.reshape(-1, self.dim)

    def _flat_labels(self, labels: Tensor, hidden: Tensor) -> Tensor:
        check_min_rank(labels, 0, "labels", "(...)")
        if labels.shape != hidden.shape[:-1]:
            raise ValueError(
                f"`labels` must have the leading shape of `hidden` {tuple(hidden.shape[:-1])}, "
                f"got {tuple(labels.shape)}"
            )
        check_token_ids(labels.masked_fill(labels == IGNORE_INDEX, 0), self.vocab_size, "labels")
        return labels.reshape(-1)

    def _head_log_prob(self, flat: Tensor) -> Tensor:
        """``(m, dim)`` -> ``(m, shortlist + n_tails)``."""
        first = _cluster_list(self.clusters)[0]
        weight = torch.cat([first.weight, self.cluster_weight])
        bias = None
        if first.bias is not None and self.cluster_bias is not None:
            bias = torch.cat([first.bias, self.cluster_bias])
        return _log_softmax(F.linear(first.down(flat), weight, bias))

    def _tail_log_prob(self, flat: Tensor, i: int) -> Tensor:
        """``(m, dim)`` -> ``(m, size_i)``: log-probabilities within cluster ``i``."""
        cluster = _cluster_list(self.clusters)[i]
        return _log_softmax(F.linear(cluster.down(flat), cluster.weight, cluster.bias))

    def _full_log_prob(self, flat: Tensor, head: Tensor) -> Tensor:
        """``(m, dim)`` and its head log-probabilities -> ``(m, vocab_size)``."""
        parts = [head[:, : self.shortlist]]
        for i in range(1, len(self.clusters)):
            cluster_log_prob = head[:, self.shortlist + i - 1, None]
            parts.append(cluster_log_prob + self._tail_log_prob(flat, i))
        return torch.cat(parts, dim=-1)


def _log_softmax(logits: Tensor) -> Tensor:
    """Log-softmax over the last axis, in float32 for half-precision logits."""
    half = logits.dtype in (torch.float16, torch.bfloat16)
    return F.log_softmax(logits, dim=-1, dtype=torch.float32 if half else None)


__all__ = [
    "AdaptiveCluster",
    "AdaptiveEmbedding",
    "AdaptiveSoftmax",
    "cluster_bounds",
    "cluster_widths",
]
