"""``torch.compile`` (inductor, CPU) of the zoo BERT and GPT-2 matches eager execution.

Tiny configs keep the compilation (the bulk of the cost) to a few seconds per model.
"""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo.bert import BertConfig, BertForMaskedLM
from attnzoo.transformers_zoo.gpt2 import GPT2Config, GPT2LMHeadModel

VOCAB = 37
IDS = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
REAL = torch.ones(2, 9, dtype=torch.bool)
REAL[1, 6:] = False
# Inductor fuses and reorders float32 reductions: equal up to rounding, not bit for bit.
ATOL = 1e-5


@pytest.fixture(autouse=True)
def fresh_dynamo() -> None:
    torch._dynamo.reset()


def test_compiled_bert_matches_eager() -> None:
    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
        )
    ).eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(IDS, REAL).logits
        out = compiled(IDS, REAL).logits
    torch.testing.assert_close(out, eager, atol=ATOL, rtol=ATOL)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=VOCAB,
            n_positions=16,
            n_embd=16,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


def test_compiled_gpt2_matches_eager() -> None:
    model = tiny_gpt2().eval()
    compiled = torch.compile(model)
    with torch.no_grad():
        eager = model(IDS, attention_mask=REAL).logits
        out = compiled(IDS, attention_mask=REAL).logits
    torch.testing.assert_close(out, eager, atol=ATOL, rtol=ATOL)


@pytest.mark.slow  # compiling the backward graph too doubles the cost (~25 s of CPU)
def test_compiled_gpt2_training_step_matches_eager() -> None:
    model = tiny_gpt2().train()
    compiled = torch.compile(model)
    eager = model(IDS, attention_mask=REAL, labels=IDS)
    eager.loss.backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out = compiled(IDS, attention_mask=REAL, labels=IDS)
    out.loss.backward()
    torch.testing.assert_close(out.loss, eager.loss, atol=ATOL, rtol=ATOL)
    for p, grad in zip(model.parameters(), eager_grads, strict=True):
        torch.testing.assert_close(p.grad, grad, atol=ATOL, rtol=ATOL)
