"""Tree decoding from attention: Chu-Liu-Edmonds against brute force, MAX, UAS, baselines."""

from __future__ import annotations

import itertools

import pytest
import torch

from attnzoo.transformers_zoo.analysis import trees


def brute_force_best(scores: torch.Tensor, root: int = 0) -> float:
    """Best total over every parent assignment that forms an arborescence at ``root``."""
    n = scores.shape[0]
    others = [v for v in range(n) if v != root]
    best = float("-inf")
    choices = [[h for h in range(n) if h != v] for v in others]
    for parents in itertools.product(*choices):
        heads = dict(zip(others, parents, strict=True))
        if all(_reaches_root(v, heads, root) for v in others):
            best = max(best, sum(float(scores[heads[v], v]) for v in others))
    return best


def _reaches_root(v: int, heads: dict[int, int], root: int) -> bool:
    seen = set()
    while v != root:
        if v in seen:
            return False
        seen.add(v)
        v = heads[v]
    return True


def is_arborescence(heads: list[int], root: int) -> bool:
    mapping = {v: h for v, h in enumerate(heads) if v != root}
    return heads[root] == -1 and all(_reaches_root(v, mapping, root) for v in mapping)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_chu_liu_edmonds_matches_brute_force(n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    for trial in range(25 if n < 6 else 8):
        scores = torch.randn(n, n, generator=generator)
        if trial % 3 == 0:  # ties and integer scores force cycles to be contracted
            scores = torch.randint(0, 3, (n, n), generator=generator).double()
        root = trial % n
        heads = trees.chu_liu_edmonds(scores, root=root)
        assert is_arborescence(heads, root)
        total = sum(float(scores[heads[v], v]) for v in range(n) if v != root)
        assert total == pytest.approx(brute_force_best(scores, root), abs=1e-9)


def test_chu_liu_edmonds_contracts_a_cycle() -> None:
    # 1 and 2 prefer each other (a cycle); the best tree enters the cycle from the root at
    # the node whose cycle arc is cheapest to drop.
    scores = torch.full((3, 3), -1.0)
    scores[1, 2], scores[2, 1] = 10.0, 9.0
    scores[0, 1], scores[0, 2] = 1.0, 0.0
    assert trees.chu_liu_edmonds(scores) == [-1, 0, 1]


def test_chu_liu_edmonds_respects_forbidden_arcs_and_errors() -> None:
    scores = torch.zeros(4, 4)
    scores[0, 1:] = float("-inf")
    scores[0, 3] = 0.0
    heads = trees.chu_liu_edmonds(scores)
    assert [v for v in range(1, 4) if heads[v] == 0] == [3]
    blocked = torch.zeros(3, 3)
    blocked[:, 2] = float("-inf")
    with pytest.raises(ValueError, match="node 2"):
        trees.chu_liu_edmonds(blocked)
    with pytest.raises(ValueError, match="square"):
        trees.chu_liu_edmonds(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="NaN"):
        trees.chu_liu_edmonds(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="root"):
        trees.chu_liu_edmonds(torch.zeros(3, 3), root=3)


def test_max_and_mst_recover_a_tree_written_into_attention() -> None:
    gold = [2, 3, 0, 5, 3]  # the dog chased the cat
    attention = torch.full((5, 5), 0.05)
    for d, h in enumerate(gold, start=1):
        if h:
            attention[d - 1, h - 1] = 0.8  # each word attends to its head
    attention = attention / attention.sum(-1, keepdim=True)
    assert trees.decode_max(attention, "dependent_to_head", root=3) == gold
    assert trees.decode_mst(attention, "dependent_to_head", root=3) == gold
    assert trees.decode_mst(attention, "dependent_to_head") == gold
    # Read the other way, the same map is the transposed tree's evidence.
    assert trees.decode_mst(attention.T, "head_to_dependent", root=3) == gold
    with pytest.raises(ValueError, match="direction"):
        trees.decode_max(attention, "sideways")
    with pytest.raises(ValueError, match="root"):
        trees.decode_mst(attention, "dependent_to_head", root=6)


def test_mst_returns_a_tree_where_max_makes_a_cycle() -> None:
    attention = torch.tensor([[0.0, 0.9, 0.1], [0.9, 0.0, 0.1], [0.5, 0.5, 0.0]])
    assert trees.decode_max(attention, "dependent_to_head") == [2, 1, 1]
    heads = trees.decode_mst(attention, "dependent_to_head", root=3)
    assert heads.count(0) == 1 and heads[2] == 0
    assert is_arborescence([-1, *heads], 0)


def test_uas_undirected_relations_and_baselines() -> None:
    gold = [[2, 0, 2]]
    assert trees.uas([[2, 0, 2]], gold) == 1.0
    # word 1 -> 2 reversed: wrong directed, right undirected.
    assert trees.uas([[0, 1, 2]], gold) == pytest.approx(1 / 3)
    assert trees.uas([[0, 1, 2]], gold, undirected=True) == pytest.approx(2 / 3)
    relations = [["nsubj", "root", "obj"]]
    table = trees.relation_accuracy([[3, 0, 2]], gold, relations, undirected=False)
    assert table == {"all": 0.5, "nsubj": 0.0, "obj": 1.0}  # the root is not scored
    assert trees.right_branching(3) == [2, 3, 0]
    offsets = trees.best_offsets([[2, 0, 2], [2, 0, 2, 3]], [relations[0], [*relations[0], "x"]])
    assert offsets == {"nsubj": 1, "obj": -1, "x": -1}
    assert trees.offset_heads(3, relations[0], offsets) == [2, 0, 2]
    with pytest.raises(ValueError, match="one head per word"):
        trees.uas([[1]], gold)


def test_probe_heads_finds_the_planted_head() -> None:
    gold = [[2, 3, 0, 3], [2, 0, 2]]
    relations = [["det", "nsubj", "root", "punct"], ["nsubj", "root", "obj"]]
    maps = []
    generator = torch.Generator().manual_seed(0)
    for heads in gold:
        w = len(heads)
        attention = torch.rand(2, 3, w, w, generator=generator).softmax(-1)
        for d, h in enumerate(heads, start=1):
            if h:
                attention[1, 2, d - 1] = 0.0
                attention[1, 2, d - 1, h - 1] = 1.0
        maps.append(attention)
    for method in ("max", "mst"):
        result = trees.probe_heads(maps, gold, relations, method=method)
        assert result.best_head("all") == (1, 2, 1.0)
        assert result.accuracy["det"].shape == (2, 3)
    with pytest.raises(ValueError, match="relation"):
        result.best_head("amod")
    with pytest.raises(ValueError, match="method"):
        trees.probe_heads(maps, gold, relations, method="argmax")
    with pytest.raises(ValueError, match="words"):
        trees.probe_heads(maps[::-1], gold, relations)
