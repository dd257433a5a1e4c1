"""The Triton row kernel of sparsemax / 1.5-entmax / alpha-entmax against the torch path.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors; the dispatch from
the public maps (CUDA tensors only) and the gradients through it are checked on a GPU.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from attnzoo.attention.entmax import alpha_entmax, entmax15, sparsemax
from tests.triton_interpreter import load_kernels

rows = load_kernels("attnzoo.attention.triton_rows")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MAPS = {"sparsemax": 2.0, "entmax15": 1.5, "alpha 1.3": 1.3, "alpha 1.9": 1.9}


def _exact(x: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """The torch path in float64, on the CPU."""
    x64 = x.detach().double().cpu()
    if isinstance(alpha, torch.Tensor):
        return alpha_entmax(x64, alpha.double().cpu())
    if alpha == 2.0:
        return sparsemax(x64)
    if alpha == 1.5:
        return entmax15(x64)
    return alpha_entmax(x64, alpha)


def _scores(shape: tuple[int, ...], seed: int, scale: float = 2.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen)).to(DEVICE)


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize("n", [1, 7, 50, 300, 5000, 8192])
def test_matches_float64(name: str, n: int) -> None:
    # 2 x 5 rows: several rows per program for short rows, a ragged last program; one row
    # per program up to the longest row the kernel takes.
    x = _scores((2, 5, n), seed=n)
    ours = rows.entmax_rows(x, MAPS[name])
    assert ours.shape == x.shape and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double().cpu(), _exact(x, MAPS[name]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(MAPS))
def test_masked_entries_and_an_empty_row(name: str) -> None:
    x = _scores((6, 40), seed=1)
    x[:, ::3] = float("-inf")
    x[2] = float("-inf")
    ours = rows.entmax_rows(x, MAPS[name])
    assert torch.equal(ours[2], torch.zeros_like(ours[2]))
    assert bool((ours[:, ::3] == 0).all())
    torch.testing.assert_close(ours.double().cpu(), _exact(x, MAPS[name]), atol=1e-6, rtol=0)


def test_one_alpha_per_row() -> None:
    x = _scores((3, 4, 33), seed=2)
    alpha = torch.linspace(1.05, 2.0, 12).view(3, 4, 1).to(DEVICE)
    ours = rows.entmax_rows(x, alpha)
    torch.testing.assert_close(ours.double().cpu(), _exact(x, alpha), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [1e-4, 1.0, 30.0])
def test_near_uniform_and_near_one_hot_rows(scale: float) -> None:
    x = _scores((4, 257), seed=3, scale=scale)
    for alpha in (2.0, 1.5, 1.2):
        ours = rows.entmax_rows(x, alpha)
        torch.testing.assert_close(ours.double().cpu(), _exact(x, alpha), atol=1e-6, rtol=0)


def test_what_the_kernel_refuses() -> None:
    x = _scores((2, 8), seed=4)
    assert rows.rows_unsupported(x, 1.5) is None
    assert "float32" in rows.rows_unsupported(x.double(), 1.5)
    assert "alpha" in rows.rows_unsupported(x, 2.5)
    assert "alpha" in rows.rows_unsupported(x, torch.full((2, 1), 2.5, device=DEVICE))
    assert "rows" in rows.rows_unsupported(x, torch.full((3, 1), 1.5, device=DEVICE))
    long = torch.zeros(1, rows.MAX_ROW + 1, device=DEVICE)
    assert "entries" in rows.rows_unsupported(long, 1.5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "alpha 1.3", "learned"])
def test_public_maps_on_cuda_use_the_kernel_and_differentiate(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    kernel = rows.entmax_rows
    monkeypatch.setattr(rows, "entmax_rows", lambda *args: calls.append(1) or kernel(*args))
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 1000, generator=gen, dtype=torch.float64)
    learned = torch.tensor([1.2, 1.6, 2.0], dtype=torch.float64).view(3, 1, 1).requires_grad_()
    alpha = MAPS.get(name, learned)

    def apply(scores: torch.Tensor, a: float | torch.Tensor) -> torch.Tensor:
        if name == "sparsemax":
            return sparsemax(scores)
        if name == "entmax15":
            return entmax15(scores)
        return alpha_entmax(scores, a)

    a_cuda = alpha.detach().float().cuda().requires_grad_() if name == "learned" else alpha
    x_cuda = x.float().cuda().requires_grad_()
    ours = apply(x_cuda, a_cuda)
    assert calls == [1]
    x64 = x.clone().requires_grad_()
    exact = apply(x64, alpha)
    torch.testing.assert_close(ours.double().cpu(), exact.detach(), atol=1e-6, rtol=0)
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    inputs_cuda = (x_cuda, a_cuda) if name == "learned" else (x_cuda,)
    inputs_64 = (x64, alpha) if name == "learned" else (x64,)
    got = torch.autograd.grad(ours, inputs_cuda, grad.float().cuda())
    expected = torch.autograd.grad(exact, inputs_64, grad)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a.double().cpu(), b, atol=1e-5, rtol=1e-4)
