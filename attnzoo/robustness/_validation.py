"""Argument checks shared by the robustness modules.

They extend :mod:`attnzoo.attention.validation` with the checks that label-noise code
needs (class labels, rates, budgets, probability rows, seeds), with the same contract: a
``TypeError`` or ``ValueError`` naming the argument, what was expected and what came.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attention.validation import check_int, check_rank, check_tensor


def check_labels(labels: object, name: str = "labels", num_classes: int | None = None) -> Tensor:
    """Return ``labels`` if it is a 1-D integer tensor of class ids in ``[0, num_classes)``.

    Args:
        labels: class ids, shape ``(n,)``.
        name: the argument's name for the error message.
        num_classes: the number of classes; ``None`` only asks for ids ``>= 0``.

    Raises:
        TypeError: not a tensor, or not an integer dtype (a float or bool label array is
            refused rather than truncated).
        ValueError: not 1-D, empty, or an id out of range.
    """
    check_tensor(labels, name)
    assert isinstance(labels, Tensor)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(
            f"`{name}` must be an integer tensor of class ids (torch.long), got dtype "
            f"{labels.dtype}"
        )
    check_rank(labels, 1, name, "(n,)")
    if labels.numel() == 0:
        raise ValueError(f"`{name}` must hold at least one label, got shape (0,)")
    low, high = (int(v) for v in torch.aminmax(labels))
    if low < 0:
        raise ValueError(f"`{name}` must hold class ids >= 0, got {low}")
    if num_classes is not None and high >= num_classes:
        raise ValueError(
            f"`{name}` must hold class ids in [0, {num_classes}) for num_classes={num_classes}, "
            f"got {high}"
        )
    return labels


def infer_num_classes(labels: Tensor, num_classes: int | None, name: str = "labels") -> int:
    """Check ``labels`` and return ``num_classes``, or ``max(labels) + 1`` (at least 2) if None."""
    if num_classes is not None:
        check_int(num_classes, "num_classes", minimum=2)
    check_labels(labels, name, num_classes)
    return num_classes if num_classes is not None else max(int(labels.max()) + 1, 2)


def check_binary_labels(labels: object, name: str = "labels") -> Tensor:
    """Return ``labels`` if it is a 1-D integer tensor of ids in ``{0, 1}``, else raise."""
    return check_labels(labels, name, num_classes=2)


def check_rate(rate: object, name: str) -> float:
    """Return ``rate`` as a float if it is a real number in ``[0, 1)``, else raise."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"`{name}` must be a float in [0, 1), got {type(rate).__name__}")
    if not 0 <= rate < 1:
        raise ValueError(f"`{name}` must be in [0, 1), got {rate}")
    return float(rate)


def check_budget(budget: object, n: int, name: str = "budget") -> int:
    """Return ``budget`` if it is an int in ``[0, n]`` (flips cannot outnumber the points)."""
    check_int(budget, name, minimum=0)
    assert isinstance(budget, int)
    if budget > n:
        raise ValueError(f"`{name}` must be at most the number of points {n}, got {budget}")
    return budget


def check_features(x: object, n: int | None, name: str = "x") -> Tensor:
    """Return ``x`` if it is a floating ``(n, dim)`` tensor (with ``n`` rows when given)."""
    check_tensor(x, name)
    assert isinstance(x, Tensor)
    check_rank(x, 2, name, "(n, dim)")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"`{name}` must have {n} rows (one per label), got shape {tuple(x.shape)}")
    return x


def check_probabilities(probs: object, name: str = "probs") -> Tensor:
    """Return ``probs`` if it is a floating ``(n, classes)`` tensor of rows summing to one."""
    check_tensor(probs, name)
    assert isinstance(probs, Tensor)
    check_rank(probs, 2, name, "(n, classes)")
    if not probs.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {probs.dtype}")
    if probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(
            f"`{name}` must have at least one row and two classes, got shape {tuple(probs.shape)}"
        )
    values = probs.detach()
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(f"`{name}` must hold finite probabilities >= 0")
    sums = values.double().sum(-1)
    worst = float((sums - 1).abs().max())
    if worst > 1e-3:
        raise ValueError(
            f"`{name}` rows must sum to 1 (probabilities, e.g. a softmax), got a row summing "
            f"to {float(sums[(sums - 1).abs().argmax()]):.4f}; pass softmax(logits)"
        )
    return probs


def check_logits(logits: object, n: int | None, name: str = "logits") -> Tensor:
    """Return ``logits`` if it is a floating, finite ``(n, classes)`` tensor, else raise."""
    check_tensor(logits, name)
    assert isinstance(logits, Tensor)
    check_rank(logits, 2, name, "(n, classes)")
    if not logits.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.shape[1] < 2:
        raise ValueError(
            f"`{name}` must have at least two classes, got shape {tuple(logits.shape)}"
        )
    if n is not None and logits.shape[0] != n:
        raise ValueError(
            f"`{name}` must have {n} rows (one per label), got shape {tuple(logits.shape)}"
        )
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"`{name}` must be finite")
    return logits


def check_same_length(labels: Tensor, n: int, name: str, other: str) -> None:
    """Raise ``ValueError`` unless ``labels`` has ``n`` entries, one per row of ``other``."""
    if labels.shape[0] != n:
        raise ValueError(
            f"`{name}` must have one entry per row of `{other}` ({n}), got {labels.shape[0]}"
        )


def as_generator(seed: int | torch.Generator | None) -> torch.Generator | None:
    """A CPU ``torch.Generator`` from a seed (int), a generator (returned as is) or None.

    Sampling happens on the CPU and the result moves to the data's device, so a seed gives
    the same labels on every device. ``None`` returns ``None``: torch's global random state
    is then used, as by any torch sampler called without a generator.
    """
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(
            f"`seed` must be an int, a torch.Generator or None, got {type(seed).__name__}"
        )
    return torch.Generator().manual_seed(seed)
