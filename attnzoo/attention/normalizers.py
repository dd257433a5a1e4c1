"""Normalisers: maps from scores to attention weights, and the one registry of them.

A normaliser is a callable ``f(scores, dim=-1) -> weights`` with these guarantees,
shared by every entry of the registry:

* weights are non-negative and sum to one along ``dim`` over the finite scores;
* a ``-inf`` score gets exactly zero weight;
* a slice that is entirely ``-inf`` (a query with no key it may attend to) gets all
  zeros and a zero gradient, never NaN;
* float16/bfloat16 scores are normalised in float32 and returned in the input dtype.

Attention modules take ``normalizer=`` as a registry name (``"softmax"``,
``"sparsemax"``, ``"entmax15"``, ``"entmax"`` with ``alpha``, ``"hardmax"``
(alias ``"hard"``), ``"gumbel"``) or as such a callable. Adding a normaliser is one
:func:`register_normalizer` entry, not an edit in every module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .entmax import (
    alpha_entmax,
    check_alpha,
    check_n_iter,
    entmax15,
    entmax_bisect,
    sparsemax,
)
from .validation import check_bool_mask, check_broadcastable_to, check_positive, check_tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)


class Normalizer(Protocol):
    """``(scores, dim=-1) -> weights`` of the same shape and dtype as ``scores``."""

    def __call__(self, scores: Tensor, /, dim: int = -1) -> Tensor: ...


NormalizerFactory = Callable[..., Normalizer]
_REGISTRY: dict[str, NormalizerFactory] = {}


def register_normalizer(name: str) -> Callable[[NormalizerFactory], NormalizerFactory]:
    """Register ``factory(**options) -> Normalizer`` under ``name``.

    >>> @register_normalizer("my_softmax")
    ... def _my_softmax(temperature: float = 1.0) -> Normalizer:
    ...     return lambda x, dim=-1: softmax(x / temperature, dim=dim)
    """

    def decorate(factory: NormalizerFactory) -> NormalizerFactory:
        if name in _REGISTRY:
            raise ValueError(f"`name`: a normaliser named {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_normalizers() -> list[str]:
    """Names accepted by :func:`get_normalizer`, sorted."""
    return sorted(_REGISTRY)


def get_normalizer(normalizer: str | Normalizer, **options: object) -> Normalizer:
    """Look up a normaliser by name (options go to its factory) or pass a callable through.

    Args:
        normalizer: a registry name, e.g. ``"entmax"``, or a callable ``f(scores, dim)``.
        **options: the factory's options, e.g. ``alpha=1.3`` for ``"entmax"``,
            ``tau=0.5, hard=True`` for ``"gumbel"``.
    """
    if callable(normalizer):
        if options:
            raise ValueError(
                f"options {sorted(options)} only apply to a normaliser given by name, "
                "not to a callable `normalizer`"
            )
        return normalizer
    if not isinstance(normalizer, str):
        raise TypeError(
            f"`normalizer` must be a name or a callable, got {type(normalizer).__name__}"
        )
    if normalizer not in _REGISTRY:
        raise ValueError(
            f"`normalizer` must be one of {available_normalizers()}, got {normalizer!r}"
        )
    return _REGISTRY[normalizer](**options)


def masked_normalize(
    scores: Tensor,
    mask: Tensor | None = None,
    normalizer: str | Normalizer = "softmax",
    dim: int = -1,
    **options: object,
) -> Tensor:
    """Normalise ``scores`` along ``dim`` where ``mask`` is True; zero weight elsewhere.

    Args:
        scores: ``(..., n_q, n_k)`` (any shape; ``dim`` picks the normalised axis).
        mask: boolean, True = may attend; broadcasts to ``scores`` without growing it.
        normalizer: registry name or callable.
        **options: options of the named normaliser (``alpha=`` for ``"entmax"``).

    Returns:
        weights of the shape and dtype of ``scores``; a slice with no allowed entry is 0.
    """
    check_tensor(scores, "scores")
    if mask is not None:
        check_bool_mask(mask)
        check_broadcastable_to(mask, scores.shape, "mask", "scores of shape")
        scores = scores.masked_fill(~mask, float("-inf"))
    return get_normalizer(normalizer, **options)(scores, dim=dim)


def _upcast(x: Tensor) -> Tensor:
    """float16/bfloat16 -> float32, so that exponentials and sums keep their precision."""
    return x.float() if x.dtype in LOW_PRECISION else x


def _all_masked(x: Tensor, dim: int) -> Tensor:
    """True where the whole slice along ``dim`` is ``-inf`` (keepdim)."""
    return torch.isneginf(x).all(dim=dim, keepdim=True)


class SoftmaxFunction(torch.autograd.Function):
    """Softmax that gives an all ``-inf`` slice zeros and zero gradient, at softmax's cost.

    Forward: PyTorch's fused softmax, and the empty slices zeroed. On a GPU they are found
    by a max-reduction first, without a host synchronisation. On a CPU, where reading a
    value back costs nothing, the softmax goes first: an empty slice comes out NaN in every
    entry (``exp(-inf - -inf)``), so a NaN-free first entry of every slice clears the call
    without another pass over ``x``; only a slice with a NaN there is looked at again.
    Backward: PyTorch's fused softmax backward on the saved weights; an empty slice's
    weights are 0, so its gradient is exactly 0.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, dim: int) -> Tensor:
        compute = torch.float32 if x.dtype in LOW_PRECISION else x.dtype
        if x.device.type != "cpu":
            # A slice whose max is -inf is all -inf. A NaN max (a NaN score) is not empty,
            # so a NaN input still shows in the output. No host synchronisation: the fill
            # always runs. Softmax leaves NaN in an empty slice, and masked_fill_ replaces
            # it: two memory passes fewer than raising -inf first, as the CPU branch does.
            empty = torch.isneginf(x.amax(dim=dim, keepdim=True))
            p = torch.softmax(x, dim=dim, dtype=compute).masked_fill_(empty, 0.0)
        else:
            p = torch.softmax(x, dim=dim, dtype=compute)
            if x.shape[dim] and bool(p.narrow(dim, 0, 1).isnan().any()):
                # An empty slice, or a NaN score (whose slice stays NaN, as it should).
                empty = torch.isneginf(x).all(dim=dim, keepdim=True)
                if bool(empty.any()):
                    # Raising -inf to the lowest finite value keeps an empty slice finite
                    # (uniform weights, zeroed by the product); in every other slice
                    # exp(lowest - max) underflows to exactly 0, as exp(-inf) does. On a
                    # CPU this multiply is 15 times faster than masked_fill_ with a
                    # broadcast mask.
                    z = x.clamp_min(torch.finfo(x.dtype).min)
                    p = torch.softmax(z, dim=dim, dtype=compute).mul_(~empty)
        ctx.save_for_backward(p)
        ctx.dim, ctx.input_dtype = dim, x.dtype
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (p,) = ctx.saved_tensors
        grad_x = torch.ops.aten._softmax_backward_data(grad.to(p.dtype), p, ctx.dim, p.dtype)
        return grad_x.to(ctx.input_dtype), None


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Softmax with the library's guarantees: an all ``-inf`` slice gives zeros, not NaN.

    float16/bfloat16 scores are normalised in float32.

    Args:
        x: scores of any shape; ``dim`` is normalised.
    Returns:
        weights, same shape and dtype as ``x``.
    """
    return SoftmaxFunction.apply(x, dim).to(x.dtype)


def hardmax(x: Tensor, dim: int = -1, straight_through: bool = False) -> Tensor:
    """One-hot of the argmax along ``dim`` (ties go to the first index).

    With ``straight_through=True`` the forward value is the one-hot and the gradient is
    softmax's (the straight-through estimator); otherwise the output has no gradient.
    An all ``-inf`` slice gives zeros.

    Args:
        x: scores of any shape.
    Returns:
        one-hot weights, same shape and dtype as ``x``.
    """
    z = _upcast(x)
    empty = _all_masked(z, dim)
    index = z.argmax(dim=dim, keepdim=True)
    hard = torch.zeros_like(z).scatter_(dim, index, 1.0).masked_fill(empty, 0.0)
    if straight_through:
        soft = softmax(z, dim=dim)
        hard = hard - soft.detach() + soft
    return hard.to(x.dtype)


def gumbel_softmax(
    x: Tensor,
    dim: int = -1,
    tau: float = 1.0,
    hard: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Gumbel-softmax sample (Jang et al. 2017; Maddison et al. 2017).

    ``softmax((x + g) / tau)`` with ``g`` standard Gumbel noise; ``hard=True`` returns
    the one-hot of that sample with the soft sample's gradient (straight-through).
    ``-inf`` scores are never sampled; an all ``-inf`` slice gives zeros.

    Args:
        x: unnormalised log-probabilities of any shape.
        tau: temperature > 0; lower is closer to one-hot.
        generator: optional ``torch.Generator`` for reproducible noise.
    Returns:
        weights, same shape and dtype as ``x``.
    """
    check_positive(tau, "tau")
    z = _upcast(x)
    uniform = torch.rand(z.shape, dtype=z.dtype, device=z.device, generator=generator)
    # -log(-log(u)) with u kept off 0 and 1 so the noise is finite.
    tiny = torch.finfo(z.dtype).tiny
    gumbel = -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))
    y = softmax((z + gumbel) / tau, dim=dim)
    if hard:
        y = hardmax(y.masked_fill(_all_masked(z, dim), float("-inf")), dim=dim) - y.detach() + y
    return y.to(x.dtype)


@register_normalizer("softmax")
def _softmax_factory() -> Normalizer:
    return softmax


@register_normalizer("sparsemax")
def _sparsemax_factory() -> Normalizer:
    return sparsemax


@register_normalizer("entmax15")
def _entmax15_factory() -> Normalizer:
    return entmax15


@register_normalizer("entmax")
def _entmax_factory(alpha: float | Tensor = 1.5, n_iter: int | None = None) -> Normalizer:
    """alpha-entmax, exact (:func:`alpha_entmax`); with ``n_iter``, that many bisection
    steps instead (:func:`entmax_bisect`, the ``entmax`` package's algorithm)."""
    # Fail when the normaliser is built (e.g. in a module's __init__), not at its first call.
    check_alpha(alpha)
    if n_iter is None:
        return functools.partial(alpha_entmax, alpha=alpha)
    check_n_iter(n_iter)
    return functools.partial(entmax_bisect, alpha=alpha, n_iter=n_iter)


@register_normalizer("hard")
@register_normalizer("hardmax")
def _hardmax_factory(straight_through: bool = False) -> Normalizer:
    return functools.partial(hardmax, straight_through=straight_through)


@register_normalizer("gumbel")
def _gumbel_factory(
    tau: float = 1.0, hard: bool = False, generator: torch.Generator | None = None
) -> Normalizer:
    check_positive(tau, "tau")
    return functools.partial(gumbel_softmax, tau=tau, hard=hard, generator=generator)


__all__ = [
    "Normalizer",
    "available_normalizers",
    "get_normalizer",
    "gumbel_softmax",
    "hardmax",
    "masked_normalize",
    "register_normalizer",
    "softmax",
]
