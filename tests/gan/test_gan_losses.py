"""Adversarial losses against their formulas, and the penalties against per-sample loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.gan import (
    ADVERSARIAL_LOSSES,
    dragan_penalty,
    drift_penalty,
    get_adversarial_loss,
    gradient_penalty,
    per_sample_gradient_norm,
)


def test_registry_names() -> None:
    assert sorted(ADVERSARIAL_LOSSES) == [
        "hinge",
        "least_squares",
        "minimax",
        "non_saturating",
        "wasserstein",
    ]
    with pytest.raises(ValueError, match="loss"):
        get_adversarial_loss("vanilla")
    with pytest.raises(TypeError, match="loss"):
        get_adversarial_loss(3)  # type: ignore[arg-type]


def test_losses_equal_their_formulas() -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(7, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    d_real, d_fake = torch.sigmoid(real), torch.sigmoid(fake)
    expected = {
        "minimax": (
            -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean()),
            torch.log(1 - d_fake).mean(),
        ),
        "non_saturating": (
            -(torch.log(d_real).mean() + torch.log(1 - d_fake).mean()),
            -torch.log(d_fake).mean(),
        ),
        "least_squares": (
            0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake**2).mean(),
            0.5 * ((fake - 1) ** 2).mean(),
        ),
        "hinge": (
            torch.clamp(1 - real, min=0).mean() + torch.clamp(1 + fake, min=0).mean(),
            -fake.mean(),
        ),
        "wasserstein": (fake.mean() - real.mean(), -fake.mean()),
    }
    for name, (d_loss, g_loss) in expected.items():
        loss = get_adversarial_loss(name)
        torch.testing.assert_close(loss.discriminator(real, fake), d_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss.generator(fake), g_loss, rtol=1e-12, atol=1e-12)


def test_minimax_generator_saturates_where_non_saturating_does_not() -> None:
    # A confident discriminator (D(G(z)) ~ 0) leaves the minimax generator no gradient.
    fake = torch.full((4,), -10.0, requires_grad=True)
    get_adversarial_loss("minimax").generator(fake).backward()
    saturating = fake.grad.abs().max().item()
    fake.grad = None
    get_adversarial_loss("non_saturating").generator(fake).backward()
    assert saturating < 1e-4 < fake.grad.abs().max().item()


def test_per_sample_targets_and_patch_logits() -> None:
    loss = get_adversarial_loss("non_saturating")
    logits = torch.randn(3, 1, 4, 4)  # a PatchGAN map per sample
    target = torch.tensor([0.9, 0.0, 0.9])
    expected = F.binary_cross_entropy_with_logits(logits, target.view(3, 1, 1, 1).expand_as(logits))
    torch.testing.assert_close(loss.discriminator_real(logits, target), expected)
    with pytest.raises(ValueError, match="real_target"):
        loss.discriminator_real(logits, torch.ones(4))


def test_margin_losses_refuse_labels() -> None:
    for name in ("hinge", "wasserstein"):
        loss = get_adversarial_loss(name)
        assert not loss.uses_targets
        loss.discriminator(torch.randn(3), torch.randn(3), 1.0, 0.0)  # the defaults are fine
        with pytest.raises(ValueError, match="no labels"):
            loss.discriminator(torch.randn(3), torch.randn(3), real_target=0.9)


def test_bad_logits() -> None:
    loss = get_adversarial_loss("hinge")
    with pytest.raises(TypeError, match="fake_logits"):
        loss.generator([1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one sample"):
        loss.generator(torch.zeros(0))


class _Critic(nn.Module):
    """A per-sample network on 4-D images (no batch statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 5 * 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1)).squeeze(-1)


def _loop_norms(critic: nn.Module, points: torch.Tensor) -> torch.Tensor:
    norms = []
    for i in range(points.shape[0]):
        x = points[i : i + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(critic(x).sum(), x)
        norms.append(grad.flatten().norm())
    return torch.stack(norms)


def test_per_sample_gradient_norm_equals_a_loop_over_samples() -> None:
    torch.manual_seed(0)
    critic = _Critic().double()
    x = torch.randn(5, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    norms = per_sample_gradient_norm(critic(x), x)
    torch.testing.assert_close(norms, _loop_norms(critic, x.detach()), rtol=1e-12, atol=1e-12)


def test_gradient_penalty_equals_a_per_sample_loop_not_a_per_pixel_one() -> None:
    torch.manual_seed(1)
    critic = _Critic().double()
    real = torch.randn(5, 3, 5, 6, dtype=torch.float64)
    fake = torch.randn(5, 3, 5, 6, dtype=torch.float64)
    penalty = gradient_penalty(
        critic, real, fake, weight=10.0, generator=torch.Generator().manual_seed(3)
    )
    e = torch.rand(5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    points = e.view(5, 1, 1, 1) * real + (1 - e.view(5, 1, 1, 1)) * fake
    expected = 10.0 * ((_loop_norms(critic, points) - 1) ** 2).mean()
    torch.testing.assert_close(penalty, expected, rtol=1e-10, atol=1e-12)
    # The per-pixel version (norm over channels only) is a different number.
    x = points.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x)
    per_pixel = 10.0 * ((grad.norm(2, dim=1) - 1) ** 2).mean()
    assert not torch.allclose(per_pixel, penalty)


def test_gradient_penalty_is_differentiable_in_the_critic() -> None:
    torch.manual_seed(2)
    critic = _Critic()
    penalty = gradient_penalty(critic, torch.randn(4, 3, 5, 6), torch.randn(4, 3, 5, 6))
    penalty.backward()
    assert critic.conv.weight.grad is not None and critic.conv.weight.grad.abs().sum() > 0


def test_gradient_penalty_of_a_one_lipschitz_linear_critic_is_zero() -> None:
    critic = nn.Linear(6, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[0.6, 0.8, 0.0, 0.0, 0.0, 0.0]]))
    penalty = gradient_penalty(critic, torch.randn(9, 6), torch.randn(9, 6))
    assert penalty.item() == pytest.approx(0.0, abs=1e-10)


def test_dragan_penalty_equals_a_per_sample_loop() -> None:
    torch.manual_seed(4)
    critic = _Critic().double()
    real = torch.randn(6, 3, 5, 6, dtype=torch.float64)
    penalty = dragan_penalty(
        critic, real, weight=10.0, spread=0.5, generator=torch.Generator().manual_seed(7)
    )
    random = torch.Generator().manual_seed(7)
    u = torch.rand(real.shape, generator=random, dtype=torch.float64)
    e = torch.rand(6, generator=random, dtype=torch.float64).view(6, 1, 1, 1)
    points = real + e * 0.5 * real.std() * u
    expected = 10.0 * ((_loop_norms(critic, points) - 1) ** 2).mean()
    torch.testing.assert_close(penalty, expected, rtol=1e-10, atol=1e-12)


def test_penalty_argument_errors() -> None:
    critic = nn.Linear(4, 1)
    with pytest.raises(ValueError, match="fake"):
        gradient_penalty(critic, torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="weight"):
        gradient_penalty(critic, torch.randn(3, 4), torch.randn(3, 4), weight=-1.0)
    with pytest.raises(ValueError, match="real"):
        dragan_penalty(critic, torch.randn(4))
    with pytest.raises(TypeError, match="real"):
        dragan_penalty(critic, [[1.0]])  # type: ignore[arg-type]


def test_drift_penalty() -> None:
    logits = torch.tensor([1.0, -2.0, 3.0])
    assert drift_penalty(logits).item() == pytest.approx(1e-3 * 14 / 3)
    assert drift_penalty(logits, weight=0.0).item() == 0.0
    assert math.isfinite(drift_penalty(torch.randn(2, 1, 3, 3)).item())
