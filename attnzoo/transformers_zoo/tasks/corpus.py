"""A seeded toy text corpus for tiny pretraining runs: documents of sentences from a grammar.

Every document has a *topic* (farm, sea, space, city, kitchen, forest), and its sentences
draw their nouns and verbs from that topic. Sentences are chained: the subject of sentence
``i + 1`` is the object of sentence ``i`` ("the old farmer feeds the horse . the horse
pulls the tractor ."). So the corpus has what the pretraining objectives need to learn
something in a few hundred steps: local grammar (masked and causal LM), a topic shared
inside a document and a chain from one sentence to the next (next-sentence prediction and
sentence-order prediction). Words are long enough ("astronauts", "lighthouse") for a small
WordPiece or BPE vocabulary to split some of them into pieces.
"""

from __future__ import annotations

import random

from ...attention.validation import check_int

TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "farm": (
        ("farmer", "cow", "horse", "tractor", "barn", "chicken", "sheep"),
        ("feeds", "pulls", "watches", "follows", "cleans"),
    ),
    "sea": (
        ("sailor", "boat", "fish", "lighthouse", "captain", "whale", "harbour"),
        ("steers", "catches", "passes", "signals", "follows"),
    ),
    "space": (
        ("astronaut", "rocket", "planet", "satellite", "comet", "station", "telescope"),
        ("launches", "orbits", "observes", "repairs", "follows"),
    ),
    "city": (
        ("driver", "taxi", "tower", "bridge", "police", "market", "subway"),
        ("crosses", "blocks", "reaches", "passes", "watches"),
    ),
    "kitchen": (
        ("cook", "oven", "knife", "kettle", "baker", "spoon", "pancake"),
        ("heats", "cuts", "stirs", "serves", "cleans"),
    ),
    "forest": (
        ("hunter", "wolf", "deer", "owl", "squirrel", "mushroom", "river"),
        ("chases", "hides", "watches", "finds", "follows"),
    ),
}
"""Topic -> (nouns, verbs)."""

ADJECTIVES = ("old", "young", "small", "big", "quiet", "happy", "tired", "clever")


def grammar_document(topic: str, n_sentences: int, rng: random.Random) -> list[str]:
    """One document: ``n_sentences`` chained sentences about ``topic``, each ending in " .".

    Args:
        topic: a key of :data:`TOPICS`.
        n_sentences: number of sentences (>= 1).
        rng: the random source (a seeded :class:`random.Random`).
    """
    if topic not in TOPICS:
        raise ValueError(f"`topic` must be one of {tuple(TOPICS)}, got {topic!r}")
    check_int(n_sentences, "n_sentences")
    nouns, verbs = TOPICS[topic]
    subject = rng.choice(nouns)
    sentences = []
    for _ in range(n_sentences):
        obj = rng.choice([noun for noun in nouns if noun != subject])
        words = ["the"]
        if rng.random() < 0.5:
            words.append(rng.choice(ADJECTIVES))
        words += [subject, rng.choice(verbs), "the", obj, "."]
        sentences.append(" ".join(words))
        subject = obj  # the chain: this sentence's object is the next one's subject
    return sentences


def grammar_corpus(
    n_documents: int,
    *,
    min_sentences: int = 3,
    max_sentences: int = 6,
    seed: int = 0,
) -> list[list[str]]:
    """``n_documents`` documents (lists of sentence strings), topics drawn uniformly.

    Args:
        n_documents: number of documents.
        min_sentences, max_sentences: each document's sentence count is uniform in this
            inclusive range.
        seed: the seed of the draw (same seed, same corpus).
    """
    check_int(n_documents, "n_documents")
    check_int(min_sentences, "min_sentences")
    check_int(max_sentences, "max_sentences")
    if max_sentences < min_sentences:
        raise ValueError(
            f"`max_sentences` must be >= `min_sentences` ({min_sentences}), got {max_sentences}"
        )
    rng = random.Random(seed)
    topics = tuple(TOPICS)
    return [
        grammar_document(rng.choice(topics), rng.randint(min_sentences, max_sentences), rng)
        for _ in range(n_documents)
    ]


__all__ = ["ADJECTIVES", "TOPICS", "grammar_corpus", "grammar_document"]
