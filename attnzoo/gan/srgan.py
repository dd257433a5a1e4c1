"""SRGAN (Ledig et al. 2017): photo-realistic single-image super-resolution.

Generator: SRResNet, a 9x9 convolution with PReLU, ``B`` residual blocks
(conv-BN-PReLU-conv-BN plus the input), a conv-BN with a skip over all the blocks, then
one sub-pixel convolution per factor 2 (a 3x3 convolution to 4x the channels,
``PixelShuffle(2)``, PReLU) and a 9x9 convolution to the image, ``tanh`` at the end.
Discriminator: eight 3x3 convolutions with LeakyReLU(0.2) and batch norm, alternating
stride 1 and 2 while the width doubles from 64 to 512, then dense 1024, LeakyReLU and one
score. (The paper flattens 96x96 inputs into the dense layer; here the maps are averaged
over positions first, so any input size works.)

The generator's loss is ``content + 1e-3 * adversarial``. The content loss compares
``phi(G(x_lr))`` with ``phi(x_hr)`` by mean squared error for a pluggable feature
extractor ``phi``: the paper's is a pretrained VGG19 layer, which cannot be downloaded
here, so the default is ``phi = identity`` (pixel-wise MSE, the SRResNet-MSE loss). Pass
any frozen network as ``feature_extractor`` to get a perceptual loss.

The data batch is a pair ``(low_resolution, high_resolution)`` of image batches in
``[-1, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.validation import check_int, check_non_negative
from .blocks import check_images, check_power_of_two, log2
from .game import GANGame, GeneratorOutput
from .trainer import GANTrainerConfig


@dataclass
class SRGANConfig:
    """Hyper-parameters of SRResNet, the SRGAN discriminator and the loss weights.

    Attributes:
        channels: image channels.
        scale: upscaling factor, a power of two (4 in the paper).
        width: generator channels (64).
        residual_blocks: ``B`` (16).
        discriminator_width: channels of the discriminator's first layers (64).
        adversarial_weight: weight of the adversarial term (1e-3).
    """

    channels: int = 3
    scale: int = 4
    width: int = 64
    residual_blocks: int = 16
    discriminator_width: int = 64
    adversarial_weight: float = 1e-3

    def __post_init__(self) -> None:
        check_int(self.channels, "channels")
        check_power_of_two(self.scale, "scale", minimum=2)
        check_int(self.width, "width")
        check_int(self.residual_blocks, "residual_blocks", minimum=0)
        check_int(self.discriminator_width, "discriminator_width")
        check_non_negative(self.adversarial_weight, "adversarial_weight")


class _ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.PReLU(width),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """``(batch, C, h, w) -> (batch, C, scale * h, scale * w)`` in ``[-1, 1]``."""

    def __init__(self, config: SRGANConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.head = nn.Sequential(nn.Conv2d(config.channels, width, 9, padding=4), nn.PReLU(width))
        self.blocks = nn.Sequential(*(_ResidualBlock(width) for _ in range(config.residual_blocks)))
        self.body_out = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        upsampling: list[nn.Module] = []
        for _ in range(log2(config.scale)):
            upsampling += [
                nn.Conv2d(width, width * 4, 3, padding=1),
                nn.PixelShuffle(2),
                nn.PReLU(width),
            ]
        self.upsample = nn.Sequential(*upsampling)
        self.tail = nn.Conv2d(width, config.channels, 9, padding=4)

    def forward(self, x: Tensor) -> Tensor:
        """Upscale a batch of low-resolution images."""
        check_images(x, "x", self.config.channels)
        h = self.head(x)
        h = h + self.body_out(self.blocks(h))
        return self.tail(self.upsample(h)).tanh()


class SRGANDiscriminator(nn.Module):
    """``(batch, C, H, W) -> (batch,)`` raw scores (any ``H, W >= 16``)."""

    def __init__(self, config: SRGANConfig) -> None:
        super().__init__()
        self.config = config
        w = config.discriminator_width
        layers: list[nn.Module] = [nn.Conv2d(config.channels, w, 3, padding=1), nn.LeakyReLU(0.2)]
        plan = [(w, w, 2), (w, 2 * w, 1), (2 * w, 2 * w, 2), (2 * w, 4 * w, 1),
                (4 * w, 4 * w, 2), (4 * w, 8 * w, 1), (8 * w, 8 * w, 2)]  # fmt: skip
        for in_channels, out_channels, stride in plan:
            layers += [
                nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.LeakyReLU(0.2),
            ]
        self.body = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Linear(8 * w, 16 * w), nn.LeakyReLU(0.2))
        self.head = nn.Linear(16 * w, 1)

    def features(self, x: Tensor) -> Tensor:
        """The dense layer's activations, ``(batch, 16 * discriminator_width)``."""
        check_images(x, "x", self.config.channels)
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"`x` must be at least 16x16, got {x.shape[-2]}x{x.shape[-1]}")
        return self.dense(self.body(x).mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        """Images to ``(batch,)`` scores."""
        return self.head(self.features(x)).squeeze(-1)


class SRGAN(GANGame):
    """SRResNet against the SRGAN discriminator, with a content loss.

    Args:
        config: networks and weights.
        feature_extractor: ``phi`` of the content loss, any module from images to
            features; frozen here (no gradients, eval mode). None: pixel-wise MSE.
    """

    def __init__(
        self, config: SRGANConfig | None = None, feature_extractor: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.config = config = config or SRGANConfig()
        self.generator = SRResNet(config)
        self.discriminators = nn.ModuleList([SRGANDiscriminator(config)])
        self.adversarial_weight = config.adversarial_weight
        self.feature_extractor = feature_extractor
        if feature_extractor is not None:
            feature_extractor.requires_grad_(False)
            feature_extractor.eval()

    def train(self, mode: bool = True) -> SRGAN:
        super().train(mode)
        if self.feature_extractor is not None:
            self.feature_extractor.eval()
        return self

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def _pair(self, batch: object) -> tuple[Tensor, Tensor]:
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise TypeError("an SRGAN batch must be a pair (low_resolution, high_resolution)")
        low, high = batch
        check_images(low, "low_resolution", self.config.channels)
        check_images(high, "high_resolution", self.config.channels)
        expected = (low.shape[-2] * self.config.scale, low.shape[-1] * self.config.scale)
        if tuple(high.shape[-2:]) != expected:
            raise ValueError(
                f"`high_resolution` must be {self.config.scale}x the low resolution, "
                f"{expected[0]}x{expected[1]}, got {high.shape[-2]}x{high.shape[-1]}"
            )
        return low, high

    def real(self, batch: object) -> list[Tensor]:
        return [self._pair(batch)[1]]

    def generate(self, batch: object) -> GeneratorOutput:
        return GeneratorOutput([self.generator(self._pair(batch)[0])])

    def content_loss(self, generated: Tensor, target: Tensor) -> Tensor:
        """Mean squared error of ``phi(generated)`` and ``phi(target)``."""
        if self.feature_extractor is None:
            return (generated - target).pow(2).mean()
        return (self.feature_extractor(generated) - self.feature_extractor(target)).pow(2).mean()

    def generator_losses(self, batch: object, output: GeneratorOutput) -> dict[str, Tensor]:
        return {"content": self.content_loss(output.fakes[0], self._pair(batch)[1])}

    def sample(self, batch: object) -> Tensor:
        """Rows of nearest-neighbour upscaling, ``G(x_lr)`` and ``x_hr`` (up to 8 each)."""
        low, high = self._pair(batch)
        low, high = low[:8], high[:8]
        nearest = low.repeat_interleave(self.config.scale, -1).repeat_interleave(
            self.config.scale, -2
        )
        return torch.cat([nearest, self.generator(low), high])


def srgan_trainer_config(**overrides: Any) -> GANTrainerConfig:
    """SRGAN's settings: non-saturating loss (``-log D(G(x))``), Adam ``1e-4``,
    betas ``(0.9, 0.999)``."""
    defaults: dict[str, Any] = {
        "loss": "non_saturating",
        "lr": 1e-4,
        "betas": (0.9, 0.999),
        "description": "srgan",
    }
    return GANTrainerConfig(**{**defaults, **overrides})


__all__ = [
    "SRGAN",
    "SRGANConfig",
    "SRGANDiscriminator",
    "SRResNet",
    "srgan_trainer_config",
]
