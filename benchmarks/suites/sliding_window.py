"""``sliding_window``: banded attention against dense SDPA with the same band as a mask.

Both compute the same numbers; the dense side builds ``n x n`` scores (``O(n^2)`` time
and memory), attnzoo's block-local kernel only ``O(n * w)``. With a fixed window the
ratio therefore falls as ``n`` grows.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
import torch.nn.functional as F

from attnzoo.attention.sliding_window import sliding_window_attention

from ..harness import Case, Context, Setup, Suite


def band_mask(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """``(n, n)`` boolean, True where ``i - before <= j <= i + after``."""
    offset = torch.arange(n, device=device)[None, :] - torch.arange(n, device=device)[:, None]
    return (offset >= -before) & (offset <= after)


def _build(ctx: Context, batch: int, heads: int, n: int, d: int, before: int, after: int) -> Setup:
    q, k, v = (ctx.randn(batch, heads, n, d, grad=True) for _ in range(3))
    # Built once, outside the timed region: the dense baseline is not charged for it.
    mask = band_mask(n, before, after, ctx.device)

    def ours() -> torch.Tensor:
        # Without return_weights, the kernel returns the output tensor alone.
        out = sliding_window_attention(q, k, v, before=before, after=after)
        return cast(torch.Tensor, out)

    def dense() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return Setup(ours=ours, baseline=dense, inputs=(q, k, v))


def cases(ctx: Context) -> list[Case]:
    batch, heads, d, before, after = ctx.pick(
        tiny=(1, 2, 8, 3, 3),
        quick=(1, 4, 32, 32, 32),
        full=(1, 4, 32, 32, 32),
        cuda_quick=(2, 8, 64, 128, 128),
        cuda_full=(2, 8, 64, 128, 128),
    )
    lengths = ctx.pick(
        tiny=[32],
        quick=[256, 1024],
        full=[256, 512, 1024, 2048],
        cuda_quick=[1024, 4096],
        cuda_full=[1024, 2048, 4096, 8192, 16384],
    )
    name = f"window {before}+1+{after}"
    params = {"batch": batch, "heads": heads, "head_dim": d, "before": before, "after": after}
    return [
        Case(
            suite="sliding_window",
            name=name,
            n=n,
            params=params,
            build=partial(_build, ctx, batch, heads, n, d, before, after),
        )
        for n in lengths
    ]


SUITE = Suite(
    name="sliding_window",
    title="attnzoo `sliding_window_attention` vs dense SDPA with a boolean band mask",
    note=(
        "Same numbers both sides: query i sees keys i-before..i+after. The dense baseline "
        "is `scaled_dot_product_attention` with the `(n, n)` band mask (built outside the "
        "timed region), so its time and memory grow as n^2 while the window is fixed; "
        "attnzoo's block-local kernel grows as n*w. On CUDA the peak-memory columns show "
        "the same scaling; a baseline that runs out of memory is reported as such."
    ),
    cases=cases,
)
