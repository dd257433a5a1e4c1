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


def make_hierarchical_blobs(
    n_samples: int,
    num_groups: int = 5,
    classes_per_group: int = 2,
    dim: int = 10,
    *,
    group_radius: float = 6.0,
    class_radius: float = 1.5,
    std: float = 1.0,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gaussian classes grouped into super-classes: data whose classes resemble each other.

    Every super-class centre lies in a random direction at ``group_radius`` from the origin,
    every class centre in a random direction at ``class_radius`` from its super-class centre,
    and every point at its class centre plus ``std`` Gaussian noise per coordinate. With the
    defaults the classes of one group overlap (centres about ``class_radius * sqrt(2)``
    apart) and groups hardly do, so a classifier that has learnt the data scores a class's
    group mates above the other classes: the "dark knowledge" a teacher can pass on.

    Args:
        n_samples: points in all.
        num_groups: super-classes (>= 2).
        classes_per_group: classes per super-class (>= 2); ``K = num_groups *
            classes_per_group`` classes in all.
        dim: feature dimension.
        group_radius, class_radius, std: the distances above (> 0).
        seed: the draw is a function of the seed.

    Returns:
        ``x`` float32 ``(n, dim)``, ``labels`` long ``(n,)`` (classes take turns, shuffled,
        so their sizes differ by at most one) and ``groups`` long ``(K,)``, the super-class
        of every class (class ``c`` is in group ``c // classes_per_group``).
    """
    check_int(n_samples, "n_samples")
    check_int(num_groups, "num_groups", minimum=2)
    check_int(classes_per_group, "classes_per_group", minimum=2)
    check_int(dim, "dim")
    for value, name in ((group_radius, "group_radius"), (class_radius, "class_radius")):
        check_positive(value, name)
    check_positive(std, "std")
    generator = torch.Generator().manual_seed(seed)
    num_classes = num_groups * classes_per_group

    def directions(count: int) -> Tensor:
        vectors = torch.randn(count, dim, generator=generator)
        return vectors / vectors.norm(dim=1, keepdim=True)

    groups = torch.arange(num_classes) // classes_per_group
    centres = group_radius * directions(num_groups)[groups] + class_radius * directions(num_classes)
    labels = torch.arange(n_samples) % num_classes
    labels = labels[torch.randperm(n_samples, generator=generator)]
    x = centres[labels] + std * torch.randn(n_samples, dim, generator=generator)
    return x, labels, groups


__all__ = ["make_blobs", "make_hierarchical_blobs", "make_moons", "train_test_split"]
