"""ALBERT-style cross-layer sharing and LayerDrop on the zoo BERT."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from attnzoo.compression import (
    LayerDrop,
    apply_layerdrop,
    count_parameters,
    every_other_layer,
    remove_layerdrop,
    select_layers,
    share_layers,
)
from attnzoo.transformers_zoo.bert import BertConfig, BertForSequenceClassification
from attnzoo.transformers_zoo.training import TrainConfig, fit


@pytest.mark.parametrize("scope", ["all", "attention", "ffn"])
def test_shared_parameters_are_stored_once(tiny_bert: nn.Module, scope: str) -> None:
    layer = tiny_bert.bert.encoder.layers[0]
    part = layer if scope == "all" else getattr(layer, scope)
    size = sum(p.numel() for p in part.parameters())
    before = count_parameters(tiny_bert)
    share_layers(tiny_bert, scope)
    assert count_parameters(tiny_bert) == before - size  # 2 layers -> one copy saved
    first, second = tiny_bert.bert.encoder.layers
    if scope == "all":
        assert first is second
    else:
        assert getattr(first, scope) is getattr(second, scope)
        assert first.attention_norm is not second.attention_norm


def test_shared_gradient_is_the_sum_over_depths(tiny_bert: nn.Module, padded_batch: Any) -> None:
    ids, mask = padded_batch
    shared = copy.deepcopy(tiny_bert)
    share_layers(shared, "attention")
    # The same function unshared: both layers hold copies of layer 0's attention.
    unshared = copy.deepcopy(tiny_bert)
    unshared.bert.encoder.layers[1].attention.load_state_dict(
        unshared.bert.encoder.layers[0].attention.state_dict()
    )
    labels = torch.tensor([0, 2, 1])
    shared(ids, attention_mask=mask, labels=labels).loss.backward()
    unshared(ids, attention_mask=mask, labels=labels).loss.backward()
    layers = unshared.bert.encoder.layers
    expected = layers[0].attention.query.weight.grad + layers[1].attention.query.weight.grad
    got = shared.bert.encoder.layers[0].attention.query.weight.grad
    torch.testing.assert_close(got, expected)


def test_mean_init_averages_and_fine_tuning_keeps_layers_tied(tiny_bert: nn.Module) -> None:
    layers = tiny_bert.bert.encoder.layers
    mean = (layers[0].ffn.output.weight + layers[1].ffn.output.weight).detach() / 2
    shared = share_layers(tiny_bert, "ffn", init="mean")
    torch.testing.assert_close(shared.output.weight.detach(), mean)
    ids, labels = torch.randint(1, 53, (8, 6)), torch.randint(0, 3, (8,))
    history = fit(
        tiny_bert,
        lambda m, b: m(b[0], labels=b[1]).loss,
        lambda step: (ids, labels),
        TrainConfig(steps=20, lr=3e-3, progress=False),
    )
    assert history.losses[-1] < history.losses[0]
    assert layers[0].ffn is layers[1].ffn


def test_layerdrop_drops_layers_in_training_only(tiny_bert: nn.Module) -> None:
    calls = [0, 0]
    layers = apply_layerdrop(tiny_bert, 0.5)
    for i, wrapper in enumerate(layers):
        assert isinstance(wrapper, LayerDrop)
        wrapper.layer.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    ids = torch.randint(1, 53, (2, 5))
    tiny_bert.train()
    torch.manual_seed(0)
    for _ in range(200):
        tiny_bert(ids)
    assert all(60 < c < 140 for c in calls), calls  # ~ Binomial(200, 0.5)
    out = tiny_bert(ids, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 5, 5)
    tiny_bert.eval()
    calls[:] = [0, 0]
    tiny_bert(ids)
    assert calls == [1, 1]
    remove_layerdrop(tiny_bert)
    assert not any(isinstance(m, LayerDrop) for m in tiny_bert.modules())


def test_every_other_layer_rule() -> None:
    assert every_other_layer(6, 0.5) == [0, 2, 4]
    assert every_other_layer(6, 0.25) == [0, 1, 2, 4, 5]
    assert every_other_layer(5, 0.5) == [0, 2, 4]


def test_selected_layers_compute_the_subnetwork_and_save_at_their_depth(
    make_config: Any, padded_batch: Any, tmp_path: Any
) -> None:
    ids, mask = padded_batch
    torch.manual_seed(0)
    model = BertForSequenceClassification(make_config(num_hidden_layers=4)).eval()
    layers = list(model.bert.encoder.layers)
    with torch.no_grad():
        x = model.bert.embeddings(ids)
        for i in (0, 2):
            x = layers[i](x, mask=mask)
        expected = model.classifier(torch.tanh(model.bert.pooler.dense(x[:, 0])))
    apply_layerdrop(model, 0.5)
    select_layers(model, every_other_layer(4, 0.5))
    assert len(model.bert.encoder.layers) == 2 and model.config.num_hidden_layers == 2
    assert model.bert.encoder.config.depth == 2
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, expected)
    model.save_pretrained(tmp_path)
    again = BertForSequenceClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(again(ids, attention_mask=mask).logits, expected)


def test_select_layers_leaves_a_config_class_alone(tiny_bert: nn.Module) -> None:
    class Wrapper(nn.Module):
        config = BertConfig  # a dataclass class, not a config instance

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

    select_layers(Wrapper(tiny_bert), [1])
    assert Wrapper.config is BertConfig
    assert len(tiny_bert.bert.encoder.layers) == 1 and tiny_bert.config.num_hidden_layers == 1


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: share_layers(m, "norms"), ValueError, "scope"),
        (lambda m: share_layers(m, init="last"), ValueError, "init"),
        (lambda m: share_layers(nn.Linear(2, 2)), ValueError, "EncoderLayer"),
        (lambda m: apply_layerdrop(m, 1.0), ValueError, "`p`"),
        (lambda m: select_layers(m, []), ValueError, "keep"),
        (lambda m: select_layers(m, [1, 0]), ValueError, "keep"),
        (lambda m: select_layers(m, [5]), ValueError, "keep"),
        (lambda m: every_other_layer(4, 0.0), ValueError, "`p`"),
    ],
)
def test_bad_arguments(tiny_bert: nn.Module, call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(tiny_bert)
