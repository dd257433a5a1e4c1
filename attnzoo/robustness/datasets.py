"""Small seeded data sets generated in code, for the experiments, demos and tests.

Nothing is downloaded: every set is a function of its arguments and seed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..attention.validation import check_int, check_non_negative, check_positive


def make_blobs(
    n_samples: int,
    num_classes: int = 2,
    dim: int = 2,
    *,
    separation: float = 2.0,
    std: float = 1.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Isotropic Gaussian blobs, one per class, with centres on a regular simplex.

    The centres are the scaled one-hot vectors of ``num_classes`` coordinates (padded or
    projected to ``dim``), so every pair of centres is ``separation`` apart when
    ``dim >= num_classes``; classes take turns, so their sizes differ by at most one.

    Args:
        n_samples: points in all.
        num_classes: ``K >= 2``.
        dim: feature dimension (>= 2).
        separation: distance between two centres.
        std: standard deviation of every blob.
        seed: the draw is a function of the seed.

    Returns:
        ``x`` float32 ``(n, dim)`` and ``labels`` long ``(n,)``.
    """
    check_int(n_samples, "n_samples")
    check_int(num_classes, "num_classes", minimum=2)
    check_int(dim, "dim", minimum=2)
    check_positive(separation, "separation")
    check_positive(std, "std")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_samples) % num_classes
    labels = labels[torch.randperm(n_samples, generator=generator)]
    if dim >= num_classes:
        centres = torch.zeros(num_classes, dim)
        centres[:, :num_classes] = torch.eye(num_classes) * separation / math.sqrt(2)
        centres -= centres.mean(0)
    else:
        # More classes than dimensions: centres evenly spaced on a circle in the first plane.
        angles = torch.arange(num_classes) * 2 * math.pi / num_classes
        radius = separation / (2 * math.sin(math.pi / num_classes))
        centres = torch.zeros(num_classes, dim)
        centres[:, 0], centres[:, 1] = radius * angles.cos(), radius * angles.sin()
    x = centres[labels] + std * torch.randn(n_samples, dim, generator=generator)
    return x, labels


def make_moons(n_samples: int, noise: float = 0.1, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two interleaving half circles (a set no linear classifier separates).

    Args:
        n_samples: points in all (the first half-circle gets the odd one).
        noise: standard deviation of the Gaussian noise added to each coordinate.
        seed: the draw is a function of the seed.

    Returns:
        ``x`` float32 ``(n, 2)`` and ``labels`` long ``(n,)``, shuffled.
    """
    check_int(n_samples, "n_samples", minimum=2)
    check_non_negative(noise, "noise")
    generator = torch.Generator().manual_seed(seed)
    n_outer = (n_samples + 1) // 2
    n_inner = n_samples - n_outer
    outer = torch.linspace(0, math.pi, n_outer)
    inner = torch.linspace(0, math.pi, n_inner)
    x = torch.cat(
        [
            torch.stack([outer.cos(), outer.sin()], 1),
            torch.stack([1 - inner.cos(), 0.5 - inner.sin()], 1),
        ]
    )
    labels = torch.cat(
        [torch.zeros(n_outer, dtype=torch.long), torch.ones(n_inner, dtype=torch.long)]
    )
    x = x + noise * torch.randn(n_samples, 2, generator=generator)
    order = torch.randperm(n_samples, generator=generator)
    return x[order], labels[order]


def train_test_split(
    x: Tensor, labels: Tensor, test_fraction: float = 0.5, *, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A seeded random split: ``x_train, labels_train, x_test, labels_test``.

    Args:
        x: ``(n, ...)``.
        labels: ``(n,)``.
        test_fraction: in ``(0, 1)``; the test part gets ``round(n * test_fraction)`` rows.
        seed: the split is a function of the seed.
    """
    if labels.shape[0] != x.shape[0]:
        raise ValueError(
            f"`labels` must have one entry per row of `x` ({x.shape[0]}), got {labels.shape[0]}"
        )
    if not 0 < test_fraction < 1:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}")
    n = x.shape[0]
    n_test = round(n * test_fraction)
    if not 0 < n_test < n:
        raise ValueError(f"{n} rows cannot be split with test_fraction={test_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(x.device)
    test, train = order[:n_test], order[n_test:]
    return x[train], labels[train], x[test], labels[test]


__all__ = ["make_blobs", "make_moons", "train_test_split"]
