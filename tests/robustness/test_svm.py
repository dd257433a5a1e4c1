"""The torch SVMs: against scikit-learn, against their own optimality conditions."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from attnzoo.robustness import (
    KernelSVM,
    LinearSVM,
    make_blobs,
    make_moons,
    rbf_kernel,
    solve_svm_dual,
)

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None


@pytest.mark.skipif(not HAS_SKLEARN, reason="needs scikit-learn")
@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
def test_linear_svm_equals_liblinear_hinge(C: float) -> None:
    from sklearn.svm import LinearSVC

    x, labels = make_blobs(157, dim=5, separation=2.0, seed=1)
    ours = LinearSVM(C=C, tol=1e-8, max_iter=200_000).fit(x.double(), labels)
    # LIBLINEAR's dual solver, bias as a constant feature of value 1: the same problem.
    reference = LinearSVC(loss="hinge", C=C, tol=1e-9, max_iter=10**6).fit(
        x.double().numpy(), labels.numpy()
    )
    torch.testing.assert_close(
        ours.weight, torch.from_numpy(reference.coef_[0]), rtol=1e-3, atol=1e-4
    )
    assert ours.bias.item() == pytest.approx(reference.intercept_[0], rel=1e-3, abs=1e-4)
    assert ours.solution is not None and ours.solution.converged


def _kkt_violation(svm: KernelSVM, x: torch.Tensor, labels: torch.Tensor) -> float:
    """Largest violation of the box-constrained dual's optimality conditions."""
    assert svm.solution is not None
    alpha = svm.solution.alpha.double()
    margin = (labels.double() * 2 - 1) * svm.decision_function(x.double()).double()
    at_zero = alpha <= 1e-9
    at_c = alpha >= svm.C - 1e-9
    inside = ~at_zero & ~at_c
    violations = torch.cat(
        [
            (1 - margin[at_zero]).clamp_min(0),
            (margin[at_c] - 1).clamp_min(0),
            (margin[inside] - 1).abs(),
        ]
    )
    return float(violations.max())


def test_rbf_svm_satisfies_its_optimality_conditions() -> None:
    x, labels = make_moons(181, noise=0.2, seed=0)
    svm = KernelSVM(C=2.0, gamma=1.5, tol=1e-10, max_iter=200_000).fit(x.double(), labels)
    assert svm.solution is not None and svm.solution.converged
    assert float(svm.solution.gap) < 1e-7
    assert _kkt_violation(svm, x, labels) < 1e-3
    assert svm.accuracy(x.double(), labels) > 0.9  # moons are not linearly separable


@pytest.mark.skipif(not HAS_SKLEARN, reason="needs scikit-learn")
def test_rbf_svm_predicts_like_libsvm() -> None:
    from sklearn.svm import SVC

    x, labels = make_moons(200, noise=0.15, seed=3)
    x_test, _ = make_moons(400, noise=0.15, seed=4)
    ours = KernelSVM(C=1.0).fit(x, labels)
    # libsvm's bias is free, ours is regularised: the boundaries differ slightly.
    reference = SVC(C=1.0, gamma="scale").fit(x.numpy(), labels.numpy())
    assert ours.fitted_gamma == pytest.approx(reference._gamma, rel=1e-6)
    agreement = (ours.predict(x_test).numpy() == reference.predict(x_test.numpy())).mean()
    assert agreement > 0.97


def test_linear_kernel_svm_equals_linear_svm() -> None:
    x, labels = make_blobs(64, dim=3, seed=2)
    linear = LinearSVM(C=0.5, tol=1e-9).fit(x.double(), labels)
    kernel = KernelSVM(kernel="linear", C=0.5, tol=1e-9).fit(x.double(), labels)
    torch.testing.assert_close(
        kernel.decision_function(x.double()),
        linear.decision_function(x.double()),
        atol=1e-5,
        rtol=0,
    )


def test_batched_solve_equals_separate_solves() -> None:
    x, labels = make_blobs(41, dim=3, seed=5)
    features = torch.cat([x.double(), torch.ones(41, 1, dtype=torch.float64)], 1)
    signs = (labels.double() * 2 - 1).expand(4, 41).clone()
    signs[1, :5] *= -1
    signs[2, 10:30] *= -1
    signs[3] *= -1
    batched = solve_svm_dual(signs, 1.0, features=features, tol=1e-10, max_iter=100_000)
    for row in range(4):
        alone = solve_svm_dual(signs[row], 1.0, features=features, tol=1e-10, max_iter=100_000)
        w_batched = (batched.alpha[row] * signs[row]) @ features
        w_alone = (alone.alpha * signs[row]) @ features
        torch.testing.assert_close(w_batched, w_alone, atol=1e-5, rtol=0)
    # The Gram-matrix form solves the same problem as the feature form.
    gram = solve_svm_dual(signs, 1.0, gram=features @ features.T, tol=1e-10, max_iter=100_000)
    torch.testing.assert_close(
        (gram.alpha * signs) @ features, (batched.alpha * signs) @ features, atol=1e-5, rtol=0
    )


def test_sample_weight_two_equals_a_duplicated_point() -> None:
    x, labels = make_blobs(30, dim=2, separation=1.0, seed=6)
    weights = torch.ones(30, dtype=torch.float64)
    weights[:4] = 2.0
    weighted = LinearSVM(tol=1e-10, max_iter=200_000).fit(x.double(), labels, weights)
    duplicated = LinearSVM(tol=1e-10, max_iter=200_000).fit(
        torch.cat([x, x[:4]]).double(), torch.cat([labels, labels[:4]])
    )
    torch.testing.assert_close(weighted.weight, duplicated.weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(weighted.bias, duplicated.bias, atol=1e-5, rtol=0)


def test_predict_proba_is_a_monotone_probability() -> None:
    x, labels = make_blobs(80, seed=7)
    svm = LinearSVM().fit(x, labels)
    probs = svm.predict_proba(x)
    torch.testing.assert_close(probs.sum(1), torch.ones(80))
    order = svm.decision_function(x).argsort()
    assert bool((probs[order, 1].diff() >= 0).all())
    assert svm.platt.a.item() > 0  # a larger decision value means a likelier class 1


def test_rbf_kernel_matches_its_formula() -> None:
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    expected = torch.exp(-0.7 * torch.cdist(a, b) ** 2)
    torch.testing.assert_close(rbf_kernel(a, b, 0.7), expected)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: LinearSVM().fit(torch.randn(4, 2), torch.tensor([0, 1, 2, 0])),
            ValueError,
            r"\[0, 2\)",
        ),
        (lambda: LinearSVM().fit(torch.randn(4), torch.tensor([0, 1, 1, 0])), ValueError, "2 dim"),
        (
            lambda: LinearSVM().fit(torch.randn(4, 2), torch.tensor([0, 1, 1])),
            ValueError,
            "one entry per row",
        ),
        (
            lambda: LinearSVM().fit(torch.randn(3, 2), torch.tensor([0.0, 1.0, 1.0])),
            TypeError,
            "integer",
        ),
        (lambda: LinearSVM().predict(torch.randn(3, 2)), RuntimeError, "not fitted"),
        (lambda: LinearSVM(C=0.0), ValueError, "C"),
        (lambda: KernelSVM(kernel="poly"), ValueError, "kernel"),
        (lambda: solve_svm_dual(torch.ones(3), 1.0), ValueError, "exactly one"),
    ],
)
def test_bad_input_is_a_clear_error(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_wrong_feature_count_at_prediction_is_an_error() -> None:
    x, labels = make_blobs(20, dim=3, seed=0)
    svm = LinearSVM().fit(x, labels)
    with pytest.raises(ValueError, match="3 features"):
        svm.decision_function(torch.randn(2, 4))
