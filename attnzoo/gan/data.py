"""Small image data sets drawn in code, so every GAN family trains on a CPU in seconds.

* :func:`make_shapes`: coloured circles, squares and triangles (filled or outlined) at
  random positions and sizes, rasterised with torch alone (4x supersampled, so edges are
  anti-aliased). The font-free core: it needs nothing beyond torch.
* :func:`make_digits`: the digits 0-9 drawn from the outlines of the DejaVu Sans font
  that matplotlib ships, randomly shifted, scaled and rotated. Needs matplotlib (the
  ``viz`` extra), imported when called.
* :func:`shape_embeddings`: fixed "text" embeddings of a shape's attributes (kind and
  colour), the conditioning input of the text-to-image models.
* :func:`downsample`: average pooling to a lower resolution (low-resolution inputs of
  super-resolution, the real images of the early stages of progressive growing).

Images are ``(n, channels, size, size)`` in ``[-1, 1]`` (background ``-1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attention.validation import check_int, check_rank

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle")
SHAPE_STYLES: tuple[str, ...] = ("filled", "outline")
_SUPERSAMPLE = 4


@dataclass
class ShapeImages:
    """A batch of drawn shapes.

    Attributes:
        images: ``(n, channels, size, size)`` in ``[-1, 1]``.
        shapes: ``(n,)`` index into :data:`SHAPE_NAMES`.
        colours: ``(n, 3)`` RGB in ``[0, 1]`` of each shape.
    """

    images: Tensor
    shapes: Tensor
    colours: Tensor


def _inside(kind: Tensor, dx: Tensor, dy: Tensor, scale: float) -> Tensor:
    """Masks of the three shapes in coordinates normalised by each shape's radius."""
    circle = dx.pow(2) + dy.pow(2) <= scale**2
    square = torch.maximum(dx.abs(), dy.abs()) <= 0.8 * scale
    # Apex at (0, -0.9 s), base at y = 0.8 s from x = -s to x = s.
    triangle = (dy <= 0.8 * scale) & (dx.abs() <= (dy + 0.9 * scale) / 1.7)
    kind = kind.view(-1, 1, 1)
    return torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))


def make_shapes(
    n: int,
    image_size: int = 16,
    channels: int = 3,
    style: str = "filled",
    generator: torch.Generator | None = None,
) -> ShapeImages:
    """Draw ``n`` random shapes.

    Each image holds one circle, square or triangle (equally likely) of a random colour
    (each RGB component in ``[0.3, 1]``), centred in the middle 40% of the image with a
    radius of 20-35% of its size. ``"outline"`` keeps a band of a fifth of the radius.

    Args:
        n: number of images.
        image_size: height and width in pixels (at least 4).
        channels: 3 (RGB) or 1 (the colour's mean as grey level).
        style: ``"filled"`` or ``"outline"``.
        generator: random generator (seed it for a fixed data set).

    Returns:
        :class:`ShapeImages` with ``images`` ``(n, channels, image_size, image_size)``.
    """
    check_int(n, "n")
    check_int(image_size, "image_size", minimum=4)
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3, got {channels}")
    if style not in SHAPE_STYLES:
        raise ValueError(f"`style` must be one of {SHAPE_STYLES}, got {style!r}")

    def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator)

    kind = torch.randint(len(SHAPE_NAMES), (n,), generator=generator)
    colours = uniform(n, 3, low=0.3, high=1.0)
    centre = uniform(n, 2, low=0.3, high=0.7) * image_size
    radius = uniform(n, low=0.2, high=0.35) * image_size

    fine = image_size * _SUPERSAMPLE
    coords = (torch.arange(fine, dtype=torch.float32) + 0.5) / _SUPERSAMPLE
    dy = (coords.view(1, -1, 1) - centre[:, 1].view(-1, 1, 1)) / radius.view(-1, 1, 1)
    dx = (coords.view(1, 1, -1) - centre[:, 0].view(-1, 1, 1)) / radius.view(-1, 1, 1)
    mask = _inside(kind, dx, dy, 1.0)
    if style == "outline":
        mask = mask & ~_inside(kind, dx, dy, 0.8)
    coverage = F.avg_pool2d(mask.float().unsqueeze(1), _SUPERSAMPLE)  # (n, 1, S, S)
    colour = colours if channels == 3 else colours.mean(1, keepdim=True)
    images = -1.0 + 2.0 * coverage * colour.view(n, channels, 1, 1)
    return ShapeImages(images=images, shapes=kind, colours=colours)


def shape_embeddings(
    shapes: Tensor,
    colours: Tensor,
    dim: int = 16,
    noise: float = 0.0,
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fixed embeddings of "a <colour> <shape>": a stand-in for a sentence encoder.

    ``[one_hot(shape), colour] @ W`` with one fixed random ``W`` per ``(dim, seed)``
    (unit-variance entries), plus optional Gaussian noise of std ``noise``, as several
    captions of one image would give several nearby embeddings.

    Args:
        shapes: ``(n,)`` indices into :data:`SHAPE_NAMES`.
        colours: ``(n, 3)`` RGB in ``[0, 1]``.
        dim: embedding width.
        noise: std of the noise added.
        seed: seed of ``W``.
        generator: random generator of the noise.

    Returns:
        ``(n, dim)``.
    """
    check_rank(shapes, 1, "shapes", "(n,)")
    check_rank(colours, 2, "colours", "(n, 3)")
    if colours.shape != (shapes.shape[0], 3):
        raise ValueError(
            f"`colours` must have shape ({shapes.shape[0]}, 3), got {tuple(colours.shape)}"
        )
    check_int(dim, "dim")
    weights = torch.randn(
        len(SHAPE_NAMES) + 3, dim, generator=torch.Generator().manual_seed(seed)
    ).to(colours)
    attributes = torch.cat([F.one_hot(shapes, len(SHAPE_NAMES)).to(colours), colours], dim=1)
    embeddings = attributes @ weights
    if noise:
        embeddings = embeddings + noise * torch.randn(embeddings.shape, generator=generator).to(
            embeddings
        )
    return embeddings


@lru_cache(maxsize=8)
def _digit_glyphs(resolution: int) -> Tensor:
    """The ten digits of DejaVu Sans, ``(10, resolution, resolution)`` coverage in [0, 1].

    Each glyph's outline (matplotlib's ``TextPath``) is filled by the even-odd rule, so
    the counters of 0, 4, 6, 8 and 9 stay open, and centred with its height at 80% of
    the square.
    """
    try:
        from matplotlib.font_manager import FontProperties
        from matplotlib.path import Path
        from matplotlib.textpath import TextPath
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "make_digits draws with the DejaVu font that matplotlib ships: "
            "pip install 'attnzoo[viz]' (or use make_shapes, which needs nothing)"
        ) from error
    font = FontProperties(family="DejaVu Sans")
    centres = (torch.arange(resolution, dtype=torch.float64) + 0.5) / resolution
    rows, cols = torch.meshgrid(centres, centres, indexing="ij")
    glyphs = []
    for digit in "0123456789":
        polygons = TextPath((0, 0), digit, size=1.0, prop=font).to_polygons(closed_only=True)
        corners = torch.cat([torch.as_tensor(p) for p in polygons])
        low, high = corners.min(0).values, corners.max(0).values
        scale = 0.8 / float((high - low).max())
        middle = (low + high) / 2
        points = torch.stack(
            [(cols - 0.5) / scale + middle[0], (0.5 - rows) / scale + middle[1]], dim=-1
        ).reshape(-1, 2)
        inside = torch.zeros(points.shape[0], dtype=torch.bool)
        for polygon in polygons:
            inside ^= torch.as_tensor(Path(polygon).contains_points(points.numpy()))
        glyphs.append(inside.view(resolution, resolution).float())
    return torch.stack(glyphs)


def make_digits(
    n: int,
    image_size: int = 16,
    generator: torch.Generator | None = None,
    max_shift: float = 0.1,
    max_rotation: float = 0.2,
    scale_range: tuple[float, float] = (0.8, 1.0),
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` random digits (an MNIST stand-in) from the DejaVu Sans font.

    Each digit is rendered once at 4x resolution, moved by a random affine map (shift up
    to ``max_shift`` of the image, rotation up to ``max_rotation`` radians, scale in
    ``scale_range``), and average-pooled to ``image_size``. Needs matplotlib (the
    ``viz`` extra).

    Args:
        n: number of images.
        image_size: height and width (at least 8).
        generator: random generator.
        max_shift: largest shift, as a fraction of the image size.
        max_rotation: largest rotation in radians.
        scale_range: range of the glyph's scale.

    Returns:
        ``(images (n, 1, image_size, image_size) in [-1, 1], labels (n,))``.
    """
    check_int(n, "n")
    check_int(image_size, "image_size", minimum=8)
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(
            f"`scale_range` must be (low, high) with 0 < low <= high, got {scale_range}"
        )
    glyphs = _digit_glyphs(image_size * _SUPERSAMPLE)
    labels = torch.randint(10, (n,), generator=generator)
    angle = (2 * torch.rand(n, generator=generator) - 1) * max_rotation
    scale = low + (high - low) * torch.rand(n, generator=generator)
    shift = (2 * torch.rand(n, 2, generator=generator) - 1) * max_shift * 2  # grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    fine = image_size * _SUPERSAMPLE
    grid = F.affine_grid(theta, [n, 1, fine, fine], align_corners=False)
    images = F.grid_sample(glyphs[labels].unsqueeze(1), grid, mode="bilinear", align_corners=False)
    return F.avg_pool2d(images, _SUPERSAMPLE) * 2 - 1, labels


def downsample(images: Tensor, size: int) -> Tensor:
    """Average-pool ``(n, C, H, W)`` images to ``(n, C, size, size)`` (``H`` a multiple)."""
    check_rank(images, 4, "images", "(n, channels, height, width)")
    check_int(size, "size")
    height, width = images.shape[-2:]
    if height != width or height % size:
        raise ValueError(
            f"`images` must be square with a side that is a multiple of size={size}, "
            f"got {height}x{width}"
        )
    return F.avg_pool2d(images, height // size) if height != size else images


__all__ = [
    "SHAPE_NAMES",
    "SHAPE_STYLES",
    "ShapeImages",
    "downsample",
    "make_digits",
    "make_shapes",
    "shape_embeddings",
]
