"""Defences against noisy or poisoned labels: relabel suspicious points, or drop them.

* :func:`knn_sanitize`: kNN label sanitisation (Paudice, Muñoz-González & Lupu 2018).
  Each training point looks at its ``k`` nearest neighbours (in any feature space: raw
  inputs, or embeddings from a zoo encoder); when the most common label among them has
  a share of at least ``eta``, the point takes that label.
* :func:`find_label_issues` / :func:`confident_learning_filter`: a confident-learning
  filter (Northcutt, Jiang & Chuang 2021). From out-of-sample probabilities, a per-class
  threshold ``t_j`` (the mean probability of class ``j`` over the points labelled ``j``)
  decides each point's *confident* class; counting given against confident classes gives
  the confident joint, and the points it finds off the diagonal are flagged and dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention.validation import check_int
from ._validation import (
    check_features,
    check_labels,
    check_probabilities,
    check_same_length,
    infer_num_classes,
)
from .classifiers import Classifier, cross_val_predict_proba

METRICS = ("euclidean", "cosine")
CL_METHODS = ("prune_by_noise_rate", "confident_joint")


@dataclass
class SanitizedLabels:
    """What :func:`knn_sanitize` returns.

    Attributes:
        labels: ``(n,)`` labels after relabelling.
        changed: ``(n,)`` boolean, True where the label was changed.
        majority: ``(n,)`` the most common label among each point's neighbours.
        agreement: ``(n,)`` that label's share of the ``k`` neighbours, in ``(0, 1]``.
    """

    labels: Tensor
    changed: Tensor
    majority: Tensor
    agreement: Tensor


def nearest_neighbours(
    features: Tensor, k: int, metric: str = "euclidean", chunk_size: int = 1024
) -> Tensor:
    """Indices ``(n, k)`` of each point's ``k`` nearest other points (itself excluded).

    Args:
        features: ``(n, d)``.
        k: neighbours, ``1 <= k < n``.
        metric: ``"euclidean"`` or ``"cosine"``.
        chunk_size: rows of the distance matrix computed at a time (memory ``chunk x n``).
    """
    check_features(features, None, "features")
    n = features.shape[0]
    check_int(k, "k")
    if k >= n:
        raise ValueError(f"`k` must be smaller than the number of points {n}, got {k}")
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}")
    check_int(chunk_size, "chunk_size")
    points = F.normalize(features.float(), dim=1) if metric == "cosine" else features.float()
    out = torch.empty(n, k, dtype=torch.long, device=features.device)
    for start in range(0, n, chunk_size):
        rows = points[start : start + chunk_size]
        distance = -(rows @ points.T) if metric == "cosine" else torch.cdist(rows, points)
        own = torch.arange(start, start + rows.shape[0], device=features.device)
        distance[torch.arange(rows.shape[0], device=features.device), own] = float("inf")
        out[start : start + rows.shape[0]] = distance.topk(k, largest=False).indices
    return out


def knn_sanitize(
    features: Tensor,
    labels: Tensor,
    k: int = 10,
    eta: float = 0.6,
    *,
    num_classes: int | None = None,
    metric: str = "euclidean",
) -> SanitizedLabels:
    """kNN label sanitisation (Paudice et al. 2018).

    Every point is judged on the labels its neighbours have *before* any relabelling.
    A tie for the most common neighbour label keeps the point's own label if it is among
    the tied ones, else takes the smallest tied class id.

    Args:
        features: ``(n, d)`` feature space (inputs, or a zoo encoder's embeddings).
        labels: ``(n,)`` possibly poisoned class ids.
        k: neighbours consulted.
        eta: relabel when the majority's share of the neighbours is ``>= eta``, in
            ``(0, 1]``; with two classes values ``<= 0.5`` relabel every point.
        num_classes: ``K`` (default ``max(labels) + 1``).
        metric: ``"euclidean"`` or ``"cosine"``.

    Returns:
        :class:`SanitizedLabels`.
    """
    check_features(features, None, "features")
    num_classes = infer_num_classes(labels, num_classes)
    check_same_length(labels, features.shape[0], "labels", "features")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 < eta <= 1:
        raise ValueError(f"`eta` must be a float in (0, 1], got {eta}")
    neighbours = nearest_neighbours(features, k, metric)
    votes = F.one_hot(labels.to(features.device)[neighbours], num_classes).sum(1)  # (n, K)
    top = votes.max(1).values
    own = labels.to(features.device)
    tied = votes == top[:, None]
    own_tied = tied.gather(1, own[:, None]).squeeze(1)
    first_tied = tied.float().argmax(1)
    majority = torch.where(own_tied, own, first_tied)
    agreement = top.double() / k
    relabel = agreement >= eta
    new = torch.where(relabel, majority, own).to(labels.dtype).to(labels.device)
    return SanitizedLabels(
        new, new != labels, majority.to(labels.device), agreement.to(labels.device)
    )


def per_class_thresholds(probs: Tensor, labels: Tensor) -> Tensor:
    """``(K,)``: ``t_j`` = mean of ``probs[:, j]`` over the points labelled ``j``.

    A class nobody is labelled with gets threshold 1 (never confident) rather than NaN.
    """
    k = probs.shape[1]
    counts = torch.bincount(labels, minlength=k).double()
    sums = torch.zeros(k, dtype=torch.float64, device=probs.device)
    sums.index_add_(0, labels, probs.double().gather(1, labels[:, None]).squeeze(1))
    return torch.where(counts > 0, sums / counts.clamp_min(1), 1.0)


def _check_probs_labels(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    check_probabilities(probs, "probs")
    check_labels(labels, "labels", num_classes=probs.shape[1])
    check_same_length(labels, probs.shape[0], "labels", "probs")
    return probs.detach().double().cpu(), labels.detach().cpu().long()


def confident_labels(probs: Tensor, labels: Tensor) -> Tensor:
    """Each point's confident class ``(n,)``, or -1 where no class passes its threshold.

    The confident class of ``x`` is the most probable class ``j`` among those with
    ``probs[x, j] >= t_j`` (:func:`per_class_thresholds`).
    """
    probs, labels_cpu = _check_probs_labels(probs, labels)
    above = probs >= per_class_thresholds(probs, labels_cpu)[None, :]
    masked = torch.where(above, probs, -1.0)
    best = masked.argmax(1)
    return torch.where(above.any(1), best, -1).to(labels.device)


def confident_joint(probs: Tensor, labels: Tensor) -> Tensor:
    """``(K, K)`` counts: ``C[i, j]`` = points labelled ``i`` whose confident class is ``j``.

    Args:
        probs: ``(n, K)`` out-of-sample probabilities (see
            :func:`~attnzoo.robustness.cross_val_predict_proba`).
        labels: ``(n,)`` given (possibly noisy) labels.
    """
    probs_cpu, labels_cpu = _check_probs_labels(probs, labels)
    k = probs_cpu.shape[1]
    confident = confident_labels(probs, labels).cpu()
    counted = confident >= 0
    flat = labels_cpu[counted] * k + confident[counted]
    return torch.bincount(flat, minlength=k * k).reshape(k, k)


def find_label_issues(probs: Tensor, labels: Tensor, method: str = "prune_by_noise_rate") -> Tensor:
    """Flag likely label errors from out-of-sample probabilities (confident learning).

    Args:
        probs: ``(n, K)`` out-of-sample probabilities.
        labels: ``(n,)`` given labels.
        method: ``"confident_joint"`` flags every point counted off the diagonal of the
            confident joint; ``"prune_by_noise_rate"`` calibrates the joint to the class
            counts and, for each (given ``i``, true ``j``) off-diagonal cell, flags that
            many points labelled ``i`` with the largest margin ``p_j - p_i`` (never a whole
            class).

    Returns:
        ``(n,)`` boolean, True = likely mislabelled.
    """
    if method not in CL_METHODS:
        raise ValueError(f"`method` must be one of {CL_METHODS}, got {method!r}")
    probs_cpu, labels_cpu = _check_probs_labels(probs, labels)
    if method == "confident_joint":
        confident = confident_labels(probs, labels).cpu()
        issues = (confident >= 0) & (confident != labels_cpu)
        return issues.to(labels.device)
    joint = confident_joint(probs, labels).double()
    k = joint.shape[0]
    class_counts = torch.bincount(labels_cpu, minlength=k).double()
    row_sums = joint.sum(1, keepdim=True)
    # Calibrate: each row of the joint rescaled to the number of points given that label.
    calibrated = torch.where(
        row_sums > 0, joint / row_sums.clamp_min(1) * class_counts[:, None], 0.0
    )
    issues = torch.zeros(labels_cpu.shape[0], dtype=torch.bool)
    for i in range(k):
        members = (labels_cpu == i).nonzero().flatten()
        budget = max(int(class_counts[i]) - 1, 0)  # keep at least one point per class
        for j in range(k):
            count = min(round(float(calibrated[i, j])), members.numel()) if i != j else 0
            if count == 0:
                continue
            margin = probs_cpu[members, j] - probs_cpu[members, i]
            issues[members[torch.topk(margin, count).indices]] = True
        flagged = members[issues[members]]
        if flagged.numel() > budget:
            issues[flagged] = False
            margin = probs_cpu[flagged].max(1).values - probs_cpu[flagged, i]
            issues[flagged[torch.topk(margin, budget).indices]] = True
    return issues.to(labels.device)


@dataclass
class FilterResult:
    """What :func:`confident_learning_filter` returns.

    Attributes:
        keep: ``(n,)`` boolean, True for the points to train on.
        issues: ``(n,)`` boolean, the flagged points (``~keep``).
        probs: ``(n, K)`` the out-of-sample probabilities used.
    """

    keep: Tensor
    issues: Tensor
    probs: Tensor


def confident_learning_filter(
    make_classifier: Callable[[], Classifier],
    x: Tensor,
    labels: Tensor,
    *,
    folds: int = 5,
    method: str = "prune_by_noise_rate",
    num_classes: int | None = None,
    seed: int = 0,
) -> FilterResult:
    """Drop likely mislabelled points, found from cross-validated probabilities.

    The probabilities come from :func:`~attnzoo.robustness.cross_val_predict_proba`, the
    flags from :func:`find_label_issues`.

    Args:
        make_classifier: returns a fresh :class:`~attnzoo.robustness.Classifier`.
        x: ``(n, d)`` features.
        labels: ``(n,)`` possibly noisy labels.
        folds: cross-validation folds for the out-of-sample probabilities.
        method: see :func:`find_label_issues`.
        num_classes: ``K`` (default ``max(labels) + 1``).
        seed: seeds the folds.

    Returns:
        :class:`FilterResult`; train on ``x[result.keep], labels[result.keep]``.
    """
    probs = cross_val_predict_proba(
        make_classifier, x, labels, folds, num_classes=num_classes, seed=seed
    )
    issues = find_label_issues(probs, labels, method)
    return FilterResult(~issues, issues, probs)


__all__ = [
    "FilterResult",
    "SanitizedLabels",
    "confident_joint",
    "confident_labels",
    "confident_learning_filter",
    "find_label_issues",
    "knn_sanitize",
    "nearest_neighbours",
    "per_class_thresholds",
]
