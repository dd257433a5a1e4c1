"""The training objectives of Sentence-BERT (Reimers and Gurevych 2019) and its successors.

All take sentence embeddings (the output of a
:class:`~attnzoo.transformers_zoo.sentence.SentenceEncoder`), so one encoder trains with
any of them:

* :class:`SoftmaxLoss`: a linear classifier on ``(u, v, |u - v|)`` with cross-entropy
  (SBERT's NLI objective);
* :func:`cosine_similarity_loss`: mean squared error between ``cos(u, v)`` and a gold
  score (SBERT's STS regression objective);
* :func:`triplet_loss`: ``max(d(a, p) - d(a, n) + margin, 0)`` with the Euclidean
  distance and margin 5 by default (SBERT's Wikipedia-sections objective);
* :func:`multiple_negatives_ranking_loss`: cross-entropy over ``scale * cos`` of each
  anchor against every positive in the batch (in-batch negatives, Henderson et al. 2017),
  plus optional hard negatives; ``scale`` 20.

Each equals the sentence-transformers loss of the same name on the same embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int, check_non_negative, check_positive, check_rank
from .sentence import cos_sim

TRIPLET_DISTANCES = ("euclidean", "cosine", "manhattan")


def _check_pair(u: Tensor, v: Tensor, names: tuple[str, str] = ("u", "v")) -> None:
    check_rank(u, 2, names[0], "(batch, dim)")
    check_rank(v, 2, names[1], "(batch, dim)")
    if u.shape != v.shape:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same shape (batch, dim), "
            f"got {tuple(u.shape)} and {tuple(v.shape)}"
        )


class SoftmaxLoss(nn.Module):
    """Classification of a sentence pair from ``(u, v, |u - v|)`` (SBERT's NLI objective).

    Args:
        dim: the embedding width.
        num_labels: the classes (3 for NLI: entailment, neutral, contradiction).
        multiply: also concatenate ``u * v`` (off in the paper).

    Parameters: ``classifier`` ``Linear((3 or 4) * dim, num_labels)``.
    """

    def __init__(self, dim: int, num_labels: int, multiply: bool = False) -> None:
        super().__init__()
        self.dim = check_int(dim, "dim")
        self.num_labels = check_int(num_labels, "num_labels", minimum=2)
        self.multiply = multiply
        self.classifier = nn.Linear((4 if multiply else 3) * dim, num_labels)

    def logits(self, u: Tensor, v: Tensor) -> Tensor:
        """``(batch, dim)`` twice -> ``(batch, num_labels)``."""
        _check_pair(u, v)
        if u.shape[1] != self.dim:
            raise ValueError(f"`u` must have dim = {self.dim}, got {u.shape[1]}")
        parts = [u, v, (u - v).abs()] + ([u * v] if self.multiply else [])
        return self.classifier(torch.cat(parts, dim=-1))

    def forward(self, u: Tensor, v: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy; ``labels`` ``(batch,)`` class ids in ``[0, num_labels)``."""
        logits = self.logits(u, v)
        if labels.shape != (u.shape[0],):
            raise ValueError(f"`labels` must have shape ({u.shape[0]},), got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.min() < 0 or labels.max() >= self.num_labels:
            raise ValueError(
                f"`labels` must be integer class ids in [0, {self.num_labels}), got {labels}"
            )
        return F.cross_entropy(logits, labels)


def cosine_similarity_loss(u: Tensor, v: Tensor, scores: Tensor) -> Tensor:
    """Mean squared error between ``cos(u_i, v_i)`` and ``scores_i``.

    Args:
        u, v: ``(batch, dim)``.
        scores: ``(batch,)`` gold similarities (e.g. STS scores scaled to ``[0, 1]``).

    Returns:
        scalar.
    """
    _check_pair(u, v)
    if scores.shape != (u.shape[0],):
        raise ValueError(f"`scores` must have shape ({u.shape[0]},), got {tuple(scores.shape)}")
    return F.mse_loss(F.cosine_similarity(u, v, dim=-1), scores.to(u.dtype))


def triplet_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 5.0,
    distance: str = "euclidean",
) -> Tensor:
    """``mean(max(d(a, p) - d(a, n) + margin, 0))``.

    Args:
        anchor, positive, negative: ``(batch, dim)``.
        margin: how much farther the negative must be (5 for the Euclidean distance, as in
            SBERT; use a margin below 2 with the cosine distance).
        distance: ``"euclidean"``, ``"cosine"`` (``1 - cos``) or ``"manhattan"``.

    Returns:
        scalar.
    """
    _check_pair(anchor, positive, ("anchor", "positive"))
    _check_pair(anchor, negative, ("anchor", "negative"))
    check_non_negative(margin, "margin")
    if distance == "euclidean":
        # pairwise_distance adds eps = 1e-6 to the difference, as sentence-transformers
        # (through it) does, which also keeps the gradient finite at a = p.
        d_pos = F.pairwise_distance(anchor, positive, p=2)
        d_neg = F.pairwise_distance(anchor, negative, p=2)
    elif distance == "manhattan":
        d_pos = F.pairwise_distance(anchor, positive, p=1)
        d_neg = F.pairwise_distance(anchor, negative, p=1)
    elif distance == "cosine":
        d_pos = 1 - F.cosine_similarity(anchor, positive, dim=-1)
        d_neg = 1 - F.cosine_similarity(anchor, negative, dim=-1)
    else:
        raise ValueError(f"`distance` must be one of {TRIPLET_DISTANCES}, got {distance!r}")
    return F.relu(d_pos - d_neg + margin).mean()


def multiple_negatives_ranking_loss(
    anchors: Tensor,
    positives: Tensor,
    negatives: Tensor | None = None,
    scale: float = 20.0,
) -> Tensor:
    """In-batch-negatives ranking loss (InfoNCE over cosine similarities).

    Anchor ``i`` is scored against every positive (and every hard negative) in the batch;
    the loss is the cross-entropy of ``scale * cos`` with target ``i``.

    Args:
        anchors, positives: ``(batch, dim)``; row ``i`` of each is a matching pair.
        negatives: optional hard negatives ``(batch * m, dim)`` (``m`` per anchor, any
            order: all are negatives for every anchor).
        scale: inverse temperature (20 in sentence-transformers).

    Returns:
        scalar.
    """
    _check_pair(anchors, positives, ("anchors", "positives"))
    check_positive(scale, "scale")
    candidates = positives
    if negatives is not None:
        check_rank(negatives, 2, "negatives", "(batch * m, dim)")
        if negatives.shape[1] != anchors.shape[1]:
            raise ValueError(
                f"`negatives` must have dim = {anchors.shape[1]}, got {negatives.shape[1]}"
            )
        candidates = torch.cat([positives, negatives])
    scores = cos_sim(anchors, candidates) * scale
    targets = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(scores, targets)


__all__ = [
    "TRIPLET_DISTANCES",
    "SoftmaxLoss",
    "cosine_similarity_loss",
    "multiple_negatives_ranking_loss",
    "triplet_loss",
]
