"""Data generators, the MLP classifier, and the flip-rate experiment harness."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from attnzoo.robustness import (
    Classifier,
    LabelSmoothingCrossEntropy,
    LinearSVM,
    MLPClassifier,
    make_blobs,
    make_moons,
    run_flip_experiment,
    train_test_split,
)

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_blobs_are_seeded_balanced_and_separated() -> None:
    x, labels = make_blobs(301, 3, dim=4, separation=2.5, std=0.01, seed=0)
    assert x.shape == (301, 4) and x.dtype == torch.float32
    assert torch.bincount(labels).tolist() == [101, 100, 100]
    centres = torch.stack([x[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(torch.pdist(centres), torch.full((3,), 2.5), atol=0.01)
    again, _ = make_blobs(301, 3, dim=4, separation=2.5, std=0.01, seed=0)
    assert torch.equal(x, again)
    circle, circle_labels = make_blobs(50, 5, dim=2, separation=3.0, std=0.01, seed=1)
    circle_centres = torch.stack([circle[circle_labels == c].mean(0) for c in range(5)])
    neighbours = (circle_centres - circle_centres.roll(1, 0)).norm(dim=1)
    assert torch.allclose(neighbours, torch.full((5,), 3.0), atol=0.02)


def test_moons_and_split() -> None:
    x, labels = make_moons(101, noise=0.0, seed=0)
    assert x.shape == (101, 2) and torch.bincount(labels).tolist() == [51, 50]
    outer = x[labels == 0]
    assert torch.allclose(outer.norm(dim=1), torch.ones(51), atol=1e-5)
    x_train, _, x_test, _ = train_test_split(x, labels, 0.3, seed=0)
    assert x_test.shape[0] == 30 and x_train.shape[0] == 71
    combined = torch.cat([x_train, x_test])
    assert torch.equal(combined[torch.argsort(combined[:, 0])], x[torch.argsort(x[:, 0])])
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(x, labels, 1.0)


def test_mlp_learns_blobs_and_is_a_classifier() -> None:
    x, labels = make_blobs(300, 3, dim=2, separation=4.0, seed=0)
    model = MLPClassifier(2, 3, hidden=16, steps=200, lr=2e-2, batch_size=64, seed=0)
    assert isinstance(model, Classifier)
    model.fit(x, labels)
    assert float((model.predict(x) == labels).float().mean()) > 0.95
    torch.testing.assert_close(model.predict_proba(x).sum(1), torch.ones(300))
    assert model.history is not None and len(model.history.losses) == 200
    same = MLPClassifier(2, 3, hidden=16, steps=200, lr=2e-2, batch_size=64, seed=0)
    torch.testing.assert_close(same.fit(x, labels)(x), model(x))


def test_mlp_label_flipping_flips_afresh_every_epoch() -> None:
    x, labels = make_blobs(50, 2, dim=2, seed=0)
    batches: list[torch.Tensor] = []
    targets_seen: list[torch.Tensor] = []

    def recording_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets_seen.append(targets.clone())
        return torch.nn.functional.cross_entropy(logits, targets)

    # Full batches: one step is one epoch. The rows come shuffled; find each in x.
    model = MLPClassifier(2, 2, hidden=8, steps=3, loss=recording_loss, flip_rate=0.2, seed=0)
    model.net.register_forward_pre_hook(lambda _, inputs: batches.append(inputs[0].clone()))
    model.fit(x, labels)
    flipped_sets = []
    for inputs, targets in zip(batches, targets_seen, strict=True):
        rows = torch.cdist(inputs, x).argmin(1)
        flipped = targets != labels[rows]
        assert int(flipped.sum()) == 10  # exactly 20% each epoch
        flipped_sets.append(set(rows[flipped].tolist()))
    assert len(flipped_sets) == 3 and flipped_sets[0] != flipped_sets[1]


def test_mlp_accepts_a_smoothing_loss() -> None:
    x, labels = make_blobs(60, 2, dim=2, seed=1)
    model = MLPClassifier(
        2, 2, hidden=8, steps=20, loss=LabelSmoothingCrossEntropy(smoothing=0.1)
    ).fit(x, labels)
    assert model.history is not None and math.isfinite(model.history.losses[-1])


@pytest.fixture(scope="module")
def tiny_experiment():
    x, labels = make_blobs(80, 2, dim=3, separation=3.0, seed=0)
    x_train, y_train, x_test, y_test = train_test_split(x, labels, 0.5, seed=0)
    return run_flip_experiment(
        x_train, y_train, x_test, y_test, rates=(0.0, 0.1), knn_k=5, folds=4, seed=0
    )


def test_flip_experiment_covers_every_attack_and_defence(tiny_experiment) -> None:
    result = tiny_experiment
    assert result.budgets == [0, 4]
    assert set(result.accuracy) == {"random", "alfa", "greedy"}
    for attack in result.accuracy:
        assert set(result.accuracy[attack]) == {"none", "knn", "confident_learning"}
        for defence, values in result.accuracy[attack].items():
            assert len(values) == 2 and all(0 <= v <= 1 for v in values)
            assert all(0 <= e <= 1 for e in result.ece[attack][defence])
    # At flip rate 0 every attack leaves the same clean labels: identical rows.
    for defence in ("none", "knn", "confident_learning"):
        at_zero = {result.accuracy[attack][defence][0] for attack in result.accuracy}
        assert len(at_zero) == 1


def test_flip_experiment_table_and_plot(tiny_experiment, tmp_path) -> None:
    table = tiny_experiment.table()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 9  # header, then 3 attacks x 3 defences
    assert "0% flipped" in rows[0] and "10% flipped" in rows[0]
    if HAS_MATPLOTLIB:
        path = tiny_experiment.plot(tmp_path / "curves.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"attacks": ("alfa", "label-noise")}, ValueError, "attacks"),
        ({"defences": ()}, ValueError, "defences"),
        ({"rates": (0.1, 1.0)}, ValueError, "rates"),
    ],
)
def test_flip_experiment_bad_input(options, error: type[Exception], match: str) -> None:
    x, labels = make_blobs(20, seed=0)
    with pytest.raises(error, match=match):
        run_flip_experiment(x, labels, x, labels, **options)


def test_flip_experiment_refuses_multiclass_labels() -> None:
    x, labels = make_blobs(30, 3, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        run_flip_experiment(x, labels, x, labels)


def test_linear_svm_is_a_classifier() -> None:
    assert isinstance(LinearSVM(), Classifier)
