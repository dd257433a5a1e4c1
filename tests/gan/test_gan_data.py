"""Image data drawn in code, and the PNG sample grids."""

from __future__ import annotations

import importlib.util
import struct
import zlib

import pytest
import torch

from attnzoo.gan import (
    SHAPE_NAMES,
    downsample,
    image_grid,
    make_digits,
    make_shapes,
    save_image_grid,
    shape_embeddings,
    write_png,
)

HAS_VIZ = importlib.util.find_spec("matplotlib") is not None


def test_shapes_are_seeded_images_in_range() -> None:
    a = make_shapes(12, 16, generator=torch.Generator().manual_seed(0))
    b = make_shapes(12, 16, generator=torch.Generator().manual_seed(0))
    assert a.images.shape == (12, 3, 16, 16)
    assert torch.equal(a.images, b.images)
    assert a.images.min() >= -1.0 and a.images.max() <= 1.0
    assert a.shapes.shape == (12,) and a.colours.shape == (12, 3)
    assert set(a.shapes.tolist()) <= set(range(len(SHAPE_NAMES)))
    # The background is -1; each image holds one shape of its colour.
    assert torch.all(a.images[:, :, 0, 0] == -1.0)
    for i in range(12):
        brightest = a.images[i].flatten(1).max(dim=1).values
        torch.testing.assert_close(brightest, 2 * a.colours[i] - 1, atol=0.02, rtol=0)


def test_shape_kinds_differ_in_area() -> None:
    # For one radius, a square (side 1.6 r) has more area than a triangle; a circle more.
    shapes = make_shapes(600, 16, channels=1, generator=torch.Generator().manual_seed(1))
    area = (shapes.images > -1).float().mean(dim=(1, 2, 3))
    means = [area[shapes.shapes == k].mean().item() for k in range(3)]
    circle, square, triangle = means
    assert circle > square > triangle


def test_outline_style_draws_less_than_filled() -> None:
    filled = make_shapes(50, 32, style="filled", generator=torch.Generator().manual_seed(2))
    outline = make_shapes(50, 32, style="outline", generator=torch.Generator().manual_seed(2))
    assert torch.equal(filled.shapes, outline.shapes)
    # The band keeps the outer fifth of the radius: 1 - 0.8^2 = 36% of the ink.
    assert (outline.images + 1).sum() < 0.45 * (filled.images + 1).sum()


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="channels"):
        make_shapes(2, 16, channels=2)
    with pytest.raises(ValueError, match="style"):
        make_shapes(2, 16, style="hatched")
    with pytest.raises(ValueError, match="image_size"):
        make_shapes(2, 2)


def test_shape_embeddings() -> None:
    shapes = torch.tensor([0, 1, 0])
    colours = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    embeddings = shape_embeddings(shapes, colours, dim=6)
    assert embeddings.shape == (3, 6)
    assert torch.equal(embeddings[0], embeddings[2])
    assert not torch.equal(embeddings[0], embeddings[1])
    assert torch.equal(shape_embeddings(shapes, colours, dim=6), embeddings)  # fixed W
    with pytest.raises(ValueError, match="colours"):
        shape_embeddings(shapes, colours[:2], dim=6)


@pytest.mark.skipif(not HAS_VIZ, reason="needs matplotlib")
def test_digits_from_the_font() -> None:
    images, labels = make_digits(40, 16, generator=torch.Generator().manual_seed(0))
    assert images.shape == (40, 1, 16, 16) and labels.shape == (40,)
    assert images.min() >= -1.0 and images.max() <= 1.0
    ink = (images > 0).float().mean(dim=(1, 2, 3))
    assert ink.min() > 0.02  # every image shows a glyph
    # "1" uses less ink than "8" in DejaVu Sans.
    centred, digit = make_digits(
        20, 16, max_shift=0.0, max_rotation=0.0, scale_range=(1.0, 1.0),
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    ink = (centred + 1).mean(dim=(1, 2, 3))
    ones, eights = ink[digit == 1], ink[digit == 8]
    if len(ones) and len(eights):
        assert ones.max() < eights.min()


def test_downsample() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert downsample(x, 4) is x
    with pytest.raises(ValueError, match="multiple"):
        downsample(x, 3)


def _decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, {}
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = body
        position += 12 + length
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert depth == 8
    return width, height, colour_type, zlib.decompress(chunks[b"IDAT"])


def test_write_png_round_trips(tmp_path) -> None:
    pixels = torch.randint(0, 256, (5, 7, 3), dtype=torch.uint8)
    path = write_png(pixels, tmp_path / "sub" / "x.png")
    width, height, colour_type, raw = _decode_png(path.read_bytes())
    assert (width, height, colour_type) == (7, 5, 2)
    rows = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(5, 1 + 7 * 3)
    assert torch.all(rows[:, 0] == 0)
    assert torch.equal(rows[:, 1:].reshape(5, 7, 3), pixels)
    if importlib.util.find_spec("PIL") is not None:
        from PIL import Image

        with Image.open(path) as image:
            assert image.size == (7, 5)
            assert torch.equal(
                torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8),
                pixels.flatten(),
            )
    with pytest.raises(TypeError, match="uint8"):
        write_png(torch.zeros(2, 2), tmp_path / "y.png")


def test_image_grid_layout(tmp_path) -> None:
    images = torch.full((5, 1, 3, 4), 1.0)
    grid = image_grid(images, nrow=3, padding=1)
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 1) and grid.dtype == torch.uint8
    assert grid[1, 1] == 255 and grid[0, 0] == 0
    assert grid[5:8, 11:15].eq(0).all()  # the sixth tile is empty
    rgb = image_grid(torch.zeros(4, 3, 2, 2), padding=0)
    assert rgb.shape == (4, 4, 3) and rgb.eq(128).all()
    path = save_image_grid(torch.zeros(4, 3, 2, 2), tmp_path / "grid.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="channels"):
        image_grid(torch.zeros(2, 2, 3, 3))
