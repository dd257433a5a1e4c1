"""Layers of GAN discriminators and generators.

* :func:`apply_spectral_norm`: PyTorch's own spectral normalisation
  (``torch.nn.utils.parametrizations.spectral_norm``, Miyato et al. 2018) put on every
  linear, convolution and embedding weight of a module tree, once.
* :class:`MinibatchDiscrimination` (Salimans et al. 2016): features of how close a sample
  is to the rest of its batch.
* :class:`MinibatchStdDev` (ProGAN, Karras et al. 2018): the mean standard deviation over a
  group of samples appended as one more feature map.
* :class:`PixelNorm`: each pixel's feature vector scaled to unit mean square (ProGAN).
* :class:`EqualizedLinear`, :class:`EqualizedConv2d`: equalised learning rate, weights
  drawn from ``N(0, 1)`` and scaled at run time by He's constant ``sqrt(2 / fan_in)``.
* :func:`pack`, :class:`PackedDiscriminator`: PacGAN packing (Lin et al. 2018), the
  discriminator judges ``m`` samples of one class at once.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from ..attention.validation import (
    check_int,
    check_min_rank,
    check_positive,
    check_rank,
    check_size,
    check_tensor,
)

# The layers whose ``weight`` is a linear map that spectral normalisation applies to.
SPECTRAL_NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Embedding,
)


def apply_spectral_norm(
    module: nn.Module, n_power_iterations: int = 1, eps: float = 1e-12
) -> nn.Module:
    """Spectrally normalise every linear, convolution and embedding weight in ``module``.

    Each weight gets ``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration
    per training forward pass; transposed convolutions normalised along their output axis,
    as PyTorch chooses). Weights already parametrised are left alone, so applying twice is
    applying once. Other parameters (biases, norms, SAGAN's ``gamma``) are untouched.

    Args:
        module: modified in place.
        n_power_iterations: power iterations per forward pass in training mode.
        eps: numerical floor of the norm.

    Returns:
        ``module``.
    """
    check_int(n_power_iterations, "n_power_iterations")
    check_positive(eps, "eps")
    targets = [
        m
        for m in module.modules()
        if isinstance(m, SPECTRAL_NORM_LAYERS) and not parametrize.is_parametrized(m, "weight")
    ]
    for layer in targets:
        spectral_norm(layer, n_power_iterations=n_power_iterations, eps=eps)
    return module


def is_spectrally_normalized(module: nn.Module) -> bool:
    """True if ``module.weight`` carries a spectral-norm parametrisation."""
    if not parametrize.is_parametrized(module, "weight"):
        return False
    weight_parametrizations = cast(
        nn.ModuleList, cast(nn.ModuleDict, module.parametrizations)["weight"]
    )
    return any(type(p).__name__ == "_SpectralNorm" for p in weight_parametrizations)


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016, section 3.2).

    A learned tensor ``T`` maps each sample's features ``f(x_i)`` to ``K`` rows
    ``M_i`` of width ``C``; ``c_k(x_i, x_j) = exp(-||M_{i,k} - M_{j,k}||_1)`` and
    ``o(x_i)_k = sum_{j != i} c_k(x_i, x_j)``. The output is ``[f(x_i), o(x_i)]``, so the
    next layer sees how many samples of the batch resemble each one, which a collapsed
    generator cannot fake. The term ``j = i`` (always ``exp(0) = 1``) is left out.

    Args:
        in_features: ``A``, the width of ``f(x)``.
        num_kernels: ``K``.
        kernel_dim: ``C``.

    Shapes: ``(batch, in_features) -> (batch, in_features + num_kernels)``; a batch of one
    gets zeros.
    """

    def __init__(self, in_features: int, num_kernels: int = 16, kernel_dim: int = 8) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features")
        self.num_kernels = check_int(num_kernels, "num_kernels")
        self.kernel_dim = check_int(kernel_dim, "kernel_dim")
        self.T = nn.Parameter(
            torch.randn(in_features, num_kernels * kernel_dim) / math.sqrt(in_features)
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_kernels={self.num_kernels}, "
            f"kernel_dim={self.kernel_dim}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, in_features) -> (batch, in_features + num_kernels)``."""
        check_rank(x, 2, "x", "(batch, in_features)")
        check_size(x, 1, self.in_features, "x", "in_features")
        m = (x @ self.T).view(x.shape[0], self.num_kernels, self.kernel_dim)
        distances = torch.cdist(m.transpose(0, 1), m.transpose(0, 1), p=1)  # (K, batch, batch)
        closeness = torch.exp(-distances).sum(-1).transpose(0, 1) - 1.0  # drop j = i
        return torch.cat([x, closeness], dim=1)


class MinibatchStdDev(nn.Module):
    """ProGAN's minibatch standard deviation, appended as one more feature.

    The batch is split into groups of ``G = min(group_size, batch)`` samples, sample ``n``
    in group ``n mod (batch / G)`` (the layout of the released code). In each group, the
    standard deviation of every feature over the ``G`` members (population variance plus
    ``eps``, then the square root) is averaged over all features to one number, which
    every member of the group gets as an extra constant channel.

    Args:
        group_size: ``G``; the batch must be a multiple of ``min(group_size, batch)``.
        eps: added to the variance before the square root.

    Shapes: ``(batch, C, H, W) -> (batch, C + 1, H, W)`` or ``(batch, F) -> (batch, F + 1)``.
    """

    def __init__(self, group_size: int = 4, eps: float = 1e-8) -> None:
        super().__init__()
        self.group_size = check_int(group_size, "group_size")
        check_positive(eps, "eps")
        self.eps = eps

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"

    def forward(self, x: Tensor) -> Tensor:
        """Append the group statistic: one more channel (4-D) or feature (2-D)."""
        check_tensor(x, "x")
        if x.dim() not in (2, 4):
            raise ValueError(
                f"`x` must be (batch, features) or (batch, channels, height, width), "
                f"got shape {tuple(x.shape)}"
            )
        batch = x.shape[0]
        group = min(self.group_size, batch)
        if batch % group:
            raise ValueError(
                f"the batch ({batch}) must be a multiple of the group size "
                f"min(group_size={self.group_size}, batch) = {group}"
            )
        y = x.reshape(group, batch // group, *x.shape[1:])
        std = torch.sqrt(y.var(dim=0, unbiased=False) + self.eps)  # (batch / G, ...)
        stat = std.flatten(1).mean(dim=1)  # (batch / G,)
        stat = stat.repeat(group)  # sample n gets its group's n mod (batch / G) value
        stat = stat.reshape(batch, 1, *([1] * (x.dim() - 2))).expand(batch, 1, *x.shape[2:])
        return torch.cat([x, stat], dim=1)


class PixelNorm(nn.Module):
    """``x / sqrt(mean_c x^2 + eps)`` over the channel axis (ProGAN's generator).

    Shapes: ``(batch, C, ...)`` to the same shape.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        check_positive(eps, "eps")
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise each position's channel vector to unit root mean square."""
        check_min_rank(check_tensor(x, "x"), 2, "x", "(batch, channels, ...)")
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


def he_scale(fan_in: int, gain: float = math.sqrt(2.0)) -> float:
    """He's constant ``gain / sqrt(fan_in)``: ``sqrt(2 / fan_in)`` for the default gain."""
    check_int(fan_in, "fan_in")
    return gain / math.sqrt(fan_in)


class EqualizedLinear(nn.Module):
    """A linear layer with equalised learning rate (Karras et al. 2018, section 4.1).

    The stored weight is drawn from ``N(0, 1)`` and multiplied by
    ``scale = gain / sqrt(in_features)`` at every call, so that Adam's step, which is
    invariant to a parameter's scale, moves every layer at the same relative speed.

    Shapes: ``(..., in_features) -> (..., out_features)``.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, gain: float = math.sqrt(2.0)
    ) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features")
        self.out_features = check_int(out_features, "out_features")
        check_positive(gain, "gain")
        self.scale = he_scale(in_features, gain)
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, scale={self.scale:.4g}"

    def forward(self, x: Tensor) -> Tensor:
        """``x @ (scale * weight).T + bias``."""
        check_size(check_tensor(x, "x"), -1, self.in_features, "x", "in_features")
        return F.linear(x, self.weight * self.scale, self.bias)


class EqualizedConv2d(nn.Module):
    """A 2-D convolution with equalised learning rate (``fan_in = in_channels * k * k``).

    Shapes: ``(batch, in_channels, H, W) -> (batch, out_channels, H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        gain: float = math.sqrt(2.0),
    ) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels")
        self.out_channels = check_int(out_channels, "out_channels")
        self.kernel_size = check_int(kernel_size, "kernel_size")
        self.stride = check_int(stride, "stride")
        self.padding = check_int(padding, "padding", minimum=0)
        check_positive(gain, "gain")
        self.scale = he_scale(in_channels * kernel_size * kernel_size, gain)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, scale={self.scale:.4g}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """Convolve with ``scale * weight``."""
        check_rank(x, 4, "x", "(batch, channels, height, width)")
        check_size(x, 1, self.in_channels, "x", "channels")
        return F.conv2d(
            x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding
        )


def pack(x: Tensor, packing: int) -> Tensor:
    """PacGAN packing: concatenate each run of ``packing`` consecutive samples along axis 1.

    Rows ``k * m, ..., k * m + m - 1`` of the input become row ``k`` of the output, so a
    batch of real samples followed by a batch of fakes (each a multiple of ``m``) never
    mixes the two in one packed sample.

    Args:
        x: ``(batch, C, ...)`` with ``batch`` a multiple of ``packing``.
        packing: ``m``; 1 returns ``x``.

    Returns:
        ``(batch / m, m * C, ...)``.
    """
    check_min_rank(check_tensor(x, "x"), 2, "x", "(batch, features, ...)")
    check_int(packing, "packing")
    if x.shape[0] % packing:
        raise ValueError(
            f"`x` must have a batch that is a multiple of `packing` = {packing}, "
            f"got shape {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0] // packing, packing * x.shape[1], *x.shape[2:])


class PackedDiscriminator(nn.Module):
    """A discriminator that judges ``packing`` samples at once (PacGAN).

    The wrapped discriminator must take inputs of ``packing`` times the channels (or
    features) of one sample. Its optional ``features`` method is packed the same way.

    Shapes: ``(batch, C, ...) -> discriminator((batch / m, m * C, ...))``.
    """

    def __init__(self, discriminator: nn.Module, packing: int) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.packing = check_int(packing, "packing")

    def extra_repr(self) -> str:
        return f"packing={self.packing}"

    def forward(self, x: Tensor) -> Tensor:
        """Pack, then discriminate: ``(batch / m, ...)`` outputs."""
        return self.discriminator(pack(x, self.packing))

    def features(self, x: Tensor) -> Tensor:
        """The wrapped discriminator's features of the packed input."""
        features = getattr(self.discriminator, "features", None)
        if features is None:
            raise TypeError(
                f"the wrapped {type(self.discriminator).__name__} has no `features` method"
            )
        return features(pack(x, self.packing))


__all__ = [
    "SPECTRAL_NORM_LAYERS",
    "EqualizedConv2d",
    "EqualizedLinear",
    "MinibatchDiscrimination",
    "MinibatchStdDev",
    "PackedDiscriminator",
    "PixelNorm",
    "apply_spectral_norm",
    "he_scale",
    "is_spectrally_normalized",
    "pack",
]
