"""Sample grids as PNG files, and plots of the training diagnostics.

Grids are encoded by a small PNG writer on the standard library (``zlib``), so saving
samples needs no optional dependency; the diagnostics and point plots need matplotlib
(``pip install 'attnzoo[viz]'``), imported only when they are drawn.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..attention.validation import check_int, check_rank


def write_png(pixels: Tensor, path: str | Path) -> Path:
    """Write an 8-bit greyscale or RGB PNG.

    Args:
        pixels: ``(height, width)`` or ``(height, width, 3)`` of dtype ``uint8``.
        path: the file to write.

    Returns:
        the path written.
    """
    if not isinstance(pixels, Tensor) or pixels.dtype != torch.uint8:
        raise TypeError("`pixels` must be a uint8 tensor")
    if not (pixels.dim() == 2 or (pixels.dim() == 3 and pixels.shape[2] == 3)):
        raise ValueError(
            f"`pixels` must be (height, width) or (height, width, 3), got {tuple(pixels.shape)}"
        )
    height, width = pixels.shape[:2]
    colour_type = 0 if pixels.dim() == 2 else 2
    rows = pixels.reshape(height, -1).cpu()
    # Each scanline starts with its filter type; 0 = none.
    raw = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), rows], dim=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.numpy().tobytes(), 6))
        + chunk(b"IEND", b"")
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def image_grid(
    images: Tensor,
    nrow: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Tensor:
    """Tile a batch of images into one ``uint8`` picture.

    Args:
        images: ``(n, channels, height, width)`` with 1 or 3 channels.
        nrow: images per row (default: the ceiling of ``sqrt(n)``).
        padding: pixels of black between tiles.
        value_range: the values mapped to 0 and 255 (clamped).

    Returns:
        ``(H, W)`` for one channel or ``(H, W, 3)`` for three, ``uint8``.
    """
    check_rank(images, 4, "images", "(n, channels, height, width)")
    n, channels, height, width = images.shape
    if channels not in (1, 3):
        raise ValueError(f"`images` must have 1 or 3 channels, got {channels}")
    if n == 0:
        raise ValueError("`images` must hold at least one image")
    nrow = math.ceil(math.sqrt(n)) if nrow is None else check_int(nrow, "nrow")
    check_int(padding, "padding", minimum=0)
    low, high = value_range
    if not high > low:
        raise ValueError(f"`value_range` must be (low, high) with high > low, got {value_range}")
    n_rows = math.ceil(n / nrow)
    scaled = ((images.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    pixels = (scaled * 255).round().to(torch.uint8)
    grid = torch.zeros(
        channels,
        n_rows * (height + padding) + padding,
        nrow * (width + padding) + padding,
        dtype=torch.uint8,
    )
    for index in range(n):
        r, c = divmod(index, nrow)
        top = padding + r * (height + padding)
        left = padding + c * (width + padding)
        grid[:, top : top + height, left : left + width] = pixels[index]
    return grid[0] if channels == 1 else grid.permute(1, 2, 0).contiguous()


def save_image_grid(
    images: Tensor,
    path: str | Path,
    nrow: int | None = None,
    padding: int = 2,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Path:
    """Tile ``images`` ``(n, C, H, W)`` with :func:`image_grid` and write it as a PNG."""
    return write_png(image_grid(images, nrow, padding, value_range), path)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plotting needs matplotlib: pip install 'attnzoo[viz]'") from error
    return plt


def require_matplotlib() -> None:
    """Raise a clear ``ImportError`` now if matplotlib is missing (before a long run)."""
    _pyplot()


# The diagnostics drawn in each panel, in order; the trainer logs these keys.
DIAGNOSTIC_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("losses", ("loss_d", "loss_g")),
    ("discriminator outputs", ("d_real", "d_fake")),
    ("gradient norms", ("grad_norm_d", "grad_norm_g")),
)


def plot_diagnostics(records: Mapping[str, Sequence[float]], path: str | Path) -> Path:
    """Plot training diagnostics per step as a PNG (needs matplotlib).

    Panels: the two losses; ``D(x)`` and ``D(G(z))``; the gradient norms of both
    networks; and every other logged series (penalties, auxiliary losses) together.

    Args:
        records: series name -> one value per step (as :class:`GANHistory` keeps them).
        path: the PNG to write.
    """
    plt = _pyplot()
    shown = {key for _, keys in DIAGNOSTIC_PANELS for key in keys}
    others = tuple(key for key in records if key not in shown)
    panels = [*DIAGNOSTIC_PANELS, *((("other terms", others),) if others else ())]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True)
    for ax, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            if key in records and len(records[key]):
                ax.plot(range(len(records[key])), records[key], label=key, linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_points(
    points: Tensor, path: str | Path, modes: Tensor | None = None, title: str = ""
) -> Path:
    """Scatter 2-D samples (and the true modes) as a PNG (needs matplotlib).

    Args:
        points: ``(n, 2)`` samples.
        path: the PNG to write.
        modes: optional ``(k, 2)`` mode centres, drawn as crosses.
        title: the figure's title.
    """
    check_rank(points, 2, "points", "(n, 2)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    xy = points.detach().cpu()
    ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.3, color="black")
    if modes is not None:
        centres = modes.detach().cpu()
        ax.scatter(centres[:, 0], centres[:, 1], marker="x", color="red", s=20)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = [
    "image_grid",
    "plot_diagnostics",
    "plot_points",
    "require_matplotlib",
    "save_image_grid",
    "write_png",
]
