"""Label smoothing: soft targets and the cross-entropy losses that use them.

Two conventions are in common use and both are here, under their own names:

* **uniform** (Szegedy et al. 2016; Müller, Kornblith & Hinton 2019, "When does label
  smoothing help?"): mix the one-hot target with the uniform distribution,
  ``y (1 - a) + a / K``; the true class gets ``1 - a + a / K``. This is what
  ``torch.nn.CrossEntropyLoss(label_smoothing=a)`` computes. Argument ``smoothing=a``.
* **max value**: the true class gets ``max_value`` and the other ``K - 1`` classes share
  ``1 - max_value`` equally. Argument ``max_value``. (``max_value = 1 - a + a / K`` gives
  the uniform convention back.)

For binary targets (a discriminator's real/fake, a sigmoid output) **one-sided**
smoothing (Salimans et al. 2016) lowers only the positive targets, ``1 -> max_value``,
and leaves the negatives at 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int, check_tensor
from ._validation import check_rate

IGNORE_INDEX = -100


def _check_convention(smoothing: float | None, max_value: float | None) -> None:
    if (smoothing is None) == (max_value is None):
        raise ValueError(
            "give exactly one of `smoothing` (uniform convention, y(1-a) + a/K) and "
            f"`max_value` (true class gets max_value), got smoothing={smoothing}, "
            f"max_value={max_value}"
        )
    if smoothing is not None:
        check_rate(smoothing, "smoothing")
    if max_value is not None and not (
        isinstance(max_value, (int, float))
        and not isinstance(max_value, bool)
        and 0 < max_value <= 1
    ):
        raise ValueError(f"`max_value` must be a float in (0, 1], got {max_value}")


def _on_off_values(
    num_classes: int, smoothing: float | None, max_value: float | None
) -> tuple[float, float]:
    """The target value of the true class and of every other class."""
    _check_convention(smoothing, max_value)
    if smoothing is not None:
        return 1 - smoothing + smoothing / num_classes, smoothing / num_classes
    assert max_value is not None
    return max_value, (1 - max_value) / (num_classes - 1)


def _check_class_ids(labels: object, num_classes: int, ignore_index: int | None) -> Tensor:
    check_tensor(labels, "labels")
    assert isinstance(labels, Tensor)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`labels` must be an integer tensor of class ids, got {labels.dtype}")
    valid = labels if ignore_index is None else labels[labels != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        bad = int(valid.min()) if int(valid.min()) < 0 else int(valid.max())
        raise ValueError(f"`labels` must hold class ids in [0, {num_classes}), got {bad}")
    return labels


def smooth_labels(
    labels: Tensor,
    num_classes: int,
    *,
    smoothing: float | None = None,
    max_value: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Soft targets for class ids: give exactly one of ``smoothing`` and ``max_value``.

    Args:
        labels: integer class ids, any shape ``(...)``.
        num_classes: ``K >= 2``.
        smoothing: ``a`` in ``[0, 1)``, uniform convention: ``y (1 - a) + a / K``.
        max_value: in ``(0, 1]``, max-value convention: the true class gets ``max_value``,
            the others ``(1 - max_value) / (K - 1)`` each.
        dtype: floating dtype of the targets.

    Returns:
        ``(..., K)`` targets, every row summing to 1, on ``labels``' device.
    """
    check_int(num_classes, "num_classes", minimum=2)
    on, off = _on_off_values(num_classes, smoothing, max_value)
    _check_class_ids(labels, num_classes, ignore_index=None)
    targets = torch.full((*labels.shape, num_classes), off, dtype=dtype, device=labels.device)
    return targets.scatter_(-1, labels.long().unsqueeze(-1), on)


def smoothed_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    smoothing: float | None = None,
    max_value: float | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of ``logits`` against smoothed targets (give ``smoothing`` or ``max_value``).

    ``smoothing=a`` equals ``F.cross_entropy(logits, labels, label_smoothing=a)``;
    ``smoothing=0`` (or ``max_value=1``) is plain cross-entropy.

    Args:
        logits: ``(..., K)`` unnormalised scores of any classifier.
        labels: ``(...)`` integer class ids; ``ignore_index`` entries (padding) are skipped.
        smoothing, max_value: the convention, see :func:`smooth_labels`.
        ignore_index: label value that contributes nothing (default -100, as in torch).
        reduction: ``"mean"`` over the non-ignored positions, ``"sum"``, or ``"none"``
            (``(...)``, 0 at ignored positions).

    Returns:
        a scalar, or ``(...)`` for ``reduction="none"``.
    """
    check_tensor(logits, "logits")
    if logits.dim() < 1 or logits.shape[-1] < 2 or not logits.is_floating_point():
        raise ValueError(
            f"`logits` must be a floating tensor (..., K) with K >= 2 classes, got shape "
            f"{tuple(logits.shape)} and dtype {logits.dtype}"
        )
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`labels` must have shape {tuple(logits.shape[:-1])} (logits without the class "
            f"axis), got {tuple(labels.shape)}"
        )
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"`reduction` must be 'mean', 'sum' or 'none', got {reduction!r}")
    num_classes = logits.shape[-1]
    on, off = _on_off_values(num_classes, smoothing, max_value)
    _check_class_ids(labels, num_classes, ignore_index)
    keep = labels != ignore_index
    # Half-precision logits are normalised in float32; float32/float64 stay as they are.
    low_precision = logits.dtype in (torch.float16, torch.bfloat16)
    log_probs = F.log_softmax(logits.float() if low_precision else logits, dim=-1)
    safe_labels = labels.long().masked_fill(~keep, 0).unsqueeze(-1)
    true_term = log_probs.gather(-1, safe_labels).squeeze(-1)
    # sum_k t_k log p_k with t = off everywhere plus (on - off) at the true class.
    loss = -(off * log_probs.sum(-1) + (on - off) * true_term)
    loss = loss.masked_fill(~keep, 0.0).to(logits.dtype)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum().clamp_min(1)


class LabelSmoothingCrossEntropy(nn.Module):
    """Module form of :func:`smoothed_cross_entropy`: ``loss(logits (..., K), labels (...))``.

    Args:
        smoothing: uniform convention ``y (1 - a) + a / K`` (Müller et al. 2019).
        max_value: max-value convention (true class gets ``max_value``).
        ignore_index: label value to skip (padding).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        *,
        smoothing: float | None = None,
        max_value: float | None = None,
        ignore_index: int = IGNORE_INDEX,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_convention(smoothing, max_value)
        self.smoothing = smoothing
        self.max_value = max_value
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The smoothed cross-entropy of ``logits (..., K)`` against ``labels (...)``."""
        return smoothed_cross_entropy(
            logits,
            labels,
            smoothing=self.smoothing,
            max_value=self.max_value,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        if self.smoothing is not None:
            return f"smoothing={self.smoothing} (uniform convention)"
        return f"max_value={self.max_value} (max-value convention)"


def smooth_binary_targets(
    targets: Tensor,
    *,
    smoothing: float | None = None,
    max_value: float | None = None,
    one_sided: bool = False,
) -> Tensor:
    """Smoothed 0/1 targets for a sigmoid output (give ``smoothing`` or ``max_value``).

    Two-sided: positives become ``1 - a / 2`` and negatives ``a / 2`` (``smoothing=a``, the
    uniform convention with ``K = 2``), or ``max_value`` and ``1 - max_value``. One-sided
    (Salimans et al. 2016, for a GAN discriminator's real targets): positives only, the
    negatives stay exactly 0.

    Args:
        targets: floating or integer tensor of 0s and 1s, any shape.
        smoothing, max_value: the convention.
        one_sided: smooth only the positive targets.

    Returns:
        float targets of the same shape (the input's dtype when floating, else float32).
    """
    check_tensor(targets, "targets")
    if bool(((targets != 0) & (targets != 1)).any()):
        raise ValueError("`targets` must hold only 0s and 1s (hard binary targets)")
    on, off = _on_off_values(2, smoothing, max_value)
    dtype = targets.dtype if targets.is_floating_point() else torch.float32
    positive = targets.bool()
    out = torch.where(positive, on, 0.0 if one_sided else off)
    return out.to(dtype)


def smoothed_binary_cross_entropy_with_logits(
    logits: Tensor,
    targets: Tensor,
    *,
    smoothing: float | None = None,
    max_value: float | None = None,
    one_sided: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """``F.binary_cross_entropy_with_logits`` against :func:`smooth_binary_targets`.

    Args:
        logits: floating, any shape.
        targets: 0/1 of the same shape.
        smoothing, max_value, one_sided: see :func:`smooth_binary_targets`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """
    check_tensor(logits, "logits")
    if targets.shape != logits.shape:
        raise ValueError(
            f"`targets` must have the shape of `logits` {tuple(logits.shape)}, got "
            f"{tuple(targets.shape)}"
        )
    soft = smooth_binary_targets(
        targets, smoothing=smoothing, max_value=max_value, one_sided=one_sided
    )
    return F.binary_cross_entropy_with_logits(logits, soft.to(logits.dtype), reduction=reduction)


__all__ = [
    "LabelSmoothingCrossEntropy",
    "smooth_binary_targets",
    "smooth_labels",
    "smoothed_binary_cross_entropy_with_logits",
    "smoothed_cross_entropy",
]
