"""Stabilising tricks that act on the discriminator's inputs and labels.

The trainer (:mod:`attnzoo.gan.trainer`) switches them on from its config; they are also
usable on their own in a hand-written loop.

* :func:`discriminator_targets`: one-sided label smoothing (real labels only; Salimans
  et al. 2016, section 3.4: smoothing the fake labels too would reward the generator for
  staying where it is) and occasional label flipping (ganhacks).
* :class:`InstanceNoise`: Gaussian noise on every discriminator input with a standard
  deviation annealed linearly to zero (Sønderby et al. 2017; Arjovsky & Bottou 2017).
* :class:`ReplayBuffer`: a pool of past generated samples (Shrivastava et al. 2017;
  CycleGAN's image pool of 50).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attention.validation import (
    check_int,
    check_min_rank,
    check_non_negative,
    check_probability,
    check_tensor,
)


def discriminator_targets(
    real_batch: int,
    fake_batch: int,
    real_label: float = 1.0,
    fake_label: float = 0.0,
    smoothing: float = 0.0,
    flip_probability: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Per-sample targets of the discriminator with smoothing and flipping.

    The real label becomes ``real_label - smoothing * (real_label - fake_label)`` (so 0.9
    for ``smoothing = 0.1``); the fake label is never smoothed. Then each sample's label
    is exchanged for the other class's with probability ``flip_probability``.

    Args:
        real_batch: number of real samples (rows of the real logits).
        fake_batch: number of generated samples.
        real_label: the loss's real label (1 for the cross-entropy and least squares).
        fake_label: the loss's fake label (0).
        smoothing: in ``[0, 1)``.
        flip_probability: in ``[0, 1)``.
        generator: random generator of the flips.
        device: of the targets.
        dtype: of the targets.

    Returns:
        ``(real_targets (real_batch,), fake_targets (fake_batch,))``.
    """
    check_int(real_batch, "real_batch")
    check_int(fake_batch, "fake_batch")
    check_probability(smoothing, "smoothing")
    check_probability(flip_probability, "flip_probability")
    smoothed_real = real_label - smoothing * (real_label - fake_label)
    real = torch.full((real_batch,), smoothed_real, device=device, dtype=dtype)
    fake = torch.full((fake_batch,), fake_label, device=device, dtype=dtype)
    if flip_probability > 0:
        draw_on = generator.device if generator is not None else "cpu"
        flip_real = torch.rand(real_batch, generator=generator, device=draw_on) < flip_probability
        flip_fake = torch.rand(fake_batch, generator=generator, device=draw_on) < flip_probability
        real[flip_real.to(real.device)] = fake_label
        fake[flip_fake.to(fake.device)] = smoothed_real
    return real, fake


class InstanceNoise:
    """Gaussian noise on discriminator inputs, ``std`` annealed linearly to 0.

    ``std(step) = initial_std * max(0, 1 - step / anneal_steps)``: early on, the noise
    makes the real and generated distributions overlap so the discriminator cannot
    separate them perfectly; by ``anneal_steps`` the data are seen as they are.

    Args:
        initial_std: the standard deviation at step 0 (0 disables).
        anneal_steps: steps until the noise reaches zero.
    """

    def __init__(self, initial_std: float, anneal_steps: int) -> None:
        check_non_negative(initial_std, "initial_std")
        self.initial_std = initial_std
        self.anneal_steps = check_int(anneal_steps, "anneal_steps")

    def std(self, step: int) -> float:
        """The standard deviation at ``step``."""
        return self.initial_std * max(0.0, 1.0 - step / self.anneal_steps)

    def __call__(self, x: Tensor, step: int, generator: torch.Generator | None = None) -> Tensor:
        """``x + std(step) * N(0, 1)`` (``x`` itself once the noise is off); shape of ``x``."""
        std = self.std(step)
        if std == 0:
            return x
        device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
        noise = noise.to(x.device)
        return x + std * noise


class ReplayBuffer:
    """A pool of past generated samples shown to the discriminator (CycleGAN's image pool).

    For each incoming sample: while the pool has room, it is stored and passed through;
    afterwards, with probability ``replace_probability`` a random stored sample is passed
    instead and the incoming one takes its place, otherwise the incoming one passes. The
    discriminator then keeps seeing the generator's older modes, which discourages the two
    from chasing each other in circles.

    Rows of several aligned tensors (a sample and its condition) are stored together.

    Args:
        capacity: samples kept (50 in CycleGAN).
        replace_probability: 0.5 in CycleGAN.
    """

    def __init__(self, capacity: int = 50, replace_probability: float = 0.5) -> None:
        self.capacity = check_int(capacity, "capacity")
        check_probability(replace_probability, "replace_probability")
        self.replace_probability = replace_probability
        self._stored: list[tuple[Tensor, ...]] = []

    def __len__(self) -> int:
        return len(self._stored)

    def __call__(
        self, *tensors: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, ...]:
        """Push a batch and return the batch the discriminator should see.

        Args:
            tensors: one or more ``(batch, ...)`` tensors whose rows belong together.
            generator: random generator of the choices.

        Returns:
            tensors of the same shapes, detached.
        """
        if not tensors:
            raise ValueError("`tensors` must hold at least one (batch, ...) tensor")
        for i, t in enumerate(tensors):
            check_min_rank(check_tensor(t, f"tensors[{i}]"), 1, f"tensors[{i}]", "(batch, ...)")
            if t.shape[0] != tensors[0].shape[0]:
                raise ValueError(
                    f"every tensor must have the batch of tensors[0] ({tensors[0].shape[0]}), "
                    f"got {t.shape[0]} in tensors[{i}]"
                )
        rows = [tuple(t[i].detach() for t in tensors) for i in range(tensors[0].shape[0])]
        if self._stored:
            stored_shapes = [r.shape for r in self._stored[0]]
            new_shapes = [r.shape for r in rows[0]]
            if stored_shapes != new_shapes:
                raise ValueError(
                    f"samples of shape {new_shapes} do not match the buffer's "
                    f"{stored_shapes}; call `clear()` when the sample shape changes"
                )
        out = []
        for row in rows:
            if len(self._stored) < self.capacity:
                self._stored.append(row)
                out.append(row)
            elif float(torch.rand((), generator=generator)) < self.replace_probability:
                index = int(torch.randint(self.capacity, (), generator=generator))
                out.append(self._stored[index])
                self._stored[index] = row
            else:
                out.append(row)
        return tuple(torch.stack([row[k] for row in out]) for k in range(len(tensors)))

    def clear(self) -> None:
        """Forget every stored sample."""
        self._stored.clear()


__all__ = ["InstanceNoise", "ReplayBuffer", "discriminator_targets"]
