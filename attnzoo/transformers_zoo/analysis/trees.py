"""Dependency trees from attention: MAX and MST decoding, UAS, baselines.

A tree over ``W`` words is a list ``heads`` of length ``W``: ``heads[d]`` is the 1-based
index of word ``d + 1``'s head, 0 for the root (the CoNLL-U convention). A word-level
attention map ``A`` ``(W, W)`` has ``A[i, j]`` = attention from word ``i`` to word ``j``.

Decoding a tree from one head (Htut et al. 2019) goes one of two directions:

* ``"dependent_to_head"``: a word attends to its head; the score of arc ``h -> d`` is
  ``A[d, h]``.
* ``"head_to_dependent"``: a head attends to its dependents; the score is ``A[h, d]``.

MAX takes each word's best-scoring other word as its head (not necessarily a tree); MST
takes the maximum spanning arborescence (:func:`chu_liu_edmonds`) rooted at an artificial
ROOT node whose only arc goes to the gold root word, as Htut et al. do.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...attention.validation import check_rank, check_tensor

DIRECTIONS = ("dependent_to_head", "head_to_dependent")


def _check_square(scores: Tensor, name: str) -> None:
    check_rank(scores, 2, name, "(n, n)")
    if scores.shape[0] != scores.shape[1]:
        raise ValueError(f"`{name}` must be square (n, n), got shape {tuple(scores.shape)}")


def _find_cycle(heads: list[int], active: Sequence[int]) -> list[int] | None:
    """A cycle of the graph ``d -> heads[d]`` over ``active`` nodes, or None."""
    colour: dict[int, int] = {}
    for start in active:
        if start in colour:
            continue
        path: list[int] = []
        node = start
        while node != -1 and node not in colour:
            colour[node] = start
            path.append(node)
            node = heads[node]
        if node != -1 and colour.get(node) == start:
            return path[path.index(node) :]
    return None


def chu_liu_edmonds(scores: Tensor, root: int = 0) -> list[int]:
    """Maximum spanning arborescence (Chu-Liu 1965, Edmonds 1967), O(n^3).

    Args:
        scores: ``(n, n)`` arc scores, ``scores[h, d]`` = score of the arc ``h -> d``
            (``-inf`` forbids an arc). The diagonal and arcs into ``root`` are ignored.
        root: the root node.

    Returns:
        ``heads`` of length ``n``: ``heads[d]`` is ``d``'s parent, ``-1`` for ``root``.
        The tree maximises the sum of its arcs' scores.

    Raises:
        ValueError: ``scores`` is not square, holds NaN, or no arborescence exists (a node
            every arc into which is forbidden).
    """
    check_tensor(scores, "scores")
    _check_square(scores, "scores")
    if torch.isnan(scores).any():
        raise ValueError("`scores` must not hold NaN")
    n = scores.shape[0]
    if not 0 <= root < n:
        raise ValueError(f"`root` must be in [0, {n}), got {root}")
    weight = scores.detach().to("cpu", torch.float64).numpy().copy()
    np.fill_diagonal(weight, -np.inf)
    weight[:, root] = -np.inf
    return _cle(weight, root)


def _cle(weight: np.ndarray, root: int) -> list[int]:
    """Recursive contraction on a score matrix with forbidden arcs at ``-inf``."""
    n = weight.shape[0]
    best_in = weight.argmax(axis=0)
    heads = [-1 if v == root else int(best_in[v]) for v in range(n)]
    for node in range(n):
        if node != root and weight[heads[node], node] == -np.inf:
            raise ValueError(f"no arborescence: node {node} has no allowed incoming arc")
    cycle = _find_cycle(heads, [v for v in range(n) if v != root])
    if cycle is None:
        return heads
    # Contract the cycle into one new node c: an arc u -> c is worth entering the cycle at
    # the node v that gains most from dropping v's cycle arc; c -> w keeps the best arc
    # from any cycle node.
    in_cycle = np.zeros(n, dtype=bool)
    in_cycle[cycle] = True
    rest = [v for v in range(n) if not in_cycle[v]]
    c = len(rest)
    cycle_arcs = np.array([weight[heads[v], v] for v in cycle])
    gains = weight[np.ix_(rest, cycle)] - cycle_arcs  # (c, |cycle|)
    enter = gains.argmax(axis=1)
    leave = weight[np.ix_(cycle, rest)].argmax(axis=0)
    small = np.full((c + 1, c + 1), -np.inf)
    small[:c, :c] = weight[np.ix_(rest, rest)]
    small[:c, c] = cycle_arcs.sum() + gains[np.arange(c), enter]
    small[c, :c] = weight[np.ix_(cycle, rest)][leave, np.arange(c)]
    small_heads = _cle(small, rest.index(root))
    result = [-1] * n
    for i, w in enumerate(rest):
        parent = small_heads[i]
        if parent != -1:
            result[w] = cycle[leave[i]] if parent == c else rest[parent]
    for v in cycle:
        result[v] = heads[v]
    entry_parent = small_heads[c]
    result[cycle[enter[entry_parent]]] = rest[entry_parent]
    return result


def _arc_scores(attention: Tensor, direction: str) -> Tensor:
    """``scores[h, d]`` over words from a word-level map ``attention[i, j]``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"`direction` must be one of {DIRECTIONS}, got {direction!r}")
    return attention.transpose(0, 1) if direction == "dependent_to_head" else attention


def _check_word_attention(attention: Tensor) -> None:
    check_tensor(attention, "attention")
    _check_square(attention, "attention")


def decode_max(attention: Tensor, direction: str, root: int | None = None) -> list[int]:
    """MAX decoding: every word's head is its best-scoring other word.

    Args:
        attention: word-level attention ``(W, W)`` of one head.
        direction: ``"dependent_to_head"`` or ``"head_to_dependent"``.
        root: 1-based index of the gold root word; it gets head 0 (as the ROOT arc of
            :func:`decode_mst`), so MAX and MST are scored over the same arcs.

    Returns:
        ``heads`` of length ``W``, 1-based, 0 for ``root``.
    """
    _check_word_attention(attention)
    scores = _arc_scores(attention.detach().to(torch.float64), direction).clone()
    scores.fill_diagonal_(float("-inf"))
    if scores.shape[0] == 1:
        return [0]
    heads = [int(h) + 1 for h in scores.argmax(dim=0).tolist()]
    if root is not None:
        _check_root(root, len(heads))
        heads[root - 1] = 0
    return heads


def _check_root(root: int, n_words: int) -> None:
    if not 1 <= root <= n_words:
        raise ValueError(f"`root` must be a 1-based word index in [1, {n_words}], got {root}")


def decode_mst(attention: Tensor, direction: str, root: int | None = None) -> list[int]:
    """MST decoding: the maximum spanning arborescence of the head's arc scores.

    Args:
        attention: word-level attention ``(W, W)`` of one head.
        direction: ``"dependent_to_head"`` or ``"head_to_dependent"``.
        root: 1-based index of the gold root word: the only word ROOT may attach (Htut et
            al. 2019). None lets ROOT attach any single word, the one giving the best tree.

    Returns:
        ``heads`` of length ``W``, 1-based, 0 for the root word: a tree.
    """
    _check_word_attention(attention)
    n_words = attention.shape[0]
    scores = _arc_scores(attention.detach().to(torch.float64), direction)
    full = torch.full((n_words + 1, n_words + 1), float("-inf"), dtype=torch.float64)
    full[1:, 1:] = scores
    candidates = [root] if root is not None else list(range(1, n_words + 1))
    if root is not None:
        _check_root(root, n_words)
    best: tuple[float, list[int]] | None = None
    for word in candidates:
        full[0, 1:] = float("-inf")
        full[0, word] = 0.0
        heads = chu_liu_edmonds(full, root=0)
        total = sum(float(full[heads[d], d]) for d in range(1, n_words + 1))
        if best is None or total > best[0]:
            best = (total, heads[1:])
    assert best is not None
    return best[1]


def right_branching(n_words: int) -> list[int]:
    """The right-branching baseline tree: every word's head is the next word, the last
    word is the root."""
    return [d + 2 for d in range(n_words - 1)] + [0]


def attachment_hits(
    predicted: Sequence[int], gold: Sequence[int], undirected: bool = True
) -> list[bool]:
    """Per word: is its gold arc (to ROOT for the root word) among the predicted arcs.

    Args:
        predicted, gold: 1-based head lists of the same length (0 = root).
        undirected: an arc counts in either direction (``d -> h`` or ``h -> d``), as in
            Htut et al.'s undirected UAS; else only the gold direction counts.
    """
    if len(predicted) != len(gold):
        raise ValueError(
            f"`predicted` must have one head per word ({len(gold)}), got {len(predicted)}"
        )
    hits = []
    for d, h in enumerate(gold, start=1):
        hit = predicted[d - 1] == h
        if undirected and not hit and h > 0:
            hit = predicted[h - 1] == d
        hits.append(hit)
    return hits


def uas(
    predicted: Sequence[Sequence[int]], gold: Sequence[Sequence[int]], undirected: bool = False
) -> float:
    """Unlabelled attachment score over sentences: fraction of words whose gold arc is
    predicted (directed by default)."""
    if len(predicted) != len(gold):
        raise ValueError(f"`predicted` must hold {len(gold)} sentences, got {len(predicted)}")
    hits = [
        x for p, g in zip(predicted, gold, strict=True) for x in attachment_hits(p, g, undirected)
    ]
    if not hits:
        raise ValueError("`gold` holds no words")
    return sum(hits) / len(hits)


def relation_accuracy(
    predicted: Sequence[Sequence[int]],
    gold: Sequence[Sequence[int]],
    relations: Sequence[Sequence[str]],
    undirected: bool = True,
) -> dict[str, float]:
    """Attachment accuracy per dependency relation (the gold relation of each word) and
    ``"all"`` over every word. The root word is left out: the decoders are given it."""
    correct: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    for p, g, rels in zip(predicted, gold, relations, strict=True):
        hits = attachment_hits(p, g, undirected)
        for hit, rel, h in zip(hits, rels, g, strict=True):
            if h == 0:
                continue
            for key in (rel, "all"):
                correct[key] += hit
                total[key] += 1
    return {key: correct[key] / total[key] for key in sorted(total)}


def best_offsets(
    gold: Sequence[Sequence[int]], relations: Sequence[Sequence[str]]
) -> dict[str, int]:
    """Fixed-offset baseline (Clark et al. 2019): for each relation, the most common
    offset ``head - dependent`` in ``gold`` (ties: the smallest absolute offset)."""
    counts: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for g, rels in zip(gold, relations, strict=True):
        for d, (h, rel) in enumerate(zip(g, rels, strict=True), start=1):
            if h > 0:
                counts[rel][h - d] += 1
    return {
        rel: max(offsets, key=lambda k: (offsets[k], -abs(k), k)) for rel, offsets in counts.items()
    }


def offset_heads(n_words: int, relations: Sequence[str], offsets: dict[str, int]) -> list[int]:
    """Heads predicted by fixed offsets: word ``d`` of relation ``r`` -> ``d + offsets[r]``
    (0 when outside the sentence or ``r`` has no offset)."""
    heads = []
    for d, rel in enumerate(relations, start=1):
        h = d + offsets[rel] if rel in offsets else 0
        heads.append(h if 1 <= h <= n_words else 0)
    return heads


@dataclass
class HeadProbeResult:
    """Accuracy of every attention head as a dependency parser.

    Attributes:
        method: ``"max"`` or ``"mst"``.
        direction: one of :data:`DIRECTIONS`.
        accuracy: relation (and ``"all"``) -> ``(layers, heads)`` undirected accuracy.
    """

    method: str
    direction: str
    accuracy: dict[str, Tensor]

    def best_head(self, relation: str = "all") -> tuple[int, int, float]:
        """``(layer, head, accuracy)`` of the best head for ``relation``."""
        if relation not in self.accuracy:
            raise ValueError(f"`relation` must be one of {sorted(self.accuracy)}, got {relation!r}")
        table = self.accuracy[relation]
        flat = int(table.argmax())
        layer, head = divmod(flat, table.shape[1])
        return layer, head, float(table[layer, head])


def probe_heads(
    word_attentions: Sequence[Tensor],
    gold: Sequence[Sequence[int]],
    relations: Sequence[Sequence[str]],
    method: str = "max",
    direction: str = "dependent_to_head",
    undirected: bool = True,
) -> HeadProbeResult:
    """Decode a tree from every head and score it against the gold trees (Htut et al.).

    Args:
        word_attentions: per sentence, word-level attention ``(layers, heads, W, W)``.
        gold: per sentence, 1-based heads (length ``W``).
        relations: per sentence, the relation of each word.
        method: ``"max"`` (:func:`decode_max`) or ``"mst"`` (:func:`decode_mst`, with the
            gold root).
        direction: see :data:`DIRECTIONS`.
        undirected: score undirected arcs (Htut et al.), else directed.
    """
    decoders = {"max": decode_max, "mst": decode_mst}
    if method not in decoders:
        raise ValueError(f"`method` must be one of {tuple(decoders)}, got {method!r}")
    if not len(word_attentions) == len(gold) == len(relations):
        raise ValueError(
            "`word_attentions`, `gold` and `relations` must hold as many sentences, got "
            f"{len(word_attentions)}, {len(gold)}, {len(relations)}"
        )
    if not word_attentions:
        raise ValueError("`word_attentions` must hold at least one sentence")
    layers, heads = word_attentions[0].shape[:2]
    decode = decoders[method]
    tables: dict[str, Tensor] = {}
    for layer in range(layers):
        for head in range(heads):
            predicted = []
            for attention, g in zip(word_attentions, gold, strict=True):
                check_rank(attention, 4, "word_attentions[i]", "(layers, heads, W, W)")
                if attention.shape[-1] != len(g):
                    raise ValueError(
                        f"a sentence's word attention covers {attention.shape[-1]} words, "
                        f"its gold tree {len(g)}"
                    )
                predicted.append(decode(attention[layer, head], direction, root=g.index(0) + 1))
            for rel, value in relation_accuracy(predicted, gold, relations, undirected).items():
                tables.setdefault(rel, torch.zeros(layers, heads))[layer, head] = value
    return HeadProbeResult(method, direction, tables)


__all__ = [
    "DIRECTIONS",
    "HeadProbeResult",
    "attachment_hits",
    "best_offsets",
    "chu_liu_edmonds",
    "decode_max",
    "decode_mst",
    "offset_heads",
    "probe_heads",
    "relation_accuracy",
    "right_branching",
    "uas",
]
