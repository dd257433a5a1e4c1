"""ELMo (Peters et al. 2018): a character-CNN bidirectional LSTM language model and its
learned scalar mix of layers.

* :class:`CharCNNTokenEncoder`: each word's characters (UTF-8 bytes, between
  begin-of-word and end-of-word markers) are embedded, convolved with filters of several
  widths, max-pooled over the word, passed through highway layers and projected, so any
  word, seen or not, gets a context-free vector.
* :class:`BiLM`: a forward LSTM LM (predicts word ``t + 1`` from words ``<= t``) and a
  backward LSTM LM (predicts word ``t - 1`` from words ``>= t``), each ``num_layers`` deep
  with a residual connection between layers, sharing the token encoder and the softmax.
  The backward LM runs on each sequence reversed within its length, so it sees exactly
  the right context and never the padding.
* :class:`ScalarMix`: ``ELMo = gamma * sum_j softmax(w)_j h_j`` over the ``num_layers + 1``
  layers (the token layer, duplicated for both directions, then each biLSTM layer), and
  :func:`mean_elmo`, the masked mean of it over the tokens: a sentence vector.

:func:`run_elmo_demo` trains a tiny biLM on the grammar corpus of
:mod:`attnzoo.transformers_zoo.tasks.corpus` and reports held-out perplexity before and
after.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attention.validation import (
    check_bool_mask,
    check_int,
    check_positive,
    check_prefix_mask,
    check_probability,
    check_rank,
    check_size,
    check_token_ids,
)
from .tasks.corpus import TOPICS, grammar_corpus, grammar_document
from .ulmfit import BOS, EOS, WordVocabulary

# Character ids: 0 = padding, 1 = begin of word, 2 = end of word, 3 + byte for each byte.
CHAR_PAD, BOW, EOW, CHAR_OFFSET = 0, 1, 2, 3
N_CHARS = CHAR_OFFSET + 256


def char_ids(sentences: Sequence[Sequence[str]], max_chars: int = 16) -> Tensor:
    """Character ids of tokenised sentences: ``(batch, n, max_chars)`` int64.

    Each word is ``[BOW, byte + 3, ..., EOW]``, cut to ``max_chars`` (EOW kept) and padded
    with 0; padding words (past a sentence's end) are all 0.
    """
    check_int(max_chars, "max_chars", minimum=3)
    if not sentences:
        raise ValueError("`sentences` must hold at least one sentence")
    n = max(len(sentence) for sentence in sentences)
    out = torch.zeros(len(sentences), max(n, 1), max_chars, dtype=torch.long)
    for i, sentence in enumerate(sentences):
        for j, word in enumerate(sentence):
            if not isinstance(word, str) or not word:
                raise TypeError(f"`sentences[{i}][{j}]` must be a non-empty str, got {word!r}")
            body = [CHAR_OFFSET + b for b in word.encode("utf-8")][: max_chars - 2]
            row = [BOW, *body, EOW]
            out[i, j, : len(row)] = torch.tensor(row)
    return out


@dataclass
class ELMoConfig:
    """Hyper-parameters of :class:`BiLM` (paper: 2048 filters, 4096 cells, 512 projections;
    the defaults here are CPU-sized).

    Attributes:
        vocab_size: words of the softmax.
        max_chars: characters per word, markers included.
        char_dim: character-embedding width.
        filters: ``(width, channels)`` of each convolution.
        highway_layers: highway layers after the max-pool.
        projection_dim: width of the token vectors and of each LSTM's (projected) output.
        hidden_size: LSTM cell width (projected down to ``projection_dim``).
        num_layers: LSTM layers per direction.
        dropout: dropout on the token vectors and between layers.
    """

    vocab_size: int
    max_chars: int = 16
    char_dim: int = 16
    filters: tuple[tuple[int, int], ...] = ((1, 32), (2, 32), (3, 64), (4, 64))
    highway_layers: int = 2
    projection_dim: int = 64
    hidden_size: int = 128
    num_layers: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_int(self.vocab_size, "vocab_size")
        check_int(self.max_chars, "max_chars", minimum=3)
        check_int(self.char_dim, "char_dim")
        check_int(self.highway_layers, "highway_layers", minimum=0)
        check_int(self.projection_dim, "projection_dim")
        check_int(self.hidden_size, "hidden_size")
        check_int(self.num_layers, "num_layers")
        check_probability(self.dropout, "dropout")
        if not self.filters:
            raise ValueError("`filters` must hold at least one (width, channels) pair")
        for width, channels in self.filters:
            check_int(width, "filters width")
            check_int(channels, "filters channels")
            if width > self.max_chars:
                raise ValueError(f"filter width {width} exceeds `max_chars` = {self.max_chars}")
        if self.hidden_size < self.projection_dim:
            raise ValueError(
                f"`hidden_size` must be >= `projection_dim` ({self.projection_dim}) for the "
                f"LSTM projection, got {self.hidden_size}"
            )


class Highway(nn.Module):
    """``y = g * relu(W x) + (1 - g) * x`` with ``g = sigmoid(W_g x)``: ``(..., d) -> (..., d)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        # A negative gate bias starts each layer close to the identity (carry), as in
        # Srivastava et al. 2015.
        nn.init.constant_(self.gate.bias, -1.0)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.gate(x))
        return gate * F.relu(self.transform(x)) + (1 - gate) * x


class CharCNNTokenEncoder(nn.Module):
    """Context-free token vectors from characters.

    ``forward(chars)``: ``(batch, n, max_chars)`` character ids (:func:`char_ids`) ->
    ``(batch, n, projection_dim)``; padding words (all-zero rows) give zero vectors.
    """

    def __init__(self, config: ELMoConfig) -> None:
        super().__init__()
        self.config = config
        self.char_embedding = nn.Embedding(N_CHARS, config.char_dim, padding_idx=CHAR_PAD)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(config.char_dim, channels, width) for width, channels in config.filters
        )
        width = sum(channels for _, channels in config.filters)
        self.highways = nn.ModuleList(Highway(width) for _ in range(config.highway_layers))
        self.projection = nn.Linear(width, config.projection_dim)

    def forward(self, chars: Tensor) -> Tensor:
        check_rank(chars, 3, "chars", "(batch, n, max_chars)")
        check_size(chars, 2, self.config.max_chars, "chars", "max_chars")
        check_token_ids(chars, N_CHARS, "chars")
        batch, n, max_chars = chars.shape
        x = self.char_embedding(chars.reshape(batch * n, max_chars)).transpose(1, 2)
        pooled = [torch.relu(conv(x)).amax(dim=-1) for conv in self.convolutions]
        h = torch.cat(pooled, dim=-1)
        for highway in self.highways:
            h = highway(h)
        out = self.projection(h).reshape(batch, n, -1)
        real = (chars != CHAR_PAD).any(dim=-1, keepdim=True)
        return out * real


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse each sequence within its length, padding left in place.

    ``x`` ``(batch, n, ...)``, ``lengths`` ``(batch,)``; applying it twice is the identity.
    """
    n = x.shape[1]
    positions = torch.arange(n, device=x.device).unsqueeze(0)
    lengths = lengths.to(x.device).unsqueeze(1)
    index = torch.where(positions < lengths, lengths - 1 - positions, positions)
    index = index.reshape(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


def _run_lstm(lstm: nn.Module, x: Tensor, lengths: Tensor) -> Tensor:
    packed = nn.utils.rnn.pack_padded_sequence(
        x, lengths.cpu(), batch_first=True, enforce_sorted=False
    )
    out, _ = lstm(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


@dataclass
class BiLMOutput:
    """What :class:`BiLM` returns.

    Attributes:
        layers: ``num_layers + 1`` tensors ``(batch, n, 2 * projection_dim)``: the token
            vectors ``[x; x]``, then each layer's ``[forward; backward]`` states; zero on
            padding.
        forward_logits: ``(batch, n, vocab)``: position ``t`` scores word ``t + 1``.
        backward_logits: ``(batch, n, vocab)``: position ``t`` scores word ``t - 1``.
        loss: mean of the forward and backward LM cross-entropies, when word ids were given.
    """

    layers: tuple[Tensor, ...]
    forward_logits: Tensor
    backward_logits: Tensor
    loss: Tensor | None = None


class BiLM(nn.Module):
    """ELMo's bidirectional language model.

    Args:
        config: an :class:`ELMoConfig`.

    Parameters: ``token_encoder.*``, ``forward_layers.{i}``, ``backward_layers.{i}`` (LSTMs
    with ``proj_size = projection_dim``), ``softmax`` (shared by both directions).
    """

    def __init__(self, config: ELMoConfig) -> None:
        super().__init__()
        if not isinstance(config, ELMoConfig):
            raise TypeError(f"`config` must be an ELMoConfig, got {type(config).__name__}")
        self.config = config
        self.token_encoder = CharCNNTokenEncoder(config)

        def stack() -> nn.ModuleList:
            return nn.ModuleList(
                nn.LSTM(
                    config.projection_dim,
                    config.hidden_size,
                    batch_first=True,
                    proj_size=config.projection_dim
                    if config.hidden_size > config.projection_dim
                    else 0,
                )
                for _ in range(config.num_layers)
            )

        self.forward_layers, self.backward_layers = stack(), stack()
        self.dropout = nn.Dropout(config.dropout)
        self.softmax = nn.Linear(config.projection_dim, config.vocab_size)

    def _direction(self, layers: nn.ModuleList, x: Tensor, lengths: Tensor) -> list[Tensor]:
        outputs, h = [], x
        for i, lstm in enumerate(layers):
            out = _run_lstm(lstm, self.dropout(h), lengths)
            # The residual between LSTM layers of the paper (not around the first).
            h = out + h if i > 0 else out
            outputs.append(h)
        return outputs

    def forward(
        self, chars: Tensor, mask: Tensor | None = None, word_ids: Tensor | None = None
    ) -> BiLMOutput:
        """Run both LMs.

        Args:
            chars: ``(batch, n, max_chars)`` character ids (:func:`char_ids`).
            mask: ``(batch, n)`` bool prefix mask, True = real word (>= 1 per row); None =
                no padding.
            word_ids: ``(batch, n)`` target word ids in ``[0, vocab_size)``; with them the
                LM loss is computed.
        """
        check_rank(chars, 3, "chars", "(batch, n, max_chars)")
        batch, n = chars.shape[:2]
        if mask is None:
            mask = torch.ones(batch, n, dtype=torch.bool, device=chars.device)
        check_bool_mask(mask, "mask")
        if mask.shape != (batch, n):
            raise ValueError(f"`mask` must have shape {(batch, n)}, got {tuple(mask.shape)}")
        lengths = check_prefix_mask(mask, "mask")
        if bool((lengths == 0).any()):
            raise ValueError("`mask` must keep at least one real word per row")
        tokens = self.token_encoder(chars)
        forward_states = self._direction(self.forward_layers, tokens, lengths)
        backward_states = [
            reverse_padded(h, lengths)
            for h in self._direction(self.backward_layers, reverse_padded(tokens, lengths), lengths)
        ]
        real = mask.unsqueeze(-1)
        layers = [torch.cat([tokens, tokens], dim=-1) * real]
        layers += [
            torch.cat([f, b], dim=-1) * real
            for f, b in zip(forward_states, backward_states, strict=True)
        ]
        forward_logits = self.softmax(self.dropout(forward_states[-1]))
        backward_logits = self.softmax(self.dropout(backward_states[-1]))
        loss = None
        if word_ids is not None:
            check_rank(word_ids, 2, "word_ids", "(batch, n)")
            if word_ids.shape != mask.shape:
                raise ValueError(
                    f"`word_ids` must have shape {tuple(mask.shape)}, got {tuple(word_ids.shape)}"
                )
            check_token_ids(word_ids, self.config.vocab_size, "word_ids")
            loss = bilm_loss(forward_logits, backward_logits, word_ids, mask)
        return BiLMOutput(tuple(layers), forward_logits, backward_logits, loss)


def bilm_loss(
    forward_logits: Tensor, backward_logits: Tensor, word_ids: Tensor, mask: Tensor
) -> Tensor:
    """Mean of the forward (``t -> t + 1``) and backward (``t -> t - 1``) cross-entropies
    over real targets. Logits ``(batch, n, vocab)``, ``word_ids`` and ``mask`` ``(batch, n)``."""
    vocab = forward_logits.shape[-1]
    pair = mask[:, 1:] & mask[:, :-1]
    fwd = F.cross_entropy(forward_logits[:, :-1][pair].reshape(-1, vocab), word_ids[:, 1:][pair])
    bwd = F.cross_entropy(backward_logits[:, 1:][pair].reshape(-1, vocab), word_ids[:, :-1][pair])
    return (fwd + bwd) / 2


class ScalarMix(nn.Module):
    """ELMo's task-specific mix: ``gamma * sum_j softmax(w)_j * h_j``.

    Args:
        num_layers: how many layers are mixed.

    ``forward(layers)``: ``num_layers`` tensors of one shape ``(..., dim)`` -> ``(..., dim)``.
    Parameters ``weights`` ``(num_layers,)`` (zeros: an even mix at start) and ``gamma``.
    """

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        check_int(num_layers, "num_layers")
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        if len(layers) != len(self.weights):
            raise ValueError(f"`layers` must hold {len(self.weights)} tensors, got {len(layers)}")
        shape = layers[0].shape
        for i, layer in enumerate(layers):
            if layer.shape != shape:
                raise ValueError(
                    f"`layers[{i}]` must have the shape of `layers[0]` {tuple(shape)}, "
                    f"got {tuple(layer.shape)}"
                )
        s = torch.softmax(self.weights, dim=0)
        return self.gamma * torch.einsum("l,l...->...", s, torch.stack(list(layers)))


def mean_elmo(mixed: Tensor, mask: Tensor) -> Tensor:
    """Sentence vectors: the mean of ``mixed`` ``(batch, n, dim)`` over real tokens
    (``mask`` ``(batch, n)`` bool, >= 1 per row) -> ``(batch, dim)``."""
    check_rank(mixed, 3, "mixed", "(batch, n, dim)")
    check_bool_mask(mask, "mask")
    if mask.shape != mixed.shape[:2]:
        raise ValueError(
            f"`mask` must have shape {tuple(mixed.shape[:2])}, got {tuple(mask.shape)}"
        )
    counts = mask.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError("`mask` must keep at least one real token per row")
    return (mixed * mask.unsqueeze(-1)).sum(dim=1) / counts.to(mixed.dtype)


@dataclass
class ELMoBatch:
    """A tokenised batch: ``chars`` ``(batch, n, max_chars)``, ``word_ids`` and ``mask``
    ``(batch, n)`` (sentences wrapped in ``<bos>`` / ``<eos>``)."""

    chars: Tensor
    word_ids: Tensor
    mask: Tensor


def elmo_batch(sentences: Sequence[str], vocab: WordVocabulary, max_chars: int = 16) -> ELMoBatch:
    """Tokenise whitespace-separated ``sentences`` for :class:`BiLM`."""
    words = [[BOS, *sentence.split(), EOS] for sentence in sentences]
    word_ids, mask = vocab.batch(list(sentences))
    return ELMoBatch(char_ids(words, max_chars), word_ids, mask)


def bilm_perplexity(model: BiLM, batch: ELMoBatch) -> float:
    """``exp`` of the mean forward/backward cross-entropy on ``batch`` (eval mode)."""
    model.eval()
    with torch.no_grad():
        loss = model(batch.chars, batch.mask, batch.word_ids).loss
    assert loss is not None
    return math.exp(float(loss))


def train_bilm(
    model: BiLM,
    vocab: WordVocabulary,
    sentences: Sequence[str],
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    progress: bool = False,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` on random batches of ``sentences`` with Adam; per-step losses."""
    check_int(steps, "steps")
    check_positive(lr, "lr")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    model.train()
    for step in tqdm(range(steps), desc="biLM", disable=not progress):
        rng = random.Random(seed * 1_000_003 + step)
        batch = elmo_batch(
            rng.sample(list(sentences), min(batch_size, len(sentences))),
            vocab,
            model.config.max_chars,
        )
        loss = model(batch.chars, batch.mask, batch.word_ids).loss
        assert loss is not None
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def run_elmo_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Train a tiny character-CNN biLM on the grammar corpus; report held-out perplexity.

    Args:
        steps: optimiser steps (default 300, batches of 32 sentences).
        progress: show a tqdm bar.
        seed: seed of the corpus, the initialisation and the batches.

    Returns:
        ``perplexity_initial`` / ``perplexity_final`` (held-out sentences),
        ``unigram_perplexity`` (the training-set word frequencies, a context-free baseline),
        ``mean_elmo_topic_accuracy``: nearest-centroid accuracy of the topic of held-out
        sentences from their mean-ELMo vectors (even scalar mix), and ``chance_accuracy``.
        The topic probe is descriptive, not a claim: the untrained character CNN already
        separates topics by their words (about 0.4), and LM training, which rewards
        syntax here, does not raise it (about 0.3 after 100-300 steps).
    """
    steps = 300 if steps is None else steps
    check_positive(steps, "steps")
    torch.manual_seed(seed)
    # Held-out sentences with their document's topic, for the mean-ELMo probe.
    rng = random.Random(seed + 1)
    topics = list(TOPICS)
    test, test_labels = [], []
    for _ in range(200):
        topic = rng.choice(topics)
        for sentence in grammar_document(topic, 3, rng):
            test.append(sentence)
            test_labels.append(topics.index(topic))
    train = [s for document in grammar_corpus(300, seed=seed) for s in document]
    vocab = WordVocabulary(train)
    model = BiLM(ELMoConfig(len(vocab)))
    test_batch = elmo_batch(test, vocab)
    metrics = {"perplexity_initial": bilm_perplexity(model, test_batch)}
    train_bilm(model, vocab, train, steps, progress=progress, seed=seed)
    metrics["perplexity_final"] = bilm_perplexity(model, test_batch)
    ids, mask = vocab.batch(train)
    counts = torch.bincount(ids[:, 1:][mask[:, 1:]], minlength=len(vocab)).double() + 1
    log_p = (counts / counts.sum()).log()
    test_ids = test_batch.word_ids[:, 1:][test_batch.mask[:, 1:]]
    metrics["unigram_perplexity"] = math.exp(float(-log_p[test_ids].mean()))
    with torch.no_grad():
        out = model(test_batch.chars, test_batch.mask)
        vectors = mean_elmo(ScalarMix(len(out.layers))(out.layers), test_batch.mask)
    labels = torch.tensor(test_labels)
    half = len(test) // 2
    centroids = torch.stack(
        [vectors[:half][labels[:half] == k].mean(0) for k in range(len(topics))]
    )
    predicted = torch.cdist(vectors[half:], centroids).argmin(-1)
    metrics["mean_elmo_topic_accuracy"] = float((predicted == labels[half:]).float().mean())
    metrics["chance_accuracy"] = 1 / len(topics)
    return metrics


__all__ = [
    "BOW",
    "CHAR_PAD",
    "EOW",
    "N_CHARS",
    "BiLM",
    "BiLMOutput",
    "CharCNNTokenEncoder",
    "ELMoBatch",
    "ELMoConfig",
    "Highway",
    "ScalarMix",
    "bilm_loss",
    "bilm_perplexity",
    "char_ids",
    "elmo_batch",
    "mean_elmo",
    "reverse_padded",
    "run_elmo_demo",
    "train_bilm",
]
