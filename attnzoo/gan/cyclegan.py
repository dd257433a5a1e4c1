"""CycleGAN (Zhu et al. 2017): unpaired translation between two image domains.

Two generators, ``G: X -> Y`` and ``F: Y -> X`` (Johnson et al.'s ResNet generator: a 7x7
convolution, two stride-2 convolutions, residual blocks, two stride-2 transposed
convolutions, a 7x7 convolution and ``tanh``; instance norm and reflection padding), and
two PatchGAN discriminators (``D_Y`` judges ``Y`` and ``G(x)``, ``D_X`` judges ``X`` and
``F(y)``), each scoring overlapping patches. The generators' loss adds to the two
adversarial terms the cycle loss ``10 * (|F(G(x)) - x|_1 + |G(F(y)) - y|_1)`` and the
identity loss ``5 * (|G(y) - y|_1 + |F(x) - x|_1)``; the paper trains with the
least-squares loss, Adam ``2e-4``, betas ``(0.5, 0.999)`` and a replay buffer of 50
generated images per discriminator (:func:`cyclegan_trainer_config`).

The data batch is a pair ``(x, y)`` of image batches from the two domains, not paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.validation import check_int, check_non_negative
from .blocks import check_images, init_normal
from .game import GANGame, GeneratorOutput
from .trainer import GANTrainerConfig


@dataclass
class CycleGANConfig:
    """Hyper-parameters of the CycleGAN networks and losses.

    Attributes:
        channels: image channels of both domains.
        generator_width: channels of the generator's first layer (64 in the paper).
        residual_blocks: 6 for 128x128 images in the paper, 9 for 256x256.
        discriminator_width: channels of the PatchGAN's first layer (64).
        discriminator_layers: stride-2 layers of the PatchGAN (3: 70x70 patches).
        cycle_weight: ``lambda`` of the cycle loss (10).
        identity_weight: weight of the identity loss (5, half of ``lambda``; 0: off).
    """

    channels: int = 3
    generator_width: int = 64
    residual_blocks: int = 6
    discriminator_width: int = 64
    discriminator_layers: int = 3
    cycle_weight: float = 10.0
    identity_weight: float = 5.0

    def __post_init__(self) -> None:
        check_int(self.channels, "channels")
        check_int(self.generator_width, "generator_width")
        check_int(self.residual_blocks, "residual_blocks", minimum=0)
        check_int(self.discriminator_width, "discriminator_width")
        check_int(self.discriminator_layers, "discriminator_layers")
        check_non_negative(self.cycle_weight, "cycle_weight")
        check_non_negative(self.identity_weight, "identity_weight")


class _ResidualBlock(nn.Module):
    """Reflection-padded conv-IN-ReLU-conv-IN plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetGenerator(nn.Module):
    """Johnson et al.'s ResNet generator: ``(batch, C, H, W) -> (batch, C, H, W)`` in [-1, 1].

    ``H`` and ``W`` must be multiples of 4 (two stride-2 convolutions).
    """

    def __init__(self, channels: int = 3, width: int = 64, residual_blocks: int = 6) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels")
        check_int(width, "width")
        check_int(residual_blocks, "residual_blocks", minimum=0)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(channels, width, 7),
            nn.InstanceNorm2d(width),
            nn.ReLU(),
        ]
        for factor in (1, 2):
            layers += [
                nn.Conv2d(width * factor, width * factor * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(width * factor * 2),
                nn.ReLU(),
            ]
        layers += [_ResidualBlock(width * 4) for _ in range(residual_blocks)]
        for factor in (4, 2):
            layers += [
                nn.ConvTranspose2d(
                    width * factor, width * factor // 2, 3, stride=2, padding=1, output_padding=1
                ),
                nn.InstanceNorm2d(width * factor // 2),
                nn.ReLU(),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_normal(self)

    def forward(self, x: Tensor) -> Tensor:
        """Translate a batch of images."""
        check_images(x, "x", self.channels)
        if x.shape[-1] % 4 or x.shape[-2] % 4 or min(x.shape[-2:]) < 8:
            raise ValueError(
                f"`x` must have height and width multiples of 4 and >= 8, "
                f"got {x.shape[-2]}x{x.shape[-1]}"
            )
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``(batch, C, H, W) -> (batch, 1, H', W')``, one raw score per patch.

    4x4 convolutions: ``layers`` with stride 2 (instance norm after all but the first),
    then one with stride 1 and one to a single channel, LeakyReLU(0.2). With
    ``layers = 3`` each score sees a 70x70 patch.
    """

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        self.channels = check_int(channels, "channels")
        self.layers = check_int(layers, "layers")
        check_int(width, "width")
        blocks: list[nn.Module] = [
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        current = width
        for n in range(1, layers + 1):
            out = width * min(2**n, 8)
            stride = 2 if n < layers else 1
            blocks += [
                nn.Conv2d(current, out, 4, stride=stride, padding=1),
                nn.InstanceNorm2d(out),
                nn.LeakyReLU(0.2),
            ]
            current = out
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv2d(current, 1, 4, stride=1, padding=1)
        init_normal(self)

    @property
    def min_size(self) -> int:
        """The smallest input side that leaves at least one patch."""
        return 2**self.layers * 3

    def _check(self, x: Tensor) -> None:
        check_images(x, "x", self.channels)
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"`x` must be at least {self.min_size}x{self.min_size} for a PatchGAN with "
                f"{self.layers} layers, got {x.shape[-2]}x{x.shape[-1]}"
            )

    def features(self, x: Tensor) -> Tensor:
        """The last feature maps, flattened: ``(batch, channels * H'' * W'')``."""
        self._check(x)
        return self.body(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        """Images to a map of patch scores, ``H' = H / 2**layers - 2``."""
        self._check(x)
        return self.head(self.body(x))


class CycleGAN(GANGame):
    """Two generators and two PatchGAN discriminators as one game.

    Attributes:
        generator_xy: ``G: X -> Y``.
        generator_yx: ``F: Y -> X``.
        discriminators: ``[D_Y, D_X]``: the first judges domain ``Y``, the second ``X``.
    """

    def __init__(self, config: CycleGANConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CycleGANConfig()
        self.generator_xy = ResNetGenerator(
            config.channels, config.generator_width, config.residual_blocks
        )
        self.generator_yx = ResNetGenerator(
            config.channels, config.generator_width, config.residual_blocks
        )
        self.discriminators = nn.ModuleList(
            PatchDiscriminator(
                config.channels, config.discriminator_width, config.discriminator_layers
            )
            for _ in range(2)
        )

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.generator_xy.parameters(), *self.generator_yx.parameters()]

    @staticmethod
    def _pair(batch: object) -> tuple[Tensor, Tensor]:
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise TypeError("a CycleGAN batch must be a pair (x, y) of image batches")
        x, y = batch
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError("a CycleGAN batch must be a pair (x, y) of image batches")
        return x, y

    def real(self, batch: object) -> list[Tensor]:
        x, y = self._pair(batch)
        return [y, x]

    def generate(self, batch: object) -> GeneratorOutput:
        x, y = self._pair(batch)
        return GeneratorOutput([self.generator_xy(x), self.generator_yx(y)])

    def generator_losses(self, batch: object, output: GeneratorOutput) -> dict[str, Tensor]:
        x, y = self._pair(batch)
        fake_y, fake_x = output.fakes
        cycle = (self.generator_yx(fake_y) - x).abs().mean() + (
            self.generator_xy(fake_x) - y
        ).abs().mean()
        losses = {"cycle": self.config.cycle_weight * cycle}
        if self.config.identity_weight:
            identity = (self.generator_xy(y) - y).abs().mean() + (
                self.generator_yx(x) - x
            ).abs().mean()
            losses["identity"] = self.config.identity_weight * identity
        return losses

    def sample(self, batch: object) -> Tensor:
        """Rows of ``x``, ``G(x)``, ``F(G(x))`` for up to 8 images of the batch."""
        x, _ = self._pair(batch)
        x = x[:8]
        fake_y = self.generator_xy(x)
        return torch.cat([x, fake_y, self.generator_yx(fake_y)])


def cyclegan_trainer_config(**overrides: Any) -> GANTrainerConfig:
    """CycleGAN's settings: least squares, Adam ``2e-4``, betas ``(0.5, 0.999)``, buffer 50."""
    defaults: dict[str, Any] = {
        "loss": "least_squares",
        "lr": 2e-4,
        "betas": (0.5, 0.999),
        "replay_buffer": 50,
        "description": "cyclegan",
    }
    return GANTrainerConfig(**{**defaults, **overrides})


__all__ = [
    "CycleGAN",
    "CycleGANConfig",
    "PatchDiscriminator",
    "ResNetGenerator",
    "cyclegan_trainer_config",
]
