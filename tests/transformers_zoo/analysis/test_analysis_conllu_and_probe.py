"""The shipped gold treebank (CoNLL-U via the conllu library) and the probing classifier."""

from __future__ import annotations

import random

import pytest
import torch

from attnzoo.transformers_zoo.analysis import (
    AttentionProbe,
    DependencyTree,
    gold_treebank_path,
    grammar_tree,
    load_gold_treebank,
    make_probe_batch,
    parse_conllu,
    probe_uas,
    read_conllu,
    to_conllu,
    train_attention_probe,
    write_conllu,
    write_grammar_treebank,
)


def test_shipped_treebank_is_the_grammar_regenerated(tmp_path) -> None:
    shipped = gold_treebank_path()
    assert shipped.suffix == ".conllu" and shipped.is_file()
    regenerated = write_grammar_treebank(tmp_path / "again.conllu")
    assert regenerated.read_text() == shipped.read_text()
    trees = load_gold_treebank()
    assert len(trees) == 240
    relations = {rel for tree in trees for rel in tree.relations}
    assert {"det", "amod", "nsubj", "obj", "case", "nmod", "obl", "cc", "conj"} <= relations
    assert any(len(word) > 7 for tree in trees for word in tree.words)


def test_grammar_heads_are_the_intended_ones() -> None:
    tree = grammar_tree(random.Random(3), topic="farm")
    for d, (head, rel) in enumerate(zip(tree.heads, tree.relations, strict=True), 1):
        if rel == "det":
            assert tree.relations[head - 1] in ("nsubj", "obj", "obl", "nmod") and head > d
        if rel in ("nsubj", "obj", "punct", "advmod"):
            assert tree.relations[head - 1] in ("root", "conj")
        if rel == "root":
            assert head == 0 and tree.root == d
    with pytest.raises(ValueError, match="topic"):
        grammar_tree(random.Random(0), topic="desert")


def test_conllu_round_trip_and_library_parsing(tmp_path) -> None:
    trees = [DependencyTree(["dogs", "bark", "."], [2, 0, 2], ["nsubj", "root", "punct"])]
    path = write_conllu(trees, tmp_path / "x.conllu")
    assert read_conllu(path) == trees
    assert "# text = dogs bark ." in to_conllu(trees)
    # Multi-word tokens and empty nodes are skipped; the basic tree is kept.
    text = (
        "# text = du chat\n"
        "1-2\tdu\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "1\tde\t_\tADP\t_\t_\t3\tcase\t_\t_\n"
        "2\tle\t_\tDET\t_\t_\t3\tdet\t_\t_\n"
        "2.1\tvu\t_\t_\t_\t_\t_\t_\t_\t_\n"
        "3\tchat\t_\tNOUN\t_\t_\t0\troot\t_\t_\n\n"
    )
    (parsed,) = parse_conllu(text)
    assert parsed.words == ["de", "le", "chat"] and parsed.heads == [3, 3, 0]


def test_dependency_tree_validation() -> None:
    with pytest.raises(ValueError, match="one entry per word"):
        DependencyTree(["a", "b"], [0], ["root"])
    with pytest.raises(ValueError, match="exactly one root"):
        DependencyTree(["a", "b"], [0, 0], ["root", "root"])
    with pytest.raises(ValueError, match="word 2 has head 2"):
        DependencyTree(["a", "b"], [0, 2], ["root", "x"])


def planted(trees: list[list[int]], layers: int = 2, heads: int = 3, seed: int = 0):
    """Random attention in which head (1, 0) reads dependent -> head and head (0, 2)
    reads head -> dependent, each half-weighted with noise."""
    generator = torch.Generator().manual_seed(seed)
    maps = []
    for gold in trees:
        w = len(gold)
        attention = torch.rand(layers, heads, w, w, generator=generator).softmax(-1)
        for d, h in enumerate(gold, 1):
            if h:
                attention[1, 0, d - 1, h - 1] += 1.0
                attention[0, 2, h - 1, d - 1] += 1.0
        maps.append(attention / attention.sum(-1, keepdim=True))
    return maps


def test_probe_learns_the_planted_heads_and_beats_noise() -> None:
    trees = [t.heads for t in load_gold_treebank()[:60]]
    maps = planted(trees)
    train, test = make_probe_batch(maps[:40], trees[:40]), make_probe_batch(maps[40:], trees[40:])
    probe = train_attention_probe(train, steps=150)
    assert probe_uas(probe, test) > 0.9
    weights = probe.weights.detach()
    assert int(weights[0].argmax()) == 3  # head (1, 0), dependent-to-head direction
    assert int(weights[1].argmax()) == 2  # head (0, 2), read the other way
    noise = [torch.rand_like(m).softmax(-1) for m in maps]
    blind = train_attention_probe(make_probe_batch(noise[:40], trees[:40]), steps=150)
    assert probe_uas(blind, make_probe_batch(noise[40:], trees[40:])) < 0.5


def test_probe_with_word_features() -> None:
    trees = [t.heads for t in load_gold_treebank()[:30]]
    maps = planted(trees, seed=1)
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(len(g), 4, generator=generator) for g in trees]
    batch = make_probe_batch(maps, trees, features)
    probe = train_attention_probe(batch, steps=100)
    assert probe.feature_dim == 4 and probe_uas(probe, batch) > 0.9
    scores = probe(batch)
    assert scores.shape == (30, batch.mask.shape[1], batch.mask.shape[1] + 1)
    assert torch.isinf(scores[0, 0, 1]) and torch.isinf(scores[0, 0, -1])  # itself, padding
    with pytest.raises(ValueError, match="word features of size 4"):
        probe(make_probe_batch(maps, trees))
    with pytest.raises(ValueError, match="attention maps"):
        AttentionProbe(5)(batch)
    with pytest.raises(ValueError, match="gold"):
        make_probe_batch(maps, trees[:3])
    with pytest.raises(ValueError, match="gold heads"):
        train_attention_probe(make_probe_batch(maps))
