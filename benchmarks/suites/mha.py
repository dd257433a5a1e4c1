"""``mha``: attnzoo ``MultiHeadAttention`` against ``torch.nn.MultiheadAttention``."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from attnzoo.attention.multi_head import MultiHeadAttention

from ..harness import Case, Context, Setup, Suite
from .attend import padding_mask

VARIANTS = ("self-attention", "key-padding mask", "causal")


def copy_weights(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    """Give ``theirs`` exactly ``ours``' projections, so both compute the same function.

    PyTorch packs the query, key and value projections into one ``in_proj`` matrix
    (rows in that order); attnzoo keeps them apart under BERT's names.
    """
    with torch.no_grad():
        theirs.in_proj_weight.copy_(
            torch.cat([ours.query.weight, ours.key.weight, ours.value.weight])
        )
        theirs.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias, ours.value.bias]))
        theirs.out_proj.weight.copy_(ours.out.weight)
        theirs.out_proj.bias.copy_(ours.out.bias)


def _build(ctx: Context, variant: str, batch: int, dim: int, heads: int, n: int) -> Setup:
    causal = variant == "causal"
    ours = ctx.module(lambda: MultiHeadAttention(dim, heads, causal=causal))
    theirs = ctx.module(lambda: nn.MultiheadAttention(dim, heads, batch_first=True))
    copy_weights(ours, theirs)
    x = ctx.randn(batch, n, dim, grad=True)

    mask = None  # attnzoo: True = real token
    key_padding_mask = None  # PyTorch: True = padding, the opposite convention
    attn_mask = None
    if variant == "key-padding mask":
        mask = padding_mask(ctx, batch, n)[:, 0, 0, :]
        key_padding_mask = ~mask
    if causal:
        # nn.MultiheadAttention needs the mask itself (True = masked out); is_causal is
        # only a hint that lets it pick a causal kernel.
        attn_mask = torch.ones(n, n, dtype=torch.bool, device=ctx.device).triu(1)

    def run_ours() -> torch.Tensor:
        return ours(x, mask=mask)

    def run_theirs() -> torch.Tensor:
        out, _ = theirs(
            x,
            x,
            x,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            is_causal=causal,
            need_weights=False,
        )
        return out

    return Setup(
        ours=run_ours,
        baseline=run_theirs,
        inputs=(x,),
        ours_params=tuple(ours.parameters()),
        baseline_params=tuple(theirs.parameters()),
    )


def cases(ctx: Context) -> list[Case]:
    batch, dim, heads = ctx.pick(
        tiny=(1, 16, 2),
        quick=(2, 256, 4),
        full=(2, 256, 4),
        cuda_quick=(8, 1024, 16),
        cuda_full=(8, 1024, 16),
    )
    lengths = ctx.pick(
        tiny=[16],
        quick=[512],
        full=[128, 256, 512, 1024],
        cuda_quick=[512, 2048],
        cuda_full=[256, 512, 1024, 2048, 4096],
    )
    params = {"batch": batch, "dim": dim, "heads": heads}
    return [
        Case(
            suite="mha",
            name=variant,
            n=n,
            params=params,
            build=partial(_build, ctx, variant, batch, dim, heads, n),
        )
        for variant in VARIANTS
        for n in lengths
    ]


SUITE = Suite(
    name="mha",
    title="attnzoo `MultiHeadAttention` vs `torch.nn.MultiheadAttention(batch_first=True)`",
    note=(
        "Self-attention on `(batch, n, dim)` with the same weights copied into both "
        "modules (eval mode, no dropout). `fwd` runs under `no_grad`, where "
        "`nn.MultiheadAttention` may take its fused native fast path; `fwd+bwd` also "
        "computes the parameter gradients. The diff of `fwd+bwd` rows is that of the "
        "gradient with respect to the input `x`."
    ),
    cases=cases,
)
