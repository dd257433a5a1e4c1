"""Attention-head pruning (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

A head's importance is the accumulated ``|dL / d xi_h|`` of a gate ``xi_h = 1`` that
multiplies the head's context vector (its slice of the input of the out-projection),
normalised by its layer's L2 norm; the least important heads are masked a fraction at a
time, re-scoring after each round, and at the end :func:`prune_heads` removes them
physically: the query/key/value rows and out-projection columns of a removed head are
sliced away and the module's head count drops, so the pruned model is smaller and faster,
not merely masked.

The gates are forward pre-hooks on the out-projections (:class:`HeadGates`), so any model
holding :class:`~attnzoo.attention.multi_head.MultiHeadAttention` modules can be scored and
pruned without changes to the attention code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.multi_head import MultiHeadAttention
from ..attention.validation import check_probability

LossFn = Callable[[nn.Module, Any], Tensor]


def slice_linear(linear: nn.Linear, index: Tensor, dim: int) -> nn.Linear:
    """A copy of ``linear`` keeping ``index`` along the weight's ``dim`` (0: outputs,
    1: inputs), on the same device, dtype and ``requires_grad``."""
    weight = linear.weight.detach().index_select(dim, index.to(linear.weight.device))
    has_bias = linear.bias is not None
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=has_bias, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            new.bias.copy_(bias.index_select(0, index.to(bias.device)) if dim == 0 else bias)
    new.weight.requires_grad_(linear.weight.requires_grad)
    if has_bias and linear.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


def prune_heads(attention: MultiHeadAttention, heads: Iterable[int]) -> None:
    """Remove ``heads`` from ``attention`` in place.

    The query/key/value output rows and the out-projection input columns of those heads
    are sliced away, ``attention.heads`` drops, and per-head state follows (the learned
    entmax alphas, the ALiBi slopes). Indices refer to the module's current heads; the
    remaining heads keep their order.

    Args:
        attention: a :class:`~attnzoo.attention.multi_head.MultiHeadAttention`.
        heads: indices in ``[0, attention.heads)``; at least one head must remain (drop the
            whole layer instead, see :mod:`attnzoo.compression.layerdrop`).
    """
    if not isinstance(attention, MultiHeadAttention):
        raise TypeError(f"`attention` must be a MultiHeadAttention, got {type(attention).__name__}")
    removed = sorted(set(_check_heads(heads, attention.heads)))
    if not removed:
        return
    if len(removed) == attention.heads:
        raise ValueError(
            f"`heads` must leave at least one of the {attention.heads} heads, got {removed}"
        )
    kept = torch.tensor([h for h in range(attention.heads) if h not in removed])
    d = attention.dim_head
    columns = (kept[:, None] * d + torch.arange(d)).flatten()
    attention.query = slice_linear(attention.query, columns, 0)
    attention.key = slice_linear(attention.key, columns, 0)
    attention.value = slice_linear(attention.value, columns, 0)
    attention.out = slice_linear(attention.out, columns, 1)
    attention.heads = len(kept)
    if attention.alpha is not None:
        raw = attention.alpha.raw
        attention.alpha.raw = nn.Parameter(raw.detach()[kept.to(raw.device)].clone())
        attention.alpha.heads = len(kept)
    if attention.alibi is not None:
        attention.alibi.slopes = attention.alibi.slopes[kept.to(attention.alibi.slopes.device)]
        attention.alibi.heads = len(kept)


def _check_heads(heads: Iterable[int], count: int) -> list[int]:
    heads = list(heads)
    for h in heads:
        if isinstance(h, bool) or not isinstance(h, int):
            raise TypeError(f"`heads` must hold ints, got {type(h).__name__}")
        if not 0 <= h < count:
            raise ValueError(f"`heads` must be in [0, {count}), got {h}")
    return heads


def attention_modules(model: nn.Module) -> list[tuple[str, MultiHeadAttention]]:
    """Every :class:`MultiHeadAttention` in ``model`` with its name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MultiHeadAttention)]


def prune_model_heads(model: nn.Module, heads: dict[str, Sequence[int]]) -> None:
    """:func:`prune_heads` on several modules: ``{attention module name: head indices}``."""
    modules = dict(attention_modules(model))
    for name, indices in heads.items():
        if name not in modules:
            raise ValueError(f"`heads` names no attention module {name!r}; have {list(modules)}")
        prune_heads(modules[name], indices)


class HeadGates:
    """Multiplicative gates on the heads of every attention module of a model.

    A forward pre-hook on each ``attention.out`` multiplies the context of head ``h``
    (its ``dim_head`` slice of the out-projection's input) by ``gates[i][h]``. The gates
    start at one and require grad, so ``gates[i].grad`` after a backward pass is
    ``dL / d xi`` of Michel et al. 2019; setting a gate to 0 masks the head exactly as
    removing it would. Use as a context manager (the hooks go on entry, off on exit).

    Args:
        model: a model holding :class:`MultiHeadAttention` modules.
    """

    def __init__(self, model: nn.Module) -> None:
        self.modules = attention_modules(model)
        if not self.modules:
            raise ValueError(f"`model` ({type(model).__name__}) holds no MultiHeadAttention")
        self.gates = [
            torch.ones(
                m.heads, device=m.out.weight.device, dtype=m.out.weight.dtype, requires_grad=True
            )
            for _, m in self.modules
        ]
        self._handles: list[Any] = []

    def __enter__(self) -> HeadGates:
        for (_, module), gate in zip(self.modules, self.gates, strict=True):
            self._handles.append(module.out.register_forward_pre_hook(self._hook(module, gate)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @staticmethod
    def _hook(module: MultiHeadAttention, gate: Tensor) -> Callable[[nn.Module, tuple], tuple]:
        def hook(_: nn.Module, args: tuple) -> tuple:
            (context,) = args  # (batch, n, heads * dim_head)
            shape = context.shape
            per_head = context.reshape(*shape[:-1], module.heads, module.dim_head)
            gated = per_head * gate.to(context.dtype)[:, None]
            return (gated.reshape(shape),)

        return hook

    def zero_grad(self) -> None:
        """Clear the gates' gradients."""
        for gate in self.gates:
            gate.grad = None


def head_importance(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    gates: HeadGates | None = None,
    normalize: bool = True,
) -> list[Tensor]:
    """Michel et al.'s head importance: ``sum over batches of |dL / d xi_h|``.

    Args:
        model: scored in eval mode (its mode is restored); only the gates are
            differentiated, so parameter gradients are left untouched.
        loss_fn: ``(model, batch) -> scalar loss``.
        batches: the data to score on.
        gates: active :class:`HeadGates` whose current values (e.g. zeros for masked heads)
            are used; None creates ones.
        normalize: divide each layer's scores by their L2 norm (the paper's choice).

    Returns:
        one ``(heads,)`` tensor per attention module, in :func:`attention_modules` order.
    """
    own = gates is None
    gates = HeadGates(model) if gates is None else gates
    was_training = model.training
    model.eval()
    scores = [torch.zeros_like(g, requires_grad=False) for g in gates.gates]
    try:
        if own:
            gates.__enter__()
        any_batch = False
        for batch in batches:
            any_batch = True
            gates.zero_grad()
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, gates.gates, allow_unused=True)
            for score, grad in zip(scores, grads, strict=True):
                if grad is not None:
                    score += grad.detach().abs()
        if not any_batch:
            raise ValueError("`batches` must yield at least one batch")
    finally:
        if own:
            gates.__exit__()
        model.train(was_training)
    if normalize:
        scores = [s / (s.norm() + 1e-20) for s in scores]
    return scores


@dataclass
class HeadPruningResult:
    """What :func:`prune_heads_iteratively` did.

    Attributes:
        removed: ``{attention module name: original head indices removed}``.
        history: ``(fraction of heads masked, metric)`` after each round (the metric is
            None without ``evaluate``); the first entry is the unpruned model.
    """

    removed: dict[str, list[int]] = field(default_factory=dict)
    history: list[tuple[float, float | None]] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        """Fraction of heads removed."""
        return self.history[-1][0] if self.history else 0.0


def prune_heads_iteratively(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    fraction: float,
    step_fraction: float = 0.1,
    evaluate: Callable[[nn.Module], float] | None = None,
    max_metric_drop: float | None = None,
) -> HeadPruningResult:
    """Michel et al.'s iterative pruning, then physical removal of the masked heads.

    Each round scores the heads (:func:`head_importance`, with the heads masked so far
    gated to zero), masks the ``step_fraction`` least important of all heads (each layer
    keeps at least one), and evaluates; it stops at ``fraction`` of all heads, or, with
    ``max_metric_drop``, before a round that would lower ``evaluate`` by more than that
    from the unpruned value (higher metric = better). The masked heads are then removed
    with :func:`prune_heads`.

    Args:
        model: pruned in place.
        loss_fn: ``(model, batch) -> scalar loss`` for the importance scores.
        batches: the scoring data (re-iterated every round, so a list).
        fraction: target fraction of all heads to remove, in ``[0, 1)``.
        step_fraction: fraction of all heads masked per round, in ``(0, 1)``.
        evaluate: ``model -> metric`` (higher is better), evaluated after every round.
        max_metric_drop: stop before the metric falls more than this below the start.
    """
    check_probability(fraction, "fraction")
    if not 0 < step_fraction < 1:
        raise ValueError(f"`step_fraction` must be in (0, 1), got {step_fraction}")
    if max_metric_drop is not None and evaluate is None:
        raise ValueError("`max_metric_drop` needs `evaluate`")
    gates = HeadGates(model)
    total = sum(g.numel() for g in gates.gates)
    target = int(fraction * total)
    per_round = max(1, round(step_fraction * total))
    result = HeadPruningResult()
    with gates:
        start = _evaluate(model, evaluate)
        result.history.append((0.0, start))
        masked = 0
        while masked < target:
            scores = head_importance(model, loss_fn, batches, gates=gates)
            saved = [g.detach().clone() for g in gates.gates]
            _mask_least_important(gates, scores, min(per_round, target - masked))
            metric = _evaluate(model, evaluate)
            if _dropped_too_far(start, metric, max_metric_drop):
                with torch.no_grad():
                    for gate, old in zip(gates.gates, saved, strict=True):
                        gate.copy_(old)
                break
            masked = sum(int((g == 0).sum()) for g in gates.gates)
            result.history.append((masked / total, metric))
    for (name, module), gate in zip(gates.modules, gates.gates, strict=True):
        removed = [int(h) for h in torch.nonzero(gate == 0).flatten()]
        if removed:
            prune_heads(module, removed)
            result.removed[name] = removed
    return result


def _dropped_too_far(start: float | None, metric: float | None, limit: float | None) -> bool:
    if limit is None or start is None or metric is None:
        return False
    return start - metric > limit


def _evaluate(model: nn.Module, evaluate: Callable[[nn.Module], float] | None) -> float | None:
    if evaluate is None:
        return None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        value = float(evaluate(model))
    model.train(was_training)
    return value


def _mask_least_important(gates: HeadGates, scores: list[Tensor], count: int) -> None:
    """Zero the gates of the ``count`` lowest-scored open heads, never a layer's last."""
    candidates = []
    for layer, (gate, score) in enumerate(zip(gates.gates, scores, strict=True)):
        for head in range(gate.numel()):
            if gate[head] != 0:
                candidates.append((float(score[head]), layer, head))
    candidates.sort()
    open_heads = [int((g != 0).sum()) for g in gates.gates]
    with torch.no_grad():
        for _, layer, head in candidates:
            if count == 0:
                break
            if open_heads[layer] > 1:
                gates.gates[layer][head] = 0.0
                open_heads[layer] -= 1
                count -= 1


__all__ = [
    "HeadGates",
    "HeadPruningResult",
    "attention_modules",
    "head_importance",
    "prune_heads",
    "prune_heads_iteratively",
    "prune_model_heads",
]
