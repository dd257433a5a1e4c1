"""The Triton entmax attention kernels against the torch tiles of ``blockwise_attention``.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (slow: sizes are
tiny, and most cases use one tile per axis; one case uses 16 x 16 tiles so that several
query blocks, key tiles, ragged edges and the tile lists are exercised).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from attnzoo.attention.blockwise import blockwise_attention
from tests.triton_interpreter import load_kernels

kernels = load_kernels("attnzoo.attention.triton_entmax")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# float32 against float32: different summation orders and thresholds found by different
# iterations; measured differences are below 3e-6 (and closer to float64 than the torch
# path's), the bound leaves room for rounding only.
ATOL, RTOL = 2e-5, 1e-4

# name -> (blockwise normaliser, blockwise alpha, kernel alpha)
MAPS = {
    "sparsemax": ("sparsemax", None, 2.0),
    "entmax15": ("entmax15", None, 1.5),
    "alpha 1.3": ("entmax", 1.3, 1.3),
}


def _inputs(batch: int, heads: int, n_q: int, n_k: int, d: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (
        torch.randn(batch, heads, n, d, generator=gen).to(DEVICE).requires_grad_()
        for n in (n_q, n_k, n_k)
    )
    return q, k, v


def _padding(batch: int, n_k: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, n_k, generator=gen) > 0.3
    mask[-1] = False  # a fully padded sequence: its rows must come out as zeros
    return mask.to(DEVICE)


def _compare(ours: torch.Tensor, reference: torch.Tensor, inputs: tuple[torch.Tensor, ...]):
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=RTOL)
    grad = torch.randn_like(ours)
    got = torch.autograd.grad(ours, inputs, grad)
    expected = torch.autograd.grad(reference, inputs, grad)
    for name, a, b in zip("qkv", got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=f"gradient of {name}")


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize(
    ("causal", "padded"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_matches_the_torch_path(name: str, causal: bool, padded: bool) -> None:
    normalizer, alpha, kernel_alpha = MAPS[name]
    # Head sizes 16 and 32; one tile per axis, or 16-row query blocks and 32-key tiles
    # (ragged at both ends: 37 = 2 * 16 + 5, 50 = 32 + 18).
    batch, heads, n_q, n_k, d = 2, 3, 37, 50, 32 if causal else 16
    blocks = {"block_m": 16, "block_n": 32} if padded else {}
    q, k, v = _inputs(batch, heads, n_q, n_k, d)
    kpm = _padding(batch, n_k) if padded else None
    ours = kernels.triton_entmax_attention(
        q, k, v, alpha=kernel_alpha, causal=causal, key_padding_mask=kpm, **blocks
    )
    mask = None if kpm is None else kpm[:, None, None, :]
    reference = blockwise_attention(
        q, k, v, normalizer=normalizer, alpha=alpha, mask=mask, causal=causal, backend="torch"
    )
    _compare(ours, reference, (q, k, v))
    if padded:
        assert torch.equal(ours[-1], torch.zeros_like(ours[-1]))


def test_several_tiles_per_axis_with_ragged_edges() -> None:
    # 16 x 16 tiles: 3 query blocks and 4 key tiles, the last of each ragged; causal with
    # n_q < n_k and padding, so the tile lists differ from block to block.
    q, k, v = _inputs(2, 2, 37, 50, 32, seed=3)
    kpm = _padding(2, 50)
    ours = kernels.triton_entmax_attention(
        q, k, v, alpha=1.5, causal=True, key_padding_mask=kpm, block_m=16, block_n=16
    )
    reference = blockwise_attention(
        q, k, v, mask=kpm[:, None, None, :], causal=True, backend="torch"
    )
    _compare(ours, reference, (q, k, v))


@pytest.mark.parametrize("name", list(MAPS))
@pytest.mark.parametrize(
    ("n_q", "n_k", "causal"), [(37, 50, False), (37, 50, True), (50, 37, True)]
)
def test_tiles_with_and_without_masks(name: str, n_q: int, n_k: int, causal: bool) -> None:
    # 16 x 16 tiles without padding: the leading key tiles of a block are taken without a
    # mask, the diagonal and ragged ones with it; causal with n_q > n_k leaves the first
    # rows with no key at all.
    normalizer, alpha, kernel_alpha = MAPS[name]
    q, k, v = _inputs(2, 2, n_q, n_k, 16, seed=5)
    ours = kernels.triton_entmax_attention(
        q, k, v, alpha=kernel_alpha, causal=causal, block_m=16, block_n=16
    )
    reference = blockwise_attention(
        q, k, v, normalizer=normalizer, alpha=alpha, causal=causal, backend="torch"
    )
    _compare(ours, reference, (q, k, v))


def test_one_alpha_per_head() -> None:
    q, k, v = _inputs(1, 3, 20, 33, 16, seed=4)
    alpha = torch.tensor([1.2, 1.5, 2.0], device=DEVICE)
    ours = kernels.triton_entmax_attention(q, k, v, alpha=alpha)
    reference = blockwise_attention(
        q, k, v, normalizer="entmax", alpha=alpha.view(1, 3, 1, 1), backend="torch"
    )
    _compare(ours, reference, (q, k, v))


@pytest.mark.parametrize(
    ("causal", "padded", "blocks"),
    [(False, False, {}), (True, True, {"block_m": 16, "block_n": 16})],
)
def test_learned_alpha_per_head_gets_the_torch_paths_gradient(causal, padded, blocks) -> None:
    # Alphas from near 1 (large r) to sparsemax; with 16 x 16 tiles several query blocks
    # and key tiles add to each head's gradient, and a fully padded sequence adds nothing.
    q, k, v = _inputs(2, 4, 37, 50, 16, seed=10)
    raw = torch.tensor([1.15, 1.5, 1.8, 2.0], device=DEVICE)
    alphas = [raw.clone().requires_grad_() for _ in range(2)]
    kpm = _padding(2, 50) if padded else None
    mask = None if kpm is None else kpm[:, None, None, :]
    ours = kernels.triton_entmax_attention(
        q, k, v, alpha=alphas[0], causal=causal, key_padding_mask=kpm, **blocks
    )
    reference = blockwise_attention(
        q,
        k,
        v,
        normalizer="entmax",
        alpha=alphas[1].view(1, 4, 1, 1),
        mask=mask,
        causal=causal,
        backend="torch",
    )
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=RTOL)
    grad = torch.randn_like(ours)
    got = torch.autograd.grad(ours, (q, k, v, alphas[0]), grad)
    expected = torch.autograd.grad(reference, (q, k, v, alphas[1]), grad)
    for name, a, b in zip(["q", "k", "v", "alpha"], got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=f"gradient of {name}")
    assert got[3].abs().min() > 1e-3  # every head's gradient is a real number, not 0


def test_learned_alpha_through_blockwise_dispatch() -> None:
    # blockwise_attention passes a learnable alpha on to the kernel, gradient and all.
    q, k, v = _inputs(1, 2, 9, 12, 16, seed=11)
    alpha = torch.tensor([1.3, 1.6], device=DEVICE, requires_grad=True)
    out = blockwise_attention(
        q, k, v, normalizer="entmax", alpha=alpha.view(1, 2, 1, 1), backend="triton"
    )
    (grad,) = torch.autograd.grad(out.square().sum(), alpha)
    reference = blockwise_attention(
        q, k, v, normalizer="entmax", alpha=alpha.view(1, 2, 1, 1), backend="torch"
    )
    (expected,) = torch.autograd.grad(reference.square().sum(), alpha)
    torch.testing.assert_close(grad, expected, atol=ATOL, rtol=RTOL)


def test_single_query_and_single_key() -> None:
    q, k, v = _inputs(1, 2, 1, 50, 16, seed=5)
    reference = blockwise_attention(q, k, v, normalizer="sparsemax", backend="torch")
    ours = kernels.triton_entmax_attention(q, k, v, alpha=2.0)
    _compare(ours, reference, (q, k, v))
    # One key: every weight is 1 (causal with n_q > n_k leaves early rows empty).
    q, k, v = _inputs(1, 2, 3, 1, 16, seed=6)
    ours = kernels.triton_entmax_attention(q, k, v, alpha=1.5, causal=True)
    reference = blockwise_attention(q, k, v, causal=True, backend="torch")
    _compare(ours, reference, (q, k, v))
    assert torch.equal(ours[:, :, :2], torch.zeros_like(ours[:, :, :2]))


def test_blockwise_dispatches_to_the_kernel() -> None:
    q, k, v = _inputs(2, 2, 9, 12, 16, seed=7)
    mask = _padding(2, 12)[:, None, None, :]
    alpha = torch.tensor([1.4, 1.7], device=DEVICE).view(1, 2, 1, 1)
    ours = blockwise_attention(
        q, k, v, normalizer="entmax", alpha=alpha, mask=mask, causal=True, backend="triton"
    )
    reference = blockwise_attention(
        q, k, v, normalizer="entmax", alpha=alpha, mask=mask, causal=True, backend="torch"
    )
    _compare(ours, reference, (q, k, v))


def test_low_precision_inputs() -> None:
    q, k, v = (x.detach().half() for x in _inputs(1, 2, 17, 23, 16, seed=8))
    ours = kernels.triton_entmax_attention(q, k, v, alpha=1.5)
    assert ours.dtype == torch.float16
    reference = blockwise_attention(q, k, v, backend="torch")
    torch.testing.assert_close(ours, reference, atol=2e-3, rtol=1e-2)


def test_unsupported_calls_raise() -> None:
    q, k, v = _inputs(1, 2, 5, 6, 16)
    with pytest.raises(ValueError, match="alpha.*> 2"):
        blockwise_attention(q, k, v, normalizer="entmax", alpha=2.5, backend="triton")
    full_mask = torch.ones(1, 2, 5, 6, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="only key padding"):
        blockwise_attention(q, k, v, mask=full_mask, backend="triton")
    odd_d = [torch.randn(1, 2, 5, 24, device=DEVICE) for _ in range(3)]
    with pytest.raises(ValueError, match="head size d = 24"):
        blockwise_attention(*odd_d, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        blockwise_attention(q, k, v, backend="cuda")
    # The same refusals from the kernel's own entry point.
    with pytest.raises(ValueError, match="head size d"):
        kernels.triton_entmax_attention(*odd_d, alpha=1.5)
    with pytest.raises(ValueError, match=r"per head \(2,\)"):
        kernels.triton_entmax_attention(q, k, v, alpha=torch.tensor([1.5, 1.5, 1.5]))
    with pytest.raises(ValueError, match="key_padding_mask"):
        kernels.triton_entmax_attention(
            q, k, v, alpha=1.5, key_padding_mask=torch.ones(1, 5, dtype=torch.bool)
        )
    with pytest.raises(TypeError, match="key_padding_mask"):
        kernels.triton_entmax_attention(q, k, v, alpha=1.5, key_padding_mask=torch.ones(1, 6))
    with pytest.raises(ValueError, match="block_m"):
        kernels.triton_entmax_attention(q, k, v, alpha=1.5, block_m=24)
    with pytest.raises(ValueError, match="alpha"):
        kernels.triton_entmax_attention(q, k, v, alpha=1.0)


def test_more_newton_passes_change_nothing() -> None:
    # The default pass count has converged: more passes give the same output.
    q, k, v = (x.detach() for x in _inputs(1, 2, 16, 50, 16, seed=9))
    default = kernels.triton_entmax_attention(q, k, v, alpha=2.0)
    more = kernels.triton_entmax_attention(q, k, v, alpha=2.0, n_iter=20)
    torch.testing.assert_close(default, more, atol=1e-6, rtol=0)
    assert kernels.default_newton_steps(50, 2.0) < 20


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_early_exit_matches_float64(alpha: float) -> None:
    # The passes stop once every row of a block holds a certified exact threshold; the
    # result must still be the exact map (here against float64 on 300 keys).
    q, k, v = (x.detach() for x in _inputs(1, 2, 20, 300, 32, seed=11))
    ours = kernels.triton_entmax_attention(q, k, v, alpha=alpha, n_iter=40)
    name = "sparsemax" if alpha == 2.0 else "entmax15"
    exact = blockwise_attention(q.double(), k.double(), v.double(), normalizer=name)
    torch.testing.assert_close(ours.double(), exact, atol=2e-6, rtol=0)


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_two_passes_from_the_candidates_are_final(alpha: float) -> None:
    # The candidates' threshold starts the Newton passes so close that two passes over
    # the keys certify every row of these Gaussian scores: the passes stop there, and 40
    # allowed passes give the identical output (measured: sparsemax blocks mostly stop
    # after one, 1.5-entmax blocks after two).
    q, k, v = (x.detach() for x in _inputs(1, 2, 40, 700, 32, seed=12))
    two = kernels.triton_entmax_attention(q, k, v, alpha=alpha, n_iter=2)
    assert torch.equal(two, kernels.triton_entmax_attention(q, k, v, alpha=alpha, n_iter=40))


@pytest.mark.parametrize("name", list(MAPS))
def test_support_crowded_into_one_key_class(name: str) -> None:
    # Keys 0, 16, 32, ... (one class mod block_n = 16) lie along the queries' common
    # direction and score far above the rest, so most of a row's support is in one class,
    # of which the candidates keep two entries: their threshold is a loose bound, and the
    # Newton passes must do the work.
    normalizer, alpha, kernel_alpha = MAPS[name]
    gen = torch.Generator().manual_seed(13)
    direction = 2 * torch.nn.functional.normalize(torch.randn(16, generator=gen), dim=0)
    q = direction + 0.3 * torch.randn(1, 2, 24, 16, generator=gen)
    k = torch.randn(1, 2, 160, 16, generator=gen)
    k[:, :, ::16] = 2 * direction + 0.3 * k[:, :, ::16]
    v = torch.randn(1, 2, 160, 16, generator=gen)
    weights = blockwise_attention(
        q.double(),
        k.double(),
        torch.eye(160, dtype=torch.float64).expand(1, 2, -1, -1),
        normalizer=normalizer,
        alpha=alpha,
    )
    # The premise: every row's support holds more than two keys of the crowded class.
    assert bool(((weights[..., ::16] > 0).sum(dim=-1) > 2).all())
    q, k, v = (x.to(DEVICE) for x in (q, k, v))
    ours = kernels.triton_entmax_attention(q, k, v, alpha=kernel_alpha, block_n=16)
    exact = blockwise_attention(
        q.double(), k.double(), v.double(), normalizer=normalizer, alpha=alpha
    )
    torch.testing.assert_close(ours.double(), exact, atol=2e-6, rtol=0)


@pytest.mark.parametrize("name", list(MAPS))
def test_uniform_and_near_uniform_rows(name: str) -> None:
    # Equal scores (q = 0) give every key 1 / n_k; tiny scores a support of all keys.
    _, alpha, kernel_alpha = MAPS[name]
    normalizer = MAPS[name][0]
    q, k, v = (x.detach() for x in _inputs(1, 2, 20, 300, 32, seed=14))
    for factor in (0.0, 1e-3):
        scaled = q * factor
        ours = kernels.triton_entmax_attention(scaled, k, v, alpha=kernel_alpha)
        exact = blockwise_attention(
            scaled.double(), k.double(), v.double(), normalizer=normalizer, alpha=alpha
        )
        torch.testing.assert_close(ours.double(), exact, atol=2e-6, rtol=0)


def _relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return ((got.double() - exact).norm() / exact.norm()).item()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("alpha", "causal"), [(1.5, False), (1.5, True), (2.0, False)])
def test_half_precision_on_many_tiles_against_float64(
    dtype: torch.dtype, alpha: float, causal: bool
) -> None:
    # Tensor-core products over many tiles, unmasked and masked: the interpreter computes
    # half-precision products in float32 and cannot show a compiled kernel's errors, so
    # this checks the output and every gradient against float64 at a size with ~13 key
    # tiles per query block (float16 differences measured ~3e-4, bfloat16 ~2.5e-3).
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(2, 2, n, 64, generator=gen, device="cuda", dtype=dtype).requires_grad_()
        for n in (513, 777, 777)
    )
    out = kernels.triton_entmax_attention(q, k, v, alpha=alpha, causal=causal)
    grad = torch.randn(out.shape, generator=gen, device="cuda", dtype=dtype)
    got = torch.autograd.grad(out, (q, k, v), grad)
    exact_inputs = [x.detach().double().requires_grad_() for x in (q, k, v)]
    name = "entmax15" if alpha == 1.5 else "sparsemax"
    exact = blockwise_attention(*exact_inputs, normalizer=name, causal=causal, backend="torch")
    exact_grads = torch.autograd.grad(exact, exact_inputs, grad.double())
    bound = 2e-3 if dtype == torch.float16 else 1.5e-2
    assert _relative_error(out, exact) < bound
    for label, a, b in zip("qkv", got, exact_grads, strict=True):
        assert _relative_error(a, b) < bound, f"gradient of {label}"


def test_importing_attnzoo_does_not_import_triton() -> None:
    code = (
        "import sys, torch, attnzoo, attnzoo.attention\n"
        "from attnzoo.attention import blockwise_attention\n"
        "q = torch.randn(1, 2, 4, 16)\n"
        "blockwise_attention(q, q, q)\n"
        "assert 'triton' not in sys.modules, 'triton was imported'\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
