"""LayerDrop (Fan et al. 2020, "Reducing Transformer Depth on Demand with Structured
Dropout"): drop whole layers at random in training, keep any subset at inference.

:func:`apply_layerdrop` wraps every layer of an encoder's ``ModuleList`` in
:class:`LayerDrop`, which in training mode skips its layer with probability ``p`` (the
residual stream passes through unchanged) and in eval mode always runs it. After training,
:func:`select_layers` keeps a subset physically (the model gets shallower and faster), and
:func:`every_other_layer` is the paper's pruning rule for a rate ``p``: drop the layers at
depth ``d`` (counted from 1) with ``d = 0 mod round(1 / p)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.validation import check_int, check_probability
from .sharing import encoder_layers


class LayerDrop(nn.Module):
    """A layer skipped with probability ``p`` in training mode.

    ``forward(x, *args, **kwargs)`` is ``layer(x, *args, **kwargs)``, or, when skipped,
    ``x`` itself (with all-zero attention weights ``(batch, heads, n, n)`` if
    ``output_attentions=True`` was asked). Eval mode never skips.

    Args:
        layer: an encoder layer taking ``x`` ``(batch, n, dim)`` first.
        p: drop probability in ``[0, 1)``.
    """

    def __init__(self, layer: nn.Module, p: float) -> None:
        super().__init__()
        check_probability(p, "p")
        self.layer, self.p = layer, p

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.training and self.p > 0 and float(torch.rand(())) < self.p:
            if kwargs.get("output_attentions"):
                heads = getattr(getattr(self.layer, "attention", None), "heads", 1)
                n = x.shape[1]
                return x, x.new_zeros(x.shape[0], heads, n, n)
            return x
        return self.layer(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def apply_layerdrop(model: nn.Module, p: float) -> nn.ModuleList:
    """Wrap every layer of ``model``'s encoder (see
    :func:`~attnzoo.compression.sharing.encoder_layers`) in :class:`LayerDrop`, in place;
    returns the layer list."""
    check_probability(p, "p")
    layers = encoder_layers(model)
    for index, layer in enumerate(list(layers)):
        layers[index] = LayerDrop(layer, p)
    return layers


def remove_layerdrop(model: nn.Module) -> None:
    """Undo :func:`apply_layerdrop`: put the wrapped layers back."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for index, layer in enumerate(list(module)):
                if isinstance(layer, LayerDrop):
                    module[index] = layer.layer


def every_other_layer(depth: int, p: float = 0.5) -> list[int]:
    """Indices (from 0) of the layers Fan et al.'s "every other" rule keeps at rate ``p``:
    depth ``d = index + 1`` is dropped when ``d % round(1 / p) == 0`` (``p = 0.5`` keeps
    layers 0, 2, 4, ...)."""
    check_int(depth, "depth")
    if not 0 < p < 1:
        raise ValueError(f"`p` must be in (0, 1), got {p}")
    period = max(2, round(1 / p))
    return [i for i in range(depth) if (i + 1) % period]


def select_layers(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep only the encoder layers ``keep`` (indices, in order), in place.

    The depth recorded in configs follows: a ``StackConfig``-like ``depth`` on the layer
    list's owner and a ``num_hidden_layers`` on any module's ``config`` (so a zoo BERT saves
    and reloads at its new depth). :class:`LayerDrop` wrappers are removed.
    """
    remove_layerdrop(model)
    layers = encoder_layers(model)
    keep = list(keep)
    if not keep:
        raise ValueError("`keep` must name at least one layer")
    if sorted(set(keep)) != keep or not all(0 <= i < len(layers) for i in keep):
        raise ValueError(f"`keep` must be increasing indices in [0, {len(layers)}), got {keep}")
    kept = [layers[i] for i in keep]
    while len(layers):
        del layers[len(layers) - 1]
    layers.extend(kept)
    replaced: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        # A dataclass class (not an instance) holds no depth of this model to update.
        if not dataclasses.is_dataclass(config) or isinstance(config, type):
            continue
        if id(config) not in replaced:
            changes = {}
            if hasattr(config, "num_hidden_layers"):
                changes["num_hidden_layers"] = len(keep)
            if hasattr(config, "depth") and getattr(module, "layers", None) is layers:
                changes["depth"] = len(keep)
            replaced[id(config)] = dataclasses.replace(config, **changes) if changes else config
        module.config = replaced[id(config)]


__all__ = [
    "LayerDrop",
    "apply_layerdrop",
    "every_other_layer",
    "remove_layerdrop",
    "select_layers",
]
