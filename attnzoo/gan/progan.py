"""Progressive growing of GANs (ProGAN; Karras et al. 2018).

Both networks grow from ``4x4`` to ``max_resolution``, one doubling per *stage*. When a
stage starts, its new layers fade in: the output is ``alpha * new + (1 - alpha) * old``
where ``old`` is the previous stage's output upsampled (generator) or the input
downsampled into the previous stage's layers (discriminator), and ``alpha`` rises from 0
to 1; a stabilising phase at ``alpha = 1`` follows. The real images are shown at the
current resolution, blended the same way during a fade.

Also from the paper: pixel norm after every generator convolution, equalised learning
rate in every layer (:class:`~attnzoo.gan.layers.EqualizedConv2d`), a minibatch
standard-deviation feature before the discriminator's last block, LeakyReLU(0.2), and
WGAN-GP with the drift term (``lambda = 10``, ``epsilon_drift = 1e-3``, Adam ``1e-3``
with betas ``(0, 0.99)``; :func:`progan_trainer_config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int
from .blocks import check_images, check_power_of_two, log2
from .data import downsample
from .game import GANGame, GeneratorOutput
from .layers import EqualizedConv2d, EqualizedLinear, MinibatchStdDev, PixelNorm
from .trainer import GANTrainerConfig


@dataclass
class ProGANConfig:
    """Hyper-parameters of the progressive networks.

    Attributes:
        latent_dim: width of ``z`` (512 in the paper).
        channels: image channels.
        max_resolution: the final resolution, a power of two >= 4.
        max_width: channels at ``4x4``; halved at each stage, never below ``min_width``.
        min_width: the fewest channels of any stage.
        group_size: minibatch standard-deviation group size (4 in the paper).
    """

    latent_dim: int = 512
    channels: int = 3
    max_resolution: int = 32
    max_width: int = 512
    min_width: int = 16
    group_size: int = 4

    def __post_init__(self) -> None:
        check_int(self.latent_dim, "latent_dim")
        check_int(self.channels, "channels")
        check_power_of_two(self.max_resolution, "max_resolution", minimum=4)
        check_int(self.max_width, "max_width")
        check_int(self.min_width, "min_width")
        check_int(self.group_size, "group_size")

    @property
    def stages(self) -> int:
        """Number of stages: stage 0 is ``4x4``, the last is ``max_resolution``."""
        return log2(self.max_resolution) - 1

    def width(self, stage: int) -> int:
        """Channels of the feature maps at ``stage``."""
        return max(self.min_width, self.max_width >> stage)

    @staticmethod
    def resolution(stage: int) -> int:
        """The image side at ``stage``: ``4 * 2**stage``."""
        return 4 * 2**stage


def _check_progress(stage: int, alpha: float, stages: int) -> None:
    check_int(stage, "stage", minimum=0)
    if stage >= stages:
        raise ValueError(f"`stage` must be in [0, {stages}), got {stage}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}")


def _upsample(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class _GeneratorBlock(nn.Module):
    """Upsample, then two 3x3 equalised convolutions, each with LeakyReLU and pixel norm."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualizedConv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = EqualizedConv2d(out_channels, out_channels, 3, padding=1)
        self.norm = PixelNorm()

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(F.leaky_relu(self.conv1(_upsample(x)), 0.2))
        return self.norm(F.leaky_relu(self.conv2(x), 0.2))


class ProGANGenerator(nn.Module):
    """``(batch, latent_dim), stage, alpha -> (batch, channels, 4 * 2**stage, same)``.

    Parameters: ``initial`` (``z`` to ``4x4``), ``blocks[s - 1]`` (the layers of stage
    ``s >= 1``), ``to_rgb[s]`` (a 1x1 convolution to ``channels`` per stage). The output is
    linear (no ``tanh``), as in the paper.
    """

    def __init__(self, config: ProGANConfig) -> None:
        super().__init__()
        self.config = config
        top = config.width(0)
        self.norm = PixelNorm()
        self.dense = EqualizedLinear(config.latent_dim, top * 16, gain=2**0.5 / 4)
        self.conv = EqualizedConv2d(top, top, 3, padding=1)
        self.blocks = nn.ModuleList(
            _GeneratorBlock(config.width(s - 1), config.width(s)) for s in range(1, config.stages)
        )
        self.to_rgb = nn.ModuleList(
            EqualizedConv2d(config.width(s), config.channels, 1, gain=1.0)
            for s in range(config.stages)
        )

    def forward(self, z: Tensor, stage: int, alpha: float = 1.0) -> Tensor:
        """Images at the resolution of ``stage``, fading its new block in by ``alpha``."""
        _check_progress(stage, alpha, self.config.stages)
        if z.dim() != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"`z` must be (batch, {self.config.latent_dim}), got {tuple(z.shape)}")
        h = self.dense(self.norm(z)).view(z.shape[0], -1, 4, 4)
        h = self.norm(F.leaky_relu(h, 0.2))
        h = self.norm(F.leaky_relu(self.conv(h), 0.2))
        previous = h
        for block in self.blocks[:stage]:
            previous, h = h, block(h)
        out = self.to_rgb[stage](h)
        if stage > 0 and alpha < 1.0:
            out = alpha * out + (1.0 - alpha) * _upsample(self.to_rgb[stage - 1](previous))
        return out


class _DiscriminatorBlock(nn.Module):
    """Two 3x3 equalised convolutions with LeakyReLU, then 2x average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualizedConv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = EqualizedConv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.leaky_relu(self.conv1(x), 0.2)
        return F.avg_pool2d(F.leaky_relu(self.conv2(x), 0.2), 2)


class ProGANDiscriminator(nn.Module):
    """``(batch, channels, 4 * 2**stage, same), stage, alpha -> (batch,)`` raw scores.

    Parameters: ``from_rgb[s]`` (1x1 convolution per stage), ``blocks[s - 1]`` (stage ``s``
    down to ``s - 1``), and the final ``4x4`` block: minibatch stddev, a 3x3 and a 4x4
    convolution, a linear score.
    """

    def __init__(self, config: ProGANConfig) -> None:
        super().__init__()
        self.config = config
        top = config.width(0)
        self.from_rgb = nn.ModuleList(
            EqualizedConv2d(config.channels, config.width(s), 1) for s in range(config.stages)
        )
        self.blocks = nn.ModuleList(
            _DiscriminatorBlock(config.width(s), config.width(s - 1))
            for s in range(1, config.stages)
        )
        self.stddev = MinibatchStdDev(config.group_size)
        self.conv = EqualizedConv2d(top + 1, top, 3, padding=1)
        self.dense = EqualizedConv2d(top, top, 4)
        self.head = EqualizedLinear(top, 1, gain=1.0)

    def features(self, x: Tensor, stage: int, alpha: float = 1.0) -> Tensor:
        """The features before the score, ``(batch, width(0))``."""
        _check_progress(stage, alpha, self.config.stages)
        check_images(x, "x", self.config.channels, self.config.resolution(stage))
        h = F.leaky_relu(self.from_rgb[stage](x), 0.2)
        if stage > 0:
            h = self.blocks[stage - 1](h)
            if alpha < 1.0:
                skip = F.leaky_relu(self.from_rgb[stage - 1](F.avg_pool2d(x, 2)), 0.2)
                h = alpha * h + (1.0 - alpha) * skip
            for block in reversed(self.blocks[: stage - 1]):
                h = block(h)
        h = F.leaky_relu(self.conv(self.stddev(h)), 0.2)
        return F.leaky_relu(self.dense(h), 0.2).flatten(1)

    def forward(self, x: Tensor, stage: int, alpha: float = 1.0) -> Tensor:
        """Images at the resolution of ``stage`` to ``(batch,)`` scores."""
        return self.head(self.features(x, stage, alpha)).squeeze(-1)


@dataclass
class ProgressiveSchedule:
    """When each stage grows: ``phase_steps`` steps of fade-in, then as many stabilising.

    Stage 0 only stabilises. Step ``t`` maps to ``(stage, alpha)``; after the last stage
    has stabilised the schedule stays there. The whole growth takes
    ``phase_steps * (2 * stages - 1)`` steps (:attr:`total_steps`).

    Attributes:
        phase_steps: steps of one fade-in or one stabilising phase.
        stages: number of stages (``ProGANConfig.stages``).
    """

    phase_steps: int
    stages: int

    def __post_init__(self) -> None:
        check_int(self.phase_steps, "phase_steps")
        check_int(self.stages, "stages")

    @property
    def total_steps(self) -> int:
        """Steps until the last stage has faded in and stabilised."""
        return self.phase_steps * (2 * self.stages - 1)

    def __call__(self, step: int) -> tuple[int, float]:
        """``(stage, alpha)`` at ``step``."""
        check_int(step, "step", minimum=0)
        if step < self.phase_steps:
            return 0, 1.0
        stage, within = divmod(step - self.phase_steps, 2 * self.phase_steps)
        stage += 1
        if stage >= self.stages:
            return self.stages - 1, 1.0
        return stage, min(1.0, within / self.phase_steps)


class ProgressiveGAN(GANGame):
    """ProGAN as a game: the data batch is real images at ``max_resolution``.

    The current ``stage`` and ``alpha`` follow ``schedule`` (called by the trainer at
    every step) or are set by hand with :meth:`set_progress`.

    Args:
        config: the networks' hyper-parameters.
        schedule: a :class:`ProgressiveSchedule`, or None to set progress by hand.
        sample_size: rows of the fixed noise of :meth:`sample`.
    """

    def __init__(
        self,
        config: ProGANConfig | None = None,
        schedule: ProgressiveSchedule | None = None,
        sample_size: int = 64,
    ) -> None:
        super().__init__()
        self.config = config = config or ProGANConfig()
        if schedule is not None and schedule.stages != config.stages:
            raise ValueError(
                f"`schedule` has {schedule.stages} stages, the networks {config.stages}"
            )
        self.schedule = schedule
        self.generator = ProGANGenerator(config)
        self.discriminators = nn.ModuleList([ProGANDiscriminator(config)])
        self.stage, self.alpha = 0, 1.0
        noise = torch.randn(
            sample_size, config.latent_dim, generator=torch.Generator().manual_seed(0)
        )
        self.register_buffer("sample_noise", noise, persistent=False)

    def set_progress(self, stage: int, alpha: float = 1.0) -> None:
        """Grow (or shrink) to ``stage`` with fade-in ``alpha``."""
        _check_progress(stage, alpha, self.config.stages)
        self.stage, self.alpha = stage, float(alpha)

    def on_step(self, step: int, steps: int) -> None:
        if self.schedule is not None:
            self.set_progress(*self.schedule(step))

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def real(self, batch: object) -> list[Tensor]:
        """Real images at the current resolution, faded like the generator's output."""
        if not isinstance(batch, Tensor):
            raise TypeError(f"`batch` must be a tensor of images, got {type(batch).__name__}")
        check_images(batch, "batch", self.config.channels, self.config.max_resolution)
        x = downsample(batch, self.config.resolution(self.stage))
        if self.stage > 0 and self.alpha < 1.0:
            x = self.alpha * x + (1.0 - self.alpha) * _upsample(F.avg_pool2d(x, 2))
        return [x]

    def generate(self, batch: object) -> GeneratorOutput:
        if not isinstance(batch, Tensor):
            raise TypeError(f"`batch` must be a tensor of images, got {type(batch).__name__}")
        z = torch.randn(
            batch.shape[0], self.config.latent_dim, device=batch.device, dtype=batch.dtype
        )
        return GeneratorOutput([self.generator(z, self.stage, self.alpha)])

    def discriminate(self, index: int, x: Tensor, condition: Tensor | None = None) -> Tensor:
        return self.discriminators[index](x, self.stage, self.alpha)

    def features(self, index: int, x: Tensor, condition: Tensor | None = None) -> Tensor:
        discriminator = cast(ProGANDiscriminator, self.discriminators[index])
        return discriminator.features(x, self.stage, self.alpha)

    def sample(self, batch: object) -> Tensor:
        return self.generator(self.sample_noise, self.stage, self.alpha)


def progan_trainer_config(**overrides: Any) -> GANTrainerConfig:
    """ProGAN's settings: WGAN-GP (``lambda = 10``) with drift ``1e-3``, Adam ``1e-3``,
    betas ``(0, 0.99)``, one critic step per generator step."""
    defaults: dict[str, Any] = {
        "loss": "wasserstein",
        "lr": 1e-3,
        "betas": (0.0, 0.99),
        "gradient_penalty": 10.0,
        "drift": 1e-3,
        "description": "progan",
    }
    return GANTrainerConfig(**{**defaults, **overrides})


__all__ = [
    "ProGANConfig",
    "ProGANDiscriminator",
    "ProGANGenerator",
    "ProgressiveGAN",
    "ProgressiveSchedule",
    "progan_trainer_config",
]
