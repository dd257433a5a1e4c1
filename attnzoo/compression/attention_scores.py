"""Record the pre-softmax attention scores of a model's attention modules.

TinyBERT (Jiao et al. 2020) distils the unnormalised attention matrices ``A = Q K^T /
sqrt(d_k)`` of every head rather than the softmax weights. The zoo models return the weights
(``output_attentions=True``); :func:`capture_attention_scores` gets the scores without
touching the attention code: forward hooks on each
:class:`~attnzoo.attention.multi_head.MultiHeadAttention`'s ``query`` and ``key`` projections
keep this call's projected queries and keys, and a hook on the module itself turns them into
``q k^T * scale`` once the module has run. The attention forward itself is unchanged (it may
still take the fused SDPA path); the capture costs one extra ``q k^T`` product per module.

The scores are what the module's normaliser is given before masking: ``q k^T / sqrt(d_head)``
after the rotary rotation (``position="rotary"``) and plus the ALiBi bias
(``position="alibi"``). Masked keys (padding, causal) are NOT filled in: the raw products
are kept, and the loss decides what to do with them (see
:class:`~attnzoo.compression.distillation.TinyBertLoss`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..attention.multi_head import MultiHeadAttention

_CACHE_ARGUMENT = 3  # position of ``cache`` in MultiHeadAttention.forward(x, context, mask, cache)


def _scores_of(module: MultiHeadAttention, q: Tensor, k: Tensor) -> Tensor:
    """``(batch, n_q, heads * d)``, ``(batch, n_k, heads * d)`` -> scores
    ``(batch, heads, n_q, n_k)`` as the module's ``attend`` call forms them."""
    q = rearrange(q, "b n (h d) -> b h n d", h=module.heads)
    k = rearrange(k, "b n (h d) -> b h n d", h=module.heads)
    if module.rotary is not None:
        q, k = module.rotary(q), module.rotary(k)
    scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if module.alibi is not None:
        scores = scores + module.alibi(q.shape[-2], k.shape[-2], q.device, q.dtype)
    return scores


class _ScoreRecorder:
    """The hooks of one attention module; appends its scores to a shared list."""

    def __init__(self, module: MultiHeadAttention, scores: list[Tensor]) -> None:
        self.module, self.scores = module, scores
        self.q: Tensor | None = None
        self.k: Tensor | None = None

    def attach(self) -> list[RemovableHandle]:
        return [
            self.module.register_forward_pre_hook(self.before, with_kwargs=True),
            self.module.query.register_forward_hook(self.keep_query),
            self.module.key.register_forward_hook(self.keep_key),
            self.module.register_forward_hook(self.after),
        ]

    def before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cache = kwargs.get("cache", args[_CACHE_ARGUMENT] if len(args) > _CACHE_ARGUMENT else None)
        if cache is not None:
            raise ValueError(
                "capture_attention_scores does not support decoding with a KVCache: the "
                "cached keys are not recomputed, so the scores would miss them; run the "
                "full sequence without `cache`"
            )
        self.q = self.k = None

    def keep_query(self, linear: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        self.q = output

    def keep_key(self, linear: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        self.k = output

    def after(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.q is None or self.k is None:
            raise RuntimeError(
                f"{type(module).__name__} ran without calling its query and key projections"
            )
        self.scores.append(_scores_of(self.module, self.q, self.k))
        self.q = self.k = None


@contextmanager
def capture_attention_scores(model: nn.Module) -> Iterator[list[Tensor]]:
    """Record the pre-softmax scores of every attention call inside the ``with`` block.

    Example::

        with capture_attention_scores(model) as scores:
            out = model(ids, attention_mask=mask)
        # scores[i]: (batch, heads, n, n) of the i-th attention call (layer i of a BERT)

    Args:
        model: a module holding :class:`~attnzoo.attention.multi_head.MultiHeadAttention`
            modules (every dense zoo encoder and decoder: BERT, RoBERTa, ALBERT,
            DistilBERT, ...). Subclasses with a different score formula (relative
            attention, adaptive span) are rejected rather than mis-recorded.

    Yields:
        a list, filled during the block, of scores ``(batch, heads, n_q, n_k)`` in call order
        (a shared ALBERT layer appears once per use); each is ``q k^T / sqrt(d_head)``
        (rotated, plus ALiBi, as the module has them), in the model's dtype and in the
        autograd graph when gradients are on, so a loss on them trains the queries and keys.
        The hooks are removed when the block exits.

    Raises:
        TypeError: ``model`` is not a module, or holds an attention subclass whose scores
            are not ``q k^T / sqrt(d_head)``.
        ValueError: ``model`` holds no attention module; (during the block) a call with a
            decoding cache.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    modules = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    if not modules:
        raise ValueError(
            f"`model` ({type(model).__name__}) has no MultiHeadAttention module to record "
            "scores from"
        )
    for module in modules:
        if type(module) is not MultiHeadAttention:
            raise TypeError(
                f"`model` holds a {type(module).__name__}, whose scores are not "
                "q k^T / sqrt(d_head); only plain MultiHeadAttention modules are supported"
            )
    scores: list[Tensor] = []
    handles = [h for m in modules for h in _ScoreRecorder(m, scores).attach()]
    try:
        yield scores
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["capture_attention_scores"]
