"""Feed-forward neuron pruning: physical removal and gradient importance."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.compression import (
    count_parameters,
    feed_forward_modules,
    ffn_neuron_importance,
    prune_ffn_neurons,
    prune_ffn_neurons_by_importance,
)
from attnzoo.transformers_zoo.feed_forward import FeedForward


@pytest.mark.parametrize("activation", ["relu", "gelu", "geglu"])
def test_pruned_ffn_equals_zeroing_the_units(activation: str) -> None:
    ffn = FeedForward(10, 13, activation).double()
    reference = FeedForward(10, 13, activation).double()
    reference.load_state_dict(ffn.state_dict())
    with torch.no_grad():
        reference.output.weight[:, [0, 5, 12]] = 0
    prune_ffn_neurons(ffn, [12, 0, 5])
    assert ffn.hidden_dim == 10 and ffn.output.weight.shape == (10, 10)
    width = 20 if activation == "geglu" else 10
    assert ffn.intermediate.weight.shape == (width, 10)
    x = torch.randn(3, 7, 10, dtype=torch.float64)
    torch.testing.assert_close(ffn(x), reference(x))


def test_importance_is_the_gate_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(FeedForward(6, 5, "gelu")).double()
    x, target = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)

    def loss_fn(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(m(batch), target)

    (scores,) = ffn_neuron_importance(model, loss_fn, [x])
    ffn = model[0]
    hidden = F.gelu(ffn.intermediate(x)).detach()
    residual = (ffn.output(hidden) - target).detach()
    # dL/dxi_j = sum over rows of (2/N) * residual . W_out[:, j] * h_j
    expected = (2 / residual.numel()) * ((residual @ ffn.output.weight.detach()) * hidden).sum(0)
    torch.testing.assert_close(scores, expected.abs())
    assert all(p.grad is None for p in model.parameters())


def test_bert_ffn_pruning_by_importance(tiny_bert: nn.Module, padded_batch: Any) -> None:
    ids, mask = padded_batch
    before = count_parameters(tiny_bert)
    removed = prune_ffn_neurons_by_importance(
        tiny_bert,
        0.5,
        lambda m, b: m(b[0], attention_mask=b[1], labels=torch.tensor([0, 1, 2])).loss,
        [(ids, mask)],
    )
    assert [len(v) for v in removed.values()] == [24, 24]
    assert [m.hidden_dim for _, m in feed_forward_modules(tiny_bert)] == [24, 24]
    # Each unit: one row + bias of intermediate (32 + 1), one column of output (32).
    assert before - count_parameters(tiny_bert) == 48 * 65
    assert torch.isfinite(tiny_bert(ids, attention_mask=mask).logits).all()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda f: prune_ffn_neurons(f, range(8)), ValueError, "at least one"),
        (lambda f: prune_ffn_neurons(f, [8]), ValueError, r"\[0, 8\)"),
        (lambda f: prune_ffn_neurons(f, ["1"]), TypeError, "ints"),
        (lambda f: prune_ffn_neurons(nn.Linear(2, 2), [0]), TypeError, "FeedForward"),
        (
            lambda f: ffn_neuron_importance(nn.Linear(2, 2), lambda m, b: m(b).sum(), []),
            ValueError,
            "no FeedForward",
        ),
        (lambda f: ffn_neuron_importance(f, lambda m, b: m(b).sum(), []), ValueError, "batches"),
        (
            lambda f: prune_ffn_neurons_by_importance(f, 1.0, lambda m, b: m(b).sum(), []),
            ValueError,
            "fraction",
        ),
    ],
)
def test_bad_arguments(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(FeedForward(4, 8))
