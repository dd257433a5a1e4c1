"""QAT to int8: the converted layers reproduce the fake-quantised ones up to float32 rounding."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from attnzoo.compression import (
    Int8Linear,
    QuantLinear,
    compression_report,
    convert_qat,
    count_nonzeros,
    linear_weight_bytes,
    prepare_qat,
)
from attnzoo.compression.qat_conversion import int8_matmul
from attnzoo.transformers_zoo.training import TrainConfig, fit

U = 2.0**-24  # float32 unit roundoff


def test_int8_matmul_is_exact_int32_accumulation() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (7, 301), dtype=torch.int8, generator=generator)
    b = torch.randint(-128, 128, (5, 301), dtype=torch.int8, generator=generator)
    a[0], b[0] = -128, -128  # the largest products: 301 * 2^14
    expected = a.long() @ b.long().T
    out = int8_matmul(a, b)
    assert out.dtype == torch.int32 and torch.equal(out.long(), expected)


def _trained_layer(method: str, bits: int, negative_step: bool = False) -> QuantLinear:
    torch.manual_seed(0)
    layer = QuantLinear(nn.Linear(37, 11), method, bits, ema_decay=0.5)
    layer.train()
    for scale in (1.0, 2.0, 1.5):  # initialise, then move the EMA range
        layer(scale * torch.randn(4, 37))
    if method == "lsq":
        with torch.no_grad():  # learned steps away from their initial values
            layer.input_quantizer.step.mul_(1.3)
            layer.weight_quantizer.step.mul_(-0.9 if negative_step else 0.9)  # type: ignore[union-attr]
    return layer.eval()


@pytest.mark.parametrize(
    ("method", "bits", "negative_step"),
    [("lsq", 8, False), ("lsq", 4, False), ("lsq", 8, True), ("q8bert", 8, False)],
)
def test_int8_layer_equals_the_fake_quantised_layer(
    method: str, bits: int, negative_step: bool
) -> None:
    layer = _trained_layer(method, bits, negative_step)
    int8 = Int8Linear.from_quant_linear(layer)
    assert int8.weight.dtype == torch.int8 and not int8.weight.requires_grad
    x = 2.5 * torch.randn(3, 6, 37, generator=torch.Generator().manual_seed(1))  # some clip
    with torch.no_grad():
        x_hat = layer.input_quantizer(x)
        w_hat = layer.quantized_weight()
        fake = layer(x)
        ours = int8(x)
    # The same integer codes as the trained quantisers, bit for bit.
    assert torch.equal(int8.quantize_input(x).float() * int8.input_scale, x_hat)
    assert torch.equal(int8.dequantized_weight(), w_hat)
    # Stated bound: (k + 8) u (|x_hat| |W_hat|^T + |b|), k = 37 inputs.
    magnitude = x_hat.abs() @ w_hat.abs().T + layer.bias.detach().abs()
    assert bool(((ours - fake).abs() <= (37 + 8) * U * magnitude).all())
    # Against the exact product of the integers (float64): a few roundings of the rescale.
    codes = int8.quantize_input(x).double()
    exact = (codes @ int8.weight.double().T) * (
        float(int8.input_scale) * float(int8.weight_scale)
    ) + layer.bias.detach().double()
    assert bool(((ours.double() - exact).abs() <= 4 * U * (exact.abs() + magnitude)).all())


@pytest.mark.parametrize("method", ["lsq", "q8bert"])
def test_converted_zoo_bert_matches_the_qat_model_and_stores_int8(
    tiny_bert: nn.Module, padded_batch: tuple[Tensor, Tensor], method: str
) -> None:
    ids, mask = padded_batch
    float_model = copy.deepcopy(tiny_bert)
    layers = prepare_qat(tiny_bert, method, ema_decay=0.9)
    labels = torch.tensor([0, 2, 1])
    fit(
        tiny_bert,
        lambda m, b: m(b[0], attention_mask=b[1], labels=labels).loss,
        lambda step: (ids, mask),
        TrainConfig(steps=5, lr=1e-3, progress=False),
    )
    tiny_bert.eval()
    converted = convert_qat(tiny_bert)
    assert not any(isinstance(m, QuantLinear) for m in converted.modules())
    int8_layers = [m for m in converted.modules() if isinstance(m, Int8Linear)]
    assert len(int8_layers) == len(layers) == 2 * 6 + 2  # 6 per layer, pooler, classifier
    assert isinstance(tiny_bert.bert.encoder.layers[0].attention.query, QuantLinear)  # a copy
    with torch.no_grad():
        fake = tiny_bert(ids, attention_mask=mask)
        real = converted(ids, attention_mask=mask)
        fake_hidden = tiny_bert.bert(ids, attention_mask=mask).last_hidden_state[mask]
        real_hidden = converted.bert(ids, attention_mask=mask).last_hidden_state[mask]
    # Each layer differs by float32 roundings only (~1e-7 relative); a code could flip only
    # where an upstream value lies within that of a rounding tie (not on this batch).
    torch.testing.assert_close(real_hidden, fake_hidden, rtol=0, atol=1e-5)
    torch.testing.assert_close(real.logits, fake.logits, rtol=0, atol=1e-6)
    # int8 storage: the quantised linear weights take a quarter of their float32 bytes.
    int8_bytes = sum(m.weight.numel() * m.weight.element_size() for m in int8_layers)
    assert linear_weight_bytes(float_model) == 4 * int8_bytes
    assert linear_weight_bytes(converted) == int8_bytes + 8 * len(int8_layers)
    report = compression_report(float_model, {"qat": tiny_bert, "int8": converted})
    assert report.row("int8").disk_bytes < report.row("original").disk_bytes
    assert report.row("int8").nonzeros == count_nonzeros(converted)
    saved = report.row("original").disk_bytes - report.row("int8").disk_bytes
    # 3 of 4 bytes of each linear weight, less each layer's two float32 scales and their
    # entries (name, dtype, shape, offsets: under 128 bytes each) in the safetensors header.
    extra = len(int8_layers) * 2 * (4 + 128)
    assert 3 * int8_bytes - extra <= saved <= 3 * int8_bytes


def test_convert_inplace_and_eval_mode(tiny_bert: nn.Module) -> None:
    prepare_qat(tiny_bert, "q8bert")
    tiny_bert.train()
    tiny_bert(torch.randint(1, 53, (2, 5)))
    out = convert_qat(tiny_bert, inplace=True)
    assert out is tiny_bert and not out.training
    assert isinstance(tiny_bert.classifier, Int8Linear)


def _bad_int8(**changes: Any) -> Int8Linear:
    options: dict[str, Any] = {
        "weight": torch.zeros(3, 4, dtype=torch.int8),
        "weight_scale": 0.1,
        "input_scale": 0.2,
    }
    options.update(changes)
    return Int8Linear(**options)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: convert_qat(nn.Sequential(nn.Linear(2, 2))), ValueError, "no QuantLinear"),
        (lambda: convert_qat("model"), TypeError, "nn.Module"),  # type: ignore[arg-type]
        (
            lambda: Int8Linear.from_quant_linear(QuantLinear(nn.Linear(2, 2))),
            ValueError,
            "unset",
        ),
        (
            lambda: Int8Linear.from_quant_linear(QuantLinear(nn.Linear(2, 2), "q8bert")),
            ValueError,
            "unset",
        ),
        (lambda: Int8Linear.from_quant_linear(nn.Linear(2, 2)), TypeError, "QuantLinear"),  # type: ignore[arg-type]
        (lambda: _bad_int8(weight=torch.zeros(3, 4)), TypeError, "int8"),
        (lambda: _bad_int8(weight_scale=0.0), ValueError, "weight_scale"),
        (lambda: _bad_int8(input_scale=float("nan")), ValueError, "input_scale"),
        (lambda: _bad_int8(input_rounding="floor"), ValueError, "input_rounding"),
        (lambda: _bad_int8(input_min=-129), ValueError, "input_min"),
        (lambda: _bad_int8(bias=torch.zeros(4)), ValueError, "bias"),
        (lambda: _bad_int8()(torch.zeros(2, 5)), ValueError, "4 features"),
    ],
)
def test_bad_arguments(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_lsq_wider_than_8_bits_cannot_be_stored_as_int8() -> None:
    layer = QuantLinear(nn.Linear(3, 2), "lsq", bits=10)
    layer(torch.randn(2, 3))
    with pytest.raises(ValueError, match="bits"):
        Int8Linear.from_quant_linear(layer)
