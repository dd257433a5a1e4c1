"""Defences: kNN sanitisation (also in a zoo encoder's embedding space) and confident learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnzoo.robustness import (
    LinearSVM,
    MLPClassifier,
    confident_joint,
    confident_labels,
    confident_learning_filter,
    cross_val_predict_proba,
    find_label_issues,
    flip_labels,
    knn_sanitize,
    make_blobs,
    nearest_neighbours,
    per_class_thresholds,
    stratified_folds,
)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_nearest_neighbours_equal_brute_force(metric: str) -> None:
    x = torch.randn(53, 4, generator=torch.Generator().manual_seed(0))
    found = nearest_neighbours(x, 6, metric, chunk_size=10)
    if metric == "euclidean":
        distance = torch.cdist(x, x)
    else:
        distance = 1 - F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    distance.fill_diagonal_(float("inf"))
    expected = distance.argsort(1)[:, :6]
    assert torch.equal(found.sort(1).values, expected.sort(1).values)


def test_knn_relabels_only_above_eta() -> None:
    # Two tight clusters; point 0 sits in cluster A with label 1, point 5 in cluster B.
    a = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.1, 0.1], [0.05, 0.05]])
    b = a + 5
    x = torch.cat([a, b])
    labels = torch.tensor([1, 0, 0, 0, 0, 1, 1, 1, 0, 1])
    result = knn_sanitize(x, labels, k=4, eta=0.75)
    assert result.labels.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert result.changed.tolist() == [True] + [False] * 7 + [True, False]
    # Neighbours of point 1 are {0 (label 1), 2, 3, 4}: majority 0 with share 3/4.
    assert result.majority[1] == 0 and result.agreement[1] == pytest.approx(0.75)
    strict = knn_sanitize(x, labels, k=4, eta=1.0)
    assert strict.labels[0] == 0  # its four neighbours all say 0
    assert strict.labels[8] == 1


def test_knn_ties_keep_the_own_label() -> None:
    x = torch.tensor([[0.0], [1.0], [-1.0], [2.0], [-2.0]])
    labels = torch.tensor([1, 0, 0, 1, 1])
    # Point 0's neighbours 1 and 2 (labels 0, 0) then 3 and 4 (labels 1, 1): a 2-2 tie.
    result = knn_sanitize(x, labels, k=4, eta=0.5)
    assert result.labels[0] == 1 and not result.changed[0]


def test_knn_sanitises_in_a_zoo_encoder_embedding_space() -> None:
    from attnzoo.transformers_zoo import BertConfig, BertModel

    generator = torch.Generator().manual_seed(0)
    n_per_class, length, span = 30, 8, 12
    labels = torch.arange(3).repeat_interleave(n_per_class)
    # Class c writes with its own 12 tokens: a random tiny BERT keeps them apart.
    ids = 1 + labels[:, None] * span + torch.randint(0, span, (90, length), generator=generator)
    lengths = torch.randint(5, length + 1, (90,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    config = BertConfig(
        vocab_size=1 + 3 * span,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    encoder = BertModel(config).eval()
    with torch.no_grad():
        hidden = encoder(ids, attention_mask=mask).last_hidden_state
    embeddings = (hidden * mask[..., None]).sum(1) / lengths[:, None]
    noisy = flip_labels(labels, 9, seed=1)
    result = knn_sanitize(embeddings, noisy.labels, k=7, eta=0.6, metric="cosine")
    restored = result.labels[noisy.flipped] == labels[noisy.flipped]
    assert int(restored.sum()) >= 8  # at least 8 of the 9 flips undone
    assert int((result.labels[~noisy.flipped] != labels[~noisy.flipped]).sum()) <= 1


def test_confident_joint_equals_a_loop() -> None:
    generator = torch.Generator().manual_seed(2)
    probs = torch.softmax(2 * torch.randn(97, 4, generator=generator, dtype=torch.float64), 1)
    labels = torch.randint(0, 4, (97,), generator=generator)
    thresholds = [float(probs[labels == j, j].mean()) for j in range(4)]
    torch.testing.assert_close(
        per_class_thresholds(probs, labels), torch.tensor(thresholds, dtype=torch.float64)
    )
    expected = torch.zeros(4, 4, dtype=torch.long)
    confident = []
    for row, given in zip(probs.tolist(), labels.tolist(), strict=True):
        passing = [j for j in range(4) if row[j] >= thresholds[j]]
        if passing:
            best = max(passing, key=lambda j: row[j])
            expected[given, best] += 1
            confident.append(best)
        else:
            confident.append(-1)
    assert torch.equal(confident_joint(probs, labels), expected)
    assert confident_labels(probs, labels).tolist() == confident


def test_find_label_issues_flags_obvious_errors() -> None:
    generator = torch.Generator().manual_seed(3)
    true = torch.arange(3).repeat(60)
    # A good model: 0.8 on the true class, noise elsewhere.
    probs = F.one_hot(true, 3).double() * 0.8 + 0.2 * torch.rand(180, 3, generator=generator)
    probs = probs / probs.sum(1, keepdim=True)
    noisy = flip_labels(true, 18, seed=0)
    # Pruning by the calibrated joint catches every flip (the calibration may round a
    # cell up by one: a false alarm or two); the raw off-diagonal misses a flip whose
    # true-class probability is under that class's threshold, and raises no false alarm.
    expectations = (("prune_by_noise_rate", 18, 2), ("confident_joint", 17, 0))
    for method, min_caught, max_false in expectations:
        issues = find_label_issues(probs, noisy.labels, method)
        assert int((issues & noisy.flipped).sum()) >= min_caught, method
        assert int((issues & ~noisy.flipped).sum()) <= max_false, method


def test_cross_val_probabilities_are_out_of_sample() -> None:
    x, labels = make_blobs(60, 2, dim=2, separation=4.0, seed=0)
    noisy = labels.clone()
    noisy[0] = 1 - noisy[0]  # one flipped point, well inside the other blob

    class Memoriser:
        """Predicts a training point's own label (1-NN): in-sample it would be right."""

        def fit(self, x_fit: torch.Tensor, y_fit: torch.Tensor) -> None:
            self.x, self.y = x_fit, y_fit

        def predict_proba(self, x_new: torch.Tensor) -> torch.Tensor:
            nearest = torch.cdist(x_new, self.x).argmin(1)
            return F.one_hot(self.y[nearest], 2).float()

    probs = cross_val_predict_proba(Memoriser, x, noisy, folds=5)
    assert probs[0].argmax() == labels[0]  # predicted from its neighbours, not itself
    folds = stratified_folds(noisy, 5)
    sizes = torch.bincount(folds, minlength=5)
    assert int(sizes.max() - sizes.min()) <= 2


def test_confident_learning_filter_finds_symmetric_noise() -> None:
    x, labels = make_blobs(240, 3, dim=3, separation=5.0, seed=1)
    noisy = flip_labels(labels, 24, seed=2)
    result = confident_learning_filter(
        lambda: MLPClassifier(3, 3, hidden=16, depth=1, steps=150, lr=3e-2), x, noisy.labels
    )
    caught = int((result.issues & noisy.flipped).sum())
    false_alarms = int((result.issues & ~noisy.flipped).sum())
    # 24 of 240 labels flipped: flagging 30 points at random would catch about 3.
    assert caught >= 20 and false_alarms <= 8
    assert torch.equal(result.keep, ~result.issues)
    svm_result = confident_learning_filter(LinearSVM, *make_blobs(80, seed=0), folds=4)
    assert svm_result.probs.shape == (80, 2)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: knn_sanitize(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]), k=5),
            ValueError,
            "smaller than",
        ),
        (
            lambda: knn_sanitize(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]), k=2, eta=0.0),
            ValueError,
            "eta",
        ),
        (
            lambda: knn_sanitize(torch.randn(5, 2), torch.tensor([0, 1, 0, 1]), k=2),
            ValueError,
            "one entry per row",
        ),
        (
            lambda: knn_sanitize(torch.randn(5, 2), torch.tensor([0, 1, 0, 1, 0]), 2, metric="l1"),
            ValueError,
            "metric",
        ),
        (lambda: knn_sanitize(torch.randn(5), torch.tensor([0, 1, 0, 1, 0])), ValueError, "2 dim"),
        (
            lambda: find_label_issues(torch.rand(4, 2), torch.tensor([0, 1, 0, 1])),
            ValueError,
            "sum to 1",
        ),
        (
            lambda: find_label_issues(torch.full((4, 2), 0.5), torch.tensor([0, 1, 0, 1]), "x"),
            ValueError,
            "method",
        ),
        (lambda: stratified_folds(torch.tensor([0, 0, 0, 1]), 2), ValueError, "class 1"),
    ],
)
def test_bad_input_is_a_clear_error(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()
