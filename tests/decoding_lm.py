"""A tiny decoder-only language model over any zoo decoder stack, and the two step
functions generation tests compare: decoding over the stack's cache, and recomputing the
whole prefix at every step."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnzoo.transformers_zoo.gpt2 import position_ids_from_attention_mask
from attnzoo.transformers_zoo.stacks import TransformerDecoder


class TinyLM(nn.Module):
    """Token and learned position embeddings, a decoder-only stack, a linear head."""

    def __init__(self, stack: TransformerDecoder, vocab: int, dim: int, max_len: int = 32):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(max_len, dim)
        self.decoder = stack
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: Tensor, positions: Tensor, mask: Tensor, cache=None) -> Tensor:
        """``ids``, ``positions`` ``(batch, n)``; ``mask`` ``(batch, n_cached + n)``
        -> logits of the last position ``(batch, vocab)``."""
        x = self.tokens(ids) + self.positions(positions)
        out = self.decoder(x, mask=mask, cache=cache).last_hidden_state
        return self.head(out[:, -1])


def cached_step(lm: TinyLM):
    """Prompt first (empty cache), then the previous token over the cache."""

    def step(prev: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        cache = state["cache"]
        if len(cache[0].self_attention) == 0:
            ids, positions, mask = state["tokens"], state["positions"], state["mask"]
        else:
            ids, positions = prev[:, None], state["positions"][:, -1:] + 1
            mask = F.pad(state["mask"], (0, 1), value=True)
        logits = lm(ids, positions, mask, cache)
        return logits, {"cache": cache, "positions": positions, "mask": mask}

    return step


def recomputing_step(lm: TinyLM, through_a_cache: bool = False):
    """The whole prefix again at every step: uncached, or through a fresh cache."""

    def step(prev: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        ids, mask = state["tokens"], state["mask"]
        if not state["fresh"]:
            ids = torch.cat([ids, prev[:, None]], dim=1)
            mask = F.pad(mask, (0, 1), value=True)
        cache = lm.decoder.new_cache() if through_a_cache else None
        logits = lm(ids, position_ids_from_attention_mask(mask), mask, cache)
        return logits, {"tokens": ids, "mask": mask, "fresh": False}

    return step
