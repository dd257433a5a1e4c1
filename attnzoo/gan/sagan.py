"""Self-attention GAN (SAGAN; Zhang et al. 2019).

Residual generator and discriminator (the SNGAN / BigGAN block layout), spectral
normalisation on every convolution and linear layer of *both* networks, and
:class:`~attnzoo.attention.SelfAttention2d` inserted after the block that produces each
resolution listed in ``attention_resolutions``. Each attention block starts as the
identity (its ``gamma`` is 0) and learns how much non-local evidence to mix in. Trained
with the hinge loss and the two time-scale update rule: Adam with ``lr = 1e-4`` for the
generator, ``4e-4`` for the discriminator and ``betas = (0, 0.9)``
(:func:`sagan_trainer_config`).

Unconditional here: the paper's class-conditional batch norm and projection
discriminator are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import SelfAttention2d
from ..attention.validation import check_int
from .blocks import check_images, check_power_of_two, log2
from .game import UnconditionalGame
from .layers import apply_spectral_norm
from .trainer import GANTrainerConfig


@dataclass
class SAGANConfig:
    """Hyper-parameters of :class:`SAGANGenerator` and :class:`SAGANDiscriminator`.

    Attributes:
        latent_dim: width of ``z`` (128 in the paper).
        channels: image channels.
        image_size: a power of two >= 8.
        width: channels at the full resolution; doubled at each halving of it.
        attention_resolutions: feature-map sizes after which a self-attention block is
            inserted, in both networks (the paper's best: 32 and 64 for 128x128 images).
        n_power_iterations: spectral norm's power iterations per step.
    """

    latent_dim: int = 128
    channels: int = 3
    image_size: int = 32
    width: int = 64
    attention_resolutions: tuple[int, ...] = (16,)
    n_power_iterations: int = 1

    def __post_init__(self) -> None:
        check_int(self.latent_dim, "latent_dim")
        check_int(self.channels, "channels")
        check_power_of_two(self.image_size, "image_size", minimum=8)
        check_int(self.width, "width")
        check_int(self.n_power_iterations, "n_power_iterations")
        self.attention_resolutions = tuple(self.attention_resolutions)
        for resolution in self.attention_resolutions:
            check_power_of_two(resolution, "attention_resolutions", minimum=4)
            if resolution > self.image_size:
                raise ValueError(
                    f"`attention_resolutions` must be <= image_size={self.image_size}, "
                    f"got {resolution}"
                )

    @property
    def blocks(self) -> int:
        """Residual blocks between ``4x4`` and ``image_size``."""
        return log2(self.image_size) - 2

    def width_at(self, resolution: int) -> int:
        """Channels of the feature maps at ``resolution``."""
        return self.width * (self.image_size // resolution)


def _attention(channels: int) -> SelfAttention2d:
    return SelfAttention2d(channels, key_channels=max(1, channels // 8))


class _UpBlock(nn.Module):
    """BN-ReLU-upsample-conv-BN-ReLU-conv with an upsampled 1x1 shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.norm1(x)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _DownBlock(nn.Module):
    """(ReLU-)conv-ReLU-conv-avgpool with a 1x1-avgpool shortcut; the first has no pre-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, first: bool) -> None:
        super().__init__()
        self.first = first
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        if self.first:
            return h + self.shortcut(F.avg_pool2d(x, 2))
        return h + F.avg_pool2d(self.shortcut(x), 2)


class SAGANGenerator(nn.Module):
    """``(batch, latent_dim) -> (batch, channels, image_size, image_size)`` in ``[-1, 1]``.

    Attributes:
        attention: the self-attention blocks, keyed by resolution (as a string).
    """

    def __init__(self, config: SAGANConfig) -> None:
        super().__init__()
        self.config = config
        top = config.width_at(4)
        self.input = nn.Linear(config.latent_dim, top * 16)
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        resolution = 4
        for _ in range(config.blocks):
            resolution *= 2
            self.blocks.append(
                _UpBlock(config.width_at(resolution // 2), config.width_at(resolution))
            )
            if resolution in config.attention_resolutions:
                self.attention[str(resolution)] = _attention(config.width_at(resolution))
        self.output_norm = nn.BatchNorm2d(config.width)
        self.output = nn.Conv2d(config.width, config.channels, 3, padding=1)
        apply_spectral_norm(self, config.n_power_iterations)

    def forward(self, z: Tensor) -> Tensor:
        """``z`` of shape ``(batch, latent_dim)`` to images."""
        if z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"`z` must be (batch, {self.config.latent_dim}), got {tuple(z.shape)}")
        h = self.input(z).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            h = block(h)
            key = str(h.shape[-1])
            if key in self.attention:
                h = self.attention[key](h)
        return self.output(F.relu(self.output_norm(h))).tanh()


class SAGANDiscriminator(nn.Module):
    """``(batch, channels, image_size, image_size) -> (batch,)`` raw scores.

    Residual down blocks to ``4x4``, ReLU, a sum over positions, a linear layer.
    """

    def __init__(self, config: SAGANConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        resolution = config.image_size
        in_channels = config.channels
        for index in range(config.blocks):
            resolution //= 2
            out_channels = config.width_at(resolution)
            self.blocks.append(_DownBlock(in_channels, out_channels, first=index == 0))
            if resolution in config.attention_resolutions:
                self.attention[str(resolution)] = _attention(out_channels)
            in_channels = out_channels
        self.head = nn.Linear(in_channels, 1)
        apply_spectral_norm(self, config.n_power_iterations)

    def features(self, x: Tensor) -> Tensor:
        """Summed final features ``(batch, width_at(4))``."""
        check_images(x, "x", self.config.channels, self.config.image_size)
        h = x
        for block in self.blocks:
            h = block(h)
            key = str(h.shape[-1])
            if key in self.attention:
                h = self.attention[key](h)
        return F.relu(h).sum(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Images to ``(batch,)`` scores."""
        return self.head(self.features(x)).squeeze(-1)


class SAGAN(UnconditionalGame):
    """SAGAN's generator and discriminator as a game for :class:`~attnzoo.gan.GANTrainer`."""

    def __init__(self, config: SAGANConfig | None = None, sample_size: int = 64) -> None:
        config = config or SAGANConfig()
        super().__init__(
            SAGANGenerator(config), SAGANDiscriminator(config), config.latent_dim, sample_size
        )
        self.config = config

    def attention_gammas(self) -> dict[str, float]:
        """Every attention block's ``gamma``: ``{"generator.16": 0.01, ...}``."""
        networks = {"generator": self.generator, "discriminator": self.discriminator}
        gammas = {}
        for name, network in networks.items():
            attention = cast(nn.ModuleDict, network.attention)
            for resolution, block in attention.items():
                gammas[f"{name}.{resolution}"] = float(cast(SelfAttention2d, block).gamma.detach())
        return gammas


def sagan_trainer_config(**overrides: Any) -> GANTrainerConfig:
    """SAGAN's settings: hinge loss, TTUR (``1e-4`` / ``4e-4``), betas ``(0, 0.9)``."""
    defaults: dict[str, Any] = {
        "loss": "hinge",
        "lr": 1e-4,
        "lr_discriminator": 4e-4,
        "betas": (0.0, 0.9),
        "description": "sagan",
    }
    return GANTrainerConfig(**{**defaults, **overrides})


__all__ = [
    "SAGAN",
    "SAGANConfig",
    "SAGANDiscriminator",
    "SAGANGenerator",
    "sagan_trainer_config",
]
