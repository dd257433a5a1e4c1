"""The Transformer of Vaswani et al. 2017, "Attention Is All You Need", read top to bottom.

Encoder-decoder: ``src`` ids -> embeddings (scaled by ``sqrt(dim)``) + sinusoidal positions
-> :class:`~attnzoo.transformers_zoo.stacks.TransformerEncoder`; ``tgt_in`` ids (BOS then
the target shifted right) -> the same kind of embeddings ->
:class:`~attnzoo.transformers_zoo.stacks.TransformerDecoder` (causal self-attention,
cross-attention to the encoder output) -> a linear map to the target vocabulary, tied to
the target embedding by default (Section 3.4: the two embeddings and the pre-softmax
projection may share one matrix; ``share_embeddings`` shares the source and target
embeddings too, which needs one vocabulary).

Both stacks are configured by :class:`~attnzoo.transformers_zoo.stacks.StackConfig`, so any
layer can use another attention normaliser (e.g. entmax with a learned alpha per head: the
adaptively sparse transformer of Correia et al. 2019, see :func:`sparse_transformer_config`),
sliding-window attention (encoder), or a product-key memory.

Decoding (:meth:`Transformer.greedy_decode`, :meth:`Transformer.beam_search`) goes through
the model-agnostic searches of :mod:`attnzoo.transformers_zoo.generation`. The search state
is the encoder output, its mask and one :class:`~attnzoo.transformers_zoo.layers.LayerCache`
per decoder layer, so a step embeds one token and attends over cached keys and values: it
costs O(n) in the decoded length, not O(n^2). Decode in eval mode (``model.eval()``):
the searches do not switch dropout off themselves.

:func:`run_transformer_demo` trains a small model to reverse sequences;
:func:`run_sparse_transformer_demo` trains the adaptively sparse variant and reports the
learned alphas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..attention import projection
from ..attention.validation import check_bool_mask, check_int, check_rank
from . import generation
from .embeddings import Embeddings
from .layers import LayerCache
from .stacks import LayerConfig, StackConfig, TransformerDecoder, TransformerEncoder, learned_alphas
from .tasks.sequences import (
    BOS,
    EOS,
    PAD,
    SequenceBatch,
    copy_task,
    exact_match,
    reverse_task,
    sequence_loss,
)
from .training import TrainConfig, fit


@dataclass
class TransformerConfig:
    """Configuration of :class:`Transformer`; the defaults are the base model of the paper.

    Attributes:
        src_vocab_size: source vocabulary size.
        tgt_vocab_size: target vocabulary size.
        encoder: the encoder stack (dim 512, 8 heads, 6 layers, FFN 2048, dropout 0.1).
        decoder: the decoder stack (same defaults); its ``dim`` may differ from the
            encoder's unless embeddings are shared.
        max_len: the most positions a sequence (source, or target incl. BOS) may have.
        share_embeddings: one embedding for source and target (needs equal vocabularies
            and widths).
        tie_output: the output projection reuses the target embedding matrix.
        embedding_dropout: dropout on the summed embeddings; default the encoder's dropout.
        pad_id, bos_id, eos_id: special tokens (those of
            :mod:`attnzoo.transformers_zoo.tasks` by default).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    encoder: StackConfig = field(default_factory=lambda: StackConfig(ffn_dim=2048))
    decoder: StackConfig = field(default_factory=lambda: StackConfig(ffn_dim=2048))
    max_len: int = 512
    share_embeddings: bool = False
    tie_output: bool = True
    embedding_dropout: float | None = None
    pad_id: int = PAD
    bos_id: int = BOS
    eos_id: int = EOS

    def __post_init__(self) -> None:
        check_int(self.src_vocab_size, "src_vocab_size")
        check_int(self.tgt_vocab_size, "tgt_vocab_size")
        check_int(self.max_len, "max_len")
        for name in ("encoder", "decoder"):
            if not isinstance(getattr(self, name), StackConfig):
                raise TypeError(
                    f"`{name}` must be a StackConfig, got {type(getattr(self, name)).__name__}"
                )
        if self.share_embeddings:
            if self.src_vocab_size != self.tgt_vocab_size:
                raise ValueError(
                    "`share_embeddings=True` needs src_vocab_size == tgt_vocab_size, got "
                    f"{self.src_vocab_size} and {self.tgt_vocab_size}"
                )
            if self.encoder.dim != self.decoder.dim:
                raise ValueError(
                    "`share_embeddings=True` needs encoder.dim == decoder.dim, got "
                    f"{self.encoder.dim} and {self.decoder.dim}"
                )
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            check_int(value, name, minimum=0)
            if value >= self.tgt_vocab_size:
                raise ValueError(f"`{name}` must be < tgt_vocab_size = {self.tgt_vocab_size}")


class Transformer(nn.Module):
    """Encoder-decoder Transformer (Vaswani et al. 2017).

    Parameters: ``src_embeddings`` and ``tgt_embeddings`` (:class:`Embeddings`; the same
    module when shared), ``encoder``, ``decoder`` and, unless tied, ``lm_head``
    (Linear ``decoder.dim -> tgt_vocab_size``, no bias). Token embeddings start as
    ``N(0, dim ** -0.5)``, so that after the ``sqrt(dim)`` scaling they have unit variance,
    like the sinusoidal positions they are added to, and tied logits start small.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"`config` must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        dropout = (
            config.encoder.dropout if config.embedding_dropout is None else config.embedding_dropout
        )

        def embeddings(vocab_size: int, dim: int) -> Embeddings:
            module = Embeddings(
                vocab_size,
                dim,
                max_len=config.max_len,
                positions="sinusoidal",
                layer_norm=False,
                dropout=dropout,
                scale=True,
            )
            nn.init.normal_(module.word_embeddings.weight, std=dim**-0.5)
            return module

        self.src_embeddings = embeddings(config.src_vocab_size, config.encoder.dim)
        self.tgt_embeddings = (
            self.src_embeddings
            if config.share_embeddings
            else embeddings(config.tgt_vocab_size, config.decoder.dim)
        )
        self.encoder = TransformerEncoder(config.encoder)
        self.decoder = TransformerDecoder(config.decoder, context_dim=config.encoder.dim)
        self.lm_head = (
            None
            if config.tie_output
            else nn.Linear(config.decoder.dim, config.tgt_vocab_size, bias=False)
        )

    # -- the model ------------------------------------------------------------------------

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Encode ``src`` ``(batch, n_src)`` ids into ``(batch, n_src, encoder.dim)``.

        ``src_mask`` ``(batch, n_src)`` is boolean, True = real token.
        """
        src_mask = _check_padding_mask(src_mask, src, "src_mask", "src")
        return self.encoder(self.src_embeddings(src, name="src"), mask=src_mask).last_hidden_state

    def project(self, hidden: Tensor) -> Tensor:
        """Decoder states ``(..., decoder.dim)`` -> logits ``(..., tgt_vocab_size)``."""
        if self.lm_head is not None:
            return projection.project(hidden, self.lm_head)
        return projection.linear(hidden, self.tgt_embeddings.word_embeddings.weight)

    def forward(
        self,
        src: Tensor,
        tgt_in: Tensor,
        src_mask: Tensor | None = None,
        tgt_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits.

        Args:
            src: source ids ``(batch, n_src)``.
            tgt_in: decoder input ids ``(batch, n_tgt)``: BOS then the target shifted right
                (:meth:`~attnzoo.transformers_zoo.tasks.SequenceBatch.decoder_input`).
            src_mask: ``(batch, n_src)`` boolean, True = real source token.
            tgt_mask: ``(batch, n_tgt)`` boolean, True = real target position; the causal
                mask is added by the decoder.

        Returns:
            logits ``(batch, n_tgt, tgt_vocab_size)``; position ``t`` predicts target token
            ``t`` from ``tgt_in[:, : t + 1]``.
        """
        memory = self.encode(src, src_mask)
        tgt_mask = _check_padding_mask(tgt_mask, tgt_in, "tgt_mask", "tgt_in")
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(
                f"`tgt_in` must have the batch size of `src` ({src.shape[0]}), "
                f"got shape {tuple(tgt_in.shape)}"
            )
        x = self.tgt_embeddings(tgt_in, name="tgt_in")
        out = self.decoder(x, memory, mask=tgt_mask, context_mask=src_mask)
        return self.project(out.last_hidden_state)

    # -- decoding -------------------------------------------------------------------------

    def decoding_state(self, src: Tensor, src_mask: Tensor | None = None) -> dict[str, Any]:
        """The initial search state: encoder output, source mask and empty layer caches."""
        return {
            "memory": self.encode(src, src_mask),
            "memory_mask": src_mask,
            "caches": self.decoder.new_cache(),
        }

    def decode_step(self, prev_tokens: Tensor, state: dict[str, Any]) -> tuple[Tensor, Any]:
        """One decoding step, the ``step`` of :mod:`attnzoo.transformers_zoo.generation`.

        Args:
            prev_tokens: ``(N,)`` the last token of every running sequence.
            state: from :meth:`decoding_state` (or reordered by the search); its caches
                are extended in place.

        Returns:
            ``(log_probs (N, tgt_vocab_size), state)``.
        """
        caches: list[LayerCache] = state["caches"]
        offset = len(caches[0].self_attention)  # positions decoded so far
        x = self.tgt_embeddings(prev_tokens[:, None], offset=offset, name="prev_tokens")
        out = self.decoder(
            x, state["memory"], context_mask=state["memory_mask"], cache=caches
        ).last_hidden_state
        logits = self.project(out[:, -1])
        return torch.log_softmax(logits.float(), dim=-1), state

    def greedy_decode(
        self, src: Tensor, src_mask: Tensor | None = None, max_len: int | None = None
    ) -> Tensor:
        """Greedy decoding.

        Args:
            src: ``(batch, n_src)`` ids; ``src_mask`` ``(batch, n_src)`` True = real token.
            max_len: most tokens generated (EOS included); default ``config.max_len - 1``.

        Returns:
            ``(batch, n)`` ids without BOS, EOS included, PAD after it.
        """
        state = self.decoding_state(src, src_mask)
        return generation.greedy_search(
            self.decode_step,
            state,
            src.shape[0],
            self.config.bos_id,
            self.config.eos_id,
            self._max_decode_len(max_len),
            pad=self.config.pad_id,
        )

    def beam_search(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        max_len: int | None = None,
        beam_width: int = 4,
        length_penalty: float = 0.6,
    ) -> tuple[Tensor, Tensor]:
        """Beam search (GNMT length penalty, see :func:`generation.beam_search`).

        The paper decodes with beam 4 and length penalty 0.6, the defaults here.

        Returns:
            ``tokens`` ``(batch, n)`` (as :meth:`greedy_decode`) and ``scores``
            ``(batch,)``, the length-penalised log-probabilities.
        """
        state = self.decoding_state(src, src_mask)
        return generation.beam_search(
            self.decode_step,
            state,
            src.shape[0],
            self.config.bos_id,
            self.config.eos_id,
            self._max_decode_len(max_len),
            beam_width,
            length_penalty,
            pad=self.config.pad_id,
        )

    def _max_decode_len(self, max_len: int | None) -> int:
        # BOS takes the first position, so at most max_len - 1 tokens can follow it.
        limit = self.config.max_len - 1
        if max_len is None:
            return limit
        check_int(max_len, "max_len")
        if max_len > limit:
            raise ValueError(
                f"`max_len` must be <= config.max_len - 1 = {limit} (BOS takes a position), "
                f"got {max_len}"
            )
        return max_len


def _check_padding_mask(
    mask: Tensor | None, ids: Tensor, name: str, ids_name: str
) -> Tensor | None:
    if mask is None:
        return None
    check_bool_mask(mask, name)
    check_rank(mask, 2, name, "(batch, n)")
    if mask.shape != ids.shape:
        raise ValueError(
            f"`{name}` must have the shape of `{ids_name}` {tuple(ids.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    return mask


# -- training and the demos ---------------------------------------------------------------


def small_transformer_config(
    vocab_size: int, dim: int = 64, heads: int = 4, depth: int = 2, layer: LayerConfig | None = None
) -> TransformerConfig:
    """A small post-LN Transformer for the synthetic tasks (no dropout, shared vocabulary)."""
    stack = StackConfig(
        dim=dim,
        heads=heads,
        depth=depth,
        ffn_dim=2 * dim,
        dropout=0.0,
        layer=layer or LayerConfig(),
    )
    return TransformerConfig(
        src_vocab_size=vocab_size,
        tgt_vocab_size=vocab_size,
        encoder=stack,
        decoder=stack,
        max_len=64,
        share_embeddings=True,
    )


def sparse_transformer_config(vocab_size: int, **kwargs: Any) -> TransformerConfig:
    """:func:`small_transformer_config` with every attention alpha-entmax, one learned alpha
    per head starting at 1.5: the adaptively sparse transformer (Correia et al. 2019)."""
    layer = LayerConfig(normalizer="entmax", alpha=1.5, learn_alpha=True)
    return small_transformer_config(vocab_size, layer=layer, **kwargs)


def train_on_task(
    model: Transformer,
    task: Callable[[int, torch.Generator], SequenceBatch],
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    description: str = "transformer",
) -> list[float]:
    """Train on a seeded task ``task(batch_size, generator) -> SequenceBatch``.

    Returns the per-step losses.
    """
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(m: nn.Module, batch: Any) -> Tensor:
        logits = m(batch.src, batch.decoder_input(), batch.src_mask, batch.tgt_mask)
        return sequence_loss(logits, batch.tgt, batch.tgt_mask)

    config = TrainConfig(
        steps=steps, lr=lr, warmup=min(100, steps // 10), progress=progress, description=description
    )
    return fit(model, loss_fn, lambda step: task(batch_size, generator), config).losses


@torch.no_grad()
def evaluate(model: Transformer, batch: SequenceBatch, beam_width: int | None = None) -> float:
    """Exact-sequence accuracy of greedy decoding (or beam search) on ``batch``."""
    model.eval()
    max_len = batch.tgt.shape[1]
    if beam_width is None:
        predicted = model.greedy_decode(batch.src, batch.src_mask, max_len=max_len)
    else:
        predicted, _ = model.beam_search(
            batch.src, batch.src_mask, max_len=max_len, beam_width=beam_width
        )
    return exact_match(predicted, batch.tgt, batch.tgt_mask)


def train_reverse_transformer(
    steps: int = 1000, progress: bool = True, seed: int = 0
) -> tuple[Transformer, SequenceBatch, list[float]]:
    """Train :func:`small_transformer_config` (width 64, 2 + 2 layers) to reverse sequences
    of 2-10 symbols out of 20 (AdamW, lr 5e-4, batches of 64).

    With 10 symbols, repeated symbols are frequent and a tiny model that aligns by content
    confuses them; 20 symbols keep the task about positions.

    Returns:
        the trained model (eval mode), 256 held-out sequences, and the per-step losses.
    """
    torch.manual_seed(seed)
    n_symbols = 20

    def task(batch_size: int, generator: torch.Generator) -> SequenceBatch:
        return reverse_task(batch_size, 2, 10, n_symbols, generator)

    model = Transformer(small_transformer_config(n_symbols + 3))
    losses = train_on_task(model, task, steps, lr=5e-4, seed=seed, progress=progress)
    return model, task(256, torch.Generator().manual_seed(seed + 1)), losses


def run_transformer_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Train a small Transformer to reverse sequences (:func:`train_reverse_transformer`).

    Returns:
        ``{"loss": final training loss, "greedy_accuracy": ..., "beam_accuracy": ...}``:
        exact-sequence accuracies on 256 held-out sequences (beam width 4).
    """
    model, test, losses = train_reverse_transformer(
        1000 if steps is None else steps, progress, seed
    )
    return {
        "loss": sum(losses[-20:]) / len(losses[-20:]),
        "greedy_accuracy": evaluate(model, test),
        "beam_accuracy": evaluate(model, test, beam_width=4),
    }


def run_sparse_transformer_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Train the adaptively sparse Transformer (Correia et al. 2019) on the copy task.

    Every attention is alpha-entmax with one learned alpha per head, all starting at 1.5;
    the model (width 32, one encoder and one decoder layer) copies sequences of 2-10
    symbols. While it learns, the heads specialise: the cross-attention heads, which learn
    a one-to-one alignment, grow sparser (alpha rises), the self-attention heads denser.

    Returns:
        ``loss`` (final training loss), ``greedy_accuracy`` (exact-sequence, 256 held-out
        sequences), ``alpha_min``/``alpha_max``/``alpha_mean``/``alpha_std`` over all
        heads, ``cross_alpha_min``/``cross_alpha_mean`` over the cross-attention heads and
        ``self_alpha_mean``/``self_alpha_max`` over the self-attention heads.
    """
    steps = 800 if steps is None else steps
    torch.manual_seed(seed)
    n_symbols = 10

    def task(batch_size: int, generator: torch.Generator) -> SequenceBatch:
        return copy_task(batch_size, 2, 10, n_symbols, generator)

    model = Transformer(sparse_transformer_config(n_symbols + 3, dim=32, depth=1))
    losses = train_on_task(
        model, task, steps, lr=2e-3, seed=seed, progress=progress, description="sparse"
    )
    test = task(256, torch.Generator().manual_seed(seed + 1))
    alphas = learned_alphas(model)
    every = torch.cat(list(alphas.values()))
    cross = torch.cat([a for name, a in alphas.items() if "cross" in name])
    self_ = torch.cat([a for name, a in alphas.items() if "cross" not in name])
    return {
        "loss": sum(losses[-20:]) / len(losses[-20:]),
        "greedy_accuracy": evaluate(model, test),
        "alpha_min": float(every.min()),
        "alpha_max": float(every.max()),
        "alpha_mean": float(every.mean()),
        "alpha_std": float(every.std()),
        "cross_alpha_min": float(cross.min()),
        "cross_alpha_mean": float(cross.mean()),
        "self_alpha_mean": float(self_.mean()),
        "self_alpha_max": float(self_.max()),
    }


__all__ = [
    "Transformer",
    "TransformerConfig",
    "evaluate",
    "run_sparse_transformer_demo",
    "run_transformer_demo",
    "small_transformer_config",
    "sparse_transformer_config",
    "train_on_task",
    "train_reverse_transformer",
]
