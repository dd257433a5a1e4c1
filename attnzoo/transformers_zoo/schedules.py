"""Learning-rate schedules and parameter-group tools of ULMFiT, for any model and optimiser.

* :class:`SlantedTriangularLR` (Howard & Ruder 2018, eq. 3): a short linear warm-up to the
  peak over the first ``cut_frac`` of the steps, then a long linear decay, never below
  ``peak / ratio``.
* :class:`OneCycleSchedule` (Smith 2018, "1cycle"): the learning rate rises from
  ``peak / div_factor`` to the peak and anneals to ``peak / (div_factor * final_div_factor)``
  while the momentum moves the other way (high -> low -> high): inverse momentum.
* :func:`discriminative_param_groups`: one optimiser parameter group per layer group,
  ``lr / factor ** k`` for the group ``k`` places below the top (``factor = 2.6`` in
  ULMFiT), so lower, more general layers move less.
* :class:`GradualUnfreezing`: everything frozen but the top group; each :meth:`step`
  unfreezes the next group down.

Both schedules are ordinary :class:`torch.optim.lr_scheduler.LRScheduler` subclasses: the
peak of each parameter group is that group's ``lr`` when the scheduler is built, so they
compose with discriminative learning rates (every group keeps its ratio to the others) and
with any optimiser. Step them once per optimiser step, after ``optimizer.step()``.

:class:`OneCycleSchedule` follows :class:`torch.optim.lr_scheduler.OneCycleLR`'s two-phase
conventions exactly (phase ends at steps ``pct_start * total_steps - 1`` and
``total_steps - 1``, cosine or linear interpolation, the same defaults) and gives the same
learning rates and momenta when each group's ``lr`` equals OneCycleLR's ``max_lr``. Where
they differ: OneCycleLR takes the peak as an argument (``max_lr``) and overwrites the groups'
learning rates, this takes it from the groups; OneCycleLR also supports a three-phase
variant (Smith's original final annihilation), this does not; and fastai's one-cycle, the
one ULMFiT's code used, ends at ``peak / final_div`` rather than at
``peak / (div_factor * final_div_factor)`` (pass ``final_div_factor`` accordingly).
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ..attention.validation import check_int, check_positive


def _check_fraction(value: float, name: str) -> None:
    if not 0 < value < 1:
        raise ValueError(f"`{name}` must be in (0, 1), got {value}")


def slanted_triangular(
    step: int, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0
) -> float:
    """The slanted triangular multiplier ``eta_t / eta_max`` of step ``step`` (0-based).

    Howard & Ruder 2018, eq. 3: ``cut = floor(T * cut_frac)``; ``p = t / cut`` before the
    cut, ``1 - (t - cut) / (cut * (1 / cut_frac - 1))`` after it;
    ``eta_t = eta_max * (1 + p * (ratio - 1)) / ratio``.

    Args:
        step: the iteration ``t``, in ``[0, total_steps]``.
        total_steps: ``T``, the number of training iterations.
        cut_frac: fraction of the iterations spent increasing the rate.
        ratio: how much smaller the lowest rate is than the peak.

    Returns:
        a float in ``[1 / ratio, 1]``.
    """
    check_int(total_steps, "total_steps")
    check_int(step, "step", minimum=0)
    _check_fraction(cut_frac, "cut_frac")
    if not ratio >= 1:
        raise ValueError(f"`ratio` must be >= 1, got {ratio}")
    cut = math.floor(total_steps * cut_frac)
    if cut < 1:
        raise ValueError(
            f"`total_steps * cut_frac` must be >= 1 (at least one warm-up step), got "
            f"{total_steps} * {cut_frac}"
        )
    # Past T (a scheduler stepped too often) the rate stays at its floor.
    decay = max(0.0, 1 - (step - cut) / (cut * (1 / cut_frac - 1)))
    p = step / cut if step < cut else decay
    return (1 + p * (ratio - 1)) / ratio


class _PeakScheduler(LRScheduler, metaclass=ABCMeta):
    """A scheduler whose per-group peak is the group's ``lr`` at construction."""

    def __init__(self, optimizer: Optimizer, total_steps: int) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        check_int(total_steps, "total_steps")
        self.total_steps = total_steps
        self.peaks = [float(group["lr"]) for group in optimizer.param_groups]
        super().__init__(optimizer)

    @abstractmethod
    def multiplier(self, step: int) -> float:
        """The learning rate of step ``step`` as a fraction of the peak."""

    def get_lr(self) -> list[float]:  # type: ignore[override]
        factor = self.multiplier(self.last_epoch)
        return [peak * factor for peak in self.peaks]


class SlantedTriangularLR(_PeakScheduler):
    """Slanted triangular learning rates (ULMFiT), see :func:`slanted_triangular`.

    Args:
        optimizer: any optimiser; each group's current ``lr`` is its peak ``eta_max``.
        total_steps: ``T``.
        cut_frac: warm-up fraction (0.1 in the paper).
        ratio: peak / lowest rate (32 in the paper).
    """

    def __init__(
        self, optimizer: Optimizer, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0
    ) -> None:
        # Validates the arguments once, before the first step.
        slanted_triangular(0, total_steps, cut_frac, ratio)
        self.cut_frac, self.ratio = cut_frac, ratio
        super().__init__(optimizer, total_steps)

    def multiplier(self, step: int) -> float:
        return slanted_triangular(step, self.total_steps, self.cut_frac, self.ratio)


ANNEALING = ("cos", "linear")


def _anneal(start: float, end: float, pct: float, strategy: str) -> float:
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


class OneCycleSchedule(_PeakScheduler):
    """One-cycle learning rate with inverse momentum, peaks taken from the groups.

    Phase 1 (steps ``0 .. pct_start * total_steps - 1``): lr ``peak / div_factor -> peak``,
    momentum ``max_momentum -> base_momentum``; phase 2 (to ``total_steps - 1``): lr
    ``peak -> peak / (div_factor * final_div_factor)``, momentum back to ``max_momentum``.
    The momentum is the optimiser's ``momentum`` (SGD, RMSprop) or ``betas[0]`` (Adam
    family).

    Args:
        optimizer: any optimiser; each group's current ``lr`` is its peak.
        total_steps: the number of optimiser steps of the cycle.
        pct_start: fraction of the steps spent rising.
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_momentum: also cycle the momentum (needs a ``momentum`` or ``betas`` option).
        base_momentum, max_momentum: the momentum's low and high values.
        div_factor: initial lr = peak / div_factor.
        final_div_factor: final lr = initial lr / final_div_factor.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        check_int(total_steps, "total_steps")
        _check_fraction(pct_start, "pct_start")
        if anneal_strategy not in ANNEALING:
            raise ValueError(
                f"`anneal_strategy` must be one of {ANNEALING}, got {anneal_strategy!r}"
            )
        check_positive(div_factor, "div_factor")
        check_positive(final_div_factor, "final_div_factor")
        if not 0 <= base_momentum <= max_momentum < 1:
            raise ValueError(
                "momenta must satisfy 0 <= `base_momentum` <= `max_momentum` < 1, got "
                f"{base_momentum} and {max_momentum}"
            )
        self.phase_end = float(pct_start * total_steps) - 1
        if not 0 < self.phase_end < total_steps - 1:
            raise ValueError(
                f"`pct_start * total_steps - 1` must lie in (0, total_steps - 1) so that both "
                f"phases have steps, got pct_start={pct_start}, total_steps={total_steps}"
            )
        self.anneal_strategy, self.cycle_momentum = anneal_strategy, cycle_momentum
        self.base_momentum, self.max_momentum = base_momentum, max_momentum
        self.div_factor, self.final_div_factor = div_factor, final_div_factor
        if cycle_momentum:
            for index, group in enumerate(optimizer.param_groups):
                if "momentum" not in group and "betas" not in group:
                    raise ValueError(
                        f"`cycle_momentum=True` needs an optimiser with a `momentum` or `betas` "
                        f"option; parameter group {index} has neither"
                    )
        super().__init__(optimizer, total_steps)

    def _phase(self, step: int) -> tuple[int, float]:
        """Which phase ``step`` is in (0 or 1) and how far through it (0..1)."""
        if step <= self.phase_end:
            return 0, step / self.phase_end
        last = self.total_steps - 1
        return 1, min(1.0, (step - self.phase_end) / (last - self.phase_end))

    def multiplier(self, step: int) -> float:
        phase, pct = self._phase(step)
        start = 1 / self.div_factor
        if phase == 0:
            return _anneal(start, 1.0, pct, self.anneal_strategy)
        return _anneal(1.0, start / self.final_div_factor, pct, self.anneal_strategy)

    def momentum(self, step: int) -> float:
        """The momentum of step ``step``."""
        phase, pct = self._phase(step)
        low, high = self.base_momentum, self.max_momentum
        if phase == 0:
            return _anneal(high, low, pct, self.anneal_strategy)
        return _anneal(low, high, pct, self.anneal_strategy)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        if self.cycle_momentum:
            momentum = self.momentum(self.last_epoch)
            for group in self.optimizer.param_groups:
                if "betas" in group:
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum
        return super().get_lr()


def _parameters(group: nn.Module | Iterable[nn.Parameter], index: int) -> list[nn.Parameter]:
    if isinstance(group, nn.Module):
        params = list(group.parameters())
    elif isinstance(group, Iterable):
        params = list(group)
    else:
        raise TypeError(
            f"`groups[{index}]` must be an nn.Module or an iterable of parameters, "
            f"got {type(group).__name__}"
        )
    for param in params:
        if not isinstance(param, nn.Parameter):
            raise TypeError(
                f"`groups[{index}]` must hold nn.Parameter objects, got {type(param).__name__}"
            )
    return params


def discriminative_param_groups(
    groups: Sequence[nn.Module | Iterable[nn.Parameter]],
    lr: float,
    factor: float = 2.6,
    **options: Any,
) -> list[dict[str, Any]]:
    """Optimiser parameter groups with discriminative learning rates (ULMFiT, eq. 2).

    Args:
        groups: layer groups from the bottom (embeddings) to the top (the head).
        lr: the top group's learning rate.
        factor: each group down gets the rate of the one above divided by ``factor``
            (2.6 in the paper).
        options: further per-group options (``weight_decay``, ...).

    Returns:
        ``[{"params": [...], "lr": lr / factor ** (len(groups) - 1 - k), **options}]``, to
        pass to any ``torch.optim`` optimiser.
    """
    if isinstance(groups, nn.Module) or not isinstance(groups, Sequence) or not groups:
        raise TypeError(
            "`groups` must be a non-empty sequence of modules or parameter iterables, got "
            f"{type(groups).__name__}"
        )
    check_positive(lr, "lr")
    if not factor >= 1:
        raise ValueError(f"`factor` must be >= 1, got {factor}")
    top = len(groups) - 1
    return [
        {"params": _parameters(group, k), "lr": lr / factor ** (top - k), **options}
        for k, group in enumerate(groups)
    ]


class GradualUnfreezing:
    """Unfreeze layer groups one at a time from the top (ULMFiT, section 3.3).

    At construction only the top group trains (``requires_grad`` False elsewhere); each
    :meth:`step` unfreezes the next group down. A frozen parameter gets no gradient, so
    any ``torch.optim`` optimiser built over all groups leaves it untouched.

    Args:
        groups: layer groups from the bottom to the top, as for
            :func:`discriminative_param_groups`.
        trainable: how many top groups train at the start (default 1).
    """

    def __init__(
        self, groups: Sequence[nn.Module | Iterable[nn.Parameter]], trainable: int = 1
    ) -> None:
        if isinstance(groups, nn.Module) or not isinstance(groups, Sequence) or not groups:
            raise TypeError(
                "`groups` must be a non-empty sequence of modules or parameter iterables, got "
                f"{type(groups).__name__}"
            )
        self.groups = [_parameters(group, k) for k, group in enumerate(groups)]
        self.trainable = 0
        self.set_trainable(trainable)

    def set_trainable(self, n: int) -> None:
        """Train the top ``n`` groups (``1 <= n <= len(groups)``), freeze the rest."""
        check_int(n, "n")
        if n > len(self.groups):
            raise ValueError(f"`n` must be <= the number of groups ({len(self.groups)}), got {n}")
        self.trainable = n
        first = len(self.groups) - n
        for k, params in enumerate(self.groups):
            for param in params:
                param.requires_grad_(k >= first)

    def step(self) -> int:
        """Unfreeze one more group (no-op once all train); return how many train now."""
        self.set_trainable(min(self.trainable + 1, len(self.groups)))
        return self.trainable

    @property
    def done(self) -> bool:
        """Whether every group trains."""
        return self.trainable == len(self.groups)


__all__ = [
    "ANNEALING",
    "GradualUnfreezing",
    "OneCycleSchedule",
    "SlantedTriangularLR",
    "discriminative_param_groups",
    "slanted_triangular",
]
