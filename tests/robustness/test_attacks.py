"""Label-flip attacks: budgets respected, greedy equal to brute force, ALFA's LP step."""

from __future__ import annotations

import pytest
import torch

from attnzoo.robustness import (
    KernelSVM,
    LinearSVM,
    alfa_attack,
    greedy_flip_attack,
    make_blobs,
    make_moons,
    random_flip_attack,
)


@pytest.fixture(scope="module")
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    return make_blobs(37, dim=3, separation=2.5, seed=0)


def test_random_attack_flips_exactly_the_budget(blobs) -> None:
    _, labels = blobs
    attack = random_flip_attack(labels, 9, seed=1)
    assert int(attack.flipped.sum()) == 9
    assert torch.equal(attack.labels[attack.flipped], 1 - labels[attack.flipped])
    assert sorted(attack.order.tolist()) == attack.flipped.nonzero().flatten().tolist()
    assert int((attack.prefix(4) != labels).sum()) == 4
    assert torch.equal(attack.prefix(9), attack.labels)
    assert torch.equal(attack.labels, random_flip_attack(labels, 9, seed=1).labels)


def test_alfa_flips_exactly_the_budget_and_is_deterministic(blobs) -> None:
    x, labels = blobs
    victim = LinearSVM(tol=1e-6)
    attack = alfa_attack(victim, x, labels, 6)
    assert int(attack.flipped.sum()) == 6
    assert torch.equal(attack.labels, torch.where(attack.flipped, 1 - labels, labels))
    assert set(attack.order.tolist()) == set(attack.flipped.nonzero().flatten().tolist())
    assert torch.equal(attack.labels, alfa_attack(victim, x, labels, 6).labels)
    assert victim.solution is None  # the victim's settings are read, it is not fitted
    assert alfa_attack(victim, x, labels, 0).flipped.sum() == 0


def test_alfa_final_choice_is_optimal_for_its_linear_program(blobs) -> None:
    # At convergence the chosen flips are the `budget` largest gains of the LP for the
    # SVM trained on them: recompute the gains from scratch and compare.
    x, labels = blobs
    victim = LinearSVM(tol=1e-9, max_iter=100_000)
    attack = alfa_attack(victim, x, labels, 5, max_iter=100, restarts=2)
    signs = labels.double() * 2 - 1
    hinge = lambda m: (1 - m).clamp_min(0)  # noqa: E731
    clean = LinearSVM(tol=1e-9, max_iter=100_000).fit(x, labels).decision_function(x).double()
    tainted = LinearSVM(tol=1e-9, max_iter=100_000).fit(x, attack.labels)
    scores = tainted.decision_function(x).double()
    gain = (hinge(signs * scores) - hinge(signs * clean)) - (
        hinge(-signs * scores) - hinge(-signs * clean)
    )
    assert attack.iterations < 100  # it stopped because the choice stopped changing
    chosen = set(torch.topk(gain, 5).indices.tolist())
    assert chosen == set(attack.flipped.nonzero().flatten().tolist())


def _validation_hinge(x: torch.Tensor, labels: torch.Tensor, x_val, labels_val) -> float:
    svm = LinearSVM(tol=1e-9, max_iter=100_000).fit(x, labels)
    margins = (labels_val.double() * 2 - 1) * svm.decision_function(x_val).double()
    return float((1 - margins).clamp_min(0).mean())


def test_greedy_attack_picks_the_brute_force_best_flips() -> None:
    x, labels = make_blobs(23, dim=2, separation=2.0, seed=3)
    x_val, labels_val = make_blobs(31, dim=2, separation=2.0, seed=4)
    attack = greedy_flip_attack(
        LinearSVM(tol=1e-9, max_iter=100_000), x, labels, 3, x_val=x_val, labels_val=labels_val
    )
    current = labels.clone()
    for step in range(3):
        losses = []
        for i in range(23):
            if current[i] != labels[i]:
                losses.append(-1.0)
                continue
            trial = current.clone()
            trial[i] = 1 - trial[i]
            losses.append(_validation_hinge(x, trial, x_val, labels_val))
        best = max(range(23), key=lambda i: losses[i])
        assert int(attack.order[step]) == best
        current[best] = 1 - current[best]
    assert torch.equal(attack.labels, current)
    assert torch.equal(attack.prefix(3), current)


def test_greedy_attack_with_candidates_and_a_kernel_victim() -> None:
    x, labels = make_moons(30, noise=0.1, seed=0)
    attack = greedy_flip_attack(KernelSVM(gamma=1.0, tol=1e-4), x, labels, 4, candidates=5)
    assert attack.iterations == 4 and int(attack.flipped.sum()) == 4
    assert len(set(attack.order.tolist())) == 4
    alfa = alfa_attack(KernelSVM(gamma=1.0, tol=1e-4), x, labels, 4)
    assert int(alfa.flipped.sum()) == 4


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x, y: random_flip_attack(y, 40), ValueError, "at most the number of points 37"),
        (lambda x, y: random_flip_attack(y, -1), ValueError, "budget"),
        (lambda x, y: alfa_attack(LinearSVM(), x, y, 38), ValueError, "at most"),
        (lambda x, y: alfa_attack(object(), x, y, 3), TypeError, "LinearSVM or KernelSVM"),
        (
            lambda x, y: alfa_attack(LinearSVM(), x, y % 1 + 2 * (y == 1), 3),
            ValueError,
            r"\[0, 2\)",
        ),
        (lambda x, y: alfa_attack(LinearSVM(), x[:30], y, 3), ValueError, "one entry per row"),
        (lambda x, y: greedy_flip_attack(LinearSVM(), x, y, 2, x_val=x), ValueError, "both"),
        (
            lambda x, y: greedy_flip_attack(LinearSVM(), x, y, 2, x_val=x[:, :2], labels_val=y),
            ValueError,
            "features",
        ),
        (lambda x, y: greedy_flip_attack(LinearSVM(), x, y, 2.5), TypeError, "budget"),
    ],
)
def test_bad_input_is_a_clear_error(blobs, call, error: type[Exception], match: str) -> None:
    x, labels = blobs
    with pytest.raises(error, match=match):
        call(x, labels)
