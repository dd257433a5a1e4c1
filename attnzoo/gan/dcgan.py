"""DCGAN (Radford et al. 2016) and DRAGAN (Kodali et al. 2017) on its architecture.

Generator: ``z`` through a stack of stride-2 transposed convolutions from ``4x4`` up to
``image_size``, halving the channels each time, batch norm and ReLU, ``tanh`` at the end.
Discriminator: the mirror image with stride-2 convolutions and LeakyReLU(0.2), no
normalisation after the first layer's, and a final ``4x4`` convolution to one score.
Weights start from ``N(0, 0.02)``; Adam with ``lr = 2e-4`` and ``betas = (0.5, 0.999)``.

DRAGAN keeps the architecture and the ordinary GAN loss and adds the gradient penalty
around the real data; its discriminator has no batch norm (``discriminator_norm =
"none"``) so that each sample's gradient in the penalty depends on that sample alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn

from ..attention.validation import check_int
from .blocks import NORMS, check_images, check_power_of_two, init_normal, log2, norm_2d
from .game import UnconditionalGame
from .trainer import GANTrainerConfig


@dataclass
class DCGANConfig:
    """Hyper-parameters of :class:`DCGANGenerator` and :class:`DCGANDiscriminator`.

    Attributes:
        latent_dim: width of ``z`` (100 in the paper).
        channels: image channels.
        image_size: a power of two >= 8 (64 in the paper).
        generator_width: channels of the generator's last hidden layer (64).
        discriminator_width: channels of the discriminator's first layer (64).
        discriminator_norm: ``"batch"`` (the paper), ``"layer"``, ``"instance"`` or
            ``"none"``.
    """

    latent_dim: int = 100
    channels: int = 3
    image_size: int = 64
    generator_width: int = 64
    discriminator_width: int = 64
    discriminator_norm: str = "batch"

    def __post_init__(self) -> None:
        check_int(self.latent_dim, "latent_dim")
        check_int(self.channels, "channels")
        check_power_of_two(self.image_size, "image_size", minimum=8)
        check_int(self.generator_width, "generator_width")
        check_int(self.discriminator_width, "discriminator_width")
        if self.discriminator_norm not in NORMS:
            raise ValueError(
                f"`discriminator_norm` must be one of {NORMS}, got {self.discriminator_norm!r}"
            )

    @property
    def upsamplings(self) -> int:
        """Stride-2 layers between ``4x4`` and ``image_size``."""
        return log2(self.image_size) - 2


class DCGANGenerator(nn.Module):
    """``(batch, latent_dim) -> (batch, channels, image_size, image_size)`` in ``[-1, 1]``."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.config = config
        width = config.generator_width * 2 ** (config.upsamplings - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.latent_dim, width, 4, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        for _ in range(config.upsamplings - 1):
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(),
            ]
            width //= 2
        layers += [nn.ConvTranspose2d(width, config.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_normal(self)

    def forward(self, z: Tensor) -> Tensor:
        """``z`` of shape ``(batch, latent_dim)`` to images."""
        if z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"`z` must be (batch, {self.config.latent_dim}), got {tuple(z.shape)}")
        return self.net(z[:, :, None, None])


class DCGANDiscriminator(nn.Module):
    """``(batch, channels, image_size, image_size) -> (batch,)`` raw scores."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.config = config
        width = config.discriminator_width
        layers: list[nn.Module] = [
            nn.Conv2d(config.channels, width, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2),
        ]
        for _ in range(config.upsamplings - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                norm_2d(config.discriminator_norm, width * 2),
                nn.LeakyReLU(0.2),
            ]
            width *= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 1, 4, 1, 0, bias=False)
        init_normal(self)

    def features(self, x: Tensor) -> Tensor:
        """The ``4x4`` feature maps before the score, flattened: ``(batch, width * 16)``."""
        check_images(x, "x", self.config.channels, self.config.image_size)
        return self.body(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Images to ``(batch,)`` scores."""
        check_images(x, "x", self.config.channels, self.config.image_size)
        return self.head(self.body(x)).flatten()


class DCGAN(UnconditionalGame):
    """A DCGAN generator and discriminator as a game for :class:`~attnzoo.gan.GANTrainer`.

    The data batch is a tensor of real images ``(batch, channels, size, size)``.
    """

    def __init__(self, config: DCGANConfig | None = None, sample_size: int = 64) -> None:
        config = config or DCGANConfig()
        super().__init__(
            DCGANGenerator(config), DCGANDiscriminator(config), config.latent_dim, sample_size
        )
        self.config = config


def dcgan_trainer_config(**overrides: Any) -> GANTrainerConfig:
    """DCGAN's training settings: non-saturating loss, Adam ``2e-4``, betas ``(0.5, 0.999)``."""
    defaults: dict[str, Any] = {
        "loss": "non_saturating",
        "lr": 2e-4,
        "betas": (0.5, 0.999),
        "description": "dcgan",
    }
    return GANTrainerConfig(**{**defaults, **overrides})


class DRAGAN(DCGAN):
    """DCGAN's networks for DRAGAN: the discriminator without batch norm by default.

    Train with :func:`dragan_trainer_config` (the DRAGAN penalty, ``lambda = 10``).
    """

    def __init__(self, config: DCGANConfig | None = None, sample_size: int = 64) -> None:
        super().__init__(config or DCGANConfig(discriminator_norm="none"), sample_size)
        if self.config.discriminator_norm == "batch":
            raise ValueError(
                "DRAGAN's penalty needs per-sample gradients: `discriminator_norm` must not "
                "be 'batch' (use 'none' or 'layer')"
            )


def dragan_trainer_config(**overrides: Any) -> GANTrainerConfig:
    """DRAGAN's settings: the non-saturating loss plus the DRAGAN penalty (``lambda = 10``,
    ``c = 0.5``), Adam ``1e-4`` with betas ``(0.5, 0.999)``."""
    defaults: dict[str, Any] = {
        "loss": "non_saturating",
        "lr": 1e-4,
        "betas": (0.5, 0.999),
        "dragan_penalty": 10.0,
        "description": "dragan",
    }
    return GANTrainerConfig(**{**defaults, **overrides})


def dragan_config(config: DCGANConfig) -> DCGANConfig:
    """``config`` with the discriminator's batch norm removed (for :class:`DRAGAN`)."""
    return replace(config, discriminator_norm="none")


__all__ = [
    "DCGAN",
    "DRAGAN",
    "DCGANConfig",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "dcgan_trainer_config",
    "dragan_config",
    "dragan_trainer_config",
]
