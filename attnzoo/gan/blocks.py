"""Small pieces shared by the convolutional model families."""

from __future__ import annotations

from torch import Tensor, nn

from ..attention.validation import check_int, check_rank, check_size

NORMS: tuple[str, ...] = ("batch", "instance", "layer", "none")


def check_power_of_two(value: int, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is a power of two ``>= minimum``, else raise naming ``name``."""
    check_int(value, name, minimum=minimum)
    if value & (value - 1):
        raise ValueError(f"`{name}` must be a power of two >= {minimum}, got {value}")
    return value


def log2(value: int) -> int:
    """``log2`` of a power of two."""
    return value.bit_length() - 1


def norm_2d(kind: str, channels: int) -> nn.Module:
    """A normalisation of ``(batch, channels, H, W)`` maps by name.

    ``"batch"``: ``BatchNorm2d``; ``"instance"``: ``InstanceNorm2d`` without affine
    parameters or running statistics (CycleGAN); ``"layer"``: ``GroupNorm`` with one group
    (layer norm over channels and pixels, per sample, so gradient penalties stay per
    sample); ``"none"``: identity.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"`norm` must be one of {NORMS}, got {kind!r}")


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """DCGAN's initialisation: conv and linear weights ``N(0, std)``, norm scales ``N(1, std)``.

    Biases start at zero. Applied to every submodule.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def check_images(x: Tensor, name: str, channels: int, size: int | None = None) -> None:
    """Raise unless ``x`` is ``(batch, channels, size, size)`` (any square size if None)."""
    check_rank(x, 4, name, "(batch, channels, height, width)")
    check_size(x, 1, channels, name, "channels")
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"`{name}` must be {size}x{size} images, got {x.shape[-2]}x{x.shape[-1]}")


__all__ = ["NORMS", "check_images", "check_power_of_two", "init_normal", "log2", "norm_2d"]
