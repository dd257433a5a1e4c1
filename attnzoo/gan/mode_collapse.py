"""The mode-collapse benchmark on 2-D Gaussian mixtures (VEEGAN's and PacGAN's protocol).

Two targets: a ring of 8 Gaussians (radius 1, std 0.01) and a 5x5 grid of 25 Gaussians
(centres at ``{-4, -2, 0, 2, 4}^2``, std 0.05), every mode equally likely. A generated
sample is *high quality* if it lies within 3 standard deviations of its nearest mode,
and then counts for that mode. Reported, for samples of a trained generator:

* ``modes_covered``: modes with at least ``min_count`` high-quality samples;
* ``high_quality``: the fraction of samples that are high quality;
* ``reverse_kl``: ``KL(p_gen || p_true)`` between the distribution of the high-quality
  samples over the modes and the uniform one (0 when every mode gets its share; a
  missing mode adds nothing, a doubled one adds ``p log 2``).

:func:`run_mode_collapse_benchmark` trains a small MLP GAN with each variant (vanilla,
PacGAN packing, minibatch discrimination, DRAGAN), every one with the same generator,
the same discriminator widths and the same number of steps and samples per step, and
averages the statistics over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from ..attention.validation import check_int, check_positive, check_rank
from .game import UnconditionalGame
from .layers import MinibatchDiscrimination, PackedDiscriminator
from .trainer import GANTrainer, GANTrainerConfig


@dataclass
class GaussianMixture2d:
    """An equal-weight mixture of isotropic 2-D Gaussians.

    Attributes:
        means: ``(modes, 2)`` centres.
        std: the standard deviation of every component.
        name: a label for reports.
    """

    means: Tensor
    std: float
    name: str = "mixture"

    def __post_init__(self) -> None:
        check_rank(self.means, 2, "means", "(modes, 2)")
        if self.means.shape[1] != 2:
            raise ValueError(f"`means` must be (modes, 2), got {tuple(self.means.shape)}")
        check_positive(self.std, "std")

    @classmethod
    def ring(cls, modes: int = 8, radius: float = 1.0, std: float = 0.01) -> GaussianMixture2d:
        """``modes`` Gaussians evenly spaced on a circle (PacGAN's 2D-ring)."""
        check_int(modes, "modes")
        angles = torch.arange(modes, dtype=torch.float32) * (2 * math.pi / modes)
        means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        return cls(means, std, f"ring of {modes}")

    @classmethod
    def grid(cls, side: int = 5, spacing: float = 2.0, std: float = 0.05) -> GaussianMixture2d:
        """``side x side`` Gaussians on a square grid centred at 0 (PacGAN's 2D-grid)."""
        check_int(side, "side")
        axis = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * spacing
        means = torch.cartesian_prod(axis, axis)
        return cls(means, std, f"grid of {side * side}")

    @property
    def modes(self) -> int:
        """Number of components."""
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n, 2)`` samples: a uniformly chosen mode plus ``std`` Gaussian noise."""
        check_int(n, "n")
        component = torch.randint(self.modes, (n,), generator=generator)
        return self.means[component] + self.std * torch.randn(n, 2, generator=generator)


@dataclass
class ModeStatistics:
    """Mode coverage of a set of samples (see the module docstring).

    Attributes:
        modes_covered: modes with at least ``min_count`` high-quality samples.
        high_quality: fraction of samples within 3 std of their nearest mode.
        reverse_kl: ``KL(high-quality mode histogram || uniform)``.
    """

    modes_covered: float
    high_quality: float
    reverse_kl: float

    @staticmethod
    def mean(stats: list[ModeStatistics]) -> ModeStatistics:
        """The average of several runs' statistics."""
        if not stats:
            raise ValueError("`stats` must hold at least one ModeStatistics")
        return ModeStatistics(
            *(sum(getattr(s, f.name) for s in stats) / len(stats) for f in fields(ModeStatistics))
        )


def mode_statistics(
    samples: Tensor, mixture: GaussianMixture2d, threshold: float = 3.0, min_count: int = 1
) -> ModeStatistics:
    """Count modes covered, the high-quality fraction and the reverse KL of ``samples``.

    Args:
        samples: ``(n, 2)`` generated points.
        mixture: the target.
        threshold: a sample is high quality within ``threshold * std`` of its nearest mode.
        min_count: high-quality samples a mode needs to count as covered.

    Returns:
        :class:`ModeStatistics`.
    """
    check_rank(samples, 2, "samples", "(n, 2)")
    if samples.shape[1] != 2 or samples.shape[0] == 0:
        raise ValueError(f"`samples` must be (n, 2) with n >= 1, got {tuple(samples.shape)}")
    check_positive(threshold, "threshold")
    check_int(min_count, "min_count")
    points = samples.detach().to(torch.float64).cpu()
    distances = torch.cdist(points, mixture.means.to(torch.float64))  # (n, modes)
    nearest_distance, nearest = distances.min(dim=1)
    good = nearest_distance <= threshold * mixture.std
    counts = torch.bincount(nearest[good], minlength=mixture.modes).to(torch.float64)
    total = counts.sum()
    if total > 0:
        p = counts / total
        nonzero = p > 0
        reverse_kl = float((p[nonzero] * torch.log(p[nonzero] * mixture.modes)).sum())
    else:
        reverse_kl = float("inf")
    return ModeStatistics(
        modes_covered=float((counts >= min_count).sum()),
        high_quality=float(good.double().mean()),
        reverse_kl=reverse_kl,
    )


class MLPGenerator(nn.Module):
    """A small MLP generator ``(n, latent_dim) -> (n, out_dim)`` (ReLU hidden layers).

    PacGAN's synthetic experiments use 4 hidden layers of 400 units with batch norm;
    widths, depth and the batch norm are arguments here so the benchmark fits a CPU.
    """

    def __init__(
        self,
        latent_dim: int = 2,
        out_dim: int = 2,
        hidden: int = 128,
        layers: int = 3,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        check_int(latent_dim, "latent_dim")
        check_int(hidden, "hidden")
        check_int(layers, "layers")
        blocks: list[nn.Module] = []
        width = latent_dim
        for _ in range(layers):
            norm = nn.BatchNorm1d(hidden) if batch_norm else nn.Identity()
            blocks += [nn.Linear(width, hidden), norm, nn.ReLU()]
            width = hidden
        blocks.append(nn.Linear(width, check_int(out_dim, "out_dim")))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: Tensor) -> Tensor:
        """``(n, latent_dim) -> (n, out_dim)``."""
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """A small MLP discriminator ``(n, in_dim) -> (n,)`` raw scores (LeakyReLU 0.2).

    Args:
        in_dim: input width (``packing * 2`` for packed 2-D points).
        hidden: hidden width.
        layers: hidden layers.
        minibatch_kernels: if > 0, a :class:`MinibatchDiscrimination` layer with this
            many kernels (of width 8) before the output layer.
    """

    def __init__(
        self, in_dim: int = 2, hidden: int = 128, layers: int = 3, minibatch_kernels: int = 0
    ) -> None:
        super().__init__()
        check_int(in_dim, "in_dim")
        check_int(hidden, "hidden")
        check_int(layers, "layers")
        check_int(minibatch_kernels, "minibatch_kernels", minimum=0)
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.minibatch = (
            MinibatchDiscrimination(hidden, minibatch_kernels) if minibatch_kernels else None
        )
        self.head = nn.Linear(hidden + minibatch_kernels, 1)

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer, ``(n, hidden)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """``(n, in_dim) -> (n,)``."""
        h = self.body(x)
        if self.minibatch is not None:
            h = self.minibatch(h)
        return self.head(h).squeeze(-1)


MODE_COLLAPSE_VARIANTS: tuple[str, ...] = ("gan", "pacgan", "minibatch", "dragan")


@dataclass
class ModeCollapseConfig:
    """One run of the benchmark; the defaults are the setting of the package's tests.

    The generator learns ten times faster than the discriminator (``lr`` against
    ``lr_discriminator``): there the plain GAN chases the discriminator from one region
    to the next and collapses within a few hundred steps, which is the failure the
    tricks are meant to prevent. Every variant gets the same networks (bar the trick's
    own layer), the same learning rates, steps and samples per step.

    Attributes:
        steps: generator steps.
        batch_size: real and generated samples per step (the same for every variant;
            a packed discriminator sees ``batch_size / packing`` packed samples).
        latent_dim: generator input width.
        hidden: hidden width of both networks.
        layers: hidden layers of both networks.
        lr: Adam learning rate of the generator.
        lr_discriminator: Adam learning rate of the discriminator.
        batch_norm: batch norm in the generator's hidden layers.
        packing: PacGAN's ``m`` for the ``"pacgan"`` variant.
        minibatch_kernels: kernels of the ``"minibatch"`` variant.
        dragan_weight: ``lambda`` of the ``"dragan"`` variant.
        eval_samples: samples drawn to measure coverage (2500 in the protocol).
    """

    steps: int = 1000
    batch_size: int = 64
    latent_dim: int = 16
    hidden: int = 64
    layers: int = 2
    lr: float = 1e-3
    lr_discriminator: float = 1e-4
    batch_norm: bool = False
    packing: int = 2
    minibatch_kernels: int = 8
    dragan_weight: float = 10.0
    eval_samples: int = 2500

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "latent_dim", "hidden", "layers", "packing"):
            check_int(getattr(self, name), name)
        check_positive(self.lr, "lr")
        check_positive(self.lr_discriminator, "lr_discriminator")
        check_int(self.minibatch_kernels, "minibatch_kernels")
        check_int(self.eval_samples, "eval_samples")
        if self.batch_size % self.packing:
            raise ValueError(
                f"`batch_size` ({self.batch_size}) must be a multiple of `packing` ({self.packing})"
            )


def build_mode_collapse_game(variant: str, config: ModeCollapseConfig) -> UnconditionalGame:
    """The generator and discriminator of one variant (``MODE_COLLAPSE_VARIANTS``)."""
    if variant not in MODE_COLLAPSE_VARIANTS:
        raise ValueError(f"`variant` must be one of {MODE_COLLAPSE_VARIANTS}, got {variant!r}")
    generator = MLPGenerator(
        config.latent_dim, 2, config.hidden, config.layers, batch_norm=config.batch_norm
    )
    discriminator: nn.Module
    if variant == "pacgan":
        discriminator = PackedDiscriminator(
            MLPDiscriminator(2 * config.packing, config.hidden, config.layers), config.packing
        )
    elif variant == "minibatch":
        discriminator = MLPDiscriminator(
            2, config.hidden, config.layers, minibatch_kernels=config.minibatch_kernels
        )
    else:
        discriminator = MLPDiscriminator(2, config.hidden, config.layers)
    return UnconditionalGame(generator, discriminator, config.latent_dim, sample_size=16)


def train_mode_collapse(
    mixture: GaussianMixture2d,
    variant: str = "gan",
    config: ModeCollapseConfig | None = None,
    seed: int = 0,
    progress: bool = False,
) -> tuple[ModeStatistics, Tensor]:
    """Train one variant on ``mixture`` and measure its coverage.

    Every variant uses the non-saturating loss, Adam with betas ``(0.5, 0.999)``, separate
    real and fake batches, and, for a given seed, the same generator initialisation and
    the same data stream. PyTorch's global generator is seeded with ``seed`` (it draws
    the initial weights and the latent noise), so a run is reproducible.

    Args:
        mixture: the target distribution.
        variant: one of :data:`MODE_COLLAPSE_VARIANTS`.
        config: the shared settings (:class:`ModeCollapseConfig` defaults when None).
        seed: the run's seed.
        progress: show a tqdm bar.

    Returns:
        the :class:`ModeStatistics` of ``config.eval_samples`` generated points, and
        those points ``(eval_samples, 2)``.
    """
    config = config or ModeCollapseConfig()
    torch.manual_seed(seed)
    game = build_mode_collapse_game(variant, config)
    data_generator = torch.Generator().manual_seed(seed)
    trainer_config = GANTrainerConfig(
        steps=config.steps,
        loss="non_saturating",
        lr=config.lr,
        lr_discriminator=config.lr_discriminator,
        betas=(0.5, 0.999),
        separate_batches=True,
        dragan_penalty=config.dragan_weight if variant == "dragan" else 0.0,
        seed=seed,
        progress=progress,
        description=f"{variant} on the {mixture.name}",
    )
    GANTrainer(game, trainer_config).train(
        lambda _: mixture.sample(config.batch_size, data_generator)
    )
    game.eval()
    with torch.no_grad():
        z = torch.randn(
            config.eval_samples, config.latent_dim, generator=torch.Generator().manual_seed(seed)
        )
        samples = game.generator(z)
    return mode_statistics(samples, mixture), samples


def run_mode_collapse_benchmark(
    mixture: GaussianMixture2d | str = "grid",
    variants: tuple[str, ...] = MODE_COLLAPSE_VARIANTS,
    seeds: tuple[int, ...] = (0, 1, 2),
    config: ModeCollapseConfig | None = None,
    progress: bool = False,
) -> dict[str, ModeStatistics]:
    """Mode statistics of each variant, averaged over ``seeds``.

    Args:
        mixture: a :class:`GaussianMixture2d`, or ``"grid"`` / ``"ring"`` for PacGAN's.
        variants: names from :data:`MODE_COLLAPSE_VARIANTS`.
        seeds: one run per seed and variant.
        config: the shared settings.
        progress: a tqdm bar per run.

    Returns:
        variant -> averaged :class:`ModeStatistics`.
    """
    if isinstance(mixture, str):
        if mixture not in ("grid", "ring"):
            raise ValueError(
                f"`mixture` must be 'grid', 'ring' or a GaussianMixture2d, got {mixture!r}"
            )
        mixture = GaussianMixture2d.grid() if mixture == "grid" else GaussianMixture2d.ring()
    if not seeds:
        raise ValueError("`seeds` must hold at least one seed")
    return {
        variant: ModeStatistics.mean(
            [train_mode_collapse(mixture, variant, config, seed, progress)[0] for seed in seeds]
        )
        for variant in variants
    }


def run_mode_collapse_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """The plain GAN against each trick on the 5x5 grid, one seed (a CPU minute at most).

    Returns:
        for each variant of :data:`MODE_COLLAPSE_VARIANTS`, ``<variant>_modes`` (of 25),
        ``<variant>_high_quality`` and ``<variant>_reverse_kl``.
    """
    config = ModeCollapseConfig() if steps is None else ModeCollapseConfig(steps=steps)
    results = run_mode_collapse_benchmark("grid", seeds=(seed,), config=config, progress=progress)
    metrics: dict[str, float] = {}
    for variant, stats in results.items():
        metrics[f"{variant}_modes"] = stats.modes_covered
        metrics[f"{variant}_high_quality"] = stats.high_quality
        metrics[f"{variant}_reverse_kl"] = stats.reverse_kl
    return metrics


__all__ = [
    "MODE_COLLAPSE_VARIANTS",
    "GaussianMixture2d",
    "MLPDiscriminator",
    "MLPGenerator",
    "ModeCollapseConfig",
    "ModeStatistics",
    "build_mode_collapse_game",
    "mode_statistics",
    "run_mode_collapse_benchmark",
    "run_mode_collapse_demo",
    "train_mode_collapse",
]
