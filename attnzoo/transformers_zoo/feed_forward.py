"""The position-wise feed-forward sub-layer of a transformer block.

``FeedForward(x) = output(dropout(act(intermediate(x))))``: two linear maps applied to every
position independently (Vaswani et al. 2017, eq. 2), with ReLU, GELU (exact or its tanh
approximation) or GEGLU (Shazeer 2020, "GLU Variants Improve Transformer"). GEGLU gates the
hidden units with a second projection, ``GELU(x W) * (x V)``, so its ``intermediate`` map
projects to ``2 * hidden_dim`` features: the first half goes through GELU, the second is the
linear gate.

Parameter names follow Hugging Face ``modeling_bert.py`` (per layer)::

    intermediate.dense.{weight,bias} -> intermediate.{weight,bias}
    output.dense.{weight,bias}       -> output.{weight,bias}

and those of :class:`torch.nn.TransformerEncoderLayer` map as ``linear1 -> intermediate``,
``linear2 -> output``. (BERT's ``output.LayerNorm`` belongs to the layer, not to this module.)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.projection import project
from ..attention.validation import check_int, check_min_rank, check_probability, check_size

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "geglu")
"""Names accepted by :class:`FeedForward` ``activation``."""


def activate(x: Tensor, name: str) -> Tensor:
    """The element-wise activation ``name``: ``"relu"``, ``"gelu"`` (exact, erf) or
    ``"gelu_tanh"`` (tanh approximation, Hugging Face's ``gelu_new``)."""
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"`name` must be 'relu', 'gelu' or 'gelu_tanh', got {name!r}")


class FeedForward(nn.Module):
    """Two-layer position-wise feed-forward network.

    Args:
        dim: input and output width.
        hidden_dim: hidden width; default ``4 * dim``.
        activation: ``"gelu"`` (exact, erf), ``"gelu_tanh"`` (tanh approximation, GPT-2),
            ``"relu"`` (Vaswani et al. 2017) or ``"geglu"`` (GELU-gated linear unit).
        dropout: dropout on the hidden activations, in [0, 1) (the residual dropout after
            ``output`` belongs to the layer).
        bias: biases in both linear maps.

    Parameters: ``intermediate`` (Linear ``dim -> hidden_dim``, ``dim -> 2 * hidden_dim`` for
    GEGLU) and ``output`` (Linear ``hidden_dim -> dim``); PyTorch's default initialisation.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        activation: str = "gelu",
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        check_int(dim, "dim")
        hidden_dim = 4 * dim if hidden_dim is None else check_int(hidden_dim, "hidden_dim")
        if activation not in ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {ACTIVATIONS}, got {activation!r}")
        check_probability(dropout, "dropout")
        self.dim, self.hidden_dim, self.activation = dim, hidden_dim, activation
        width = 2 * hidden_dim if activation == "geglu" else hidden_dim
        self.intermediate = nn.Linear(dim, width, bias=bias)
        self.output = nn.Linear(hidden_dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, seq, dim) -> (batch, seq, dim)`` (any leading axes work)."""
        check_min_rank(x, 1, "x", "(..., dim)")
        check_size(x, -1, self.dim, "x", "dim")
        hidden = self._activate(project(x, self.intermediate))
        return project(self.dropout(hidden), self.output)

    def _activate(self, h: Tensor) -> Tensor:
        if self.activation == "geglu":
            value, gate = h.chunk(2, dim=-1)
            return F.gelu(value) * gate
        return activate(h, self.activation)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden_dim={self.hidden_dim}, activation={self.activation!r}"


__all__ = ["ACTIVATIONS", "FeedForward", "activate"]
