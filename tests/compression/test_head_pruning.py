"""Attention-head pruning: physical removal, gates, importance, the iterative procedure."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnzoo.attention.multi_head import MultiHeadAttention
from attnzoo.compression import (
    HeadGates,
    attention_modules,
    count_parameters,
    head_importance,
    prune_heads,
    prune_heads_iteratively,
    prune_model_heads,
)
from attnzoo.transformers_zoo.training import TrainConfig, fit


def _zero_heads_reference(attention: MultiHeadAttention, heads: list[int]) -> MultiHeadAttention:
    """A copy whose out-projection ignores ``heads``: what removing them must compute."""
    reference = MultiHeadAttention(attention.dim, attention.heads)
    reference.load_state_dict(attention.state_dict())
    with torch.no_grad():
        for h in heads:
            reference.out.weight[:, h * attention.dim_head : (h + 1) * attention.dim_head] = 0
    return reference


def test_pruned_attention_equals_zeroing_the_heads_with_padding() -> None:
    attention = MultiHeadAttention(30, 5).double().eval()
    reference = _zero_heads_reference(attention, [1, 3]).double().eval()
    x = torch.randn(3, 9, 30, dtype=torch.float64)
    mask = torch.arange(9) < torch.tensor([9, 6, 2])[:, None]
    prune_heads(attention, [3, 1])
    assert attention.heads == 3
    assert attention.query.weight.shape == (18, 30) and attention.out.weight.shape == (30, 18)
    torch.testing.assert_close(attention(x, mask=mask), reference(x, mask=mask))
    assert torch.isfinite(attention(x, mask=mask)).all()


@pytest.mark.parametrize(
    "options", [{"normalizer": "entmax", "learn_alpha": True}, {"position": "alibi"}]
)
def test_per_head_state_follows_the_kept_heads(options: dict) -> None:
    attention = MultiHeadAttention(24, 4, **options).double().eval()
    if attention.alpha is not None:
        with torch.no_grad():
            attention.alpha.raw.copy_(torch.tensor([-1.0, 0.0, 1.0, 2.0]))
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    with HeadGates(attention) as gates:
        with torch.no_grad():
            gates.gates[0][2] = 0
        expected = attention(x)
    prune_heads(attention, [2])
    torch.testing.assert_close(attention(x), expected)
    if attention.alpha is not None:
        assert attention.alpha.raw.tolist() == [-1.0, 0.0, 2.0]
    else:
        assert attention.alibi is not None and attention.alibi.slopes.numel() == 3


def test_gated_bert_equals_physically_pruned_bert(
    tiny_bert: nn.Module, padded_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    ids, mask = padded_batch
    plan = {"bert.encoder.layers.0.attention": [0, 2], "bert.encoder.layers.1.attention": [3]}
    with HeadGates(tiny_bert) as gates:
        with torch.no_grad():
            gates.gates[0][[0, 2]] = 0
            gates.gates[1][3] = 0
        expected = tiny_bert(ids, attention_mask=mask).logits
    before = count_parameters(tiny_bert)
    prune_model_heads(tiny_bert, plan)
    assert [m.heads for _, m in attention_modules(tiny_bert)] == [2, 3]
    # Each removed head takes 3 rows + 3 biases of width 8 and 8 columns of the out-projection.
    assert before - count_parameters(tiny_bert) == 3 * (4 * 8 * 32 + 3 * 8)
    torch.testing.assert_close(tiny_bert(ids, attention_mask=mask).logits, expected)


def test_pruning_heads_cuts_the_attention_flops(tiny_bert: nn.Module) -> None:
    ids = torch.randint(1, 53, (2, 16))

    def flops() -> int:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            tiny_bert(ids)
        return counter.get_total_flops()

    dense = flops()
    prune_model_heads(tiny_bert, {n: [0, 1] for n, _ in attention_modules(tiny_bert)})
    # Half the heads: the attention projections and products halve; FFN etc. are unchanged.
    assert flops() < 0.8 * dense


def test_importance_is_the_gradient_of_the_loss_by_the_gate() -> None:
    torch.manual_seed(3)
    model = MultiHeadAttention(12, 3).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    target = torch.randn(2, 5, 12, dtype=torch.float64)

    def loss_fn(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(m(batch), target)

    scores = head_importance(model, loss_fn, [x], normalize=False)[0]
    eps = 1e-6
    for h in range(3):
        values = []
        for sign in (1, -1):
            with HeadGates(model) as gates, torch.no_grad():
                gates.gates[0][h] += sign * eps
                values.append(float(loss_fn(model, x)))
        assert float(scores[h]) == pytest.approx(abs(values[0] - values[1]) / (2 * eps), rel=1e-5)
    normalised = head_importance(model, loss_fn, [x, x])[0]
    assert float(normalised.norm()) == pytest.approx(1.0)
    assert all(p.grad is None for p in model.parameters())


def test_iterative_pruning_reaches_the_fraction_and_keeps_a_head_per_layer(
    tiny_bert: nn.Module,
) -> None:
    ids, labels = torch.randint(1, 53, (4, 6)), torch.tensor([0, 1, 2, 1])
    result = prune_heads_iteratively(
        tiny_bert,
        lambda m, b: m(b[0], labels=b[1]).loss,
        [(ids, labels)],
        fraction=0.75,
        step_fraction=0.25,
    )
    assert [f for f, _ in result.history] == [0.0, 0.25, 0.5, 0.75]
    assert sum(len(v) for v in result.removed.values()) == 6
    assert [m.heads for _, m in attention_modules(tiny_bert)] == [1, 1]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda a: prune_heads(a, [0, 1, 2, 3]), ValueError, "at least one"),
        (lambda a: prune_heads(a, [4]), ValueError, r"\[0, 4\)"),
        (lambda a: prune_heads(a, [1.0]), TypeError, "ints"),
        (lambda a: prune_heads(nn.Linear(2, 2), [0]), TypeError, "MultiHeadAttention"),
        (lambda a: HeadGates(nn.Linear(2, 2)), ValueError, "no MultiHeadAttention"),
        (lambda a: head_importance(a, lambda m, b: m(b).sum(), []), ValueError, "batches"),
        (lambda a: prune_model_heads(a, {"nope": [0]}), ValueError, "nope"),
        (
            lambda a: prune_heads_iteratively(
                a, lambda m, b: m(b).sum(), [], 0.5, max_metric_drop=0.1
            ),
            ValueError,
            "evaluate",
        ),
    ],
)
def test_bad_arguments(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(MultiHeadAttention(8, 4))  # type: ignore[operator]


def _sentiment_task(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of 12 tokens; label 1 when "positive" tokens (1-10) outnumber "negative"
    ones (11-20); the rest (21-52) are neutral filler."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 53, (n, 12), generator=generator)
    positive = ((ids >= 1) & (ids <= 10)).sum(1)
    negative = ((ids >= 11) & (ids <= 20)).sum(1)
    return ids, (positive > negative).long()


@pytest.mark.slow
def test_michel_pruning_removes_half_the_heads_with_bounded_accuracy_loss(
    make_config: object,
) -> None:
    """Michel et al. 2019: many heads can go at little cost. A 2-layer, 8-head BERT learns a
    token-counting task; iterative importance pruning removes half its heads (FLOPs and
    parameters measured) and accuracy drops by at most 5 points. Seeds 0, 1, 2 all hold
    (accuracy 0.99-1.00 -> 0.97-0.99)."""
    torch.manual_seed(0)
    model = __import__(
        "attnzoo.transformers_zoo.bert", fromlist=["x"]
    ).BertForSequenceClassification(
        make_config(num_labels=2, num_attention_heads=8, hidden_size=32)  # type: ignore[operator]
    )
    train_ids, train_labels = _sentiment_task(0, 4096)
    test_ids, test_labels = _sentiment_task(1, 512)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(step * 64, step * 64 + 64) % 4096
        return train_ids[index], train_labels[index]

    fit(
        model,
        lambda m, b: m(b[0], labels=b[1]).loss,
        batch,
        TrainConfig(steps=300, lr=3e-3, progress=False),
    )

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(test_ids).logits.argmax(-1) == test_labels).float().mean())

    dense_accuracy = accuracy(model)
    assert dense_accuracy > 0.9
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(test_ids[:8])
    dense_flops = counter.get_total_flops()
    scoring = [batch(s) for s in range(4)]
    result = prune_heads_iteratively(
        model, lambda m, b: m(b[0], labels=b[1]).loss, scoring, fraction=0.5, evaluate=accuracy
    )
    assert sum(m.heads for _, m in attention_modules(model)) == 8
    assert result.fraction == 0.5
    assert accuracy(model) == result.history[-1][1]
    assert dense_accuracy - accuracy(model) <= 0.05
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(test_ids[:8])
    assert counter.get_total_flops() < 0.85 * dense_flops


def test_iterative_pruning_stops_before_the_metric_drops_too_far(tiny_bert: nn.Module) -> None:
    ids, labels = torch.randint(1, 53, (4, 6)), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        reference = tiny_bert(ids).logits

    def closeness(m: nn.Module) -> float:
        return -float((m(ids).logits - reference).abs().max())

    result = prune_heads_iteratively(
        tiny_bert,
        lambda m, b: m(b[0], labels=b[1]).loss,
        [(ids, labels)],
        fraction=0.5,
        evaluate=closeness,
        max_metric_drop=1e-9,  # any change is too much: the first round is undone
    )
    assert result.history == [(0.0, 0.0)] and result.removed == {}
    assert [m.heads for _, m in attention_modules(tiny_bert)] == [4, 4]
    torch.testing.assert_close(tiny_bert(ids).logits, reference)
