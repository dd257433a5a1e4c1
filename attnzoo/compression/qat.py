"""Quantisation-aware training: LSQ learned step sizes and Q8BERT's symmetric 8-bit.

Both replace Linear layers by :class:`QuantLinear`, which fake-quantises its input and its
weight in the forward (quantise, then dequantise, in float) so that training sees the
rounding error, with straight-through gradients for the rounding:

* **LSQ** (Esser et al. 2020, "Learned Step Size Quantization"): ``v_hat = round(clip(v / s,
  -Q_N, Q_P)) * s`` with a learned step ``s`` per tensor, initialised to
  ``2 * mean(|v|) / sqrt(Q_P)`` on the first batch, and its gradient
  ``d v_hat / d s = round(v / s) - v / s`` inside the range, ``-Q_N`` below, ``Q_P`` above,
  scaled by ``g = 1 / sqrt(Q_P * numel)`` (``numel`` = the weight's entries, or the
  features of one example for activations);
* **Q8BERT** (Zafrir et al. 2019): symmetric linear 8-bit, ``scale = max|v| / 127``, from
  the weight itself and, for activations, from an exponential moving average of
  ``max|x|`` over training batches (frozen in eval mode).

Bits: signed ``b``-bit gives ``Q_N = 2^(b-1)``, ``Q_P = 2^(b-1) - 1`` (LSQ); Q8BERT clips to
``[-127, 127]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from ..attention.validation import check_int

QAT_METHODS = ("lsq", "q8bert")


class LsqQuantize(torch.autograd.Function):
    """LSQ fake quantisation ``round(clip(v / s, -qn, qp)) * s`` with LSQ's gradients.

    ``forward(v, step, qn, qp, grad_scale)``: ``v`` any shape, ``step`` a positive scalar
    tensor. Backward: ``dv`` straight-through inside the range (0 outside); ``dstep`` as in
    the module docstring, times ``grad_scale``.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, v: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float
    ) -> Tensor:
        scaled = v / step
        ctx.save_for_backward(scaled)
        ctx.bounds = (qn, qp, grad_scale, step.shape)  # type: ignore[attr-defined]
        return torch.round(scaled.clamp(-qn, qp)) * step

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, None, None, None]:
        (scaled,) = ctx.saved_tensors  # type: ignore[attr-defined]
        qn, qp, grad_scale, step_shape = ctx.bounds  # type: ignore[attr-defined]
        below, above = scaled < -qn, scaled > qp
        inside = ~(below | above)
        grad_v = grad * inside
        step_grad = torch.where(
            below,
            torch.full_like(scaled, -qn),
            torch.where(above, torch.full_like(scaled, qp), torch.round(scaled) - scaled),
        )
        grad_step = ((grad * step_grad).sum() * grad_scale).reshape(step_shape)
        return grad_v, grad_step, None, None, None


def signed_range(bits: int) -> tuple[int, int]:
    """``(Q_N, Q_P) = (2^(bits-1), 2^(bits-1) - 1)`` of signed ``bits``-bit integers."""
    check_int(bits, "bits", minimum=2)
    return 2 ** (bits - 1), 2 ** (bits - 1) - 1


class LsqQuantizer(nn.Module):
    """LSQ fake quantiser of one tensor with a learned step size.

    ``forward(v)``: same shape as ``v``. The step ``(1,)`` is initialised on the first call
    from that tensor (``2 * mean|v| / sqrt(Q_P)``) and then learned, kept at least float32's
    epsilon (an optimiser step can push it below zero). ``per_example`` makes
    the gradient scale use the features of one example (activations) instead of all
    entries (weights).

    Args:
        bits: signed integer width (>= 2).
        per_example: activations (True) or a weight (False).
    """

    initialized: Tensor

    def __init__(self, bits: int = 8, per_example: bool = False) -> None:
        super().__init__()
        self.qn, self.qp = signed_range(bits)
        self.bits, self.per_example = bits, per_example
        self.step = nn.Parameter(torch.ones(1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, v: Tensor) -> Tensor:
        if not bool(self.initialized):
            with torch.no_grad():
                init = 2 * v.detach().abs().mean() / math.sqrt(self.qp)
                self.step.copy_(init.clamp_min(1e-8).reshape(1))
                self.initialized.fill_(True)
        else:
            # An optimiser step can push the step size to 0 or below; like PyTorch's
            # learnable fake quantiser, keep it at least float32's epsilon.
            with torch.no_grad():
                self.step.clamp_(min=torch.finfo(torch.float32).eps)
        numel = v.shape[-1] if self.per_example else v.numel()
        grad_scale = 1.0 / math.sqrt(self.qp * numel)
        step = self.step.to(v.dtype)
        return LsqQuantize.apply(v, step, self.qn, self.qp, grad_scale)  # type: ignore[no-any-return]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_example={self.per_example}"


def symmetric_fake_quantize(v: Tensor, max_abs: Tensor | float, levels: int = 127) -> Tensor:
    """Q8BERT's quantiser: ``round(clip(v / scale, -levels, levels)) * scale`` with
    ``scale = max_abs / levels``; straight-through gradient inside the range (PyTorch's
    :func:`torch.fake_quantize_per_tensor_affine`)."""
    scale = float(max_abs) / levels
    if scale <= 0:
        return v
    return torch.fake_quantize_per_tensor_affine(v, scale, 0, -levels, levels)


class EmaAbsMax(nn.Module):
    """Exponential moving average of ``max|x|`` over training batches (Q8BERT's activation
    range); the first batch sets it, eval mode reads it without updating.

    ``forward(x)`` returns ``x`` fake-quantised with :func:`symmetric_fake_quantize`.

    Args:
        decay: EMA decay in ``[0, 1)`` (Q8BERT: 0.9999).
        levels: 127 for 8 bits.
    """

    max_abs: Tensor
    initialized: Tensor

    def __init__(self, decay: float = 0.9999, levels: int = 127) -> None:
        super().__init__()
        if not 0 <= decay < 1:
            raise ValueError(f"`decay` must be in [0, 1), got {decay}")
        self.decay, self.levels = decay, levels
        self.register_buffer("max_abs", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            with torch.no_grad():
                current = x.detach().abs().max().to(self.max_abs.dtype)
                if bool(self.initialized):
                    self.max_abs.mul_(self.decay).add_((1 - self.decay) * current)
                else:
                    self.max_abs.copy_(current)
                    self.initialized.fill_(True)
        if not bool(self.initialized):
            raise RuntimeError(
                "the activation range is unset: run the model in training mode on data first"
            )
        return symmetric_fake_quantize(x, self.max_abs, self.levels)


class QuantLinear(nn.Module):
    """A Linear layer ``(..., in) -> (..., out)`` trained with fake-quantised input and
    weight (bias kept in float).

    Args:
        linear: the layer to take ``weight`` and ``bias`` from (shared, not copied).
        method: ``"lsq"`` or ``"q8bert"``.
        bits: integer width (LSQ; Q8BERT is 8-bit).
        ema_decay: Q8BERT's activation-range EMA decay.

    Parameters ``weight``, ``bias`` and, for LSQ, ``weight_quantizer.step`` and
    ``input_quantizer.step``.
    """

    def __init__(
        self, linear: nn.Linear, method: str = "lsq", bits: int = 8, ema_decay: float = 0.9999
    ) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"`linear` must be an nn.Linear, got {type(linear).__name__}")
        if method not in QAT_METHODS:
            raise ValueError(f"`method` must be one of {QAT_METHODS}, got {method!r}")
        if method == "q8bert" and bits != 8:
            raise ValueError(f"`bits` must be 8 for method='q8bert', got {bits}")
        self.in_features, self.out_features, self.method = (
            linear.in_features,
            linear.out_features,
            method,
        )
        self.weight, self.bias = linear.weight, linear.bias
        self.input_quantizer: nn.Module
        if method == "lsq":
            self.weight_quantizer: LsqQuantizer | None = LsqQuantizer(bits)
            self.input_quantizer = LsqQuantizer(bits, per_example=True)
        else:
            self.weight_quantizer = None
            self.input_quantizer = EmaAbsMax(ema_decay)
        self.to(device=linear.weight.device)

    def quantized_weight(self) -> Tensor:
        """The fake-quantised weight the forward uses ``(out, in)``."""
        if self.weight_quantizer is not None:
            return self.weight_quantizer(self.weight)  # type: ignore[no-any-return]
        return symmetric_fake_quantize(self.weight, self.weight.detach().abs().max())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_quantizer(x), self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"method={self.method!r}"
        )


def prepare_qat(
    model: nn.Module,
    method: str = "lsq",
    bits: int = 8,
    exclude: Iterable[str] = (),
    ema_decay: float = 0.9999,
) -> list[QuantLinear]:
    """Replace the Linear layers of ``model`` (except ``exclude`` names/prefixes) by
    :class:`QuantLinear`, in place; returns them. Train as usual afterwards."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    skipped = tuple(exclude)
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not any(name == s or name.startswith(f"{s}.") for s in skipped)
    ]
    if not chosen:
        raise ValueError(f"`model` ({type(model).__name__}) has no Linear layer to quantise")
    layers = []
    for name, linear in chosen:
        layer = QuantLinear(linear, method, bits, ema_decay)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
        layers.append(layer)
    return layers


__all__ = [
    "QAT_METHODS",
    "EmaAbsMax",
    "LsqQuantize",
    "LsqQuantizer",
    "QuantLinear",
    "prepare_qat",
    "signed_range",
    "symmetric_fake_quantize",
]
