"""``bert``: attnzoo ``BertModel`` forward against Hugging Face ``transformers.BertModel``.

Both sides hold the same weights: Hugging Face's model is built from a config with random
weights, written with ``save_pretrained`` to a temporary directory, and ours is read from
it with ``from_pretrained``. ``transformers`` is optional (the ``bench`` extra): without it
the suite lists no cases and its note says it was skipped.
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

BATCH = 8
TOKENS = 128


def real_tokens(ctx: Context, batch: int, n: int) -> Tensor:
    """``(batch, n)`` boolean, True = real token; lengths spread evenly from n/2 to n.

    The first row is unpadded and the last keeps half its tokens, so every batch holds
    padding whatever the seed.
    """
    lengths = torch.linspace(n // 2, n, batch, device=ctx.device).round().long()
    lengths = lengths.flip(0)
    return torch.arange(n, device=ctx.device) < lengths[:, None]


def build_pair(ctx: Context, shape: dict[str, int]) -> tuple[Any, Any]:
    """Hugging Face's ``BertModel`` with random weights, and ours read from its checkpoint.

    Both are on the run's device, in its dtype, in eval mode (no dropout). The baseline
    uses PyTorch's SDPA attention, Hugging Face's default and its fastest path.
    """
    import transformers

    from attnzoo.transformers_zoo.bert import BertModel

    config = transformers.BertConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        intermediate_size=4 * shape["hidden"],
        max_position_embeddings=max(512, TOKENS),
        # Taken by the config at run time; its typed signature omits it.
        attn_implementation="sdpa",  # type: ignore[call-arg]
    )
    theirs = transformers.BertModel(config).eval()
    # save_pretrained draws a progress bar per call, which would cut through the suite's own.
    bar_was_on = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    try:
        with tempfile.TemporaryDirectory() as path:
            theirs.save_pretrained(path)
            ours = BertModel.from_pretrained(path)
    finally:
        if bar_was_on:
            transformers.utils.logging.enable_progress_bar()
    theirs = theirs.to(device=ctx.device, dtype=ctx.dtype).eval()
    ours = ours.to(device=ctx.device, dtype=ctx.dtype).eval()
    return ours, theirs


def _build(ctx: Context, shape: dict[str, int], batch: int, n: int) -> Setup:
    ours, theirs = build_pair(ctx, shape)
    # One embedding table shared by both models (the same Parameter object): it is the
    # leaf whose gradient the forward+backward rows compare, as an input would be.
    shared = ours.embeddings.word_embeddings.weight
    theirs.embeddings.word_embeddings.weight = shared
    ids = torch.randint(1, shape["vocab"], (batch, n), device=ctx.device)
    real = real_tokens(ctx, batch, n)
    ids = ids.masked_fill(~real, 0)  # padding token id
    mask01 = real.long()  # Hugging Face's integer 0/1 attention mask

    # Both sides return the hidden states of the real tokens only, (n_real, hidden):
    # padded positions carry no meaning, so the check ignores them.
    def run_ours() -> Tensor:
        return ours(ids, attention_mask=real).last_hidden_state[real]

    def run_theirs() -> Tensor:
        return theirs(input_ids=ids, attention_mask=mask01).last_hidden_state[real]

    return Setup(
        ours=run_ours,
        baseline=run_theirs,
        inputs=(shared,),
        ours_params=tuple(p for p in ours.parameters() if p is not shared),
        baseline_params=tuple(p for p in theirs.parameters() if p is not shared),
    )


def cases(ctx: Context) -> list[Case]:
    if TRANSFORMERS_MISSING:
        return []
    base = {"hidden": 768, "heads": 12, "vocab": 30522}
    shape = ctx.pick(
        tiny={"hidden": 32, "heads": 2, "layers": 2, "vocab": 100},
        quick={"hidden": 256, "heads": 4, "layers": 4, "vocab": 8000},
        full={**base, "layers": 4},
        cuda_quick={**base, "layers": 4},
        cuda_full={**base, "layers": 12},
    )
    batch, n = ctx.pick(tiny=(2, 16), quick=(BATCH, TOKENS), full=(BATCH, TOKENS))
    name = f"{shape['layers']}x{shape['hidden']}, {shape['heads']} heads, batch {batch}"
    return [
        Case(
            suite="bert",
            name=name,
            n=n,
            params={"batch": batch, **shape, "intermediate": 4 * shape["hidden"]},
            build=partial(_build, ctx, shape, batch, n),
        )
    ]


NOTE = (
    "BERT encoder forward on a padded batch (8 sequences of 128 tokens, real lengths "
    "spread from 64 to 128), both models holding the same weights (Hugging Face's random "
    "init read by `BertModel.from_pretrained`), eval mode, Hugging Face on its default "
    "SDPA attention. Sizes: on CUDA the full profile is BERT-base (12 layers, hidden 768, "
    "12 heads, FFN 3072, vocabulary 30522) and quick is its first 4 layers; on CPU the full "
    "profile is that 4-layer BERT-base-width model (12 layers would take minutes) and "
    "quick a 4-layer, hidden-256 one. Both sides include the pooler. The diff of `fwd` rows "
    "is over `last_hidden_state` at real tokens only; `fwd+bwd` back-propagates a fixed "
    "gradient of those states through all parameters, and its diff is that of the "
    "gradient of the word-embedding table, which both models share."
)
SKIPPED = (
    "Skipped: `transformers` is not installed, so there is no baseline "
    '(`pip install -e ".[bench]"`). '
)

SUITE = Suite(
    name="bert",
    title="attnzoo `BertModel` vs Hugging Face `transformers.BertModel` (same weights)",
    note=SKIPPED + NOTE if TRANSFORMERS_MISSING else NOTE,
    cases=cases,
)
