"""ULMFiT (Howard & Ruder 2018): an AWD-LSTM language model fine-tuned into a classifier.

The AWD-LSTM (Merity et al. 2018) regularises a stack of LSTMs four ways:

* **embedding dropout**: whole words are dropped from the embedding matrix (a row of
  zeros, the kept rows scaled by ``1 / (1 - p)``), so a word is missing everywhere in the
  batch rather than at one position;
* **locked (variational) dropout**: one dropout mask per sequence, the same at every time
  step, on the embeddings, between the layers and on the last layer's output;
* **weight drop**: DropConnect on each LSTM's hidden-to-hidden matrix ``W_hh``, one mask per
  forward pass, so the recurrence itself is regularised while the fused LSTM kernel runs;
* **tied weights**: the softmax reuses the embedding matrix (the last LSTM's width is the
  embedding width).

ULMFiT trains it in three stages: a general-domain LM, the LM fine-tuned on the target
texts with discriminative rates and slanted triangular learning rates, and a classifier
on the fine-tuned encoder with **concat pooling** ``[h_T, maxpool(H), meanpool(H)]`` and
gradual unfreezing (the schedules live in :mod:`attnzoo.transformers_zoo.schedules` and
work with any model). Padding never reaches a result: the LSTMs run on packed sequences,
and the pooling reads real tokens only.

The package ships the data of :func:`run_ulmfit_demo`: ``data/ulmfit_corpus.txt`` (800
general-domain sentences about towns, places, food and trips, generated from templates for
this library) and ``data/ulmfit_reviews.tsv`` (700 short reviews labelled
``positive``/``negative``, with negations and "but" clauses, same vocabulary).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from tqdm.auto import tqdm

from ..attention.validation import (
    check_bool_mask,
    check_int,
    check_positive,
    check_prefix_mask,
    check_probability,
    check_rank,
    check_token_ids,
)
from .schedules import GradualUnfreezing, SlantedTriangularLR, discriminative_param_groups

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"


class WordVocabulary:
    """A whitespace word vocabulary with ``<pad> <unk> <bos> <eos>`` at ids 0..3.

    Args:
        texts: the texts to count words in.
        min_count: words seen fewer times map to ``<unk>``.
        max_size: keep at most this many words (the most frequent), specials included.
    """

    specials = (PAD, UNK, BOS, EOS)

    def __init__(
        self, texts: Iterable[str], min_count: int = 1, max_size: int | None = None
    ) -> None:
        check_int(min_count, "min_count")
        counts = Counter(word for text in texts for word in text.split())
        words = [
            w for w, c in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])) if c >= min_count
        ]
        words = [w for w in words if w not in self.specials]
        if max_size is not None:
            check_int(max_size, "max_size", minimum=len(self.specials) + 1)
            words = words[: max_size - len(self.specials)]
        self.itos: list[str] = [*self.specials, *words]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @property
    def pad_id(self) -> int:
        return self.stoi[PAD]

    def encode(self, text: str, bos: bool = True, eos: bool = True) -> list[int]:
        """Word ids of ``text``, optionally wrapped in ``<bos>``/``<eos>``."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str, got {type(text).__name__}")
        unk = self.stoi[UNK]
        ids = [self.stoi.get(word, unk) for word in text.split()]
        return [self.stoi[BOS]] * bos + ids + [self.stoi[EOS]] * eos

    def batch(
        self, texts: Sequence[str], bos: bool = True, eos: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Pad ``texts`` into ``input_ids`` ``(batch, n)`` and a prefix mask ``(batch, n)``."""
        rows = [self.encode(text, bos, eos) for text in texts]
        if not rows:
            raise ValueError("`texts` must hold at least one text")
        n = max(len(row) for row in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        lengths = torch.tensor([len(row) for row in rows])
        return ids, torch.arange(n) < lengths[:, None]


@dataclass
class AWDLSTMConfig:
    """Hyper-parameters of the AWD-LSTM (defaults: fastai's ULMFiT language model).

    Attributes:
        vocab_size: number of word ids.
        embed_dim: embedding width (also the last LSTM's width, for tied weights).
        hidden_size: width of the inner LSTMs.
        num_layers: number of stacked LSTMs (>= 1).
        pad_token_id: the padding id (its embedding row stays zero).
        embed_dropout: probability of dropping a whole word from the embedding matrix.
        input_dropout: locked dropout on the embeddings.
        hidden_dropout: locked dropout between the LSTMs.
        weight_dropout: DropConnect on each LSTM's hidden-to-hidden weights.
        output_dropout: locked dropout on the last LSTM's output (before the softmax).
        tie_weights: the LM's softmax reuses the embedding matrix.
    """

    vocab_size: int
    embed_dim: int = 400
    hidden_size: int = 1152
    num_layers: int = 3
    pad_token_id: int = 0
    embed_dropout: float = 0.02
    input_dropout: float = 0.25
    hidden_dropout: float = 0.15
    weight_dropout: float = 0.2
    output_dropout: float = 0.1
    tie_weights: bool = True

    def __post_init__(self) -> None:
        check_int(self.vocab_size, "vocab_size")
        check_int(self.embed_dim, "embed_dim")
        check_int(self.hidden_size, "hidden_size")
        check_int(self.num_layers, "num_layers")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"`pad_token_id` must be in [0, {self.vocab_size}), got {self.pad_token_id}"
            )
        for name in (
            "embed_dropout",
            "input_dropout",
            "hidden_dropout",
            "weight_dropout",
            "output_dropout",
        ):
            check_probability(getattr(self, name), name)


def embedding_dropout(weight: Tensor, p: float, training: bool) -> Tensor:
    """Drop whole rows (words) of an embedding matrix: ``(vocab, dim) -> (vocab, dim)``.

    A dropped word is zero wherever it occurs in the batch; kept rows are scaled by
    ``1 / (1 - p)``. Identity when not ``training`` or ``p == 0``.
    """
    check_probability(p, "p")
    if not training or p == 0:
        return weight
    keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p) / (1 - p)
    return weight * keep


class LockedDropout(nn.Module):
    """Variational dropout: one mask per sequence, shared by every time step.

    ``forward(x)``: ``(batch, seq, dim) -> (batch, seq, dim)``; identity in eval mode.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        check_probability(p, "p")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        check_rank(x, 3, "x", "(batch, seq, dim)")
        if not self.training or self.p == 0:
            return x
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


LSTMState = tuple[Tensor, Tensor]


class WeightDropLSTM(nn.Module):
    """A one-layer LSTM with DropConnect on its hidden-to-hidden matrix (weight drop).

    The dropped matrix is swapped in for one call with :func:`torch.func.functional_call`,
    so PyTorch's fused LSTM kernel still runs and the stored parameter is never modified.

    Args:
        input_size, hidden_size: the LSTM's widths.
        weight_dropout: probability of zeroing each entry of ``weight_hh_l0`` (training only).

    Parameters: ``lstm.weight_ih_l0``, ``lstm.weight_hh_l0``, ``lstm.bias_ih_l0``,
    ``lstm.bias_hh_l0``.
    """

    def __init__(self, input_size: int, hidden_size: int, weight_dropout: float = 0.0) -> None:
        super().__init__()
        check_probability(weight_dropout, "weight_dropout")
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.weight_dropout = weight_dropout

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, state: LSTMState | None = None
    ) -> tuple[Tensor, LSTMState]:
        """Run the LSTM.

        Args:
            x: ``(batch, seq, input_size)``.
            lengths: ``(batch,)`` real lengths (>= 1); the LSTM stops at each sequence's
                end, outputs past it are zero. None = all ``seq`` steps are real.
            state: ``(h, c)``, each ``(1, batch, hidden_size)``; None = zeros.

        Returns:
            ``(out, (h, c))``: ``out`` ``(batch, seq, hidden_size)``; ``h``, ``c`` the state
            after each sequence's last real step.
        """
        weight: Tensor = self.lstm.weight_hh_l0  # type: ignore[assignment]
        if self.training and self.weight_dropout > 0:
            weight = F.dropout(weight, self.weight_dropout, training=True)
        inputs: Tensor | nn.utils.rnn.PackedSequence = x
        if lengths is not None:
            inputs = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, new_state = functional_call(self.lstm, {"weight_hh_l0": weight}, (inputs, state))
        if lengths is not None:
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out, new_state


@dataclass
class AWDLSTMOutput:
    """What :class:`AWDLSTMEncoder` returns.

    Attributes:
        last_hidden_state: ``(batch, seq, embed_dim)``: the last LSTM's output after the
            output dropout, zeros on padding.
        hidden_states: every LSTM's output before dropout, ``num_layers`` tensors
            ``(batch, seq, width)``.
        state: every LSTM's final ``(h, c)``, to carry over to the next chunk of text.
    """

    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...]
    state: list[LSTMState]


def check_ids_and_mask(
    input_ids: Tensor, attention_mask: Tensor | None, vocab_size: int
) -> Tensor | None:
    """Validate ``input_ids`` ``(batch, n)`` and a prefix ``attention_mask``; return lengths.

    Returns ``(batch,)`` lengths (each >= 1) or None without a mask.
    """
    check_rank(input_ids, 2, "input_ids", "(batch, n)")
    check_token_ids(input_ids, vocab_size, "input_ids")
    if input_ids.shape[1] == 0:
        raise ValueError("`input_ids` must hold at least one token per row, got n = 0")
    if attention_mask is None:
        return None
    check_bool_mask(attention_mask, "attention_mask")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    lengths = check_prefix_mask(attention_mask, "attention_mask")
    if bool((lengths == 0).any()):
        raise ValueError("`attention_mask` must keep at least one real token per row")
    return lengths


class AWDLSTMEncoder(nn.Module):
    """Embedding (with word-level dropout) and stacked weight-dropped LSTMs.

    Args:
        config: an :class:`AWDLSTMConfig`.

    Parameters: ``embedding.weight`` ``(vocab, embed_dim)``, ``layers.{i}.lstm.*``.
    """

    def __init__(self, config: AWDLSTMConfig) -> None:
        super().__init__()
        if not isinstance(config, AWDLSTMConfig):
            raise TypeError(f"`config` must be an AWDLSTMConfig, got {type(config).__name__}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, config.pad_token_id)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embedding.weight[config.pad_token_id].zero_()
        widths = [config.embed_dim] + [config.hidden_size] * (config.num_layers - 1)
        widths.append(config.embed_dim)
        self.layers = nn.ModuleList(
            WeightDropLSTM(widths[i], widths[i + 1], config.weight_dropout)
            for i in range(config.num_layers)
        )
        self.input_dropout = LockedDropout(config.input_dropout)
        self.hidden_dropout = LockedDropout(config.hidden_dropout)
        self.output_dropout = LockedDropout(config.output_dropout)

    def layer_groups(self) -> list[nn.Module]:
        """``[embedding, lstm_0, ..., lstm_{L-1}]``, bottom to top (for discriminative rates
        and gradual unfreezing)."""
        return [self.embedding, *self.layers]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        state: Sequence[LSTMState] | None = None,
    ) -> AWDLSTMOutput:
        """Encode ``input_ids`` ``(batch, n)``.

        Args:
            input_ids: word ids in ``[0, vocab_size)``.
            attention_mask: ``(batch, n)`` bool prefix mask, True = real token (every row
                keeps at least one); None = no padding.
            state: per-layer ``(h, c)`` from a previous chunk; None = zeros.
        """
        lengths = check_ids_and_mask(input_ids, attention_mask, self.config.vocab_size)
        if state is not None and len(state) != len(self.layers):
            raise ValueError(f"`state` must hold {len(self.layers)} (h, c) pairs, got {len(state)}")
        weight = embedding_dropout(self.embedding.weight, self.config.embed_dropout, self.training)
        x = self.input_dropout(F.embedding(input_ids, weight, self.config.pad_token_id))
        hidden_states, new_state = [], []
        for i, layer in enumerate(self.layers):
            x, layer_state = layer(x, lengths, None if state is None else state[i])
            hidden_states.append(x)
            new_state.append(layer_state)
            if i < len(self.layers) - 1:
                x = self.hidden_dropout(x)
        return AWDLSTMOutput(self.output_dropout(x), tuple(hidden_states), new_state)


@dataclass
class LMOutput:
    """Language-model output: ``logits`` ``(batch, n, vocab)``; ``loss`` (scalar, mean
    next-word cross-entropy over real targets) when ``labels`` were given; ``encoder`` the
    :class:`AWDLSTMOutput`."""

    logits: Tensor
    loss: Tensor | None
    encoder: AWDLSTMOutput


def next_token_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean cross-entropy of ``logits[:, t]`` against ``input_ids[:, t + 1]`` on real targets.

    ``logits`` ``(batch, n, vocab)``, ``input_ids`` ``(batch, n)``, ``attention_mask``
    ``(batch, n)`` bool or None.
    """
    targets = input_ids[:, 1:]
    scores = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    if attention_mask is None:
        return F.cross_entropy(scores, targets.reshape(-1))
    keep = attention_mask[:, 1:].reshape(-1)
    return F.cross_entropy(scores[keep], targets.reshape(-1)[keep])


class AWDLSTMLanguageModel(nn.Module):
    """The AWD-LSTM language model: :class:`AWDLSTMEncoder` and a (tied) softmax.

    ``forward(input_ids, attention_mask=None, state=None, labels=False)`` -> :class:`LMOutput`
    with ``logits`` ``(batch, n, vocab)``: ``logits[:, t]`` predicts ``input_ids[:, t + 1]``.
    Parameters: ``encoder.*``, ``decoder.bias`` (and ``decoder.weight`` when untied).
    """

    def __init__(self, config: AWDLSTMConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = AWDLSTMEncoder(config)
        self.decoder = nn.Linear(config.embed_dim, config.vocab_size)
        if config.tie_weights:
            self.decoder.weight = self.encoder.embedding.weight
        nn.init.zeros_(self.decoder.bias)

    def layer_groups(self) -> list[nn.Module]:
        """The encoder's groups; the (tied) softmax goes with the embedding."""
        groups: list[nn.Module] = self.encoder.layer_groups()
        if not self.config.tie_weights:
            groups[-1] = nn.ModuleList([groups[-1], self.decoder])
        return groups

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        state: Sequence[LSTMState] | None = None,
        compute_loss: bool = False,
    ) -> LMOutput:
        """Scores of the next word at every position; the loss with ``compute_loss``."""
        out = self.encoder(input_ids, attention_mask, state)
        logits = self.decoder(out.last_hidden_state)
        loss = next_token_loss(logits, input_ids, attention_mask) if compute_loss else None
        return LMOutput(logits, loss, out)


def concat_pool(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """ULMFiT's concat pooling ``[h_T, maxpool(H), meanpool(H)]`` over real tokens.

    Args:
        hidden: ``(batch, n, dim)``.
        mask: ``(batch, n)`` bool prefix mask (>= 1 real token per row); None = no padding.

    Returns:
        ``(batch, 3 * dim)``; ``h_T`` is each sequence's last real state.
    """
    check_rank(hidden, 3, "hidden", "(batch, n, dim)")
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    lengths = check_prefix_mask(mask, "mask")
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    real = mask.unsqueeze(-1)
    maxpool = hidden.masked_fill(~real, float("-inf")).amax(dim=1)
    meanpool = (hidden * real).sum(dim=1) / lengths.unsqueeze(-1).to(hidden.dtype)
    return torch.cat([last, maxpool, meanpool], dim=-1)


class PoolingClassifierHead(nn.Module):
    """ULMFiT's head: concat pooling, then two blocks of BatchNorm, dropout and a linear
    layer (ReLU between them).

    ``forward(hidden, mask)``: ``(batch, n, dim)``, ``(batch, n)`` -> ``(batch, n_classes)``.
    """

    def __init__(self, dim: int, n_classes: int, hidden: int = 50, dropout: float = 0.1) -> None:
        super().__init__()
        check_int(n_classes, "n_classes", minimum=2)
        check_int(hidden, "hidden")
        check_probability(dropout, "dropout")
        self.layers = nn.Sequential(
            nn.BatchNorm1d(3 * dim),
            nn.Dropout(dropout),
            nn.Linear(3 * dim, hidden),
            nn.ReLU(),
            nn.BatchNorm1d(hidden),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        return self.layers(concat_pool(hidden, mask))  # type: ignore[no-any-return]


class ULMFiTClassifier(nn.Module):
    """An AWD-LSTM encoder with the concat-pooling head.

    Args:
        config: the encoder's :class:`AWDLSTMConfig`.
        n_classes: number of labels.
        head_hidden, head_dropout: the head's width and dropout.

    ``forward(input_ids, attention_mask=None)``: ``(batch, n)`` -> logits ``(batch, n_classes)``.
    """

    def __init__(
        self,
        config: AWDLSTMConfig,
        n_classes: int,
        head_hidden: int = 50,
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.encoder = AWDLSTMEncoder(config)
        self.head = PoolingClassifierHead(config.embed_dim, n_classes, head_hidden, head_dropout)

    @classmethod
    def from_language_model(
        cls, lm: AWDLSTMLanguageModel, n_classes: int, **head: int | float
    ) -> ULMFiTClassifier:
        """A classifier whose encoder starts as a copy of ``lm``'s (ULMFiT's third stage)."""
        if not isinstance(lm, AWDLSTMLanguageModel):
            raise TypeError(f"`lm` must be an AWDLSTMLanguageModel, got {type(lm).__name__}")
        model = cls(lm.config, n_classes, **head)  # type: ignore[arg-type]
        model.encoder.load_state_dict(lm.encoder.state_dict())
        return model

    def layer_groups(self) -> list[nn.Module]:
        """``[embedding, lstm_0, ..., lstm_{L-1}, head]``, bottom to top."""
        return [*self.encoder.layer_groups(), self.head]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        out = self.encoder(input_ids, attention_mask)
        return self.head(out.last_hidden_state, attention_mask)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------
# Shipped data and the three-stage pipeline
# ---------------------------------------------------------------------------------------

LABELS = ("negative", "positive")


def load_ulmfit_corpus() -> list[str]:
    """The shipped general-domain corpus: 800 sentences, one per line."""
    text = resources.files(__package__).joinpath("data/ulmfit_corpus.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


def load_ulmfit_reviews() -> tuple[list[str], list[int]]:
    """The shipped labelled reviews: texts and labels (0 = negative, 1 = positive)."""
    path = resources.files(__package__).joinpath("data/ulmfit_reviews.tsv")
    texts, labels = [], []
    for line in path.read_text("utf-8").splitlines():
        label, text = line.split("\t")
        texts.append(text)
        labels.append(LABELS.index(label))
    return texts, labels


def lm_perplexity(
    model: AWDLSTMLanguageModel, vocab: WordVocabulary, texts: Sequence[str]
) -> float:
    """Perplexity of ``model`` on ``texts`` (next word, ``<eos>`` included), in eval mode."""
    model.eval()
    ids, mask = vocab.batch(texts)
    with torch.no_grad():
        loss = model(ids, mask, compute_loss=True).loss
    assert loss is not None
    return float(torch.exp(loss))


def classifier_accuracy(
    model: ULMFiTClassifier, vocab: WordVocabulary, texts: Sequence[str], labels: Sequence[int]
) -> float:
    """Accuracy of ``model`` on ``texts`` (eval mode)."""
    model.eval()
    ids, mask = vocab.batch(texts)
    with torch.no_grad():
        predicted = model(ids, mask).argmax(-1)
    return float((predicted == torch.tensor(labels)).float().mean())


def train_with_schedule(
    model: nn.Module,
    loss_fn: Callable[[int], Tensor],
    optimizer: torch.optim.Optimizer,
    steps: int,
    clip_norm: float = 0.5,
    progress: bool = False,
    description: str = "train",
) -> list[float]:
    """Minimise ``loss_fn(step)`` for ``steps`` steps under slanted triangular rates.

    Unlike :func:`~attnzoo.transformers_zoo.training.fit` (AdamW, one rate), the caller
    builds the optimiser, so its parameter groups (discriminative rates, frozen groups)
    are kept; the schedule peaks at each group's ``lr``. Returns the per-step losses.
    """
    check_int(steps, "steps")
    scheduler = SlantedTriangularLR(optimizer, steps) if steps >= 10 else None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses: list[float] = []
    model.train()
    for step in tqdm(range(steps), desc=description, disable=not progress):
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], clip_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@dataclass
class ULMFiTSetup:
    """Sizes and rates of :func:`run_ulmfit_pipeline`.

    Attributes:
        pretrain_steps, finetune_steps, classifier_steps: optimiser steps of the three
            stages (the classifier's are split evenly over the gradual-unfreezing stages).
        batch_size: texts per step.
        embed_dim, hidden_size, num_layers: the AWD-LSTM's shape. Two layers rather than
            the paper's three: within this CPU budget a three-layer LM barely learns to use
            context (held-out perplexity about 20 against 8) and its classifier stays at
            the majority baseline.
        lm_lr, classifier_lr: peak learning rates (of the top group).
        n_train: labelled reviews used for training; the rest are held out.
    """

    pretrain_steps: int = 200
    finetune_steps: int = 50
    classifier_steps: int = 400
    batch_size: int = 32
    embed_dim: int = 48
    hidden_size: int = 96
    num_layers: int = 2
    lm_lr: float = 1e-2
    classifier_lr: float = 3e-2
    n_train: int = 500


T = TypeVar("T")


def _sampler(items: Sequence[T], batch_size: int, seed: int) -> Callable[[int], list[T]]:
    """``step -> batch``: a seeded draw of ``batch_size`` distinct items per step."""

    def draw(step: int) -> list[T]:
        rng = random.Random(seed * 1_000_003 + step)
        return rng.sample(list(items), min(batch_size, len(items)))

    return draw


def run_ulmfit_pipeline(
    setup: ULMFiTSetup | None = None, progress: bool = False, seed: int = 0
) -> dict[str, float]:
    """ULMFiT's three stages on the shipped data, with a tiny AWD-LSTM.

    1. General-domain LM pretraining on ``data/ulmfit_corpus.txt`` (last 100 lines held
       out).
    2. LM fine-tuning on the training reviews' texts, discriminative rates (``/ 2.6`` per
       group) and slanted triangular rates.
    3. Classifier: the fine-tuned encoder with the concat-pooling head, gradual unfreezing
       (head, then one more group per stage), discriminative and slanted triangular rates.

    Returns:
        ``pretrain_ppl_initial`` / ``pretrain_ppl_final`` (held-out corpus perplexity
        before and after stage 1), ``target_ppl_before_finetune`` /
        ``target_ppl_after_finetune`` (held-out reviews), ``classifier_accuracy`` (held-out
        reviews), ``majority_accuracy`` (the majority training label on them).
    """
    setup = setup or ULMFiTSetup()
    torch.manual_seed(seed)
    corpus = load_ulmfit_corpus()
    corpus_train, corpus_test = corpus[:-100], corpus[-100:]
    texts, labels = load_ulmfit_reviews()
    if not 0 < setup.n_train < len(texts):
        raise ValueError(f"`n_train` must be in (0, {len(texts)}), got {setup.n_train}")
    train_texts, test_texts = texts[: setup.n_train], texts[setup.n_train :]
    train_labels, test_labels = labels[: setup.n_train], labels[setup.n_train :]
    vocab = WordVocabulary([*corpus_train, *train_texts])
    config = AWDLSTMConfig(
        len(vocab),
        embed_dim=setup.embed_dim,
        hidden_size=setup.hidden_size,
        num_layers=setup.num_layers,
        pad_token_id=vocab.pad_id,
    )
    lm = AWDLSTMLanguageModel(config)
    metrics = {"pretrain_ppl_initial": lm_perplexity(lm, vocab, corpus_test)}

    def lm_stage(texts: Sequence[str], steps: int, discriminative: bool, name: str) -> None:
        draw = _sampler(texts, setup.batch_size, seed)
        groups = lm.layer_groups() if discriminative else [lm]
        optimizer = torch.optim.Adam(
            discriminative_param_groups(groups, setup.lm_lr), betas=(0.8, 0.99)
        )

        def loss_fn(step: int) -> Tensor:
            ids, mask = vocab.batch(draw(step))
            return lm(ids, mask, compute_loss=True).loss  # type: ignore[return-value]

        train_with_schedule(lm, loss_fn, optimizer, steps, progress=progress, description=name)

    lm_stage(corpus_train, setup.pretrain_steps, False, "LM pretraining")
    metrics["pretrain_ppl_final"] = lm_perplexity(lm, vocab, corpus_test)
    metrics["target_ppl_before_finetune"] = lm_perplexity(lm, vocab, test_texts)
    lm_stage(train_texts, setup.finetune_steps, True, "LM fine-tuning")
    metrics["target_ppl_after_finetune"] = lm_perplexity(lm, vocab, test_texts)

    classifier = ULMFiTClassifier.from_language_model(lm, n_classes=len(LABELS))
    groups = classifier.layer_groups()
    unfreezing = GradualUnfreezing(groups)
    draw = _sampler(list(range(len(train_texts))), setup.batch_size, seed + 1)
    label_tensor = torch.tensor(train_labels)

    def classifier_loss(step: int) -> Tensor:
        rows = draw(step)
        ids, mask = vocab.batch([train_texts[i] for i in rows])
        return F.cross_entropy(classifier(ids, mask), label_tensor[rows])

    # A quarter of the steps unfreeze one group at a time from the top; the rest train
    # everything, as ULMFiT trains on once the last group is unfrozen (at this scale the
    # lower layers must adapt before the loss leaves its plateau).
    per_stage = max(10, setup.classifier_steps // (4 * (len(groups) - 1)))
    final = max(10, setup.classifier_steps - per_stage * (len(groups) - 1))
    offset = 0
    for stage in range(len(groups)):
        steps = per_stage if stage < len(groups) - 1 else final
        optimizer = torch.optim.Adam(
            discriminative_param_groups(groups, setup.classifier_lr), betas=(0.8, 0.99)
        )

        def stage_loss(step: int, offset: int = offset) -> Tensor:
            return classifier_loss(offset + step)

        train_with_schedule(
            classifier,
            stage_loss,
            optimizer,
            steps,
            progress=progress,
            description=f"classifier ({unfreezing.trainable} groups)",
        )
        offset += steps
        unfreezing.step()
    metrics["classifier_accuracy"] = classifier_accuracy(classifier, vocab, test_texts, test_labels)
    majority = max(set(train_labels), key=train_labels.count)
    metrics["majority_accuracy"] = sum(y == majority for y in test_labels) / len(test_labels)
    return metrics


def run_ulmfit_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """ULMFiT end to end on the shipped data (:func:`run_ulmfit_pipeline`).

    Args:
        steps: classifier steps (default 400); the LM stages take half and an eighth as
            many.
        progress: show tqdm bars.
        seed: seed of the initialisation and the batches.
    """
    steps = 400 if steps is None else steps
    check_positive(steps, "steps")
    setup = ULMFiTSetup(
        pretrain_steps=max(10, steps // 2),
        finetune_steps=max(10, steps // 8),
        classifier_steps=max(50, steps),
    )
    return run_ulmfit_pipeline(setup, progress=progress, seed=seed)


__all__ = [
    "AWDLSTMConfig",
    "AWDLSTMEncoder",
    "AWDLSTMLanguageModel",
    "AWDLSTMOutput",
    "LMOutput",
    "LockedDropout",
    "PoolingClassifierHead",
    "ULMFiTClassifier",
    "ULMFiTSetup",
    "WeightDropLSTM",
    "WordVocabulary",
    "check_ids_and_mask",
    "classifier_accuracy",
    "concat_pool",
    "embedding_dropout",
    "lm_perplexity",
    "load_ulmfit_corpus",
    "load_ulmfit_reviews",
    "next_token_loss",
    "run_ulmfit_demo",
    "run_ulmfit_pipeline",
    "train_with_schedule",
]
