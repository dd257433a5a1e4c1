"""``adaptive_softmax``: the adaptive softmax loss against full softmax cross-entropy.

Ours is :class:`~attnzoo.transformers_zoo.AdaptiveSoftmax` (Transformer-XL's projected
adaptive softmax: a head over a shortlist and the cluster logits, smaller tail clusters behind
projections) returning the per-token negative log-likelihood; the baseline is a full
``Linear(dim, vocab)`` followed by ``F.cross_entropy(reduction="none")``, the output layer it
replaces. Labels follow a Zipf law over the frequency-ranked vocabulary, as words in a corpus
do, so most targets fall in the shortlist. Correctness is checked against a dense reference
built from ours' own weights: the full ``(tokens, vocab)`` log-distribution (head
log-softmax plus each cluster's log-softmax), gathered at the labels.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.transformers_zoo import AdaptiveSoftmax
from attnzoo.transformers_zoo.adaptive_softmax import AdaptiveCluster

from ..harness import Case, Context, Setup, Suite

ZIPF_EXPONENT = 1.0


def zipf_labels(tokens: int, vocab: int, ctx: Context) -> Tensor:
    """``(tokens,)`` ids drawn with probability proportional to ``1 / (rank + 1)``."""
    generator = torch.Generator().manual_seed(0)
    weights = torch.arange(1, vocab + 1, dtype=torch.float64) ** -ZIPF_EXPONENT
    labels = torch.multinomial(weights, tokens, replacement=True, generator=generator)
    return labels.to(ctx.device)


def dense_nll(module: AdaptiveSoftmax, hidden: Tensor, labels: Tensor) -> Tensor:
    """The full log-distribution over the vocabulary from ``module``'s weights, gathered."""
    wide = torch.promote_types(hidden.dtype, torch.float32)

    def log_softmax(cluster: AdaptiveCluster, weight: Tensor, bias: Tensor | None) -> Tensor:
        h = hidden @ cluster.projection if cluster.projection is not None else hidden
        return F.log_softmax(F.linear(h, weight, bias), dim=-1, dtype=wide)

    clusters = cast(list[AdaptiveCluster], list(module.clusters))
    first, shortlist = clusters[0], module.shortlist
    head_bias = None
    if first.bias is not None and module.cluster_bias is not None:
        head_bias = torch.cat([first.bias, module.cluster_bias])
    head = log_softmax(first, torch.cat([first.weight, module.cluster_weight]), head_bias)
    parts = [head[:, :shortlist]]
    for i, cluster in enumerate(clusters[1:], start=1):
        parts.append(
            head[:, shortlist + i - 1, None] + log_softmax(cluster, cluster.weight, cluster.bias)
        )
    return -torch.cat(parts, dim=-1).gather(1, labels[:, None]).squeeze(1)


def _build(
    ctx: Context, vocab: int, dim: int, tokens: int, cutoffs: tuple[int, ...], div_val: int
) -> Setup:
    ours = ctx.module(lambda: AdaptiveSoftmax(vocab, dim, cutoffs, div_val=div_val))
    full = ctx.module(lambda: nn.Linear(dim, vocab))
    hidden = ctx.randn(tokens, dim, grad=True)
    labels = zipf_labels(tokens, vocab, ctx)

    def baseline() -> Tensor:
        # Upcast as a training loop does, so both sides return float32 losses.
        return F.cross_entropy(full(hidden).float(), labels, reduction="none")

    return Setup(
        ours=lambda: ours(hidden, labels),
        baseline=baseline,
        reference=lambda: dense_nll(ours, hidden, labels),
        inputs=(hidden,),
        ours_params=tuple(ours.parameters()),
        baseline_params=tuple(full.parameters()),
    )


def cases(ctx: Context) -> list[Case]:
    vocab, dim, cutoffs, div_val = ctx.pick(
        tiny=(64, 16, (8, 24), 2),
        quick=(50_000, 512, (2_000, 10_000), 4),
        full=(50_000, 512, (2_000, 10_000), 4),
    )
    token_counts = ctx.pick(
        tiny=[32],
        quick=[256],
        full=[1024, 4096],
        cuda_quick=[4096],
        cuda_full=[1024, 4096, 16384],
    )
    params = {"vocab": vocab, "dim": dim, "cutoffs": list(cutoffs), "div_val": div_val}
    return [
        Case(
            suite="adaptive_softmax",
            name="adaptive softmax NLL",
            n=tokens,
            params=params,
            build=partial(_build, ctx, vocab, dim, tokens, cutoffs, div_val),
        )
        for tokens in token_counts
    ]


SUITE = Suite(
    name="adaptive_softmax",
    title="AdaptiveSoftmax per-token NLL vs full Linear + cross-entropy (n = tokens)",
    note=(
        "Ours: the projected adaptive softmax (vocab 50k, dim 512, cutoffs 2k/10k, div_val 4: "
        "cluster widths 512/128/32), scoring for each token the head and only its target's "
        "cluster; baseline: a full Linear(512, 50k) and cross-entropy, the layer it replaces. "
        "Labels are Zipf-distributed (exponent 1), so about 70% fall in the shortlist; with "
        "more uniform labels ours scores more tails and the ratio rises. The diff column "
        "compares ours with the dense log-distribution built from ours' weights."
    ),
    cases=cases,
)
