"""Blockwise sparse attention against the dense path and the ``entmax`` package.

Tolerances: float64 values and gradients within 1e-10 of dense ``attend`` (the same
thresholds, summed in a different order); the custom backward is gradchecked in float64,
including the gradient in alpha.
"""

from __future__ import annotations

import entmax as entmax_ref
import pytest
import torch

from attnzoo.attention import attend, blockwise_attention
from attnzoo.attention.entmax import _entmax15_newton, block_entries

TOL = 1e-10
NEG_INF = float("-inf")

# (normalizer, alpha): every map the blockwise path computes, alpha > 2 included.
CASES = {
    "sparsemax": ("sparsemax", None),
    "entmax15": ("entmax15", None),
    "entmax-1.3": ("entmax", 1.3),
    "entmax-per-head": ("entmax", torch.tensor([1.05, 1.5, 1.999, 2.5]).view(1, 4, 1, 1)),
}


def qkv(*lead, n_q, n_k, d=5, d_v=3, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(*lead, n_q, d), (*lead, n_k, d), (*lead, n_k, d_v)]
    return [(2 * torch.randn(s, generator=g, dtype=dtype)).requires_grad_(grad) for s in shapes]


def alpha_leaf(alpha, dtype=torch.float64):
    if isinstance(alpha, torch.Tensor):
        return alpha.to(dtype).clone().requires_grad_()
    return alpha


def grads(out, inputs, seed=1):
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=generator, dtype=out.dtype)
    leaves = [x for x in inputs if isinstance(x, torch.Tensor)]
    return torch.autograd.grad(out, leaves, upstream)


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("block_size", [1, 3, 5, None])
@pytest.mark.parametrize("masking", ["none", "padding", "causal", "random+causal"])
def test_matches_dense_attend_values_and_gradients(name, block_size, masking):
    normalizer, alpha = CASES[name]
    q, k, v = qkv(2, 4, n_q=7, n_k=9, grad=True)
    mask, causal = None, masking in ("causal", "random+causal")
    if masking == "padding":
        mask = torch.tensor([[True] * 6 + [False] * 3, [True] * 9]).view(2, 1, 1, 9)
    elif masking == "random+causal":
        mask = torch.rand(2, 4, 7, 9, generator=torch.Generator().manual_seed(2)) > 0.4
        mask[0, 1, 3] = False  # a query with no key at all
    ours_alpha, dense_alpha = alpha_leaf(alpha), alpha_leaf(alpha)
    common = {"normalizer": normalizer, "mask": mask, "causal": causal}
    ours = blockwise_attention(q, k, v, alpha=ours_alpha, block_size=block_size, **common)
    dense = attend(q, k, v, alpha=dense_alpha, **common)
    assert ours.shape == dense.shape == (2, 4, 7, 3)
    assert max_diff([ours], [dense]) <= TOL
    assert max_diff(grads(ours, [q, k, v, ours_alpha]), grads(dense, [q, k, v, dense_alpha])) <= TOL


def test_more_queries_than_keys_causal_and_unbatched():
    # Bottom-right causal: the first n_q - n_k queries see no key and give zeros.
    q, k, v = qkv(n_q=6, n_k=4, grad=True)
    ours = blockwise_attention(q, k, v, normalizer="entmax15", causal=True, block_size=4)
    dense = attend(q, k, v, normalizer="entmax15", causal=True)
    assert max_diff([ours], [dense]) <= TOL
    assert (ours[:2] == 0).all()
    assert max_diff(grads(ours, [q, k, v]), grads(dense, [q, k, v])) <= TOL


@pytest.mark.parametrize("normalizer", ["sparsemax", "entmax15", "entmax"])
def test_causal_tiles_before_every_key_and_with_a_padding_mask(normalizer):
    # n_q = 7 > n_k = 3: the tiles of rows 0-1 and 2-3 see no key at all (zeros, no
    # gradient); later tiles see a growing prefix of the keys, the padding mask cut to it.
    q, k, v = qkv(2, 2, n_q=7, n_k=3, grad=True)
    alpha = None
    if normalizer == "entmax":
        alpha = torch.tensor([1.3, 1.7], dtype=torch.float64).view(1, 2, 1, 1).requires_grad_()
    mask = torch.tensor([[True, True, True], [False, True, True]]).view(2, 1, 1, 3)
    common = {"normalizer": normalizer, "alpha": alpha, "mask": mask, "causal": True}
    ours = blockwise_attention(q, k, v, block_size=2, **common)
    dense = attend(q, k, v, **common)
    assert max_diff([ours], [dense]) <= TOL
    assert (ours[:, :, :4] == 0).all()
    inputs = [q, k, v] + ([alpha] if alpha is not None else [])
    assert max_diff(grads(ours, inputs), grads(dense, inputs)) <= TOL


def test_causal_tiles_score_only_the_keys_up_to_their_last_query(monkeypatch):
    from attnzoo.attention import blockwise

    widths = []
    tile_scores = blockwise._tile_scores

    def recording(out, q, k, scale, allowed):
        widths.append(k.shape[1])
        return tile_scores(out, q, k, scale, allowed)

    monkeypatch.setattr(blockwise, "_tile_scores", recording)
    q, k, v = qkv(2, n_q=10, n_k=12, grad=True)
    out = blockwise_attention(q, k, v, normalizer="entmax15", causal=True, block_size=4)
    assert widths == [6, 10, 12]  # keys 0 .. stop + n_k - n_q - 1 of each tile
    out.sum().backward()
    assert widths == [6, 10, 12] * 2  # the backward recomputes the same tiles


@pytest.mark.parametrize("normalizer", ["sparsemax", "entmax15"])
def test_weights_match_the_entmax_package(normalizer):
    q, k, v = qkv(3, n_q=6, n_k=11, d=4)
    scores = q @ k.transpose(-2, -1) * 4**-0.5
    weights = getattr(entmax_ref, normalizer)(scores, dim=-1)
    out = blockwise_attention(q, k, v, normalizer=normalizer, block_size=4)
    assert max_diff([out], [weights @ v]) <= TOL


def test_gradcheck_including_per_head_alpha():
    q, k, v = qkv(1, 2, n_q=3, n_k=4, d=2, d_v=2, grad=True)
    alpha = torch.tensor([1.3, 1.8], dtype=torch.float64).view(1, 2, 1, 1).requires_grad_()
    mask = torch.tensor([True, True, False, True]).view(1, 1, 1, 4)

    def fn(q, k, v, a):
        return blockwise_attention(q, k, v, normalizer="entmax", alpha=a, mask=mask, block_size=2)

    assert torch.autograd.gradcheck(fn, (q, k, v, alpha))


@pytest.mark.parametrize("normalizer", ["sparsemax", "entmax15"])
def test_gradcheck_fixed_alpha_causal(normalizer):
    q, k, v = qkv(2, n_q=4, n_k=4, d=3, d_v=2, grad=True)

    def fn(q, k, v):
        return blockwise_attention(q, k, v, normalizer=normalizer, causal=True, block_size=3)

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_fully_masked_rows_give_zeros_and_zero_gradient():
    q, k, v = qkv(2, n_q=3, n_k=5, grad=True)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[1, 2] = False
    out = blockwise_attention(q, k, v, normalizer="sparsemax", mask=mask)
    assert torch.isfinite(out).all() and (out[1, 2] == 0).all()
    (grad_q,) = torch.autograd.grad(out.sum(), q)
    assert torch.isfinite(grad_q).all() and (grad_q[1, 2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_lower_precision_is_computed_in_float32(dtype):
    q, k, v = qkv(2, n_q=5, n_k=8, dtype=torch.float32)
    expected = attend(q, k, v, normalizer="entmax15")
    out = blockwise_attention(*(x.to(dtype) for x in (q, k, v)), normalizer="entmax15")
    assert out.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert (out.float() - expected).abs().max() <= tol * (1 + expected.abs().max())


def test_no_tensor_of_the_full_score_size_is_allocated():
    # The (n_q, n_k) float32 scores would be 256 KiB; a tile of 8 rows is 32 KiB, and the
    # largest other tensors (k, v and their gradients) are 16 KiB.
    q, k, v = qkv(1, n_q=64, n_k=1024, d=4, d_v=4, dtype=torch.float32, grad=True)
    with torch.profiler.profile(profile_memory=True) as prof:
        out = blockwise_attention(q, k, v, normalizer="entmax15", block_size=8)
        torch.autograd.grad(out.sum(), (q, k, v))
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 8 * 1024 * 4 <= largest <= 2 * 8 * 1024 * 4, largest


def test_default_tile_covers_all_heads_within_the_entry_budget():
    q, k, v = qkv(1, 2, n_q=3, n_k=5)
    # Tiny inputs: one tile holds every query; the budget caps it for long rows.
    assert block_entries(torch.device("cpu")) // (2 * 5) >= 3
    out = blockwise_attention(q, k, v, normalizer="sparsemax")
    assert torch.allclose(out, blockwise_attention(q, k, v, normalizer="sparsemax", block_size=1))


@pytest.mark.parametrize(
    ("overrides", "error", "name"),
    [
        ({"normalizer": "softmax"}, ValueError, "normalizer"),
        ({"normalizer": "sparsemax", "alpha": 1.5}, ValueError, "alpha"),
        ({"normalizer": "entmax", "alpha": 1.0}, ValueError, "alpha"),
        ({"normalizer": "entmax", "alpha": torch.full((1, 1, 1, 4), 1.5)}, ValueError, "alpha"),
        ({"mask": torch.ones(2, 3, 4)}, TypeError, "mask"),
        ({"mask": torch.ones(4, 4, dtype=torch.bool)}, ValueError, "mask"),
        ({"causal": 1}, TypeError, "causal"),
        ({"scale": 0.0}, ValueError, "scale"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"block_size": 2.0}, TypeError, "block_size"),
    ],
)
def test_bad_arguments_are_named(overrides, error, name):
    q, k, v = qkv(2, n_q=3, n_k=4)
    kwargs = {"normalizer": "entmax15", **overrides}
    with pytest.raises(error, match=f"`{name}`"):
        blockwise_attention(q, k, v, **kwargs)


def test_bad_shapes_are_named():
    q, k, v = qkv(2, n_q=3, n_k=4)
    with pytest.raises(ValueError, match="`k`"):
        blockwise_attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match="`v`"):
        blockwise_attention(q, k, v[:, :3])
    with pytest.raises(TypeError, match="`k`"):
        blockwise_attention(q, k.float(), v)
    with pytest.raises(TypeError, match="`q`"):
        blockwise_attention(q.long(), k.long(), v.long())


def test_empty_inputs():
    q, k, v = qkv(0, n_q=3, n_k=4)
    assert blockwise_attention(q, k, v).shape == (0, 3, 3)
    q, k, v = qkv(2, n_q=0, n_k=4)
    assert blockwise_attention(q, k, v).shape == (2, 0, 3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    q, k, v = qkv(2, 4, n_q=33, n_k=40, dtype=torch.float32, grad=True)
    alpha = torch.tensor([1.2, 1.5, 1.8, 2.0]).view(1, 4, 1, 1)
    cpu = blockwise_attention(q, k, v, normalizer="entmax", alpha=alpha, causal=True)
    gpu = blockwise_attention(
        *(x.cuda() for x in (q, k, v)), normalizer="entmax", alpha=alpha.cuda(), causal=True
    )
    assert (gpu.cpu() - cpu).abs().max() <= 1e-5


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_learned_alpha_dispatch_and_gradient(dtype, monkeypatch):
    # "auto": a learnable alpha goes to the Triton kernels in half precision only.
    pytest.importorskip("triton")
    from attnzoo.attention import triton_entmax

    calls = []
    original = triton_entmax.blockwise_call
    monkeypatch.setattr(
        triton_entmax, "blockwise_call", lambda *a, **o: calls.append(1) or original(*a, **o)
    )
    q, k, v = qkv(2, 4, n_q=65, n_k=80, d=64, d_v=64, dtype=torch.float32)
    alpha = torch.tensor([1.2, 1.5, 1.8, 2.0], requires_grad=True)
    cpu = blockwise_attention(q, k, v, normalizer="entmax", alpha=alpha.view(1, 4, 1, 1))
    (expected,) = torch.autograd.grad(cpu.square().sum(), alpha)
    alpha_gpu = alpha.detach().cuda().requires_grad_()
    gpu = blockwise_attention(
        *(x.cuda().to(dtype) for x in (q, k, v)),
        normalizer="entmax",
        alpha=alpha_gpu.view(1, 4, 1, 1),
    )
    (got,) = torch.autograd.grad(gpu.float().square().sum(), alpha_gpu)
    assert len(calls) == (1 if dtype == torch.float16 else 0)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (got.cpu() - expected).abs().max() <= tol * expected.abs().max()


# The 1.5-entmax threshold search of the tiles: exact from any first trial point (each
# tile starts from the previous tile's thresholds), and with the rows that are still open
# after most have settled finished on their own.


def shifted_rows(rows, n, seed, spread=1.0):
    """Scores times 1/2 with row maximum 0: what the 1.5-entmax search runs on."""
    x = spread * torch.randn(rows, n, generator=torch.Generator().manual_seed(seed))
    z = x.double()
    return (z - z.amax(dim=-1, keepdim=True)) / 2


def solve_entmax15(z, guess=None):
    p, work, square = z.clone(), torch.empty_like(z), torch.empty_like(z)
    _entmax15_newton(p, work, square, guess)
    return p


@pytest.mark.parametrize("start", ["cold", "exact", "below", "above", "bracket ends", "random"])
def test_entmax15_search_is_exact_from_any_start(start, monkeypatch):
    from attnzoo.attention import entmax as entmax_module

    def no_fallback(z):
        raise AssertionError("the search fell back to sorting")

    monkeypatch.setattr(entmax_module, "_entmax15_threshold", no_fallback)
    z = torch.cat([shifted_rows(40, 37, seed=3), shifted_rows(20, 37, seed=4, spread=0.05)])
    z[5, 10:] = NEG_INF  # masked keys
    z[5] -= z[5].max()
    z[6, 0], z[6, 1:] = 0.0, -3.0  # the top entry alone
    expected = entmax_ref.entmax15(2 * z.clamp(min=-1e4), dim=-1)
    tau = -expected.amax(dim=-1, keepdim=True).sqrt()
    n = z.shape[-1]
    guesses = {
        "cold": None,
        "exact": tau,
        "below": tau - 0.3,
        "above": tau + 0.3,
        "bracket ends": torch.tensor([-1.0, -(n**-0.5), -5.0, 5.0]).repeat(15).view(-1, 1),
        "random": torch.empty_like(tau).uniform_(-2, 1, generator=torch.Generator().manual_seed(5)),
    }
    p = solve_entmax15(z, guesses[start])
    assert (p - expected).abs().max() <= 1e-12
    assert (p.sum(dim=-1) - 1).abs().max() <= 1e-12
    assert (p[5, 10:] == 0).all()


def test_entmax15_rows_still_open_are_finished_apart(monkeypatch):
    from attnzoo.attention import entmax as entmax_module

    # 60 rows whose top entry alone weighs 1 (settled by the first pass at -1) and 4
    # Gaussian rows that need several: the 4 are copied out and finished on their own.
    easy = torch.full((60, 50), -3.0, dtype=torch.float64)
    easy[:, 0] = 0.0
    hard = shifted_rows(4, 50, seed=6)
    z = torch.cat([easy[:30], hard, easy[30:]])
    sizes = []
    iterate = entmax_module._entmax15_iterate

    def spy(block, *args):
        sizes.append(block.shape[0])
        return iterate(block, *args)

    monkeypatch.setattr(entmax_module, "_entmax15_iterate", spy)
    p = solve_entmax15(z)
    assert sizes == [64, 4]
    assert (p - entmax_ref.entmax15(2 * z, dim=-1)).abs().max() <= 1e-12


@pytest.mark.parametrize(("normalizer", "alpha"), [("entmax15", None), ("entmax", "per head")])
def test_many_float32_tiles_match_the_entmax_package(normalizer, alpha):
    # Many tiles (each starting from the previous tile's thresholds) at attention-like
    # scale, values and gradients against the package's map on the dense scores.
    q, k, v = qkv(2, 3, n_q=96, n_k=130, d=16, d_v=8, dtype=torch.float32, grad=True)
    q, k = (x.detach().mul(0.5).requires_grad_() for x in (q, k))
    a = None
    if alpha == "per head":
        a = torch.tensor([1.2, 1.5, 1.9]).view(1, 3, 1, 1).requires_grad_()
    out = blockwise_attention(q, k, v, normalizer=normalizer, alpha=a, block_size=7)
    scores = q @ k.transpose(-2, -1) * 16**-0.5
    if a is None:
        weights = entmax_ref.entmax15(scores, dim=-1)
    else:
        weights = entmax_ref.entmax_bisect(scores, alpha=a.expand(2, 3, 96, 1), dim=-1)
    expected = weights @ v
    assert (out - expected).abs().max() <= 1e-5
    inputs = [q, k, v] + ([] if a is None else [a])
    for ours, ref in zip(grads(out, inputs), grads(expected, inputs), strict=True):
        assert (ours - ref).abs().max() <= 1e-4 * (1 + ref.abs().max())


def test_backward_into_leaf_gradients():
    # The key and value gradients come back as transposed views; accumulating them into
    # .grad gives the same numbers as the dense path.
    q, k, v = qkv(2, 2, n_q=5, n_k=9, grad=True)
    upstream = torch.randn(2, 2, 5, 3, generator=torch.Generator().manual_seed(7), dtype=q.dtype)
    blockwise_attention(q, k, v, normalizer="entmax15", block_size=2).backward(upstream)
    ours = [x.grad.clone() for x in (q, k, v)]
    dense = attend(q, k, v, normalizer="entmax15")
    assert max_diff(ours, torch.autograd.grad(dense, [q, k, v], upstream)) <= TOL


def test_a_mask_over_the_keys_alone_broadcasts():
    q, k, v = qkv(2, 3, n_q=5, n_k=6)
    keys = torch.tensor([True, False, True, True, False, True])
    common = {"normalizer": "entmax15", "causal": True, "block_size": 2}
    ours = blockwise_attention(q, k, v, mask=keys, **common)
    assert torch.equal(ours, blockwise_attention(q, k, v, mask=keys.view(1, 1, 1, 6), **common))
