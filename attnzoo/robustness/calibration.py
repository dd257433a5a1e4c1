"""Calibration: how far a classifier's confidence is from its accuracy, and how to fix it.

* Metrics on predicted probabilities ``(n, K)`` and labels ``(n,)``:
  :func:`expected_calibration_error` (ECE, top-label, 15 equal-width bins by default or
  equal-mass bins), :func:`maximum_calibration_error` (MCE),
  :func:`negative_log_likelihood`, :func:`brier_score`, all of them at once in
  :func:`calibration_report`; the bins themselves from :func:`calibration_bins`.
* :func:`reliability_diagram` draws accuracy against confidence per bin as a PNG.
* :class:`TemperatureScaling` (Guo et al. 2017) divides the logits by one scalar fitted on
  validation *logits* with L-BFGS on the NLL; :class:`PlattScaling` (Platt 1999) maps a
  binary decision value (an SVM's) to a probability.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int, check_rank, check_tensor
from ._plotting import pyplot
from ._validation import check_binary_labels, check_labels, check_logits, check_probabilities

STRATEGIES = ("uniform", "quantile")


@dataclass
class CalibrationBins:
    """Per-bin statistics of top-label confidence (Guo et al. 2017).

    Attributes:
        edges: ``(n_bins + 1,)`` bin edges in ``[0, 1]`` (float64).
        confidence: ``(n_bins,)`` mean top probability of the bin (0 if empty).
        accuracy: ``(n_bins,)`` fraction of the bin whose top class is the label (0 if empty).
        count: ``(n_bins,)`` points in the bin.
    """

    edges: Tensor
    confidence: Tensor
    accuracy: Tensor
    count: Tensor

    @property
    def gaps(self) -> Tensor:
        """``(n_bins,)`` absolute gap ``|accuracy - confidence|`` per bin (0 if empty)."""
        return (self.accuracy - self.confidence).abs()

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean gap."""
        return float((self.gaps * self.count).sum() / self.count.sum())

    @property
    def mce(self) -> float:
        """Maximum calibration error: the largest gap over non-empty bins."""
        return float(self.gaps[self.count > 0].max())


def _check_pair(probs: object, labels: object) -> tuple[Tensor, Tensor]:
    probs = check_probabilities(probs, "probs")
    labels = check_labels(labels, "labels", num_classes=probs.shape[1])
    if labels.shape[0] != probs.shape[0]:
        raise ValueError(
            f"`labels` must have one entry per row of `probs` ({probs.shape[0]}), "
            f"got {labels.shape[0]}"
        )
    return probs.detach().double().cpu(), labels.detach().cpu()


def calibration_bins(
    probs: Tensor, labels: Tensor, n_bins: int = 15, strategy: str = "uniform"
) -> CalibrationBins:
    """Bin the top-label confidences of ``probs`` and measure each bin.

    Args:
        probs: ``(n, K)`` predicted probabilities (rows sum to 1).
        labels: ``(n,)`` true class ids.
        n_bins: number of bins (15, as in Guo et al. 2017).
        strategy: ``"uniform"``: equal-width bins ``(b / B, (b + 1) / B]``;
            ``"quantile"``: equal-mass bins, consecutive in order of confidence, of
            ``n // B`` points each and one more in the first ``n % B``.

    Returns:
        :class:`CalibrationBins`.
    """
    probs, labels = _check_pair(probs, labels)
    check_int(n_bins, "n_bins", minimum=1)
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, got {strategy!r}")
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    if strategy == "uniform":
        edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
        # bucketize with right=False puts c in bin b when edges[b] < c <= edges[b + 1].
        index = torch.bucketize(confidence, edges[1:-1])
    else:
        order = torch.argsort(confidence, stable=True)
        # Equal mass: bins of n // B sorted points, the first n % B bins one more (the
        # split of numpy's array_split).
        size, extra = divmod(len(order), n_bins)
        sizes = torch.full((n_bins,), size) + (torch.arange(n_bins) < extra)
        index = torch.empty_like(order)
        index[order] = torch.repeat_interleave(torch.arange(n_bins), sizes)
        edges = _quantile_edges(confidence[order], index[order], n_bins)
    count = torch.bincount(index, minlength=n_bins)
    total_conf = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, confidence)
    total_correct = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, index, correct)
    safe = count.clamp_min(1).double()
    return CalibrationBins(edges, total_conf / safe, total_correct / safe, count)


def _quantile_edges(sorted_conf: Tensor, sorted_bin: Tensor, n_bins: int) -> Tensor:
    """Edges halfway between neighbouring equal-mass bins (0 and 1 at the ends)."""
    edges = torch.zeros(n_bins + 1, dtype=torch.float64)
    edges[-1] = 1.0
    for b in range(1, n_bins):
        below, above = sorted_conf[sorted_bin < b], sorted_conf[sorted_bin >= b]
        if below.numel() and above.numel():
            edges[b] = (below[-1] + above[0]) / 2
        else:
            edges[b] = edges[b - 1]
    return edges


def expected_calibration_error(
    probs: Tensor, labels: Tensor, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    """ECE: ``sum_b |B_b| / n * |acc(B_b) - conf(B_b)|`` over top-label confidence bins.

    Args:
        probs: ``(n, K)`` predicted probabilities.
        labels: ``(n,)`` class ids.
        n_bins: bins (15 by default).
        strategy: ``"uniform"`` (equal width) or ``"quantile"`` (equal mass).
    """
    return calibration_bins(probs, labels, n_bins, strategy).ece


def maximum_calibration_error(
    probs: Tensor, labels: Tensor, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    """MCE: the largest ``|acc(B_b) - conf(B_b)|`` over non-empty bins (same arguments as ECE)."""
    return calibration_bins(probs, labels, n_bins, strategy).mce


def negative_log_likelihood(probs: Tensor, labels: Tensor, eps: float = 1e-12) -> float:
    """Mean ``-log p(label)`` over the ``n`` rows of ``probs`` ``(n, K)``.

    A probability of exactly 0 on the true class is clamped at ``eps`` (the NLL would be
    infinite); from logits, ``F.cross_entropy`` is exact and needs no clamp.
    """
    probs, labels = _check_pair(probs, labels)
    picked = probs.gather(1, labels[:, None]).squeeze(1)
    return float(-picked.clamp_min(eps).log().mean())


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score: mean over rows of ``sum_k (p_k - onehot_k)^2``, in ``[0, 2]``.

    For two classes this is twice scikit-learn's binary ``brier_score_loss``, which only
    scores the positive class.
    """
    probs, labels = _check_pair(probs, labels)
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return float(((probs - onehot) ** 2).sum(1).mean())


def calibration_report(
    probs: Tensor, labels: Tensor, n_bins: int = 15, strategy: str = "uniform"
) -> dict[str, float]:
    """Accuracy, ECE, MCE, NLL and Brier score of ``probs (n, K)`` against ``labels (n,)``.

    Returns:
        ``{"accuracy", "ece", "mce", "nll", "brier"}``.
    """
    bins = calibration_bins(probs, labels, n_bins, strategy)
    accuracy = float((probs.argmax(1).cpu() == labels.cpu()).double().mean())
    return {
        "accuracy": accuracy,
        "ece": bins.ece,
        "mce": bins.mce,
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
    }


def reliability_diagram(
    probs: Tensor,
    labels: Tensor,
    path: str | Path,
    n_bins: int = 15,
    strategy: str = "uniform",
    title: str | None = None,
) -> CalibrationBins:
    """Write a reliability diagram (accuracy against confidence per bin) as a PNG.

    The top panel draws each bin's accuracy as a bar over its confidence range, the gap
    to the bin's mean confidence in red, and the diagonal of perfect calibration; the
    bottom panel the share of points per bin. Needs matplotlib (``pip install
    'attnzoo[viz]'``).

    Args:
        probs: ``(n, K)`` predicted probabilities.
        labels: ``(n,)`` class ids.
        path: the PNG to write.
        n_bins, strategy: as in :func:`calibration_bins`.
        title: figure title (default: the ECE).

    Returns:
        the :class:`CalibrationBins` drawn.
    """
    bins = calibration_bins(probs, labels, n_bins, strategy)
    plt = pyplot("reliability_diagram")
    lefts = bins.edges[:-1].numpy()
    widths = (bins.edges[1:] - bins.edges[:-1]).numpy()
    filled = (bins.count > 0).numpy()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    accuracy, confidence = bins.accuracy.numpy(), bins.confidence.numpy()
    top.bar(
        lefts[filled],
        accuracy[filled],
        widths[filled],
        align="edge",
        edgecolor="black",
        color="tab:blue",
        label="accuracy",
    )
    top.bar(
        lefts[filled],
        (confidence - accuracy)[filled],
        widths[filled],
        bottom=accuracy[filled],
        align="edge",
        color="tab:red",
        alpha=0.35,
        edgecolor="tab:red",
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    top.set_title(title or f"ECE {bins.ece:.3f} ({n_bins} {strategy} bins)")
    share = (bins.count / bins.count.sum()).numpy()
    bottom.bar(lefts, share, widths, align="edge", color="gray", edgecolor="black")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return bins


def _minimise(parameters: list[Tensor], loss: Callable[[], Tensor], max_iter: int) -> None:
    """Minimise a smooth scalar ``loss()`` over ``parameters`` with L-BFGS (strong Wolfe)."""
    optimizer = torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)


class TemperatureScaling(nn.Module):
    """Temperature scaling (Guo et al. 2017): ``logits / T`` with ``T > 0`` fitted on held-out data.

    ``T`` is fitted by minimising the NLL of the validation *logits* with L-BFGS (over
    ``log T``, so it stays positive). Dividing by ``T`` never changes the argmax, so
    accuracy is untouched; ``T > 1`` softens an over-confident network.

    Args:
        temperature: the starting (or fixed) temperature.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature}")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    @property
    def temperature(self) -> float:
        """The current temperature ``T``."""
        return float(self.log_temperature.detach().exp())

    def forward(self, logits: Tensor) -> Tensor:
        """``(..., K)`` logits divided by ``T`` (in the logits' dtype)."""
        check_tensor(logits, "logits")
        return logits / self.log_temperature.exp().to(logits.device, logits.dtype)

    def fit(self, logits: Tensor, labels: Tensor, max_iter: int = 100) -> TemperatureScaling:
        """Fit ``T`` on validation ``logits (n, K)`` and ``labels (n,)``; returns ``self``.

        Raises:
            ValueError: ``logits`` whose rows are probabilities (in ``[0, 1]``, summing to
                1): scaling a softmax output is not temperature scaling; pass the logits.
        """
        logits = check_logits(logits, None, "logits")
        check_labels(labels, "labels", num_classes=logits.shape[1])
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(
                f"`labels` must have one entry per row of `logits` ({logits.shape[0]}), "
                f"got {labels.shape[0]}"
            )
        if _looks_like_probabilities(logits):
            raise ValueError(
                "`logits` rows are probabilities (in [0, 1], summing to 1): temperature "
                "scaling divides the logits, before the softmax; pass the logits"
            )
        check_int(max_iter, "max_iter", minimum=1)
        z = logits.detach().double()
        y = labels.detach().to(z.device)
        log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
        with torch.enable_grad():
            _minimise([log_t], lambda: F.cross_entropy(z / log_t.exp(), y), max_iter)
        with torch.no_grad():
            self.log_temperature.copy_(log_t.detach())
        return self


def _looks_like_probabilities(logits: Tensor) -> bool:
    rows = logits.detach().double()
    in_range = bool(((rows >= 0) & (rows <= 1)).all())
    return in_range and bool(((rows.sum(1) - 1).abs() < 1e-4).all())


class PlattScaling(nn.Module):
    """Platt scaling (Platt 1999): ``P(y = 1 | f) = sigmoid(a f + b)`` for a decision value ``f``.

    Fitted with L-BFGS on the cross-entropy against Platt's regularised targets
    ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)``, which keep the fit finite on separable
    data.
    """

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.0))
        self.b = nn.Parameter(torch.tensor(0.0))

    def forward(self, scores: Tensor) -> Tensor:
        """``(n,)`` decision values to ``(n, 2)`` probabilities ``[P(y=0), P(y=1)]``."""
        check_rank(scores, 1, "scores", "(n,)")
        a, b = (p.to(scores.device, scores.dtype) for p in (self.a, self.b))
        p1 = torch.sigmoid(a * scores + b)
        return torch.stack([1 - p1, p1], dim=1)

    def fit(self, scores: Tensor, labels: Tensor, max_iter: int = 100) -> PlattScaling:
        """Fit ``a, b`` on decision values ``scores (n,)`` and 0/1 ``labels (n,)``."""
        check_rank(scores, 1, "scores", "(n,)")
        check_binary_labels(labels, "labels")
        if labels.shape[0] != scores.shape[0]:
            raise ValueError(
                f"`labels` must have one entry per score ({scores.shape[0]}), got {labels.shape[0]}"
            )
        f = scores.detach().double()
        positive = labels.detach().to(f.device).bool()
        n_pos = int(positive.sum())
        n_neg = positive.numel() - n_pos
        target = torch.where(positive, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)).double()
        a = torch.ones((), dtype=torch.float64, device=f.device, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, device=f.device, requires_grad=True)
        with torch.enable_grad():
            _minimise(
                [a, b], lambda: F.binary_cross_entropy_with_logits(a * f + b, target), max_iter
            )
        with torch.no_grad():
            self.a.copy_(a.detach())
            self.b.copy_(b.detach())
        return self


__all__ = [
    "CalibrationBins",
    "PlattScaling",
    "TemperatureScaling",
    "brier_score",
    "calibration_bins",
    "calibration_report",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "reliability_diagram",
]
