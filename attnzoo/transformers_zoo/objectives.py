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
- XLNet's permutation LM lives in :mod:`~attnzoo.transformers_zoo.permutation_lm` and is
  re-exported here: :func:`permutation_lm_batch` (span targets, a random factorisation
  order, ``perm_mask``, ``target_mapping`` and labels) and :class:`PermutationLMCollator`.

Masks returned here are boolean, True = real token (the library's convention; the models'
``attention_mask`` accepts them as it accepts Hugging Face's 0/1 integers). Random draws
are made on the CPU with the given generator (so a seed gives the same masks on every
device) and the results are moved to the input's device.

Tiny end-to-end runs close the module, each from scratch on the toy corpus of
:mod:`~attnzoo.transformers_zoo.tasks.corpus` with a vocabulary trained by ``tokenizers``:
:func:`run_bert_pretraining_demo` (WordPiece; masked LM + NSP on a
:class:`~attnzoo.transformers_zoo.bert.BertForPreTraining`),
:func:`run_albert_pretraining_demo` (masked LM + SOP on an
:class:`~attnzoo.transformers_zoo.albert.AlbertForPreTraining`),
:func:`run_pmi_masking_demo` (PMI-masked LM on a BERT), :func:`run_xlm_tlm_demo`
(translation LM on generated parallel sentences, :func:`second_language`, on an
:class:`~attnzoo.transformers_zoo.xlm.XLMWithLMHeadModel`),
:func:`run_xlnet_pretraining_demo` (permutation LM on an
:class:`~attnzoo.transformers_zoo.xlnet.XLNetLMHeadModel`) and
:func:`run_gpt2_pretraining_demo` (BPE; causal LM on a
:class:`~attnzoo.transformers_zoo.gpt2.GPT2LMHeadModel`). Each returns its first and last
losses and a held-out figure.
"""

from __future__ import annotations

import functools
import math
import operator
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention.validation import check_int, check_rank, check_tensor, check_token_ids
from .permutation_lm import (
    PermutationLMBatch,
    PermutationLMCollator,
    permutation_lm_batch,
    permutation_masks,
)
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
        selected, unit_index, n_units = _select_units(
            units, budgets, generator, (ids.shape[0], ids.shape[1])
        )
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
    selected, unit_index, n_units = _select_units(
        units, budgets, generator, (ids.shape[0], ids.shape[1])
    )
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

    Specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` get ids 0..4. The same texts give the same
    vocabulary and ids in every process (see the comment in the body).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts = list(texts)
    pre_tokenizer = pre_tokenizers.Whitespace()
    # The trainer creates the "##" continuation alphabet lazily, in hash-map order, which
    # changes from one process to the next, and those ids break ties between merges of
    # equal counts (huggingface/tokenizers#1794): the vocabulary itself would change.
    # Declaring that alphabet up front, sorted, fixes its ids and so the merges.
    continuation = sorted(
        {f"##{char}" for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(text)
         for char in word[1:]}
    )  # fmt: skip
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=[*WORDPIECE_SPECIALS, *continuation],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # A fresh tokenizer on the learned vocabulary, so that only the five real specials are
    # special (added tokens, never split, skipped in decoding).
    trained = Tokenizer(models.WordPiece(tokenizer.get_vocab(), unk_token="[UNK]"))
    trained.pre_tokenizer = pre_tokenizer
    trained.add_special_tokens(list(WORDPIECE_SPECIALS))
    return trained


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


def _initial_final(name: str, losses: Sequence[float]) -> dict[str, float]:
    """``{name}_initial`` (mean of the first 20 steps) and ``{name}_final`` (last 50)."""
    return {f"{name}_initial": _mean(losses[:20]), f"{name}_final": _mean(losses[-50:])}


class _LossLog:
    """The per-step values of a run's named loss terms."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def total(self, **terms: Tensor) -> Tensor:
        """Record this step's terms; return their sum, the loss to minimise."""
        for name, value in terms.items():
            self.values.setdefault(name, []).append(float(value.detach()))
        return functools.reduce(operator.add, terms.values())

    def summary(self) -> dict[str, float]:
        """:func:`_initial_final` of every term, in the order they were first recorded."""
        out: dict[str, float] = {}
        for name, values in self.values.items():
            out.update(_initial_final(name, values))
        return out


@dataclass
class _ToyCorpus:
    """The toy corpus tokenised: documents are lists of sentences of token ids."""

    tokenizer: Any
    train: list[list[list[int]]]
    test: list[list[list[int]]]

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size())

    @property
    def specials(self) -> tuple[int, ...]:
        return tuple(self.id(token) for token in WORDPIECE_SPECIALS)

    def id(self, token: str) -> int:
        return int(self.tokenizer.token_to_id(token))


TIMES_OF_DAY = (
    "at dawn",
    "in the morning",
    "at noon",
    "in the afternoon",
    "in the evening",
    "at night",
)
"""Openings of a document's sentences in :func:`run_albert_pretraining_demo`, in order."""


def _wordpiece_corpus(
    seed: int, n_documents: int = 400, n_test: int = 50, timed: bool = False
) -> _ToyCorpus:
    """:func:`grammar_corpus` with a WordPiece vocabulary trained on it, split train/test.

    With ``timed``, sentence ``i`` of a document opens with ``TIMES_OF_DAY[i]`` (the corpus
    has at most 6 sentences a document): a cue of the order of two sentences that a model
    reads by comparing them.
    """
    if timed:
        corpus = [
            [f"{TIMES_OF_DAY[i]} {sentence}" for i, sentence in enumerate(document)]
            for document in grammar_corpus(n_documents, seed=seed)
        ]
    else:
        corpus = grammar_corpus(n_documents, seed=seed)
    tokenizer = train_wordpiece(sentence for document in corpus for sentence in document)
    documents = [[tokenizer.encode(s).ids for s in document] for document in corpus]
    return _ToyCorpus(tokenizer, documents[:-n_test], documents[-n_test:])


def _document_batch(
    documents: Sequence[Sequence[Sequence[int]]],
    indices: Iterable[int],
    *,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    max_length: int = 48,
) -> tuple[Tensor, Tensor]:
    """``[CLS] sentence sentence ... [SEP]`` per chosen document, cut to ``max_length``.

    Returns ``(input_ids, attention_mask)``, ``(batch, n)`` int64 and bool, right-padded to
    the longest row.
    """
    rows = []
    for index in indices:
        tokens = [t for sentence in documents[index] for t in sentence][: max_length - 2]
        rows.append([cls_id, *tokens, sep_id])
    n = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    for r, row in enumerate(rows):
        input_ids[r, : len(row)] = torch.tensor(row)
    attention_mask = torch.arange(n) < torch.tensor([len(row) for row in rows])[:, None]
    return input_ids, attention_mask


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of the predicted positions (label != -100) whose arg-max is the label."""
    scored = labels != IGNORE_INDEX
    return float((logits.argmax(-1)[scored] == labels[scored]).float().mean())


def _majority_rate(labels: Tensor) -> float:
    """The accuracy of always guessing the most frequent label: the no-context baseline."""
    scored = labels[labels != IGNORE_INDEX]
    return float(torch.bincount(scored).max()) / len(scored)


def _run_pair_pretraining(
    model: Any,
    corpus: _ToyCorpus,
    make_pairs: Callable[..., PairBatch],
    forward: Callable[[Any, Tensor, PairBatch], tuple[Tensor, Tensor]],
    *,
    pair_task: str,
    steps: int,
    lr: float,
    progress: bool,
    seed: int,
) -> dict[str, float]:
    """Masked LM + a sentence-pair task, the loop of the BERT (NSP) and ALBERT (SOP) runs.

    Every step draws 32 fresh pairs of training documents with ``make_pairs``
    (:func:`nsp_pairs` or :func:`sop_pairs`, at most 48 tokens) and a fresh dynamic mask;
    the loss is the sum of the masked-LM and pair cross-entropies.

    Args:
        model: the model to train.
        corpus: the tokenised toy corpus.
        make_pairs: the pair builder.
        forward: ``(model, input_ids, pairs) -> (token logits (batch, n, vocab), pair
            logits (batch, 2))``.
        pair_task: the pair loss's name (``"nsp"``, ``"sop"``).
        steps, lr, progress: as :class:`~attnzoo.transformers_zoo.training.TrainConfig`.
        seed: the seed of the batches (the held-out pairs use ``seed + 1``).

    Returns:
        ``mlm_initial``, ``mlm_final``, ``{pair_task}_initial``, ``{pair_task}_final``
        (means of the first 20 / last 50 steps), ``{pair_task}_accuracy`` on 256 held-out
        pairs and ``vocab_size``.
    """
    from .bert import masked_lm_loss
    from .training import TrainConfig, fit

    cls_id, sep_id, pad_id, mask_id = (corpus.id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]"))
    generator = torch.Generator().manual_seed(seed)
    log = _LossLog()

    def pairs(documents: list[list[list[int]]], count: int, gen: torch.Generator) -> PairBatch:
        return make_pairs(
            documents, count, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id, max_length=48,
            generator=gen,
        )  # fmt: skip

    def batch(step: int) -> tuple[PairBatch, Tensor, Tensor]:
        item = pairs(corpus.train, 32, generator)
        inputs, labels = mask_tokens(
            item.input_ids, vocab_size=corpus.vocab_size, mask_token_id=mask_id,
            special_ids=corpus.specials, pad_id=pad_id, generator=generator,
        )  # fmt: skip
        return item, inputs, labels

    def loss_fn(model: Any, batch: tuple[PairBatch, Tensor, Tensor]) -> Tensor:
        item, inputs, labels = batch
        token_logits, pair_logits = forward(model, inputs, item)
        pair_loss = F.cross_entropy(pair_logits, item.pair_label)
        return log.total(mlm=masked_lm_loss(token_logits, labels), **{pair_task: pair_loss})

    train = TrainConfig(steps=steps, lr=lr, warmup=20, progress=progress, description=pair_task)
    fit(model, loss_fn, batch, train)
    test = pairs(corpus.test, 256, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        _, pair_logits = forward(model, test.input_ids, test)
    accuracy = (pair_logits.argmax(-1) == test.pair_label).float().mean()
    return {
        **log.summary(),
        f"{pair_task}_accuracy": float(accuracy),
        "vocab_size": float(corpus.vocab_size),
    }


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
    from .bert import BertConfig, BertForPreTraining

    torch.manual_seed(seed)
    corpus = _wordpiece_corpus(seed)
    config = BertConfig(
        vocab_size=corpus.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=corpus.id("[PAD]"),
    )

    def forward(model: Any, input_ids: Tensor, pairs: PairBatch) -> tuple[Tensor, Tensor]:
        out = model(input_ids, pairs.attention_mask, pairs.token_type_ids)
        return out.logits, out.seq_relationship_logits

    return _run_pair_pretraining(
        BertForPreTraining(config), corpus, nsp_pairs, forward, pair_task="nsp",
        steps=steps or 1600, lr=3e-3, progress=progress, seed=seed,
    )  # fmt: skip


def run_albert_pretraining_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Masked LM + sentence-order prediction on a tiny ALBERT (Lan et al. 2020).

    As :func:`run_bert_pretraining_demo` with :func:`sop_pairs` (two consecutive sentences
    of one document, swapped half of the time) and an
    :class:`~attnzoo.transformers_zoo.albert.AlbertForPreTraining` (embedding width 32,
    hidden size 64, one layer applied twice, 4 heads, initial weights of std 0.1); 800
    steps. Both sentences of a pair come from one document, so the topic that gives NSP
    away says nothing here: the order is in the sentences. The toy corpus orders them only
    by its chain (a sentence's object is the next one's subject), which a model this small
    does not pick up in a few thousand steps (measured, seed 1: the SOP loss still 0.66
    after 2,500 steps); so here each sentence also opens with its time of day
    (``TIMES_OF_DAY``: "at dawn", "in the morning", ...), the kind of discourse cue SOP
    learns from in real text, read by comparing the two segments. Weights of std 0.1
    instead of ALBERT's 0.02 shorten the plateau before the SOP head picks it up (with
    0.02, seed 1: the SOP loss was still 0.67 after 800 steps).

    Returns:
        ``mlm_initial``, ``mlm_final``, ``sop_initial``, ``sop_final``, ``sop_accuracy`` on
        256 held-out pairs, ``vocab_size``.
    """
    from .albert import AlbertConfig, AlbertForPreTraining

    torch.manual_seed(seed)
    corpus = _wordpiece_corpus(seed, timed=True)
    config = AlbertConfig(
        vocab_size=corpus.vocab_size,
        embedding_size=32,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        classifier_dropout_prob=0.0,
        initializer_range=0.1,
        pad_token_id=corpus.id("[PAD]"),
    )

    def forward(model: Any, input_ids: Tensor, pairs: PairBatch) -> tuple[Tensor, Tensor]:
        out = model(input_ids, pairs.attention_mask, pairs.token_type_ids)
        return out.prediction_logits, out.sop_logits

    return _run_pair_pretraining(
        AlbertForPreTraining(config), corpus, sop_pairs, forward, pair_task="sop",
        steps=steps or 800, lr=3e-3, progress=progress, seed=seed,
    )  # fmt: skip


def run_pmi_masking_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Masked LM with PMI masking (Levine et al. 2021) on a tiny BERT.

    A WordPiece vocabulary is trained on the toy corpus and a PMI n-gram vocabulary
    (:func:`build_pmi_vocabulary`, n <= 3, seen >= 10 times) is built from the tokenised
    training documents; every step masks 32 documents (``[CLS] ... [SEP]``, <= 48 tokens)
    with :func:`pmi_mask_tokens`. The model is a
    :class:`~attnzoo.transformers_zoo.bert.BertForMaskedLM` (hidden size 64, 2 layers,
    4 heads); 800 steps.

    Returns:
        ``mlm_initial``, ``mlm_final``, ``test_accuracy`` (masked tokens of the 50
        held-out documents), ``majority_baseline`` (the accuracy of always guessing their
        most frequent label), ``span_fraction`` (share of the held-out masked tokens that
        sit in a masked n-gram of the PMI vocabulary), ``pmi_ngrams`` and ``vocab_size``.
    """
    from .bert import BertConfig, BertForMaskedLM
    from .training import TrainConfig, fit

    torch.manual_seed(seed)
    corpus = _wordpiece_corpus(seed)
    cls_id, sep_id, pad_id, mask_id = (corpus.id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]"))
    vocabulary = build_pmi_vocabulary(
        ([t for sentence in document for t in sentence] for document in corpus.train),
        max_n=3,
        min_count=10,
    )
    config = BertConfig(
        vocab_size=corpus.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=pad_id,
    )
    model = BertForMaskedLM(config)
    generator = torch.Generator().manual_seed(seed)

    def masked(indices: Iterable[int], documents: Any, gen: torch.Generator) -> tuple[Tensor, ...]:
        ids, attention_mask = _document_batch(
            documents, indices, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id
        )
        inputs, labels = pmi_mask_tokens(
            ids, vocabulary=vocabulary, vocab_size=corpus.vocab_size, mask_token_id=mask_id,
            special_ids=corpus.specials, pad_id=pad_id, generator=gen,
        )  # fmt: skip
        return ids, inputs, attention_mask, labels

    def batch(step: int) -> tuple[Tensor, ...]:
        indices = torch.randint(len(corpus.train), (32,), generator=generator).tolist()
        return masked(indices, corpus.train, generator)

    def loss_fn(model: Any, batch: tuple[Tensor, ...]) -> Tensor:
        _, inputs, attention_mask, labels = batch
        return model(inputs, attention_mask, labels=labels).loss

    train = TrainConfig(
        steps=steps or 800, lr=3e-3, warmup=20, progress=progress, description="pmi"
    )
    history = fit(model, loss_fn, batch, train)
    test_generator = torch.Generator().manual_seed(seed + 1)
    ids, inputs, attention_mask, labels = masked(
        range(len(corpus.test)), corpus.test, test_generator
    )
    with torch.no_grad():
        logits = model(inputs, attention_mask).logits
    in_span = _inside_pmi_spans(ids, labels != IGNORE_INDEX, vocabulary)
    return {
        **_initial_final("mlm", history.losses),
        "test_accuracy": _accuracy(logits, labels),
        "majority_baseline": _majority_rate(labels),
        "span_fraction": float(in_span.sum() / (labels != IGNORE_INDEX).sum()),
        "pmi_ngrams": float(len(vocabulary)),
        "vocab_size": float(corpus.vocab_size),
    }


def _inside_pmi_spans(ids: Tensor, selected: Tensor, vocabulary: PMIVocabulary) -> Tensor:
    """``(batch, n)`` bool: selected tokens inside a fully selected vocabulary n-gram."""
    inside = torch.zeros_like(selected)
    for row in range(ids.shape[0]):
        for units in pmi_spans(ids[row].tolist(), selected[row].tolist(), vocabulary):
            if len(units) > 1:
                inside[row, units] = True
    return inside


def second_language(sentence: str) -> str:
    """The toy corpus's second language: the same sentence, every word spelled backwards.

    A word-for-word translation into a disjoint vocabulary ("the cow" -> "eht woc"; the
    full stop is shared), so a word masked on one side can be read off its translation.
    """
    return " ".join(word[::-1] for word in sentence.split())


def run_xlm_tlm_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """XLM's translation LM (Lample & Conneau 2019) on generated parallel sentences.

    Every sentence of the toy corpus is paired with its :func:`second_language`
    translation; one WordPiece vocabulary (200 tokens) is trained on both languages, as
    XLM shares one BPE vocabulary. Each step takes 32 training pairs through
    :func:`tlm_batch` (language ids 0 and 1, positions restarting at the second
    sentence; the source language alternates between steps) and :func:`mask_tokens`. The
    model is an :class:`~attnzoo.transformers_zoo.xlm.XLMWithLMHeadModel` (width 64,
    2 layers, 4 heads, 2 language embeddings); 700 steps.

    Returns:
        ``tlm_initial``, ``tlm_final``; on the held-out documents' pairs:
        ``test_accuracy`` of the masked tokens, and ``mismatched_accuracy`` when every
        sentence is paired with the translation of the next one instead (same topic,
        other words: the gap is what the model reads from the true translation);
        ``majority_baseline`` (always guessing the most frequent label) and
        ``vocab_size``.
    """
    from .training import TrainConfig, fit
    from .xlm import XLMConfig, XLMWithLMHeadModel

    steps = steps or 700
    torch.manual_seed(seed)
    corpus = grammar_corpus(400, seed=seed)
    sentences = [(s, second_language(s)) for document in corpus for s in document]
    tokenizer = train_wordpiece((s for pair in sentences for s in pair), vocab_size=200)
    encoded = [(tokenizer.encode(a).ids, tokenizer.encode(b).ids) for a, b in sentences]
    n_train = sum(len(document) for document in corpus[:350])
    train_pairs, test_pairs = encoded[:n_train], encoded[n_train:]
    sep_id, pad_id, mask_id = (tokenizer.token_to_id(t) for t in ("[SEP]", "[PAD]", "[MASK]"))
    specials = tuple(tokenizer.token_to_id(t) for t in WORDPIECE_SPECIALS)
    vocab_size = tokenizer.get_vocab_size()
    config = XLMConfig(
        vocab_size=vocab_size,
        emb_dim=64,
        n_layers=2,
        n_heads=4,
        dropout=0.0,
        attention_dropout=0.0,
        n_langs=2,
        max_position_embeddings=64,
        pad_index=pad_id,
    )
    model = XLMWithLMHeadModel(config)
    generator = torch.Generator().manual_seed(seed)

    def masked(
        pairs: list[tuple[list[int], list[int]]], src_lang: int, gen: torch.Generator
    ) -> tuple[TLMBatch, Tensor, Tensor]:
        if src_lang == 1:
            pairs = [(b, a) for a, b in pairs]
        tlm = tlm_batch(
            pairs, src_lang=src_lang, tgt_lang=1 - src_lang, sep_id=sep_id, pad_id=pad_id
        )
        inputs, labels = mask_tokens(
            tlm.input_ids, vocab_size=vocab_size, mask_token_id=mask_id, special_ids=specials,
            pad_id=pad_id, generator=gen,
        )  # fmt: skip
        return tlm, inputs, labels

    def batch(step: int) -> tuple[TLMBatch, Tensor, Tensor]:
        indices = torch.randint(len(train_pairs), (32,), generator=generator).tolist()
        return masked([train_pairs[i] for i in indices], step % 2, generator)

    def logits_and_loss(model: Any, batch: tuple[TLMBatch, Tensor, Tensor]) -> Any:
        tlm, inputs, labels = batch
        return model(
            inputs, tlm.attention_mask, langs=tlm.langs, position_ids=tlm.position_ids,
            labels=labels,
        )  # fmt: skip

    train = TrainConfig(steps=steps, lr=3e-3, warmup=20, progress=progress, description="tlm")
    history = fit(model, lambda model, b: logits_and_loss(model, b).loss, batch, train)
    mismatched = [
        (a, test_pairs[(i + 1) % len(test_pairs)][1]) for i, (a, _) in enumerate(test_pairs)
    ]
    # Both sets masked from the same seed; the draws part where the partners' lengths do.
    matched = masked(test_pairs, 0, torch.Generator().manual_seed(seed + 1))
    unmatched = masked(mismatched, 0, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        matched_logits = logits_and_loss(model, matched).logits
        unmatched_logits = logits_and_loss(model, unmatched).logits
    return {
        **_initial_final("tlm", history.losses),
        "test_accuracy": _accuracy(matched_logits, matched[2]),
        "mismatched_accuracy": _accuracy(unmatched_logits, unmatched[2]),
        "majority_baseline": _majority_rate(matched[2]),
        "vocab_size": float(vocab_size),
    }


def run_xlnet_pretraining_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Permutation LM (Yang et al. 2019) on a tiny XLNet, from a WordPiece vocabulary.

    Every step takes 32 training documents (``[CLS] ... [SEP]``, <= 48 tokens, padded)
    through :func:`~attnzoo.transformers_zoo.permutation_lm.permutation_lm_batch`: spans
    of about 1/6 of the tokens are the targets, predicted in a random factorisation order
    by the query stream of an :class:`~attnzoo.transformers_zoo.xlnet.XLNetLMHeadModel`
    (width 64, 2 layers, 4 heads); 300 steps.

    Returns:
        ``plm_initial``, ``plm_final``; ``test_accuracy`` of the targets of the 50
        held-out documents, ``majority_baseline`` (always guessing their most frequent
        token) and ``vocab_size``.
    """
    from .training import TrainConfig, fit
    from .xlnet import XLNetConfig, XLNetLMHeadModel

    torch.manual_seed(seed)
    corpus = _wordpiece_corpus(seed)
    cls_id, sep_id, pad_id = (corpus.id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    config = XLNetConfig(
        vocab_size=corpus.vocab_size,
        d_model=64,
        n_layer=2,
        n_head=4,
        d_inner=128,
        dropout=0.0,
        pad_token_id=pad_id,
    )
    model = XLNetLMHeadModel(config)
    generator = torch.Generator().manual_seed(seed)

    def plm(indices: Iterable[int], documents: Any, gen: torch.Generator) -> PermutationLMBatch:
        ids, attention_mask = _document_batch(
            documents, indices, cls_id=cls_id, sep_id=sep_id, pad_id=pad_id
        )
        return permutation_lm_batch(
            ids, special_ids=corpus.specials, pad_id=pad_id, attention_mask=attention_mask,
            generator=gen,
        )  # fmt: skip

    def batch(step: int) -> PermutationLMBatch:
        indices = torch.randint(len(corpus.train), (32,), generator=generator).tolist()
        return plm(indices, corpus.train, generator)

    def forward(model: Any, item: PermutationLMBatch) -> Any:
        return model(
            item.input_ids, attention_mask=item.attention_mask, perm_mask=item.perm_mask,
            target_mapping=item.target_mapping, labels=item.labels,
        )  # fmt: skip

    train = TrainConfig(
        steps=steps or 300, lr=3e-3, warmup=20, progress=progress, description="plm"
    )
    history = fit(model, lambda model, item: forward(model, item).loss, batch, train)
    test = plm(range(len(corpus.test)), corpus.test, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        logits = forward(model, test).logits
    return {
        **_initial_final("plm", history.losses),
        "test_accuracy": _accuracy(logits, test.labels),
        "majority_baseline": _majority_rate(test.labels),
        "vocab_size": float(corpus.vocab_size),
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
        **_initial_final("lm", history.losses),
        "test_loss": float(test_loss),
        "vocab_size": float(config.vocab_size),
    }


__all__ = [
    "IGNORE_INDEX",
    "DynamicMaskingCollator",
    "PMIVocabulary",
    "PairBatch",
    "PermutationLMBatch",
    "PermutationLMCollator",
    "TLMBatch",
    "build_pmi_vocabulary",
    "causal_lm_labels",
    "encode_pair",
    "mask_tokens",
    "ngram_pmi",
    "nsp_pairs",
    "permutation_lm_batch",
    "permutation_masks",
    "pmi_mask_tokens",
    "pmi_spans",
    "run_albert_pretraining_demo",
    "run_bert_pretraining_demo",
    "run_gpt2_pretraining_demo",
    "run_pmi_masking_demo",
    "run_xlm_tlm_demo",
    "run_xlnet_pretraining_demo",
    "second_language",
    "sop_pairs",
    "tlm_batch",
    "train_bpe",
    "train_wordpiece",
]
