"""Magnitude pruning: local or global, unstructured or N:M, on a schedule; and its permanent form.

Masks are applied with :mod:`torch.nn.utils.prune` (``weight = weight_orig * weight_mask``,
so the optimiser never revives a pruned weight) and baked in by
:func:`make_pruning_permanent`. Either way the tensor stays dense: an unstructured mask
shrinks neither the file nor the latency on dense kernels (see
:mod:`attnzoo.compression.report`); a 2:4 pattern (:func:`nm_mask`) is the one sparse
kernels on recent GPUs accelerate.

* **local**: every tensor loses the same fraction of its entries;
* **global**: one magnitude threshold over all tensors (Han et al. 2015), so layers with
  small weights lose more;
* **N:M** (Mishra et al. 2021): in every group of ``m`` consecutive weights along the input
  axis, the ``n`` largest survive.

Schedules (:func:`sparsity_schedule`): one-shot, iterative (equal increments every
``frequency`` steps) and cubic (Zhu & Gupta 2017, "To prune, or not to prune",
``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from ..attention.validation import check_int

SCOPES = ("local", "global")
SCHEDULES = ("one-shot", "iterative", "cubic")

ParameterRef = tuple[nn.Module, str]
"""A prunable tensor: ``(module, parameter name)``, e.g. ``(linear, "weight")``."""


def check_sparsity(value: float, name: str = "sparsity") -> float:
    """Return ``value`` if it is a fraction in ``[0, 1)``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float in [0, 1), got {type(value).__name__}")
    if not 0 <= value < 1:
        raise ValueError(f"`{name}` must be in [0, 1), got {value}")
    return float(value)


def linear_weights(
    model: nn.Module, exclude: Iterable[str] = (), types: tuple[type[nn.Module], ...] = (nn.Linear,)
) -> list[ParameterRef]:
    """Every ``(module, "weight")`` of the given types in ``model`` (default all Linear).

    Args:
        model: any module.
        exclude: module names (as in ``named_modules``) or name prefixes to skip, e.g.
            ``["classifier"]``.
        types: module classes whose ``weight`` is returned.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    skipped = tuple(exclude)
    refs = []
    for name, module in model.named_modules():
        if isinstance(module, types) and not any(
            name == s or name.startswith(f"{s}.") for s in skipped
        ):
            refs.append((module, "weight"))
    return refs


def current_weight(ref: ParameterRef) -> Tensor:
    """The tensor the forward uses (masked, if the parameter is already pruned)."""
    module, name = ref
    return getattr(module, name).detach()


def _keep_largest(scores: Tensor, keep: int) -> Tensor:
    """Boolean mask of the ``keep`` largest entries of ``scores`` (ties broken by index)."""
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.flatten(), keep, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def magnitude_masks(
    weights: Sequence[Tensor], sparsity: float, scope: str = "local"
) -> list[Tensor]:
    """Keep-masks removing the ``sparsity`` fraction of smallest-magnitude entries.

    Args:
        weights: tensors of any shapes.
        sparsity: fraction of entries to remove, in ``[0, 1)`` (rounded down to whole
            entries, per tensor for ``"local"``, overall for ``"global"``).
        scope: ``"local"`` (each tensor alone) or ``"global"`` (one threshold for all).

    Returns:
        boolean masks shaped like ``weights``, True = kept.
    """
    sparsity = check_sparsity(sparsity)
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}")
    if not weights:
        raise ValueError("`weights` must hold at least one tensor, got none")
    if scope == "local":
        return [_keep_largest(w.abs(), w.numel() - int(sparsity * w.numel())) for w in weights]
    flat = torch.cat([w.abs().flatten().float() for w in weights])
    kept = _keep_largest(flat, flat.numel() - int(sparsity * flat.numel()))
    parts = kept.split([w.numel() for w in weights])
    return [part.reshape(w.shape) for part, w in zip(parts, weights, strict=True)]


def nm_mask(weight: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """N:M keep-mask: the ``n`` largest magnitudes of every ``m`` consecutive entries of
    each row (the input axis of a ``(out, in)`` weight).

    Args:
        weight: ``(out, in)`` (or any ``(..., in)``), ``in`` divisible by ``m``.
        n, m: keep ``n`` of every ``m`` (2:4 for sparse tensor cores).

    Returns:
        boolean mask shaped like ``weight``, True = kept, exactly ``n`` per group.
    """
    check_int(n, "n")
    check_int(m, "m")
    if n > m:
        raise ValueError(f"`n` must be <= m = {m}, got {n}")
    if weight.shape[-1] % m:
        raise ValueError(
            f"`weight` must have a last axis divisible by m = {m}, got shape {tuple(weight.shape)}"
        )
    groups = weight.detach().abs().reshape(-1, m)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return mask.reshape(weight.shape)


def apply_mask(ref: ParameterRef, mask: Tensor) -> None:
    """Set the pruning mask of ``ref`` (re-parametrising it on first use).

    The new mask replaces the old one; masks computed from :func:`current_weight` only grow
    the pruned set, as every pruning method here does.
    """
    module, name = ref
    mask = mask.to(dtype=getattr(module, name).dtype, device=getattr(module, name).device)
    existing = getattr(module, f"{name}_mask", None)
    if existing is None:
        prune.custom_from_mask(module, name, mask)
    else:
        if existing.shape != mask.shape:
            raise ValueError(
                f"`mask` must have shape {tuple(existing.shape)}, got {tuple(mask.shape)}"
            )
        existing.copy_(mask)
        # The forward-pre hook recomputes the weight at the next call; do it now so that
        # reading ``module.weight`` before then sees the new mask.
        setattr(module, name, getattr(module, f"{name}_orig") * existing)


def magnitude_prune(
    target: nn.Module | Sequence[ParameterRef],
    sparsity: float,
    scope: str = "local",
    pattern: str = "unstructured",
    n: int = 2,
    m: int = 4,
    exclude: Iterable[str] = (),
) -> dict[str, float]:
    """Prune by magnitude, in place.

    Args:
        target: a model (all its Linear weights, see :func:`linear_weights`) or explicit
            ``(module, name)`` pairs.
        sparsity: fraction removed, in ``[0, 1)`` (ignored by ``pattern="n:m"``, whose
            sparsity is ``1 - n / m``).
        scope: ``"local"`` or ``"global"`` (unstructured only).
        pattern: ``"unstructured"`` or ``"n:m"``.
        n, m: the N:M pattern.
        exclude: module names to skip when ``target`` is a model.

    Returns:
        ``{"overall": fraction of zeros, "<index>": fraction per tensor}`` after pruning.
    """
    refs = _refs(target, exclude)
    if pattern == "unstructured":
        masks = magnitude_masks([current_weight(r) for r in refs], sparsity, scope)
    elif pattern == "n:m":
        masks = [nm_mask(current_weight(r), n, m) & (current_weight(r) != 0) for r in refs]
    else:
        raise ValueError(f"`pattern` must be 'unstructured' or 'n:m', got {pattern!r}")
    for ref, mask in zip(refs, masks, strict=True):
        apply_mask(ref, mask)
    return sparsity_of(refs)


def _refs(target: nn.Module | Sequence[ParameterRef], exclude: Iterable[str]) -> list[ParameterRef]:
    refs = linear_weights(target, exclude) if isinstance(target, nn.Module) else list(target)
    if not refs:
        raise ValueError("`target` has no prunable weights")
    for ref in refs:
        if not (isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[0], nn.Module)):
            raise TypeError(f"`target` must hold (module, name) pairs, got {ref!r}")
    return refs


def sparsity_of(refs: Sequence[ParameterRef]) -> dict[str, float]:
    """``{"overall": fraction of zeros over all, "<i>": fraction in tensor i}``."""
    weights = [current_weight(r) for r in refs]
    zeros = [int((w == 0).sum()) for w in weights]
    result = {str(i): z / w.numel() for i, (z, w) in enumerate(zip(zeros, weights, strict=True))}
    result["overall"] = sum(zeros) / sum(w.numel() for w in weights)
    return result


def make_pruning_permanent(model: nn.Module) -> int:
    """Bake every pruning mask in ``model`` into its weight and drop the re-parametrisation
    (``weight_orig``, ``weight_mask`` and the hook). Returns how many tensors were fixed."""
    count = 0
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)
                count += 1
    return count


def sparsity_schedule(
    step: int,
    final_sparsity: float,
    total_steps: int,
    kind: str = "cubic",
    initial_sparsity: float = 0.0,
    begin_step: int = 0,
    frequency: int = 1,
) -> float:
    """Target sparsity at ``step``.

    Args:
        step: the current optimiser step (from 0).
        final_sparsity: reached at ``begin_step + total_steps`` and kept after.
        total_steps: length of the pruning phase.
        kind: ``"one-shot"`` (``final_sparsity`` from ``begin_step`` on), ``"iterative"``
            (linear increments, updated every ``frequency`` steps) or ``"cubic"`` (Zhu &
            Gupta 2017, updated every ``frequency`` steps: fast early, slow late).
        initial_sparsity: the sparsity at ``begin_step``.
        begin_step: no pruning before this step.
        frequency: steps between updates of the iterative and cubic schedules.
    """
    check_int(step, "step", minimum=0)
    check_int(total_steps, "total_steps")
    check_int(begin_step, "begin_step", minimum=0)
    check_int(frequency, "frequency")
    final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
    if kind not in SCHEDULES:
        raise ValueError(f"`kind` must be one of {SCHEDULES}, got {kind!r}")
    if step < begin_step:
        return 0.0
    if kind == "one-shot":
        return final_sparsity
    progress = schedule_progress(step, total_steps, begin_step, frequency, cubic=kind == "cubic")
    return initial_sparsity + (final_sparsity - initial_sparsity) * progress


def schedule_progress(
    step: int, total_steps: int, begin_step: int = 0, frequency: int = 1, cubic: bool = True
) -> float:
    """How far a schedule is, in ``[0, 1]``: ``t = (step - begin_step) / total_steps``
    (clamped, updated every ``frequency`` steps), then ``1 - (1 - t)^3`` if ``cubic``
    (Zhu & Gupta's curve) else ``t``."""
    elapsed = max(0, step - begin_step) // frequency * frequency
    t = min(1.0, elapsed / total_steps)
    return 1 - (1 - t) ** 3 if cubic else t


class GradualMagnitudePruner:
    """Magnitude pruning that follows a :func:`sparsity_schedule` during training.

    Call :meth:`step` after each optimiser step; the masks are recomputed from the current
    (already masked) weights whenever the scheduled sparsity rises.

    Args:
        target: a model (its Linear weights) or ``(module, name)`` pairs.
        final_sparsity, total_steps, kind, initial_sparsity, begin_step, frequency: the
            schedule, see :func:`sparsity_schedule`.
        scope: ``"local"`` or ``"global"``.
        exclude: module names to skip when ``target`` is a model.
    """

    def __init__(
        self,
        target: nn.Module | Sequence[ParameterRef],
        final_sparsity: float,
        total_steps: int,
        kind: str = "cubic",
        initial_sparsity: float = 0.0,
        begin_step: int = 0,
        frequency: int = 1,
        scope: str = "local",
        exclude: Iterable[str] = (),
    ) -> None:
        self.refs = _refs(target, exclude)
        self.schedule = {
            "final_sparsity": final_sparsity,
            "total_steps": total_steps,
            "kind": kind,
            "initial_sparsity": initial_sparsity,
            "begin_step": begin_step,
            "frequency": frequency,
        }
        sparsity_schedule(0, **self.schedule)  # type: ignore[arg-type]  # validate now
        if scope not in SCOPES:
            raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}")
        self.scope = scope
        self.sparsity = 0.0

    def step(self, step: int) -> float:
        """Prune to the scheduled sparsity of ``step`` (no-op if unchanged); return it."""
        target = sparsity_schedule(step, **self.schedule)  # type: ignore[arg-type]
        if target > self.sparsity:
            magnitude_prune(self.refs, target, scope=self.scope)
            self.sparsity = target
        return self.sparsity


__all__ = [
    "SCHEDULES",
    "SCOPES",
    "GradualMagnitudePruner",
    "apply_mask",
    "check_sparsity",
    "current_weight",
    "linear_weights",
    "magnitude_masks",
    "magnitude_prune",
    "make_pruning_permanent",
    "nm_mask",
    "schedule_progress",
    "sparsity_of",
    "sparsity_schedule",
]
