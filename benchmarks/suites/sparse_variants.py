"""``sparse_variants``: Sparse Transformer patterns, LSH attention and reversible stacks.

* ``strided`` / ``fixed`` vs masked SDPA: the same numbers both sides; the kernel scores
  only the ``O(sqrt(n))`` allowed keys of each query (a full pass, so block by block), SDPA
  scores all ``n`` under the ``(n, n)`` pattern mask.
* ``strided`` vs full causal SDPA: what the pattern saves against full attention (the
  numbers differ; the check is against the masked dense version).
* ``lsh`` vs full SDPA: shared-QK LSH attention (fixed rotations) against full attention
  on the same queries and normalised keys; checked against dense attention over the key
  set the hashing selects (built outside the timed region).
* ``reversible`` vs ``plain``: one encoder stack run with the reversible backward and with
  plain autograd; same numbers, the peak-memory columns (CUDA) show what recomputation
  saves, the time what it costs.
* ``universal`` vs a stack of the same depth: the Universal Transformer's one shared layer
  applied ``T`` times (ACT off) against a ``T``-layer encoder stack, a cost comparison of
  the recurrence with its coordinate embeddings; checked against a plain loop applying the
  shared layer.
"""

from __future__ import annotations

import math
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F

from attnzoo.attention.functional import attend
from attnzoo.attention.lsh import lsh_allowed_mask, lsh_attention, lsh_buckets, random_rotations
from attnzoo.attention.sparse_patterns import sparse_pattern_attention, sparse_pattern_mask
from attnzoo.transformers_zoo.reversible import ReversibleEncoder
from attnzoo.transformers_zoo.stacks import StackConfig, TransformerEncoder
from attnzoo.transformers_zoo.universal import UniversalTransformerEncoder

from ..harness import Case, Context, Setup, Suite

PATTERN_VARIANTS = ("strided vs masked SDPA", "fixed vs masked SDPA", "strided vs full SDPA")


def _pattern_build(ctx: Context, variant: str, batch: int, heads: int, n: int, d: int) -> Setup:
    q, k, v = (ctx.randn(batch, heads, n, d, grad=True) for _ in range(3))
    pattern = "fixed" if variant.startswith("fixed") else "strided"
    stride = max(1, round(math.sqrt(n)))
    summary = max(1, stride // 8)
    # Built once, outside the timed region: the dense side is not charged for it.
    mask = sparse_pattern_mask(n, pattern, stride, summary=summary).to(ctx.device)

    def ours() -> torch.Tensor:
        out = sparse_pattern_attention(q, k, v, pattern=pattern, stride=stride, summary=summary)
        return cast(torch.Tensor, out)

    def masked() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    if variant.endswith("full SDPA"):

        def full() -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        return Setup(ours=ours, baseline=full, inputs=(q, k, v), reference=masked)
    return Setup(ours=ours, baseline=masked, inputs=(q, k, v))


def _lsh_build(
    ctx: Context, batch: int, heads: int, n: int, d: int, chunk: int, n_hashes: int
) -> Setup:
    qk, v = (ctx.randn(batch, heads, n, d, grad=True) for _ in range(2))
    n_buckets = max(2, 2 * (n // chunk // 2))
    rotations = random_rotations(heads, d, n_buckets, n_hashes, device=ctx.device, dtype=ctx.dtype)
    with torch.no_grad():
        allowed = lsh_allowed_mask(lsh_buckets(qk, rotations), chunk)
    # A query that sees no other key attends to itself (the LSH rule).
    self_only = torch.eye(n, dtype=torch.bool, device=ctx.device)
    allowed = torch.where(allowed.any(-1, keepdim=True), allowed, self_only)

    def ours() -> torch.Tensor:
        return lsh_attention(
            qk, v, n_buckets=n_buckets, n_hashes=n_hashes, chunk_length=chunk, rotations=rotations
        )

    def full() -> torch.Tensor:
        return F.scaled_dot_product_attention(qk, F.normalize(qk, dim=-1), v)

    def reference() -> torch.Tensor:
        return cast(torch.Tensor, attend(qk, F.normalize(qk, dim=-1), v, mask=allowed))

    return Setup(ours=ours, baseline=full, inputs=(qk, v), reference=reference)


def _reversible_build(ctx: Context, batch: int, dim: int, heads: int, depth: int, n: int) -> Setup:
    encoder = ctx.module(lambda: ReversibleEncoder(dim, heads, depth))
    x = ctx.randn(batch, n, dim, grad=True)
    params = tuple(encoder.parameters())

    def run(reversible: bool) -> torch.Tensor:
        encoder.layers.reversible = reversible
        return cast(torch.Tensor, encoder(x))

    return Setup(
        ours=partial(run, True),
        baseline=partial(run, False),
        inputs=(x,),
        ours_params=params,
        baseline_params=params,
    )


def _universal_build(ctx: Context, batch: int, dim: int, heads: int, depth: int, n: int) -> Setup:
    universal = ctx.module(
        lambda: UniversalTransformerEncoder(dim, heads, depth, act=False, max_len=n, dropout=0.0)
    )
    stack = ctx.module(
        lambda: TransformerEncoder(StackConfig(dim=dim, heads=heads, depth=depth, dropout=0.0))
    )
    x = ctx.randn(batch, n, dim, grad=True)

    def reference() -> torch.Tensor:
        # The recurrence written out: h_t = layer(h_{t-1} + P[positions] + P[t]).
        state = x
        for t in range(1, depth + 1):
            state = universal.layer(state + universal.coordinate_embedding(n, t).to(x.dtype))
        return cast(torch.Tensor, state)

    return Setup(
        ours=lambda: universal(x).last_hidden_state,
        baseline=lambda: stack(x).last_hidden_state,
        inputs=(x,),
        reference=reference,
        ours_params=tuple(universal.parameters()),
        baseline_params=tuple(stack.parameters()),
    )


def cases(ctx: Context) -> list[Case]:
    batch, heads, d = ctx.pick(
        tiny=(1, 2, 8),
        quick=(1, 4, 32),
        full=(1, 4, 32),
        cuda_quick=(2, 8, 64),
        cuda_full=(2, 8, 64),
    )
    lengths = ctx.pick(
        tiny=[36],
        quick=[1024],
        full=[256, 1024, 2048],
        cuda_quick=[1024, 4096],
        cuda_full=[1024, 4096, 16384],
    )
    shape = {"batch": batch, "heads": heads, "head_dim": d}
    found = [
        Case(
            suite="sparse_variants",
            name=variant,
            n=n,
            params={**shape, "stride": max(1, round(math.sqrt(n)))},
            build=partial(_pattern_build, ctx, variant, batch, heads, n, d),
        )
        for variant in PATTERN_VARIANTS
        for n in lengths
    ]
    chunk, n_hashes = ctx.pick(tiny=(8, 2), quick=(64, 2), full=(64, 4), cuda_quick=(64, 4))
    found += [
        Case(
            suite="sparse_variants",
            name=f"lsh ({n_hashes} hashes) vs full SDPA",
            n=n,
            params={**shape, "chunk_length": chunk, "n_hashes": n_hashes},
            build=partial(_lsh_build, ctx, batch, heads, n, d, chunk, n_hashes),
        )
        for n in lengths
    ]
    dim, depth = ctx.pick(tiny=(16, 2), quick=(128, 6), full=(128, 12), cuda_quick=(512, 12))
    stack_lengths = ctx.pick(
        tiny=[16], quick=[256], full=[256, 1024], cuda_quick=[1024], cuda_full=[1024, 4096]
    )
    found += [
        Case(
            suite="sparse_variants",
            name=f"reversible vs plain stack (depth {depth})",
            n=n,
            params={"batch": batch, "dim": dim, "heads": heads, "depth": depth},
            build=partial(_reversible_build, ctx, batch, dim, heads, depth, n),
        )
        for n in stack_lengths
    ]
    found += [
        Case(
            suite="sparse_variants",
            name=f"universal ({depth} steps) vs a {depth}-layer stack",
            n=n,
            params={"batch": batch, "dim": dim, "heads": heads, "steps": depth},
            build=partial(_universal_build, ctx, batch, dim, heads, depth, n),
        )
        for n in stack_lengths
    ]
    return found


SUITE = Suite(
    name="sparse_variants",
    title=(
        "Sparse Transformer patterns, Reformer LSH attention and reversible stacks "
        "vs SDPA / a plain stack"
    ),
    note=(
        "Pattern rows: `sparse_pattern_attention` (stride ~ sqrt(n); fixed: c = stride / 8) "
        "against SDPA with the same `(n, n)` pattern mask (same numbers) and against full "
        "causal SDPA (different numbers; checked against the masked version). LSH rows: "
        "`lsh_attention` with fixed rotations and about n / chunk buckets against full SDPA "
        "on the same queries and normalised keys; checked against dense attention over "
        "the hashed key set. Reversible rows: the same `ReversibleEncoder` with the "
        "recomputing backward and with plain autograd; on CUDA the peak-memory columns "
        "show the activations the reversible stack does not keep. Universal rows: one shared "
        "layer applied T times (ACT off) against a T-layer stack (a cost comparison), "
        "checked against the recurrence written out."
    ),
    cases=cases,
)
