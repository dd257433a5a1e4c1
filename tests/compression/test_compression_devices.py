"""The structural methods on every available device (CPU always, CUDA where present)."""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.attention.multi_head import MultiHeadAttention
from attnzoo.compression import (
    HeadGates,
    LowRankLinear,
    QuantLinear,
    TopKBinarizer,
    magnitude_prune,
    nm_mask,
    prune_ffn_neurons,
    prune_heads,
)
from attnzoo.transformers_zoo.feed_forward import FeedForward


def test_head_and_neuron_pruning_stay_on_the_device(device: torch.device) -> None:
    attention = MultiHeadAttention(16, 4, normalizer="entmax", learn_alpha=True).to(device)
    x = torch.randn(2, 5, 16, device=device)
    with HeadGates(attention) as gates, torch.no_grad():
        gates.gates[0][1] = 0
        expected = attention(x)
    prune_heads(attention, [1])
    torch.testing.assert_close(attention(x), expected)
    assert attention.query.weight.device.type == device.type
    ffn = FeedForward(16, 12, "geglu").to(device)
    prune_ffn_neurons(ffn, [0, 3])
    assert ffn(x).shape == x.shape and ffn.output.weight.device.type == device.type


def test_masks_factors_and_quantisers_stay_on_the_device(device: torch.device) -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).to(device)
    magnitude_prune(model, 0.5, scope="global")
    assert model[0].weight_mask.device.type == device.type
    assert nm_mask(model[2].weight).device.type == device.type
    x = torch.randn(3, 8, device=device)
    low = LowRankLinear.from_linear(model[2], rank=2)
    assert low(x).device.type == device.type
    scores = torch.randn(4, 4, device=device)
    assert TopKBinarizer.apply(scores, 0.5).sum() == 8
    layer = QuantLinear(nn.Linear(8, 4).to(device), "lsq", bits=4)
    out = layer(x)
    out.sum().backward()
    assert out.device.type == device.type and layer.weight_quantizer.step.grad is not None
