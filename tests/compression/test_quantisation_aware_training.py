"""Quantisation-aware training: LSQ against PyTorch's learnable fake quantiser, Q8BERT."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from attnzoo.compression import (
    EmaAbsMax,
    LsqQuantize,
    LsqQuantizer,
    QuantLinear,
    prepare_qat,
    signed_range,
    symmetric_fake_quantize,
)
from attnzoo.transformers_zoo.training import TrainConfig, fit


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_matches_pytorch_learnable_fake_quantize(bits: int) -> None:
    """PyTorch's ``_fake_quantize_learnable_per_tensor_affine`` implements LSQ (zero point
    0, ``grad_factor`` = LSQ's gradient scale): values and both gradients must agree.

    PyTorch decides "inside the range" from the rounded code, the paper from ``v / s``; the
    two differ only within half a step outside the range ends, so inputs there are moved
    out (the paper's rule is tested on its own below)."""
    qn, qp = signed_range(bits)
    # PyTorch's kernel is float32 only.
    v = 3 * torch.randn(7, 13)
    step = torch.tensor([0.37], requires_grad=True)
    scaled = v / 0.37
    margin = ((scaled > qp) & (scaled < qp + 0.5)) | ((scaled < -qn) & (scaled > -qn - 0.5))
    v = torch.where(margin, v.sign() * 0.37 * (qn + 1), v).requires_grad_()
    scale = 1 / math.sqrt(qp * v.numel())
    ours = LsqQuantize.apply(v, step, qn, qp, scale)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    ours_grads = v.grad.clone(), step.grad.clone()
    v.grad = step.grad = None
    theirs = torch._fake_quantize_learnable_per_tensor_affine(
        v, step, torch.zeros(1), -qn, qp, scale
    )
    theirs.backward(grad)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_grads[0], v.grad)
    # The step gradient is a sum over 91 entries: float32 summation order differs.
    torch.testing.assert_close(ours_grads[1], step.grad, rtol=1e-5, atol=1e-6)


def test_lsq_step_gradient_is_the_paper_formula() -> None:
    v = torch.tensor([-5.0, -0.74, 0.1, 0.26, 9.0], dtype=torch.float64)
    step = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    # 2-bit signed: Q_N = 2, Q_P = 1. v/s = -10, -1.48, 0.2, 0.52, 18.
    out = LsqQuantize.apply(v, step, 2, 1, 1.0)
    torch.testing.assert_close(out, torch.tensor([-1.0, -0.5, 0.0, 0.5, 0.5], dtype=torch.float64))
    out.sum().backward()
    expected = -2 + (-1 + 1.48) + (0 - 0.2) + (1 - 0.52) + 1
    assert float(step.grad) == pytest.approx(expected)


def test_lsq_gradcheck_where_its_gradient_is_the_true_derivative() -> None:
    """Outside the range the output is ``-Q_N s`` or ``Q_P s``: constant in ``v``, linear in
    ``s``, so with gradient scale 1 LSQ's gradients are exact there and gradcheck applies.
    Inside the range the rounding's gradient is a straight-through estimate by design (checked
    against PyTorch's LSQ kernel and the paper's formula above, not by finite differences)."""
    v = torch.tensor([-9.0, -4.2, 3.3, 12.0], dtype=torch.float64, requires_grad=True)
    step = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, s: LsqQuantize.apply(v, s, 4, 3, 1.0), (v, step))


def test_lsq_quantizer_initialises_its_step_from_the_first_batch() -> None:
    quantizer = LsqQuantizer(4)
    w = torch.randn(20, 30)
    quantizer(w)
    assert float(quantizer.step.detach()) == pytest.approx(float(2 * w.abs().mean() / math.sqrt(7)))
    quantizer(10 * w)  # initialised once
    assert float(quantizer.step.detach()) == pytest.approx(float(2 * w.abs().mean() / math.sqrt(7)))
    codes = quantizer(w) / quantizer.step
    torch.testing.assert_close(codes, codes.round())
    assert codes.min() >= -8 and codes.max() <= 7


def test_lsq_step_pushed_below_zero_is_kept_positive() -> None:
    quantizer = LsqQuantizer(bits=8)
    v = torch.randn(4, 6)
    quantizer(v)  # initialises the step
    with torch.no_grad():
        quantizer.step.fill_(-0.3)  # what a large optimiser step can do
    out = quantizer(v)
    assert quantizer.step.item() == torch.finfo(torch.float32).eps
    assert torch.isfinite(out).all()


def test_q8bert_ema_range_and_symmetric_quantisation() -> None:
    ema = EmaAbsMax(decay=0.9)
    ema.train()
    ema(torch.tensor([1.0, -2.0]))
    ema(torch.tensor([4.0, 0.5]))
    assert float(ema.max_abs) == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    ema.eval()
    x = torch.tensor([0.3, -5.0, 1.1])
    expected = torch.clamp(torch.round(x / (2.2 / 127)), -127, 127) * (2.2 / 127)
    torch.testing.assert_close(ema(x), expected)
    assert float(ema.max_abs) == pytest.approx(2.2)  # frozen in eval mode
    with pytest.raises(RuntimeError, match="training mode"):
        EmaAbsMax().eval()(x)


def test_q8bert_linear_equals_quantised_brute_force() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    layer = QuantLinear(linear, "q8bert", ema_decay=0.0)
    x = torch.randn(4, 6)
    layer.train()
    out = layer(x)
    w_scale, x_scale = linear.weight.abs().max() / 127, x.abs().max() / 127
    w_q = torch.round(linear.weight / w_scale) * w_scale
    x_q = torch.round(x / x_scale) * x_scale
    torch.testing.assert_close(out, x_q @ w_q.T + linear.bias)


@pytest.mark.parametrize("method", ["lsq", "q8bert"])
def test_qat_on_a_zoo_bert_stays_close_to_float_and_trains(
    tiny_bert: nn.Module, padded_batch: Any, method: str
) -> None:
    ids, mask = padded_batch
    with torch.no_grad():
        expected = tiny_bert.bert(ids, attention_mask=mask).last_hidden_state[mask]
    layers = prepare_qat(tiny_bert, method, exclude=["classifier"])
    assert len(layers) == 2 * 6 + 1  # 6 Linear per layer, the pooler
    assert isinstance(tiny_bert.bert.encoder.layers[1].attention.value, QuantLinear)
    tiny_bert.train()
    with torch.no_grad():
        got = tiny_bert.bert(ids, attention_mask=mask).last_hidden_state[mask]
    assert float((got - expected).norm() / expected.norm()) < 0.05
    labels = torch.tensor([0, 2, 1])
    history = fit(
        tiny_bert,
        lambda m, b: m(b[0], attention_mask=b[1], labels=labels).loss,
        lambda step: (ids, mask),
        TrainConfig(steps=15, lr=3e-3, progress=False),
    )
    assert history.losses[-1] < history.losses[0]
    if method == "lsq":
        assert layers[0].input_quantizer.step.grad is not None


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: signed_range(1), ValueError, "bits"),
        (lambda: QuantLinear(nn.Linear(2, 2), "int4"), ValueError, "method"),
        (lambda: QuantLinear(nn.Linear(2, 2), "q8bert", bits=4), ValueError, "bits"),
        (lambda: QuantLinear(nn.Conv1d(2, 2, 1)), TypeError, "nn.Linear"),  # type: ignore[arg-type]
        (lambda: EmaAbsMax(decay=1.0), ValueError, "decay"),
        (lambda: prepare_qat(nn.ReLU()), ValueError, "no Linear"),
    ],
)
def test_bad_arguments(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_symmetric_fake_quantize_passes_gradients_inside_the_range() -> None:
    x = torch.tensor([0.5, -1.0, 3.0], requires_grad=True)
    symmetric_fake_quantize(x, 1.0).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]
