"""Label smoothing: both conventions, against torch's label_smoothing and by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from attnzoo.robustness import (
    LabelSmoothingCrossEntropy,
    smooth_binary_targets,
    smooth_labels,
    smoothed_binary_cross_entropy_with_logits,
    smoothed_cross_entropy,
)


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6), (2, 2)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.37])
def test_uniform_convention_equals_torch_label_smoothing(
    shape: tuple[int, ...], smoothing: float
) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    labels.view(-1)[0] = -100  # a padding position, skipped by both
    ours = smoothed_cross_entropy(logits, labels, smoothing=smoothing)
    # torch wants the class axis second.
    reference = F.cross_entropy(logits.movedim(-1, 1), labels, label_smoothing=smoothing)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    none = smoothed_cross_entropy(logits, labels, smoothing=smoothing, reduction="none")
    ref_none = F.cross_entropy(
        logits.movedim(-1, 1), labels, label_smoothing=smoothing, reduction="none"
    )
    torch.testing.assert_close(none, ref_none, rtol=1e-12, atol=1e-12)


def test_all_positions_ignored_gives_zero_not_nan() -> None:
    # torch's own cross_entropy returns NaN here (0 / 0).
    loss = smoothed_cross_entropy(torch.randn(2, 3), torch.tensor([-100, -100]), smoothing=0.1)
    assert loss.item() == 0.0


def test_max_value_convention_gives_the_stated_targets() -> None:
    labels = torch.tensor([2, 0])
    targets = smooth_labels(labels, 4, max_value=0.7)
    expected = torch.tensor([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1]])
    torch.testing.assert_close(targets, expected)
    uniform = smooth_labels(labels, 4, smoothing=0.2)
    torch.testing.assert_close(uniform[0], torch.tensor([0.05, 0.05, 0.85, 0.05]))


def test_the_two_conventions_coincide_at_max_value_one_minus_a_plus_a_over_k() -> None:
    logits = torch.randn(9, 5, dtype=torch.float64)
    labels = torch.randint(0, 5, (9,))
    a = 0.3
    by_smoothing = smoothed_cross_entropy(logits, labels, smoothing=a)
    by_max_value = smoothed_cross_entropy(logits, labels, max_value=1 - a + a / 5)
    torch.testing.assert_close(by_smoothing, by_max_value, rtol=1e-12, atol=1e-12)


def test_max_value_loss_is_cross_entropy_with_its_targets() -> None:
    logits = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (11,))
    loss = LabelSmoothingCrossEntropy(max_value=0.8)(logits, labels)
    targets = smooth_labels(labels, 3, max_value=0.8, dtype=torch.float64)
    by_hand = -(targets * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(loss, by_hand, rtol=1e-12, atol=1e-12)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert "max-value" in repr(LabelSmoothingCrossEntropy(max_value=0.8))


@given(k=st.integers(2, 9), a=st.floats(0.0, 0.99), n=st.integers(1, 6))
def test_smoothed_targets_are_distributions(k: int, a: float, n: int) -> None:
    labels = torch.randint(0, k, (n,))
    uniform = smooth_labels(labels, k, smoothing=a)
    for targets in (uniform, smooth_labels(labels, k, max_value=1 - a)):
        assert bool((targets >= 0).all())
        torch.testing.assert_close(targets.sum(-1), torch.ones(n))
        assert torch.equal(targets.argmax(-1), labels) or a >= 1 - 1 / k


def test_one_sided_binary_smoothing_leaves_negatives_at_zero() -> None:
    targets = torch.tensor([1.0, 0.0, 1.0, 0.0])
    one_sided = smooth_binary_targets(targets, max_value=0.9, one_sided=True)
    torch.testing.assert_close(one_sided, torch.tensor([0.9, 0.0, 0.9, 0.0]))
    two_sided = smooth_binary_targets(targets.long(), smoothing=0.2)
    torch.testing.assert_close(two_sided, torch.tensor([0.9, 0.1, 0.9, 0.1]))
    logits = torch.randn(4)
    loss = smoothed_binary_cross_entropy_with_logits(logits, targets, max_value=0.9, one_sided=True)
    p = torch.sigmoid(logits)
    by_hand = -(one_sided * p.log() + (1 - one_sided) * (1 - p).log()).mean()
    torch.testing.assert_close(loss, by_hand)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: smooth_labels(torch.tensor([0, 1]), 2), ValueError, "exactly one"),
        (
            lambda: smooth_labels(torch.tensor([0, 1]), 2, smoothing=0.1, max_value=0.9),
            ValueError,
            "exactly one",
        ),
        (lambda: smooth_labels(torch.tensor([0, 1]), 2, smoothing=1.0), ValueError, "smoothing"),
        (lambda: smooth_labels(torch.tensor([0, 1]), 2, max_value=1.5), ValueError, "max_value"),
        (lambda: smooth_labels(torch.tensor([0, 2]), 2, smoothing=0.1), ValueError, r"\[0, 2\)"),
        (lambda: smooth_labels(torch.tensor([0.0, 1.0]), 2, smoothing=0.1), TypeError, "integer"),
        (
            lambda: smoothed_cross_entropy(torch.randn(3, 4), torch.tensor([0, 1]), smoothing=0.1),
            ValueError,
            r"shape \(3,\)",
        ),
        (
            lambda: smoothed_cross_entropy(torch.randn(2, 4), torch.tensor([0, 9]), smoothing=0.1),
            ValueError,
            r"\[0, 4\)",
        ),
        (
            lambda: smoothed_cross_entropy(
                torch.randn(2, 4), torch.tensor([0, 1]), smoothing=0.1, reduction="max"
            ),
            ValueError,
            "reduction",
        ),
        (
            lambda: smooth_binary_targets(torch.tensor([0.0, 0.5]), smoothing=0.1),
            ValueError,
            "0s and 1s",
        ),
    ],
)
def test_bad_input_is_a_clear_error(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()
