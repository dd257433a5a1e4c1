"""The interface between a GAN's networks and the trainer.

A :class:`GANGame` owns the networks of one GAN and says, for a batch of data, what the
discriminators see as real and what the generators produce. Everything else (the loss,
the optimisers, the stabilising tricks, the penalties, the logging) lives once in the
trainer, so a DCGAN, a CycleGAN with two discriminators and a conditional StackGAN all
get the same tricks.

A game may have several discriminators (CycleGAN has one per domain); the trainer sums
the adversarial losses over them. Discriminator ``i`` sees ``real(batch)[i]`` against
``generate(batch).fakes[i]``, each row optionally paired with ``conditions(batch)[i]``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..attention.validation import check_int, check_min_rank, check_tensor
from .losses import AdversarialLoss


@dataclass
class GeneratorOutput:
    """What the generators produced for one batch.

    Attributes:
        fakes: one tensor per discriminator, the generated samples it judges,
            ``(batch, ...)`` with a graph back to the generators.
        extras: anything :meth:`GANGame.generator_losses` needs besides the fakes
            (a conditioning distribution's mean and log-variance, a reconstruction, ...).
    """

    fakes: list[Tensor]
    extras: dict[str, Tensor] = field(default_factory=dict)


class GANGame(nn.Module, ABC):
    """Networks of one GAN and how a data batch becomes discriminator inputs.

    Subclasses put their discriminators in ``self.discriminators`` (an ``nn.ModuleList``,
    one per adversarial pair) and define :meth:`generator_parameters`, :meth:`real` and
    :meth:`generate`. The other methods have defaults for an unconditional game.

    Attributes:
        adversarial_weight: weight of the adversarial term in the generator's loss
            (1e-3 in SRGAN, where the content loss leads).
    """

    discriminators: nn.ModuleList
    adversarial_weight: float = 1.0

    @abstractmethod
    def generator_parameters(self) -> list[nn.Parameter]:
        """The parameters the generator's optimiser updates."""

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """The parameters the discriminator's optimiser updates (every discriminator's)."""
        return list(self.discriminators.parameters())

    @abstractmethod
    def real(self, batch: object) -> list[Tensor]:
        """The real samples each discriminator sees: one ``(batch, ...)`` tensor each."""

    @abstractmethod
    def generate(self, batch: object) -> GeneratorOutput:
        """Run the generators on a batch: the fakes each discriminator sees, with a graph."""

    def conditions(self, batch: object) -> list[Tensor | None]:
        """Per discriminator, a ``(batch, ...)`` condition aligned with the samples, or None."""
        return [None] * len(self.discriminators)

    def discriminate(self, index: int, x: Tensor, condition: Tensor | None = None) -> Tensor:
        """Discriminator ``index`` on samples ``x`` (and their condition): ``(rows, ...)``."""
        if condition is not None:
            raise ValueError(
                f"{type(self).__name__} has unconditional discriminators; got a condition"
            )
        return self.discriminators[index](x)

    def features(self, index: int, x: Tensor, condition: Tensor | None = None) -> Tensor:
        """Intermediate features of discriminator ``index`` (for feature matching).

        The default calls the discriminator's ``features`` method.
        """
        discriminator = self.discriminators[index]
        features = getattr(discriminator, "features", None)
        if features is None:
            raise TypeError(
                f"feature matching needs `features(x)` on the discriminator; "
                f"{type(discriminator).__name__} has none"
            )
        if condition is not None:
            raise ValueError(f"{type(self).__name__} does not condition its features")
        return features(x)

    def generator_losses(self, batch: object, output: GeneratorOutput) -> dict[str, Tensor]:
        """Weighted non-adversarial terms of the generator's loss (cycle, content, KL...)."""
        return {}

    def discriminator_losses(
        self, batch: object, loss: AdversarialLoss, real: list[Tensor]
    ) -> dict[str, Tensor]:
        """Weighted extra terms of the discriminators' loss (StackGAN's mismatched pairs)."""
        return {}

    def sample(self, batch: object) -> Tensor:
        """Images to show in a sample grid, ``(n, channels, height, width)`` in ``[-1, 1]``."""
        return self.generate(batch).fakes[0]

    def on_step(self, step: int, steps: int) -> None:
        """Called by the trainer before each step (progressive growing uses it)."""


class UnconditionalGame(GANGame):
    """A generator from Gaussian noise and one discriminator: DCGAN, SAGAN, DRAGAN...

    The data batch is the tensor of real samples ``(batch, ...)``; the generator gets
    ``z ~ N(0, I)`` of shape ``(batch, latent_dim)``. :meth:`sample` uses a fixed noise of
    ``sample_size`` rows, drawn once, so successive grids show the same latent points.

    Args:
        generator: ``(n, latent_dim) -> (n, ...)``.
        discriminator: ``(n, ...) -> (rows, ...)`` raw scores.
        latent_dim: width of ``z``.
        sample_size: rows of the fixed sample noise.
        seed: seed of the fixed sample noise.
    """

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        latent_dim: int,
        sample_size: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.generator = generator
        self.discriminators = nn.ModuleList([discriminator])
        self.latent_dim = check_int(latent_dim, "latent_dim")
        self.sample_size = check_int(sample_size, "sample_size")
        noise = torch.randn(sample_size, latent_dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("sample_noise", noise, persistent=False)

    @property
    def discriminator(self) -> nn.Module:
        """The one discriminator."""
        return self.discriminators[0]

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generator.parameters())

    def _real_batch(self, batch: object) -> Tensor:
        check_min_rank(check_tensor(batch, "batch"), 2, "batch", "(batch, ...)")
        assert isinstance(batch, Tensor)
        return batch

    def real(self, batch: object) -> list[Tensor]:
        return [self._real_batch(batch)]

    def noise(self, n: int, like: Tensor) -> Tensor:
        """``(n, latent_dim)`` Gaussian noise on the device and dtype of ``like``."""
        return torch.randn(n, self.latent_dim, device=like.device, dtype=like.dtype)

    def generate(self, batch: object) -> GeneratorOutput:
        real = self._real_batch(batch)
        return GeneratorOutput([self.generator(self.noise(real.shape[0], real))])

    def sample(self, batch: object) -> Tensor:
        return self.generator(self.sample_noise)


__all__ = ["GANGame", "GeneratorOutput", "UnconditionalGame"]
