"""``pkm``: a product-key memory against dense feed-forward layers.

A memory and a feed-forward layer compute different functions, so two dense baselines
bracket it honestly: one with the memory's parameter count (what the memory replaces in
capacity, at far more compute) and one with its multiply-adds per token (what the same
compute buys densely, with far fewer parameters). Correctness is checked separately,
against a brute-force read that scores all ``n_keys ** 2`` product keys.
"""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any

import torch
from torch import nn

from attnzoo.attention.product_key import ProductKeyMemory

from ..harness import Case, Context, Setup, Suite

# Rows per chunk of the brute-force reference are chosen so that one chunk's
# (rows, heads, n_keys ** 2) score tensor stays near this many elements: a few hundred
# MiB on a GPU, where fewer, larger chunks keep the loop short; 64 MiB on a CPU.
REFERENCE_ELEMENTS = {"cpu": 2**24, "cuda": 2**26}


def feed_forward(dim: int, hidden: int) -> nn.Sequential:
    """The transformer feed-forward layer ``dim -> hidden -> dim`` with GELU."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def memory_macs_per_token(mem: ProductKeyMemory) -> int:
    """Multiply-adds of one memory read: query projection, sub-key scores, value sums.

    The pair sums and top-k selections are additions and comparisons, counted as one
    operation per candidate, which slightly flatters the dense layer.
    """
    heads, k_dim, topk = mem.heads, mem.k_dim, mem.topk
    query = mem.dim * heads * k_dim
    sub_keys = heads * mem.n_keys * k_dim  # two halves of n_keys x k_dim / 2 each
    candidates = heads * topk * topk
    values = heads * topk * mem.v_dim
    return query + sub_keys + candidates + values


def brute_force_read(mem: ProductKeyMemory, x: torch.Tensor) -> torch.Tensor:
    """Memory output from scoring every product key: the definition, no search trick.

    Queries come from the module's own query network; scores are formed in the query's
    dtype like the module's, so the comparison isolates the product-key search and the
    value read.
    """
    batch, seq, dim = x.shape
    rows = x.reshape(-1, dim)
    budget = REFERENCE_ELEMENTS["cuda" if x.is_cuda else "cpu"]
    chunk = max(1, budget // (mem.heads * mem.n_keys**2))
    outputs = []
    for start in range(0, rows.shape[0], chunk):
        query = mem.queries(rows[start : start + chunk])  # (c, heads, k_dim)
        halves = query.unflatten(-1, (2, mem.k_dim // 2))  # (c, heads, 2, k_dim / 2)
        sub = torch.einsum("nhsd,hskd->nhsk", halves, mem.keys.to(query.dtype))
        full = (sub[:, :, 0, :, None] + sub[:, :, 1, None, :]).flatten(-2)  # (c, h, n_keys^2)
        scores, slots = full.topk(mem.topk, dim=-1)
        weights = mem.normalize(scores, dim=-1)
        values = mem.values.weight[slots].to(weights.dtype)  # (c, heads, topk, v_dim)
        outputs.append(torch.einsum("nhk,nhkd->nd", weights, values).to(x.dtype))
    return torch.cat(outputs).reshape(batch, seq, -1)


def _build(ctx: Context, config: dict[str, Any], hidden: int, batch: int, n: int) -> Setup:
    # The input first: with the same seed, both baselines then see the same x and memory.
    x = ctx.randn(batch, n, config["dim"], grad=True)
    mem = ctx.module(lambda: ProductKeyMemory(**config))
    ffn = ctx.module(lambda: feed_forward(config["dim"], hidden))
    return Setup(
        ours=lambda: mem(x),
        baseline=lambda: ffn(x),
        inputs=(x,),
        ours_params=tuple(mem.parameters()),
        baseline_params=tuple(ffn.parameters()),
        reference=lambda: brute_force_read(mem, x),
    )


PKM_PACKAGE_MISSING = importlib.util.find_spec("product_key_memory") is None

# The spec's memory: x of (8, 256, 512), 256^2 = 65,536 slots, top-32, 4 heads, queries of
# 2 x 128 per head; LayerNorm on the queries, as the `product-key-memory` package does.
SPEC_CONFIG: dict[str, Any] = {
    "dim": 512,
    "n_keys": 256,
    "heads": 4,
    "k_dim": 256,
    "topk": 32,
    "query_norm": "layernorm",
}


def _build_spec(ctx: Context, config: dict[str, Any], batch: int, n: int, vs: str) -> Setup:
    """Our memory against a 4x FFN (``vs="ffn"``) or the package's ``PKM``, same sizes."""
    x = ctx.randn(batch, n, config["dim"], grad=True)
    mem = ctx.module(lambda: ProductKeyMemory(**config))
    if vs == "ffn":
        other = ctx.module(lambda: feed_forward(config["dim"], 4 * config["dim"]))
    else:
        from product_key_memory import PKM

        other = ctx.module(
            lambda: PKM(
                config["dim"],
                heads=config["heads"],
                num_keys=config["n_keys"],
                topk=config["topk"],
                dim_head=config["k_dim"] // 2,
            )
        )
    return Setup(
        ours=lambda: mem(x),
        baseline=lambda: other(x),
        inputs=(x,),
        ours_params=tuple(mem.parameters()),
        baseline_params=tuple(other.parameters()),
        reference=lambda: brute_force_read(mem, x),
    )


def _spec_cases(ctx: Context) -> list[Case]:
    tiny = {"dim": 16, "n_keys": 8, "heads": 2, "k_dim": 8, "topk": 4, "query_norm": "layernorm"}
    config = ctx.pick(tiny=tiny, quick=SPEC_CONFIG, full=SPEC_CONFIG)
    batch = ctx.pick(tiny=1, quick=2, full=8)
    lengths = ctx.pick(tiny=[8], quick=[256], full=[128, 256, 512])
    baselines = ["ffn"] + ([] if PKM_PACKAGE_MISSING else ["product-key-memory"])
    names = {
        "ffn": f"vs 4x FFN (hidden {4 * config['dim']})",
        "product-key-memory": "vs product-key-memory PKM",
    }
    params = {**config, "batch": batch}
    return [
        Case(
            suite="pkm",
            name=f"{config['n_keys'] ** 2} slots {names[vs]}",
            n=n,
            params=params,
            build=partial(_build_spec, ctx, config, batch, n, vs),
        )
        for vs in baselines
        for n in lengths
    ]


def matched_hidden(mem: ProductKeyMemory) -> dict[str, int]:
    """FFN hidden widths matching the memory's parameter count and its MACs per token.

    An FFN of width h has ``2 * dim * h + h + dim`` parameters and ``2 * dim * h``
    multiply-adds per token.
    """
    dim = mem.dim
    n_params = sum(p.numel() for p in mem.parameters())
    return {
        "params": max(1, round((n_params - dim) / (2 * dim + 1))),
        "MACs": max(1, round(memory_macs_per_token(mem) / (2 * dim))),
    }


def cases(ctx: Context) -> list[Case]:
    config = ctx.pick(
        tiny={"dim": 16, "n_keys": 8, "heads": 2, "k_dim": 8, "topk": 4},
        quick={"dim": 256, "n_keys": 128, "heads": 4, "k_dim": 128, "topk": 32},
        full={"dim": 256, "n_keys": 128, "heads": 4, "k_dim": 128, "topk": 32},
        cuda_quick={"dim": 1024, "n_keys": 512, "heads": 4, "k_dim": 256, "topk": 32},
        cuda_full={"dim": 1024, "n_keys": 512, "heads": 4, "k_dim": 256, "topk": 32},
    )
    batch = ctx.pick(tiny=1, quick=1, full=1, cuda_quick=8, cuda_full=8)
    lengths = ctx.pick(
        tiny=[8],
        quick=[512],
        full=[128, 256, 512, 1024],
        cuda_quick=[512, 2048],
        cuda_full=[256, 512, 1024, 2048, 4096],
    )
    dim = config["dim"]
    with torch.device("meta"):
        # Sizes for the report and the matched widths, without allocating the table.
        meta = ProductKeyMemory(**config)
    hidden = matched_hidden(meta)
    labels = {
        "params": f"vs FFN same params (hidden {hidden['params']})",
        "MACs": f"vs FFN same MACs/token (hidden {hidden['MACs']})",
    }
    cases = []
    for baseline, width in hidden.items():
        params = {
            **config,
            "batch": batch,
            "memory_params": sum(p.numel() for p in meta.parameters()),
            "memory_macs_per_token": memory_macs_per_token(meta),
            "ffn_hidden": width,
            "ffn_params": 2 * dim * width + width + dim,
        }
        cases += [
            Case(
                suite="pkm",
                name=labels[baseline],
                n=n,
                params=params,
                build=partial(_build, ctx, config, width, batch, n),
            )
            for n in lengths
        ]
    return cases + _spec_cases(ctx)


def _describe() -> str:
    return (
        "`ProductKeyMemory` (batch-norm queries, softmax over each head's top-k) against "
        "a dense `dim -> hidden -> dim` GELU feed-forward layer. They compute different "
        "functions, so the ratio is a cost comparison only, bracketed by two baselines: "
        "the FFN with the memory's parameter count (the capacity the memory offers, at "
        "about n_keys^2 * dim multiply-adds per token instead of a few hundred thousand) "
        "and the FFN with the memory's multiply-adds per token (the same arithmetic, with "
        "far fewer parameters). *max abs diff* compares the memory's "
        "output (and, in `fwd+bwd` rows, its gradient with respect to the input) with a "
        "brute-force read that scores all n_keys^2 product keys, so it checks that the "
        "product-key search is exact. In float16/bfloat16 many candidate scores tie, and "
        "the two may break a tie for the last top-k slot differently: a larger diff there "
        "is that, not an error. The spec rows time the memory the spec names (65,536 "
        "slots, top-32, 4 heads, x of 8 x 256 x 512, LayerNorm queries) against a "
        "`dim -> 4 dim -> dim` FFN and, when it is installed, against the "
        "`product-key-memory` package's `PKM` with the same slots, top-k, heads and query "
        "width (it normalises each query half separately, so its outputs differ from ours: "
        "a cost comparison, ours checked against the brute-force read as above)."
    )


SUITE = Suite(
    name="pkm",
    title="attnzoo `ProductKeyMemory` vs dense feed-forward layers",
    note=_describe(),
    cases=cases,
)
