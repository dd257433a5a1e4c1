"""Pretraining objectives: masking collators, sentence-pair builders and LM labels.

Everything here is a plain function of token-id tensors (or lists of token-id lists) and a
seeded :class:`torch.Generator`, usable in any training loop:

- :func:`mask_tokens`: BERT's masked LM. A fraction ``probability`` (15%) of the
  non-special, non-pad positions is *selected*; of those 80% become ``[MASK]``, 10% a
  random token (never a special or pad id) and 10% stay unchanged. ``labels`` hold the
  original id at selected positions and -100 elsewhere (Hugging Face's ignore index).
  Token-level selection is an independent Bernoulli draw per candidate (as Hugging Face's
  ``DataCollatorForLanguageModeling``); with ``word_ids`` it is whole-word masking: words
  in random order, every piece of a chosen word selected, until a budget of
  ``round(probability * candidates)`` tokens per row (words that would overflow it are
  skipped). RoBERTa's dynamic masking is calling it afresh for every batch:
  :class:`DynamicMaskingCollator`.
- :func:`nsp_pairs` (BERT: 50% the true next segment, label 0 = IsNext; 50% a segment of
  another document, label 1) and :func:`sop_pairs` (ALBERT: two consecutive segments, 50%
  swapped, label 1 = swapped), laid out ``[CLS] A [SEP] B [SEP]`` with segment ids 0/1.
- PMI masking (Levine et al. 2021): :func:`build_pmi_vocabulary` ranks the n-grams
  (n = 2..max_n) of a tokenised corpus by the paper's PMI,
  ``log p(w_1..w_n) - max over segmentations s of sum_{parts} log p(part)``, the maximum
  taken over every split into >= 2 contiguous parts (the "PMI_n" of the paper, not the
  simpler min-over-binary-splits variant), each n-gram's probability being its count over
  the number of n-gram positions of its length. :func:`pmi_mask_tokens` selects whole
  n-gram spans (longest first where they overlap) and single tokens, in random order,
  until the 15% token budget, and applies the 80/10/10 rule per span.
- :func:`causal_lm_labels` (labels = ``input_ids`` with -100 on padding; the one-token
  shift happens inside the model, as in Hugging Face) and :func:`tlm_batch`, XLM's
  translation LM layout: a parallel pair concatenated with per-token language ids and
  position ids restarting at 0 for the second sentence; :func:`mask_tokens` then masks
  across both sentences.

Masks returned here are boolean, True = real token (the library's convention; the models'
``attention_mask`` accepts them as it accepts Hugging Face's 0/1 integers). Random draws
are made on the CPU with the given generator (so a seed gives the same masks on every
device) and the results are moved to the input's device.

Two tiny end-to-end runs close the module: :func:`run_bert_pretraining_demo` (WordPiece
vocabulary trained with ``tokenizers`` on the toy corpus of
:mod:`~attnzoo.transformers_zoo.tasks.corpus`, then masked LM + NSP on a small
:class:`~attnzoo.transformers_zoo.bert.BertForPreTraining`) and
:func:`run_gpt2_pretraining_demo` (BPE vocabulary, causal LM on a small
:class:`~attnzoo.transformers_zoo.gpt2.GPT2LMHeadModel`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention.validation import check_int, check_rank, check_tensor, check_token_ids
from .tasks.corpus import grammar_corpus

IGNORE_INDEX = -100
"""Label of a position that is not predicted (Hugging Face's ``ignore_index``)."""

# ---------------------------------------------------------------------------------------
# Masked LM: token-level and whole-word masking, the 80/10/10 rule
# ---------------------------------------------------------------------------------------


def _check_probability(probability: float, name: str = "probability") -> None:
    if not 0 < probability < 1:
        raise ValueError(f"`{name}` must be in (0, 1), got {probability}")


def _check_ids(
    input_ids: Tensor, vocab_size: int, mask_token_id: int, special_ids: Iterable[int], pad_id: int
) -> tuple[int, ...]:
    """Validate the id arguments; return the excluded ids (specials, pad, mask) sorted."""
    check_tensor(input_ids, "input_ids")
    check_rank(input_ids, 2, "input_ids", "(batch, n)")
    check_int(vocab_size, "vocab_size")
    check_token_ids(input_ids, vocab_size, "input_ids")
    excluded = {int(i) for i in special_ids} | {int(pad_id), int(mask_token_id)}
    for name, value in (("mask_token_id", mask_token_id), ("pad_id", pad_id)):
        if not 0 <= value < vocab_size:
            raise ValueError(f"`{name}` must be in [0, {vocab_size}), got {value}")
    for value in excluded:
        if not 0 <= value < vocab_size:
            raise ValueError(f"`special_ids` must hold ids in [0, {vocab_size}), got {value}")
    if len(excluded) >= vocab_size:
        raise ValueError(
            f"`vocab_size` ({vocab_size}) leaves no ordinary token for random replacement "
            f"once the {len(excluded)} special, pad and mask ids are excluded"
        )
    return tuple(sorted(excluded))


def _candidates(ids: Tensor, excluded: Sequence[int]) -> Tensor:
    """``(batch, n)`` bool: True where a token may be selected (not special, not pad)."""
    return ~torch.isin(ids, torch.tensor(excluded, dtype=ids.dtype))


def _replace(
    ids: Tensor,
    selected: Tensor,
    unit_index: Tensor,
    n_units: int,
    *,
    vocab_size: int,
    mask_token_id: int,
    excluded: Sequence[int],
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Apply the 80/10/10 rule per unit (token, word or span) to the selected positions.

    Args:
        ids: ``(batch, n)`` int64 on the CPU.
        selected: ``(batch, n)`` bool, the positions to predict.
        unit_index: ``(batch, n)`` int64 in ``[0, n_units)``: positions of one unit share the
            decision (mask / random / keep); each position still draws its own random token.
        n_units: number of units.

    Returns:
        ``(inputs, labels)``, both ``(batch, n)`` int64 on the CPU.
    """
    choice = torch.rand(n_units, generator=generator)[unit_index]
    to_mask = selected & (choice < 0.8)
    to_random = selected & (choice >= 0.8) & (choice < 0.9)
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[list(excluded)] = False
    allowed = torch.nonzero(keep).flatten()
    random_tokens = allowed[torch.randint(len(allowed), ids.shape, generator=generator)]
    inputs = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
    inputs = torch.where(to_random, random_tokens, inputs)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, labels


def _select_units(
    units: list[list[list[int]]],
    budgets: list[int],
    generator: torch.Generator | None,
    shape: tuple[int, int],
) -> tuple[Tensor, Tensor, int]:
    """Pick whole units (lists of positions) per row, in random order, within a budget.

    A unit that would overflow the row's token budget is skipped (Hugging Face's whole-word
    rule), so the rate is the budget's up to the last word's rounding.

    Returns:
        ``selected`` ``(batch, n)`` bool, ``unit_index`` ``(batch, n)`` int64, and the number
        of units (for :func:`_replace`; unselected positions get unit 0, which is harmless
        because they are not selected).
    """
    selected = torch.zeros(shape, dtype=torch.bool)
    unit_index = torch.zeros(shape, dtype=torch.long)
    n_units = 1
    for row, (row_units, budget) in enumerate(zip(units, budgets, strict=True)):
        order = torch.randperm(len(row_units), generator=generator).tolist()
        taken = 0
        for u in order:
            positions = row_units[u]
            if taken >= budget:
                break
            if taken + len(positions) > budget:
                continue
            taken += len(positions)
            selected[row, positions] = True
            unit_index[row, positions] = n_units
            n_units += 1
    return selected, unit_index, n_units


def mask_tokens(
    input_ids: Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    special_ids: Iterable[int],
    pad_id: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
    word_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masked-LM corruption (token-level, or whole-word with ``word_ids``).

    Args:
        input_ids: ``(batch, n)`` token ids in ``[0, vocab_size)``.
        vocab_size: vocabulary size (the range of random replacements).
        mask_token_id: the ``[MASK]`` id.
        special_ids: ids never selected nor used as random replacements ([CLS], [SEP], ...).
        pad_id: the padding id (never selected nor used as a replacement).
        probability: fraction of the candidate tokens selected (0.15).
        generator: a seeded CPU :class:`torch.Generator` (None: the global one).
        word_ids: ``(batch, n)`` int: the word index of every token (as a Hugging Face fast
            tokenizer's ``word_ids()``), -1 for specials and padding. Given, all pieces of a
            selected word are selected, and the 15% budget counts tokens.

    Returns:
        ``(inputs, labels)``, both ``(batch, n)`` int64 on ``input_ids``' device: the
        corrupted ids, and the original ids at selected positions, -100 elsewhere.

    Raises:
        ValueError: ids out of range, a bad probability, ``word_ids`` of another shape.
    """
    excluded = _check_ids(input_ids, vocab_size, mask_token_id, special_ids, pad_id)
    _check_probability(probability)
    ids = input_ids.detach().to("cpu", torch.long)
    candidates = _candidates(ids, excluded)
    if word_ids is None:
        draw = torch.rand(ids.shape, generator=generator)
        selected = candidates & (draw < probability)
        unit_index = torch.arange(ids.numel()).view(ids.shape)
        n_units = ids.numel()
    else:
        check_tensor(word_ids, "word_ids")
        if word_ids.shape != input_ids.shape:
            raise ValueError(
                f"`word_ids` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                f"got {tuple(word_ids.shape)}"
            )
        words = word_ids.detach().to("cpu", torch.long)
        units: list[list[list[int]]] = []
        budgets = []
        for row in range(ids.shape[0]):
            groups: dict[int, list[int]] = {}
            for position in torch.nonzero(candidates[row] & (words[row] >= 0)).flatten().tolist():
                groups.setdefault(int(words[row, position]), []).append(position)
            units.append(list(groups.values()))
            budgets.append(_budget(int(candidates[row].sum()), probability))
        selected, unit_index, n_units = _select_units(units, budgets, generator, tuple(ids.shape))
    inputs, labels = _replace(
        ids,
        selected,
        unit_index,
        n_units,
        vocab_size=vocab_size,
        mask_token_id=mask_token_id,
        excluded=excluded,
        generator=generator,
    )
    return inputs.to(input_ids.device), labels.to(input_ids.device)


def _budget(n_candidates: int, probability: float) -> int:
    """Tokens to select in a row: ``max(1, round(probability * candidates))`` (0 if none)."""
    return max(1, round(probability * n_candidates)) if n_candidates else 0


@dataclass
class DynamicMaskingCollator:
    """RoBERTa's dynamic masking: a fresh :func:`mask_tokens` draw for every batch.

    BERT masked each sequence once, offline; RoBERTa draws the mask anew every time a
    sequence is fed, so the same sentence is seen with different masks across epochs.
    Calling this collator twice on the same batch gives two different corruptions (the
    generator advances), reproducibly from ``seed``.

    Attributes:
        vocab_size, mask_token_id, special_ids, pad_id, probability: as :func:`mask_tokens`.
        whole_word: use the batch's ``word_ids`` (whole-word masking).
        seed: seed of the collator's own CPU generator.
    """

    vocab_size: int
    mask_token_id: int
    special_ids: tuple[int, ...]
    pad_id: int
    probability: float = 0.15
    whole_word: bool = False
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_probability(self.probability)
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Mask ``batch["input_ids"]`` ``(batch, n)``.

        Returns a new dict with every key of ``batch``, ``input_ids`` replaced by the
        corrupted ids and ``labels`` added (``(batch, n)``, -100 = not predicted). With
        ``whole_word``, ``batch["word_ids"]`` is required.
        """
        if "input_ids" not in batch:
            raise ValueError(f"`batch` must hold 'input_ids', got keys {sorted(batch)}")
        if self.whole_word and "word_ids" not in batch:
            raise ValueError(
                f"`batch` must hold 'word_ids' for whole-word masking, got keys {sorted(batch)}"
            )
        inputs, labels = mask_tokens(
            batch["input_ids"],
            vocab_size=self.vocab_size,
            mask_token_id=self.mask_token_id,
            special_ids=self.special_ids,
            pad_id=self.pad_id,
            probability=self.probability,
            generator=self.generator,
            word_ids=batch["word_ids"] if self.whole_word else None,
        )
        return {**batch, "input_ids": inputs, "labels": labels}


# ---------------------------------------------------------------------------------------
# Sentence pairs: next-sentence prediction (BERT) and sentence-order prediction (ALBERT)
# ---------------------------------------------------------------------------------------


@dataclass
class PairBatch:
    """A batch of ``[CLS] A [SEP] B [SEP]`` pairs, right-padded to the longest.

    Attributes:
        input_ids: ``(batch, n)`` int64.
        token_type_ids: ``(batch, n)`` int64: 0 for ``[CLS] A [SEP]``, 1 for ``B [SEP]``, 0
            on padding.
        attention_mask: ``(batch, n)`` bool, True = real token.
        pair_label: ``(batch,)`` int64: NSP's ``next_sentence_label`` (0 = B follows A) or
            SOP's ``sentence_order_label`` (1 = swapped).
    """

    input_ids: Tensor
    token_type_ids: Tensor
    attention_mask: Tensor
    pair_label: Tensor


def encode_pair(
    a: Sequence[int], b: Sequence[int], *, cls_id: int, sep_id: int, max_length: int
) -> tuple[list[int], list[int]]:
    """``[CLS] a [SEP] b [SEP]`` and its segment ids, truncated to ``max_length`` tokens.

    Truncation drops the last token of the longer segment until the pair fits (BERT's
    ``truncate_seq_pair``, from the end). Returns ``(ids, token_type_ids)``, equal lengths.
    """
    check_int(max_length, "max_length", minimum=5)
    a, b = list(a), list(b)
    if not a or not b:
        raise ValueError(f"both segments must be non-empty, got lengths {len(a)} and {len(b)}")
    while len(a) + len(b) + 3 > max_length:
        (a if len(a) >= len(b) else b).pop()
    ids = [cls_id, *a, sep_id, *b, sep_id]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return ids, types


def _pad_pairs(
    pairs: list[tuple[list[int], list[int]]], labels: list[int], pad_id: int
) -> PairBatch:
    n = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), n), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(pairs), n), dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), n), dtype=torch.bool)
    for row, (ids, types) in enumerate(pairs):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        token_type_ids[row, : len(ids)] = torch.tensor(types)
        attention_mask[row, : len(ids)] = True
    return PairBatch(input_ids, token_type_ids, attention_mask, torch.tensor(labels))


def _check_documents(documents: Sequence[Sequence[Sequence[int]]], min_documents: int) -> None:
    if len(documents) < min_documents:
        raise ValueError(
            f"`documents` must hold at least {min_documents} documents, got {len(documents)}"
        )
    if not any(len(doc) >= 2 for doc in documents):
        raise ValueError("`documents` must hold a document of at least 2 segments")
    for d, doc in enumerate(documents):
        for s, segment in enumerate(doc):
            if len(segment) == 0:
                raise ValueError(f"`documents[{d}][{s}]` is an empty segment")


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (1,), generator=generator))


def _consecutive(
    documents: Sequence[Sequence[Sequence[int]]], generator: torch.Generator | None
) -> tuple[int, int]:
    """A random (document, segment) with a following segment in the same document."""
    eligible = [d for d, doc in enumerate(documents) if len(doc) >= 2]
    d = eligible[_randint(len(eligible), generator)]
    return d, _randint(len(documents[d]) - 1, generator)


def nsp_pairs(
    documents: Sequence[Sequence[Sequence[int]]],
    batch_size: int,
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    max_length: int = 128,
    generator: torch.Generator | None = None,
) -> PairBatch:
    """BERT's next-sentence-prediction pairs.

    Each pair takes a random segment A that has a successor; with probability 1/2, B is
    that successor (label 0, IsNext, as Hugging Face's ``next_sentence_label``), otherwise
    B is a random segment of another document (label 1, NotNext).

    Args:
        documents: documents, each a sequence of segments (lists of token ids); at least two
            documents.
        batch_size: number of pairs.
        cls_id, sep_id, pad_id: the special ids.
        max_length: longest pair (see :func:`encode_pair`).
        generator: a seeded CPU generator.
    """
    _check_documents(documents, 2)
    check_int(batch_size, "batch_size")
    pairs, labels = [], []
    for _ in range(batch_size):
        d, i = _consecutive(documents, generator)
        if float(torch.rand(1, generator=generator)) < 0.5:
            b, label = documents[d][i + 1], 0
        else:
            other = _randint(len(documents) - 1, generator)
            other += other >= d  # any document but d
            b = documents[other][_randint(len(documents[other]), generator)]
            label = 1
        pairs.append(
            encode_pair(documents[d][i], b, cls_id=cls_id, sep_id=sep_id, max_length=max_length)
        )
        labels.append(label)
    return _pad_pairs(pairs, labels, pad_id)


def sop_pairs(
    documents: Sequence[Sequence[Sequence[int]]],
    batch_size: int,
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    max_length: int = 128,
    generator: torch.Generator | None = None,
) -> PairBatch:
    """ALBERT's sentence-order-prediction pairs.

    Each pair is two consecutive segments of one document, in order (label 0) or, with
    probability 1/2, swapped (label 1, as Hugging Face's ``sentence_order_label``). Both
    segments come from the same document, so topic cannot tell the classes apart, only
    order can. Arguments as :func:`nsp_pairs` (one document suffices).
    """
    _check_documents(documents, 1)
    check_int(batch_size, "batch_size")
    pairs, labels = [], []
    for _ in range(batch_size):
        d, i = _consecutive(documents, generator)
        a, b = documents[d][i], documents[d][i + 1]
        label = int(float(torch.rand(1, generator=generator)) < 0.5)
        if label:
            a, b = b, a
        pairs.append(encode_pair(a, b, cls_id=cls_id, sep_id=sep_id, max_length=max_length))
        labels.append(label)
    return _pad_pairs(pairs, labels, pad_id)


# ---------------------------------------------------------------------------------------
# PMI masking (Levine et al. 2021)
# ---------------------------------------------------------------------------------------


@dataclass
class PMIVocabulary:
    """Collocations ranked by PMI.

    Attributes:
        ngrams: n-gram (tuple of ids) -> PMI, in decreasing PMI order.
        max_n: the longest n-gram length considered.
    """

    ngrams: dict[tuple[int, ...], float]
    max_n: int

    def __contains__(self, ngram: tuple[int, ...]) -> bool:
        return ngram in self.ngrams

    def __len__(self) -> int:
        return len(self.ngrams)


def ngram_pmi(ngram: tuple[int, ...], log_prob: dict[tuple[int, ...], float]) -> float:
    """The PMI of ``ngram`` (length >= 2) given log-probabilities of all its sub-n-grams.

    ``log p(ngram) - max over segmentations into >= 2 contiguous parts of sum log p(part)``,
    computed by dynamic programming over the split points (``best[k]``: the best
    segmentation of the first ``k`` tokens).
    """
    n = len(ngram)
    if n < 2:
        raise ValueError(f"`ngram` must have length >= 2, got {n}")
    best = [0.0] + [-math.inf] * n
    for k in range(1, n + 1):
        for j in range(k):
            if j == 0 and k == n:
                continue  # the whole n-gram is not a segmentation of itself
            best[k] = max(best[k], best[j] + log_prob[ngram[j:k]])
    return log_prob[ngram] - best[n]


def build_pmi_vocabulary(
    corpus: Iterable[Sequence[int]],
    *,
    max_n: int = 3,
    min_count: int = 10,
    size: int | None = None,
    min_pmi: float = 0.0,
) -> PMIVocabulary:
    """Rank the n-grams (2 <= n <= ``max_n``) of a tokenised corpus by PMI.

    Args:
        corpus: token-id sequences (n-grams never cross a sequence boundary).
        max_n: longest n-gram.
        min_count: keep n-grams seen at least this often (rare ones have noisy PMI).
        size: keep the ``size`` best (None: all).
        min_pmi: keep n-grams whose PMI exceeds this (0: more frequent than its best
            segmentation predicts).

    Returns:
        a :class:`PMIVocabulary`, best first.
    """
    check_int(max_n, "max_n", minimum=2)
    check_int(min_count, "min_count")
    if size is not None:
        check_int(size, "size")
    counts: Counter[tuple[int, ...]] = Counter()
    totals = Counter[int]()
    for sequence in corpus:
        tokens = tuple(int(t) for t in sequence)
        for n in range(1, max_n + 1):
            for start in range(len(tokens) - n + 1):
                counts[tokens[start : start + n]] += 1
            totals[n] += max(len(tokens) - n + 1, 0)
    log_prob = {g: math.log(c) - math.log(totals[len(g)]) for g, c in counts.items()}
    scored = {
        g: ngram_pmi(g, log_prob) for g, c in counts.items() if len(g) >= 2 and c >= min_count
    }
    ranked = sorted(
        ((g, s) for g, s in scored.items() if s > min_pmi), key=lambda item: (-item[1], item[0])
    )
    if size is not None:
        ranked = ranked[:size]
    return PMIVocabulary(dict(ranked), max_n)


def pmi_spans(
    tokens: Sequence[int], candidates: Sequence[bool], vocabulary: PMIVocabulary
) -> list[list[int]]:
    """Cut one row into masking units: vocabulary n-grams and single tokens.

    Occurrences of vocabulary n-grams made only of candidate tokens are kept longest first
    (ties: higher PMI, then leftmost) when they overlap; every remaining candidate is a
    unit of its own. Returns the units as lists of positions.
    """
    found = []
    for n in range(vocabulary.max_n, 1, -1):
        for start in range(len(tokens) - n + 1):
            gram = tuple(int(t) for t in tokens[start : start + n])
            if gram in vocabulary.ngrams and all(candidates[start : start + n]):
                found.append((-n, -vocabulary.ngrams[gram], start))
    taken = [False] * len(tokens)
    units = []
    for neg_n, _, start in sorted(found):
        span = range(start, start - neg_n)
        if not any(taken[p] for p in span):
            for p in span:
                taken[p] = True
            units.append(list(span))
    units += [[p] for p in range(len(tokens)) if candidates[p] and not taken[p]]
    return units


def pmi_mask_tokens(
    input_ids: Tensor,
    *,
    vocabulary: PMIVocabulary,
    vocab_size: int,
    mask_token_id: int,
    special_ids: Iterable[int],
    pad_id: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """PMI masking: whole collocation spans and single tokens up to the token budget.

    Each row is cut into units by :func:`pmi_spans`; units are taken in random order until
    ``round(probability * candidates)`` tokens (units that would overflow are skipped), and
    the 80/10/10 rule is drawn once per unit (a span is masked, replaced or kept as a whole;
    replaced tokens draw their random ids independently). Arguments and returns as
    :func:`mask_tokens`.
    """
    excluded = _check_ids(input_ids, vocab_size, mask_token_id, special_ids, pad_id)
    _check_probability(probability)
    ids = input_ids.detach().to("cpu", torch.long)
    candidates = _candidates(ids, excluded)
    units, budgets = [], []
    for row in range(ids.shape[0]):
        units.append(pmi_spans(ids[row].tolist(), candidates[row].tolist(), vocabulary))
        budgets.append(_budget(int(candidates[row].sum()), probability))
    selected, unit_index, n_units = _select_units(units, budgets, generator, tuple(ids.shape))
    inputs, labels = _replace(
        ids,
        selected,
        unit_index,
        n_units,
        vocab_size=vocab_size,
        mask_token_id=mask_token_id,
        excluded=excluded,
        generator=generator,
    )
    return inputs.to(input_ids.device), labels.to(input_ids.device)


# ---------------------------------------------------------------------------------------
# Causal LM labels and XLM's translation LM
# ---------------------------------------------------------------------------------------


def causal_lm_labels(input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Causal-LM labels: ``input_ids`` with -100 on padding, ``(batch, n)``.

    Not shifted: the model compares ``logits[:, t]`` with ``labels[:, t + 1]`` itself, as
    Hugging Face's ``*LMHeadModel`` do. ``attention_mask`` ``(batch, n)`` bool or 0/1
    integer (Hugging Face's), 1 = real token; None = no padding.
    """
    check_tensor(input_ids, "input_ids")
    check_rank(input_ids, 2, "input_ids", "(batch, n)")
    labels = input_ids.clone()
    if attention_mask is not None:
        check_tensor(attention_mask, "attention_mask")
        if attention_mask.is_floating_point():
            raise TypeError(
                f"`attention_mask` must be bool or 0/1 integer, got dtype {attention_mask.dtype}"
            )
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"`attention_mask` must have the shape of `input_ids` "
                f"{tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}"
            )
        labels[~attention_mask.bool()] = IGNORE_INDEX
    return labels


@dataclass
class TLMBatch:
    """XLM translation-LM inputs: ``sep src sep sep tgt sep``, right-padded.

    Attributes:
        input_ids: ``(batch, n)`` int64.
        langs: ``(batch, n)`` int64: the source language id on the first sentence (with its
            separators), the target's on the second and on padding.
        position_ids: ``(batch, n)`` int64: ``0..`` over the first sentence, restarting at 0
            for the second (so both sentences use the same positions, as in XLM).
        attention_mask: ``(batch, n)`` bool, True = real token.
    """

    input_ids: Tensor
    langs: Tensor
    position_ids: Tensor
    attention_mask: Tensor


def tlm_batch(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    src_lang: int,
    tgt_lang: int,
    sep_id: int,
    pad_id: int,
) -> TLMBatch:
    """Concatenate parallel sentences for translation LM (Lample & Conneau 2019).

    Each sentence is framed by ``sep_id`` (XLM's ``</s>``) on both sides; the pair becomes
    ``[sep] src [sep] [sep] tgt [sep]``, with ``langs`` ``src_lang`` over the first half
    and ``tgt_lang`` over the second, and positions restarting at 0 at the second half.
    Mask it with :func:`mask_tokens` (``sep_id`` and ``pad_id`` among the specials): the
    selection runs across both sentences, so a masked word can be recovered from its
    translation.

    Args:
        pairs: ``(source ids, target ids)`` pairs, both non-empty.
        src_lang, tgt_lang: language ids.
        sep_id, pad_id: the separator and padding ids.
    """
    if not pairs:
        raise ValueError("`pairs` must hold at least one pair, got none")
    rows = []
    for index, (src, tgt) in enumerate(pairs):
        if not len(src) or not len(tgt):
            raise ValueError(
                f"`pairs[{index}]` must hold two non-empty sentences, "
                f"got lengths {len(src)} and {len(tgt)}"
            )
        first = [sep_id, *src, sep_id]
        second = [sep_id, *tgt, sep_id]
        rows.append(
            (
                first + second,
                [src_lang] * len(first) + [tgt_lang] * len(second),
                list(range(len(first))) + list(range(len(second))),
            )
        )
    n = max(len(ids) for ids, _, _ in rows)
    batch = len(rows)
    input_ids = torch.full((batch, n), pad_id, dtype=torch.long)
    langs = torch.full((batch, n), tgt_lang, dtype=torch.long)
    position_ids = torch.zeros((batch, n), dtype=torch.long)
    attention_mask = torch.zeros((batch, n), dtype=torch.bool)
    for row, (ids, lang, positions) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        langs[row, : len(ids)] = torch.tensor(lang)
        position_ids[row, : len(ids)] = torch.tensor(positions)
        attention_mask[row, : len(ids)] = True
    return TLMBatch(input_ids, langs, position_ids, attention_mask)


# ---------------------------------------------------------------------------------------
# Tiny pretraining runs on the toy corpus
# ---------------------------------------------------------------------------------------

WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(texts: Iterable[str], vocab_size: int = 120) -> Any:
    """A ``tokenizers`` WordPiece tokenizer trained on ``texts`` (no download).

    Specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` get ids 0..4.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(WORDPIECE_SPECIALS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_bpe(texts: Iterable[str], vocab_size: int = 120) -> Any:
    """A ``tokenizers`` byte-pair-encoding tokenizer trained on ``texts`` (no download).

    Specials ``<pad> <unk> <eos>`` get ids 0..2.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", "<eos>"], show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def run_bert_pretraining_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Masked LM + next-sentence prediction on a tiny BERT, from a WordPiece vocabulary.

    The toy corpus (:func:`~attnzoo.transformers_zoo.tasks.corpus.grammar_corpus`, 400
    documents) trains a WordPiece vocabulary; every step draws 32 fresh NSP pairs and a
    fresh dynamic mask. The model has hidden size 64, 2 layers, 4 heads; 1,600 steps.

    Returns:
        ``mlm_initial`` / ``nsp_initial`` (mean of the first 20 steps), ``mlm_final`` /
        ``nsp_final`` (mean of the last 50), ``nsp_accuracy`` on 256 held-out pairs and
        ``vocab_size``.
    """
    from .bert import BertConfig, BertForPreTraining, masked_lm_loss
    from .training import TrainConfig, fit

    steps = steps or 1600
    torch.manual_seed(seed)
    corpus = grammar_corpus(400, seed=seed)
    tokenizer = train_wordpiece(sentence for document in corpus for sentence in document)
    vocab = tokenizer.get_vocab()
    cls_id, sep_id, pad_id, mask_id = (vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]"))
    specials = tuple(vocab[t] for t in WORDPIECE_SPECIALS)
    documents = [[tokenizer.encode(s).ids for s in document] for document in corpus]
    train_docs, test_docs = documents[:350], documents[350:]
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=pad_id,
    )
    model = BertForPreTraining(config)
    generator = torch.Generator().manual_seed(seed)
    mlm_losses: list[float] = []
    nsp_losses: list[float] = []

    def batch(step: int) -> tuple[PairBatch, Tensor, Tensor]:
        pairs = nsp_pairs(
            train_docs, 32, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id, max_length=48,
            generator=generator,
        )  # fmt: skip
        inputs, labels = mask_tokens(
            pairs.input_ids, vocab_size=config.vocab_size, mask_token_id=mask_id,
            special_ids=specials, pad_id=pad_id, generator=generator,
        )  # fmt: skip
        return pairs, inputs, labels

    def loss_fn(model: Any, item: Any) -> Tensor:
        pairs, inputs, labels = item
        out = model(inputs, pairs.attention_mask, pairs.token_type_ids)
        mlm = masked_lm_loss(out.logits, labels)
        nsp = F.cross_entropy(out.seq_relationship_logits, pairs.pair_label)
        mlm_losses.append(float(mlm.detach()))
        nsp_losses.append(float(nsp.detach()))
        return mlm + nsp  # the sum BertForPreTraining's loss is

    train = TrainConfig(steps=steps, lr=3e-3, warmup=20, progress=progress, description="bert")
    fit(model, loss_fn, batch, train)
    test_generator = torch.Generator().manual_seed(seed + 1)
    test = nsp_pairs(
        test_docs, 256, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id, max_length=48,
        generator=test_generator,
    )  # fmt: skip
    with torch.no_grad():
        logits = model(test.input_ids, test.attention_mask, test.token_type_ids)
    accuracy = (logits.seq_relationship_logits.argmax(-1) == test.pair_label).float().mean()
    return {
        "mlm_initial": _mean(mlm_losses[:20]),
        "mlm_final": _mean(mlm_losses[-50:]),
        "nsp_initial": _mean(nsp_losses[:20]),
        "nsp_final": _mean(nsp_losses[-50:]),
        "nsp_accuracy": float(accuracy),
        "vocab_size": float(config.vocab_size),
    }


def run_gpt2_pretraining_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Causal LM on a tiny GPT-2, from a BPE vocabulary trained on the toy corpus.

    Documents are tokenised, joined with ``<eos>`` into one stream and cut into windows of
    32 tokens; each step samples 32 windows. The model has width 48, 2 layers, 4 heads.

    Returns:
        ``lm_initial`` (mean loss of the first 20 steps), ``lm_final`` (last 50),
        ``test_loss`` on held-out documents and ``vocab_size``.
    """
    from .gpt2 import GPT2Config, GPT2LMHeadModel
    from .training import TrainConfig, fit

    steps = steps or 300
    torch.manual_seed(seed)
    corpus = grammar_corpus(400, seed=seed)
    tokenizer = train_bpe(sentence for document in corpus for sentence in document)
    eos = tokenizer.token_to_id("<eos>")

    def stream(documents: list[list[str]]) -> Tensor:
        ids: list[int] = []
        for document in documents:
            ids += [*tokenizer.encode(" ".join(document)).ids, eos]
        return torch.tensor(ids)

    train_stream, test_stream = stream(corpus[:350]), stream(corpus[350:])
    window = 32
    config = GPT2Config(
        vocab_size=tokenizer.get_vocab_size(),
        n_positions=window,
        n_embd=48,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(seed)

    def windows(ids: Tensor, count: int, gen: torch.Generator) -> Tensor:
        starts = torch.randint(len(ids) - window, (count,), generator=gen)
        return torch.stack([ids[s : s + window] for s in starts.tolist()])

    def loss_fn(model: Any, input_ids: Tensor) -> Tensor:
        return model(input_ids, labels=causal_lm_labels(input_ids)).loss

    train = TrainConfig(steps=steps, lr=2e-3, warmup=20, progress=progress, description="gpt2")
    history = fit(model, loss_fn, lambda step: windows(train_stream, 32, generator), train)
    test_ids = windows(test_stream, 128, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        test_loss = model(test_ids, labels=causal_lm_labels(test_ids)).loss
    return {
        "lm_initial": _mean(history.losses[:20]),
        "lm_final": history.mean_last(50),
        "test_loss": float(test_loss),
        "vocab_size": float(config.vocab_size),
    }


__all__ = [
    "IGNORE_INDEX",
    "DynamicMaskingCollator",
    "PMIVocabulary",
    "PairBatch",
    "TLMBatch",
    "build_pmi_vocabulary",
    "causal_lm_labels",
    "encode_pair",
    "mask_tokens",
    "ngram_pmi",
    "nsp_pairs",
    "pmi_mask_tokens",
    "pmi_spans",
    "run_bert_pretraining_demo",
    "run_gpt2_pretraining_demo",
    "sop_pairs",
    "tlm_batch",
    "train_bpe",
    "train_wordpiece",
]
