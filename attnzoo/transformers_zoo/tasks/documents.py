"""A seeded synthetic ragged-document classification task, and the document layout helpers.

A document is a variable number of sentences, each a variable number of words ending with
``"."``. Words are fillers, topic words and one marker word ``"recommend"``. Exactly one
sentence (the *key sentence*) holds the marker and a topic word; the label is that topic.
Other sentences may hold a *distractor* topic word (never the label's), so the label is not
"which topic word occurs" but "which topic word shares a sentence with the marker": a bag of
words cannot solve it, a model must bind two words of the same sentence, which may be far
apart. With ``distractor_prob=0`` the task reduces to "which topic word occurs", a linearly
separable version for quick checks.

Layout of a :class:`DocumentBatch`: ids ``(batch, n_sentences, n_words)``, padded with
``PAD`` after each sentence's last word and after each document's last sentence (masks are
*prefix* masks: real words, then padding). :func:`flatten_documents` gives the flat
``(batch, n_tokens)`` view that flat models (text-CNN, BiLSTM) read: the real words of each
document in order, then padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...attention.validation import check_bool_mask, check_positive, check_rank, check_tensor
from .sequences import PAD

PERIOD = 1
"""Id of ``"."``, the last word of every sentence."""
MARKER = 2
"""Id of ``"recommend"``: the key sentence is the one holding it."""
TOPIC_WORDS = ("sports", "music", "food", "travel", "books", "films", "games", "art")
FILLER_WORDS = (
    "the", "a", "we", "it", "was", "and", "then", "very",
    "some", "with", "on", "in", "of", "to", "they", "this",
)  # fmt: skip
FIRST_TOPIC = 3
"""Id of ``TOPIC_WORDS[0]``; topic ``c`` (the label ``c``) is word ``FIRST_TOPIC + c``."""
FIRST_FILLER = FIRST_TOPIC + len(TOPIC_WORDS)
DOCUMENT_VOCAB: tuple[str, ...] = ("<pad>", ".", "recommend", *TOPIC_WORDS, *FILLER_WORDS)
"""Word of each id, so that demos can print documents; its length is the vocabulary size."""
DOCUMENT_VOCAB_SIZE = len(DOCUMENT_VOCAB)


@dataclass
class DocumentBatch:
    """A batch of the ragged-document task.

    Attributes:
        input_ids: ``(batch, n_sentences, n_words)`` word ids, PAD where there is no word.
        word_mask: ``(batch, n_sentences, n_words)`` boolean, True = real word.
        sentence_mask: ``(batch, n_sentences)`` boolean, True = real sentence.
        labels: ``(batch,)`` class ids in ``[0, n_classes)``.
        key_mask: ``(batch, n_sentences, n_words)`` boolean, True at the two key words that
            decide the label: the marker and the label's topic word in the key sentence.
        key_sentence: ``(batch,)`` index of the key sentence.
    """

    input_ids: Tensor
    word_mask: Tensor
    sentence_mask: Tensor
    labels: Tensor
    key_mask: Tensor
    key_sentence: Tensor

    def flat(self) -> tuple[Tensor, Tensor]:
        """The flat view ``(input_ids, mask)``, both ``(batch, n_tokens)``."""
        return flatten_documents(self.input_ids, self.word_mask)

    def flat_key_mask(self) -> Tensor:
        """``key_mask`` in the flat view: ``(batch, n_tokens)`` boolean."""
        return flatten_documents(self.key_mask, self.word_mask)[0]

    def to(self, device: torch.device | str) -> DocumentBatch:
        """The same batch on ``device``."""
        return DocumentBatch(
            *(
                t.to(device)
                for t in (
                    self.input_ids,
                    self.word_mask,
                    self.sentence_mask,
                    self.labels,
                    self.key_mask,
                    self.key_sentence,
                )
            )
        )


def document_task(
    batch_size: int,
    generator: torch.Generator,
    *,
    n_classes: int = 4,
    min_sentences: int = 2,
    max_sentences: int = 6,
    min_words: int = 4,
    max_words: int = 10,
    distractor_prob: float = 0.7,
) -> DocumentBatch:
    """Draw a batch of ragged documents whose label is the topic next to the marker.

    Each document has ``min_sentences..max_sentences`` sentences of ``min_words..max_words``
    words plus a final ``"."``. One sentence, chosen uniformly, holds ``"recommend"`` and the
    label's topic word at two distinct uniform positions; each other sentence holds, with
    probability ``distractor_prob``, one topic word of another class; every other word is a
    uniform filler. Vocabulary size :data:`DOCUMENT_VOCAB_SIZE` whatever ``n_classes``.

    Args:
        batch_size: documents in the batch.
        generator: the source of randomness; the same seed gives the same batch.
        n_classes: number of labels, ``2..len(TOPIC_WORDS)``.
        min_sentences, max_sentences: range of the number of sentences.
        min_words, max_words: range of the words per sentence, ``"."`` not counted;
            ``min_words >= 2`` so that the key sentence fits its two key words.
        distractor_prob: probability that a non-key sentence holds a distractor topic.

    Returns:
        a :class:`DocumentBatch`, padded to the batch's longest document and sentence.
    """
    check_positive(batch_size, "batch_size")
    if not 2 <= n_classes <= len(TOPIC_WORDS):
        raise ValueError(f"`n_classes` must be in [2, {len(TOPIC_WORDS)}], got {n_classes}")
    check_positive(min_sentences, "min_sentences")
    if max_sentences < min_sentences:
        raise ValueError(
            f"`max_sentences` must be >= min_sentences = {min_sentences}, got {max_sentences}"
        )
    if min_words < 2:
        raise ValueError(f"`min_words` must be >= 2 (marker and topic), got {min_words}")
    if max_words < min_words:
        raise ValueError(f"`max_words` must be >= min_words = {min_words}, got {max_words}")
    if not 0 <= distractor_prob <= 1:
        raise ValueError(f"`distractor_prob` must be in [0, 1], got {distractor_prob}")

    def uniform_below(high: Tensor) -> Tensor:
        # An integer uniform in [0, high) for each entry of ``high`` (high >= 1).
        draw = torch.rand(high.shape, generator=generator)
        return (draw * high).long().clamp(max=high - 1)

    n_sentences = torch.randint(
        min_sentences, max_sentences + 1, (batch_size,), generator=generator
    )
    width_s = int(n_sentences.max())
    sentence_mask = torch.arange(width_s) < n_sentences[:, None]
    lengths = torch.randint(min_words, max_words + 1, (batch_size, width_s), generator=generator)
    lengths = lengths * sentence_mask  # words before "."; 0 in padded sentences
    width_w = int(lengths.max()) + 1
    position = torch.arange(width_w)
    word_mask = (position <= lengths[..., None]) & sentence_mask[..., None]

    ids = torch.randint(
        FIRST_FILLER, FIRST_FILLER + len(FILLER_WORDS), word_mask.shape, generator=generator
    )
    labels = torch.randint(0, n_classes, (batch_size,), generator=generator)
    key_sentence = uniform_below(n_sentences)
    rows = torch.arange(batch_size)

    # Distractors first, so that the key sentence's words are written over them.
    offset = torch.randint(1, n_classes, (batch_size, width_s), generator=generator)
    distractor_topic = (labels[:, None] + offset) % n_classes
    distractor_at = uniform_below(lengths.clamp(min=1))
    has_distractor = torch.rand((batch_size, width_s), generator=generator) < distractor_prob
    has_distractor &= sentence_mask
    has_distractor[rows, key_sentence] = False
    b, s = has_distractor.nonzero(as_tuple=True)
    ids[b, s, distractor_at[b, s]] = FIRST_TOPIC + distractor_topic[b, s]

    key_length = lengths[rows, key_sentence]
    marker_at = uniform_below(key_length)
    topic_at = uniform_below(key_length - 1)
    topic_at = topic_at + (topic_at >= marker_at).long()  # distinct from the marker's slot
    ids[rows, key_sentence, marker_at] = MARKER
    ids[rows, key_sentence, topic_at] = FIRST_TOPIC + labels
    key_mask = torch.zeros_like(word_mask)
    key_mask[rows, key_sentence, marker_at] = True
    key_mask[rows, key_sentence, topic_at] = True

    ids = torch.where(position == lengths[..., None], PERIOD, ids)
    ids = ids.masked_fill(~word_mask, PAD)
    return DocumentBatch(ids, word_mask, sentence_mask, labels, key_mask, key_sentence)


def flatten_documents(x: Tensor, word_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Concatenate the real words of each document: the flat view of a padded batch.

    Args:
        x: ``(batch, n_sentences, n_words, ...)``: ids, a boolean mask, or features.
        word_mask: ``(batch, n_sentences, n_words)`` boolean, True = real word.

    Returns:
        ``flat`` ``(batch, n_tokens, ...)`` (zero/False/PAD after each document's last word)
        and ``mask`` ``(batch, n_tokens)``, True = real token; ``n_tokens`` is the longest
        document's word count.
    """
    check_tensor(x, "x")
    check_bool_mask(word_mask, "word_mask")
    check_rank(word_mask, 3, "word_mask", "(batch, n_sentences, n_words)")
    if x.shape[:3] != word_mask.shape:
        raise ValueError(
            f"`x` must start with the shape of `word_mask` {tuple(word_mask.shape)}, "
            f"got {tuple(x.shape)}"
        )
    batch = word_mask.shape[0]
    real = word_mask.flatten(1)  # (batch, n_sentences * n_words)
    counts = real.sum(-1)
    width = int(counts.max()) if batch else 0
    # The slot of each real word in the flat row is the number of real words before it.
    slot = real.long().cumsum(-1) - 1
    rows = torch.arange(batch, device=x.device)[:, None].expand_as(slot)
    flat = x.new_zeros((batch, width, *x.shape[3:]))
    flat[rows[real], slot[real]] = x.flatten(1, 2)[real]
    mask = torch.arange(width, device=x.device) < counts[:, None]
    return flat, mask


def decode_document(input_ids: Tensor, word_mask: Tensor | None = None) -> str:
    """Render one document ``(n_sentences, n_words)`` (or flat ``(n_tokens,)``) as text."""
    check_tensor(input_ids, "input_ids")
    ids = input_ids.reshape(-1)
    if word_mask is not None:
        ids = ids[word_mask.reshape(-1)]
    return " ".join(DOCUMENT_VOCAB[i] for i in ids.tolist() if i != PAD)


__all__ = [
    "DOCUMENT_VOCAB",
    "DOCUMENT_VOCAB_SIZE",
    "FILLER_WORDS",
    "FIRST_FILLER",
    "FIRST_TOPIC",
    "MARKER",
    "PERIOD",
    "TOPIC_WORDS",
    "DocumentBatch",
    "decode_document",
    "document_task",
    "flatten_documents",
]
