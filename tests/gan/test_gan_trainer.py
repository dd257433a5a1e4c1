"""The GAN trainer: each trick runs and does what it says, diagnostics, PNG output."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from torch import nn

from attnzoo.gan import (
    GANTrainer,
    GANTrainerConfig,
    MLPDiscriminator,
    MLPGenerator,
    PackedDiscriminator,
    UnconditionalGame,
    is_spectrally_normalized,
    make_shapes,
    train_gan,
)
from attnzoo.gan.dcgan import DCGAN, DCGANConfig

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def _game(minibatch: int = 0, packing: int = 1, seed: int = 0) -> UnconditionalGame:
    torch.manual_seed(seed)
    discriminator: nn.Module = MLPDiscriminator(2 * packing, 16, 2, minibatch_kernels=minibatch)
    if packing > 1:
        discriminator = PackedDiscriminator(discriminator, packing)
    return UnconditionalGame(MLPGenerator(2, 2, 16, 2), discriminator, latent_dim=2, sample_size=4)


def _data(step: int) -> torch.Tensor:
    return torch.randn(16, 2, generator=torch.Generator().manual_seed(step)) + 3.0


TRICKS = {
    "none": {},
    "label_smoothing": {"label_smoothing": 0.1},
    "label_flip": {"label_flip_probability": 0.05},
    "instance_noise": {"instance_noise": 0.5},
    "separate_batches": {"separate_batches": True},
    "ttur": {"lr": 1e-4, "lr_discriminator": 4e-4},
    "replay_buffer": {"replay_buffer": 20},
    "feature_matching": {"feature_matching": True},
    "spectral_norm": {"spectral_norm": True},
    "wgan_gp": {"loss": "wasserstein", "gradient_penalty": 10.0, "drift": 1e-3},
    "dragan": {"dragan_penalty": 10.0},
    "lsgan": {"loss": "least_squares", "label_smoothing": 0.2},
    "hinge_critic_steps": {"loss": "hinge", "discriminator_steps": 2},
    "minimax_clip": {"loss": "minimax", "grad_clip": 1.0},
}


@pytest.mark.parametrize("trick", sorted(TRICKS))
def test_every_trick_trains_with_finite_diagnostics(trick: str) -> None:
    game = _game()
    config = GANTrainerConfig(steps=6, progress=False, **TRICKS[trick])
    history = train_gan(game, _data, config)
    assert len(history) == 6
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "grad_norm_d", "grad_norm_g"):
        assert key in history.records, key
    for key, series in history.records.items():
        assert all(math.isfinite(v) for v in series), key
    if trick == "wgan_gp":
        assert {"gradient_penalty", "drift"} <= set(history.records)
    if trick == "dragan":
        assert "dragan_penalty" in history.records
    if trick == "feature_matching":
        assert "feature_matching" in history.records
    if trick == "instance_noise":
        std = history.records["instance_noise_std"]
        assert std[0] == pytest.approx(0.5) and std == sorted(std, reverse=True)


def test_probabilities_are_reported_for_cross_entropy_losses() -> None:
    history = train_gan(_game(), _data, GANTrainerConfig(steps=3, progress=False))
    assert all(0.0 < v < 1.0 for v in history.records["d_real"] + history.records["d_fake"])


@pytest.mark.parametrize("seed", [0, 1])
def test_trainer_moves_the_generator_to_the_data(seed: int) -> None:
    # The loop as a whole learns: real data N((3, 3), I); the generated mean starts near
    # the origin, 4.2 away, and a GAN oscillates around the target rather than sitting on it.
    game = _game(seed=seed)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        start = game.generator(z).mean(0).sub(3.0).norm().item()

    def data(step: int) -> torch.Tensor:
        return torch.randn(64, 2, generator=torch.Generator().manual_seed(step)) + 3.0

    train_gan(game, data, GANTrainerConfig(steps=400, lr=2e-3, progress=False))
    game.eval()
    with torch.no_grad():
        end = game.generator(z).mean(0).sub(3.0).norm().item()
    assert start > 3.5 and end < 2.0  # seeds 0-3 end at 0.5-1.8


def test_separate_batches_matter_only_with_batch_statistics() -> None:
    losses = []
    for separate in (False, True):
        torch.manual_seed(0)
        game = _game()
        config = GANTrainerConfig(steps=1, progress=False, separate_batches=separate)
        losses.append(GANTrainer(game, config).train(_data).records["loss_d"][0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)

    losses = []
    for separate in (False, True):
        torch.manual_seed(0)
        game = DCGAN(
            DCGANConfig(latent_dim=4, image_size=16, generator_width=4, discriminator_width=4)
        )
        images = make_shapes(8, 16, generator=torch.Generator().manual_seed(0)).images
        config = GANTrainerConfig(steps=1, progress=False, separate_batches=separate)
        history = GANTrainer(game, config).train(iter([images]))
        losses.append(history.records["loss_d"][0])
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)  # the D's batch norm sees mixed stats


def test_two_time_scales_and_spectral_norm_options() -> None:
    game = _game()
    trainer = GANTrainer(
        game, GANTrainerConfig(steps=1, lr=1e-4, lr_discriminator=4e-4, spectral_norm=True)
    )
    assert trainer.generator_optimizer.param_groups[0]["lr"] == 1e-4
    assert trainer.discriminator_optimizer.param_groups[0]["lr"] == 4e-4
    linears = [m for m in game.discriminator.modules() if isinstance(m, nn.Linear)]
    assert linears and all(is_spectrally_normalized(m) for m in linears)
    assert not any(is_spectrally_normalized(m) for m in game.generator.modules())
    default = GANTrainer(_game(), GANTrainerConfig(steps=1))
    assert default.discriminator_optimizer.param_groups[0]["lr"] == 2e-4


def test_packing_and_minibatch_discrimination_run_in_mixed_batches() -> None:
    for game in (_game(packing=4), _game(minibatch=3)):
        history = train_gan(game, _data, GANTrainerConfig(steps=3, progress=False))
        assert all(math.isfinite(v) for v in history.records["loss_d"])


def test_replay_buffer_fills_and_critic_steps_draw_batches() -> None:
    game = _game()
    drawn = []

    def data(index: int) -> torch.Tensor:
        drawn.append(index)
        return _data(index)

    trainer = GANTrainer(
        game, GANTrainerConfig(steps=4, replay_buffer=10, discriminator_steps=3, progress=False)
    )
    trainer.train(data)
    assert drawn == list(range(12))
    assert len(trainer.buffers[0]) == 10


def test_generator_step_leaves_the_discriminator_alone() -> None:
    game = _game()
    trainer = GANTrainer(game, GANTrainerConfig(steps=1, progress=False))
    before = [p.detach().clone() for p in game.discriminator.parameters()]
    trainer._generator_step(_data(0))
    after = list(game.discriminator.parameters())
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert all(p.requires_grad and p.grad is None for p in after)


def test_iterable_data_and_resuming() -> None:
    trainer = GANTrainer(_game(), GANTrainerConfig(steps=2, progress=False))
    trainer.train(iter([_data(i) for i in range(2)]))
    trainer.train(lambda i: _data(i), steps=3)
    assert trainer.step == 5 and len(trainer.history) == 5


def test_output_dir_gets_sample_grids_and_diagnostics(tmp_path) -> None:
    game = DCGAN(
        DCGANConfig(latent_dim=4, image_size=8, generator_width=4, discriminator_width=4), 4
    )
    images = make_shapes(8, 8, generator=torch.Generator().manual_seed(0)).images
    trainer_config = GANTrainerConfig(
        steps=4,
        progress=False,
        output_dir=tmp_path,
        sample_every=2,
        plot_diagnostics=HAS_MATPLOTLIB,
    )
    GANTrainer(game, trainer_config).train(lambda _: images)
    grids = sorted(p.name for p in tmp_path.glob("samples_*.png"))
    assert grids == ["samples_000002.png", "samples_000004.png"]
    for path in tmp_path.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "diagnostics.png").exists() == HAS_MATPLOTLIB


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="label smoothing"):
        GANTrainerConfig(loss="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label smoothing"):
        GANTrainerConfig(loss="wasserstein", label_flip_probability=0.1)
    with pytest.raises(ValueError, match="loss"):
        GANTrainerConfig(loss="nope")
    with pytest.raises(ValueError, match="label_flip_probability"):
        GANTrainerConfig(label_flip_probability=0.5)
    with pytest.raises(ValueError, match="betas"):
        GANTrainerConfig(betas=(0.5, 1.0))
    with pytest.raises(ValueError, match="steps"):
        GANTrainerConfig(steps=0)
    with pytest.raises(ValueError, match="replay_buffer"):
        GANTrainerConfig(replay_buffer=-1)
    with pytest.raises(TypeError, match="GANGame"):
        GANTrainer(nn.Linear(2, 2))  # type: ignore[arg-type]


def test_feature_matching_needs_features() -> None:
    game = UnconditionalGame(MLPGenerator(2, 2, 8, 1), nn.Linear(2, 1), latent_dim=2)
    trainer = GANTrainer(game, GANTrainerConfig(steps=1, feature_matching=True, progress=False))
    with pytest.raises(TypeError, match="features"):
        trainer.train(_data)
