"""Tiny zoo models shared by the compression tests."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo.bert import BertConfig, BertForSequenceClassification


def tiny_bert_config(**overrides: object) -> BertConfig:
    """A 2-layer, 4-head, width-32 BERT without dropout (odd vocabulary size)."""
    values: dict[str, object] = {
        "vocab_size": 53,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "max_position_embeddings": 32,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "num_labels": 3,
    }
    values.update(overrides)
    return BertConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.fixture
def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``: 3 sequences of 7 tokens, the last two padded."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 53, (3, 7), generator=generator)
    mask = torch.arange(7) < torch.tensor([7, 5, 3])[:, None]
    return ids.masked_fill(~mask, 0), mask


@pytest.fixture
def make_config() -> object:
    """:func:`tiny_bert_config`, for tests that vary the shape."""
    return tiny_bert_config
