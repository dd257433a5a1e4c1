"""Normalisers: softmax, sparsemax, 1.5-entmax, alpha-entmax, hardmax, Gumbel, the registry.

Parity is against the ``entmax`` package (forward values and gradients, float64, 1e-6);
properties run with hypothesis; every custom autograd Function is gradchecked in float64.
"""

from __future__ import annotations

import functools

import entmax as ref
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from attnzoo.attention import normalizers
from attnzoo.attention.entmax import (
    MIN_ALPHA,
    AlphaEntmax,
    Entmax15,
    EntmaxAlpha,
    EntmaxBisect,
    Sparsemax,
    alpha_entmax,
    entmax15,
    entmax_bisect,
    sparsemax,
)
from attnzoo.attention.normalizers import (
    available_normalizers,
    get_normalizer,
    gumbel_softmax,
    hardmax,
    masked_normalize,
    register_normalizer,
    softmax,
)

NEG_INF = float("-inf")
PARITY_TOL = 1e-6  # float64, forward values and gradients


def _seeded_gumbel(**options):
    """A Gumbel normaliser with fixed noise, so a test is reproducible."""

    def gumbel(x, dim=-1):
        generator = torch.Generator(device=x.device).manual_seed(0)
        return gumbel_softmax(x, dim=dim, generator=generator, **options)

    return gumbel


# Every normaliser under its test id; the sparse ones (exact zeros) flagged with their alpha.
NORMALIZERS = {
    "softmax": softmax,
    "sparsemax": sparsemax,
    "entmax15": entmax15,
    "entmax-1.25": functools.partial(alpha_entmax, alpha=1.25),
    "entmax-1.5": functools.partial(alpha_entmax, alpha=1.5),
    "entmax-2": functools.partial(alpha_entmax, alpha=2.0),
    "bisect-1.5": functools.partial(entmax_bisect, alpha=1.5),
    "hardmax": hardmax,
    "hardmax-st": functools.partial(hardmax, straight_through=True),
    "gumbel": _seeded_gumbel(),
    "gumbel-hard": _seeded_gumbel(hard=True, tau=0.5),
}
SPARSE_ALPHA = {
    "sparsemax": 2.0,
    "entmax15": 1.5,
    "entmax-1.25": 1.25,
    "entmax-1.5": 1.5,
    "entmax-2": 2.0,
    "bisect-1.5": 1.5,
}
DETERMINISTIC = [name for name in NORMALIZERS if not name.startswith("gumbel")]

# (ours, the entmax package's) along a dim, for the parity tests.
PAIRS = {
    "sparsemax": (sparsemax, ref.sparsemax),
    "entmax15": (entmax15, ref.entmax15),
    "bisect-1.1": (
        functools.partial(entmax_bisect, alpha=1.1),
        functools.partial(ref.entmax_bisect, alpha=1.1),
    ),
    "bisect-1.5": (
        functools.partial(entmax_bisect, alpha=1.5),
        functools.partial(ref.entmax_bisect, alpha=1.5),
    ),
    "bisect-1.8": (
        functools.partial(entmax_bisect, alpha=1.8),
        functools.partial(ref.entmax_bisect, alpha=1.8),
    ),
    "bisect-2": (
        functools.partial(entmax_bisect, alpha=2.0),
        functools.partial(ref.entmax_bisect, alpha=2.0),
    ),
    **{
        f"newton-{alpha}": (
            functools.partial(alpha_entmax, alpha=alpha),
            functools.partial(ref.entmax_bisect, alpha=alpha),
        )
        for alpha in (1.01, 1.1, 1.5, 1.8, 2.0, 2.5)
    },
}
SHAPES_DIMS = [
    ((3, 5, 7), -1),
    ((4, 6, 3), 0),
    ((2, 9, 5), 1),
    ((2, 3, 4, 5), 2),
    ((11,), 0),
    ((1, 1), -1),
]


def _max_diffs(pair, x: torch.Tensor, dim: int) -> tuple[float, float]:
    """Largest |ours - package| over the output and over the input gradient."""
    ours, theirs = pair
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    out_a, out_b = ours(a, dim=dim), theirs(b, dim=dim)
    upstream = torch.randn(
        out_a.shape,
        dtype=x.dtype,
        device=x.device,
        generator=torch.Generator(device=x.device).manual_seed(1),
    )
    out_a.backward(upstream)
    out_b.backward(upstream)
    return (out_a - out_b).abs().max().item(), (a.grad - b.grad).abs().max().item()


def _mixed_mask(shape, dim: int, device="cpu") -> torch.Tensor:
    """A random boolean mask with at least one True per slice along ``dim``."""
    keep = torch.rand(shape, generator=torch.Generator().manual_seed(3)) > 0.4
    first = torch.zeros(shape, dtype=torch.bool).index_fill(dim, torch.tensor([0]), True)
    return (keep | first).to(device)


def _check_parity_suite(device: str) -> None:
    gen = torch.Generator().manual_seed(0)
    for name, pair in PAIRS.items():
        for shape, dim in SHAPES_DIMS:
            x = (3 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(device)
            value, grad = _max_diffs(pair, x, dim)
            assert value <= PARITY_TOL and grad <= PARITY_TOL, (name, shape, dim, value, grad)
            masked = x.masked_fill(~_mixed_mask(shape, dim, device), NEG_INF)
            value, grad = _max_diffs(pair, masked, dim)
            assert value <= PARITY_TOL and grad <= PARITY_TOL, (name, shape, dim, value, grad)


def _check_per_head_alpha_parity(device: str, solver=entmax_bisect) -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 6, generator=gen, dtype=torch.float64).to(device)
    alpha = torch.tensor([1.2, 1.5, 1.9], dtype=torch.float64, device=device).view(1, 3, 1, 1)
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours_a, ref_a = alpha.clone().requires_grad_(), alpha.clone().requires_grad_()
    ours = solver(ours_x, ours_a)
    theirs = ref.entmax_bisect(ref_x, ref_a.expand(2, 3, 4, 1))
    upstream = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
    ours.backward(upstream)
    theirs.backward(upstream)
    assert (ours - theirs).abs().max() <= PARITY_TOL
    assert (ours_x.grad - ref_x.grad).abs().max() <= PARITY_TOL
    assert ours_a.grad.shape == alpha.shape
    assert (ours_a.grad - ref_a.grad).abs().max() <= PARITY_TOL


# ----------------------------------------------------------------------------------
# parity with the entmax package
# ----------------------------------------------------------------------------------


def test_parity_with_entmax_package_float64():
    _check_parity_suite("cpu")


@pytest.mark.parametrize("solver", [entmax_bisect, alpha_entmax], ids=["bisect", "newton"])
def test_per_head_alpha_parity_including_alpha_gradient(solver):
    _check_per_head_alpha_parity("cpu", solver)


@pytest.mark.parametrize("solver", [entmax_bisect, alpha_entmax], ids=["bisect", "newton"])
def test_general_alpha_matches_the_exact_sparsemax_and_entmax15(solver):
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert (solver(x, alpha=2.0) - sparsemax(x)).abs().max() <= PARITY_TOL
    assert (solver(x, alpha=1.5) - entmax15(x)).abs().max() <= PARITY_TOL


@pytest.mark.parametrize("solver", [entmax_bisect, alpha_entmax], ids=["bisect", "newton"])
def test_general_alpha_float32_close_to_float64(solver):
    x = 4 * torch.randn(5, 3, 9, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for alpha in (1.05, 1.5, 2.0):
        exact = solver(x, alpha=alpha)
        single = solver(x.float(), alpha=alpha)
        assert single.dtype == torch.float32
        assert (single.double() - exact).abs().max() <= 1e-5


def test_bisect_output_sums_to_one_exactly():
    x = torch.randn(6, 13, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    sums = entmax_bisect(x, alpha=1.3, n_iter=5).sum(-1)
    assert (sums - 1).abs().max() <= 1e-14


# ----------------------------------------------------------------------------------
# gradients: gradcheck in float64 of each custom Function
# ----------------------------------------------------------------------------------


def _scores(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(*shape, generator=gen, dtype=torch.float64)).requires_grad_()


@pytest.mark.parametrize("dim", [-1, 1])
def test_gradcheck_softmax_with_a_masked_entry_and_an_empty_slice(dim):
    x = _scores(2, 5, 4).detach()
    x[0, 1, 0] = float("-inf")  # one masked score
    x[1, :, 2] = float("-inf")  # along dim=1 an empty slice; along -1 masked entries
    x.requires_grad_()

    def finite_part(t):  # gradcheck perturbs inputs; keep the -inf entries fixed
        return softmax(torch.where(torch.isneginf(x), x.detach(), t), dim=dim)

    assert torch.autograd.gradcheck(finite_part, (x,))


@pytest.mark.parametrize("fn", [sparsemax, entmax15], ids=["sparsemax", "entmax15"])
@pytest.mark.parametrize("dim", [-1, 1])
def test_gradcheck_sort_based(fn, dim):
    assert torch.autograd.gradcheck(lambda x: fn(x, dim=dim), (_scores(2, 5, 4),))


@pytest.mark.parametrize("alpha", [1.2, 1.5, 2.5])
def test_gradcheck_bisect_float_alpha(alpha):
    assert torch.autograd.gradcheck(
        lambda x: entmax_bisect(x, alpha=alpha, dim=1), (_scores(2, 5, 4, seed=1),)
    )


def test_gradcheck_bisect_per_head_alpha_tensor():
    alpha = torch.tensor([1.25, 1.6, 1.95], dtype=torch.float64).view(1, 3, 1, 1)
    inputs = (_scores(2, 3, 2, 5, seed=2), alpha.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, a: entmax_bisect(x, alpha=a), inputs)


@pytest.mark.parametrize("alpha", [1.011, 1.2, 1.5, 2.0, 2.5])
def test_gradcheck_newton_float_alpha(alpha):
    assert torch.autograd.gradcheck(
        lambda x: alpha_entmax(x, alpha=alpha, dim=1), (_scores(2, 5, 4, seed=1),)
    )


def test_gradcheck_newton_alpha_near_one_and_two_with_ties_masks_and_empty_rows():
    # One alpha per head: just above the floor, mid-range, just below and at 2.
    alpha = torch.tensor([1.011, 1.5, 1.999, 2.0], dtype=torch.float64).view(1, 4, 1, 1)
    x = _scores(2, 4, 3, 6, seed=12).detach()
    x[0, :, 0, :3] = 0.7  # a three-way tie at the top
    x[1, :, 1, 4] = x[1, :, 1, 2]  # a tie lower down
    x[0, :, 1, 1::2] = NEG_INF  # masked entries
    x[1, :, 2] = NEG_INF  # fully masked rows
    x.requires_grad_()

    def finite_part(t, a):  # gradcheck perturbs inputs; keep the -inf entries fixed
        return alpha_entmax(torch.where(torch.isneginf(x), x.detach(), t), alpha=a)

    assert torch.autograd.gradcheck(finite_part, (x, alpha.requires_grad_()))


@pytest.mark.parametrize("alpha", [1.011, 1.3, 1.999])
def test_newton_alpha_gradient_matches_the_package(alpha):
    # The package differentiates its bisection in alpha with the same closed form; both
    # sides see the same scores, with ties and a masked (very negative) entry.
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(3, 4, 9, generator=gen, dtype=torch.float64)
    x[:, :, 3] = x[:, :, 5]
    x[:, 1, 0] = -1e6
    a = torch.full((3, 4, 1), alpha, dtype=torch.float64)
    ours_a, ref_a = a.clone().requires_grad_(), a.clone().requires_grad_()
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = alpha_entmax(ours_x, ours_a), ref.entmax_bisect(ref_x, ref_a)
    upstream = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    ours.backward(upstream)
    theirs.backward(upstream)
    assert (ours - theirs).abs().max() <= PARITY_TOL
    assert (ours_x.grad - ref_x.grad).abs().max() <= PARITY_TOL
    assert (ours_a.grad - ref_a.grad).abs().max() <= PARITY_TOL * max(1.0, ref_a.grad.abs().max())


def test_newton_settles_on_long_rows_of_every_scale():
    # scale 0.01 gives supports of thousands of entries, 30 a single one; float32 like the
    # attention path, checked against float64 bisection.
    gen = torch.Generator().manual_seed(14)
    for scale in (0.01, 1.0, 30.0):
        x = scale * torch.randn(8, 3000, generator=gen, dtype=torch.float64)
        for alpha in (1.01, 1.3, 1.7, 2.0, 3.0):
            exact = ref.entmax_bisect(x, alpha=alpha, n_iter=80)
            assert (alpha_entmax(x, alpha=alpha) - exact).abs().max() <= PARITY_TOL
            single = alpha_entmax(x.float(), alpha=alpha).double()
            assert (single - exact).abs().max() <= 2e-5, (scale, alpha)


def test_gradcheck_with_masked_entries_and_masked_rows():
    mask = torch.tensor([[True, False, True, True, False], [False] * 5, [True] * 5])
    alpha = torch.tensor([[1.3], [1.7], [1.5]], dtype=torch.float64).requires_grad_()

    def masked(fn):
        return lambda x, *rest: fn(x.masked_fill(~mask, NEG_INF), *rest)

    x = _scores(3, 5, seed=3)
    assert torch.autograd.gradcheck(masked(sparsemax), (x,))
    assert torch.autograd.gradcheck(masked(entmax15), (x,))
    assert torch.autograd.gradcheck(masked(lambda s, a: entmax_bisect(s, alpha=a)), (x, alpha))
    assert torch.autograd.gradcheck(masked(lambda s, a: alpha_entmax(s, alpha=a)), (x, alpha))


def test_learnable_alpha_gradient_reaches_the_parameter():
    module = EntmaxAlpha(3)
    scores = torch.randn(2, 3, 4, 5)
    target = torch.randn(2, 3, 4, 5)
    (alpha_entmax(scores, alpha=module()) * target).sum().backward()
    assert module.raw.grad is not None
    assert torch.isfinite(module.raw.grad).all() and module.raw.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------
# masking: -inf entries and all-masked slices
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_all_masked_slice_gives_zero_value_and_zero_grad(name):
    fn = NORMALIZERS[name]
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    x[0] = NEG_INF  # every slice of the first batch entry is fully masked
    x[1, 2] = NEG_INF
    x[2, :, :3] = NEG_INF
    x.requires_grad_()
    out = fn(x, dim=-1)
    empty = torch.isneginf(x.detach()).all(-1)
    assert torch.isfinite(out).all()
    assert (out[empty] == 0).all()
    assert (out[torch.isneginf(x.detach())] == 0).all()
    if out.requires_grad:  # plain hardmax has no gradient by design
        out.backward(torch.randn_like(out))
        assert torch.isfinite(x.grad).all()
        assert (x.grad[empty] == 0).all()


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_single_masked_entry_tensor_has_no_index_error(name):
    out = NORMALIZERS[name](torch.tensor([NEG_INF]), dim=0)
    assert out.tolist() == [0.0]


@pytest.mark.parametrize("name", list(SPARSE_ALPHA))
def test_mixed_rows_have_no_nan_from_inf_arithmetic(name):
    x = torch.tensor([[NEG_INF, 0.3, NEG_INF, 1.0], [NEG_INF, NEG_INF, NEG_INF, 2.0]])
    out = NORMALIZERS[name](x)
    assert torch.isfinite(out).all()
    assert out[1].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert torch.allclose(out.sum(-1), torch.ones(2))


@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_masked_normalize_through_the_registry(name):
    registry_name = {"hardmax-st": "hardmax", "gumbel-hard": "gumbel"}.get(name, name)
    options: dict = {}
    if name.startswith(("entmax-", "bisect-")):
        registry_name, options = "entmax", {"alpha": float(name.split("-")[1])}
        if name.startswith("bisect-"):
            options["n_iter"] = 50
    scores = torch.randn(2, 3, 5)
    mask = torch.tensor([True, False, True, True, False])
    out = masked_normalize(scores, mask, registry_name, **options)
    assert (out[..., ~mask] == 0).all()
    assert torch.allclose(out.sum(-1), torch.ones(2, 3), atol=1e-6)


def test_masked_normalize_rejects_bad_masks_and_scores():
    scores = torch.randn(2, 3, 5)
    with pytest.raises(TypeError, match="mask"):
        masked_normalize(scores, torch.ones(5))
    with pytest.raises(ValueError, match="mask"):
        masked_normalize(scores, torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="scores"):
        masked_normalize([[0.0, 1.0]], None)


# ----------------------------------------------------------------------------------
# low precision and large logits
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(NORMALIZERS))
def test_half_precision_large_logits_are_finite(name, dtype):
    gen = torch.Generator().manual_seed(8)
    x = (torch.rand(3, 2, 7, generator=gen) * 2e4 - 1e4).to(dtype)
    x[0, 0] = NEG_INF
    x[1, 1, :4] = NEG_INF
    out = NORMALIZERS[name](x)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    sums = out.float().sum(-1)
    assert torch.allclose(sums[0, 0], torch.zeros(()))
    live = ~torch.isneginf(x).all(-1)
    assert torch.allclose(sums[live], torch.ones_like(sums[live]), atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_half_precision_computes_in_float32(name, dtype):
    x = torch.randn(4, 9, generator=torch.Generator().manual_seed(9)).to(dtype)
    expected = NORMALIZERS[name](x.float()).to(dtype)
    assert torch.equal(NORMALIZERS[name](x), expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gradient_is_finite(dtype):
    x = (torch.rand(2, 3, 6) * 2e4 - 1e4).to(dtype).requires_grad_()
    alpha = EntmaxAlpha(3)()
    per_head = alpha.view(1, 3, 1)
    for out in (
        sparsemax(x),
        entmax15(x),
        entmax_bisect(x, alpha=per_head),
        alpha_entmax(x, alpha=per_head),
    ):
        (grad,) = torch.autograd.grad(out.float().square().sum(), x)
        assert grad.dtype == dtype and torch.isfinite(grad).all()


# ----------------------------------------------------------------------------------
# hypothesis properties
# ----------------------------------------------------------------------------------

FINITE = st.floats(-30, 30, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def masked_scores(draw):
    """``(rows, n)`` float64 scores with ``-inf`` where a drawn mask is False."""
    rows = draw(st.integers(1, 3))
    n = draw(st.integers(1, 7))
    values = draw(st.lists(FINITE, min_size=rows * n, max_size=rows * n))
    keep = draw(st.lists(st.booleans(), min_size=rows * n, max_size=rows * n))
    x = torch.tensor(values, dtype=torch.float64).view(rows, n)
    return x.masked_fill(~torch.tensor(keep).view(rows, n), NEG_INF)


@pytest.mark.parametrize("name", list(NORMALIZERS))
@settings(max_examples=50, deadline=None)
@given(x=masked_scores())
def test_property_simplex_and_mask(name, x):
    out = NORMALIZERS[name](x)
    masked = torch.isneginf(x)
    live = ~masked.all(-1)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert (out >= 0).all()
    assert (out[masked] == 0).all()
    assert (out[~live] == 0).all()
    assert torch.allclose(out.sum(-1)[live], torch.ones(int(live.sum()), dtype=x.dtype))


@pytest.mark.parametrize("name", DETERMINISTIC)
@settings(max_examples=50, deadline=None)
@given(x=masked_scores(), data=st.data())
def test_property_permutation_equivariance(name, x, data):
    if name.startswith("hardmax"):
        # Ties go to the first index, which a permutation moves; require a unique maximum.
        top = x.max(-1, keepdim=True).values
        assume(((x == top).sum(-1) <= 1).all())
    n = x.shape[-1]
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    out = NORMALIZERS[name](x)
    assert torch.allclose(NORMALIZERS[name](x[:, perm]), out[:, perm], atol=1e-12)


@pytest.mark.parametrize("name", list(SPARSE_ALPHA))
@settings(max_examples=50, deadline=None)
@given(x=masked_scores())
def test_property_far_below_max_is_exactly_zero(name, x):
    # The threshold never falls more than 1 below the scaled maximum, so a score with
    # (alpha - 1) * (max - score) > 1 gets exactly zero weight.
    alpha = SPARSE_ALPHA[name]
    out = NORMALIZERS[name](x)
    top = x.max(-1, keepdim=True).values
    far = (alpha - 1) * (top - x) > 1 + 1e-9
    assert (out[far] == 0).all()


@pytest.mark.parametrize("name", list(SPARSE_ALPHA))
@settings(max_examples=50, deadline=None)
@given(x=masked_scores(), winner=st.integers(0, 6))
def test_property_well_separated_scores_give_one_hot(name, x, winner):
    assume(not torch.isneginf(x).all(-1).any())
    n = x.shape[-1]
    winner %= n
    alpha = SPARSE_ALPHA[name]
    x = x.clone()
    x[:, winner] = x.max(-1).values + 1.01 / (alpha - 1)
    out = NORMALIZERS[name](x)
    expected = torch.zeros_like(out)
    expected[:, winner] = 1
    assert torch.equal(out, expected)


@settings(max_examples=50, deadline=None)
@given(x=masked_scores(), shift=FINITE)
def test_property_shift_invariance_of_sparse_maps(x, shift):
    for fn in (
        sparsemax,
        entmax15,
        functools.partial(entmax_bisect, alpha=1.3),
        functools.partial(alpha_entmax, alpha=1.3),
    ):
        assert torch.allclose(fn(x + shift), fn(x), atol=1e-9)


# ----------------------------------------------------------------------------------
# softmax, hardmax, Gumbel
# ----------------------------------------------------------------------------------


def test_softmax_matches_torch_on_finite_scores():
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    for dim in (0, 1, -1):
        assert torch.allclose(softmax(x, dim=dim), torch.softmax(x, dim=dim))


@pytest.mark.parametrize("dim", [0, -1])
def test_softmax_zeroes_empty_slices_keeps_nan_and_takes_an_empty_axis(dim):
    x = torch.randn(4, 5, dtype=torch.float64)
    x = x if dim == -1 else x.T.contiguous()
    view = x if dim == -1 else x.T  # slices as rows
    view[0] = float("-inf")  # empty
    view[1, 3] = float("nan")  # a NaN score: its slice stays NaN
    view[2, 1:] = float("-inf")  # one allowed entry: weight 1
    p = softmax(x, dim=dim)
    rows = p if dim == -1 else p.T
    assert (rows[0] == 0).all()
    assert rows[1].isnan().all()
    assert torch.equal(rows[2], torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))
    assert torch.allclose(rows[3], torch.softmax(view[3], dim=0))
    assert softmax(torch.randn(3, 0), dim=-1).shape == (3, 0)


def test_hardmax_is_one_hot_of_argmax_and_straight_through_has_softmax_grad():
    x = torch.tensor([[0.1, 2.0, -1.0], [3.0, 3.0, 0.0]], requires_grad=True)
    out = hardmax(x)
    assert out.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    assert not out.requires_grad
    upstream = torch.randn(2, 3)
    (grad_st,) = torch.autograd.grad(hardmax(x, straight_through=True), x, upstream)
    (grad_soft,) = torch.autograd.grad(torch.softmax(x, -1), x, upstream)
    assert torch.allclose(grad_st, grad_soft)


def test_gumbel_reproducible_hard_one_hot_and_never_samples_masked():
    x = torch.tensor([[0.0, NEG_INF, 1.0, NEG_INF]]).expand(200, 4)
    first = gumbel_softmax(x, generator=torch.Generator().manual_seed(1))
    again = gumbel_softmax(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    hard = gumbel_softmax(x, hard=True, generator=torch.Generator().manual_seed(2))
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert (hard.sum(-1) == 1).all() and (hard[:, [1, 3]] == 0).all()
    # Both finite entries get sampled; the more likely one more often.
    counts = hard.sum(0)
    assert 0 < counts[0] < counts[2]


def test_gumbel_rejects_non_positive_tau():
    with pytest.raises(ValueError, match="tau"):
        gumbel_softmax(torch.zeros(3), tau=0.0)
    with pytest.raises(ValueError, match="tau"):
        get_normalizer("gumbel", tau=-1.0)


# ----------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------


def test_registry_names_and_lookup():
    names = available_normalizers()
    assert names == sorted(names)
    assert {"softmax", "sparsemax", "entmax15", "entmax", "hardmax", "gumbel"} <= set(names)
    x = torch.randn(2, 6, dtype=torch.float64)
    assert torch.equal(get_normalizer("softmax")(x), softmax(x))
    assert torch.equal(get_normalizer("sparsemax")(x), sparsemax(x))
    assert torch.equal(get_normalizer("entmax15")(x, dim=0), entmax15(x, dim=0))
    assert torch.equal(get_normalizer("entmax", alpha=1.3)(x), alpha_entmax(x, alpha=1.3))
    bisect = get_normalizer("entmax", alpha=1.3, n_iter=20)(x)
    assert torch.equal(bisect, entmax_bisect(x, alpha=1.3, n_iter=20))
    assert torch.equal(get_normalizer("hardmax")(x), hardmax(x))
    assert torch.equal(get_normalizer("hard")(x), hardmax(x))  # the short name is an alias


def test_registry_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match="normalizer") as info:
        get_normalizer("sparsemaxx")
    for name in available_normalizers():
        assert repr(name) in str(info.value)


def test_registry_callable_passthrough_and_bad_arguments():
    def custom(x, dim=-1):
        return softmax(2 * x, dim=dim)

    assert get_normalizer(custom) is custom
    with pytest.raises(ValueError, match="callable"):
        get_normalizer(custom, alpha=1.5)
    with pytest.raises(TypeError, match="normalizer"):
        get_normalizer(3)
    with pytest.raises(ValueError, match="alpha"):
        get_normalizer("entmax", alpha=1.0)
    with pytest.raises(ValueError, match="n_iter"):
        get_normalizer("entmax", n_iter=0)


def test_register_normalizer_adds_one_entry_and_refuses_duplicates():
    with pytest.raises(ValueError, match="softmax"):
        register_normalizer("softmax")(lambda: softmax)
    name = "test-half-temperature-softmax"
    try:
        register_normalizer(name)(lambda: functools.partial(softmax))
        assert name in available_normalizers()
        assert torch.equal(get_normalizer(name)(torch.ones(3)), torch.full((3,), 1 / 3))
    finally:
        normalizers._REGISTRY.pop(name, None)


# ----------------------------------------------------------------------------------
# module forms, argument checks, learnable alpha
# ----------------------------------------------------------------------------------


def test_module_forms_match_functions():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    assert torch.equal(Sparsemax(dim=1)(x), sparsemax(x, dim=1))
    assert torch.equal(Entmax15(dim=0)(x), entmax15(x, dim=0))
    assert torch.equal(EntmaxBisect(1.7, dim=1, n_iter=30)(x), entmax_bisect(x, 1.7, 1, 30))
    assert torch.equal(AlphaEntmax(1.7, dim=1)(x), alpha_entmax(x, 1.7, 1))
    assert "alpha=1.7" in repr(EntmaxBisect(1.7)) and "alpha=1.7" in repr(AlphaEntmax(1.7))


def test_empty_axis_returns_empty():
    x = torch.randn(2, 0)
    for fn in (sparsemax, entmax15, entmax_bisect, alpha_entmax):
        assert fn(x).shape == (2, 0)


@pytest.mark.parametrize("fn", [sparsemax, entmax15, entmax_bisect, alpha_entmax])
def test_bad_scores_and_dim_name_the_argument(fn):
    with pytest.raises(TypeError, match="`x`"):
        fn([1.0, 2.0])
    with pytest.raises(TypeError, match="`x`"):
        fn(torch.arange(3))
    with pytest.raises(ValueError, match="`x`"):
        fn(torch.tensor(1.0))
    with pytest.raises(ValueError, match="`dim`"):
        fn(torch.randn(2, 3), dim=2)
    with pytest.raises(TypeError, match="`dim`"):
        fn(torch.randn(2, 3), dim=1.0)


@pytest.mark.parametrize(
    ("alpha", "error"),
    [
        (1.0, ValueError),
        (0.5, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (torch.tensor([1.5, 1.0, 1.5]).view(1, 3, 1, 1), ValueError),
        (torch.tensor([1.5, 2.0]).view(1, 2, 1, 1), ValueError),  # 2 heads for 3
        (torch.full((1, 1, 1, 5), 1.5), ValueError),  # varies along the normalised axis
        (torch.tensor([2, 2, 2]).view(1, 3, 1, 1), TypeError),
        ("1.5", TypeError),
        (True, TypeError),
    ],
)
def test_bad_alpha_names_the_argument(alpha, error):
    with pytest.raises(error, match="`alpha`"):
        entmax_bisect(torch.randn(2, 3, 4, 5), alpha=alpha)
    with pytest.raises(error, match="`alpha`"):
        alpha_entmax(torch.randn(2, 3, 4, 5), alpha=alpha)
    if not isinstance(alpha, torch.Tensor):
        with pytest.raises(error, match="`alpha`"):
            AlphaEntmax(alpha)


@pytest.mark.parametrize(
    ("n_iter", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_bad_n_iter_names_the_argument(n_iter, error):
    with pytest.raises(error, match="`n_iter`"):
        entmax_bisect(torch.randn(2, 5), n_iter=n_iter)
    with pytest.raises(error, match="`n_iter`"):
        EntmaxBisect(n_iter=n_iter)


def test_entmax_alpha_shape_init_and_per_head_use():
    module = EntmaxAlpha(4, init=1.3)
    alpha = module()
    assert alpha.shape == (1, 4, 1, 1)
    assert torch.allclose(alpha, torch.full((1, 4, 1, 1), 1.3))
    scores = torch.randn(2, 4, 3, 6, dtype=torch.float64)
    mixed = EntmaxAlpha(4)
    with torch.no_grad():
        mixed.raw.copy_(torch.tensor([-2.0, 0.0, 1.0, 3.0]))
    per_head = entmax_bisect(scores, alpha=mixed().double())
    for head, value in enumerate(mixed().flatten().tolist()):
        one = entmax_bisect(scores[:, head], alpha=value)
        assert (per_head[:, head] - one).abs().max() <= 1e-12


@pytest.mark.parametrize("init", [1.0, MIN_ALPHA, 2.0, 0.5, 3.0, float("nan")])
def test_entmax_alpha_rejects_init_outside_the_range(init):
    with pytest.raises(ValueError, match="`init`"):
        EntmaxAlpha(2, init=init)


def test_entmax_alpha_rejects_bad_heads_and_init_types():
    with pytest.raises(ValueError, match="`heads`"):
        EntmaxAlpha(0)
    with pytest.raises(TypeError, match="`heads`"):
        EntmaxAlpha(2.0)
    with pytest.raises(TypeError, match="`init`"):
        EntmaxAlpha(2, init="1.5")


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=1e6),
        lambda params: torch.optim.Adam(params, lr=1e3),
    ],
    ids=["sgd", "adam"],
)
def test_entmax_alpha_stays_above_one_under_a_huge_learning_rate(make_optimizer):
    module = EntmaxAlpha(3)
    optimizer = make_optimizer(module.parameters())
    scores = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(10))
    for _ in range(20):
        optimizer.zero_grad()
        p = alpha_entmax(scores, alpha=module())
        # Minimising alpha directly plus a preference for dense (high-entropy) weights
        # both push alpha down, as hard as the learning rate allows.
        entropy = -(p * p.clamp(min=1e-30).log()).sum()
        (1e3 * module().sum() - entropy).backward()
        optimizer.step()
        alpha = module()
        assert torch.isfinite(alpha).all() and (alpha > 1).all()
        assert torch.isfinite(alpha_entmax(scores, alpha=alpha)).all()
    assert (module() < 1.02).all()  # it did go down, to the floor
    with torch.no_grad():
        module.raw.fill_(NEG_INF)
    assert (module() == MIN_ALPHA).all()


# ----------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
class TestCuda:
    def test_parity_with_entmax_package(self):
        _check_parity_suite("cuda")

    @pytest.mark.parametrize("solver", [entmax_bisect, alpha_entmax], ids=["bisect", "newton"])
    def test_per_head_alpha_parity(self, solver):
        _check_per_head_alpha_parity("cuda", solver)

    @pytest.mark.parametrize("name", list(NORMALIZERS))
    def test_masked_rows_and_half_precision(self, name):
        x = (torch.rand(3, 2, 7, device="cuda") * 2e4 - 1e4).half()
        x[0, 0] = NEG_INF
        out = NORMALIZERS[name](x)
        assert out.device.type == "cuda" and out.dtype == torch.float16
        assert torch.isfinite(out).all() and (out[0, 0] == 0).all()

    def test_learnable_alpha_on_cuda(self):
        module = EntmaxAlpha(3).cuda()
        scores = torch.randn(2, 3, 4, 5, device="cuda")
        entmax_bisect(scores, alpha=module()).square().sum().backward()
        assert module.raw.grad.device.type == "cuda"
        assert torch.isfinite(module.raw.grad).all()


# ----------------------------------------------------------------------------------
# the sort-free thresholds: long rows, large supports, ties, single entries
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_sort_free_thresholds_match_the_package_on_long_rows(name, scale):
    # scale 0.01 gives supports of thousands of entries, 30 gives one or two.
    gen = torch.Generator().manual_seed(11)
    x = scale * torch.randn(6, 4096, generator=gen, dtype=torch.float64)
    value, grad = _max_diffs(PAIRS[name], x, -1)
    assert value <= PARITY_TOL and grad <= PARITY_TOL


@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_sort_free_thresholds_with_ties_and_single_entries(name):
    rows = torch.tensor(
        [[0.0, 0.0, 0.0, -5.0], [2.0, 0.0, 0.0, 0.0], [1.0, 1.0, -1.0, -1.0], [3.0, 3.0, 3.0, 3.0]],
        dtype=torch.float64,
    )
    for x in (rows, rows[:, :1], rows.repeat(1, 300)):
        value, grad = _max_diffs(PAIRS[name], x, -1)
        assert value <= PARITY_TOL and grad <= PARITY_TOL


def test_row_blocks_are_larger_on_an_accelerator():
    # On the CPU the scratch of a block stays in cache; elsewhere larger blocks mean fewer
    # kernel launches. The meta device stands in for an accelerator (no data is touched).
    from attnzoo.attention.entmax import DEVICE_BLOCK, _row_blocks, block_entries

    assert block_entries(torch.device("cpu")) < DEVICE_BLOCK
    assert block_entries(torch.device("meta")) == DEVICE_BLOCK
    rows = 3 * block_entries(torch.device("cpu")) // 1024
    cpu_blocks = list(_row_blocks(torch.empty(rows, 1024, device="cpu"), 1))
    meta_blocks = list(_row_blocks(torch.empty(rows, 1024, device="meta"), 1))
    assert (len(cpu_blocks), len(meta_blocks)) == (3, 1)
    assert meta_blocks[0][0] == slice(0, rows)
