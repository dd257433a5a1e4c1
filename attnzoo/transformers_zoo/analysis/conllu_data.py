"""Gold dependency trees: a small grammar with known heads, written and read as CoNLL-U.

The grammar reuses the topic vocabulary of :mod:`attnzoo.transformers_zoo.tasks.corpus`
and builds sentences such as ``the old farmer often feeds the horse of the captain near
the barn and cleans the tractor .`` with Universal Dependencies relations: ``det``,
``amod``, ``nsubj``, ``advmod``, ``root``, ``obj``, ``case``, ``nmod``, ``obl``, ``cc``,
``conj``, ``punct``. Every head is known by construction, so a model trained on the
grammar's sentences can be probed against exact trees.

The package ships a treebank of this grammar (:func:`gold_treebank_path`);
:func:`write_grammar_treebank` regenerates it. Files are read and written with the
``conllu`` library.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ...attention.validation import check_int
from ..tasks.corpus import ADJECTIVES, TOPICS

ADVERBS = ("often", "slowly", "quietly", "always")
PREPOSITIONS = ("in", "near", "behind", "under")
TREEBANK_FILE = "grammar_treebank.conllu"
TREEBANK_SENTENCES = 240
TREEBANK_SEED = 0


@dataclass
class DependencyTree:
    """One sentence with its gold tree.

    Attributes:
        words: the ``W`` word forms.
        heads: 1-based head of each word, 0 for the root.
        relations: the dependency relation of each word.
    """

    words: list[str]
    heads: list[int]
    relations: list[str]

    def __post_init__(self) -> None:
        n = len(self.words)
        if len(self.heads) != n or len(self.relations) != n:
            raise ValueError(
                f"`heads` and `relations` must have one entry per word ({n}), got "
                f"{len(self.heads)} and {len(self.relations)}"
            )
        if self.heads.count(0) != 1:
            raise ValueError(f"`heads` must have exactly one root (0), got {self.heads}")
        for d, h in enumerate(self.heads, start=1):
            if not 0 <= h <= n or h == d:
                raise ValueError(f"word {d} has head {h}; heads must be in [0, {n}], not itself")

    @property
    def text(self) -> str:
        """The words joined by spaces."""
        return " ".join(self.words)

    @property
    def root(self) -> int:
        """1-based index of the root word."""
        return self.heads.index(0) + 1


class _Builder:
    """Appends words with symbolic heads, resolved to 1-based indices at the end."""

    def __init__(self) -> None:
        self.words: list[str] = []
        self.heads: list[int | None] = []
        self.relations: list[str] = []

    def add(self, word: str, relation: str, head: int | None = None) -> int:
        self.words.append(word)
        self.heads.append(head)
        self.relations.append(relation)
        return len(self.words)

    def attach(self, index: int, head: int) -> None:
        self.heads[index - 1] = head

    def tree(self) -> DependencyTree:
        heads = [0 if h is None else h for h in self.heads]
        return DependencyTree(list(self.words), heads, list(self.relations))


def _noun_phrase(
    builder: _Builder, noun: str, relation: str, nouns: tuple[str, ...], rng: random.Random
) -> int:
    """``the [adj] noun [of the noun2]``; returns the noun's index (its head set later)."""
    det = builder.add("the", "det")
    adj = builder.add(rng.choice(ADJECTIVES), "amod") if rng.random() < 0.4 else None
    head = builder.add(noun, relation)
    builder.attach(det, head)
    if adj is not None:
        builder.attach(adj, head)
    if rng.random() < 0.25:
        case = builder.add("of", "case")
        det2 = builder.add("the", "det")
        other = builder.add(rng.choice([n for n in nouns if n != noun]), "nmod", head)
        builder.attach(case, other)
        builder.attach(det2, other)
    return head


def grammar_tree(rng: random.Random, topic: str | None = None) -> DependencyTree:
    """One sentence of the grammar with its tree (see the module docstring).

    Args:
        rng: the random source (a seeded :class:`random.Random`).
        topic: a key of :data:`~attnzoo.transformers_zoo.tasks.corpus.TOPICS`; None draws one.
    """
    if topic is None:
        topic = rng.choice(tuple(TOPICS))
    if topic not in TOPICS:
        raise ValueError(f"`topic` must be one of {tuple(TOPICS)}, got {topic!r}")
    nouns, verbs = TOPICS[topic]
    subject, obj, place, obj2 = rng.sample(nouns, 4)
    builder = _Builder()
    subj = _noun_phrase(builder, subject, "nsubj", nouns, rng)
    adverb = builder.add(rng.choice(ADVERBS), "advmod") if rng.random() < 0.3 else None
    verb = builder.add(rng.choice(verbs), "root")
    builder.attach(subj, verb)
    if adverb is not None:
        builder.attach(adverb, verb)
    builder.attach(_noun_phrase(builder, obj, "obj", nouns, rng), verb)
    if rng.random() < 0.4:
        case = builder.add(rng.choice(PREPOSITIONS), "case")
        oblique = _noun_phrase(builder, place, "obl", nouns, rng)
        builder.attach(case, oblique)
        builder.attach(oblique, verb)
    if rng.random() < 0.3:
        cc = builder.add("and", "cc")
        second = builder.add(rng.choice(verbs), "conj", verb)
        builder.attach(cc, second)
        builder.attach(_noun_phrase(builder, obj2, "obj", nouns, rng), second)
    builder.add(".", "punct", verb)
    return builder.tree()


def grammar_treebank(n_sentences: int, seed: int = 0) -> list[DependencyTree]:
    """``n_sentences`` grammar sentences with their trees (same seed, same treebank)."""
    check_int(n_sentences, "n_sentences")
    rng = random.Random(seed)
    return [grammar_tree(rng) for _ in range(n_sentences)]


def _conllu() -> Any:
    try:
        import conllu
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading and writing CoNLL-U needs the `conllu` package: pip install conllu"
        ) from error
    return conllu


def to_conllu(trees: list[DependencyTree]) -> str:
    """The trees as CoNLL-U text (one block per sentence, ``# text`` comments)."""
    conllu = _conllu()
    blocks = []
    for tree in trees:
        tokens = [
            {
                "id": i,
                "form": word,
                "lemma": "_",
                "upos": "_",
                "xpos": None,
                "feats": None,
                "head": head,
                "deprel": rel,
                "deps": None,
                "misc": None,
            }
            for i, (word, head, rel) in enumerate(
                zip(tree.words, tree.heads, tree.relations, strict=True), start=1
            )
        ]
        blocks.append(conllu.TokenList(tokens, metadata={"text": tree.text}).serialize())
    return "".join(blocks)


def parse_conllu(text: str) -> list[DependencyTree]:
    """Parse CoNLL-U text into trees. Multi-word token lines (``1-2``) and empty nodes
    (``1.1``) are skipped; the basic tree (HEAD, DEPREL) is kept."""
    conllu = _conllu()
    trees = []
    for sentence in conllu.parse(text):
        words = [token for token in sentence if isinstance(token["id"], int)]
        if not words:
            continue
        trees.append(
            DependencyTree(
                [token["form"] for token in words],
                [int(token["head"]) for token in words],
                [str(token["deprel"]) for token in words],
            )
        )
    return trees


def write_conllu(trees: list[DependencyTree], path: str | os.PathLike[str]) -> Path:
    """Write ``trees`` to a CoNLL-U file; returns its path."""
    path = Path(path)
    path.write_text(to_conllu(trees), encoding="utf-8")
    return path


def read_conllu(path: str | os.PathLike[str]) -> list[DependencyTree]:
    """Read a CoNLL-U file (see :func:`parse_conllu`)."""
    return parse_conllu(Path(path).read_text(encoding="utf-8"))


def gold_treebank_path() -> Path:
    """The shipped CoNLL-U treebank of the grammar (``TREEBANK_SENTENCES`` sentences)."""
    return Path(str(resources.files(__package__).joinpath("data").joinpath(TREEBANK_FILE)))


def load_gold_treebank() -> list[DependencyTree]:
    """The shipped treebank, parsed."""
    return read_conllu(gold_treebank_path())


def write_grammar_treebank(
    path: str | os.PathLike[str],
    n_sentences: int = TREEBANK_SENTENCES,
    seed: int = TREEBANK_SEED,
) -> Path:
    """Regenerate the shipped treebank (with the defaults) or another one at ``path``."""
    return write_conllu(grammar_treebank(n_sentences, seed), path)


__all__ = [
    "DependencyTree",
    "gold_treebank_path",
    "grammar_tree",
    "grammar_treebank",
    "load_gold_treebank",
    "parse_conllu",
    "read_conllu",
    "to_conllu",
    "write_conllu",
    "write_grammar_treebank",
]
