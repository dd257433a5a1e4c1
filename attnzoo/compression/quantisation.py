"""Dynamic int8 quantisation of the zoo models (post-training, CPU inference).

:func:`quantize_dynamic_int8` runs :func:`torch.ao.quantization.quantize_dynamic` over every
:class:`torch.nn.Linear`: weights are stored as int8 with one scale per tensor, activations
are quantised on the fly per batch, and the matrix products run in int8. The zoo attention
keeps its query/key/value/out projections as plain ``nn.Linear`` modules, so they are
quantised with the feed-forward layers (tools that look for ``nn.MultiheadAttention`` and its
fused ``in_proj_weight`` skip or break on it). The attention products themselves, the
LayerNorms and the embeddings stay in float; so does a masked-LM output layer that reuses the
word-embedding table through ``F.linear`` (it is not a Linear module).

Quantisation-aware training lives in :mod:`attnzoo.compression.qat`.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .qat_conversion import Int8Linear
from .report import effective_tensors


def quantized_engine() -> str:
    """The quantised-kernel backend to use on this CPU: the current one if supported, else
    the first of x86, fbgemm, onednn, qnnpack that is; raises if none is."""
    supported = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine in supported and torch.backends.quantized.engine != "none":
        return torch.backends.quantized.engine
    for engine in ("x86", "fbgemm", "onednn", "qnnpack"):
        if engine in supported:
            return engine
    raise RuntimeError(
        f"no quantised CPU backend in this PyTorch build (supported engines: {supported})"
    )


def quantize_dynamic_int8(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Dynamic int8 quantisation of every ``nn.Linear`` in ``model`` (CPU).

    Args:
        model: a float32 model on the CPU (e.g. a zoo BERT); it is put in eval mode.
        inplace: modify ``model`` instead of a deep copy.

    Returns:
        the quantised model (eval mode); call it as the original.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    for name, param in model.named_parameters():
        if param.device.type != "cpu" or param.dtype != torch.float32:
            raise ValueError(
                f"`model` must be float32 on the CPU for dynamic int8 quantisation, got "
                f"{param.dtype} on {param.device} at {name!r}"
            )
    torch.backends.quantized.engine = quantized_engine()
    target = model if inplace else copy.deepcopy(model)
    target.eval()
    with warnings.catch_warnings():
        # The eager-mode API warns that it is deprecated in favour of torchao (not a
        # dependency); it still ships and is the int8 path that needs nothing beyond PyTorch.
        warnings.filterwarnings("ignore", message=r".*deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*deprecated", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(
            target, {nn.Linear}, dtype=torch.qint8, inplace=True
        )


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the weight matrices of the linear layers (float or int8; a quantised
    weight counts its int8 codes plus its scale and zero point, an :class:`Int8Linear` its
    codes plus its weight and input scales), biases excluded."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight = module.weight()
            extra = 8 if weight.qscheme() == torch.per_tensor_affine else 8 * weight.shape[0]
            total += weight.numel() * weight.element_size() + extra
        elif isinstance(module, Int8Linear):  # int8 codes plus two float32 scales
            total += module.weight.numel() * module.weight.element_size() + 8
        elif isinstance(module, nn.Linear):
            tensors = effective_tensors(module)
            total += tensors["weight"].numel() * tensors["weight"].element_size()
    return total


__all__ = ["linear_weight_bytes", "quantize_dynamic_int8", "quantized_engine"]
