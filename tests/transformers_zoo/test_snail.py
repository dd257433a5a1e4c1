"""SNAIL's blocks and model, and the synthetic few-shot episodes they learn from."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnzoo.transformers_zoo.snail import (
    SNAIL,
    AttentionBlock,
    DenseBlock,
    SNAILConfig,
    TCBlock,
    run_snail_demo,
    tc_dilations,
    train_fewshot,
)
from attnzoo.transformers_zoo.tasks.fewshot import (
    episode_inputs,
    fewshot_task,
    nearest_support_accuracy,
)


def _tiny_config(**overrides) -> SNAILConfig:
    options = dict(feature_dim=4, n_way=3, seq_len=7, key_size=8, value_size=6, tc_filters=5)
    return SNAILConfig(**{**options, **overrides})


def _changed_after(x: torch.Tensor, t: int) -> torch.Tensor:
    """``x`` with every step after ``t`` replaced by fresh noise."""
    y = x.clone()
    y[:, t + 1 :] = torch.randn_like(y[:, t + 1 :])
    return y


def _input_grad(module, x: torch.Tensor, t: int) -> torch.Tensor:
    """``(seq,)``: norm of d(output at step t)/d(input at each step)."""
    x = x.clone().requires_grad_(True)
    out = module(x)
    out = out.logits if hasattr(out, "logits") else out
    out[:, t].sum().backward()
    return x.grad.abs().sum(dim=(0, 2))


# ---------------------------------------------------------------- temporal convolutions


@pytest.mark.parametrize(
    ("seq_len", "expected"),
    [(1, [1]), (2, [1]), (3, [1, 2]), (4, [1, 2]), (6, [1, 2, 4]), (8, [1, 2, 4]),
     (9, [1, 2, 4, 8]), (26, [1, 2, 4, 8, 16])],
)  # fmt: skip
def test_tc_dilations_double_until_the_sequence_is_covered(seq_len, expected) -> None:
    assert tc_dilations(seq_len) == expected
    block = TCBlock(3, seq_len, 2)
    assert block.dilations == expected
    assert block.receptive_field == 2 ** len(expected) >= seq_len
    assert [layer.dilation for layer in block.layers] == expected


def test_dense_block_new_features_see_exactly_t_and_t_minus_dilation() -> None:
    block = DenseBlock(3, 4, dilation=3)
    x = torch.randn(2, 10, 3, requires_grad=True)
    out = block(x)
    assert out.shape == (2, 10, 7) and block.out_dim == 7
    assert torch.equal(out[..., :3], x)  # the input is passed through by concatenation
    out[:, 7, 3:].sum().backward()
    touched = (x.grad.abs().sum(dim=(0, 2)) > 0).nonzero().flatten().tolist()
    assert touched == [4, 7]


def test_tc_block_receptive_field_is_exactly_a_power_of_two() -> None:
    block = TCBlock(3, seq_len=5, filters=4)  # dilations 1, 2, 4: sees 8 steps
    assert block.receptive_field == 8
    x = torch.randn(2, 14, 3)
    grad = _input_grad(block, x, 13)
    assert (grad[6:] > 0).all()  # steps 13 - 7 .. 13
    assert (grad[:6] == 0).all()
    assert block(x).shape == (2, 14, 3 + 3 * 4) and block.out_dim == 15


@pytest.mark.parametrize("t", [0, 2, 5])
@pytest.mark.parametrize("kind", ["dense", "tc", "attention", "snail"])
def test_every_block_is_causal(kind, t) -> None:
    module = {
        "dense": lambda: DenseBlock(7, 4, dilation=2),
        "tc": lambda: TCBlock(7, 7, 4),
        "attention": lambda: AttentionBlock(7, 5, 3),
        "snail": lambda: SNAIL(_tiny_config()),
    }[kind]()
    x = torch.randn(3, 7, 7)
    before = module(x)
    after = module(_changed_after(x, t))
    if kind == "snail":
        before, after = before.logits, after.logits
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=0)
    if t < 6:  # and the change is seen later: the test could fail
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])


@settings(max_examples=25)
@given(t=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_snail_output_depends_on_the_whole_past_only(t, seed) -> None:
    torch.manual_seed(seed)
    model = SNAIL(_tiny_config(layers=("tc", "attention", "tc")))
    grad = _input_grad(model, torch.randn(2, 7, 7), t)
    assert (grad[: t + 1] > 0).all()
    assert (grad[t + 1 :] == 0).all()


# ---------------------------------------------------------------- attention block


def test_attention_block_weights_are_causal_and_normalised() -> None:
    block = AttentionBlock(6, 4, 3)
    x = torch.randn(2, 5, 6)
    out, weights = block(x, return_weights=True)
    assert out.shape == (2, 5, 9) and block.out_dim == 9
    assert weights.shape == (2, 5, 5)
    assert torch.equal(out[..., :6], x)
    assert (weights.triu(1) == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5))
    # The read is the weighted sum of the values, computed here by hand.
    torch.testing.assert_close(out[..., 6:], weights @ block.value(x))


def test_attention_block_takes_any_normaliser() -> None:
    block = AttentionBlock(6, 4, 3, normalizer="sparsemax")
    with torch.no_grad():
        block.query.weight.mul_(20.0)  # large scores: sparsemax gives exact zeros
    _, weights = block(torch.randn(2, 6, 6), return_weights=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 6))
    assert (weights.tril() == 0).any()


def test_attention_block_masks_padded_steps_without_nan() -> None:
    block = AttentionBlock(6, 4, 3)
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[False, False, True, True, True], [True] * 5])
    x = x * mask[..., None]
    out, weights = block(x, mask, return_weights=True)
    assert torch.isfinite(out).all()
    assert (weights[0, :, :2] == 0).all()  # padded keys get no weight
    assert (weights[0, :2] == 0).all() and (out[0, :2] == 0).all()  # nothing to attend to
    torch.testing.assert_close(weights[0, 2:].sum(-1), torch.ones(3))


# ---------------------------------------------------------------- the model


def test_snail_shapes_loss_and_parameter_names() -> None:
    config = _tiny_config()
    model = SNAIL(config)
    batch = fewshot_task(4, 3, 2, 4, torch.Generator().manual_seed(0))
    out = model(batch.inputs, labels=batch.query_labels)
    assert out.logits.shape == (4, 7, 3)
    expected = torch.nn.functional.cross_entropy(out.logits[:, -1], batch.query_labels)
    torch.testing.assert_close(out.loss, expected)
    assert model(batch.inputs).loss is None
    names = {name for name, _ in model.named_parameters()}
    assert {"blocks.0.query.weight", "blocks.1.layers.2.gate_conv.weight"} <= names
    assert "classifier.weight" in names
    # width: 4 + 3, + 6 (attention), + 3 * 5 (tc, dilations 1, 2, 4), + 6, + 15, + 6
    assert model.classifier.in_features == 7 + 6 + 15 + 6 + 15 + 6


def test_snail_with_embedding_and_tc_only_stack() -> None:
    model = SNAIL(_tiny_config(embed_dim=10, layers=("tc", "tc")))
    assert model.classifier.in_features == 10 + 3 + 2 * 15
    assert model(torch.randn(2, 7, 7)).logits.shape == (2, 7, 3)
    assert model.query_attention(torch.randn(2, 7, 7)) == []


def test_left_padding_leaves_the_real_steps_unchanged() -> None:
    torch.manual_seed(1)
    model = SNAIL(_tiny_config(embed_dim=5))
    batch = fewshot_task(3, 3, 1, 4, torch.Generator().manual_seed(2))  # 4 steps
    padded = torch.cat([torch.randn(3, 3, 7), batch.inputs], dim=1)  # garbage in the padding
    mask = torch.arange(7).expand(3, 7) >= 3
    plain = model(batch.inputs).logits
    out = model(padded, mask).logits
    torch.testing.assert_close(out[:, 3:], plain, rtol=1e-5, atol=1e-6)
    assert (out[:, :3] == 0).all()
    # Without the mask the padding is read, so the check above is not vacuous.
    assert not torch.allclose(model(padded).logits[:, 3:], plain, atol=1e-3)


def test_query_attention_is_a_distribution_over_the_episode() -> None:
    model = SNAIL(_tiny_config())
    weights = model.query_attention(torch.randn(2, 7, 7))
    assert len(weights) == 3
    for w in weights:
        assert w.shape == (2, 7)
        torch.testing.assert_close(w.sum(-1), torch.ones(2))


def test_snail_runs_on_every_device_and_in_bfloat16(device) -> None:
    model = SNAIL(_tiny_config()).to(device)
    x = torch.randn(2, 7, 7, device=device)
    assert model(x).logits.device.type == device.type
    logits = model.to(torch.bfloat16)(x.bfloat16()).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_snail_errors_name_the_argument() -> None:
    model = SNAIL(_tiny_config())
    x = torch.randn(2, 7, 7)
    with pytest.raises(ValueError, match=r"`inputs`.*dim = 7.*got 6"):
        model(torch.randn(2, 7, 6))
    with pytest.raises(ValueError, match=r"`inputs`.*3 dimensions"):
        model(torch.randn(7, 7))
    with pytest.raises(ValueError, match=r"`inputs`.*seq_len = 7.*got 8"):
        model(torch.randn(2, 8, 7))
    with pytest.raises(ValueError, match=r"`labels`.*\[0, 3\).*got 3"):
        model(x, labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"`labels`.*\[0, 3\).*got -1"):
        model(x, labels=torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="`labels`.*long"):
        model(x, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="`labels`.*batch size"):
        model(x, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="`mask`.*boolean"):
        model(x, torch.ones(2, 7))
    with pytest.raises(ValueError, match="`mask`.*number of steps"):
        model(x, torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`layers`.*'lstm'"):
        SNAILConfig(layers=("tc", "lstm"))
    with pytest.raises(ValueError, match="`n_way`"):
        SNAILConfig(n_way=0)
    with pytest.raises(ValueError, match="`dilation`"):
        DenseBlock(3, 4, 0)
    with pytest.raises(ValueError, match="`x`.*dim = 6"):
        AttentionBlock(6, 4, 3)(torch.randn(2, 5, 5))
    with pytest.raises(ValueError, match="`k_shot`.*config.seq_len"):
        train_fewshot(_tiny_config(), k_shot=3, steps=1)


# ---------------------------------------------------------------- the episodes


def test_fewshot_episodes_layout() -> None:
    batch = fewshot_task(50, 4, 3, 5, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (50, 13, 9) and batch.labels.shape == (50, 13)
    support = batch.labels[:, :-1]
    for c in range(4):  # exactly k_shot examples of each class
        assert ((support == c).sum(1) == 3).all()
    one_hot = batch.inputs[:, :-1, 5:]
    assert torch.equal(one_hot.argmax(-1), support) and (one_hot.sum(-1) == 1).all()
    assert (batch.inputs[:, -1, 5:] == 0).all()  # the query's label is hidden
    assert torch.equal(batch.query_labels, batch.labels[:, -1])
    assert batch.features.shape == (50, 13, 5)
    # Shuffled: the support order differs between episodes.
    assert len({tuple(row) for row in support.tolist()}) > 1


def test_fewshot_episodes_are_seeded_and_fresh() -> None:
    a = fewshot_task(8, 3, 1, 4, torch.Generator().manual_seed(5))
    b = fewshot_task(8, 3, 1, 4, torch.Generator().manual_seed(5))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    generator = torch.Generator().manual_seed(5)
    first, second = (fewshot_task(8, 3, 1, 4, generator) for _ in range(2))
    assert not torch.allclose(first.features, second.features)


def test_fewshot_noise_controls_difficulty() -> None:
    easy = fewshot_task(500, 5, 1, 16, torch.Generator().manual_seed(0), noise=0.0)
    hard = fewshot_task(500, 5, 1, 16, torch.Generator().manual_seed(0), noise=3.0)
    assert nearest_support_accuracy(easy) == 1.0
    assert nearest_support_accuracy(hard) < 0.6


def test_episode_inputs_errors() -> None:
    features = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"`labels`.*\[0, 2\).*got 5"):
        episode_inputs(features, torch.tensor([[0, 1, 5, 0], [0, 1, 0, 1]]), 2)
    with pytest.raises(ValueError, match="`labels`.*number of steps"):
        episode_inputs(features, torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="`noise`"):
        fewshot_task(2, 2, 1, 3, torch.Generator(), noise=-1.0)
    with pytest.raises(ValueError, match="`k_shot`"):
        fewshot_task(2, 2, 0, 3, torch.Generator())


# ---------------------------------------------------------------- learning


def test_tiny_episodes_are_learned_fast() -> None:
    config = _tiny_config(n_way=2, seq_len=3, layers=("attention", "tc", "attention"))
    _, metrics = train_fewshot(
        config, 1, steps=100, noise=0.3, lr=1e-2, eval_episodes=500, progress=False
    )
    assert metrics["chance"] == 0.5
    assert metrics["accuracy"] >= 0.75


@pytest.mark.slow
def test_snail_few_shot_beats_chance_and_the_tc_only_ablation() -> None:
    """5-way 1-shot synthetic episodes: SNAIL learns to classify the query from the support.

    The same-size stack without attention blocks (TC blocks only) stays at chance within the
    same budget: the dilated convolutions alone do not learn the query/support comparison.
    """
    metrics = run_snail_demo(steps=600, progress=False, seed=0)
    assert metrics["chance"] == 0.2
    assert metrics["accuracy"] >= 0.8  # 4x chance
    assert metrics["tc_only_accuracy"] <= 0.35
    assert metrics["accuracy"] >= metrics["tc_only_accuracy"] + 0.4
    assert abs(metrics["params"] - metrics["tc_only_params"]) <= 0.1 * metrics["params"]
