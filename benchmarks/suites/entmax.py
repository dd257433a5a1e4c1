"""``entmax``: attnzoo's sparse normalisers and sparse attention against the references.

Two kinds of rows. Normaliser rows: score matrices flattened to ``(batch * heads * n, n)``,
one row per query normalised along the keys, against the ``entmax`` package (softmax,
attnzoo's masked-row-safe ``softmax`` against ``torch.softmax``, is the reference point a
sparse map is paid against). Attention rows: ``(1, 8, n, 64)`` self-attention with a
sparse normaliser, through the dense ``attend`` (which materialises the ``n x n`` scores)
and through ``blockwise_attention`` (query tiles, no ``n x n`` tensor), timed against
PyTorch's SDPA (softmax attention, the cost a sparse attention is compared with) and
checked against the ``entmax`` package's normaliser applied to the dense scores.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from functools import partial

import entmax as entmax_package
import torch
import torch.nn.functional as F

from attnzoo.attention import entmax as ours_entmax
from attnzoo.attention.blockwise import blockwise_attention
from attnzoo.attention.functional import attend
from attnzoo.attention.normalizers import softmax

from ..harness import Case, Context, Setup, Suite

Map = Callable[[torch.Tensor], torch.Tensor]


def _per_row_alpha(x: torch.Tensor) -> torch.Tensor:
    """One alpha per row, spread over [1.2, 1.8] (as learned per-head alphas are)."""
    return torch.linspace(1.2, 1.8, x.shape[0], device=x.device, dtype=x.dtype).unsqueeze(1)


# name -> (attnzoo map, reference map); every map normalises the last axis.
MAPS: dict[str, tuple[Map, Map]] = {
    "softmax": (softmax, lambda x: torch.softmax(x, dim=-1)),
    "sparsemax": (ours_entmax.sparsemax, lambda x: entmax_package.sparsemax(x, dim=-1)),
    "entmax15": (ours_entmax.entmax15, lambda x: entmax_package.entmax15(x, dim=-1)),
    "entmax_bisect α=1.5": (
        lambda x: ours_entmax.entmax_bisect(x, alpha=1.5, n_iter=50),
        lambda x: entmax_package.entmax_bisect(x, alpha=1.5, n_iter=50),
    ),
    "alpha_entmax α=1.3": (
        lambda x: ours_entmax.alpha_entmax(x, alpha=1.3),
        lambda x: entmax_package.entmax_bisect(x, alpha=1.3, n_iter=50),
    ),
    "alpha_entmax α per row": (
        lambda x: ours_entmax.alpha_entmax(x, alpha=_per_row_alpha(x)),
        lambda x: entmax_package.entmax_bisect(x, alpha=_per_row_alpha(x), n_iter=50),
    ),
}

# The entmax package's sort/cumsum thresholds and bisection are written for float32:
# in float16/bfloat16 they lose the sum-to-one constraint (and can overflow), so the
# reference would be wrong rather than slow. This suite therefore always runs in float32.
DTYPE = torch.float32

# Attention shape of the rows against SDPA: (batch, heads, head_dim).
ATTENTION_SHAPE = (1, 8, 64)
# attnzoo normaliser name -> the package map it is checked against (alpha given per head).
PACKAGE_MAPS: dict[str, Callable[..., torch.Tensor]] = {
    "sparsemax": lambda s, alpha: entmax_package.sparsemax(s, dim=-1),
    "entmax15": lambda s, alpha: entmax_package.entmax15(s, dim=-1),
    "entmax": lambda s, alpha: entmax_package.entmax_bisect(s, alpha=alpha, dim=-1, n_iter=50),
}
# Query rows per chunk of the check for long sequences: its dense scores are built a chunk
# at a time, so it fits where the full (n, n) scores would not.
REFERENCE_ROWS = 256


def _build(ctx: Context, name: str, rows: int, n: int) -> Setup:
    ours, reference = MAPS[name]
    # Scores of unit scale, like q.k / sqrt(d) for unit-variance q and k.
    x = ctx.randn(rows, n, dtype=DTYPE, grad=True)
    return Setup(ours=lambda: ours(x), baseline=lambda: reference(x), inputs=(x,))


def package_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    normalizer: str,
    alpha: torch.Tensor | None,
    causal: bool = False,
) -> torch.Tensor:
    """``package_map(q k^T / sqrt(d)) @ v`` with the ``entmax`` package's map; ``causal``
    gives the future keys a score of -1e6 (the package takes no -inf), which weighs 0."""
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    if causal:
        scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), -1e6)
    a = None if alpha is None else alpha.expand(*q.shape[:-1], 1)
    return PACKAGE_MAPS[normalizer](scores, a) @ v


def chunked_dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, normalizer: str, rows: int
) -> torch.Tensor:
    """The dense ``attend`` on ``rows`` queries at a time (no gradient).

    For sequences whose ``(n, n)`` scores would not fit: attnzoo's dense normaliser (checked
    against the package in the unit tests), fed a chunk of whole score rows at a time;
    sorting whole rows, the package itself would take minutes there.
    """
    with torch.no_grad():
        chunks = [
            attend(q[..., start : start + rows, :], k, v, normalizer=normalizer)
            for start in range(0, q.shape[-2], rows)
        ]
    return torch.cat(chunks, dim=-2)  # type: ignore[arg-type]


def _build_attention(
    ctx: Context,
    normalizer: str,
    path: str,
    n: int,
    check_chunk: int | None,
    causal: bool = False,
) -> Setup:
    batch, heads, d = ctx.pick(tiny=(1, 2, 8), quick=ATTENTION_SHAPE, full=ATTENTION_SHAPE)
    q, k, v = (ctx.randn(batch, heads, n, d, dtype=DTYPE, grad=True) for _ in range(3))
    alpha_module = None
    if normalizer == "entmax":
        # One learnable alpha per head, starting at 1.5 as in Correia et al. 2019.
        with ctx.device:
            alpha_module = ours_entmax.EntmaxAlpha(heads).to(DTYPE)

    def alpha() -> torch.Tensor | None:
        return None if alpha_module is None else alpha_module()

    block_size = 4 if ctx.profile == "tiny" else None  # several tiles even at toy size

    def ours() -> torch.Tensor:
        if path == "blockwise":
            return blockwise_attention(
                q, k, v, normalizer=normalizer, alpha=alpha(), causal=causal, block_size=block_size
            )
        out = attend(q, k, v, normalizer=normalizer, alpha=alpha(), causal=causal)
        assert isinstance(out, torch.Tensor)
        return out

    def reference() -> torch.Tensor:
        if check_chunk is not None:
            return chunked_dense_attention(q, k, v, normalizer, check_chunk)
        a = alpha()
        return package_attention(q, k, v, normalizer, None if a is None else a.detach(), causal)

    params = [] if alpha_module is None else list(alpha_module.parameters())
    return Setup(
        ours=ours,
        baseline=lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        inputs=(q, k, v),
        ours_params=params,
        reference=reference,
    )


def _attention_params(ctx: Context, n: int, path: str) -> dict[str, object]:
    """Sizes for the report, with the memory each path needs beyond its inputs (float32)."""
    batch, heads, d = ctx.pick(tiny=(1, 2, 8), quick=ATTENTION_SHAPE, full=ATTENTION_SHAPE)
    mib = 4 / 2**20
    dense = batch * heads * n * n * mib
    if path == "blockwise":
        rows = max(1, min(n, ours_entmax.block_entries(ctx.device) // (batch * heads * n)))
        # Four tile buffers in the backward pass (three forward), plus per-row thresholds.
        extra = 4 * batch * heads * rows * n * mib + batch * heads * n * mib
    else:
        extra = dense  # each of the scores, weights and their gradients is this size
    return {
        "batch": batch,
        "heads": heads,
        "head_dim": d,
        "path": path,
        "dense_scores_mib": round(dense, 2),
        "extra_tensor_mib": round(extra, 2),
    }


def _attention_case(
    ctx: Context, name: str, normalizer: str, path: str, n: int, causal: bool = False
) -> Case:
    """One attention row of :func:`_attention_cases`, timed forward and forward+backward."""
    return Case(
        suite="entmax",
        name=name,
        n=n,
        params=_attention_params(ctx, n, path),
        dtype=DTYPE,
        build=partial(_build_attention, ctx, normalizer, path, n, None, causal),
    )


def _attention_cases(ctx: Context) -> list[Case]:
    lengths = ctx.pick(
        tiny=[16],
        quick=[512],
        full=[256, 512, 1024, 2048],
        cuda_quick=[1024, 4096],
        cuda_full=[1024, 2048, 4096, 8192],
    )
    # Long sequences: blockwise only (the dense path would need n^2 floats per head), the
    # forward pass, checked against the package a chunk of queries at a time.
    long = ctx.pick(tiny=64, quick=2048, full=16384, cuda_quick=16384, cuda_full=32768)
    cases = []
    for normalizer in ("sparsemax", "entmax15", "entmax"):
        label = "entmax, learned α per head" if normalizer == "entmax" else normalizer
        for path in ("attend", "blockwise"):
            for n in lengths:
                name = f"attention {label} ({path}) vs SDPA"
                cases.append(_attention_case(ctx, name, normalizer, path, n))
    for normalizer in ("sparsemax", "entmax15"):
        for n in lengths:
            name = f"attention {normalizer}, causal (attend) vs causal SDPA"
            cases.append(_attention_case(ctx, name, normalizer, "attend", n, causal=True))
    cases.append(
        Case(
            suite="entmax",
            name="attention entmax15 (blockwise, long) vs SDPA",
            n=long,
            params=_attention_params(ctx, long, "blockwise"),
            backward=False,
            dtype=DTYPE,
            build=partial(_build_attention, ctx, "entmax15", "blockwise", long, REFERENCE_ROWS),
        )
    )
    return cases


# The Triton kernel's row: the H100 target is within 1.5x of SDPA's flash path at this size.
TRITON_SHAPE = (1, 8, 4096, 64)  # batch, heads, n, head_dim
TRITON_MISSING = importlib.util.find_spec("triton") is None


def triton_skip_reason(ctx: Context) -> str | None:
    """Why the Triton row does not run in this context, or None when it does."""
    if not ctx.is_cuda:
        return "needs a CUDA device"
    if TRITON_MISSING:
        return "needs the `triton` package"
    return None


def _build_triton(ctx: Context, n: int) -> Setup:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnzoo.attention.triton_entmax import triton_entmax_attention

    batch, heads, _, d = TRITON_SHAPE
    # Half precision, where SDPA has its flash kernel; checked against the torch tiles.
    q, k, v = (ctx.randn(batch, heads, n, d, dtype=torch.float16, grad=True) for _ in range(3))

    def flash() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v)

    return Setup(
        ours=lambda: triton_entmax_attention(q, k, v, alpha=1.5),
        baseline=flash,
        inputs=(q, k, v),
        reference=lambda: blockwise_attention(q, k, v, normalizer="entmax15", backend="torch"),
    )


def _triton_cases(ctx: Context) -> list[Case]:
    """The Triton entmax15 row, or none (see the suite's note) where it cannot run."""
    if triton_skip_reason(ctx) is not None:
        return []
    batch, heads, n, d = TRITON_SHAPE
    n = ctx.pick(tiny=256, quick=n, full=n)
    params = {"batch": batch, "heads": heads, "head_dim": d, "path": "triton"}
    build = partial(_build_triton, ctx, n)
    name = "attention entmax15 (triton) vs SDPA flash"
    return [Case(suite="entmax", name=name, n=n, params=params, dtype=torch.float16, build=build)]


def cases(ctx: Context) -> list[Case]:
    batch_heads = ctx.pick(tiny=2, quick=4, full=4, cuda_quick=32, cuda_full=32)
    lengths = ctx.pick(
        tiny=[16],
        quick=[256],
        full=[64, 128, 256, 512],
        cuda_quick=[256, 1024],
        cuda_full=[128, 256, 512, 1024, 2048],
    )
    cases = []
    for name in MAPS:
        for n in lengths:
            rows = batch_heads * n
            params = {"batch_x_heads": batch_heads, "rows": rows}
            cases.append(
                Case(
                    suite="entmax",
                    name=name,
                    n=n,
                    params=params,
                    dtype=DTYPE,
                    build=partial(_build, ctx, name, rows, n),
                )
            )
    return cases + _attention_cases(ctx) + _triton_cases(ctx)


SUITE = Suite(
    name="entmax",
    title=(
        "attnzoo `sparsemax` / `entmax15` / `alpha_entmax` / `entmax_bisect` vs the `entmax` "
        "package; sparse attention (`attend`, `blockwise_attention`) vs SDPA"
    ),
    note=(
        "Normaliser rows: score matrices of shape `(batch*heads*n, n)`, normalised along the "
        "last axis; `softmax` is attnzoo's all-masked-row-safe softmax against "
        "`torch.softmax`, the reference point for what a sparse map costs. Both bisections "
        "run 50 iterations; `alpha_entmax` (safeguarded Newton) is exact. Attention rows: "
        "`(1, 8, n, 64)` self-attention, ours with a sparse normaliser (the learned-alpha "
        "rows include the alpha gradient), the baseline softmax SDPA, so the ratio is what "
        "the sparse map costs over PyTorch's fused attention; *max abs diff* is against the "
        "`entmax` package's map on the dense scores (for the causal rows, with the future "
        "keys' scores set to -1e6, and the baseline SDPA with `is_causal`; for the long "
        "row, whose dense scores "
        "would not fit, against the dense `attend` on 256 queries at a time). "
        "`dense_scores_mib` in the JSON is "
        "what one `n x n` float32 tensor of the dense path takes, `extra_tensor_mib` what "
        "each path holds beyond its inputs (blockwise: its tile buffers). Always float32, "
        "whatever `--dtype`: the `entmax` package is not reliable in float16/bfloat16, so "
        "it would be no reference there. Except the Triton row (`attention entmax15 "
        "(triton) vs SDPA flash`, (1, 8, 4096, 64) in float16 against SDPA's flash kernel, "
        "checked against `blockwise_attention(backend='torch')`): it runs only on CUDA "
        "with `triton` installed and is skipped (not listed) elsewhere."
    ),
    cases=cases,
)
