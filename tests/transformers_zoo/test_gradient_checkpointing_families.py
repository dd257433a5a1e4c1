"""Gradient checkpointing of ALBERT, XLM and XLNet, whose models run their own layer loops:
same loss and gradients (dropout on), fewer saved activations, no effect outside training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from attnzoo.transformers_zoo.albert import AlbertConfig, AlbertForPreTraining, AlbertModel
from attnzoo.transformers_zoo.permutation_lm import permutation_masks
from attnzoo.transformers_zoo.stacks import set_gradient_checkpointing
from attnzoo.transformers_zoo.xlm import XLMConfig, XLMModel, XLMWithLMHeadModel
from attnzoo.transformers_zoo.xlnet import XLNetConfig, XLNetLMHeadModel, XLNetModel

VOCAB = 41
BATCH, N = 3, 11
IDS = torch.randint(3, VOCAB, (BATCH, N), generator=torch.Generator().manual_seed(0))
# The last row is padded after 8 tokens (ids 3.. are never XLM's pad_index 2).
ATTENTION_MASK = torch.ones(BATCH, N, dtype=torch.long)
ATTENTION_MASK[-1, 8:] = 0
# Dropout stays on: checkpointing must replay the same dropout masks in its recomputation.
DROPOUT = 0.1


def _albert(groups: int) -> AlbertForPreTraining:
    # Four layers from `groups` parameter sets: every layer is applied 4 / groups times.
    return AlbertForPreTraining(
        AlbertConfig(
            vocab_size=VOCAB,
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=4,
            num_hidden_groups=groups,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=16,
            hidden_dropout_prob=DROPOUT,
            attention_probs_dropout_prob=DROPOUT,
        )
    )


def _xlm(causal: bool) -> XLMWithLMHeadModel:
    return XLMWithLMHeadModel(
        XLMConfig(
            vocab_size=VOCAB,
            emb_dim=32,
            n_layers=3,
            n_heads=2,
            dropout=DROPOUT,
            attention_dropout=DROPOUT,
            causal=causal,
            max_position_embeddings=16,
        )
    )


def _xlnet() -> XLNetLMHeadModel:
    return XLNetLMHeadModel(
        XLNetConfig(vocab_size=VOCAB, d_model=32, n_layer=3, n_head=2, d_inner=64, dropout=DROPOUT)
    )


def _permutation_inputs() -> dict[str, Tensor]:
    """Permutation LM inputs: four targets per row in a random order, the rest context."""
    generator = torch.Generator().manual_seed(3)
    order = torch.full((BATCH, N), -1)
    for row in range(BATCH):
        targets = torch.randperm(8, generator=generator)[:4]  # real tokens only
        order[row, targets] = torch.randperm(4, generator=generator)
    perm_mask, target_mapping = permutation_masks(order)
    labels = torch.randint(0, VOCAB, (BATCH, target_mapping.shape[1]), generator=generator)
    return {"perm_mask": perm_mask, "target_mapping": target_mapping, "labels": labels}


SOP_LABELS = torch.tensor([0, 1, 0])
PERMUTATION = _permutation_inputs()

# name: (model factory, keyword arguments of its training forward pass)
FAMILIES: dict[str, tuple[Callable[[], Any], dict[str, Any]]] = {
    "albert_one_shared_layer": (
        lambda: _albert(groups=1),
        {"attention_mask": ATTENTION_MASK, "labels": IDS, "sentence_order_label": SOP_LABELS},
    ),
    "albert_two_groups": (
        lambda: _albert(groups=2),
        {"attention_mask": ATTENTION_MASK, "labels": IDS, "sentence_order_label": SOP_LABELS},
    ),
    "xlm": (lambda: _xlm(causal=False), {"attention_mask": ATTENTION_MASK, "labels": IDS}),
    "xlm_causal": (lambda: _xlm(causal=True), {"labels": IDS}),
    "xlnet_content_stream": (
        _xlnet,
        {"attention_mask": ATTENTION_MASK, "token_type_ids": IDS % 2, "labels": IDS},
    ),
    "xlnet_permutation_lm": (
        _xlnet,
        {"attention_mask": ATTENTION_MASK, "token_type_ids": IDS % 2, **PERMUTATION},
    ),
}


def loss_and_saved_bytes(model: nn.Module, inputs: dict[str, Any]) -> tuple[Tensor, int]:
    """Training loss of ``IDS`` and the bytes autograd saved for the backward pass."""
    saved = 0

    def pack(tensor: Tensor) -> Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(IDS, **inputs).loss
    return loss, saved


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_loss_and_gradients_with_less_saved_memory(family: str) -> None:
    make, inputs = FAMILIES[family]
    torch.manual_seed(0)
    model = make().train()
    loss, plain_bytes = loss_and_saved_bytes(model, inputs)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert grads
    model.zero_grad()

    model.gradient_checkpointing_enable()
    checkpointed, checkpointed_bytes = loss_and_saved_bytes(model, inputs)
    checkpointed.backward()
    assert torch.equal(checkpointed, loss)
    for name, p in model.named_parameters():
        if name in grads:
            # A shared ALBERT layer sums one gradient per use, each from its own recomputation.
            torch.testing.assert_close(p.grad, grads[name], atol=1e-7, rtol=1e-6, msg=name)
        else:
            assert p.grad is None, name
    # Every layer's activations become one saved set of layer inputs (measured ratio 0.08-0.14).
    assert checkpointed_bytes < 0.5 * plain_bytes, (checkpointed_bytes, plain_bytes)

    model.gradient_checkpointing_enable(False)
    assert loss_and_saved_bytes(model, inputs)[1] == plain_bytes


def test_same_attentions_and_hidden_states_and_no_effect_in_eval() -> None:
    """With dropout on, the training-mode outputs, attention weights and hidden states of a
    checkpointed encoder equal the plain ones, and eval mode saves the same tensors."""
    torch.manual_seed(0)
    encoders: list[tuple[Any, dict[str, Any]]] = [
        (_albert(groups=1).albert, {"attention_mask": ATTENTION_MASK}),
        (_xlm(causal=False).transformer, {"attention_mask": ATTENTION_MASK}),
        (_xlnet().transformer, {"attention_mask": ATTENTION_MASK, **PERMUTATION}),
    ]
    for encoder, inputs in encoders:
        inputs = {key: value for key, value in inputs.items() if key != "labels"}
        outputs = []
        for enabled in (False, True):
            encoder.gradient_checkpointing_enable(enabled)
            torch.manual_seed(2)
            outputs.append(
                encoder.train()(IDS, output_attentions=True, output_hidden_states=True, **inputs)
            )
        plain, checkpointed = outputs
        name = type(encoder).__name__
        torch.testing.assert_close(
            checkpointed.last_hidden_state, plain.last_hidden_state, msg=name
        )
        torch.testing.assert_close(checkpointed.hidden_states, plain.hidden_states, msg=name)
        torch.testing.assert_close(checkpointed.attentions, plain.attentions, msg=name)

        encoder.eval()
        saved = []
        for enabled in (False, True):
            encoder.gradient_checkpointing_enable(enabled)
            count = 0

            def pack(tensor: Tensor) -> Tensor:
                nonlocal count
                count += 1
                return tensor

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                encoder(IDS, **inputs)
            saved.append(count)
        assert saved[0] == saved[1] > 0, (name, saved)


@pytest.mark.parametrize(
    ("make_head", "encoder_class"),
    [(lambda: _albert(2), AlbertModel), (lambda: _xlm(False), XLMModel), (_xlnet, XLNetModel)],
)
def test_heads_switch_their_encoder(
    make_head: Callable[[], nn.Module], encoder_class: type[nn.Module]
) -> None:
    head: Any = make_head()
    (encoder,) = (module for module in head.modules() if isinstance(module, encoder_class))
    assert isinstance(encoder, (AlbertModel, XLMModel, XLNetModel))
    assert encoder.gradient_checkpointing is False
    head.gradient_checkpointing_enable()
    assert encoder.gradient_checkpointing is True
    head.gradient_checkpointing_enable(False)
    assert encoder.gradient_checkpointing is False


@pytest.mark.parametrize("make_head", [lambda: _albert(2), lambda: _xlm(True), _xlnet])
def test_set_gradient_checkpointing_reaches_models_with_their_own_layer_loop(
    make_head: Callable[[], nn.Module],
) -> None:
    head = make_head()
    assert set_gradient_checkpointing(head) == 1
    flags = [
        m.gradient_checkpointing for m in head.modules() if hasattr(m, "gradient_checkpointing")
    ]
    assert flags == [True]
    assert set_gradient_checkpointing(head, False) == 1
    with pytest.raises(ValueError, match="no TransformerEncoder"):
        set_gradient_checkpointing(nn.Linear(2, 2))
