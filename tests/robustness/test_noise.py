"""Label noise: noise matrices, seeded noisy labels, label flipping per epoch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnzoo.robustness import (
    LabelFlipping,
    apply_noise_matrix,
    check_noise_matrix,
    flip_labels,
    noise_matrix_from_trace,
    noise_matrix_is_valid,
    pair_noise,
    pair_noise_matrix,
    per_class_noise,
    per_class_noise_matrix,
    symmetric_noise,
    symmetric_noise_matrix,
)


def _labels(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def test_symmetric_matrix_has_the_stated_entries() -> None:
    matrix = symmetric_noise_matrix(5, 0.3)
    assert torch.allclose(matrix.diagonal(), torch.full((5,), 0.7, dtype=torch.float64))
    off = matrix[~torch.eye(5, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, 0.3 / 4))
    assert torch.allclose(matrix.sum(0), torch.ones(5, dtype=torch.float64))


def test_pair_matrix_default_map_and_custom_map() -> None:
    matrix = pair_noise_matrix(4, 0.25)
    for j in range(4):
        assert matrix[j, j] == 0.75 and matrix[(j + 1) % 4, j] == 0.25
    assert int((matrix > 0).sum()) == 8
    custom = pair_noise_matrix(3, [0.1, 0.2, 0.0], class_map={0: 2, 1: 0})
    assert custom[2, 0] == pytest.approx(0.1) and custom[0, 1] == pytest.approx(0.2)
    assert custom[2, 2] == 1.0  # class 2 is not in the map: it never flips
    assert torch.allclose(custom.sum(0), torch.ones(3, dtype=torch.float64))


def test_per_class_matrix_uses_one_rate_per_column() -> None:
    matrix = per_class_noise_matrix([0.0, 0.2, 0.6])
    assert torch.equal(matrix[:, 0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(matrix[:, 2], torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64))


@given(
    k=st.integers(2, 7),
    mean_keep=st.floats(0.5, 0.95),
    seed=st.integers(0, 2**16),
    frac_zero=st.sampled_from([0.0, 0.3]),
)
def test_trace_generator_hits_the_trace_with_stochastic_columns(
    k: int, mean_keep: float, seed: int, frac_zero: float
) -> None:
    trace = max(k * mean_keep, 1.05)
    prior = torch.full((k,), 1.0 / k)
    matrix = noise_matrix_from_trace(
        k, trace, prior=prior, frac_zero_noise_rates=frac_zero, seed=seed
    )
    assert matrix.shape == (k, k)
    assert float(matrix.trace()) == pytest.approx(trace, abs=1e-9)
    assert torch.allclose(matrix.sum(0), torch.ones(k, dtype=torch.float64), atol=1e-12)
    assert bool((matrix >= 0).all())
    assert noise_matrix_is_valid(matrix, prior)


def test_trace_generator_is_seeded_and_leaves_zero_noise_rates() -> None:
    prior = [0.4, 0.3, 0.2, 0.1]
    a = noise_matrix_from_trace(4, 3.0, prior=prior, seed=3)
    assert torch.equal(a, noise_matrix_from_trace(4, 3.0, prior=prior, seed=3))
    assert not torch.equal(a, noise_matrix_from_trace(4, 3.0, prior=prior, seed=4))
    sparse = noise_matrix_from_trace(4, 3.0, prior=prior, frac_zero_noise_rates=0.5, seed=0)
    off_diagonal = sparse[~torch.eye(4, dtype=torch.bool)]
    assert int((off_diagonal == 0).sum()) >= 6  # half of the 12 noise rates
    bounded = noise_matrix_from_trace(5, 4.0, valid=False, max_trace_prob=0.9, seed=1)
    assert float(bounded.diagonal().max()) <= 0.9 + 1e-12


def test_trace_generator_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="trace"):
        noise_matrix_from_trace(3, 0.9, prior=[1 / 3] * 3)  # valid needs trace > 1
    with pytest.raises(ValueError, match="trace"):
        noise_matrix_from_trace(3, 3.5, valid=False)
    with pytest.raises(ValueError, match="prior"):
        noise_matrix_from_trace(3, 2.0)
    with pytest.raises(ValueError, match="cannot be reached"):
        noise_matrix_from_trace(3, 2.9, valid=False, max_trace_prob=0.9)


def test_validity_is_false_for_a_permutation() -> None:
    prior = torch.tensor([0.5, 0.5])
    assert noise_matrix_is_valid(torch.eye(2, dtype=torch.float64), prior)
    assert not noise_matrix_is_valid(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), prior)


def test_exact_mode_realises_the_matrix_counts() -> None:
    labels = torch.arange(600) % 3
    matrix = torch.tensor([[0.8, 0.1, 0.0], [0.2, 0.7, 0.25], [0.0, 0.2, 0.75]])
    noisy = apply_noise_matrix(labels, matrix, seed=0, exact=True)
    confusion = torch.zeros(3, 3)
    confusion.index_put_((noisy.labels, labels), torch.ones(600), accumulate=True)
    assert torch.equal(confusion, matrix * 200)  # 200 per class, counts exact
    assert torch.equal(noisy.flipped, noisy.labels != labels)
    assert noisy.num_flipped == int(600 - confusion.trace())


def test_sampled_mode_matches_the_matrix_in_expectation() -> None:
    n, k = 30_000, 4
    labels = _labels(n, k)
    matrix = noise_matrix_from_trace(k, 2.6, prior=[0.25] * 4, seed=5)
    noisy = apply_noise_matrix(labels, matrix, seed=1).labels
    for j in range(k):
        members = labels == j
        realised = torch.bincount(noisy[members], minlength=k).double() / members.sum()
        # 5 standard deviations of a binomial share with ~7500 draws.
        bound = 5 * (matrix[:, j] * (1 - matrix[:, j]) / members.sum()).sqrt() + 1e-9
        assert bool(((realised - matrix[:, j]).abs() <= bound).all())


def test_noise_is_reproducible_and_keeps_dtype() -> None:
    labels = _labels(200, 5).int()
    a = symmetric_noise(labels, 0.3, seed=7)
    b = symmetric_noise(labels, 0.3, seed=torch.Generator().manual_seed(7))
    assert torch.equal(a.labels, b.labels)
    assert a.labels.dtype == torch.int32
    assert not torch.equal(a.labels, symmetric_noise(labels, 0.3, seed=8).labels)
    pair = pair_noise(labels, 0.4, seed=0, exact=True)
    moved = pair.labels[pair.flipped]
    assert torch.equal(moved, (labels[pair.flipped] + 1) % 5)
    rates = per_class_noise(labels, [0.0, 0.0, 0.5, 0.0, 0.0], seed=0, exact=True)
    assert bool((labels[rates.flipped] == 2).all())


def test_flip_labels_flips_exactly_count_to_other_classes() -> None:
    labels = _labels(101, 4)
    noisy = flip_labels(labels, 37, seed=0)
    assert noisy.num_flipped == 37
    assert bool((noisy.labels[noisy.flipped] != labels[noisy.flipped]).all())
    # Over many flips every other class is reached.
    many = flip_labels(torch.zeros(3000, dtype=torch.long), 3000, num_classes=4, seed=1)
    counts = torch.bincount(many.labels, minlength=4)
    assert counts[0] == 0 and bool((counts[1:] > 900).all())


def test_label_flipping_draws_fresh_flips_each_epoch() -> None:
    labels = _labels(200, 3)
    flipping = LabelFlipping(labels, rate=0.1, seed=0)
    first, again, second = flipping.flips(0), flipping.flips(0), flipping.flips(1)
    assert torch.equal(first.labels, again.labels)  # an epoch can be replayed
    assert first.num_flipped == second.num_flipped == 20
    assert not torch.equal(first.flipped, second.flipped)
    assert torch.equal(flipping(1), second.labels)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: symmetric_noise(torch.tensor([0.0, 1.0]), 0.1), TypeError, "integer"),
        (lambda: symmetric_noise(torch.tensor([True, False]), 0.1), TypeError, "integer"),
        (lambda: symmetric_noise(torch.zeros(2, 3, dtype=torch.long), 0.1), ValueError, "1 dim"),
        (lambda: symmetric_noise([0, 1], 0.1), TypeError, "torch.Tensor"),
        (lambda: symmetric_noise(torch.tensor([0, 3]), 0.1, num_classes=3), ValueError, "0, 3"),
        (lambda: symmetric_noise(torch.tensor([0, -1]), 0.1), ValueError, ">= 0"),
        (lambda: symmetric_noise(torch.tensor([0, 1]), 1.0), ValueError, r"\[0, 1\)"),
        (lambda: symmetric_noise(torch.tensor([0, 1]), -0.1), ValueError, r"\[0, 1\)"),
        (lambda: flip_labels(torch.tensor([0, 1]), 3), ValueError, "at most"),
        (lambda: pair_noise_matrix(3, 0.2, {0: 0}), ValueError, "itself"),
        (lambda: pair_noise_matrix(3, 0.2, {0: 5}), ValueError, "target class 5"),
        (lambda: pair_noise_matrix(3, [0.1, 0.2]), ValueError, "one rate per class"),
        (lambda: per_class_noise_matrix([0.1, 1.2]), ValueError, "rates"),
        (lambda: LabelFlipping(torch.tensor([0, 1]), 1.5), ValueError, "rate"),
    ],
)
def test_bad_input_is_a_clear_error(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_noise_matrix_checks_name_the_problem() -> None:
    rows_stochastic = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    with pytest.raises(ValueError, match="transpose"):
        check_noise_matrix(rows_stochastic)
    assert torch.allclose(check_noise_matrix(rows_stochastic.T), rows_stochastic.T.double())
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        check_noise_matrix(torch.eye(2), num_classes=3)
    with pytest.raises(ValueError, match="class ids in"):
        apply_noise_matrix(torch.tensor([0, 2]), torch.eye(2))
    with pytest.raises(TypeError, match="floating"):
        check_noise_matrix(torch.eye(2, dtype=torch.long))
