"""Every model family: output shapes, a few training steps with finite losses, and the
mechanisms each paper adds (SAGAN's gamma, ProGAN's fade-in, CycleGAN's cycle, ...)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.attention import SelfAttention2d
from attnzoo.gan import (
    DCGAN,
    DRAGAN,
    SAGAN,
    SRGAN,
    ConditioningAugmentation,
    CycleGAN,
    CycleGANConfig,
    DCGANConfig,
    GANTrainer,
    PatchDiscriminator,
    ProGANConfig,
    ProgressiveGAN,
    ProgressiveSchedule,
    ResNetGenerator,
    SAGANConfig,
    SRGANConfig,
    StackGAN,
    StackGANConfig,
    cyclegan_trainer_config,
    dcgan_trainer_config,
    downsample,
    dragan_config,
    dragan_trainer_config,
    is_spectrally_normalized,
    kl_to_standard_normal,
    make_shapes,
    progan_trainer_config,
    sagan_trainer_config,
    shape_embeddings,
    srgan_trainer_config,
    stackgan_trainer_config,
)


def _shapes(n: int, size: int, seed: int = 0, **kwargs: object) -> torch.Tensor:
    return make_shapes(n, size, generator=torch.Generator().manual_seed(seed), **kwargs).images


def _finite(history: object) -> bool:
    return all(math.isfinite(v) for series in history.records.values() for v in series)


# -- DCGAN and DRAGAN ---------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [8, 16, 32])
def test_dcgan_shapes(image_size: int) -> None:
    config = DCGANConfig(latent_dim=6, channels=3, image_size=image_size, generator_width=4,
                         discriminator_width=4)  # fmt: skip
    game = DCGAN(config)
    images = game.generator(torch.randn(5, 6))
    assert images.shape == (5, 3, image_size, image_size)
    assert images.abs().max() <= 1.0
    assert game.discriminator(images).shape == (5,)
    assert game.discriminator.features(images).shape[0] == 5


def test_dcgan_trains_and_uses_its_initialisation() -> None:
    torch.manual_seed(0)
    config = DCGANConfig(latent_dim=8, image_size=16, generator_width=8, discriminator_width=8)
    game = DCGAN(config)
    conv = game.generator.net[0]
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    history = GANTrainer(game, dcgan_trainer_config(steps=3, progress=False)).train(
        lambda i: _shapes(8, 16, i)
    )
    assert _finite(history) and len(history) == 3


def test_dcgan_errors() -> None:
    with pytest.raises(ValueError, match="image_size"):
        DCGANConfig(image_size=24)
    with pytest.raises(ValueError, match="discriminator_norm"):
        DCGANConfig(discriminator_norm="group")
    game = DCGAN(DCGANConfig(latent_dim=4, image_size=8, generator_width=4, discriminator_width=4))
    with pytest.raises(ValueError, match="z"):
        game.generator(torch.randn(2, 5))
    with pytest.raises(ValueError, match="8x8"):
        game.discriminator(torch.randn(2, 3, 16, 16))


def test_dragan_has_no_batch_norm_in_its_discriminator_and_trains() -> None:
    config = dragan_config(DCGANConfig(latent_dim=8, image_size=16, generator_width=4,
                                       discriminator_width=4))  # fmt: skip
    game = DRAGAN(config)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in game.discriminator.modules())
    history = GANTrainer(game, dragan_trainer_config(steps=2, progress=False)).train(
        lambda i: _shapes(8, 16, i)
    )
    assert _finite(history) and history.records["dragan_penalty"][0] > 0
    with pytest.raises(ValueError, match="per-sample"):
        DRAGAN(DCGANConfig(discriminator_norm="batch"))


# -- SAGAN --------------------------------------------------------------------------------


def _sagan(**kwargs: object) -> SAGAN:
    defaults = {"latent_dim": 8, "image_size": 16, "width": 8, "attention_resolutions": (8,)}
    return SAGAN(SAGANConfig(**{**defaults, **kwargs}), sample_size=4)


def test_sagan_places_attention_at_the_chosen_resolutions() -> None:
    game = _sagan(attention_resolutions=(8, 16))
    assert sorted(game.generator.attention) == ["16", "8"]
    assert sorted(game.discriminator.attention) == ["8"]  # its maps go 16 -> 8 -> 4
    for block in [*game.generator.attention.values(), *game.discriminator.attention.values()]:
        assert isinstance(block, SelfAttention2d) and block.gamma.item() == 0.0
    images = game.generator(torch.randn(3, 8))
    assert images.shape == (3, 3, 16, 16)
    assert game.discriminator(images).shape == (3,)


def test_sagan_is_spectrally_normalised_in_both_networks() -> None:
    game = _sagan()
    for network in (game.generator, game.discriminator):
        layers = [m for m in network.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        assert layers and all(is_spectrally_normalized(m) for m in layers)
    config = sagan_trainer_config(steps=1)
    assert (config.loss, config.lr, config.lr_discriminator, config.betas) == (
        "hinge",
        1e-4,
        4e-4,
        (0.0, 0.9),
    )


def test_sagan_gamma_leaves_zero_during_training() -> None:
    torch.manual_seed(0)
    game = _sagan()
    assert all(g == 0.0 for g in game.attention_gammas().values())
    history = GANTrainer(game, sagan_trainer_config(steps=4, progress=False)).train(
        lambda i: _shapes(8, 16, i)
    )
    gammas = game.attention_gammas()
    assert set(gammas) == {"generator.8", "discriminator.8"}
    assert all(g != 0.0 for g in gammas.values()), gammas
    assert _finite(history)


def test_sagan_config_errors() -> None:
    with pytest.raises(ValueError, match="attention_resolutions"):
        SAGANConfig(image_size=16, attention_resolutions=(32,))
    with pytest.raises(ValueError, match="attention_resolutions"):
        SAGANConfig(attention_resolutions=(12,))


# -- Progressive GAN ----------------------------------------------------------------------


def _progan(**kwargs: object) -> ProgressiveGAN:
    config = ProGANConfig(latent_dim=8, max_resolution=16, max_width=16, min_width=8)
    return ProgressiveGAN(config, sample_size=4, **kwargs)


def test_progressive_schedule() -> None:
    schedule = ProgressiveSchedule(phase_steps=10, stages=3)
    assert schedule.total_steps == 50
    assert schedule(0) == (0, 1.0) and schedule(9) == (0, 1.0)
    assert schedule(10) == (1, 0.0) and schedule(15) == (1, 0.5)
    assert schedule(20) == (1, 1.0) and schedule(29) == (1, 1.0)
    assert schedule(30) == (2, 0.0) and schedule(45) == (2, 1.0)
    assert schedule(1000) == (2, 1.0)


def test_progan_grows_with_fade_in() -> None:
    torch.manual_seed(0)
    game = _progan()
    g, d = game.generator, game.discriminators[0]
    z = torch.randn(4, 8)
    for stage in range(3):
        images = g(z, stage)
        assert images.shape == (4, 3, 4 * 2**stage, 4 * 2**stage)
        assert d(images, stage).shape == (4,)
    # alpha = 0: the new stage shows exactly the previous stage, upsampled.
    previous = g(z, 1)
    torch.testing.assert_close(g(z, 2, alpha=0.0), F.interpolate(previous, scale_factor=2.0))
    mixed = g(z, 2, alpha=0.3)
    torch.testing.assert_close(mixed, 0.3 * g(z, 2) + 0.7 * g(z, 2, alpha=0.0))
    # The discriminator's fade: alpha = 0 judges the downsampled image with the old stage.
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(d(x, 2, alpha=0.0), d(F.avg_pool2d(x, 2), 1))


def test_progan_real_images_fade_like_the_generator() -> None:
    game = _progan()
    x = _shapes(4, 16)
    game.set_progress(1, 1.0)
    torch.testing.assert_close(game.real(x)[0], downsample(x, 8))
    game.set_progress(1, 0.0)
    torch.testing.assert_close(game.real(x)[0], F.interpolate(downsample(x, 4), scale_factor=2.0))


def test_progan_uses_its_layers() -> None:
    from attnzoo.gan import EqualizedConv2d, MinibatchStdDev, PixelNorm

    game = _progan()
    assert any(isinstance(m, PixelNorm) for m in game.generator.modules())
    assert any(isinstance(m, MinibatchStdDev) for m in game.discriminators[0].modules())
    convs = [m for m in game.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert convs == []  # every weight layer is equalised
    assert any(isinstance(m, EqualizedConv2d) for m in game.modules())


def test_progan_trains_through_its_schedule() -> None:
    torch.manual_seed(0)
    schedule = ProgressiveSchedule(phase_steps=2, stages=3)
    game = _progan(schedule=schedule)
    config = progan_trainer_config(steps=schedule.total_steps, progress=False)
    assert (config.loss, config.gradient_penalty, config.drift) == ("wasserstein", 10.0, 1e-3)
    history = GANTrainer(game, config).train(lambda i: _shapes(8, 16, i))
    assert (game.stage, game.alpha) == (2, 1.0)
    assert _finite(history) and len(history) == 10
    assert game.sample(None).shape == (4, 3, 16, 16)


def test_progan_errors() -> None:
    game = _progan()
    with pytest.raises(ValueError, match="stage"):
        game.set_progress(3)
    with pytest.raises(ValueError, match="alpha"):
        game.set_progress(1, 1.5)
    with pytest.raises(ValueError, match="stages"):
        _progan(schedule=ProgressiveSchedule(2, 5))
    with pytest.raises(ValueError, match="8x8"):
        game.discriminators[0](torch.randn(2, 3, 16, 16), stage=1)


# -- CycleGAN -----------------------------------------------------------------------------


def test_cyclegan_networks() -> None:
    generator = ResNetGenerator(channels=3, width=4, residual_blocks=2)
    x = _shapes(2, 16)
    assert generator(x).shape == (2, 3, 16, 16)
    patch = PatchDiscriminator(3, width=4, layers=2)
    assert patch(x).shape == (2, 1, 2, 2)  # 16 / 2**2 - 2
    assert PatchDiscriminator(3, width=4, layers=3)(torch.randn(1, 3, 64, 64)).shape == (
        1,
        1,
        6,
        6,
    )
    with pytest.raises(ValueError, match="multiples of 4"):
        generator(torch.randn(1, 3, 18, 18))
    with pytest.raises(ValueError, match="at least 12x12"):
        patch(torch.randn(1, 3, 8, 8))


def test_cyclegan_trains_with_cycle_and_identity_losses() -> None:
    torch.manual_seed(0)
    config = CycleGANConfig(generator_width=4, residual_blocks=1, discriminator_width=4,
                            discriminator_layers=2)  # fmt: skip
    game = CycleGAN(config)
    trainer_config = cyclegan_trainer_config(steps=3, progress=False)
    assert (trainer_config.loss, trainer_config.replay_buffer) == ("least_squares", 50)
    assert (config.cycle_weight, config.identity_weight) == (10.0, 5.0)

    def data(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _shapes(4, 16, 2 * i), _shapes(4, 16, 2 * i + 1, style="outline")

    trainer = GANTrainer(game, trainer_config)
    history = trainer.train(data)
    assert _finite(history)
    assert {"cycle", "identity"} <= set(history.records)
    assert [len(b) for b in trainer.buffers] == [12, 12]  # 3 steps of 4, per discriminator
    x, y = data(0)
    losses = game.generator_losses((x, y), game.generate((x, y)))
    expected_cycle = 10.0 * (
        (game.generator_yx(game.generator_xy(x)) - x).abs().mean()
        + (game.generator_xy(game.generator_yx(y)) - y).abs().mean()
    )
    torch.testing.assert_close(losses["cycle"], expected_cycle)
    assert game.sample((x, y)).shape == (12, 3, 16, 16)
    with pytest.raises(TypeError, match="pair"):
        game.real(x)


# -- SRGAN --------------------------------------------------------------------------------


def test_srgan_upscales_and_trains() -> None:
    torch.manual_seed(0)
    config = SRGANConfig(scale=4, width=8, residual_blocks=2, discriminator_width=4)
    game = SRGAN(config)
    high = _shapes(4, 32)
    low = downsample(high, 8)
    assert game.generator(low).shape == (4, 3, 32, 32)
    assert any(isinstance(m, nn.PixelShuffle) for m in game.generator.modules())
    assert game.discriminators[0](high).shape == (4,)
    history = GANTrainer(game, srgan_trainer_config(steps=2, progress=False)).train(
        lambda i: (low, high)
    )
    assert _finite(history)
    # Default content loss: pixel-wise MSE; the adversarial term weighs 1e-3.
    content = history.records["content"][-1]
    adversarial = history.records["adversarial_g"][-1]
    assert history.records["loss_g"][-1] == pytest.approx(content + 1e-3 * adversarial, rel=1e-5)
    with pytest.raises(ValueError, match="4x the low resolution"):
        game.real((low, _shapes(4, 16)))


def test_srgan_content_loss_uses_the_feature_extractor() -> None:
    extractor = nn.Conv2d(3, 2, 3)
    game = SRGAN(SRGANConfig(scale=2, width=4, residual_blocks=1, discriminator_width=4),
                 feature_extractor=extractor)  # fmt: skip
    a, b = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    expected = (extractor(a) - extractor(b)).pow(2).mean()
    torch.testing.assert_close(game.content_loss(a, b), expected)
    assert not any(p.requires_grad for p in extractor.parameters())
    game.train()
    assert not extractor.training


# -- StackGAN -----------------------------------------------------------------------------


def _stackgan_batch(i: int, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    shapes = make_shapes(n, 16, generator=torch.Generator().manual_seed(i))
    return shapes.images, shape_embeddings(shapes.shapes, shapes.colours, dim=8)


def test_conditioning_augmentation_and_its_kl() -> None:
    torch.manual_seed(0)
    ca = ConditioningAugmentation(8, 4)
    embedding = torch.randn(5, 8)
    c, mu, logvar = ca(embedding)
    assert c.shape == mu.shape == logvar.shape == (5, 4)
    assert not torch.equal(c, mu)  # sampled in training
    ca.eval()
    assert torch.equal(ca(embedding)[0], ca(embedding)[1])
    # Against the closed form and against a Monte-Carlo estimate of the KL.
    mu, logvar = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    closed = kl_to_standard_normal(mu, logvar)
    posterior = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    reference = torch.distributions.kl_divergence(posterior, prior).mean()
    torch.testing.assert_close(closed, reference)
    assert kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_stackgan_two_stages() -> None:
    torch.manual_seed(0)
    config = StackGANConfig(embed_dim=8, condition_dim=4, latent_dim=8, stage1_resolution=8,
                            stage2_factor=2, generator_width=8, discriminator_width=8,
                            residual_blocks=1)  # fmt: skip
    game = StackGAN(config)
    images, embeddings = _stackgan_batch(0)
    assert game.real((images, embeddings))[0].shape == (4, 3, 8, 8)
    assert game.generate((images, embeddings)).fakes[0].shape == (4, 3, 8, 8)
    history = GANTrainer(game, stackgan_trainer_config(steps=3, progress=False)).train(
        _stackgan_batch
    )
    assert _finite(history) and {"kl", "mismatch"} <= set(history.records)

    stage1 = {k: v.clone() for k, v in game.generator1.state_dict().items()}
    game.set_stage(2)
    assert not any(p.requires_grad for p in game.generator1.parameters())
    assert game.generate((images, embeddings)).fakes[0].shape == (4, 3, 16, 16)
    history = GANTrainer(game, stackgan_trainer_config(steps=3, progress=False)).train(
        _stackgan_batch
    )
    assert _finite(history)
    for key, value in game.generator1.state_dict().items():
        assert torch.equal(value, stage1[key]), key  # stage I frozen, BN statistics too
    assert game.sample((images, embeddings)).shape == (8, 3, 16, 16)
    with pytest.raises(ValueError, match="stage"):
        game.set_stage(3)
    with pytest.raises(ValueError, match="embed_dim"):
        game.real((images, torch.randn(4, 5)))
