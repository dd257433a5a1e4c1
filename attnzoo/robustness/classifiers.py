"""The classifier interface the defences and experiments use, a small MLP, and
out-of-sample probabilities by cross-validation.

Any object with ``fit(x, labels)`` and ``predict_proba(x) -> (n, K)`` is a
:class:`Classifier`: the SVMs of :mod:`attnzoo.robustness.svm`, :class:`MLPClassifier`,
or a wrapper around a zoo model's classification head.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int, check_positive
from ..transformers_zoo.training import TrainConfig, TrainHistory, fit
from ._validation import check_features, check_labels, check_same_length, infer_num_classes
from .noise import LabelFlipping


@runtime_checkable
class Classifier(Protocol):
    """What the defences and experiments need from a classifier."""

    def fit(self, x: Tensor, labels: Tensor) -> object:
        """Train on ``x (n, d)`` and class ids ``labels (n,)``."""

    def predict_proba(self, x: Tensor) -> Tensor:
        """``(n, K)`` class probabilities for ``x (n, d)``."""


class MLPClassifier(nn.Module):
    """A small multi-layer perceptron classifier: ``x (n, in_dim) -> logits (n, K)``.

    The training settings live in the constructor, so ``lambda: MLPClassifier(d, K)`` is a
    classifier factory for :func:`cross_val_predict_proba` and the experiments.

    Args:
        in_dim: input features.
        num_classes: ``K >= 2``.
        hidden: width of the hidden layers.
        depth: hidden layers (ReLU).
        steps: optimiser steps of :meth:`fit` (AdamW, :func:`attnzoo.transformers_zoo.fit`).
        lr: learning rate.
        weight_decay: AdamW weight decay.
        batch_size: mini-batch size (None: the whole set every step).
        loss: ``loss(logits (b, K), labels (b,)) -> scalar``; default cross-entropy (a
            :class:`~attnzoo.robustness.LabelSmoothingCrossEntropy` for smoothing).
        flip_rate: label flipping as a training technique: this fraction of the labels is
            flipped afresh every epoch (:class:`~attnzoo.robustness.LabelFlipping`).
        seed: seeds the initial weights, the batches and the flips.
        progress: show a tqdm bar while fitting.
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden: int = 64,
        depth: int = 2,
        *,
        steps: int = 500,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        batch_size: int | None = None,
        loss: Callable[[Tensor, Tensor], Tensor] | None = None,
        flip_rate: float = 0.0,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        super().__init__()
        check_int(in_dim, "in_dim")
        check_int(num_classes, "num_classes", minimum=2)
        check_int(hidden, "hidden")
        check_int(depth, "depth", minimum=0)
        check_int(steps, "steps")
        check_positive(lr, "lr")
        if batch_size is not None:
            check_int(batch_size, "batch_size")
        self.in_dim, self.num_classes = in_dim, num_classes
        self.steps, self.lr, self.weight_decay = steps, lr, weight_decay
        self.batch_size = batch_size
        self.loss = loss or F.cross_entropy
        self.flip_rate = flip_rate
        self.seed = seed
        self.progress = progress
        self.history: TrainHistory | None = None
        widths = [in_dim] + [hidden] * depth
        layers: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for a, b in itertools.pairwise(widths):
                layers += [nn.Linear(a, b), nn.ReLU()]
            layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(n, K)`` of ``x (n, in_dim)``."""
        check_features(x, None, "x")
        if x.shape[1] != self.in_dim:
            raise ValueError(f"`x` must have {self.in_dim} features, got {x.shape[1]}")
        return self.net(x)

    def fit(self, x: Tensor, labels: Tensor) -> MLPClassifier:
        """Train on ``x (n, in_dim)`` and ``labels (n,)`` for ``steps`` steps; returns ``self``."""
        check_features(x, None, "x")
        check_labels(labels, "labels", num_classes=self.num_classes)
        check_same_length(labels, x.shape[0], "labels", "x")
        n = x.shape[0]
        batch_size = min(self.batch_size or n, n)
        steps_per_epoch = math.ceil(n / batch_size)
        flipping = (
            LabelFlipping(labels, self.flip_rate, self.num_classes, seed=self.seed)
            if self.flip_rate > 0
            else None
        )
        epoch_cache: dict[int, tuple[Tensor, Tensor]] = {}

        def batch(step: int) -> tuple[Tensor, Tensor]:
            epoch, position = divmod(step, steps_per_epoch)
            if epoch not in epoch_cache:
                epoch_cache.clear()
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                order = torch.randperm(n, generator=generator).to(x.device)
                epoch_labels = flipping(epoch) if flipping is not None else labels
                epoch_cache[epoch] = (order, epoch_labels)
            order, epoch_labels = epoch_cache[epoch]
            rows = order[position * batch_size : (position + 1) * batch_size]
            return x[rows], epoch_labels[rows]

        def loss_fn(model: nn.Module, data: object) -> Tensor:
            assert isinstance(data, tuple)
            inputs, targets = data
            return self.loss(model(inputs), targets)

        config = TrainConfig(
            steps=self.steps,
            lr=self.lr,
            weight_decay=self.weight_decay,
            clip_norm=None,
            progress=self.progress,
            description="mlp",
        )
        self.history = fit(self, loss_fn, batch, config)
        return self

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        """Softmax probabilities ``(n, K)``."""
        return self(x).softmax(-1)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class ids ``(n,)``."""
        return self(x).argmax(-1)


def stratified_folds(labels: Tensor, folds: int, seed: int = 0) -> Tensor:
    """Fold ids ``(n,)`` in ``[0, folds)``, each class spread evenly over the folds.

    Raises:
        ValueError: ``folds`` larger than the smallest non-empty class would leave a fold
            without that class.
    """
    check_labels(labels, "labels")
    check_int(folds, "folds", minimum=2)
    generator = torch.Generator().manual_seed(seed)
    cpu = labels.cpu()
    fold_of = torch.empty_like(cpu)
    for value in cpu.unique().tolist():
        members = (cpu == value).nonzero().flatten()
        if members.numel() < folds:
            raise ValueError(
                f"`folds`={folds} exceeds the {members.numel()} examples of class {value}"
            )
        members = members[torch.randperm(members.numel(), generator=generator)]
        # Start each class at a random fold so that the fold sizes stay balanced.
        start = int(torch.randint(folds, (1,), generator=generator))
        fold_of[members] = (torch.arange(members.numel()) + start) % folds
    return fold_of.to(labels.device)


def cross_val_predict_proba(
    make_classifier: Callable[[], Classifier],
    x: Tensor,
    labels: Tensor,
    folds: int = 5,
    *,
    num_classes: int | None = None,
    seed: int = 0,
) -> Tensor:
    """Out-of-sample probabilities: each row predicted by a model that did not train on it.

    Args:
        make_classifier: returns a fresh, unfitted :class:`Classifier`.
        x: ``(n, d)`` features.
        labels: ``(n,)`` (possibly noisy) class ids.
        folds: stratified folds (:func:`stratified_folds`).
        num_classes: ``K`` (default ``max(labels) + 1``).
        seed: seeds the fold assignment.

    Returns:
        ``(n, K)`` probabilities (float32 on ``x``'s device).
    """
    check_features(x, None, "x")
    k = infer_num_classes(labels, num_classes)
    check_same_length(labels, x.shape[0], "labels", "x")
    fold_of = stratified_folds(labels, folds, seed)
    probs = torch.zeros(x.shape[0], k, device=x.device)
    for fold in range(folds):
        held_out = fold_of == fold
        model = make_classifier()
        model.fit(x[~held_out], labels[~held_out])
        predicted = model.predict_proba(x[held_out])
        if predicted.shape != (int(held_out.sum()), k):
            raise ValueError(
                f"the classifier's predict_proba must return (n, {k}), got {tuple(predicted.shape)}"
            )
        probs[held_out] = predicted.detach().float().to(x.device)
    return probs


__all__ = ["Classifier", "MLPClassifier", "cross_val_predict_proba", "stratified_folds"]
