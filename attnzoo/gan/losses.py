"""Adversarial losses and the regularisers of the discriminator.

Every loss works on the raw discriminator outputs ``logits`` of shape ``(batch, ...)``: one
score per sample, or a map of scores per sample (a PatchGAN), averaged like a batch. Losses
are looked up by name in one registry, :func:`get_adversarial_loss`:

* ``"minimax"`` (Goodfellow et al. 2014): ``D`` minimises the binary cross-entropy,
  ``G`` minimises ``E log(1 - D(G(z)))``, which saturates when ``D`` wins.
* ``"non_saturating"``: the same ``D``; ``G`` minimises ``-E log D(G(z))`` instead.
* ``"least_squares"`` (LSGAN, Mao et al. 2017, targets ``a = 0``, ``b = c = 1``).
* ``"hinge"`` (Lim & Ye 2017; SAGAN): ``D`` minimises ``E relu(1 - D(x)) + E relu(1 + D(G(z)))``.
* ``"wasserstein"`` (WGAN, Arjovsky et al. 2017): the critic maximises
  ``E D(x) - E D(G(z))``; used with :func:`gradient_penalty` (WGAN-GP, Gulrajani et al. 2017).

The target-based losses (the first three) take real and fake targets, a float or one per
sample, which is how label smoothing and label flipping enter; the margin losses have no
labels to smooth and refuse targets other than the defaults.

Regularisers: :func:`gradient_penalty` (WGAN-GP), :func:`dragan_penalty` (DRAGAN, Kodali et
al. 2017) and :func:`drift_penalty` (ProGAN's drift term). The gradient norm of both
penalties is taken per sample over all of its features (``(batch, C, H, W)`` flattened to
``(batch, C * H * W)``), not per pixel along the channels only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention.validation import check_min_rank, check_non_negative, check_tensor

Target = float | Tensor


def _broadcast_target(target: Target, logits: Tensor, name: str) -> Tensor:
    """A target as a tensor of the shape of ``logits`` (one value per sample broadcast)."""
    if isinstance(target, bool) or not isinstance(target, float | int | Tensor):
        raise TypeError(f"`{name}` must be a float or a tensor, got {type(target).__name__}")
    if not isinstance(target, Tensor):
        return torch.full_like(logits, float(target))
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"`{name}` must be a float or a tensor of shape (batch,) = ({logits.shape[0]},), "
            f"got shape {tuple(target.shape)}"
        )
    target = target.to(device=logits.device, dtype=logits.dtype)
    return target.reshape(-1, *([1] * (logits.dim() - 1))).expand_as(logits)


def _check_logits(logits: object, name: str) -> Tensor:
    check_min_rank(check_tensor(logits, name), 1, name, "(batch, ...)")
    assert isinstance(logits, Tensor)
    if logits.shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one sample, got shape {tuple(logits.shape)}")
    return logits


class AdversarialLoss(ABC):
    """One GAN objective: the discriminator's two terms and the generator's loss.

    Subclasses define :meth:`discriminator_real`, :meth:`discriminator_fake` and
    :meth:`generator`; all take raw outputs ``logits`` of shape ``(batch, ...)`` and return
    a scalar (mean over every entry).

    Attributes:
        name: the registry name.
        uses_targets: the loss reads real and fake targets (so label smoothing and label
            flipping mean something for it).
        real_label: the real target when none is given.
        fake_label: the fake target when none is given.
    """

    name = ""
    uses_targets = True
    real_label = 1.0
    fake_label = 0.0

    @abstractmethod
    def discriminator_real(self, logits: Tensor, target: Target | None = None) -> Tensor:
        """The discriminator's loss on real samples (``target`` defaults to ``real_label``)."""

    @abstractmethod
    def discriminator_fake(self, logits: Tensor, target: Target | None = None) -> Tensor:
        """The discriminator's loss on generated samples (``target``: ``fake_label``)."""

    @abstractmethod
    def generator(self, fake_logits: Tensor) -> Tensor:
        """The generator's loss on the discriminator's outputs for generated samples."""

    def discriminator(
        self,
        real_logits: Tensor,
        fake_logits: Tensor,
        real_target: Target | None = None,
        fake_target: Target | None = None,
    ) -> Tensor:
        """The discriminator's full loss: the real term plus the fake term.

        Args:
            real_logits: ``(batch_real, ...)`` outputs on real samples.
            fake_logits: ``(batch_fake, ...)`` outputs on generated samples.
            real_target: float or ``(batch_real,)``; the loss's real label when None.
            fake_target: float or ``(batch_fake,)``; the loss's fake label when None.

        Returns:
            a scalar.
        """
        return self.discriminator_real(real_logits, real_target) + self.discriminator_fake(
            fake_logits, fake_target
        )

    def score(self, logits: Tensor) -> Tensor:
        """What "D(x)" means for this loss, per entry: a probability or a raw score."""
        return logits

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MinimaxLoss(AdversarialLoss):
    """The original GAN game; ``G`` minimises ``E log(1 - D(G(z)))`` (saturating)."""

    name = "minimax"

    def discriminator_real(self, logits: Tensor, target: Target | None = None) -> Tensor:
        logits = _check_logits(logits, "real_logits")
        target = self.real_label if target is None else target
        return F.binary_cross_entropy_with_logits(
            logits, _broadcast_target(target, logits, "real_target")
        )

    def discriminator_fake(self, logits: Tensor, target: Target | None = None) -> Tensor:
        logits = _check_logits(logits, "fake_logits")
        target = self.fake_label if target is None else target
        return F.binary_cross_entropy_with_logits(
            logits, _broadcast_target(target, logits, "fake_target")
        )

    def generator(self, fake_logits: Tensor) -> Tensor:
        # log(1 - sigmoid(l)) = -softplus(l), written stably.
        return -F.softplus(_check_logits(fake_logits, "fake_logits")).mean()

    def score(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)


class NonSaturatingLoss(MinimaxLoss):
    """The minimax discriminator; ``G`` minimises ``-E log D(G(z))`` (strong early gradients)."""

    name = "non_saturating"

    def generator(self, fake_logits: Tensor) -> Tensor:
        # -log(sigmoid(l)) = softplus(-l).
        return F.softplus(-_check_logits(fake_logits, "fake_logits")).mean()


class LeastSquaresLoss(AdversarialLoss):
    """LSGAN: ``D`` regresses real to ``b = 1`` and fake to ``a = 0``; ``G`` pushes to ``c = 1``.

    Each term is ``0.5 * E (D(.) - target)^2``, as in Mao et al. (2017), eq. 2.
    """

    name = "least_squares"

    def discriminator_real(self, logits: Tensor, target: Target | None = None) -> Tensor:
        logits = _check_logits(logits, "real_logits")
        target = self.real_label if target is None else target
        return 0.5 * (logits - _broadcast_target(target, logits, "real_target")).pow(2).mean()

    def discriminator_fake(self, logits: Tensor, target: Target | None = None) -> Tensor:
        logits = _check_logits(logits, "fake_logits")
        target = self.fake_label if target is None else target
        return 0.5 * (logits - _broadcast_target(target, logits, "fake_target")).pow(2).mean()

    def generator(self, fake_logits: Tensor) -> Tensor:
        return 0.5 * (_check_logits(fake_logits, "fake_logits") - self.real_label).pow(2).mean()


class _MarginLoss(AdversarialLoss, ABC):
    """A loss without labels: a target other than the default is a mistake, not a guess."""

    uses_targets = False

    def _check_no_target(self, target: Target | None, default: float, name: str) -> None:
        if target is None:
            return
        is_default = (
            bool((target == default).all())
            if isinstance(target, Tensor)
            else float(target) == default
        )
        if not is_default:
            raise ValueError(
                f"`{name}` has no meaning for the {self.name!r} loss (it has no labels, so no "
                f"label smoothing or flipping); leave it at {default}, got {target}"
            )


class HingeLoss(_MarginLoss):
    """Hinge loss (geometric GAN; SAGAN): margins of 1 for ``D``, ``-E D(G(z))`` for ``G``."""

    name = "hinge"

    def discriminator_real(self, logits: Tensor, target: Target | None = None) -> Tensor:
        self._check_no_target(target, self.real_label, "real_target")
        return F.relu(1.0 - _check_logits(logits, "real_logits")).mean()

    def discriminator_fake(self, logits: Tensor, target: Target | None = None) -> Tensor:
        self._check_no_target(target, self.fake_label, "fake_target")
        return F.relu(1.0 + _check_logits(logits, "fake_logits")).mean()

    def generator(self, fake_logits: Tensor) -> Tensor:
        return -_check_logits(fake_logits, "fake_logits").mean()


class WassersteinLoss(_MarginLoss):
    """WGAN critic loss ``E D(G(z)) - E D(x)`` and generator loss ``-E D(G(z))``.

    The critic must be kept Lipschitz, here by :func:`gradient_penalty` (WGAN-GP).
    """

    name = "wasserstein"

    def discriminator_real(self, logits: Tensor, target: Target | None = None) -> Tensor:
        self._check_no_target(target, self.real_label, "real_target")
        return -_check_logits(logits, "real_logits").mean()

    def discriminator_fake(self, logits: Tensor, target: Target | None = None) -> Tensor:
        self._check_no_target(target, self.fake_label, "fake_target")
        return _check_logits(logits, "fake_logits").mean()

    def generator(self, fake_logits: Tensor) -> Tensor:
        return -_check_logits(fake_logits, "fake_logits").mean()


ADVERSARIAL_LOSSES: dict[str, type[AdversarialLoss]] = {
    cls.name: cls
    for cls in (MinimaxLoss, NonSaturatingLoss, LeastSquaresLoss, HingeLoss, WassersteinLoss)
}


def get_adversarial_loss(loss: str | AdversarialLoss) -> AdversarialLoss:
    """The loss registered under ``loss`` (an :class:`AdversarialLoss` passes through).

    Names: ``"minimax"``, ``"non_saturating"``, ``"least_squares"``, ``"hinge"``,
    ``"wasserstein"``.
    """
    if isinstance(loss, AdversarialLoss):
        return loss
    if not isinstance(loss, str):
        raise TypeError(
            f"`loss` must be a loss name or an AdversarialLoss, got {type(loss).__name__}"
        )
    if loss not in ADVERSARIAL_LOSSES:
        raise ValueError(f"`loss` must be one of {sorted(ADVERSARIAL_LOSSES)}, got {loss!r}")
    return ADVERSARIAL_LOSSES[loss]()


def per_sample_gradient_norm(outputs: Tensor, inputs: Tensor) -> Tensor:
    """The L2 norm of ``d outputs[i].sum() / d inputs[i]`` for each sample ``i``.

    The gradient of each sample is flattened over all of its features (channels and pixels
    together) before the norm. Samples are independent only if the network treats them so:
    batch statistics (batch norm, minibatch layers) couple them.

    Args:
        outputs: ``(batch, ...)`` computed from ``inputs`` with a graph.
        inputs: ``(batch, ...)`` with ``requires_grad``.

    Returns:
        ``(batch,)``; differentiable (the graph is kept for the penalty's backward pass).
    """
    (grads,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    return grads.flatten(1).norm(2, dim=1)


def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    # Drawn on the generator's device (the CPU for a CPU generator), then moved, so one
    # seeded CPU generator serves a model on any device.
    device = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=device, dtype=like.dtype)
    return u.to(like.device)


def _per_sample_uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return _uniform((x.shape[0],), x, generator).reshape(-1, *([1] * (x.dim() - 1)))


def _norm_penalty(
    discriminator: Callable[[Tensor], Tensor], points: Tensor, target_norm: float
) -> Tensor:
    points = points.detach().requires_grad_(True)
    norms = per_sample_gradient_norm(discriminator(points), points)
    return (norms - target_norm).pow(2).mean()


def gradient_penalty(
    discriminator: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    weight: float = 10.0,
    target_norm: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP: ``weight * E (||grad D(x_hat)|| - target_norm)^2`` between real and fake.

    ``x_hat = e * real + (1 - e) * fake`` with one ``e ~ U[0, 1)`` per sample
    (Gulrajani et al. 2017, algorithm 1); the norm is per sample over all its features.

    Args:
        discriminator: maps ``(batch, ...)`` samples to ``(batch, ...)`` outputs.
        real: ``(batch, ...)`` real samples.
        fake: generated samples of the same shape (detached here).
        weight: ``lambda`` (10 in the paper).
        target_norm: the norm the gradient is pulled to (1: a 1-Lipschitz critic).
        generator: random generator for ``e``.

    Returns:
        a scalar, differentiable in the discriminator's parameters.
    """
    check_min_rank(check_tensor(real, "real"), 2, "real", "(batch, ...)")
    check_tensor(fake, "fake")
    if fake.shape != real.shape:
        raise ValueError(
            f"`fake` must have the shape of `real` {tuple(real.shape)}, got {tuple(fake.shape)}"
        )
    check_non_negative(weight, "weight")
    e = _per_sample_uniform(real, generator)
    points = e * real.detach() + (1 - e) * fake.detach()
    return weight * _norm_penalty(discriminator, points, target_norm)


def dragan_penalty(
    discriminator: Callable[[Tensor], Tensor],
    real: Tensor,
    weight: float = 10.0,
    spread: float = 0.5,
    target_norm: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DRAGAN: the gradient-norm penalty in a neighbourhood of the real data.

    Points ``x_hat = x + e * spread * std(x) * u`` with ``u ~ U[0, 1)`` per feature and one
    ``e ~ U[0, 1)`` per sample, where ``std(x)`` is the standard deviation of the whole
    batch: the perturbation of the authors' released code (``c = spread = 0.5``,
    ``lambda = weight = 10``). The norm is per sample over all its features.

    Args:
        discriminator: maps ``(batch, ...)`` samples to ``(batch, ...)`` outputs.
        real: ``(batch, ...)`` real samples.
        weight: ``lambda``.
        spread: ``c``, the size of the neighbourhood in units of the data's std.
        target_norm: ``k``, the gradient norm the penalty pulls to.
        generator: random generator for ``u`` and ``e``.

    Returns:
        a scalar, differentiable in the discriminator's parameters.
    """
    check_min_rank(check_tensor(real, "real"), 2, "real", "(batch, ...)")
    check_non_negative(weight, "weight")
    check_non_negative(spread, "spread")
    real = real.detach()
    u = _uniform(tuple(real.shape), real, generator)
    e = _per_sample_uniform(real, generator)
    points = real + e * spread * real.std() * u
    return weight * _norm_penalty(discriminator, points, target_norm)


def drift_penalty(real_logits: Tensor, weight: float = 1e-3) -> Tensor:
    """ProGAN's drift term ``weight * E D(x)^2`` on real samples (``epsilon_drift = 1e-3``).

    It keeps a WGAN-GP critic's outputs from drifting far from zero.

    Args:
        real_logits: ``(batch, ...)`` critic outputs on real samples.
        weight: ``epsilon_drift``.
    """
    check_non_negative(weight, "weight")
    return weight * _check_logits(real_logits, "real_logits").pow(2).mean()


__all__ = [
    "ADVERSARIAL_LOSSES",
    "AdversarialLoss",
    "HingeLoss",
    "LeastSquaresLoss",
    "MinimaxLoss",
    "NonSaturatingLoss",
    "WassersteinLoss",
    "dragan_penalty",
    "drift_penalty",
    "get_adversarial_loss",
    "gradient_penalty",
    "per_sample_gradient_norm",
]
