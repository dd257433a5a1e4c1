"""``positional``: attention with positions inside it, against plain SDPA attention.

Each row times an attnzoo module against the plain softmax ``MultiHeadAttention`` with the
same weights (SDPA, no position terms), so the ratio is what the position scheme costs;
correctness is checked against a separate written-out reference of the variant:

* ``rotary``: ``position="rotary"``; reference: queries and keys rotated by the complex
  formula, then SDPA with ``is_causal``.
* ``alibi``: ``position="alibi"``; reference: SDPA with the ALiBi bias as a float mask.
* ``relative (n memory)``: Transformer-XL attention of a segment over its memory and
  itself; baseline: plain causal cross-attention to ``[memory; segment]``; reference: the
  position term read by a direct gather of ``R[i - j]`` instead of the relative shift.
* ``adaptive span``: 64 new positions after ``n`` earlier ones (decoding with a cache);
  ours keeps only the keys within the learned span, the baseline all ``n``; reference:
  softmax over every key, multiplied by the soft span mask and renormalised (the paper's
  formula, no trimming).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from attnzoo.attention.adaptive_span import AdaptiveSpanAttention
from attnzoo.attention.multi_head import KVCache, MultiHeadAttention
from attnzoo.attention.positional import alibi_bias, alibi_slopes, rotary_frequencies
from attnzoo.attention.relative import (
    RelativeMultiHeadAttention,
    relative_distances,
    sinusoidal_relative_encoding,
)

from ..harness import Case, Context, Setup, Suite

VARIANTS = ("rotary", "alibi", "relative", "adaptive span")
NEW_TOKENS = 64  # queries per adaptive-span step
SPAN = 64  # its initial (learned) span, out of a maximum of 4 n


def _heads(module: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (module.heads, module.dim_head)).transpose(1, 2)


def _merge(module: MultiHeadAttention, out: torch.Tensor) -> torch.Tensor:
    return module.out(out.transpose(1, 2).flatten(2))


def _plain_copy(ctx: Context, ours: MultiHeadAttention) -> MultiHeadAttention:
    """A causal softmax ``MultiHeadAttention`` with ``ours``' projections."""
    plain = ctx.module(lambda: MultiHeadAttention(ours.dim, ours.heads, causal=True))
    names = set(plain.state_dict())
    plain.load_state_dict({k: v for k, v in ours.state_dict().items() if k in names})
    return plain


def _complex_rotary(x: torch.Tensor) -> torch.Tensor:
    """Pairs of features as complex numbers times ``e^{i m theta_k}`` (RoFormer)."""
    n, d = x.shape[-2:]
    angles = torch.arange(n, device=x.device, dtype=torch.float64)[:, None]
    angles = angles * rotary_frequencies(d).to(x.device)
    rotation = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
    z = torch.view_as_complex(x.float().unflatten(-1, (d // 2, 2)).contiguous())
    return torch.view_as_real(z * rotation).flatten(-2).to(x.dtype)


def _rotary(ctx: Context, batch: int, dim: int, heads: int, n: int) -> Setup:
    ours = ctx.module(lambda: MultiHeadAttention(dim, heads, causal=True, position="rotary"))
    plain = _plain_copy(ctx, ours)
    x = ctx.randn(batch, n, dim, grad=True)

    def reference() -> torch.Tensor:
        q, k, v = (_heads(ours, f(x)) for f in (ours.query, ours.key, ours.value))
        q, k = _complex_rotary(q), _complex_rotary(k)
        return _merge(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True))

    return Setup(
        ours=lambda: ours(x),
        baseline=lambda: plain(x),
        reference=reference,
        inputs=(x,),
        ours_params=tuple(ours.parameters()),
        baseline_params=tuple(plain.parameters()),
    )


def _alibi(ctx: Context, batch: int, dim: int, heads: int, n: int) -> Setup:
    ours = ctx.module(lambda: MultiHeadAttention(dim, heads, causal=True, position="alibi"))
    plain = _plain_copy(ctx, ours)
    x = ctx.randn(batch, n, dim, grad=True)
    # Built once, outside the timed region.
    bias = alibi_bias(alibi_slopes(heads).to(ctx.device), n, n, symmetric=False)
    future = torch.ones(n, n, dtype=torch.bool, device=ctx.device).triu(1)
    bias = bias.masked_fill(future, float("-inf")).to(x.dtype)

    def reference() -> torch.Tensor:
        q, k, v = (_heads(ours, f(x)) for f in (ours.query, ours.key, ours.value))
        return _merge(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))

    return Setup(
        ours=lambda: ours(x),
        baseline=lambda: plain(x),
        reference=reference,
        inputs=(x,),
        ours_params=tuple(ours.parameters()),
        baseline_params=tuple(plain.parameters()),
    )


def _relative(ctx: Context, batch: int, dim: int, heads: int, n: int) -> Setup:
    ours = ctx.module(lambda: RelativeMultiHeadAttention(dim, heads))
    plain = _plain_copy(ctx, ours)
    x = ctx.randn(batch, n, dim, grad=True)
    memory = ctx.randn(batch, n, dim)
    n_k = 2 * n
    distances = relative_distances(n, n_k, True, ctx.device)
    i = torch.arange(n, device=ctx.device)[:, None]
    j = torch.arange(n_k, device=ctx.device)[None, :]
    column = (distances[0] - (i + n_k - n - j)).clamp(0, n_k - 1)  # where R[i - j] sits

    def reference() -> torch.Tensor:
        h = torch.cat([memory, x], dim=1)
        q, k, v = (
            _heads(ours, ours.query(x)),
            _heads(ours, ours.key(h)),
            _heads(ours, ours.value(h)),
        )
        encoding = sinusoidal_relative_encoding(distances, dim, dtype=x.dtype)
        r = ours.relative(encoding).unflatten(-1, (heads, ours.dim_head)).transpose(0, 1)
        content = (q + ours.r_w_bias[:, None]) @ k.transpose(-2, -1)
        table = (q + ours.r_r_bias[:, None]) @ r.transpose(-2, -1)
        position = table.gather(-1, column.expand(*table.shape[:2], n, n_k))
        scores = (content + position) * ours.dim_head**-0.5
        scores = scores.masked_fill(j > i + n_k - n, float("-inf"))
        return _merge(ours, torch.softmax(scores, dim=-1) @ v)

    return Setup(
        ours=lambda: ours(x, memory=memory),
        baseline=lambda: plain(x, context=torch.cat([memory, x], dim=1)),
        reference=reference,
        inputs=(x,),
        ours_params=tuple(ours.parameters()),
        baseline_params=tuple(plain.parameters()),
    )


def _adaptive_span(ctx: Context, batch: int, dim: int, heads: int, n: int) -> Setup:
    ours = ctx.module(
        lambda: AdaptiveSpanAttention(
            dim, heads, max_span=4 * max(n, SPAN), ramp=32, init_span=SPAN
        )
    )
    plain = _plain_copy(ctx, ours)
    x = ctx.randn(batch, NEW_TOKENS, dim, grad=True)
    history = ctx.randn(batch, n, dim)
    with torch.no_grad():
        past_k, past_v = _heads(ours, ours.key(history)), _heads(ours, ours.value(history))
    start = max(0, n - (ours.span.reach() - 1))  # ours' cache holds only the rest
    n_k = n + NEW_TOKENS

    def run_ours() -> torch.Tensor:
        return ours(x, cache=KVCache(past_k[..., start:, :], past_v[..., start:, :]))

    def reference() -> torch.Tensor:
        q = _heads(ours, ours.query(x))
        k = torch.cat([past_k, _heads(ours, ours.key(x))], dim=-2)
        v = torch.cat([past_v, _heads(ours, ours.value(x))], dim=-2)
        scores = (q @ k.transpose(-2, -1)) * ours.dim_head**-0.5
        weights = torch.softmax(scores.masked_fill(~_causal(NEW_TOKENS, n_k, ctx), -torch.inf), -1)
        weights = weights * ours.span(NEW_TOKENS, n_k).to(weights.dtype)
        weights = weights / weights.sum(-1, keepdim=True)
        return _merge(ours, weights @ v)

    return Setup(
        ours=run_ours,
        baseline=lambda: plain(x, cache=KVCache(past_k, past_v)),
        reference=reference,
        inputs=(x,),
        ours_params=tuple(ours.parameters()),
        baseline_params=tuple(plain.parameters()),
    )


def _causal(n_q: int, n_k: int, ctx: Context) -> torch.Tensor:
    rows = torch.arange(n_q, device=ctx.device)[:, None]
    return torch.arange(n_k, device=ctx.device)[None, :] <= rows + n_k - n_q


BUILDERS = {
    "rotary": _rotary,
    "alibi": _alibi,
    "relative": _relative,
    "adaptive span": _adaptive_span,
}


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
    names = {"relative": "relative (n memory)", "adaptive span": "adaptive span (n history)"}
    return [
        Case(
            suite="positional",
            name=names.get(variant, variant),
            n=n,
            params=params,
            build=partial(BUILDERS[variant], ctx, batch, dim, heads, n),
        )
        for variant in VARIANTS
        for n in lengths
    ]


SUITE = Suite(
    name="positional",
    title="rotary / ALiBi / Transformer-XL relative / adaptive-span attention vs plain SDPA MHA",
    note=(
        "Ours and the baseline share their projection weights; the baseline is the plain "
        "causal softmax `MultiHeadAttention` (SDPA, no position terms), so the ratio is what "
        "the position scheme costs. The diff column compares ours with a written-out "
        "reference of the same variant (complex-number rotary; SDPA with the ALiBi float "
        "mask; a direct gather of R[i - j] for Transformer-XL; the paper's multiply-and-"
        "renormalise span mask over every key). `rotary` and `alibi`: causal self-attention "
        "over n positions (ALiBi needs a float mask, so no flash kernel). `relative (n "
        "memory)`: a segment of n attending to a memory of n and itself. `adaptive span (n "
        f"history)`: {NEW_TOKENS} new positions after n cached ones; the span (initial "
        f"{SPAN}, ramp 32) lets ours keep and score only the last ~{SPAN + 32} keys, the "
        "baseline all n."
    ),
    cases=cases,
)
