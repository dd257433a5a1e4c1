"""``additive``: the chunked Bahdanau score against its naive one-shot formula.

The naive formula ``v . tanh(W q_i + U k_j + b)`` broadcasts to a
``(batch, n_q, n_k, hidden)`` activation and keeps it for backward; attnzoo's
``AdditiveScore`` builds it a chunk of query rows at a time and recomputes it in
backward, trading some time for ``O(chunk * n_k * hidden)`` memory.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from attnzoo.attention.scores import AdditiveScore

from ..harness import Case, Context, Setup, Suite


def naive_additive(score: AdditiveScore, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The textbook formula with ``score``'s parameters, materialising every tile at once.

    Written out here rather than imported, so that the baseline does not share code with
    the kernel it checks.
    """
    qp = F.linear(query, score.query_proj.weight)  # (batch, n_q, hidden)
    kp = F.linear(keys, score.key_proj.weight, score.key_proj.bias)  # (batch, n_k, hidden)
    return torch.tanh(qp[:, :, None, :] + kp[:, None, :, :]) @ score.v  # (batch, n_q, n_k)


def _build(ctx: Context, batch: int, n: int, dim: int, hidden: int, chunk: int) -> Setup:
    score = ctx.module(lambda: AdditiveScore(dim, dim, hidden, chunk_size=chunk))
    query = ctx.randn(batch, n, dim, grad=True)
    keys = ctx.randn(batch, n, dim, grad=True)
    params = tuple(score.parameters())
    return Setup(
        ours=lambda: score(query, keys),
        baseline=lambda: naive_additive(score, query, keys),
        inputs=(query, keys),
        # Both sides use the same parameters; each backward computes their gradients.
        ours_params=params,
        baseline_params=params,
    )


def cases(ctx: Context) -> list[Case]:
    batch, dim, hidden, chunk = ctx.pick(
        tiny=(1, 8, 8, 4),
        quick=(2, 128, 128, 64),
        full=(2, 128, 128, 64),
        cuda_quick=(4, 256, 256, 64),
        cuda_full=(4, 256, 256, 64),
    )
    lengths = ctx.pick(
        tiny=[16],
        quick=[256],
        full=[64, 128, 256],
        cuda_quick=[256, 1024],
        cuda_full=[256, 512, 1024, 2048],
    )
    params = {
        "batch": batch,
        "query_dim": dim,
        "key_dim": dim,
        "hidden": hidden,
        "chunk_size": chunk,
    }
    return [
        Case(
            suite="additive",
            name=f"n_q = n_k, chunk {chunk}",
            n=n,
            params=params,
            build=partial(_build, ctx, batch, n, dim, hidden, chunk),
        )
        for n in lengths
    ]


SUITE = Suite(
    name="additive",
    title="attnzoo chunked `AdditiveScore` vs the naive `(batch, n_q, n_k, hidden)` formula",
    note=(
        "Scores `(batch, n, n)` from queries and keys `(batch, n, dim)`, same parameters "
        "both sides. The naive formula materialises the `(batch, n_q, n_k, hidden)` tanh "
        "activation and autograd keeps it for backward; `AdditiveScore` processes "
        "`chunk_size` query rows at a time and recomputes each tile in backward, so it "
        "trades some time for memory bounded by `chunk_size * n_k * hidden` (see the "
        "peak-memory columns on CUDA)."
    ),
    cases=cases,
)
