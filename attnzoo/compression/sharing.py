"""Cross-layer weight sharing: turn an encoder into an ALBERT-style shared one.

ALBERT (Lan et al. 2020) applies one layer's weights at every depth: all of the layer, the
attention only, or the feed-forward network only (its Table 4 compares the three). Here a
trained or fresh encoder is converted in place: the chosen sub-module of every layer becomes
the same module object, initialised from the first layer or from the mean of all layers,
so the parameters are stored once and their gradient is the sum over the depths that use
them. Fine-tune the result with any loop
(:func:`~attnzoo.transformers_zoo.training.fit`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..transformers_zoo.layers import EncoderLayer

SHARING_SCOPES = ("all", "attention", "ffn")
SHARING_INITS = ("first", "mean")


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The first ``nn.ModuleList`` of :class:`EncoderLayer` in ``model`` (e.g. a zoo BERT's
    ``bert.encoder.layers``), or ``model`` itself if it is one."""
    candidates = [model, *model.modules()] if isinstance(model, nn.ModuleList) else model.modules()
    for module in candidates:
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and all(isinstance(layer, EncoderLayer) for layer in module)
        ):
            return module
    raise ValueError(f"`model` ({type(model).__name__}) holds no ModuleList of EncoderLayer")


def _mean_module(modules: list[nn.Module]) -> nn.Module:
    """A copy of ``modules[0]`` whose parameters are the element-wise means of all."""
    shared = copy.deepcopy(modules[0])
    states = [dict(m.named_parameters()) for m in modules]
    with torch.no_grad():
        for name, param in shared.named_parameters():
            param.copy_(torch.stack([state[name].detach() for state in states]).mean(0))
    return shared


def share_layers(model: nn.Module, scope: str = "all", init: str = "first") -> nn.Module:
    """Make every encoder layer of ``model`` use one set of weights, in place.

    Args:
        model: a model holding encoder layers (see :func:`encoder_layers`).
        scope: ``"all"`` (the whole layer, norms included: ALBERT's default),
            ``"attention"`` (the self-attention module) or ``"ffn"`` (the feed-forward
            module); the rest stays per layer.
        init: ``"first"`` (the first layer's weights) or ``"mean"`` (the average over the
            layers, for converting a trained model).

    Returns:
        the shared module (a layer, an attention or a feed-forward module).
    """
    if scope not in SHARING_SCOPES:
        raise ValueError(f"`scope` must be one of {SHARING_SCOPES}, got {scope!r}")
    if init not in SHARING_INITS:
        raise ValueError(f"`init` must be one of {SHARING_INITS}, got {init!r}")
    layers = encoder_layers(model)
    if scope == "all":
        parts: list[nn.Module] = list(layers)
    else:
        parts = [getattr(layer, scope) for layer in layers]
        if len({type(p) for p in parts}) != 1:
            raise ValueError(f"the layers' `{scope}` modules differ in type; they cannot share")
    shared = parts[0] if init == "first" else _mean_module(parts)
    for index, layer in enumerate(list(layers)):
        if scope == "all":
            layers[index] = shared
        else:
            setattr(layer, scope, shared)
    return shared


__all__ = ["SHARING_INITS", "SHARING_SCOPES", "encoder_layers", "share_layers"]
