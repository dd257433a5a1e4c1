"""A small training loop for the demos and the paper reproductions.

Research code brings its own loop; this one exists so that every demo trains the same
way (AdamW, optional gradient clipping, a tqdm bar with the running loss) and the slow
tests read like the paper's experiment rather than like optimiser boilerplate.

The same loop runs unchanged under ``torchrun``: with a process group it wraps the model in
DDP or FSDP (:mod:`attnzoo.transformers_zoo.distributed`), shows the bar and writes the
shared checkpoint files on rank 0 only. ``precision`` runs the loss under ``torch.autocast``
(bf16, or fp16 with a gradient scaler); ``save_dir``/``resume_from`` write and read
pickle-free checkpoints (:mod:`attnzoo.transformers_zoo.train_state`) from which a run
resumes bit-identically on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attention.validation import check_positive
from .distributed import (
    PARALLEL_MODES,
    mean_over_ranks,
    rank_and_world_size,
    sparse_gradient_modules,
    wrap_model,
)
from .train_state import load_checkpoint, save_checkpoint

# Whatever one step's batch is: `fit` hands each batch to `loss_fn` untouched.
Batch = TypeVar("Batch")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Optimisation settings of :func:`fit`.

    Attributes:
        steps: optimiser steps (in total: a resumed run continues up to this count).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        clip_norm: clip the global gradient norm to this value (None: no clipping).
        warmup: steps of linear learning-rate warm-up from 0 (0: none).
        progress: show a tqdm bar (rank 0 only in a multi-process run).
        description: the bar's label.
        precision: ``"fp32"``; ``"bf16"`` or ``"fp16"`` run the loss under
            ``torch.autocast`` of the model's device type (parameters and optimizer stay
            fp32); fp16 adds a ``torch.amp.GradScaler`` against gradient underflow.
        parallel: ``"ddp"`` or ``"fsdp"``, used when a process group of more than one rank
            is initialised (:func:`~attnzoo.transformers_zoo.distributed.wrap_model`).
        find_unused_parameters: DDP option for models with parameters the loss never reads.
        save_dir: write a checkpoint here (None: none) every ``save_every`` steps and at the
            end; :func:`fit` with ``resume_from=save_dir`` continues from it.
        save_every: steps between checkpoints (0: only at the end).
    """

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    warmup: int = 0
    progress: bool = True
    description: str = "train"
    precision: str = "fp32"
    parallel: str = "ddp"
    find_unused_parameters: bool = False
    save_dir: str | Path | None = None
    save_every: int = 0

    def __post_init__(self) -> None:
        check_positive(self.steps, "steps")
        check_positive(self.lr, "lr")
        if self.weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {self.weight_decay}")
        if self.clip_norm is not None:
            check_positive(self.clip_norm, "clip_norm")
        if self.warmup < 0:
            raise ValueError(f"`warmup` must be >= 0, got {self.warmup}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"`precision` must be one of {tuple(PRECISIONS)}, got {self.precision!r}"
            )
        if self.parallel not in PARALLEL_MODES:
            raise ValueError(f"`parallel` must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.save_every < 0:
            raise ValueError(f"`save_every` must be >= 0, got {self.save_every}")


@dataclass
class TrainHistory:
    """What :func:`fit` returns: the loss of every step, in order.

    In a multi-process run each loss is the mean over the ranks (the loss of the global
    batch); after a resume the losses of the steps before the checkpoint come first.
    """

    losses: list[float] = field(default_factory=list)

    def mean_last(self, n: int = 50) -> float:
        """Mean loss over the last ``n`` steps (the end-of-training figure)."""
        tail = self.losses[-n:]
        return sum(tail) / max(len(tail), 1)


def _check_dense_gradients(model: nn.Module) -> None:
    sparse = sparse_gradient_modules(model)
    if sparse:
        raise ValueError(
            f"`fit` trains with AdamW, which takes dense gradients only, but {sparse} were "
            "built with `sparse=True`: build them with `sparse=False` (e.g. "
            "ProductKeyMemory(sparse=False)), or write a loop with torch.optim.SparseAdam for "
            "those parameters"
        )


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Batch], Tensor],
    batches: Iterator[Batch] | Callable[[int], Batch],
    config: TrainConfig | None = None,
    *,
    resume_from: str | Path | None = None,
) -> TrainHistory:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` for ``config.steps`` steps.

    Args:
        model: put in train mode for the loop and left in eval mode after it. Under a
            process group ``loss_fn`` receives the DDP wrapper (attributes fall through to
            the model) or the FSDP-sharded model: call it (``model(...)``) rather than its
            submodules, so that the gradients are synchronised.
        loss_fn: returns a scalar loss for one batch (mean-reduced over the batch for a
            multi-process run to equal a single process on the global batch).
        batches: an iterator of batches, or a function ``step -> batch`` (convenient for
            synthetic tasks that draw a fresh seeded batch at every step). In a
            multi-process run each rank must get its own shard
            (:func:`~attnzoo.transformers_zoo.distributed.sharded_batches`,
            :func:`~attnzoo.transformers_zoo.distributed.local_shard`). A resumed run calls
            a function with the next step's index; an iterator is read on from where it is.
        config: optimisation settings; :class:`TrainConfig` defaults when None.
        resume_from: a checkpoint directory written with ``config.save_dir``: model,
            optimizer, scheduler and random generators are restored and training continues
            at the saved step. With a ``step -> batch`` function that depends only on the
            step, the result equals the uninterrupted run bit for bit on CPU.

    Returns:
        the :class:`TrainHistory` of per-step losses.
    """
    config = config or TrainConfig()
    _check_dense_gradients(model)
    rank, _ = rank_and_world_size()
    train_model = wrap_model(model, config.parallel, config.find_unused_parameters)
    params = [p for p in train_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = config.warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
    )
    device_type = next(model.parameters()).device.type
    dtype = PRECISIONS[config.precision]
    scaler = torch.amp.GradScaler(device_type) if config.precision == "fp16" else None
    history = TrainHistory()
    start = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from, train_model, optimizer, scheduler)
        history.losses = [float(x) for x in state.extra.get("losses", [])]
        if scaler is not None and "grad_scaler" in state.extra:
            scaler.load_state_dict(state.extra["grad_scaler"])
        start = state.step
    train_model.train()
    bar = tqdm(
        range(start, config.steps),
        desc=config.description,
        disable=not config.progress or rank != 0,
        initial=start,
        total=config.steps,
    )
    for step in bar:
        batch = batches(step) if callable(batches) else next(batches)
        autocast = (
            torch.autocast(device_type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            loss = loss_fn(train_model, batch)
        if loss.dim() != 0:
            raise ValueError(f"`loss_fn` must return a scalar, got shape {tuple(loss.shape)}")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if config.clip_norm is not None:
            nn.utils.clip_grad_norm_(params, config.clip_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        history.losses.append(float(mean_over_ranks(loss.float())))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{history.mean_last(10):.4f}")
        done = step + 1
        if config.save_dir is not None and (
            done == config.steps or (config.save_every and done % config.save_every == 0)
        ):
            save_checkpoint(
                config.save_dir,
                train_model,
                optimizer,
                scheduler,
                step=done,
                extra={
                    "losses": history.losses,
                    **({"grad_scaler": scaler.state_dict()} if scaler is not None else {}),
                },
            )
    model.eval()
    return history


__all__ = ["PRECISIONS", "TrainConfig", "TrainHistory", "fit"]
