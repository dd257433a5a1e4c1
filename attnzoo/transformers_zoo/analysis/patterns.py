"""What each head looks at (Clark et al. 2019, "What does BERT look at?").

:func:`head_statistics` averages, over every query token of a set of captures, each head's
attention to ``[CLS]``, to ``[SEP]``, to punctuation, to the previous and next token and to
itself, and the entropy of its attention row (high = broad, low = focused).
:func:`head_distances` gives the Jensen-Shannon distance between every pair of heads (on
the same inputs), :func:`cluster_heads` groups heads by it (average-linkage
agglomerative clustering), :func:`embed_heads` places them in 2-D (classical
multidimensional scaling), and :func:`pattern_report` lists which heads show which
pattern.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .capture import AttentionCapture

PATTERNS = ("cls", "sep", "punct", "prev", "next", "self")


def is_punctuation(token: str) -> bool:
    """A token made only of punctuation (``"."``, ``","``, ``"##."``)."""
    text = token.removeprefix("##").removeprefix("Ġ")
    return bool(text) and all(ch in string.punctuation for ch in text)


@dataclass
class HeadStatistics:
    """Per-head averages over query tokens; every tensor is ``(layers, heads)``.

    Attributes:
        attention: pattern name (see :data:`PATTERNS`) -> mean attention weight given to
            it (``cls``/``sep``: to the ``[CLS]``/``[SEP]`` tokens; ``punct``: to
            punctuation tokens; ``prev``/``next``/``self``: to the token at offset -1/+1/0).
        entropy: mean entropy (nats) of the attention rows.
        uniform_entropy: mean entropy of a uniform row over the same keys (the broadest
            possible).
    """

    attention: dict[str, Tensor]
    entropy: Tensor
    uniform_entropy: float


def _row_entropy(weights: Tensor) -> Tensor:
    """Entropy in nats of each row ``(..., n) -> (...)``; ``0 log 0 = 0``."""
    logs = torch.where(weights > 0, weights.clamp_min(1e-30).log(), torch.zeros_like(weights))
    return -(weights * logs).sum(dim=-1)


def head_statistics(
    captures: Sequence[AttentionCapture], cls_token: str = "[CLS]", sep_token: str = "[SEP]"
) -> HeadStatistics:
    """Average each head's attention patterns over every query token of ``captures``.

    Args:
        captures: self-attention captures of one model (same layers and heads).
        cls_token, sep_token: the strings of the special tokens.
    """
    if not captures:
        raise ValueError("`captures` must hold at least one capture")
    layers, heads = captures[0].num_layers, captures[0].num_heads
    sums = {name: torch.zeros(layers, heads, dtype=torch.float64) for name in PATTERNS}
    entropy = torch.zeros(layers, heads, dtype=torch.float64)
    uniform = 0.0
    count = 0
    for capture in captures:
        weights = capture.attention.to(torch.float64)  # (L, H, n, n)
        if weights.shape[:2] != (layers, heads):
            raise ValueError(
                f"every capture must have {layers} layers x {heads} heads, got "
                f"{tuple(weights.shape[:2])}"
            )
        n = weights.shape[-1]
        columns = {
            "cls": [i for i, t in enumerate(capture.tokens) if t == cls_token],
            "sep": [i for i, t in enumerate(capture.tokens) if t == sep_token],
            "punct": [i for i, t in enumerate(capture.tokens) if is_punctuation(t)],
        }
        for name, keys in columns.items():
            if keys:
                sums[name] += weights[..., keys].sum(dim=(-1, -2))
        for name, offset in (("prev", -1), ("next", 1), ("self", 0)):
            sums[name] += torch.diagonal(weights, offset=offset, dim1=-2, dim2=-1).sum(dim=-1)
        entropy += _row_entropy(weights).sum(dim=-1)
        # A causal model (no weight above the diagonal anywhere) lets row i see i + 1 keys.
        causal = n > 1 and not bool(torch.triu(weights, diagonal=1).any())
        visible = torch.arange(1, n + 1) if causal else torch.full((n,), n)
        uniform += float(visible.to(torch.float64).log().sum())
        count += n
    return HeadStatistics(
        attention={name: (value / count).float() for name, value in sums.items()},
        entropy=(entropy / count).float(),
        uniform_entropy=uniform / count,
    )


def _js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Base-2 Jensen-Shannon divergence of rows: ``p (n, n)``, ``q (K, n, n) -> (K, n)``."""
    m = (p + q) / 2
    kl_p = torch.where(p > 0, p * (p.clamp_min(1e-30) / m.clamp_min(1e-30)).log2(), 0.0)
    kl_q = torch.where(q > 0, q * (q.clamp_min(1e-30) / m.clamp_min(1e-30)).log2(), 0.0)
    return 0.5 * (kl_p.sum(-1) + kl_q.sum(-1))


def head_distances(captures: Sequence[AttentionCapture]) -> Tensor:
    """Jensen-Shannon distance between every pair of heads (Clark et al. section 6).

    For heads ``a`` and ``b``, the Jensen-Shannon divergence (base 2, in [0, 1]) of their
    attention rows is averaged over every query token of ``captures``; the distance is its
    square root (a metric).

    Returns:
        ``(layers * heads, layers * heads)``; head ``(l, h)`` is row ``l * heads + h``.
    """
    if not captures:
        raise ValueError("`captures` must hold at least one capture")
    total: Tensor | None = None
    count = 0
    for capture in captures:
        weights = capture.attention.to(torch.float64)
        rows = weights.flatten(0, 1)  # (K, n, n)
        part = torch.stack([_js_divergence(rows[a], rows).sum(-1) for a in range(len(rows))])
        total = part if total is None else total + part
        count += weights.shape[-2]
    assert total is not None
    return (total / count).clamp_min(0).sqrt().float()


def cluster_heads(distances: Tensor, n_clusters: int) -> list[int]:
    """Average-linkage agglomerative clustering of heads.

    Args:
        distances: ``(K, K)`` symmetric distances (:func:`head_distances`).
        n_clusters: the number of clusters wanted (``1 <= n_clusters <= K``).

    Returns:
        cluster label of each of the ``K`` heads, labels ``0 .. n_clusters - 1`` in order
        of first appearance.
    """
    k = distances.shape[0]
    if distances.dim() != 2 or distances.shape[1] != k:
        raise ValueError(f"`distances` must be (K, K), got shape {tuple(distances.shape)}")
    if not 1 <= n_clusters <= k:
        raise ValueError(f"`n_clusters` must be in [1, {k}], got {n_clusters}")
    d = distances.to(torch.float64)
    clusters: list[list[int]] = [[i] for i in range(k)]
    while len(clusters) > n_clusters:
        best = (math.inf, 0, 1)
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                link = float(d[clusters[a]][:, clusters[b]].mean())
                if link < best[0]:
                    best = (link, a, b)
        _, a, b = best
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    labels = [0] * k
    for label, members in enumerate(sorted(clusters, key=min)):
        for i in members:
            labels[i] = label
    return labels


def embed_heads(distances: Tensor, dims: int = 2) -> Tensor:
    """Classical multidimensional scaling of a distance matrix: ``(K, K) -> (K, dims)``
    points whose Euclidean distances approximate ``distances``."""
    k = distances.shape[0]
    if distances.dim() != 2 or distances.shape[1] != k:
        raise ValueError(f"`distances` must be (K, K), got shape {tuple(distances.shape)}")
    d2 = distances.to(torch.float64) ** 2
    centre = torch.eye(k, dtype=torch.float64) - 1.0 / k
    gram = -0.5 * centre @ d2 @ centre
    values, vectors = torch.linalg.eigh(gram)
    top = values.argsort(descending=True)[:dims]
    return (vectors[:, top] * values[top].clamp_min(0).sqrt()).float()


def pattern_report(
    stats: HeadStatistics, threshold: float = 0.5, broad: float = 0.9, focused: float = 0.25
) -> str:
    """A plain-text report of which heads show which pattern.

    Args:
        stats: from :func:`head_statistics`.
        threshold: a head shows a pattern when its mean attention to it is at least this.
        broad: a head is broad when its mean entropy is at least this fraction of the
            uniform entropy.
        focused: a head is focused when its mean entropy is at most this fraction of it.

    Returns:
        One line per pattern, heads written ``layer-head`` (both 0-based) with their mean.
    """
    lines = []
    for name in PATTERNS:
        table = stats.attention[name]
        heads = [
            f"{layer}-{head} ({float(table[layer, head]):.2f})"
            for layer, head in (table >= threshold).nonzero().tolist()
        ]
        lines.append(f"{name:>8}: " + (", ".join(heads) if heads else "-"))
    ratio = stats.entropy / max(stats.uniform_entropy, 1e-12)
    for label, selected in (("broad", ratio >= broad), ("focused", ratio <= focused)):
        heads = [
            f"{layer}-{head} ({float(stats.entropy[layer, head]):.2f} nats)"
            for layer, head in selected.nonzero().tolist()
        ]
        lines.append(f"{label:>8}: " + (", ".join(heads) if heads else "-"))
    return "\n".join(lines)


__all__ = [
    "PATTERNS",
    "HeadStatistics",
    "cluster_heads",
    "embed_heads",
    "head_distances",
    "head_statistics",
    "is_punctuation",
    "pattern_report",
]
