"""Transformer-XL (Dai et al. 2019, "Transformer-XL: Attentive Language Models Beyond a
Fixed-Length Context"), read top to bottom.

A causal language model that reads a long sequence one *segment* at a time. Each layer
keeps the hidden states that entered it over the last ``mem_len`` positions (its memory,
detached: no gradient crosses a segment boundary) and the next segment's keys and values are
computed from ``[memory; segment]``. Attention scores are relative
(:class:`~attnzoo.attention.relative.RelativeMultiHeadAttention`: sinusoidal distance
encodings, the ``u``/``v`` biases and the relative shift), so cached states need no
re-encoding of their positions. A layer is::

    h = LayerNorm(x + dropout(RelAttention(x, memory)))       post-LN, as the paper
    x = LayerNorm(h + dropout(FeedForward(h)))

(``norm_first=True`` gives the pre-LN arrangement with a final LayerNorm.)

Where the memory covers the whole context (``mem_len`` at least the number of earlier
positions), :meth:`TransformerXLModel.forward_segments` computes exactly what one
full-context pass computes; with a shorter memory each layer sees at most ``mem_len``
positions before the segment, and the stack's reach grows with depth
(``depth * mem_len``), as in the paper.

The output layer is a plain softmax tied to the input embedding by default; with
``cutoffs`` set, the model uses the paper's adaptive input embedding and projected adaptive
softmax (:mod:`attnzoo.transformers_zoo.adaptive_softmax`), optionally tied
(``tie_weights``, ``tie_projs``). Differences from the original model, for a small readable
one: no ``clamp_len``/``same_length`` evaluation options; projections with biases
(``bias=True``, configurable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.normalizers import available_normalizers
from ..attention.projection import project
from ..attention.relative import RelativeMultiHeadAttention
from ..attention.validation import (
    check_int,
    check_probability,
    check_rank,
    check_size,
    check_tensor,
)
from .adaptive_softmax import AdaptiveEmbedding, AdaptiveSoftmax, cluster_bounds, cluster_widths
from .embeddings import TokenEmbedding
from .feed_forward import ACTIVATIONS, FeedForward


@dataclass
class TransformerXLConfig:
    """Shape of a Transformer-XL language model.

    Attributes:
        vocab_size: number of token ids.
        dim: model width (even: sinusoidal distance encodings).
        heads: attention heads (``dim`` divisible by it).
        depth: number of layers.
        ffn_dim: feed-forward hidden width; default ``4 * dim``.
        mem_len: hidden states kept per layer between segments (0: no recurrence).
        dropout: embedding, residual and feed-forward dropout.
        attention_dropout: attention-weight dropout; default ``dropout``.
        activation: feed-forward activation (``"relu"`` as the paper).
        norm_first: pre-LN (True) or post-LN (False, the paper's).
        layer_norm_eps: LayerNorm epsilon.
        normalizer: attention normaliser (registry name), e.g. ``"softmax"``, ``"entmax15"``.
        alpha: the exponent of ``normalizer="entmax"``.
        bias: biases in the attention projections.
        tie_weights: output layer shares the input embedding matrix (with ``cutoffs``:
            every cluster's table).
        cutoffs: None (default) for a plain embedding and full softmax; else the cluster
            boundaries of an adaptive input embedding and adaptive softmax, strictly
            increasing in ``[1, vocab_size)``, ids ranked by frequency.
        div_val: with ``cutoffs``: cluster ``i`` has width ``embed_dim // div_val ** i``.
        embed_dim: with ``cutoffs``: width of cluster 0; default ``dim``.
        tie_projs: with ``cutoffs``: the output layer shares the embedding's projections
            (one bool, or one per cluster as Transformer-XL's ``tie_projs``).
    """

    vocab_size: int = 256
    dim: int = 128
    heads: int = 4
    depth: int = 2
    ffn_dim: int | None = None
    mem_len: int = 64
    dropout: float = 0.1
    attention_dropout: float | None = None
    activation: str = "relu"
    norm_first: bool = False
    layer_norm_eps: float = 1e-5
    normalizer: str = "softmax"
    alpha: float | None = None
    bias: bool = True
    tie_weights: bool = True
    cutoffs: Sequence[int] | None = None
    div_val: float = 1
    embed_dim: int | None = None
    tie_projs: bool | Sequence[bool] = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "heads", "depth"):
            check_int(getattr(self, name), name)
        check_int(self.mem_len, "mem_len", minimum=0)
        if self.dim % self.heads:
            raise ValueError(f"`dim` ({self.dim}) must be divisible by `heads` ({self.heads})")
        if self.dim % 2:
            raise ValueError(f"`dim` must be even (sinusoidal distance encodings), got {self.dim}")
        if self.ffn_dim is not None:
            check_int(self.ffn_dim, "ffn_dim")
        check_probability(self.dropout, "dropout")
        if self.attention_dropout is not None:
            check_probability(self.attention_dropout, "attention_dropout")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.normalizer not in available_normalizers():
            raise ValueError(
                f"`normalizer` must be one of {available_normalizers()}, got {self.normalizer!r}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"`layer_norm_eps` must be > 0, got {self.layer_norm_eps}")
        self._check_adaptive()

    def _check_adaptive(self) -> None:
        if self.cutoffs is None:
            if self.embed_dim is not None or self.div_val != 1:
                raise ValueError(
                    "`embed_dim` and `div_val` apply only with `cutoffs`, got "
                    f"embed_dim={self.embed_dim}, div_val={self.div_val} and cutoffs=None"
                )
            return
        bounds = cluster_bounds(self.vocab_size, self.cutoffs)
        self.cutoffs = tuple(self.cutoffs)
        cluster_widths(
            self.dim if self.embed_dim is None else self.embed_dim, self.div_val, len(bounds) - 1
        )
        if not isinstance(self.tie_projs, bool):
            self.tie_projs = tuple(self.tie_projs)
            if len(self.tie_projs) != len(bounds) - 1:
                raise ValueError(
                    f"`tie_projs` must be a bool or one per cluster ({len(bounds) - 1}), "
                    f"got {len(self.tie_projs)}"
                )


@dataclass
class TransformerXLOutput:
    """What :class:`TransformerXLModel` returns.

    Attributes:
        last_hidden_state: ``(batch, n, dim)``.
        mems: the memory for the next segment, one detached ``(batch, m', dim)`` tensor
            per layer (``m' = min(mem_len, m + n)``); None when ``mem_len == 0``.
        attentions: with ``output_attentions``: every layer's weights
            ``(batch, heads, n, m + n)``.
    """

    last_hidden_state: Tensor
    mems: list[Tensor] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclass
class TransformerXLLMOutput:
    """What :class:`TransformerXLLMHeadModel` returns.

    Attributes:
        logits: ``(batch, n, vocab_size)``. With an adaptive softmax (``cutoffs``): the
            full log-probabilities, and None when ``labels`` are given (the loss scores only
            each target's cluster and never builds them).
        loss: with ``labels``: mean next-token cross-entropy over labels != -100.
        mems, attentions: as in :class:`TransformerXLOutput`.
    """

    logits: Tensor | None
    loss: Tensor | None = None
    mems: list[Tensor] | None = None
    attentions: tuple[Tensor, ...] | None = None


class TransformerXLLayer(nn.Module):
    """Relative self-attention over ``[memory; x]`` and a feed-forward network.

    Parameters: ``attention`` (:class:`RelativeMultiHeadAttention`), ``attention_norm``,
    ``ffn`` (:class:`FeedForward`), ``ffn_norm``.
    """

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        self.norm_first = config.norm_first
        attention_dropout = (
            config.dropout if config.attention_dropout is None else config.attention_dropout
        )
        self.attention = RelativeMultiHeadAttention(
            config.dim,
            config.heads,
            normalizer=config.normalizer,
            alpha=config.alpha,
            causal=True,
            dropout=attention_dropout,
            bias=config.bias,
        )
        self.attention_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.ffn = FeedForward(config.dim, config.ffn_dim, config.activation, config.dropout)
        self.ffn_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, memory: Tensor | None = None, output_attentions: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(batch, n, dim)``, ``memory`` ``(batch, m, dim)`` (this layer's inputs at
        the ``m`` previous positions) -> ``(out (batch, n, dim), weights or None)`` with
        weights ``(batch, heads, n, m + n)``."""
        h, mem = x, memory
        if self.norm_first:
            # LayerNorm acts per position, so normalising the memory separately equals
            # normalising [memory; x].
            h = self.attention_norm(x)
            mem = self.attention_norm(memory) if memory is not None else None
        result = self.attention(h, memory=mem, return_weights=output_attentions)
        out, weights = result if isinstance(result, tuple) else (result, None)
        x = x + self.dropout(out)
        if not self.norm_first:
            x = self.attention_norm(x)
        h = self.ffn_norm(x) if self.norm_first else x
        x = x + self.dropout(self.ffn(h))
        if not self.norm_first:
            x = self.ffn_norm(x)
        return x, weights


class TransformerXLModel(nn.Module):
    """The Transformer-XL stack: embedding, layers with memory, final norm (pre-LN only).

    Parameters: ``embedding`` (:class:`TokenEmbedding`, or :class:`AdaptiveEmbedding` with
    ``cutoffs``; scaled by ``sqrt(dim)``),
    ``layers.{i}.*`` (:class:`TransformerXLLayer`), ``norm`` (pre-LN only).
    """

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerXLConfig):
            raise TypeError(f"`config` must be a TransformerXLConfig, got {type(config).__name__}")
        self.config = config
        self.embedding: TokenEmbedding | AdaptiveEmbedding
        if config.cutoffs is not None:
            self.embedding = AdaptiveEmbedding(
                config.vocab_size, config.dim, config.cutoffs, config.embed_dim, config.div_val
            )
        else:
            self.embedding = TokenEmbedding(config.vocab_size, config.dim, scale=True)
            nn.init.normal_(self.embedding.weight, std=0.02)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerXLLayer(config) for _ in range(config.depth))
        self.norm = (
            nn.LayerNorm(config.dim, eps=config.layer_norm_eps) if config.norm_first else None
        )

    def forward(
        self,
        input_ids: Tensor,
        mems: list[Tensor] | None = None,
        output_attentions: bool = False,
    ) -> TransformerXLOutput:
        """Run one segment.

        Args:
            input_ids: ``(batch, n)`` token ids.
            mems: the previous segment's :attr:`TransformerXLOutput.mems` (one
                ``(batch, m, dim)`` tensor per layer), or None at the start of a sequence.
            output_attentions: collect every layer's attention weights.

        Returns:
            a :class:`TransformerXLOutput`, whose ``mems`` feed the next segment.
        """
        check_rank(input_ids, 2, "input_ids", "(batch, n)")
        self._check_mems(mems, input_ids.shape[0])
        x = self.dropout(self.embedding(input_ids))
        inputs: list[Tensor] = []
        attentions: list[Tensor] | None = [] if output_attentions else None
        for i, layer in enumerate(self.layers):
            inputs.append(x)
            x, weights = layer(x, mems[i] if mems is not None else None, output_attentions)
            if attentions is not None and weights is not None:
                attentions.append(weights)
        if self.norm is not None:
            x = self.norm(x)
        return TransformerXLOutput(
            last_hidden_state=x,
            mems=self._update_mems(mems, inputs),
            attentions=tuple(attentions) if attentions is not None else None,
        )

    def forward_segments(
        self, input_ids: Tensor, segment_len: int, mems: list[Tensor] | None = None
    ) -> TransformerXLOutput:
        """Evaluate a long sequence segment by segment, carrying the memory across.

        Args:
            input_ids: ``(batch, n)``; split into segments of ``segment_len`` (the last
                may be shorter).
            segment_len: positions per segment.
            mems: memory to start from (None: the start of a sequence).

        Returns:
            a :class:`TransformerXLOutput` with the hidden states of all ``n`` positions and
            the memory after the last segment.
        """
        check_rank(input_ids, 2, "input_ids", "(batch, n)")
        check_int(segment_len, "segment_len")
        states = []
        for start in range(0, input_ids.shape[1], segment_len):
            out = self(input_ids[:, start : start + segment_len], mems=mems)
            states.append(out.last_hidden_state)
            mems = out.mems
        return TransformerXLOutput(last_hidden_state=torch.cat(states, dim=1), mems=mems)

    def _update_mems(self, mems: list[Tensor] | None, inputs: list[Tensor]) -> list[Tensor] | None:
        """Each layer's last ``mem_len`` inputs over ``[memory; segment]``, detached."""
        mem_len = self.config.mem_len
        if mem_len == 0:
            return None
        new = []
        with torch.no_grad():
            for i, x in enumerate(inputs):
                joined = x if mems is None else torch.cat([mems[i], x], dim=1)
                new.append(joined[:, -mem_len:].detach())
        return new

    def _check_mems(self, mems: list[Tensor] | None, batch: int) -> None:
        if mems is None:
            return
        if not isinstance(mems, (list, tuple)):
            raise TypeError(f"`mems` must be a list of tensors, got {type(mems).__name__}")
        if len(mems) != len(self.layers):
            raise ValueError(
                f"`mems` must hold one tensor per layer ({len(self.layers)}), got {len(mems)}"
            )
        dtype = next(self.embedding.parameters()).dtype
        for i, mem in enumerate(mems):
            check_tensor(mem, f"mems[{i}]")
            check_rank(mem, 3, f"mems[{i}]", "(batch, m, dim)")
            check_size(mem, 0, batch, f"mems[{i}]", "the batch size of `input_ids`")
            check_size(mem, -1, self.config.dim, f"mems[{i}]", "dim")
            if mem.dtype != dtype:
                raise TypeError(f"`mems[{i}]` must have the model's dtype {dtype}, got {mem.dtype}")


class TransformerXLLMHeadModel(nn.Module):
    """Transformer-XL with a softmax output layer over the vocabulary.

    Parameters: ``transformer.*`` (:class:`TransformerXLModel`) and ``lm_head``: a linear
    layer whose weight is ``transformer.embedding.weight`` when ``tie_weights``, or with
    ``cutoffs`` an :class:`AdaptiveSoftmax` tied to the adaptive embedding by
    ``tie_weights`` and ``tie_projs``.
    """

    def __init__(self, config: TransformerXLConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = TransformerXLModel(config)
        self.lm_head: nn.Linear | AdaptiveSoftmax
        embedding = self.transformer.embedding
        if isinstance(embedding, AdaptiveEmbedding):
            assert config.cutoffs is not None
            self.lm_head = AdaptiveSoftmax(
                config.vocab_size, config.dim, config.cutoffs, config.embed_dim, config.div_val
            )
            self.lm_head.tie_to(embedding, config.tie_weights, config.tie_projs)
        else:
            self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
            if config.tie_weights:
                self.lm_head.weight = embedding.weight

    def forward(
        self,
        input_ids: Tensor,
        mems: list[Tensor] | None = None,
        labels: Tensor | None = None,
        output_attentions: bool = False,
    ) -> TransformerXLLMOutput:
        """Run one segment and predict the next tokens.

        Args:
            input_ids: ``(batch, n)``.
            mems: as in :meth:`TransformerXLModel.forward`.
            labels: ``(batch, n)`` target ids (usually ``input_ids``), -100 = ignored; the
                loss compares ``logits[:, t]`` with ``labels[:, t + 1]`` (shifted inside,
                as the library's GPT-2 does).
            output_attentions: also return every layer's weights.
        """
        out = self.transformer(input_ids, mems=mems, output_attentions=output_attentions)
        hidden = out.last_hidden_state
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"`labels` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                f"got {tuple(labels.shape)}"
            )
        logits, loss = None, None
        if isinstance(self.lm_head, AdaptiveSoftmax):
            if labels is None:
                logits = self.lm_head.log_prob(hidden)
            else:
                loss = self.lm_head(hidden[:, :-1], labels[:, 1:], reduction="mean")
        else:
            logits = project(hidden, self.lm_head)
            if labels is not None:
                loss = F.cross_entropy(
                    logits[:, :-1].float().flatten(0, 1),
                    labels[:, 1:].flatten(),
                    ignore_index=-100,
                )
        return TransformerXLLMOutput(
            logits=logits, loss=loss, mems=out.mems, attentions=out.attentions
        )

    def forward_segments(
        self, input_ids: Tensor, segment_len: int, mems: list[Tensor] | None = None
    ) -> TransformerXLLMOutput:
        """Logits ``(batch, n, vocab_size)`` of a long sequence evaluated segment by segment
        (see :meth:`TransformerXLModel.forward_segments`; log-probabilities with ``cutoffs``),
        and the final memory."""
        out = self.transformer.forward_segments(input_ids, segment_len, mems)
        hidden = out.last_hidden_state
        head = self.lm_head
        logits = head.log_prob(hidden) if isinstance(head, AdaptiveSoftmax) else head(hidden)
        return TransformerXLLMOutput(logits=logits, mems=out.mems)


__all__ = [
    "TransformerXLConfig",
    "TransformerXLLMHeadModel",
    "TransformerXLLMOutput",
    "TransformerXLLayer",
    "TransformerXLModel",
    "TransformerXLOutput",
]
