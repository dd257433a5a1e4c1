"""Seeded synthetic N-way K-shot classification episodes, laid out as sequences.

Every episode draws ``n_way`` fresh class prototypes ``c_1 .. c_N ~ N(0, I)`` in
``feature_dim`` dimensions; an example of class ``y`` is ``c_y + noise * N(0, I)``. Because the
prototypes are new in every episode, no fixed mapping from features to classes exists: a model
can only classify the query by comparing it with the labelled support examples it is shown in
the same sequence, which is what a meta-learner such as SNAIL (Mishra et al. 2018) must learn.

An episode is the sequence of its ``n_way * k_shot`` support examples in random order followed
by one query. Each time step is the example's features concatenated with the one-hot label of
that example; the query's label slot is all zeros. Labels are ``0 .. n_way - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...attention.validation import check_non_negative, check_positive, check_rank, check_size


@dataclass
class FewShotBatch:
    """A batch of few-shot episodes.

    Attributes:
        inputs: ``(batch, n_way * k_shot + 1, feature_dim + n_way)`` float: per step the
            features, then the one-hot label (zeros at the last, query step).
        labels: ``(batch, n_way * k_shot + 1)`` long, the class of every step; the last column
            is the query's class, the target.
        n_way: number of classes per episode.
    """

    inputs: Tensor
    labels: Tensor
    n_way: int

    @property
    def query_labels(self) -> Tensor:
        """``(batch,)``: the class of each episode's query (the last step)."""
        return self.labels[:, -1]

    @property
    def features(self) -> Tensor:
        """``(batch, n_way * k_shot + 1, feature_dim)``: the examples without their labels."""
        return self.inputs[..., : self.inputs.shape[-1] - self.n_way]

    def to(self, device: torch.device | str) -> FewShotBatch:
        """The same batch on ``device``."""
        return FewShotBatch(self.inputs.to(device), self.labels.to(device), self.n_way)


def episode_inputs(features: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Lay out labelled support examples and a query as one input sequence.

    Args:
        features: ``(batch, n_support + 1, feature_dim)``; the last step is the query.
        labels: ``(batch, n_support + 1)`` long in ``[0, n_way)``; the query's label (last
            column) is not shown to the model, its one-hot slot is zeroed.
        n_way: number of classes, the width of the one-hot label slot.

    Returns:
        ``(batch, n_support + 1, feature_dim + n_way)`` in ``features``' dtype and device.
    """
    check_positive(n_way, "n_way")
    check_rank(features, 3, "features", "(batch, n_support + 1, feature_dim)")
    check_rank(labels, 2, "labels", "(batch, n_support + 1)")
    check_size(labels, 0, features.shape[0], "labels", "the batch size of `features`")
    check_size(labels, 1, features.shape[1], "labels", "the number of steps of `features`")
    check_labels(labels, n_way, "labels")
    one_hot = F.one_hot(labels, n_way).to(features.dtype)
    one_hot[:, -1] = 0  # the query's label is what the model has to predict
    return torch.cat([features, one_hot], dim=-1)


def check_labels(labels: Tensor, n_way: int, name: str) -> None:
    """Raise unless ``labels`` is a long tensor with every value in ``[0, n_way)``."""
    if labels.dtype != torch.long:
        raise TypeError(f"`{name}` must be a long tensor of class ids, got dtype {labels.dtype}")
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_way:
        bad = low if low < 0 else high
        raise ValueError(f"`{name}` must be class ids in [0, {n_way}), got {bad}")


def fewshot_task(
    batch_size: int,
    n_way: int,
    k_shot: int,
    feature_dim: int,
    generator: torch.Generator,
    noise: float = 0.5,
) -> FewShotBatch:
    """Draw ``batch_size`` N-way K-shot episodes.

    Args:
        batch_size: number of episodes.
        n_way: classes per episode (chance accuracy is ``1 / n_way``).
        k_shot: labelled support examples per class.
        feature_dim: width of an example's features.
        generator: the seeded source of every random draw.
        noise: standard deviation of an example around its class prototype, >= 0 (the
            prototypes have unit variance per coordinate, so 0 makes the task trivially
            separable and large values make classes overlap).

    Returns:
        a :class:`FewShotBatch` with ``inputs`` ``(batch, n_way * k_shot + 1,
        feature_dim + n_way)`` and ``labels`` ``(batch, n_way * k_shot + 1)``. The support
        holds exactly ``k_shot`` examples of each class, shuffled; the query's class is
        uniform over the ``n_way`` classes.
    """
    check_positive(batch_size, "batch_size")
    check_positive(n_way, "n_way")
    check_positive(k_shot, "k_shot")
    check_positive(feature_dim, "feature_dim")
    check_non_negative(noise, "noise")
    n_support = n_way * k_shot
    prototypes = torch.randn(batch_size, n_way, feature_dim, generator=generator)
    # Every class k_shot times, in an independent random order per episode.
    support = torch.arange(n_way).repeat(k_shot).expand(batch_size, n_support)
    order = torch.rand(batch_size, n_support, generator=generator).argsort(dim=1)
    support = support.gather(1, order)
    query = torch.randint(0, n_way, (batch_size, 1), generator=generator)
    labels = torch.cat([support, query], dim=1)
    centres = prototypes.gather(1, labels[..., None].expand(-1, -1, feature_dim))
    features = centres + noise * torch.randn(centres.shape, generator=generator)
    return FewShotBatch(episode_inputs(features, labels, n_way), labels, n_way)


def nearest_support_accuracy(batch: FewShotBatch) -> float:
    """Accuracy of labelling each query with the class of its nearest support example.

    A reference point for a learned model: the non-learned nearest-neighbour rule that the
    task's construction makes near-optimal for one-shot episodes.
    """
    features = batch.features
    distances = (features[:, :-1] - features[:, -1:]).pow(2).sum(-1)  # (batch, n_support)
    nearest = distances.argmin(dim=1, keepdim=True)
    predicted = batch.labels[:, :-1].gather(1, nearest).squeeze(1)
    return float((predicted == batch.query_labels).float().mean())


__all__ = [
    "FewShotBatch",
    "check_labels",
    "episode_inputs",
    "fewshot_task",
    "nearest_support_accuracy",
]
