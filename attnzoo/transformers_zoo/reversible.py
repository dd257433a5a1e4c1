"""Reversible residual layers (Gomez et al. 2017) and the Reformer (Kitaev et al. 2020).

A reversible block keeps two activation streams and updates them in turn::

    y1 = x1 + F(x2)        x2 = y2 - G(y1)
    y2 = x2 + G(y1)        x1 = y1 - F(x2)

so its inputs can be recomputed from its outputs (right). :class:`ReversibleSequence` runs
a stack of such blocks inside one custom autograd Function that keeps only the stack's two
outputs for the backward pass: the backward walks the blocks from the last to the first,
recomputing each block's inputs from its outputs and back-propagating through ``G`` and
``F`` as it goes. The activations kept for backward are therefore those of ONE block at a
time, whatever the depth (a plain residual stack keeps every layer's), for the price of one
extra forward of every sub-layer. Dropout and any other randomness inside ``F`` and ``G``
(e.g. the random hashing of :class:`~attnzoo.attention.lsh.LSHAttention`) replays exactly:
the RNG state before every sub-layer call is recorded (kilobytes per sub-layer, not an
activation) and restored for its recomputation, without disturbing the global RNG; the
recomputation also runs under the forward's autocast setting.

In the Reformer ``F`` is the attention sub-layer and ``G`` the feed-forward one, both
pre-LN (``F(x) = dropout(attention(norm(x)))``): :class:`AttentionSublayer` takes any
attention module of the library (dense :class:`~attnzoo.attention.MultiHeadAttention` with
any normaliser, :class:`~attnzoo.attention.lsh.LSHAttention`,
:class:`~attnzoo.attention.sparse_patterns.SparseTransformerAttention`, ...) and
:class:`FeedForwardSublayer` wraps :class:`FeedForward`, optionally applied to the
sequence in chunks (the Reformer's chunked feed-forward: the forward pass never holds the
whole ``(n, ffn_dim)`` hidden layer at once). :class:`ReversibleEncoder` is such a stack:
the input is copied to both streams, and their mean goes through a final LayerNorm.
:class:`ReformerLM` puts token embeddings and a tied output layer around a causal LSH
reversible encoder; its ``generate`` decodes one token per step over per-block caches
(:class:`~attnzoo.attention.lsh.LSHCache`). Decoding needs no backward pass, so a step runs
the blocks' plain formula; the cached steps of LSH attention see every earlier key of the
query's buckets instead of the chunk window of the full pass (see
:func:`~attnzoo.attention.lsh.lsh_cached_attention`), so generated tokens match re-running
the prefix through an empty cache, not the chunked full pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..attention.lsh import LSHAttention
from ..attention.multi_head import KVCache, MultiHeadAttention
from ..attention.sparse_patterns import SparseTransformerAttention
from ..attention.validation import (
    check_bool_mask,
    check_int,
    check_probability,
    check_rank,
    check_size,
)
from .embeddings import Embeddings
from .feed_forward import ACTIVATIONS, FeedForward
from .generation import (
    GenerationMixin,
    GenerationOptions,
    GenerationStart,
    check_generation_length,
    check_unpadded_prompt,
)
from .layers import check_decoding_cache

ATTENTIONS: dict[str, Callable[..., nn.Module]] = {
    "dense": MultiHeadAttention,
    "lsh": LSHAttention,
    "sparse": SparseTransformerAttention,
}
"""Attention modules :class:`ReversibleEncoder` builds by name (``attention=``)."""


# --------------------------------------------------------------------------- sub-layers


class AttentionSublayer(nn.Module):
    """The residual branch ``dropout(attention(norm(x), mask=mask))`` (no residual add).

    Args:
        attention: any self-attention module called as ``attention(x, mask=mask)``
            ``(batch, n, dim) -> (batch, n, dim)``.
        dim: model width (of the LayerNorm).
        dropout: dropout on the branch output, in [0, 1).
        layer_norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self, attention: nn.Module, dim: int, dropout: float = 0.0, layer_norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        check_probability(dropout, "dropout")
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attention = attention
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, cache: KVCache | None = None
    ) -> Tensor:
        """``(batch, n, dim)`` -> ``(batch, n, dim)``; ``mask`` is a key-padding mask
        ``(batch, n_cached + n)``, True = real token; ``cache`` (the attention module's own
        kind, extended in place) decodes the ``n`` new positions after the cached ones."""
        if cache is None:
            return self.dropout(self.attention(self.norm(x), mask=mask))
        return self.dropout(self.attention(self.norm(x), mask=mask, cache=cache))


class FeedForwardSublayer(nn.Module):
    """The residual branch ``dropout(ffn(norm(x)))``, optionally over sequence chunks.

    Args:
        ffn: a :class:`FeedForward`.
        dropout: dropout on the branch output, in [0, 1).
        chunks: apply the network to this many slices of the sequence in turn (the
            Reformer's chunked feed-forward); the result is the same, and a forward without
            autograd holds ``1 / chunks`` of the hidden layer at a time.
        layer_norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self, ffn: FeedForward, dropout: float = 0.0, chunks: int = 1, layer_norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        check_probability(dropout, "dropout")
        self.chunks = check_int(chunks, "chunks")
        self.norm = nn.LayerNorm(ffn.dim, eps=layer_norm_eps)
        self.ffn = ffn
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(batch, n, dim)`` -> ``(batch, n, dim)``; ``mask`` is unused (position-wise)."""
        h = self.norm(x)
        if self.chunks == 1:
            return self.dropout(self.ffn(h))
        return self.dropout(torch.cat([self.ffn(part) for part in h.chunk(self.chunks, 1)], 1))

    def extra_repr(self) -> str:
        return f"chunks={self.chunks}"


# --------------------------------------------------------------------------- blocks


class ReversibleBlock(nn.Module):
    """``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)``, and its inverse.

    Args:
        f, g: residual branches called as ``branch(x, mask)``, ``(batch, n, dim)`` to
            ``(batch, n, dim)`` (e.g. :class:`AttentionSublayer`, :class:`FeedForwardSublayer`).
    """

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f, self.g = f, g

    def forward(
        self, x1: Tensor, x2: Tensor, mask: Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor]:
        """The plain formula (autograd keeps the activations). Streams ``(batch, n, dim)``;
        ``cache`` (decoding) goes to ``f``, which must take it (:class:`AttentionSublayer`)."""
        y1 = x1 + (self.f(x2, mask) if cache is None else self.f(x2, mask, cache))
        return y1, x2 + self.g(y1, mask)

    def inverse(self, y1: Tensor, y2: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Recompute the inputs ``(x1, x2)`` from the outputs (same randomness needed: in
        eval mode, or under the RNG state of the forward)."""
        x2 = y2 - self.g(y1, mask)
        return y1 - self.f(x2, mask), x2


@dataclass
class _RngState:
    """The global RNG state before one sub-layer call (CPU, plus the stream's CUDA device)."""

    cpu: Tensor
    cuda: Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> _RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Run the body under this state; the global RNG is left as it was."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


class _ReversibleFunction(torch.autograd.Function):
    """Forward of a block stack without storing activations; backward by reconstruction.

    ``apply(x1, x2, mask, blocks, preserve_rng, *params)``: ``params`` are the trainable
    parameters of all blocks (each once), passed so that autograd routes their gradients
    through this Function (``torch.autograd.grad`` sees them like any other input).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x1: Tensor,
        x2: Tensor,
        mask: Tensor | None,
        blocks: Sequence[ReversibleBlock],
        preserve_rng: bool,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        states: list[tuple[_RngState | None, _RngState | None]] = []
        for block in blocks:
            before_f = _RngState.capture(x1.device) if preserve_rng else None
            y1 = x1 + block.f(x2, mask)
            before_g = _RngState.capture(x1.device) if preserve_rng else None
            y2 = x2 + block.g(y1, mask)
            states.append((before_f, before_g))
            x1, x2 = y1, y2
        ctx.blocks, ctx.states, ctx.params = blocks, states, params
        device_type = x1.device.type
        ctx.autocast = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        ctx.save_for_backward(x1, x2, mask)
        return x1, x2

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy1: Tensor, dy2: Tensor) -> tuple[Tensor | None, ...]:
        y1, y2, mask = ctx.saved_tensors
        grads: dict[int, Tensor] = {}
        device_type, enabled, dtype = ctx.autocast
        # The recomputation runs under the forward's autocast setting, so it computes in the
        # same precisions as the forward did.
        autocast = torch.autocast(device_type, dtype=dtype, enabled=enabled)
        for block, (before_f, before_g) in zip(
            reversed(ctx.blocks), reversed(ctx.states), strict=True
        ):
            # G: rebuild g(y1), recover x2 = y2 - g(y1), push dy2 back into y1 and G.
            y1 = y1.detach().requires_grad_(True)
            with autocast:
                g_out = _recompute(block.g, y1, mask, before_g)
            dy1 = dy1 + _backprop(g_out, y1, block.g, dy2, grads)
            with torch.no_grad():
                x2 = y2 - g_out
            # F: rebuild f(x2), recover x1 = y1 - f(x2), push dy1 back into x2 and F.
            x2 = x2.detach().requires_grad_(True)
            with autocast:
                f_out = _recompute(block.f, x2, mask, before_f)
            dx2 = dy2 + _backprop(f_out, x2, block.f, dy1, grads)
            with torch.no_grad():
                x1 = y1 - f_out
            y1, y2, dy2 = x1, x2.detach(), dx2
        param_grads = tuple(grads.get(id(p)) for p in ctx.params)
        return (dy1, dy2, None, None, None, *param_grads)


def _recompute(
    branch: nn.Module, x: Tensor, mask: Tensor | None, state: _RngState | None
) -> Tensor:
    """``branch(x, mask)`` with autograd on, under the RNG state of the forward call."""
    with torch.enable_grad():
        if state is None:
            return branch(x, mask)
        with state.replay():
            return branch(x, mask)


def _backprop(
    out: Tensor, x: Tensor, branch: nn.Module, grad_out: Tensor, grads: dict[int, Tensor]
) -> Tensor:
    """Gradient of ``<out, grad_out>`` w.r.t. ``x``; the branch's parameter gradients are
    added to ``grads`` (keyed by ``id``, so a parameter shared by blocks accumulates)."""
    params = [p for p in branch.parameters() if p.requires_grad]
    found = torch.autograd.grad(out, (x, *params), grad_out, allow_unused=True)
    for p, g in zip(params, found[1:], strict=True):
        if g is not None:
            grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g
    return found[0] if found[0] is not None else torch.zeros_like(x)


class ReversibleSequence(nn.Module):
    """A stack of :class:`ReversibleBlock` whose backward recomputes the activations.

    Args:
        blocks: the blocks, applied in order.
        reversible: True: the custom backward (activation memory independent of depth);
            False: plain autograd through the same formula (for comparison and debugging).
        preserve_rng_state: record and replay the RNG state of every sub-layer, so that
            dropout and random hashing are the same in the recomputation. Turn off only
            when no sub-layer draws random numbers.
    """

    def __init__(
        self,
        blocks: Iterable[ReversibleBlock],
        reversible: bool = True,
        preserve_rng_state: bool = True,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        if not len(self.blocks):
            raise ValueError("`blocks` must hold at least one ReversibleBlock, got none")
        for block in self.blocks:
            if not isinstance(block, ReversibleBlock):
                raise TypeError(f"`blocks` must hold ReversibleBlocks, got {type(block).__name__}")
        self.reversible, self.preserve_rng_state = reversible, preserve_rng_state

    def forward(
        self,
        x1: Tensor,
        x2: Tensor,
        mask: Tensor | None = None,
        cache: Sequence[KVCache] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the blocks on the two streams ``(batch, n, dim)``; returns ``(y1, y2)``.

        ``mask`` (key-padding ``(batch, n_cached + n)``, True = real token) is passed to
        every branch. ``cache`` (one per block, decoding) runs the plain formula: a decoding
        step keeps no activations for a backward pass.
        """
        if cache is not None:
            if len(cache) != len(self.blocks):
                raise ValueError(
                    f"`cache` must hold one cache per block ({len(self.blocks)}), got {len(cache)}"
                )
            for block, block_cache in zip(self.blocks, cache, strict=True):
                x1, x2 = block(x1, x2, mask, block_cache)
            return x1, x2
        params = _unique_trainable(self.blocks.parameters())
        needs_graph = torch.is_grad_enabled() and (
            x1.requires_grad or x2.requires_grad or bool(params)
        )
        if not (self.reversible and needs_graph):
            for block in self.blocks:
                x1, x2 = block(x1, x2, mask)
            return x1, x2
        return _ReversibleFunction.apply(
            x1, x2, mask, list(self.blocks), self.preserve_rng_state, *params
        )

    def extra_repr(self) -> str:
        return f"reversible={self.reversible}"


def _unique_trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    unique = []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    return unique


# --------------------------------------------------------------------------- encoder


class ReversibleEncoder(nn.Module):
    """A pre-LN encoder of reversible blocks: F = attention, G = feed-forward.

    The input ``x`` is copied to both streams; after the blocks, the mean of the two goes
    through a final LayerNorm (``norm``).

    Args:
        dim: model width.
        heads: attention heads.
        depth: number of reversible blocks.
        ffn_dim: feed-forward hidden width; default ``4 * dim``.
        activation: feed-forward activation, one of :data:`ACTIVATIONS`.
        dropout: dropout on both branch outputs and in the feed-forward hidden layer.
        attention_dropout: attention-weight dropout; default ``dropout``.
        layer_norm_eps: LayerNorm epsilon.
        causal: causal self-attention.
        attention: ``"dense"`` (:class:`~attnzoo.attention.MultiHeadAttention`),
            ``"lsh"`` (:class:`~attnzoo.attention.lsh.LSHAttention`) or ``"sparse"``
            (:class:`~attnzoo.attention.sparse_patterns.SparseTransformerAttention`).
        attention_options: further keyword arguments of that module, e.g.
            ``{"normalizer": "entmax15"}`` (dense), ``{"n_buckets": 8, "n_hashes": 2}``
            (LSH), ``{"pattern": "fixed", "stride": 16}`` (sparse).
        ffn_chunks: sequence chunks of the feed-forward (see :class:`FeedForwardSublayer`).
        reversible: False runs the same blocks with plain autograd.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        depth: int,
        ffn_dim: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
        attention_dropout: float | None = None,
        layer_norm_eps: float = 1e-5,
        causal: bool = False,
        attention: str = "dense",
        attention_options: Mapping[str, Any] | None = None,
        ffn_chunks: int = 1,
        reversible: bool = True,
    ) -> None:
        super().__init__()
        check_int(dim, "dim")
        check_int(depth, "depth")
        check_probability(dropout, "dropout")
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {activation!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"`attention` must be one of {sorted(ATTENTIONS)}, got {attention!r}")
        if attention_options is not None and not isinstance(attention_options, Mapping):
            raise TypeError(
                "`attention_options` must be a dict of keyword arguments (or None), "
                f"got {type(attention_options).__name__}"
            )
        options = dict(attention_options or {})
        options.setdefault("dropout", dropout if attention_dropout is None else attention_dropout)
        self.dim = dim

        def block() -> ReversibleBlock:
            module = ATTENTIONS[attention](dim, heads, causal=causal, **options)
            f = AttentionSublayer(module, dim, dropout, layer_norm_eps)
            ffn = FeedForward(dim, ffn_dim, activation, dropout)
            return ReversibleBlock(f, FeedForwardSublayer(ffn, dropout, ffn_chunks, layer_norm_eps))

        self.layers = ReversibleSequence([block() for _ in range(depth)], reversible=reversible)
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)

    def new_cache(self) -> list[KVCache]:
        """Empty decoding caches, one per block: an
        :class:`~attnzoo.attention.lsh.LSHCache` for LSH attention, else a
        :class:`~attnzoo.attention.multi_head.KVCache`."""
        return [
            attention.new_cache() if isinstance(attention, LSHAttention) else KVCache()
            for attention in self._attentions()
        ]

    def _attentions(self) -> list[nn.Module]:
        """The attention module of every block, in order."""
        return [
            cast(AttentionSublayer, cast(ReversibleBlock, block).f).attention
            for block in self.layers.blocks
        ]

    def forward(
        self, x: Tensor, mask: Tensor | None = None, cache: list[KVCache] | None = None
    ) -> Tensor:
        """Encode ``x`` ``(batch, n, dim)`` -> ``(batch, n, dim)``.

        Args:
            x: ``(batch, n, dim)``: the whole sequence, or with a ``cache`` the new
                positions after the ``n_cached`` cached ones.
            mask: key-padding mask ``(batch, n_cached + n)``, True = real token.
            cache: from :meth:`new_cache`, extended in place (causal attention only; LSH
                attention also needs a ``seed``). Checked for every block before the first
                one runs.
        """
        check_rank(x, 3, "x", "(batch, n, dim)")
        check_size(x, -1, self.dim, "x", "dim")
        n_cached = 0
        if cache is not None:
            attentions = self._attentions()
            if not isinstance(cache, list) or len(cache) != len(attentions):
                got = f"{len(cache)} caches" if isinstance(cache, list) else type(cache).__name__
                raise ValueError(
                    f"`cache` must be a list of one cache per block ({len(attentions)}, from "
                    f"new_cache()), got {got}"
                )
            for i, (attention, block_cache) in enumerate(zip(attentions, cache, strict=True)):
                check_decoding_cache(attention, block_cache, f"block {i}")
            n_cached = len(cache[0])
        if mask is not None:
            check_bool_mask(mask, "mask")
            expected = (x.shape[0], n_cached + x.shape[1])
            if tuple(mask.shape) != expected:
                what = "(batch, n)" if cache is None else "(batch, n_cached + n)"
                raise ValueError(
                    f"`mask` must have shape {what} = {expected}, got {tuple(mask.shape)}"
                )
        y1, y2 = self.layers(x, x, mask, cache)
        return self.norm((y1 + y2) / 2)


# --------------------------------------------------------------------------- Reformer


@dataclass
class ReformerConfig:
    """A small Reformer language model: LSH attention, reversible blocks, chunked FFN.

    Attributes:
        vocab_size: token vocabulary size.
        dim, heads, depth: width, attention heads, reversible blocks.
        ffn_dim: feed-forward hidden width; default ``4 * dim``.
        max_len: number of learned positions.
        n_buckets, n_hashes, chunk_length: LSH settings (see
            :class:`~attnzoo.attention.lsh.LSHAttention`).
        ffn_chunks: sequence chunks of the feed-forward.
        dropout: branch and feed-forward dropout.
        causal: causal attention (a language model); False gives a bidirectional encoder.
        seed: fixed LSH rotations from this seed; None draws them at every call.
    """

    vocab_size: int
    dim: int = 64
    heads: int = 2
    depth: int = 2
    ffn_dim: int | None = None
    max_len: int = 512
    n_buckets: int = 8
    n_hashes: int = 1
    chunk_length: int = 64
    ffn_chunks: int = 1
    dropout: float = 0.0
    causal: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "heads", "depth", "max_len", "ffn_chunks"):
            check_int(getattr(self, name), name)
        check_probability(self.dropout, "dropout")


class ReformerLM(GenerationMixin, nn.Module):
    """Token embeddings + positions -> :class:`ReversibleEncoder` with LSH -> tied logits.

    ``generate`` (:meth:`~attnzoo.transformers_zoo.generation.GenerationMixin.generate`)
    continues unpadded prompts with one cached forward per new token (needs ``causal`` and
    a ``seed``; the model has no special tokens, so give ``eos_token_id`` and/or
    ``pad_token_id``).

    Args:
        config: a :class:`ReformerConfig`.
    """

    def __init__(self, config: ReformerConfig) -> None:
        super().__init__()
        if not isinstance(config, ReformerConfig):
            raise TypeError(f"`config` must be a ReformerConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = Embeddings(
            config.vocab_size, config.dim, config.max_len, layer_norm=False, dropout=config.dropout
        )
        self.encoder = ReversibleEncoder(
            config.dim,
            config.heads,
            config.depth,
            ffn_dim=config.ffn_dim,
            dropout=config.dropout,
            causal=config.causal,
            attention="lsh",
            attention_options={
                "n_buckets": config.n_buckets,
                "n_hashes": config.n_hashes,
                "chunk_length": config.chunk_length,
                "seed": config.seed,
            },
            ffn_chunks=config.ffn_chunks,
        )

    def new_cache(self) -> list[KVCache]:
        """Empty decoding caches, one per block (see :meth:`ReversibleEncoder.new_cache`)."""
        return self.encoder.new_cache()

    def forward(
        self, input_ids: Tensor, mask: Tensor | None = None, cache: list[KVCache] | None = None
    ) -> Tensor:
        """Logits ``(batch, n, vocab_size)`` of ids ``(batch, n)``. The output layer is the
        transposed token embedding.

        Args:
            input_ids: ``(batch, n)``; with a ``cache``, the positions after the cached ones.
            mask: key-padding mask ``(batch, n_cached + n)``, True = real token.
            cache: from :meth:`new_cache`, extended in place (causal, with a ``seed``).
        """
        offset = 0 if cache is None or not cache else len(cache[0])
        hidden = self.encoder(self.embeddings(input_ids, offset=offset), mask, cache)
        return hidden @ self.embeddings.word_embeddings.weight.t()

    def _begin_generation(
        self, input_ids: Tensor, attention_mask: Tensor | None, options: GenerationOptions
    ) -> GenerationStart:
        """Generation's start (:meth:`GenerationMixin.generate`): the prompt through empty
        caches, then one token per step. Prompts ``input_ids`` ``(batch, n)`` must be
        unpadded; returns the prompt followed by the generated tokens."""
        check_unpadded_prompt(input_ids, attention_mask, "Reformer")
        check_generation_length(
            input_ids.shape[1], options.max_new_tokens, self.config.max_len, "max_len"
        )
        return GenerationStart(
            step=self._step,
            state={"cache": self.new_cache(), "tokens": input_ids},
            history=input_ids,
            prefix=input_ids,
            eos=None,
            pad=None,
            vocab_size=self.config.vocab_size,
        )

    def _step(self, prev_tokens: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict]:
        """One forward: the whole prompt first (empty caches), then the previous token;
        returns the last position's logits ``(N, vocab_size)`` and the state."""
        cache = state["cache"]
        ids = state["tokens"] if len(cache[0]) == 0 else prev_tokens[:, None]
        return self(ids, cache=cache)[:, -1], {"cache": cache, "tokens": ids}


__all__ = [
    "ATTENTIONS",
    "AttentionSublayer",
    "FeedForwardSublayer",
    "ReformerConfig",
    "ReformerLM",
    "ReversibleBlock",
    "ReversibleEncoder",
    "ReversibleSequence",
]
