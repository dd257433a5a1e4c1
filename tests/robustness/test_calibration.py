"""Calibration metrics against plain numpy, temperature scaling against a grid search."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnzoo.robustness import (
    PlattScaling,
    TemperatureScaling,
    brier_score,
    calibration_bins,
    calibration_report,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_diagram,
)

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _random_probs(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 2.5 * torch.randn(n, k, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, k, (n,), generator=generator)
    return logits.softmax(-1), labels


def _numpy_bin_gaps(
    probs: np.ndarray, labels: np.ndarray, n_bins: int, strategy: str
) -> list[tuple[int, float]]:
    """(count, |accuracy - confidence|) per non-empty bin, by explicit loops."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    groups: list[np.ndarray] = []
    if strategy == "uniform":
        for b in range(n_bins):
            low, high = b / n_bins, (b + 1) / n_bins
            groups.append((confidence > low) & (confidence <= high))
    else:
        order = np.argsort(confidence, kind="stable")
        for chunk in np.array_split(order, n_bins):
            mask = np.zeros(len(confidence), dtype=bool)
            mask[chunk] = True
            groups.append(mask)
    out = []
    for mask in groups:
        if mask.sum():
            out.append((int(mask.sum()), abs(correct[mask].mean() - confidence[mask].mean())))
    return out


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize(("n", "k", "n_bins"), [(257, 5, 15), (1000, 2, 10), (33, 7, 15)])
def test_ece_and_mce_equal_a_numpy_recomputation(
    strategy: str, n: int, k: int, n_bins: int
) -> None:
    probs, labels = _random_probs(n, k, seed=n)
    gaps = _numpy_bin_gaps(probs.numpy(), labels.numpy(), n_bins, strategy)
    expected_ece = sum(count * gap for count, gap in gaps) / n
    expected_mce = max(gap for _, gap in gaps)
    ece = expected_calibration_error(probs, labels, n_bins, strategy)
    assert ece == pytest.approx(expected_ece, abs=1e-12)
    mce = maximum_calibration_error(probs, labels, n_bins, strategy)
    assert mce == pytest.approx(expected_mce, abs=1e-12)


def test_equal_mass_bins_hold_equal_counts_and_ordered_edges() -> None:
    probs, labels = _random_probs(301, 4)
    bins = calibration_bins(probs, labels, n_bins=10, strategy="quantile")
    assert int(bins.count.max() - bins.count.min()) <= 1
    assert bool((bins.edges[1:] >= bins.edges[:-1]).all())
    assert bins.edges[0] == 0 and bins.edges[-1] == 1


def test_a_calibrated_predictor_has_small_ece() -> None:
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    confidence = 0.5 + 0.5 * torch.rand(n, generator=generator, dtype=torch.float64)
    probs = torch.stack([confidence, 1 - confidence], 1)
    # The top class is right with probability equal to the confidence.
    right = torch.rand(n, generator=generator, dtype=torch.float64) < confidence
    labels = torch.where(right, 0, 1)
    assert expected_calibration_error(probs, labels) < 0.02
    overconfident = torch.stack([torch.full((n,), 0.99), torch.full((n,), 0.01)], 1).double()
    assert expected_calibration_error(overconfident, labels) > 0.2


def test_nll_and_brier_equal_numpy() -> None:
    probs, labels = _random_probs(123, 4, seed=3)
    p, y = probs.numpy(), labels.numpy()
    expected_nll = -np.mean(np.log(p[np.arange(len(y)), y]))
    onehot = np.eye(4)[y]
    expected_brier = np.mean(((p - onehot) ** 2).sum(1))
    assert negative_log_likelihood(probs, labels) == pytest.approx(expected_nll, rel=1e-12)
    assert brier_score(probs, labels) == pytest.approx(expected_brier, rel=1e-12)
    report = calibration_report(probs, labels)
    assert set(report) == {"accuracy", "ece", "mce", "nll", "brier"}
    assert report["accuracy"] == pytest.approx(float((p.argmax(1) == y).mean()))


@pytest.mark.skipif(not HAS_SKLEARN, reason="needs scikit-learn")
def test_nll_and_binary_brier_match_scikit_learn() -> None:
    from sklearn.metrics import brier_score_loss, log_loss

    probs, labels = _random_probs(200, 2, seed=4)
    assert negative_log_likelihood(probs, labels) == pytest.approx(
        log_loss(labels.numpy(), probs.numpy()), rel=1e-9
    )
    # scikit-learn scores the positive class only: half the two-class sum.
    assert brier_score(probs, labels) == pytest.approx(
        2 * brier_score_loss(labels.numpy(), probs[:, 1].numpy()), rel=1e-9
    )


def _grid_argmin(logits: torch.Tensor, labels: torch.Tensor, log_t: torch.Tensor) -> float:
    """The log-temperature of the grid with the lowest NLL."""
    scaled = logits[None] / log_t.exp()[:, None, None]  # (grid, n, k)
    nll = F.cross_entropy(scaled.movedim(-1, 1), labels.expand(len(log_t), -1), reduction="none")
    return float(log_t[nll.mean(1).argmin()])


def test_temperature_scaling_finds_the_nll_minimum_of_a_grid() -> None:
    generator = torch.Generator().manual_seed(1)
    n, k = 500, 6
    labels = torch.randint(0, k, (n,), generator=generator)
    # Over-confident logits: right class boosted, then everything scaled up by 4.
    logits = torch.randn(n, k, generator=generator, dtype=torch.float64)
    logits[torch.arange(n), labels] += 1.0
    logits = 4 * logits
    scaler = TemperatureScaling().fit(logits, labels)
    # Coarse grid over log T, then a fine grid around its best point.
    best_log_t = _grid_argmin(logits, labels, torch.linspace(-2, 3, 1001, dtype=torch.float64))
    fine = torch.linspace(best_log_t - 0.005, best_log_t + 0.005, 1001, dtype=torch.float64)
    best = float(torch.exp(torch.tensor(_grid_argmin(logits, labels, fine))))
    assert scaler.temperature == pytest.approx(best, rel=1e-4)
    assert scaler.temperature > 1  # it softens over-confident logits
    scaled = scaler(logits)
    assert torch.equal(scaled.argmax(-1), logits.argmax(-1))
    before = expected_calibration_error(logits.softmax(-1), labels)
    after = expected_calibration_error(scaled.detach().softmax(-1), labels)
    assert after < before


def test_temperature_scaling_refuses_probabilities() -> None:
    probs, labels = _random_probs(50, 3)
    with pytest.raises(ValueError, match="pass the logits"):
        TemperatureScaling().fit(probs, labels)
    # Log-probabilities differ from logits by a per-row constant: accepted, same T.
    logits = 3 * torch.randn(50, 3, dtype=torch.float64)
    t_logits = TemperatureScaling().fit(logits, labels).temperature
    t_log_probs = TemperatureScaling().fit(logits.log_softmax(-1), labels).temperature
    assert t_logits == pytest.approx(t_log_probs, rel=1e-5)


def test_platt_scaling_minimises_its_objective() -> None:
    from scipy.optimize import minimize

    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 2, (300,), generator=generator)
    scores = (2 * labels - 1) * 1.5 + torch.randn(300, generator=generator, dtype=torch.float64)
    platt = PlattScaling().fit(scores, labels)
    n_pos = int(labels.sum())
    n_neg = 300 - n_pos
    target = np.where(labels.numpy() == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    f = scores.numpy()

    def objective(ab: np.ndarray) -> float:
        z = ab[0] * f + ab[1]
        return float(np.mean(np.logaddexp(0, z) - target * z))

    reference = minimize(objective, np.array([1.0, 0.0]), method="BFGS", tol=1e-12).x
    assert platt.a.item() == pytest.approx(reference[0], abs=1e-4)
    assert platt.b.item() == pytest.approx(reference[1], abs=1e-4)
    probs = platt(scores)
    torch.testing.assert_close(probs.sum(1), torch.ones(300, dtype=torch.float64))


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="needs matplotlib")
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_diagram_writes_a_png(tmp_path, strategy: str) -> None:
    probs, labels = _random_probs(400, 3)
    path = tmp_path / "reliability.png"
    bins = reliability_diagram(probs, labels, path, n_bins=12, strategy=strategy)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bins.ece == pytest.approx(expected_calibration_error(probs, labels, 12, strategy))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: expected_calibration_error(torch.full((4, 3), 0.5), torch.zeros(4).long()),
            ValueError,
            "sum to 1",
        ),
        (
            lambda: expected_calibration_error(torch.full((4, 2), 0.5), torch.zeros(3).long()),
            ValueError,
            "one entry per row",
        ),
        (
            lambda: expected_calibration_error(torch.full((4, 2), 0.5), torch.zeros(4)),
            TypeError,
            "integer",
        ),
        (
            lambda: expected_calibration_error(torch.full((2, 2), 0.5), torch.tensor([0, 2])),
            ValueError,
            r"\[0, 2\)",
        ),
        (
            lambda: expected_calibration_error(torch.full((4, 2), 0.5), torch.zeros(4).long(), 0),
            ValueError,
            "n_bins",
        ),
        (
            lambda: calibration_bins(
                torch.full((4, 2), 0.5), torch.zeros(4).long(), strategy="mass"
            ),
            ValueError,
            "strategy",
        ),
        (lambda: brier_score(torch.full((4,), 0.5), torch.zeros(4).long()), ValueError, "2 dim"),
        (lambda: TemperatureScaling(0.0), ValueError, "temperature"),
        (
            lambda: TemperatureScaling().fit(torch.randn(4, 3), torch.zeros(5).long()),
            ValueError,
            "one entry per row",
        ),
    ],
)
def test_bad_input_is_a_clear_error(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()
