"""``entmax``: attnzoo's sparse normalisers against the ``entmax`` package.

The inputs are attention score matrices flattened to ``(batch * heads * n, n)``: one row
per query, normalised along the keys. Softmax (attnzoo's masked-row-safe ``softmax``
against ``torch.softmax``) is there as the reference point the sparse maps are paid
against.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import entmax as entmax_package
import torch

from attnzoo.attention import entmax as ours_entmax
from attnzoo.attention.normalizers import softmax

from ..harness import Case, Context, Setup, Suite

Map = Callable[[torch.Tensor], torch.Tensor]

# name -> (attnzoo map, reference map); every map normalises the last axis.
MAPS: dict[str, tuple[Map, Map]] = {
    "softmax": (softmax, lambda x: torch.softmax(x, dim=-1)),
    "sparsemax": (ours_entmax.sparsemax, lambda x: entmax_package.sparsemax(x, dim=-1)),
    "entmax15": (ours_entmax.entmax15, lambda x: entmax_package.entmax15(x, dim=-1)),
    "entmax_bisect α=1.5": (
        lambda x: ours_entmax.entmax_bisect(x, alpha=1.5, n_iter=50),
        lambda x: entmax_package.entmax_bisect(x, alpha=1.5, n_iter=50),
    ),
}

# The entmax package's sort/cumsum thresholds and bisection are written for float32:
# in float16/bfloat16 they lose the sum-to-one constraint (and can overflow), so the
# reference would be wrong rather than slow. This suite therefore always runs in float32.
DTYPE = torch.float32


def _build(ctx: Context, name: str, rows: int, n: int) -> Setup:
    ours, reference = MAPS[name]
    # Scores of unit scale, like q.k / sqrt(d) for unit-variance q and k.
    x = ctx.randn(rows, n, dtype=DTYPE, grad=True)
    return Setup(ours=lambda: ours(x), baseline=lambda: reference(x), inputs=(x,))


def cases(ctx: Context) -> list[Case]:
    batch_heads = ctx.pick(tiny=2, quick=4, full=4, cuda_quick=32, cuda_full=32)
    lengths = ctx.pick(
        tiny=[16],
        quick=[128, 256],
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
    return cases


SUITE = Suite(
    name="entmax",
    title="attnzoo `sparsemax` / `entmax15` / `entmax_bisect` vs the `entmax` package",
    note=(
        "Score matrices of shape `(batch*heads*n, n)`, normalised along the last axis; "
        "`softmax` is attnzoo's all-masked-row-safe softmax against `torch.softmax`, the "
        "reference point for what a sparse map costs. Both bisections run 50 iterations. "
        "Always float32, whatever `--dtype`: the `entmax` package is not reliable in "
        "float16/bfloat16, so it would be no reference there."
    ),
    cases=cases,
)
