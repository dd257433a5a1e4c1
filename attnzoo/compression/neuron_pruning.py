"""Feed-forward neuron pruning: remove hidden units of the zoo's :class:`FeedForward`.

A hidden unit ``j`` is one row of ``intermediate`` (two rows for GEGLU: its value and its
gate) and one column of ``output``; :func:`prune_ffn_neurons` slices them away, so the
layer gets narrower and faster. Importance is scored like attention heads
(:mod:`attnzoo.compression.head_pruning`): a gate ``xi_j = 1`` multiplies each hidden
activation (a forward pre-hook on ``output``) and ``|dL / d xi_j|`` is accumulated over
batches, the first-order estimate of the loss change when the unit is removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..transformers_zoo.feed_forward import FeedForward
from .head_pruning import slice_linear


def prune_ffn_neurons(ffn: FeedForward, neurons: Iterable[int]) -> None:
    """Remove hidden units ``neurons`` from ``ffn`` in place.

    Args:
        ffn: a :class:`~attnzoo.transformers_zoo.feed_forward.FeedForward`.
        neurons: indices in ``[0, ffn.hidden_dim)``; at least one unit must remain.
    """
    if not isinstance(ffn, FeedForward):
        raise TypeError(f"`ffn` must be a FeedForward, got {type(ffn).__name__}")
    removed = set()
    for j in neurons:
        if isinstance(j, bool) or not isinstance(j, int):
            raise TypeError(f"`neurons` must hold ints, got {type(j).__name__}")
        if not 0 <= j < ffn.hidden_dim:
            raise ValueError(f"`neurons` must be in [0, {ffn.hidden_dim}), got {j}")
        removed.add(j)
    if not removed:
        return
    if len(removed) == ffn.hidden_dim:
        raise ValueError(f"`neurons` must leave at least one of the {ffn.hidden_dim} units")
    kept = torch.tensor([j for j in range(ffn.hidden_dim) if j not in removed])
    # GEGLU's intermediate holds the values, then the gates: keep both halves of a unit.
    rows = torch.cat([kept, kept + ffn.hidden_dim]) if ffn.activation == "geglu" else kept
    ffn.intermediate = slice_linear(ffn.intermediate, rows, 0)
    ffn.output = slice_linear(ffn.output, kept, 1)
    ffn.hidden_dim = len(kept)


def feed_forward_modules(model: nn.Module) -> list[tuple[str, FeedForward]]:
    """Every :class:`FeedForward` in ``model`` with its name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FeedForward)]


def ffn_neuron_importance(
    model: nn.Module, loss_fn: Callable[[nn.Module, Any], Tensor], batches: Iterable[Any]
) -> list[Tensor]:
    """``sum over batches of |dL / d xi_j|`` for every hidden unit of every feed-forward
    module (eval mode, parameters' gradients untouched).

    Returns:
        one ``(hidden_dim,)`` tensor per module, in :func:`feed_forward_modules` order.
    """
    modules = feed_forward_modules(model)
    if not modules:
        raise ValueError(f"`model` ({type(model).__name__}) holds no FeedForward")
    gates = [
        torch.ones(
            m.hidden_dim,
            device=m.output.weight.device,
            dtype=m.output.weight.dtype,
            requires_grad=True,
        )
        for _, m in modules
    ]

    def hook(gate: Tensor) -> Callable[[nn.Module, tuple], tuple]:
        return lambda _, args: (args[0] * gate.to(args[0].dtype),)

    handles = [
        m.output.register_forward_pre_hook(hook(g))
        for (_, m), g in zip(modules, gates, strict=True)
    ]
    scores = [torch.zeros_like(g, requires_grad=False) for g in gates]
    was_training = model.training
    model.eval()
    try:
        seen = False
        for batch in batches:
            seen = True
            grads = torch.autograd.grad(loss_fn(model, batch), gates, allow_unused=True)
            for score, grad in zip(scores, grads, strict=True):
                if grad is not None:
                    score += grad.detach().abs()
        if not seen:
            raise ValueError("`batches` must yield at least one batch")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return scores


def prune_ffn_neurons_by_importance(
    model: nn.Module,
    fraction: float,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Sequence[Any],
) -> dict[str, list[int]]:
    """Remove the ``fraction`` least important hidden units of every feed-forward module
    (:func:`ffn_neuron_importance`), in place.

    Args:
        model: a model holding :class:`FeedForward` modules.
        fraction: share of each module's units to remove, in ``[0, 1)`` (rounded down).
        loss_fn: ``(model, batch) -> scalar loss``.
        batches: the scoring data.

    Returns:
        ``{module name: removed unit indices}``.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"`fraction` must be in [0, 1), got {fraction}")
    scores = ffn_neuron_importance(model, loss_fn, batches)
    removed: dict[str, list[int]] = {}
    for (name, ffn), score in zip(feed_forward_modules(model), scores, strict=True):
        count = int(fraction * ffn.hidden_dim)
        if count:
            units = sorted(int(j) for j in torch.argsort(score)[:count])
            prune_ffn_neurons(ffn, units)
            removed[name] = units
    return removed


__all__ = [
    "feed_forward_modules",
    "ffn_neuron_importance",
    "prune_ffn_neurons",
    "prune_ffn_neurons_by_importance",
]
