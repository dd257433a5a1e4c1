"""A small training loop for the demos and the paper reproductions.

Research code brings its own loop; this one exists so that every demo trains the same
way (AdamW, optional gradient clipping, a tqdm bar with the running loss) and the slow
tests read like the paper's experiment rather than like optimiser boilerplate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attention.validation import check_positive


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`fit`.

    Attributes:
        steps: optimiser steps.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        clip_norm: clip the global gradient norm to this value (None: no clipping).
        warmup: steps of linear learning-rate warm-up from 0 (0: none).
        progress: show a tqdm bar.
        description: the bar's label.
    """

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    warmup: int = 0
    progress: bool = True
    description: str = "train"

    def __post_init__(self) -> None:
        check_positive(self.steps, "steps")
        check_positive(self.lr, "lr")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if self.clip_norm is not None:
            check_positive(self.clip_norm, "clip_norm")
        if self.warmup < 0:
            raise ValueError(f"`warmup` must be >= 0, got {self.warmup}")


@dataclass
class TrainHistory:
    """What :func:`fit` returns: the loss of every step, in order."""

    losses: list[float] = field(default_factory=list)

    def mean_last(self, n: int = 50) -> float:
        """Mean loss over the last ``n`` steps (the end-of-training figure)."""
        tail = self.losses[-n:]
        return sum(tail) / max(len(tail), 1)


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, object], Tensor],
    batches: Iterator[object] | Callable[[int], object],
    config: TrainConfig | None = None,
) -> TrainHistory:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` for ``config.steps`` steps.

    Args:
        model: put in train mode for the loop and left in eval mode after it.
        loss_fn: returns a scalar loss for one batch.
        batches: an iterator of batches, or a function ``step -> batch`` (convenient for
            synthetic tasks that draw a fresh seeded batch at every step).
        config: optimisation settings; :class:`TrainConfig` defaults when None.

    Returns:
        the :class:`TrainHistory` of per-step losses.
    """
    config = config or TrainConfig()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = config.warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    history = TrainHistory()
    model.train()
    bar = tqdm(range(config.steps), desc=config.description, disable=not config.progress)
    for step in bar:
        batch = batches(step) if callable(batches) else next(batches)
        loss = loss_fn(model, batch)
        if loss.dim() != 0:
            raise ValueError(f"`loss_fn` must return a scalar, got shape {tuple(loss.shape)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_norm is not None:
            nn.utils.clip_grad_norm_(params, config.clip_norm)
        optimizer.step()
        scheduler.step()
        history.losses.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{history.mean_last(10):.4f}")
    model.eval()
    return history


__all__ = ["TrainConfig", "TrainHistory", "fit"]
