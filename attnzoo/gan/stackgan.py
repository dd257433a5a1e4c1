"""StackGAN (Zhang et al. 2017): text-to-image synthesis in two stages.

Conditioning augmentation (CA) maps a text embedding ``phi_t`` to a Gaussian
``N(mu(phi_t), diag(sigma(phi_t)^2))`` and samples the condition ``c`` from it (the
reparameterisation trick); the generator's loss gains the KL term
``D_KL(N(mu, sigma^2) || N(0, I))``, which keeps the conditioning manifold smooth.

* Stage I: ``(z, c)`` to a low-resolution image (64x64 in the paper) by upsampling blocks.
* Stage II: the Stage-I image, downsampled by two stride-2 convolutions, joined with a
  second CA's condition, residual blocks, then upsampling to ``stage2_factor`` times the
  Stage-I resolution (4x: 256x256 in the paper). Stage I is frozen while Stage II trains.

Each discriminator sees the image with a compressed, spatially replicated embedding and
is *matching-aware*: besides real pairs (score 1) and generated ones (score 0) it also
learns that a real image with a mismatched text (another sample's embedding) is fake.

The data batch is a pair ``(images, embeddings)``, images at the Stage-II resolution; in
this package the embeddings come from :func:`~attnzoo.gan.data.shape_embeddings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_int, check_non_negative, check_rank, check_size
from .blocks import check_images, check_power_of_two, log2
from .data import downsample
from .game import GANGame, GeneratorOutput
from .losses import AdversarialLoss
from .trainer import GANTrainerConfig


@dataclass
class StackGANConfig:
    """Hyper-parameters of both stages.

    Attributes:
        embed_dim: width of the text embedding (1024 in the paper).
        condition_dim: width of ``c`` (128).
        latent_dim: width of ``z`` (100).
        channels: image channels.
        stage1_resolution: Stage-I image side, a power of two >= 8 (64).
        stage2_factor: Stage-II upscaling, a power of two >= 2 (4).
        generator_width: channels of the generators' last hidden layers.
        discriminator_width: channels of the discriminators' first layers.
        residual_blocks: Stage-II residual blocks.
        kl_weight: weight of the KL term (``lambda = 1``).
        mismatch_weight: weight of the mismatched-text term of the discriminators' loss.
    """

    embed_dim: int = 1024
    condition_dim: int = 128
    latent_dim: int = 100
    channels: int = 3
    stage1_resolution: int = 64
    stage2_factor: int = 4
    generator_width: int = 64
    discriminator_width: int = 64
    residual_blocks: int = 2
    kl_weight: float = 1.0
    mismatch_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("embed_dim", "condition_dim", "latent_dim", "channels"):
            check_int(getattr(self, name), name)
        check_power_of_two(self.stage1_resolution, "stage1_resolution", minimum=8)
        check_power_of_two(self.stage2_factor, "stage2_factor", minimum=2)
        check_int(self.generator_width, "generator_width")
        check_int(self.discriminator_width, "discriminator_width")
        check_int(self.residual_blocks, "residual_blocks", minimum=0)
        check_non_negative(self.kl_weight, "kl_weight")
        check_non_negative(self.mismatch_weight, "mismatch_weight")

    @property
    def stage2_resolution(self) -> int:
        """Stage-II image side."""
        return self.stage1_resolution * self.stage2_factor


class ConditioningAugmentation(nn.Module):
    """``phi_t (batch, embed_dim) -> (c, mu, logvar)``, each ``(batch, condition_dim)``.

    One linear layer gives ``mu`` and ``log sigma^2``; in training ``c = mu + sigma * eps``
    with ``eps ~ N(0, I)``, in evaluation ``c = mu``.
    """

    def __init__(self, embed_dim: int, condition_dim: int) -> None:
        super().__init__()
        self.embed_dim = check_int(embed_dim, "embed_dim")
        self.condition_dim = check_int(condition_dim, "condition_dim")
        self.proj = nn.Linear(embed_dim, 2 * condition_dim)

    def forward(self, embedding: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Sample the condition; returns ``(c, mu, logvar)``."""
        check_rank(embedding, 2, "embedding", "(batch, embed_dim)")
        check_size(embedding, 1, self.embed_dim, "embedding", "embed_dim")
        mu, logvar = self.proj(embedding).chunk(2, dim=1)
        if not self.training:
            return mu, mu, logvar
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu), mu, logvar


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``D_KL(N(mu, exp(logvar)) || N(0, I))`` averaged over the batch and the dimensions.

    Args:
        mu: ``(batch, dim)``.
        logvar: ``(batch, dim)``.

    Returns:
        a scalar: ``mean(0.5 * (mu^2 + exp(logvar) - 1 - logvar))``.
    """
    if mu.shape != logvar.shape:
        raise ValueError(
            f"`mu` {tuple(mu.shape)} and `logvar` {tuple(logvar.shape)} must have one shape"
        )
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2.0, mode="nearest"),
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class StageIGenerator(nn.Module):
    """``(z (batch, latent_dim), c (batch, condition_dim)) -> (batch, C, r1, r1)`` in [-1, 1]."""

    def __init__(self, config: StackGANConfig) -> None:
        super().__init__()
        self.config = config
        ups = log2(config.stage1_resolution) - 2
        width = config.generator_width * 2**ups
        self.input = nn.Sequential(
            nn.Linear(config.latent_dim + config.condition_dim, width * 16, bias=False),
            nn.BatchNorm1d(width * 16),
            nn.ReLU(),
        )
        layers = []
        for _ in range(ups):
            layers.append(_up(width, width // 2))
            width //= 2
        self.upsample = nn.Sequential(*layers)
        self.output = nn.Conv2d(width, config.channels, 3, padding=1)

    def forward(self, z: Tensor, condition: Tensor) -> Tensor:
        """Draw a Stage-I image for each ``(z, c)``."""
        check_rank(z, 2, "z", "(batch, latent_dim)")
        check_size(z, 1, self.config.latent_dim, "z", "latent_dim")
        check_rank(condition, 2, "condition", "(batch, condition_dim)")
        check_size(condition, 1, self.config.condition_dim, "condition", "condition_dim")
        h = self.input(torch.cat([condition, z], dim=1)).view(z.shape[0], -1, 4, 4)
        return self.output(self.upsample(h)).tanh()


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class StageIIGenerator(nn.Module):
    """``(image (batch, C, r1, r1), c (batch, condition_dim)) -> (batch, C, r2, r2)``."""

    def __init__(self, config: StackGANConfig) -> None:
        super().__init__()
        self.config = config
        w = config.generator_width
        self.encoder = nn.Sequential(
            nn.Conv2d(config.channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
        )
        self.joint = nn.Sequential(
            nn.Conv2d(4 * w + config.condition_dim, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
        )
        self.residual = nn.Sequential(
            *(_ResidualBlock(4 * w) for _ in range(config.residual_blocks))
        )
        layers = []
        width = 4 * w
        for _ in range(2 + log2(config.stage2_factor)):
            out = max(width // 2, max(w // 4, 1))
            layers.append(_up(width, out))
            width = out
        self.upsample = nn.Sequential(*layers)
        self.output = nn.Conv2d(width, config.channels, 3, padding=1)

    def forward(self, image: Tensor, condition: Tensor) -> Tensor:
        """Refine Stage-I images into Stage-II images."""
        check_images(image, "image", self.config.channels, self.config.stage1_resolution)
        check_rank(condition, 2, "condition", "(batch, condition_dim)")
        check_size(condition, 1, self.config.condition_dim, "condition", "condition_dim")
        h = self.encoder(image)
        c = condition[:, :, None, None].expand(-1, -1, *h.shape[-2:])
        h = self.residual(self.joint(torch.cat([h, c], dim=1)))
        return self.output(self.upsample(h)).tanh()


class ConditionalDiscriminator(nn.Module):
    """StackGAN's discriminator: ``(images (batch, C, r, r), embedding) -> (batch,)``.

    Stride-2 4x4 convolutions (batch norm after the first) down to ``4x4``; the embedding
    compressed by a linear layer to ``condition_dim``, replicated over the ``4x4``
    positions and joined by a 1x1 convolution; a 4x4 convolution to one score.
    """

    def __init__(self, config: StackGANConfig, resolution: int) -> None:
        super().__init__()
        self.config = config
        self.resolution = check_power_of_two(resolution, "resolution", minimum=8)
        w = config.discriminator_width
        layers: list[nn.Module] = [nn.Conv2d(config.channels, w, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = w
        for _ in range(log2(resolution) - 3):
            out = min(width * 2, 8 * w)
            layers += [
                nn.Conv2d(width, out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        self.image = nn.Sequential(*layers)
        self.compress = nn.Sequential(
            nn.Linear(config.embed_dim, config.condition_dim), nn.LeakyReLU(0.2)
        )
        self.joint = nn.Sequential(
            nn.Conv2d(width + config.condition_dim, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
        )
        self.head = nn.Conv2d(width, 1, 4)

    def _joint(self, x: Tensor, embedding: Tensor | None) -> Tensor:
        check_images(x, "x", self.config.channels, self.resolution)
        if embedding is None:
            raise ValueError("StackGAN's discriminators need the text embedding as condition")
        check_rank(embedding, 2, "embedding", "(batch, embed_dim)")
        check_size(embedding, 1, self.config.embed_dim, "embedding", "embed_dim")
        h = self.image(x)
        e = self.compress(embedding)[:, :, None, None].expand(-1, -1, *h.shape[-2:])
        return self.joint(torch.cat([h, e], dim=1))

    def features(self, x: Tensor, embedding: Tensor | None) -> Tensor:
        """The joint image-text features, flattened."""
        return self._joint(x, embedding).flatten(1)

    def forward(self, x: Tensor, embedding: Tensor | None) -> Tensor:
        """Score image-text pairs: ``(batch,)``."""
        return self.head(self._joint(x, embedding)).flatten()


class StackGAN(GANGame):
    """Both StackGAN stages; :attr:`stage` says which one trains.

    Build a trainer for stage 1, train, call :meth:`set_stage` with 2 (which freezes
    Stage I) and build a new trainer for stage 2.

    Attributes:
        conditioning1, generator1, discriminator1: Stage I.
        conditioning2, generator2, discriminator2: Stage II.
    """

    def __init__(self, config: StackGANConfig | None = None, stage: int = 1) -> None:
        super().__init__()
        self.config = config = config or StackGANConfig()
        self.conditioning1 = ConditioningAugmentation(config.embed_dim, config.condition_dim)
        self.generator1 = StageIGenerator(config)
        self.discriminator1 = ConditionalDiscriminator(config, config.stage1_resolution)
        self.conditioning2 = ConditioningAugmentation(config.embed_dim, config.condition_dim)
        self.generator2 = StageIIGenerator(config)
        self.discriminator2 = ConditionalDiscriminator(config, config.stage2_resolution)
        self.stage = 1
        self.set_stage(stage)

    def set_stage(self, stage: int) -> None:
        """Train ``stage`` (1 or 2); in stage 2 the Stage-I networks are frozen in eval mode."""
        if stage not in (1, 2):
            raise ValueError(f"`stage` must be 1 or 2, got {stage}")
        self.stage = stage
        for module in (self.conditioning1, self.generator1):
            module.requires_grad_(stage == 1)
        self.train(self.training)

    def train(self, mode: bool = True) -> StackGAN:
        super().train(mode)
        if self.stage == 2:
            self.conditioning1.eval()
            self.generator1.eval()
        return self

    @property
    def discriminators(self) -> nn.ModuleList:  # type: ignore[override]
        """The discriminator of the stage that trains."""
        return nn.ModuleList([self.discriminator1 if self.stage == 1 else self.discriminator2])

    def generator_parameters(self) -> list[nn.Parameter]:
        if self.stage == 1:
            return [*self.conditioning1.parameters(), *self.generator1.parameters()]
        return [*self.conditioning2.parameters(), *self.generator2.parameters()]

    def _pair(self, batch: object) -> tuple[Tensor, Tensor]:
        if not (isinstance(batch, tuple | list) and len(batch) == 2):
            raise TypeError("a StackGAN batch must be a pair (images, embeddings)")
        images, embeddings = batch
        check_images(images, "images", self.config.channels, self.config.stage2_resolution)
        check_rank(embeddings, 2, "embeddings", "(batch, embed_dim)")
        check_size(embeddings, 1, self.config.embed_dim, "embeddings", "embed_dim")
        return images, embeddings

    @property
    def resolution(self) -> int:
        """The image side of the stage that trains."""
        config = self.config
        return config.stage1_resolution if self.stage == 1 else config.stage2_resolution

    def real(self, batch: object) -> list[Tensor]:
        images, _ = self._pair(batch)
        return [downsample(images, self.resolution)]

    def conditions(self, batch: object) -> list[Tensor | None]:
        return [self._pair(batch)[1]]

    def _draw(self, embeddings: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(stage-1 image, image of this stage, mu, logvar)`` for each row."""
        if self.stage == 1:
            c, mu, logvar = self.conditioning1(embeddings)
            image = self.generator1(z, c)
            return image, image, mu, logvar
        with torch.no_grad():
            low = self.generator1(z, self.conditioning1(embeddings)[0])
        c, mu, logvar = self.conditioning2(embeddings)
        return low, self.generator2(low, c), mu, logvar

    def generate(self, batch: object) -> GeneratorOutput:
        images, embeddings = self._pair(batch)
        z = torch.randn(
            embeddings.shape[0], self.config.latent_dim, device=images.device, dtype=images.dtype
        )
        _, image, mu, logvar = self._draw(embeddings, z)
        return GeneratorOutput([image], {"mu": mu, "logvar": logvar})

    def discriminate(self, index: int, x: Tensor, condition: Tensor | None = None) -> Tensor:
        return self.discriminators[index](x, condition)

    def features(self, index: int, x: Tensor, condition: Tensor | None = None) -> Tensor:
        discriminator = cast(ConditionalDiscriminator, self.discriminators[index])
        return discriminator.features(x, condition)

    def generator_losses(self, batch: object, output: GeneratorOutput) -> dict[str, Tensor]:
        kl = kl_to_standard_normal(output.extras["mu"], output.extras["logvar"])
        return {"kl": self.config.kl_weight * kl}

    def discriminator_losses(
        self, batch: object, loss: AdversarialLoss, real: list[Tensor]
    ) -> dict[str, Tensor]:
        """The matching-aware term: real images with another row's embedding are fake."""
        if not self.config.mismatch_weight:
            return {}
        _, embeddings = self._pair(batch)
        if embeddings.shape[0] < 2:
            return {}
        logits = self.discriminate(0, real[0], embeddings.roll(1, dims=0))
        return {"mismatch": self.config.mismatch_weight * loss.discriminator_fake(logits)}

    def sample(self, batch: object) -> Tensor:
        """Stage I: up to 16 images; stage II: rows of upscaled Stage-I and Stage-II images."""
        _, embeddings = self._pair(batch)
        embeddings = embeddings[: 8 if self.stage == 2 else 16]
        z = torch.randn(
            embeddings.shape[0],
            self.config.latent_dim,
            generator=torch.Generator().manual_seed(0),
        ).to(embeddings)
        low, image, _, _ = self._draw(embeddings, z)
        if self.stage == 1:
            return image
        factor = self.config.stage2_factor
        upscaled = low.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
        return torch.cat([upscaled, image])


def stackgan_trainer_config(**overrides: Any) -> GANTrainerConfig:
    """StackGAN's settings: the GAN loss (non-saturating generator), Adam ``2e-4``,
    betas ``(0.5, 0.999)``."""
    defaults: dict[str, Any] = {
        "loss": "non_saturating",
        "lr": 2e-4,
        "betas": (0.5, 0.999),
        "description": "stackgan",
    }
    return GANTrainerConfig(**{**defaults, **overrides})


__all__ = [
    "ConditionalDiscriminator",
    "ConditioningAugmentation",
    "StackGAN",
    "StackGANConfig",
    "StageIGenerator",
    "StageIIGenerator",
    "kl_to_standard_normal",
    "stackgan_trainer_config",
]
