"""``sliding_window``: banded attention against dense SDPA with the same band as a mask.

Both compute the same numbers; the dense side builds ``n x n`` scores (``O(n^2)`` time
and memory), attnzoo's block-local kernel only ``O(n * w)``. With a fixed window the
ratio therefore falls as ``n`` grows.

Two more comparisons for causal windows: against full causal SDPA (what a causal
window saves over attending to the whole prefix; checked against the band-masked dense
SDPA, since full attention computes something else), and, when it is installed, against
the ``local-attention`` package's ``LocalAttention`` configured to the same exact band
(``exact_windowsize=True``: query ``i`` sees keys ``i - window .. i``), which computes
the same numbers.

And one decoder step of Luong et al.'s local-p attention (``LocalAttention``), which
gathers and scores only the ``2D + 1`` source positions around the predicted ``p_t``,
against the same step written out over the whole source with the positions outside
``|s - p_t| <= D`` masked: ``O(D)`` against ``O(n)`` per step.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F

from attnzoo.attention.rnn_attention import LocalAttention
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


LOCAL_ATTENTION_MISSING = importlib.util.find_spec("local_attention") is None


def _build_causal(
    ctx: Context, batch: int, heads: int, n: int, d: int, window: int, vs: str
) -> Setup:
    """Causal window of ``window`` keys before each query, against ``vs``.

    ``vs`` is ``"full"`` (full causal SDPA; correctness against the band-masked dense SDPA)
    or ``"local-attention"`` (the package's ``LocalAttention`` on the same exact band).
    """
    q, k, v = (ctx.randn(batch, heads, n, d, grad=True) for _ in range(3))

    def ours() -> torch.Tensor:
        return cast(torch.Tensor, sliding_window_attention(q, k, v, before=window, after=0))

    if vs == "full":
        mask = band_mask(n, window, 0, ctx.device)
        return Setup(
            ours=ours,
            baseline=lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
            inputs=(q, k, v),
            reference=lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        )
    from local_attention import LocalAttention

    # Buckets of `window` queries looking back one bucket, cut to the exact band; no
    # rotary embedding (it is only built when `dim` is given); the default 1/sqrt(d) scale.
    local = ctx.module(
        lambda: LocalAttention(
            window_size=window, causal=True, look_backward=1, look_forward=0, exact_windowsize=True
        )
    )
    return Setup(ours=ours, baseline=lambda: local(q, k, v), inputs=(q, k, v))


def _causal_cases(ctx: Context) -> list[Case]:
    """The causal-window rows: the spec's window of 256 at n = 8192 (toy sizes in tiny)."""
    batch, heads, d, window = ctx.pick(
        tiny=(1, 2, 8, 4), quick=(1, 8, 64, 256), full=(1, 8, 64, 256)
    )
    lengths = ctx.pick(tiny=[32], quick=[2048], full=[1024, 2048, 4096, 8192])
    params = {"batch": batch, "heads": heads, "head_dim": d, "before": window, "after": 0}
    baselines = ["full"] + ([] if LOCAL_ATTENTION_MISSING else ["local-attention"])
    names = {
        "full": f"causal window {window} vs full causal SDPA",
        "local-attention": f"causal window {window} vs local-attention",
    }
    return [
        Case(
            suite="sliding_window",
            name=names[vs],
            n=n,
            params=params,
            build=partial(_build_causal, ctx, batch, heads, n, d, window, vs),
        )
        for vs in baselines
        for n in lengths
    ]


def full_source_local_p(
    attn: LocalAttention, query: torch.Tensor, keys: torch.Tensor, projected: torch.Tensor
) -> torch.Tensor:
    """One local-p step over the whole source (Luong et al. 2015, eqs. 9-10), no padding.

    Written out here rather than imported, so that the baseline does not share code with
    the kernel it checks. ``query`` ``(batch, dim)``, ``keys`` ``(batch, n, dim)``,
    ``projected`` the cached ``W_a keys`` ``(batch, n, dim)``; returns the context
    ``(batch, dim)``.
    """
    n, window = keys.shape[1], attn.window
    hidden = torch.tanh(F.linear(query, attn.position_proj.weight))
    gate = torch.sigmoid(F.linear(hidden, attn.position_v.weight))  # (batch, 1)
    # Positions in float32 at least, as in the module: float16 cannot count past 2048.
    wide = torch.promote_types(query.dtype, torch.float32)
    p = (n - 1) * gate.to(wide)
    distance = torch.arange(n, device=keys.device, dtype=wide) - p  # (batch, n)
    scores = (projected @ query[:, :, None]).squeeze(-1)  # (batch, n)
    scores = scores.masked_fill(distance.detach().abs() > window, float("-inf"))
    gaussian = torch.exp(-distance.square() / (2 * (window / 2) ** 2)).to(scores.dtype)
    weights = torch.softmax(scores, dim=-1) * gaussian
    return (weights[:, None, :] @ keys).squeeze(1)


def _build_luong_local(ctx: Context, batch: int, n: int, dim: int, window: int) -> Setup:
    attn = ctx.module(
        lambda: LocalAttention(dim, dim, window=window, mode="local-p", score="general")
    )
    query = ctx.randn(batch, dim, grad=True)
    keys = ctx.randn(batch, n, dim, grad=True)
    # Once per source, outside the timed step, as a decoder does.
    with torch.no_grad():
        projected = attn.precompute(keys)
    params = tuple(attn.parameters())
    return Setup(
        ours=lambda: attn(query, keys, projected_keys=projected)[0],
        baseline=lambda: full_source_local_p(attn, query, keys, projected),
        inputs=(query, keys),
        ours_params=params,
        baseline_params=params,
    )


def _luong_local_cases(ctx: Context) -> list[Case]:
    """One local-p decoder step with D = 8 against the full-source step (toy sizes in tiny)."""
    batch, dim, window = ctx.pick(tiny=(1, 8, 2), quick=(8, 256, 8), full=(8, 256, 8))
    lengths = ctx.pick(tiny=[32], quick=[2048], full=[512, 2048, 8192])
    params = {"batch": batch, "dim": dim, "window": window, "mode": "local-p"}
    return [
        Case(
            suite="sliding_window",
            name=f"Luong local-p step, D={window} vs full source",
            n=n,
            params=params,
            build=partial(_build_luong_local, ctx, batch, n, dim, window),
        )
        for n in lengths
    ]


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
        quick=[1024],
        full=[256, 512, 1024, 2048],
        cuda_quick=[1024, 4096],
        cuda_full=[1024, 2048, 4096, 8192, 16384],
    )
    name = f"window {before}+1+{after}"
    params = {"batch": batch, "heads": heads, "head_dim": d, "before": before, "after": after}
    banded = [
        Case(
            suite="sliding_window",
            name=name,
            n=n,
            params=params,
            build=partial(_build, ctx, batch, heads, n, d, before, after),
        )
        for n in lengths
    ]
    return banded + _causal_cases(ctx) + _luong_local_cases(ctx)


SUITE = Suite(
    name="sliding_window",
    title="attnzoo `sliding_window_attention` vs dense SDPA with a boolean band mask",
    note=(
        "Same numbers both sides: query i sees keys i-before..i+after. The dense baseline "
        "is `scaled_dot_product_attention` with the `(n, n)` band mask (built outside the "
        "timed region), so its time and memory grow as n^2 while the window is fixed; "
        "attnzoo's block-local kernel grows as n*w. On CUDA the peak-memory columns show "
        "the same scaling; a baseline that runs out of memory is reported as such. "
        "`causal window W vs full causal SDPA`: query i sees keys i-W..i, against "
        "`is_causal=True` SDPA over the whole prefix (a different function: the check is "
        "against the band-masked dense SDPA); the ratio is what the window saves. "
        "`vs local-attention` (when installed): `LocalAttention(window_size=W, causal=True, "
        "look_backward=1, look_forward=0, exact_windowsize=True)`, the same band and the "
        "same numbers; skipped without the package. "
        "`Luong local-p step, D vs full source`: one decoder step of `LocalAttention` "
        "(local-p, general score, cached key projection), which scores only the 2D+1 "
        "positions around the predicted p_t, against the same step written out over the "
        "whole source with the rest masked; same numbers, O(D) against O(n) per step."
    ),
    cases=cases,
)
