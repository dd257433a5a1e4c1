"""bf16 autocast through every zoo model family and every attention normaliser.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` matrix products run in bfloat16 (8
significant bits, relative rounding 2**-9 ~ 0.002), reductions and losses in float32. The
forward and backward must stay finite, with padded positions and an all-padded row, and the
loss must stay within ``LOSS_RTOL`` (1%) of the float32 loss: measured 0.001-0.3% for these
tiny models; a broken mask or an overflow moves it by far more. The arg-max normalisers
(``"hard"``, ``"hardmax"``) are discontinuous: bf16 rounding of two near-equal scores can
flip the chosen key, which moved the decoder loss by 1.7%; they get ``ARGMAX_RTOL`` (5%).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from attnzoo.attention.normalizers import available_normalizers
from attnzoo.transformers_zoo.albert import AlbertConfig, AlbertForPreTraining
from attnzoo.transformers_zoo.bert import BertConfig, BertForMaskedLM
from attnzoo.transformers_zoo.distilbert import DistilBertConfig, DistilBertForMaskedLM
from attnzoo.transformers_zoo.gpt2 import GPT2Config, GPT2LMHeadModel
from attnzoo.transformers_zoo.roberta import RobertaConfig, RobertaForMaskedLM
from attnzoo.transformers_zoo.stacks import (
    LayerConfig,
    MemoryConfig,
    StackConfig,
    TransformerDecoder,
    TransformerEncoder,
)
from attnzoo.transformers_zoo.training import TrainConfig, fit
from attnzoo.transformers_zoo.xlm import XLMConfig, XLMWithLMHeadModel
from attnzoo.transformers_zoo.xlnet import XLNetConfig, XLNetLMHeadModel

LOSS_RTOL = 0.01
ARGMAX_RTOL = 0.05
VOCAB = 43
IDS = torch.randint(6, VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))
REAL = torch.ones(3, 10, dtype=torch.bool)
REAL[1, 6:] = False  # padding at the end of one row
LABELS = IDS.masked_fill(~REAL, -100)
BERT = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 48,
    "max_position_embeddings": 16,
}

ModelLoss = Callable[[nn.Module], Tensor]
FAMILIES: dict[str, tuple[Callable[[], nn.Module], ModelLoss]] = {
    "bert": (
        lambda: BertForMaskedLM(BertConfig(**BERT)),  # type: ignore[arg-type]
        lambda m: m(IDS, REAL, labels=LABELS).loss,
    ),
    "roberta": (
        lambda: RobertaForMaskedLM(RobertaConfig(**BERT, pad_token_id=1)),  # type: ignore[arg-type]
        lambda m: m(IDS, REAL, labels=LABELS).loss,
    ),
    "albert": (
        lambda: AlbertForPreTraining(AlbertConfig(**BERT, embedding_size=16)),  # type: ignore[arg-type]
        lambda m: m(IDS, REAL, labels=LABELS, sentence_order_label=torch.tensor([0, 1, 0])).loss,
    ),
    "distilbert": (
        lambda: DistilBertForMaskedLM(
            DistilBertConfig(
                vocab_size=VOCAB,
                max_position_embeddings=16,
                n_layers=2,
                n_heads=2,
                dim=32,
                hidden_dim=48,
            )
        ),
        lambda m: m(IDS, REAL, labels=LABELS).loss,
    ),
    "gpt2": (
        lambda: GPT2LMHeadModel(
            GPT2Config(
                vocab_size=VOCAB,
                n_positions=16,
                n_embd=32,
                n_layer=2,
                n_head=2,
                bos_token_id=0,
                eos_token_id=0,
            )
        ),
        lambda m: m(IDS, attention_mask=REAL, labels=LABELS).loss,
    ),
    "xlm": (
        lambda: XLMWithLMHeadModel(
            XLMConfig(vocab_size=VOCAB, emb_dim=32, n_layers=2, n_heads=2, n_langs=2)
        ),
        lambda m: m(IDS, REAL, langs=torch.ones_like(IDS), labels=LABELS).loss,
    ),
    "xlnet": (
        lambda: XLNetLMHeadModel(
            XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=2, d_inner=48)
        ),
        lambda m: m(IDS, attention_mask=REAL, labels=LABELS).loss,
    ),
}


def run(model: nn.Module, loss_fn: ModelLoss, bf16: bool) -> tuple[float, list[Tensor]]:
    """The loss and the parameter gradients of one forward/backward, with or without bf16."""
    model.zero_grad()
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = loss_fn(model)
    loss.backward()
    return float(loss.detach()), [p.grad for p in model.parameters() if p.grad is not None]


def assert_bf16_close_and_finite(
    model: nn.Module, loss_fn: ModelLoss, rtol: float = LOSS_RTOL
) -> None:
    model.eval()  # dropout off: both precisions see the same network
    reference, _ = run(model, loss_fn, bf16=False)
    loss, grads = run(model, loss_fn, bf16=True)
    assert grads, "no gradient reached the parameters"
    for grad in grads:
        assert torch.isfinite(grad).all()
    assert loss == pytest.approx(reference, rel=rtol)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_family_under_bf16_autocast(family: str) -> None:
    build, loss_fn = FAMILIES[family]
    torch.manual_seed(0)
    assert_bf16_close_and_finite(build(), loss_fn)


def stack_loss() -> ModelLoss:
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(2))
    target = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2] = False  # an all-padded row: zeros, never NaN

    def loss(module: nn.Module) -> Tensor:
        out = module(x, mask=mask).last_hidden_state
        return (out.float() - target).pow(2).mean()

    return loss


@pytest.mark.parametrize("decoder", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("normalizer", available_normalizers())
def test_every_normalizer_under_bf16_autocast(normalizer: str, decoder: bool) -> None:
    layer = LayerConfig(normalizer=normalizer, learn_alpha=normalizer == "entmax")
    config = StackConfig(
        dim=16,
        heads=2,
        depth=2,
        dropout=0.0,
        layer=layer,
        overrides={} if decoder else {1: LayerConfig(memory=MemoryConfig(4, 2, 4, 2))},
    )
    torch.manual_seed(0)
    stack = (
        TransformerDecoder(config, cross_attention=False) if decoder else TransformerEncoder(config)
    )
    rtol = ARGMAX_RTOL if normalizer in ("hard", "hardmax") else LOSS_RTOL
    assert_bf16_close_and_finite(stack, stack_loss(), rtol)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_fit_with_mixed_precision(precision: str) -> None:
    build, loss_fn = FAMILIES["bert"]
    losses = {}
    for name in ("fp32", precision):
        torch.manual_seed(0)
        model = build()
        config = TrainConfig(steps=5, lr=1e-2, precision=name, progress=False)
        losses[name] = fit(model, lambda m, _: loss_fn(m), lambda step: None, config).losses
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[precision] == pytest.approx(losses["fp32"], rel=LOSS_RTOL)
    assert losses[precision][-1] < losses[precision][0]  # it trains


def test_unknown_precision_is_rejected() -> None:
    with pytest.raises(ValueError, match="`precision` must be one of .*'fp8'"):
        TrainConfig(precision="fp8")
