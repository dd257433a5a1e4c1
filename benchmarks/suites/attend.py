"""``attend``: attnzoo's functional attention against PyTorch's SDPA.

Softmax without weights goes through SDPA inside ``attend``, so the ratio there is the
cost of attnzoo's argument checks and mask handling; ``return_weights=True`` builds the
``(batch, heads, n, n)`` weights, so its ratio shows what asking for them costs.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
import torch.nn.functional as F

from attnzoo.attention.functional import attend

from ..harness import Case, Context, Setup, Suite

VARIANTS = ("no mask", "key-padding mask", "causal", "return_weights")


def padding_mask(ctx: Context, batch: int, n: int) -> torch.Tensor:
    """``(batch, 1, 1, n)`` boolean, True = real token; each sequence keeps n/2..n tokens.

    At least half of every row is real, so no query is left without a key (SDPA would
    return NaN for such a row, attnzoo zeros: that difference is not what is measured).
    """
    lengths = torch.randint(n // 2 + 1, n + 1, (batch,), device=ctx.device)
    return (torch.arange(n, device=ctx.device) < lengths[:, None])[:, None, None, :]


def _build(ctx: Context, variant: str, batch: int, heads: int, n: int, d: int) -> Setup:
    q, k, v = (ctx.randn(batch, heads, n, d, grad=True) for _ in range(3))
    mask = padding_mask(ctx, batch, n) if variant == "key-padding mask" else None
    causal = variant == "causal"

    if variant == "return_weights":

        def ours() -> torch.Tensor:
            out, _weights = attend(q, k, v, return_weights=True)
            return out
    else:

        def ours() -> torch.Tensor:
            # Without return_weights, attend returns the output tensor alone.
            return cast(torch.Tensor, attend(q, k, v, mask=mask, causal=causal))

    def baseline() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

    return Setup(ours=ours, baseline=baseline, inputs=(q, k, v))


def cases(ctx: Context) -> list[Case]:
    batch, heads, d = ctx.pick(
        tiny=(1, 2, 8),
        quick=(2, 4, 64),
        full=(2, 4, 64),
        cuda_quick=(4, 8, 64),
        cuda_full=(4, 8, 64),
    )
    lengths = ctx.pick(
        tiny=[16],
        quick=[512],
        full=[128, 256, 512, 1024],
        cuda_quick=[512, 2048],
        cuda_full=[256, 512, 1024, 2048, 4096],
    )
    params = {"batch": batch, "heads": heads, "head_dim": d}
    return [
        Case(
            suite="attend",
            name=variant,
            n=n,
            params=params,
            build=partial(_build, ctx, variant, batch, heads, n, d),
        )
        for variant in VARIANTS
        for n in lengths
    ]


SUITE = Suite(
    name="attend",
    title="attnzoo `attend` vs `torch.nn.functional.scaled_dot_product_attention`",
    note=(
        "Softmax attention over `(batch, heads, n, head_dim)` self-attention inputs. "
        "`no mask`, `key-padding mask` (a `(batch, 1, 1, n)` boolean mask, half to all "
        "of each row real) and `causal` use attnzoo's SDPA fast path, so their ratio is "
        "the overhead of its checks and of the all-masked-row guard. `return_weights` "
        "materialises the `(batch, heads, n, n)` weights (as any non-softmax normaliser "
        "does) and is compared with the same SDPA call without a mask."
    ),
    cases=cases,
)
