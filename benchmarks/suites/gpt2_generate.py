"""``gpt2_generate``: greedy generation with the KV cache, attnzoo against Hugging Face.

attnzoo's ``GPT2LMHeadModel.generate(do_sample=False)`` against
``transformers.GPT2LMHeadModel.generate(do_sample=False, use_cache=True)`` on the same
weights (Hugging Face's random init, written with ``save_pretrained`` and read back with
``from_pretrained``). A row is one call producing ``n`` new tokens from a 16-token prompt;
tokens per second are ``batch * n / time``, so their ratio is the inverse of the time
ratio. ``transformers`` is optional (the ``bench`` extra): without it the suite lists no
cases and its note says it was skipped.
"""

from __future__ import annotations

import importlib.util
import tempfile
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..harness import Case, Context, Setup, Suite

TRANSFORMERS_MISSING = importlib.util.find_spec("transformers") is None

PROMPT = 16
PAD = 0


def build_pair(ctx: Context, shape: dict[str, int], n_positions: int) -> tuple[Any, Any]:
    """Hugging Face's ``GPT2LMHeadModel`` with random weights, and ours read from it.

    No end-of-sequence token in the config, so both generate exactly ``max_new_tokens``.
    Hugging Face runs its default SDPA attention.
    """
    import transformers

    from attnzoo.transformers_zoo.gpt2 import GPT2LMHeadModel

    config = transformers.GPT2Config(
        vocab_size=shape["vocab"],
        n_positions=n_positions,
        n_embd=shape["hidden"],
        n_layer=shape["layers"],
        n_head=shape["heads"],
        bos_token_id=None,
        eos_token_id=None,
        # Taken by the config at run time; its typed signature omits it.
        attn_implementation="sdpa",  # type: ignore[call-arg]
    )
    theirs = transformers.GPT2LMHeadModel(config).eval()
    # save_pretrained draws a progress bar per call, which would cut through the suite's own.
    bar_was_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory() as path:
            theirs.save_pretrained(path)
            ours = GPT2LMHeadModel.from_pretrained(path)
    finally:
        if bar_was_on:
            transformers.utils.logging.enable_progress_bar()
    theirs = theirs.to(device=ctx.device, dtype=ctx.dtype).eval()
    ours = ours.to(device=ctx.device, dtype=ctx.dtype).eval()
    return ours, theirs


def fraction_differing(a: Tensor, b: Tensor) -> float:
    """Share of the tokens of ``a`` that differ from ``b`` (1 if the shapes differ)."""
    if a.shape != b.shape:
        return 1.0
    return a.ne(b).float().mean().item()


def _build(ctx: Context, shape: dict[str, int], batch: int, n: int) -> Setup:
    ours, theirs = build_pair(ctx, shape, n_positions=PROMPT + n)
    prompt = torch.randint(0, shape["vocab"], (batch, PROMPT), device=ctx.device)
    mask = torch.ones_like(prompt)

    def run_ours() -> Tensor:
        return ours.generate(
            prompt, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=PAD
        )

    def run_theirs() -> Tensor:
        return theirs.generate(
            prompt,
            attention_mask=mask,
            max_new_tokens=n,
            do_sample=False,
            use_cache=True,
            pad_token_id=PAD,
        )

    def reference() -> Tensor:
        # The harness reports max |ours - reference|. This reference is our own tokens
        # (as float64, exact for any vocabulary) plus the fraction of generated tokens
        # that differ from Hugging Face's, so the column reads that fraction: 0 when the
        # two generations are identical.
        with torch.no_grad():
            got, ref = run_ours(), run_theirs()
        frac = fraction_differing(got[:, PROMPT:], ref[:, PROMPT:])
        return got.double() + frac

    return Setup(ours=run_ours, baseline=run_theirs, reference=reference)


def cases(ctx: Context) -> list[Case]:
    if TRANSFORMERS_MISSING:
        return []
    small = {"hidden": 768, "heads": 12, "vocab": 50257}
    shape = ctx.pick(
        tiny={"hidden": 32, "heads": 2, "layers": 2, "vocab": 100},
        quick={"hidden": 256, "heads": 4, "layers": 4, "vocab": 8000},
        full={**small, "layers": 4},
        cuda_quick={**small, "layers": 12},
        cuda_full={**small, "layers": 12},
    )
    lengths = ctx.pick(tiny=[8], quick=[16], full=[32, 64], cuda_quick=[64], cuda_full=[64, 256])
    batch = 1
    name = f"{shape['layers']}x{shape['hidden']}, {shape['heads']} heads, batch {batch}"
    return [
        Case(
            suite="gpt2_generate",
            name=name,
            n=n,
            params={"batch": batch, "prompt": PROMPT, "new_tokens": n, **shape},
            build=partial(_build, ctx, shape, batch, n),
            backward=False,
        )
        for n in lengths
    ]


def tokens_per_second(batch: int, new_tokens: int, ms: float) -> float:
    """Generation throughput of one timed call: ``batch * new_tokens`` tokens in ``ms``."""
    return batch * new_tokens / (ms / 1e3)


NOTE = (
    "Greedy decoding with the KV cache from a 16-token prompt, batch 1; `n` is the number "
    "of new tokens and a time is one whole `generate` call (prefill plus `n` cached "
    "steps), so tokens/s = n / time and the tokens/s ratio (ours / Hugging Face) is the "
    "inverse of the time ratio. Both models hold the same random weights; no "
    "end-of-sequence token, so both produce exactly `n` tokens; Hugging Face runs with "
    "`use_cache=True` on its default SDPA attention. Sizes: on CUDA GPT-2 small (12 layers, "
    "hidden 768, 12 heads, vocabulary 50257); on CPU the full profile keeps GPT-2 small's "
    "width and vocabulary with 4 layers, quick is a 4-layer hidden-256 model. The "
    "*max abs diff* column here is the fraction of generated tokens that differ from "
    "Hugging Face's: 0 means identical sequences."
)
SKIPPED = (
    "Skipped: `transformers` is not installed, so there is no baseline "
    '(`pip install -e ".[bench]"`). '
)

SUITE = Suite(
    name="gpt2_generate",
    title=(
        "attnzoo `GPT2LMHeadModel.generate` vs Hugging Face `GPT2LMHeadModel.generate`, "
        "greedy with KV cache"
    ),
    note=SKIPPED + NOTE if TRANSFORMERS_MISSING else NOTE,
    cases=cases,
)
