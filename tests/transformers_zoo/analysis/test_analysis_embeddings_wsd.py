"""Raw-embedding tools and the sense classifier on tiny inputs."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo import BertConfig, BertForMaskedLM, BertModel
from attnzoo.transformers_zoo.analysis import (
    SenseClassifier,
    most_frequent_sense_accuracy,
    nearest_tokens,
    pairwise_cosines,
    project_to_vocabulary,
    save_similarity_histograms,
    similarity_histogram,
)

TINY = dict(
    vocab_size=37,
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=20,
    max_position_embeddings=16,
)


def test_nearest_tokens_match_a_brute_force_search() -> None:
    matrix = torch.randn(37, 9, generator=torch.Generator().manual_seed(0))
    ids, cosines = nearest_tokens(matrix, 5, k=4)
    scores = {
        j: float(torch.cosine_similarity(matrix[5], matrix[j], dim=0)) for j in range(37) if j != 5
    }
    expected = sorted(scores, key=scores.get, reverse=True)[:4]
    assert ids.tolist() == expected
    assert cosines.tolist() == pytest.approx([scores[j] for j in expected], abs=1e-6)
    assert nearest_tokens(matrix, 5, k=1, exclude_self=False)[0].tolist() == [5]
    with pytest.raises(ValueError, match="token_id"):
        nearest_tokens(matrix, 37)
    with pytest.raises(ValueError, match="`k` must be at most 36"):
        nearest_tokens(matrix, 0, k=37)


def test_projection_of_the_last_layer_is_the_models_prediction() -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(**TINY)).eval()
    ids = torch.randint(5, 37, (2, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    top_ids, probs = project_to_vocabulary(model, ids, mask, top_k=3)
    assert top_ids.shape == probs.shape == (4, 2, 6, 3)  # embeddings + 3 layers
    logits = model(ids, attention_mask=mask).logits
    expected_probs, expected_ids = logits.softmax(-1).topk(3, dim=-1)
    assert torch.equal(top_ids[-1], expected_ids)
    torch.testing.assert_close(probs[-1], expected_probs)
    assert bool((probs[:, :, :, 0] >= probs[:, :, :, 1]).all())
    with pytest.raises(TypeError, match="masked-LM"):
        project_to_vocabulary(BertModel(BertConfig(**TINY)), ids)


def test_similarity_histograms(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(10, 5, generator=generator)
    cosines = pairwise_cosines(vectors)
    assert cosines.shape == (45,)
    assert float(cosines[0]) == pytest.approx(
        float(torch.cosine_similarity(vectors[0], vectors[1], dim=0)), abs=1e-6
    )
    counts, edges = similarity_histogram(vectors, bins=8)
    assert counts.sum() == 45 and edges.shape == (9,)
    shifted = vectors + 10.0  # all pointing one way: every cosine near 1
    assert similarity_histogram(shifted, bins=4)[0][-1] == 45
    assert pairwise_cosines(vectors, vectors[:3]).shape == (30,)
    pytest.importorskip("matplotlib")
    path = save_similarity_histograms({"random": vectors, "shifted": shifted}, tmp_path / "h.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="at least 2 rows"):
        pairwise_cosines(vectors[:1])


def test_sense_classifier_knn_and_centroid() -> None:
    generator = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 6) * 4
    labels = ["a", "b", "c"] * 6
    vectors = centres[[0, 1, 2] * 6] + 0.5 * torch.randn(18, 6, generator=generator)
    queries = centres + 0.5 * torch.randn(3, 6, generator=generator)
    for method in ("knn", "centroid"):
        classifier = SenseClassifier(method, k=3).fit(vectors, labels)
        assert classifier.predict(queries) == ["a", "b", "c"]
        assert classifier.accuracy(queries, ["a", "b", "b"]) == pytest.approx(2 / 3)
    assert most_frequent_sense_accuracy(["a", "a", "b"], ["a", "b", "b", "c"]) == 0.25
    with pytest.raises(ValueError, match="method"):
        SenseClassifier("svm")
    with pytest.raises(ValueError, match="fit"):
        SenseClassifier().predict(queries)
    with pytest.raises(ValueError, match="labels"):
        SenseClassifier().fit(vectors, labels[:3])
