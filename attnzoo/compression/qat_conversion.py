"""Turn a quantisation-aware-trained model into a real int8 one.

After LSQ or Q8BERT training (:mod:`attnzoo.compression.qat`) every :class:`QuantLinear`
still stores a float weight and fake-quantises in float. :func:`convert_qat` replaces each by
an :class:`Int8Linear` that keeps the integer codes the training settled on:

* the weight as int8 codes with one float scale (LSQ: the learned weight step; Q8BERT:
  ``max|W| / 127``), exactly the codes the fake-quantised forward used;
* the input quantised with a STATIC scale (LSQ: the learned input step; Q8BERT: the EMA
  of ``max|x|`` over training, ``/ 127``) to the same codes the trained quantiser gives,
  rounded the same way (LSQ: ``round(x / s)``; PyTorch's fake quantiser under Q8BERT:
  ``round(x * (1 / s))``, which differs on rare near-ties);
* the product as an int8 x int8 -> int32 matrix product, rescaled once to float:
  ``y = (codes_x @ codes_W^T) * (s_x * s_W) + bias``.

The int32 accumulation is exact, so the only differences from the fake-quantised model are
float32 roundings: of its dequantised operands and its float sum, and of the one rescale
here. For one layer with ``k`` inputs, ``|y_int8 - y_fake| <= (k + 8) u (|x_hat| |W_hat|^T +
|bias|)`` with ``u = 2^-24`` (``x_hat``, ``W_hat`` the dequantised operands); a code
difference would break it by orders of magnitude.

Kernel: on the CPU the product is :func:`torch._int_mm`, PyTorch's int8 GEMM with int32
accumulation (several times faster than the float32 product on an x86 core at BERT-base
width). Elsewhere the same integers are multiplied exactly in float64 (an emulation, not an int8
kernel). Biases, LayerNorms, embeddings and the attention products stay in float.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from .qat import EmaAbsMax, LsqQuantizer, QuantLinear

INPUT_ROUNDINGS = ("divide", "reciprocal")
_INT8_MIN, _INT8_MAX = -128, 127
_Q8BERT_LEVELS = 127


def int8_matmul(a: Tensor, b: Tensor) -> Tensor:
    """Exact ``a @ b^T`` of int8 ``a`` ``(m, k)`` and int8 ``b`` ``(n, k)``: int32 ``(m, n)``.

    CPU: :func:`torch._int_mm`. Other devices: float64 products of the integers (exact:
    every partial sum is an integer far below ``2^53``), cast back to int32.
    """
    if a.device.type == "cpu":
        return torch._int_mm(a, b.t())
    return torch.matmul(a.double(), b.double().t()).to(torch.int32)


def _frozen(tensor: Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone(), requires_grad=False)


class Int8Linear(nn.Module):
    """``(..., in) -> (..., out)`` with int8 weight codes and a static int8 input scale.

    ``forward(x)``: ``codes_x = clamp(round(x / input_scale), input_min, input_max)`` as
    int8 (``round(x * (1 / input_scale))`` when ``input_rounding="reciprocal"``), then
    ``int8_matmul(codes_x, weight) * (input_scale * weight_scale) + bias`` in the dtype of
    ``x``.

    Args:
        weight: int8 codes ``(out, in)``.
        weight_scale: the weight's scale (a float or one-element tensor, finite, non-zero;
            a learned LSQ step may have turned negative, and the formulas hold as they are).
        input_scale: the input's static scale (the same).
        bias: ``(out,)`` float, or None.
        input_min, input_max: the input codes' range, inside ``[-128, 127]``.
        input_rounding: ``"divide"`` or ``"reciprocal"`` (see above).

    Parameters (frozen, ``requires_grad=False``; they are the stored model, so
    :func:`~attnzoo.compression.report.compression_report` counts and saves them):
    ``weight`` int8 ``(out, in)``, ``weight_scale`` and ``input_scale`` float32 ``(1,)``,
    ``bias``.
    """

    def __init__(
        self,
        weight: Tensor,
        weight_scale: Tensor | float,
        input_scale: Tensor | float,
        bias: Tensor | None = None,
        input_min: int = _INT8_MIN,
        input_max: int = _INT8_MAX,
        input_rounding: str = "divide",
    ) -> None:
        super().__init__()
        if not isinstance(weight, Tensor) or weight.dtype != torch.int8 or weight.dim() != 2:
            got = (
                f"{weight.dtype} of shape {tuple(weight.shape)}"
                if isinstance(weight, Tensor)
                else type(weight).__name__
            )
            raise TypeError(f"`weight` must be an int8 tensor (out, in), got {got}")
        if input_rounding not in INPUT_ROUNDINGS:
            raise ValueError(
                f"`input_rounding` must be one of {INPUT_ROUNDINGS}, got {input_rounding!r}"
            )
        if not _INT8_MIN <= input_min < input_max <= _INT8_MAX:
            raise ValueError(
                f"`input_min`, `input_max` must satisfy -128 <= min < max <= 127, got "
                f"{input_min}, {input_max}"
            )
        scales = {}
        for name, value in (("weight_scale", weight_scale), ("input_scale", input_scale)):
            scale = torch.as_tensor(value, dtype=torch.float32, device=weight.device).reshape(-1)
            if scale.numel() != 1 or not bool(torch.isfinite(scale).all() and (scale != 0).all()):
                raise ValueError(f"`{name}` must be one finite non-zero number, got {value}")
            scales[name] = scale
        if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
            raise ValueError(
                f"`bias` must have shape ({weight.shape[0]},) (out), got {tuple(bias.shape)}"
            )
        self.out_features, self.in_features = weight.shape
        self.input_min, self.input_max, self.input_rounding = input_min, input_max, input_rounding
        self.weight = _frozen(weight)
        self.weight_scale = _frozen(scales["weight_scale"])
        self.input_scale = _frozen(scales["input_scale"])
        self.bias = None if bias is None else _frozen(bias)

    @classmethod
    def from_quant_linear(cls, layer: QuantLinear) -> Int8Linear:
        """The int8 layer computing what the trained ``layer`` computes in eval mode.

        Raises:
            TypeError: ``layer`` is not a :class:`QuantLinear`.
            ValueError: its quantisers never saw data, or LSQ with more than 8 bits.
        """
        if not isinstance(layer, QuantLinear):
            raise TypeError(f"`layer` must be a QuantLinear, got {type(layer).__name__}")
        quantizer = layer.input_quantizer
        if not bool(quantizer.initialized):
            raise ValueError(
                "the QuantLinear's input range is unset: run the model in training mode on "
                "data before converting it"
            )
        if isinstance(quantizer, LsqQuantizer):
            if quantizer.bits > 8:
                raise ValueError(
                    f"LSQ layers need bits <= 8 to be stored as int8, got bits={quantizer.bits}"
                )
            input_scale = quantizer.step.detach()
            input_min, input_max, rounding = -quantizer.qn, quantizer.qp, "divide"
        elif isinstance(quantizer, EmaAbsMax):
            if float(quantizer.max_abs) <= 0:
                raise ValueError(
                    "the Q8BERT input range max|x| is 0 (every training input was zero); "
                    "there is no scale to quantise with"
                )
            # symmetric_fake_quantize's scale, max|x| / levels, in the float32 it runs in.
            input_scale = torch.tensor(float(quantizer.max_abs) / quantizer.levels)
            input_min, input_max = -quantizer.levels, quantizer.levels
            rounding = "reciprocal"
        else:
            raise TypeError(f"unknown input quantiser {type(quantizer).__name__}")
        if layer.weight_quantizer is not None and not bool(layer.weight_quantizer.initialized):
            raise ValueError(
                "the QuantLinear's weight step is unset: run the model in training mode on "
                "data before converting it"
            )
        with torch.no_grad():
            weight_hat = layer.quantized_weight().float()
            if layer.weight_quantizer is not None:
                weight_scale = layer.weight_quantizer.step.detach().float()
            else:
                max_abs = float(layer.weight.detach().abs().max())
                weight_scale = torch.tensor(max_abs / _Q8BERT_LEVELS if max_abs > 0 else 1.0)
            # weight_hat holds code * scale rounded once; dividing back is within
            # 128 * 2^-23 of the integer code, so the rounding recovers it exactly.
            codes = torch.round(weight_hat / weight_scale.to(weight_hat.device))
            codes = codes.clamp(_INT8_MIN, _INT8_MAX).to(torch.int8)
        bias = None if layer.bias is None else layer.bias.detach()
        return cls(codes, weight_scale, input_scale, bias, input_min, input_max, rounding)

    def quantize_input(self, x: Tensor) -> Tensor:
        """int8 codes of ``x`` ``(..., in)`` (same shape), computed in the dtype of ``x``."""
        scale = self.input_scale.to(x.dtype)
        scaled = x / scale if self.input_rounding == "divide" else x * (1.0 / scale)
        return torch.round(scaled).clamp(self.input_min, self.input_max).to(torch.int8)

    def dequantized_weight(self) -> Tensor:
        """The float weight the codes stand for ``(out, in)``: ``codes * weight_scale``."""
        return self.weight.float() * self.weight_scale

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"`x` must have {self.in_features} features in its last axis, got "
                f"shape {tuple(x.shape)}"
            )
        codes = self.quantize_input(x).reshape(-1, self.in_features)
        accumulated = int8_matmul(codes, self.weight)
        out = accumulated.to(torch.float32) * (self.input_scale * self.weight_scale)
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"input_range=[{self.input_min}, {self.input_max}], "
            f"input_rounding={self.input_rounding!r}"
        )


def convert_qat(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every :class:`QuantLinear` of a QAT-trained ``model`` by an :class:`Int8Linear`.

    Args:
        model: a model prepared with :func:`~attnzoo.compression.qat.prepare_qat` and
            trained (its quantisers initialised).
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        the converted model, in eval mode; call it as the original. Its outputs equal the
        fake-quantised model's (eval mode) up to float32 rounding (see the module
        docstring); layers that were not quantised stay as they were.

    Raises:
        TypeError: ``model`` is not a module.
        ValueError: ``model`` has no QuantLinear, or one whose quantisers never saw data.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    if not any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError(
            f"`model` ({type(model).__name__}) has no QuantLinear to convert: prepare it with "
            "prepare_qat and train it first"
        )
    target = model if inplace else copy.deepcopy(model)
    layers = [(n, m) for n, m in target.named_modules() if isinstance(m, QuantLinear)]
    converted = [(name, Int8Linear.from_quant_linear(layer)) for name, layer in layers]
    for name, layer in converted:
        parent_name, _, child = name.rpartition(".")
        setattr(target.get_submodule(parent_name) if parent_name else target, child, layer)
    return target.eval()


__all__ = ["INPUT_ROUNDINGS", "Int8Linear", "convert_qat", "int8_matmul"]
