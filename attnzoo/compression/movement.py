"""Movement pruning (Sanh, Wolf & Rush 2020, "Movement Pruning: Adaptive Sparsity by
Fine-Tuning").

Each weight ``W_ij`` of a Linear layer gets a learned score ``S_ij``; the forward uses
``W * M(S)`` with a binary mask ``M``. ``M`` is a step function, so the scores are trained
with a straight-through estimator: ``dL/dS = dL/dW' * W`` (``W' = W * M``), which makes
``S`` accumulate ``-W dL/dW``: weights moving away from zero during fine-tuning gain score,
whatever their size. Two binarisers:

* **TopK** (:class:`TopKBinarizer`): keep the top ``keep`` fraction of scores of a layer;
  ``keep`` follows the cubic schedule (:func:`~attnzoo.compression.pruning.schedule_progress`)
  from 1 to the target density after a warm-up, then stays there for a cool-down;
* **Threshold** (:class:`ThresholdBinarizer`): keep ``sigmoid(S) > tau`` (soft movement
  pruning, with an L1 penalty on ``sigmoid(S)`` from :meth:`MovementPruner.penalty` that
  sets the sparsity) or ``S > tau``.

:func:`movement_prune` is the paper's recipe for extreme sparsity: prune to a small density
(3% of the encoder weights in the paper's headline numbers) while distilling from the
unpruned model (:func:`~attnzoo.compression.distillation.soft_target_loss`), then
:func:`finalize_movement_pruning` bakes the masks in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from ..transformers_zoo.training import TrainConfig, TrainHistory, fit
from .distillation import default_forward, logits_of, soft_target_loss
from .pruning import schedule_progress

MOVEMENT_METHODS = ("topk", "threshold", "sigmoid")


class TopKBinarizer(torch.autograd.Function):
    """``M = 1`` at the ``ceil(keep * numel)`` largest scores, else 0; straight-through
    backward (``dL/dS = dL/dM``)."""

    @staticmethod
    def forward(ctx: FunctionCtx, scores: Tensor, keep: float) -> Tensor:
        count = max(1, math.ceil(keep * scores.numel()))
        mask = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
        mask[torch.topk(scores.flatten(), count, sorted=False).indices] = 1
        return mask.reshape(scores.shape)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class ThresholdBinarizer(torch.autograd.Function):
    """``M = 1`` where ``sigmoid(S) > threshold`` (``sigmoid=True``) or ``S > threshold``;
    straight-through backward (``dL/dS = dL/dM``)."""

    @staticmethod
    def forward(ctx: FunctionCtx, scores: Tensor, threshold: float, sigmoid: bool) -> Tensor:
        values = torch.sigmoid(scores) if sigmoid else scores
        return (values > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad, None, None


class MovementLinear(nn.Module):
    """A Linear layer ``(..., in) -> (..., out)`` whose weight is masked by learned scores.

    Args:
        linear: the layer to take ``weight`` and ``bias`` from (shared, not copied).
        method: ``"topk"``, ``"threshold"`` (``S > threshold``) or ``"sigmoid"``
            (``sigmoid(S) > threshold``, soft movement).
        score_init: initial value of every score.

    Attributes ``keep`` (TopK fraction, starts at 1) and ``threshold`` are set by
    :class:`MovementPruner`. Parameters: ``weight``, ``bias`` (as the Linear), ``scores``
    (shape of ``weight``).
    """

    def __init__(self, linear: nn.Linear, method: str = "topk", score_init: float = 0.0) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"`linear` must be an nn.Linear, got {type(linear).__name__}")
        if method not in MOVEMENT_METHODS:
            raise ValueError(f"`method` must be one of {MOVEMENT_METHODS}, got {method!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.scores = nn.Parameter(torch.full_like(linear.weight.detach(), score_init))
        self.method = method
        self.keep = 1.0
        self.threshold = 0.5 if method == "sigmoid" else 0.0

    def mask(self) -> Tensor:
        """The current binary mask, shaped like ``weight`` (differentiable in ``scores``
        through the straight-through estimator)."""
        if self.method == "topk":
            return TopKBinarizer.apply(self.scores, self.keep)  # type: ignore[no-any-return]
        sigmoid = self.method == "sigmoid"
        return ThresholdBinarizer.apply(self.scores, self.threshold, sigmoid)  # type: ignore[no-any-return]

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"method={self.method!r}"
        )


def apply_movement_pruning(
    model: nn.Module,
    method: str = "topk",
    exclude: Iterable[str] = (),
    score_init: float = 0.0,
) -> list[MovementLinear]:
    """Replace the Linear layers of ``model`` (except ``exclude`` names/prefixes) by
    :class:`MovementLinear`, in place; returns them."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    skipped = tuple(exclude)
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not any(name == s or name.startswith(f"{s}.") for s in skipped)
    ]
    if not chosen:
        raise ValueError(f"`model` ({type(model).__name__}) has no Linear layer to prune")
    layers = []
    for name, linear in chosen:
        layer = MovementLinear(linear, method, score_init)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
        layers.append(layer)
    return layers


class MovementPruner:
    """The schedule of movement pruning over the layers of :func:`apply_movement_pruning`.

    TopK: ``keep = 1 - (1 - final_density) * progress`` with the cubic
    :func:`~attnzoo.compression.pruning.schedule_progress` between ``warmup`` and
    ``total_steps - cooldown``. Threshold methods: the
    threshold rises on the same cubic curve from ``initial_threshold`` to
    ``final_threshold`` (Sanh et al.'s soft movement schedule).

    Args:
        layers: the :class:`MovementLinear` layers.
        total_steps: training steps.
        final_density: remaining fraction of weights at the end (TopK), in ``(0, 1]``.
        warmup, cooldown: steps without pruning at the start, at the final level at the end.
        initial_threshold, final_threshold: threshold schedule (threshold methods).
    """

    def __init__(
        self,
        layers: list[MovementLinear],
        total_steps: int,
        final_density: float = 0.03,
        warmup: int = 0,
        cooldown: int = 0,
        initial_threshold: float | None = None,
        final_threshold: float | None = None,
    ) -> None:
        if not layers:
            raise ValueError("`layers` must hold at least one MovementLinear")
        if not 0 < final_density <= 1:
            raise ValueError(f"`final_density` must be in (0, 1], got {final_density}")
        if warmup < 0 or cooldown < 0 or warmup + cooldown >= total_steps:
            raise ValueError(
                f"`warmup` ({warmup}) and `cooldown` ({cooldown}) must be >= 0 and leave "
                f"pruning steps within `total_steps` ({total_steps})"
            )
        self.layers, self.total_steps = layers, total_steps
        self.final_density, self.warmup, self.cooldown = final_density, warmup, cooldown
        self.initial_threshold = (
            layers[0].threshold if initial_threshold is None else initial_threshold
        )
        self.final_threshold = (
            self.initial_threshold if final_threshold is None else final_threshold
        )

    def progress(self, step: int) -> float:
        """The cubic schedule's fraction of the way, in ``[0, 1]``."""
        span = self.total_steps - self.warmup - self.cooldown
        return schedule_progress(step, span, begin_step=self.warmup)

    def step(self, step: int) -> None:
        """Set every layer's ``keep`` / ``threshold`` for ``step``."""
        progress = self.progress(step)
        keep = 1 - (1 - self.final_density) * progress
        threshold = (
            self.initial_threshold + (self.final_threshold - self.initial_threshold) * progress
        )
        for layer in self.layers:
            layer.keep, layer.threshold = keep, threshold

    def penalty(self) -> Tensor:
        """Soft movement's L1 term: the mean of ``sigmoid(S)`` over all scores."""
        total = sum(torch.sigmoid(layer.scores).sum() for layer in self.layers)
        return total / sum(layer.scores.numel() for layer in self.layers)  # type: ignore[return-value]

    def density(self) -> float:
        """Fraction of weights the current masks keep."""
        with torch.no_grad():
            kept = sum(float(layer.mask().sum()) for layer in self.layers)
        return kept / sum(layer.scores.numel() for layer in self.layers)


def finalize_movement_pruning(model: nn.Module) -> int:
    """Replace every :class:`MovementLinear` in ``model`` by an ``nn.Linear`` holding the
    masked weight (scores dropped), in place; returns how many were replaced."""
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, MovementLinear)]
    for name, layer in chosen:
        linear = nn.Linear(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(layer.weight * layer.mask())
            if layer.bias is not None:
                linear.bias.copy_(layer.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    return len(chosen)


def movement_prune(
    model: nn.Module,
    task_loss: Callable[[Any, Any], Tensor],
    batches: Callable[[int], Any],
    config: TrainConfig,
    final_density: float = 0.03,
    teacher: nn.Module | None = None,
    temperature: float = 2.0,
    distill_weight: float = 0.9,
    warmup: int | None = None,
    cooldown: int | None = None,
    exclude: Iterable[str] = (),
    forward: Callable[[nn.Module, Any], Any] = default_forward,
) -> tuple[MovementPruner, TrainHistory]:
    """Sanh et al.'s recipe: TopK movement pruning to ``final_density`` on a cubic schedule,
    optionally distilling from ``teacher``, then the masks baked in.

    The loss is ``(1 - w) * task_loss(output, batch) + w * soft_target_loss(output logits,
    teacher logits, T)`` with ``w = distill_weight`` (``task_loss`` alone without a teacher).

    Args:
        model: pruned in place (its Linear layers except ``exclude``).
        task_loss: ``(model output, batch) -> loss`` (e.g. cross-entropy on ``logits``).
        batches: ``step -> batch``.
        config: training settings (``config.steps`` is the schedule's length).
        final_density: remaining fraction of the pruned weights (0.03 = 97% sparse).
        teacher: the unpruned model to distil from, or None.
        temperature, distill_weight: distillation settings.
        warmup, cooldown: schedule ends; default 10% and 20% of the steps.
        exclude: Linear layer names (or prefixes) to leave dense, e.g. the classifier.
        forward: ``(model, batch) -> output`` for the model and the teacher.

    Returns:
        the :class:`MovementPruner` (read its final density) and the training history.
    """
    steps = config.steps
    layers = apply_movement_pruning(model, "topk", exclude)
    pruner = MovementPruner(
        layers,
        steps,
        final_density,
        warmup=steps // 10 if warmup is None else warmup,
        cooldown=steps // 5 if cooldown is None else cooldown,
    )
    counter = [0]

    def loss_fn(trained: nn.Module, batch: Any) -> Tensor:
        pruner.step(counter[0])
        counter[0] += 1
        output = forward(trained, batch)
        loss = task_loss(output, batch)
        if teacher is None:
            return loss
        teacher.eval()
        with torch.no_grad():
            target = logits_of(forward(teacher, batch))
        soft = soft_target_loss(logits_of(output), target, temperature)
        return (1 - distill_weight) * loss + distill_weight * soft

    history = fit(model, loss_fn, batches, config)
    pruner.step(steps)
    finalize_movement_pruning(model)
    return pruner, history


__all__ = [
    "MOVEMENT_METHODS",
    "MovementLinear",
    "MovementPruner",
    "ThresholdBinarizer",
    "TopKBinarizer",
    "apply_movement_pruning",
    "finalize_movement_pruning",
    "movement_prune",
]
