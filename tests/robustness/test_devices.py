"""Every piece runs on every available device and returns results there."""

from __future__ import annotations

import torch

from attnzoo.robustness import (
    LinearSVM,
    MLPClassifier,
    TemperatureScaling,
    alfa_attack,
    expected_calibration_error,
    greedy_flip_attack,
    knn_sanitize,
    make_blobs,
    smoothed_cross_entropy,
    symmetric_noise,
)


def test_noise_and_smoothing_follow_the_device(device: torch.device) -> None:
    labels = torch.randint(0, 3, (50,), device=device)
    noisy = symmetric_noise(labels, 0.2, seed=0)
    assert noisy.labels.device == device and noisy.flipped.device == device
    # The same seed gives the same labels whatever the device.
    assert torch.equal(noisy.labels.cpu(), symmetric_noise(labels.cpu(), 0.2, seed=0).labels)
    logits = torch.randn(50, 3, device=device, requires_grad=True)
    smoothed_cross_entropy(logits, labels, smoothing=0.1).backward()
    assert logits.grad is not None and logits.grad.device == device


def test_calibration_and_temperature_scaling_on_device(device: torch.device) -> None:
    logits = 4 * torch.randn(64, 3, device=device)
    labels = torch.randint(0, 3, (64,), device=device)
    scaler = TemperatureScaling().fit(logits, labels)  # the module stays on the CPU
    scaled = scaler(logits)
    assert scaled.device == device
    assert 0 <= expected_calibration_error(scaled.detach().softmax(-1), labels) <= 1


def test_svm_attacks_and_defences_on_device(device: torch.device) -> None:
    x, labels = make_blobs(40, dim=3, seed=0)
    x, labels = x.to(device), labels.to(device)
    svm = LinearSVM().fit(x, labels)
    assert svm.predict_proba(x).device == device and svm.predict(x).device == device
    alfa = alfa_attack(LinearSVM(tol=1e-4), x, labels, 4, restarts=1)
    greedy = greedy_flip_attack(LinearSVM(tol=1e-4), x, labels, 2)
    assert alfa.labels.device == device and greedy.labels.device == device
    fixed = knn_sanitize(x, alfa.labels, k=5)
    assert fixed.labels.device == device


def test_mlp_on_device(device: torch.device) -> None:
    x, labels = make_blobs(40, dim=2, seed=0)
    model = MLPClassifier(2, 2, hidden=8, steps=5, flip_rate=0.1).to(device)
    model.fit(x.to(device), labels.to(device))
    assert model.predict_proba(x.to(device)).device == device
