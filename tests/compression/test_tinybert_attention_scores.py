"""TinyBERT's pre-softmax attention scores: the capture against hand-computed ``q k^T /
sqrt(d)`` and Hugging Face's BERT, the loss against a hand-written MSE, the distillation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from torch import Tensor, nn

from attnzoo.attention.multi_head import KVCache, MultiHeadAttention
from attnzoo.attention.relative import RelativeMultiHeadAttention
from attnzoo.compression import Distiller, TinyBertLoss, capture_attention_scores
from attnzoo.transformers_zoo.bert import BertForMaskedLM, BertModel
from attnzoo.transformers_zoo.training import TrainConfig


def _odd_bert(make_config: Any) -> BertModel:
    """Width 20, 4 heads of width 5, 3 layers, intermediate 37."""
    torch.manual_seed(0)
    config = make_config(hidden_size=20, num_hidden_layers=3, intermediate_size=37)
    return BertModel(config).eval()


def _by_hand(attention: MultiHeadAttention, h: Tensor) -> Tensor:
    """``q k^T / sqrt(d)`` per head from the module's projections, ``(b, heads, n, n)``."""
    b, n, _ = h.shape
    heads, d = attention.heads, attention.dim_head
    q = (h @ attention.query.weight.T + attention.query.bias).reshape(b, n, heads, d)
    k = (h @ attention.key.weight.T + attention.key.bias).reshape(b, n, heads, d)
    return torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)


def test_captured_scores_are_q_k_over_sqrt_d_of_every_layer(
    make_config: Any, padded_batch: tuple[Tensor, Tensor]
) -> None:
    ids, mask = padded_batch
    model = _odd_bert(make_config)
    with torch.no_grad(), capture_attention_scores(model) as scores:
        out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert len(scores) == 3 and all(s.shape == (3, 4, 7, 7) for s in scores)
    for i, layer in enumerate(model.encoder.layers):
        # Post-LN BERT: layer i's attention reads hidden state i (the embeddings for i = 0).
        expected = _by_hand(layer.attention, out.hidden_states[i])
        torch.testing.assert_close(scores[i], expected, rtol=1e-5, atol=1e-6)
        # What the softmax was given: its weights are softmax(scores) over the real keys.
        masked = scores[i].masked_fill(~mask[:, None, None, :], float("-inf"))
        torch.testing.assert_close(torch.softmax(masked, -1), out.attentions[i])


def test_captured_scores_are_what_hugging_face_bert_normalises(
    make_config: Any, padded_batch: tuple[Tensor, Tensor], tmp_path: Path
) -> None:
    """Hugging Face's eager BertSelfAttention adds a large negative mask to ``q k^T /
    sqrt(d)`` and takes the softmax; on the same weights, the softmax of our scores over the
    real keys must equal the weights it returns (tolerance 1e-5, as the BERT parity tests)."""
    ids, mask = padded_batch
    torch.manual_seed(3)
    hf_config = transformers.BertConfig(
        vocab_size=53,
        hidden_size=20,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    reference = transformers.BertModel(hf_config).eval()
    reference.save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path).eval()
    with torch.no_grad(), capture_attention_scores(model) as scores:
        model(ids, attention_mask=mask)
    with torch.no_grad():
        theirs = reference(ids, attention_mask=mask.long(), output_attentions=True).attentions
    assert len(theirs) == len(scores) == 2
    for ours, weights in zip(scores, theirs, strict=True):
        masked = ours.masked_fill(~mask[:, None, None, :], float("-inf"))
        torch.testing.assert_close(torch.softmax(masked, -1), weights, rtol=0, atol=1e-5)


class _RecordingSoftmax:
    """A normaliser that keeps the scores it is given (the module's true pre-softmax)."""

    def __init__(self) -> None:
        self.seen: list[Tensor] = []

    def __call__(self, scores: Tensor, dim: int = -1) -> Tensor:
        self.seen.append(scores.detach().clone())
        return torch.softmax(scores, dim)


@pytest.mark.parametrize("position", [None, "rotary", "alibi"])
def test_scores_match_the_normaliser_input_with_positions(position: str | None) -> None:
    torch.manual_seed(0)
    recorder = _RecordingSoftmax()
    attention = MultiHeadAttention(18, 3, normalizer=recorder, position=position)  # type: ignore[arg-type]
    x = torch.randn(2, 5, 18)
    with torch.no_grad(), capture_attention_scores(attention) as scores:
        attention(x)
    assert len(scores) == len(recorder.seen) == 1
    torch.testing.assert_close(scores[0], recorder.seen[0], rtol=1e-5, atol=1e-6)


def test_cross_attention_scores_have_the_context_as_keys() -> None:
    torch.manual_seed(0)
    recorder = _RecordingSoftmax()
    attention = MultiHeadAttention(12, 2, normalizer=recorder, kv_dim=7)  # type: ignore[arg-type]
    x, context = torch.randn(2, 3, 12), torch.randn(2, 5, 7)
    with torch.no_grad(), capture_attention_scores(attention) as scores:
        attention(x, context)
    assert scores[0].shape == (2, 2, 3, 5)
    torch.testing.assert_close(scores[0], recorder.seen[0], rtol=1e-5, atol=1e-6)


def test_scores_carry_gradients_and_the_hooks_are_removed() -> None:
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2)
    x = torch.randn(2, 4, 8)
    with capture_attention_scores(attention) as scores:
        attention(x)
    scores[0].pow(2).sum().backward()
    assert attention.query.weight.grad is not None and attention.key.weight.grad is not None
    assert attention.value.weight.grad is None  # the scores do not involve the values
    attention(x)
    assert len(scores) == 1
    for module in (attention, attention.query, attention.key):
        assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        (nn.Linear(3, 3), ValueError, "no MultiHeadAttention"),
        ("model", TypeError, "nn.Module"),
        (RelativeMultiHeadAttention(8, 2), TypeError, "RelativeMultiHeadAttention"),
    ],
)
def test_capture_rejects_bad_models(model: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match), capture_attention_scores(model):
        pass


def test_capture_rejects_a_decoding_cache() -> None:
    attention = MultiHeadAttention(8, 2, causal=True)
    with pytest.raises(ValueError, match="KVCache"), capture_attention_scores(attention):
        attention(torch.randn(1, 2, 8), cache=KVCache())


def _tinybert_reference(s: Tensor, t: Tensor, mask: Tensor) -> Tensor:
    """The TinyBERT code's attention loss: -10000 added at padded keys, every entry <= -100
    set to zero in both maps, then the plain mean of squared differences."""
    additive = (~mask[:, None, None, :]).to(s.dtype) * -10000.0
    s, t = s + additive, t + additive
    s = torch.where(s <= -1e2, torch.zeros_like(s), s)
    t = torch.where(t <= -1e2, torch.zeros_like(t), t)
    return ((s - t) ** 2).mean()


def test_tinybert_score_loss_is_the_reference_mse_with_padded_keys_zeroed() -> None:
    torch.manual_seed(0)
    loss = TinyBertLoss(5, 5, {1: 2}).double()
    assert loss.attention == "scores"  # the paper's default
    s_att = [3 * torch.randn(3, 2, 4, 4, dtype=torch.float64)]
    t_att = [3 * torch.randn(3, 2, 4, 4, dtype=torch.float64) for _ in range(2)]
    hidden = [torch.zeros(3, 4, 5, dtype=torch.float64) for _ in range(3)]
    mask = torch.tensor([[True] * 4, [True, True, True, False], [True, False, False, False]])
    out = loss(hidden[:2], hidden, s_att, t_att, mask)
    by_hand = sum(
        float((s_att[0][b, h, i, j] - t_att[1][b, h, i, j]) ** 2)
        for b in range(3)
        for h in range(2)
        for i in range(4)
        for j in range(4)
        if mask[b, j]
    ) / (3 * 2 * 4 * 4)
    assert float(out["attention"]) == pytest.approx(by_hand, rel=1e-12)
    assert float(out["attention"]) == pytest.approx(
        float(_tinybert_reference(s_att[0], t_att[1], mask)), rel=1e-12
    )
    # Padded keys carry nothing; padded query rows count, as in the TinyBERT code.
    changed_keys = s_att[0].clone()
    changed_keys[2, :, :, 1:] = 1e4
    assert float(loss(hidden[:2], hidden, [changed_keys], t_att, mask)["attention"]) == (
        pytest.approx(by_hand, rel=1e-12)
    )
    changed_queries = s_att[0].clone()
    changed_queries[2, :, 1:, 0] += 1.0
    assert float(loss(hidden[:2], hidden, [changed_queries], t_att, mask)["attention"]) != (
        pytest.approx(by_hand, rel=1e-6)
    )
    # Without a mask: the plain MSE of the two maps.
    plain = float(loss(hidden[:2], hidden, s_att, t_att)["attention"])
    assert plain == pytest.approx(float(((s_att[0] - t_att[1]) ** 2).mean()), rel=1e-12)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: TinyBertLoss(4, 4, {1: 1}, attention="probs"), ValueError, "attention"),
        (
            lambda: TinyBertLoss(4, 4, {1: 1})(
                [torch.zeros(2, 3, 4)] * 2,
                [torch.zeros(2, 3, 4)] * 2,
                [torch.zeros(2, 2, 3, 3)],
                [torch.zeros(2, 2, 3, 3)],
                torch.ones(2, 4, dtype=torch.bool),
            ),
            ValueError,
            "mask",
        ),
        (
            lambda: TinyBertLoss(4, 4, {1: 1})(
                [torch.zeros(2, 3, 4)] * 2,
                [torch.zeros(2, 3, 4)] * 2,
                [torch.zeros(2, 2, 5, 5)],
                [torch.zeros(2, 2, 5, 5)],
                torch.ones(2, 3, dtype=torch.bool),
            ),
            ValueError,
            "n_keys",
        ),
        (
            lambda: TinyBertLoss(4, 4, {1: 1})(
                [torch.zeros(2, 3, 4)] * 2,
                [torch.zeros(2, 3, 4)] * 2,
                [torch.zeros(2, 2, 3, 3)],
                [torch.zeros(2, 2, 3, 3)],
                torch.ones(2, 3),
            ),
            TypeError,
            "mask",
        ),
    ],
)
def test_tinybert_loss_bad_arguments(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_distilling_scores_trains_the_student_only(make_config: Any) -> None:
    torch.manual_seed(0)
    teacher = BertForMaskedLM(make_config(num_hidden_layers=4)).eval()
    student = BertForMaskedLM(
        make_config(num_hidden_layers=2, hidden_size=16, num_attention_heads=4)
    )
    tinybert = TinyBertLoss(16, 32, {0: 0, 1: 2, 2: 4})
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 53, (4, 6), generator=generator)
    mask = torch.arange(6) < torch.tensor([6, 6, 4, 2])[:, None]

    def forward(model: nn.Module, batch: Tensor) -> tuple[Any, list[Tensor]]:
        with capture_attention_scores(model) as scores:
            out = model(batch, attention_mask=mask, output_hidden_states=True)
        return out, scores

    def objective(s: Any, t: Any, batch: Tensor) -> Tensor:
        (s_out, s_scores), (t_out, t_scores) = s, t
        parts = tinybert(s_out.hidden_states, t_out.hidden_states, s_scores, t_scores, mask)
        return parts["loss"]

    distiller = Distiller(teacher, student, objective, forward=forward, trainable=tinybert)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss = distiller.loss(ids)
    loss.backward()
    query = student.bert.encoder.layers[0].attention.query.weight
    assert query.grad is not None and float(query.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())
    student.zero_grad()
    history = distiller.fit(lambda step: ids, TrainConfig(steps=25, lr=1e-2, progress=False))
    assert history.mean_last(5) < 0.5 * history.losses[0]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items())
