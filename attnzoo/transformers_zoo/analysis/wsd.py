"""Word sense disambiguation with contextual embeddings.

A word's contextual vector (the mean of its pieces' hidden states at one layer) depends on
its sentence, so the senses of an ambiguous word form clusters: a nearest-neighbour (or
nearest-centroid) classifier over sense-labelled examples tells them apart. The classic
example is "duck": the bird, the verb (to lower one's head) and the proper noun
(:data:`DUCK_EXAMPLES`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention.validation import check_int, check_rank
from .capture import encode_texts

DUCK_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("A duck swam across the pond with her ducklings.", "animal"),
    ("We fed bread to the duck at the lake.", "animal"),
    ("The duck quacked loudly near the river bank.", "animal"),
    ("A wild duck landed on the frozen water.", "animal"),
    ("The hunter saw a duck fly over the marsh.", "animal"),
    ("The farmer keeps a duck and three geese in the yard.", "animal"),
    ("A mallard duck has a shiny green head.", "animal"),
    ("The little duck waddled behind its mother.", "animal"),
    ("She cooked roast duck with orange sauce.", "animal"),
    ("A duck dived under the water to find food.", "animal"),
    ("You have to duck when you walk through that low door.", "verb"),
    ("He had to duck to avoid the flying ball.", "verb"),
    ("Duck or the branch will hit your head!", "verb"),
    ("The boxer tried to duck the punch.", "verb"),
    ("She ducked behind the car to hide.", "verb"),
    ("The politician tried to duck the difficult question.", "verb"),
    ("I saw him duck under the fence.", "verb"),
    ("Kids duck down when the teacher turns around.", "verb"),
    ("The soldiers duck into the trench when the shelling starts.", "verb"),
    ("He ducked his head to get into the tent.", "verb"),
    ("Donald Duck wears a sailor shirt and a blue hat.", "name"),
    ("Daffy Duck is a cartoon character from Looney Tunes.", "name"),
    ("The Oregon Ducks won the college football game.", "name"),
    ("Mr. Duck signed the contract yesterday.", "name"),
    ("Donald Duck and Mickey Mouse appeared in the film.", "name"),
    ("The reality show Duck Dynasty ran for many seasons.", "name"),
    ("Professor Duck teaches chemistry at the university.", "name"),
    ("Scrooge McDuck is the uncle of Donald Duck.", "name"),
    ("The Anaheim Ducks play ice hockey in California.", "name"),
    ("Daisy Duck is the girlfriend of Donald.", "name"),
)
"""(sentence, sense) pairs for the word "duck": ``animal``, ``verb`` or ``name``."""

DUCK_FORMS = ("duck", "ducks", "ducked", "ducking")


def _word_spans(word_ids: Sequence[int | None]) -> dict[int, list[int]]:
    spans: dict[int, list[int]] = {}
    for token, word in enumerate(word_ids):
        if word is not None:
            spans.setdefault(word, []).append(token)
    return spans


@torch.no_grad()
def contextual_word_vectors(
    model: nn.Module,
    tokenizer: Any,
    sentences: Sequence[str],
    forms: str | Sequence[str],
    layer: int = -1,
) -> Tensor:
    """The contextual vector of a target word in each sentence.

    Args:
        model: a BERT-family zoo model returning ``hidden_states``
            (``output_hidden_states=True``).
        tokenizer: a ``tokenizers.Tokenizer`` (with its [CLS]/[SEP] post-processor).
        sentences: sentences each holding the target word.
        forms: the target word's forms (case-insensitive); its first occurrence is used.
        layer: which hidden state (0 = embeddings, -1 = last layer).

    Returns:
        ``(len(sentences), hidden_size)``: per sentence, the mean of the target word's
        pieces' hidden states.

    Raises:
        ValueError: a sentence does not hold the word.
    """
    wanted = {forms.lower()} if isinstance(forms, str) else {f.lower() for f in forms}
    ids, mask, _, _ = encode_texts(tokenizer, sentences)
    positions = []
    for row, sentence in enumerate(sentences):
        encoding = tokenizer.encode(sentence)
        spans = _word_spans(encoding.word_ids)
        found = None
        for tokens in spans.values():
            start, end = encoding.offsets[tokens[0]][0], encoding.offsets[tokens[-1]][1]
            if sentence[start:end].lower() in wanted:
                found = tokens
                break
        if found is None:
            raise ValueError(f"sentence {row} does not hold {sorted(wanted)}: {sentence!r}")
        positions.append(found)
    was_training = model.training
    model.eval()
    try:
        out = model(ids, attention_mask=mask, output_hidden_states=True)
    finally:
        model.train(was_training)
    if not getattr(out, "hidden_states", None):
        raise ValueError(f"{type(model).__name__} returned no hidden_states")
    hidden = out.hidden_states[layer].float()
    return torch.stack([hidden[row, tokens].mean(0) for row, tokens in enumerate(positions)])


class SenseClassifier:
    """k-nearest-neighbour (cosine) or nearest-centroid sense classifier.

    Args:
        method: ``"knn"`` (majority of the ``k`` most similar examples, ties to the most
            similar) or ``"centroid"`` (the sense whose mean unit vector is most similar).
        k: neighbours for ``"knn"``.
    """

    def __init__(self, method: str = "knn", k: int = 3) -> None:
        if method not in ("knn", "centroid"):
            raise ValueError(f"`method` must be 'knn' or 'centroid', got {method!r}")
        self.method = method
        self.k = check_int(k, "k")
        self.vectors: Tensor | None = None
        self.labels: list[str] = []

    def fit(self, vectors: Tensor, labels: Sequence[str]) -> SenseClassifier:
        """Store the sense-labelled examples ``vectors`` ``(N, D)``."""
        check_rank(vectors, 2, "vectors", "(N, dim)")
        if len(labels) != vectors.shape[0]:
            raise ValueError(f"`labels` must hold {vectors.shape[0]} senses, got {len(labels)}")
        self.vectors = F.normalize(vectors.detach().float(), dim=-1)
        self.labels = list(labels)
        return self

    def predict(self, vectors: Tensor) -> list[str]:
        """The sense of each row of ``vectors`` ``(M, D)``."""
        if self.vectors is None:
            raise ValueError("call `fit` before `predict`")
        check_rank(vectors, 2, "vectors", "(M, dim)")
        queries = F.normalize(vectors.detach().float(), dim=-1)
        if self.method == "centroid":
            senses = sorted(set(self.labels))
            centroids = torch.stack(
                [
                    self.vectors[[i for i, s in enumerate(self.labels) if s == sense]].mean(0)
                    for sense in senses
                ]
            )
            best = (queries @ F.normalize(centroids, dim=-1).T).argmax(-1)
            return [senses[i] for i in best.tolist()]
        similarity = queries @ self.vectors.T
        k = min(self.k, len(self.labels))
        result = []
        for row in similarity.topk(k, dim=-1).indices.tolist():
            votes = Counter(self.labels[i] for i in row)
            top = max(votes.values())
            result.append(next(self.labels[i] for i in row if votes[self.labels[i]] == top))
        return result

    def accuracy(self, vectors: Tensor, labels: Sequence[str]) -> float:
        """Fraction of ``vectors`` whose predicted sense is ``labels``."""
        predicted = self.predict(vectors)
        if len(labels) != len(predicted):
            raise ValueError(f"`labels` must hold {len(predicted)} senses, got {len(labels)}")
        return sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)


def most_frequent_sense_accuracy(train_labels: Sequence[str], test_labels: Sequence[str]) -> float:
    """The baseline: always predict the training set's most frequent sense."""
    if not train_labels or not test_labels:
        raise ValueError("`train_labels` and `test_labels` must not be empty")
    sense = Counter(train_labels).most_common(1)[0][0]
    return sum(label == sense for label in test_labels) / len(test_labels)


__all__ = [
    "DUCK_EXAMPLES",
    "DUCK_FORMS",
    "SenseClassifier",
    "contextual_word_vectors",
    "most_frequent_sense_accuracy",
]
