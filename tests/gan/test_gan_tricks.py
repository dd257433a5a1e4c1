"""Label smoothing and flipping, instance noise, the replay buffer."""

from __future__ import annotations

import pytest
import torch

from attnzoo.gan import InstanceNoise, ReplayBuffer, discriminator_targets


def test_targets_default_to_the_labels() -> None:
    real, fake = discriminator_targets(3, 5)
    assert torch.equal(real, torch.ones(3)) and torch.equal(fake, torch.zeros(5))


def test_label_smoothing_is_one_sided() -> None:
    real, fake = discriminator_targets(4, 4, smoothing=0.1)
    torch.testing.assert_close(real, torch.full((4,), 0.9))
    assert torch.equal(fake, torch.zeros(4))  # fake labels are never smoothed
    real, fake = discriminator_targets(2, 2, real_label=1.0, fake_label=-1.0, smoothing=0.25)
    torch.testing.assert_close(real, torch.full((2,), 0.5))


def test_label_flipping_swaps_about_the_asked_fraction() -> None:
    random = torch.Generator().manual_seed(0)
    real, fake = discriminator_targets(
        20000, 20000, smoothing=0.1, flip_probability=0.05, generator=random
    )
    torch.testing.assert_close(real.unique(), torch.tensor([0.0, 0.9]))
    assert (real == 0).float().mean().item() == pytest.approx(0.05, abs=0.006)
    assert (fake > 0).float().mean().item() == pytest.approx(0.05, abs=0.006)
    # A flipped fake takes the (smoothed) real label.
    torch.testing.assert_close(fake[fake > 0], torch.full_like(fake[fake > 0], 0.9))


def test_target_errors() -> None:
    with pytest.raises(ValueError, match="smoothing"):
        discriminator_targets(2, 2, smoothing=1.0)
    with pytest.raises(ValueError, match="flip_probability"):
        discriminator_targets(2, 2, flip_probability=-0.1)
    with pytest.raises(TypeError, match="real_batch"):
        discriminator_targets(2.0, 2)  # type: ignore[arg-type]


def test_instance_noise_anneals_linearly_to_zero() -> None:
    noise = InstanceNoise(0.4, anneal_steps=100)
    assert noise.std(0) == pytest.approx(0.4)
    assert noise.std(50) == pytest.approx(0.2)
    assert noise.std(100) == 0.0 and noise.std(500) == 0.0
    x = torch.zeros(20000)
    assert noise(x, 50, torch.Generator().manual_seed(0)).std().item() == pytest.approx(
        0.2, rel=0.03
    )
    assert noise(x, 100) is x
    with pytest.raises(ValueError, match="initial_std"):
        InstanceNoise(-0.1, 10)


def test_replay_buffer_passes_through_until_full_then_mixes() -> None:
    buffer = ReplayBuffer(capacity=4, replace_probability=0.5)
    first = torch.arange(4.0).view(4, 1)
    (out,) = buffer(first)
    assert torch.equal(out, first) and len(buffer) == 4
    random = torch.Generator().manual_seed(0)
    returned_old = 0
    for step in range(50):
        batch = torch.full((4, 1), 100.0 + step)
        (out,) = buffer(batch, generator=random)
        assert out.shape == (4, 1)
        returned_old += int((out != batch).sum())
        assert len(buffer) == 4
    # About half the rows come from the pool (200 rows in all).
    assert 70 < returned_old < 130


def test_replay_buffer_keeps_rows_of_aligned_tensors_together() -> None:
    buffer = ReplayBuffer(capacity=3, replace_probability=0.9)
    random = torch.Generator().manual_seed(1)
    for step in range(10):
        x = torch.arange(3.0).view(3, 1) + 10 * step
        images, conditions = buffer(x, 2 * x, generator=random)
        assert torch.equal(conditions, 2 * images)


def test_replay_buffer_errors() -> None:
    buffer = ReplayBuffer(capacity=2)
    buffer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="clear"):
        buffer(torch.zeros(2, 4))
    buffer.clear()
    buffer(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="batch"):
        buffer(torch.zeros(2, 4), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(capacity=0)
