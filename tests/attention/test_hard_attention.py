"""Hard attention: one-hot selection, masks, REINFORCE and Gumbel estimators, baseline."""

from __future__ import annotations

import pytest
import torch

from attnzoo.attention.hard import (
    HardAttention,
    MovingAverageBaseline,
    categorical_entropy,
    reinforce_loss,
)
from attnzoo.attention.rnn_attention import BahdanauAttention

F64 = torch.float64


def _memory(batch: int = 3, n_k: int = 5, key_dim: int = 4):
    keys = torch.randn(batch, n_k, key_dim)
    mask = torch.ones(batch, n_k, dtype=torch.bool)
    if batch >= 3:
        mask[1, 3:] = False
        mask[2, ::2] = False  # holes, not only padding at the end
    return keys, mask


@pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
@pytest.mark.parametrize("training", [True, False])
def test_selection_is_one_hot_and_context_is_the_selected_key(
    estimator: str, training: bool
) -> None:
    attn = HardAttention(3, 4, hidden_dim=6, estimator=estimator).train(training)
    keys, mask = _memory()
    out = attn(torch.randn(3, 7, 3), keys, mask)
    assert out.weights.shape == (3, 7, 5) and out.context.shape == (3, 7, 4)
    assert out.log_prob.shape == (3, 7) and out.index.shape == (3, 7)
    torch.testing.assert_close(out.weights.detach().sum(-1), torch.ones(3, 7))
    assert set(out.weights.detach().unique().tolist()) == {0.0, 1.0}
    torch.testing.assert_close(out.weights.detach().argmax(-1), out.index)
    expected = torch.stack([keys[b, out.index[b]] for b in range(3)])
    torch.testing.assert_close(out.context.detach(), expected)
    chosen = out.probs.gather(-1, out.index[..., None]).squeeze(-1)
    torch.testing.assert_close(out.log_prob, chosen.log())


@pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
def test_masked_positions_are_never_selected(estimator: str) -> None:
    attn = HardAttention(3, 4, score="general", estimator=estimator).train()
    keys, mask = _memory(batch=1, n_k=6)
    mask[0, [0, 2, 3]] = False
    with torch.no_grad():  # make the masked keys the most attractive ones
        keys[0, [0, 2, 3]] *= 100
    n = 4000
    out = attn(torch.randn(n, 3), keys.expand(n, -1, -1), mask.expand(n, -1))
    counts = out.weights.detach().sum(0)
    assert (counts[[0, 2, 3]] == 0).all()
    assert (counts[[1, 4, 5]] > 0).all()  # and the allowed ones are all reachable


def test_row_with_no_allowed_position() -> None:
    for estimator in ("reinforce", "gumbel"):
        for training in (True, False):
            attn = HardAttention(3, 4, estimator=estimator).train(training)
            keys, mask = _memory()
            mask[1] = False
            keys.requires_grad_()
            query = torch.randn(3, 3, requires_grad=True)
            out = attn(query, keys, mask)
            assert (out.context[1] == 0).all() and (out.weights[1] == 0).all()
            assert out.index[1].item() == -1 and out.log_prob[1].item() == 0
            loss = out.context.sum() + out.log_prob.sum() + out.weights.sum()
            loss.backward()
            assert torch.isfinite(query.grad).all() and torch.isfinite(keys.grad).all()


def test_eval_is_deterministic_argmax() -> None:
    attn = HardAttention(3, 4, estimator="gumbel").eval()
    keys, mask = _memory()
    query = torch.randn(3, 8, 3)
    first, second = attn(query, keys, mask), attn(query, keys, mask)
    torch.testing.assert_close(first.index, second.index)
    torch.testing.assert_close(first.index, first.probs.argmax(-1))


def test_sampling_follows_the_attention_distribution() -> None:
    attn = HardAttention(3, 4, score="general").train()
    keys, _ = _memory(batch=1)
    query = torch.randn(1, 3)
    n = 20000
    out = attn(query.expand(n, -1), keys.expand(n, -1, -1))
    frequency = out.weights.sum(0) / n
    # 4 binomial standard deviations
    tolerance = 4 * (out.probs[0] * (1 - out.probs[0]) / n).sqrt()
    assert ((frequency - out.probs[0]).abs() <= tolerance).all()


def test_generator_makes_sampling_reproducible() -> None:
    attn = HardAttention(3, 4).train()
    keys, mask = _memory()
    query = torch.randn(3, 9, 3)
    a = attn(query, keys, mask, generator=torch.Generator().manual_seed(5)).index
    b = attn(query, keys, mask, generator=torch.Generator().manual_seed(5)).index
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("baseline", [0.0, 1.5])
def test_reinforce_gradient_is_unbiased(baseline: float) -> None:
    """E[(r_s - b) grad log alpha_s] = grad E[r_s], for the estimator built from the module."""
    torch.manual_seed(3)
    attn = HardAttention(3, 3, score="dot").double().train()
    keys = torch.randn(1, 4, 3, dtype=F64)
    reward_table = torch.tensor([1.0, 3.0, -2.0, 0.5], dtype=F64)
    query = torch.randn(1, 3, dtype=F64, requires_grad=True)

    probs = torch.softmax(query @ keys[0].T, dim=-1)[0]
    (exact,) = torch.autograd.grad(probs @ reward_table, query)

    n = 40000
    out = attn(query.expand(n, -1), keys.expand(n, -1, -1))
    reward = reward_table[out.index]
    (estimate,) = torch.autograd.grad(-reinforce_loss(out.log_prob, reward, baseline), query)

    # Per-sample terms (r_s - b) (k_s - E_alpha[k]) give the sampling standard error.
    terms = (reward - baseline)[:, None] * (keys[0, out.index] - probs @ keys[0])
    torch.testing.assert_close(estimate[0], terms.mean(0), rtol=0, atol=1e-10)
    standard_error = terms.std(0) / n**0.5
    assert ((estimate[0] - exact[0]).abs() <= 4 * standard_error).all()


def test_baseline_reduces_variance() -> None:
    torch.manual_seed(4)
    attn = HardAttention(3, 3, score="dot").double().train()
    keys = torch.randn(1, 4, 3, dtype=F64)
    reward_table = torch.tensor([10.0, 11.0, 9.0, 10.5], dtype=F64)  # large common offset
    query = torch.randn(1, 3, dtype=F64)
    probs = torch.softmax(query @ keys[0].T, dim=-1)[0]
    out = attn(query.expand(5000, -1), keys.expand(5000, -1, -1))
    reward = reward_table[out.index]
    score_grad = keys[0, out.index] - probs @ keys[0]  # grad of log alpha_s w.r.t. the query
    spread = {b: ((reward - b)[:, None] * score_grad).var(0).sum() for b in (0.0, 10.0)}
    assert spread[10.0] < spread[0.0] / 10


def test_module_reinforce_loss_uses_and_updates_its_baseline() -> None:
    attn = HardAttention(3, 4, baseline_momentum=0.5).train()
    keys, mask = _memory()
    out = attn(torch.randn(3, 3), keys, mask)
    reward = torch.tensor([1.0, 2.0, 3.0])
    loss = attn.reinforce_loss(out, reward)
    torch.testing.assert_close(loss, -(reward * out.log_prob).mean())  # baseline 0 at first
    assert attn.baseline().item() == pytest.approx(2.0)  # first update takes the mean
    out = attn(torch.randn(3, 3), keys, mask)
    loss = attn.reinforce_loss(out, torch.tensor([4.0, 4.0, 4.0]))
    torch.testing.assert_close(loss, -((4.0 - 2.0) * out.log_prob).mean())
    assert attn.baseline().item() == pytest.approx(0.5 * 2.0 + 0.5 * 4.0)
    assert "baseline.value" in attn.state_dict()


def test_moving_average_baseline() -> None:
    baseline = MovingAverageBaseline(momentum=0.9)
    assert baseline().item() == 0
    baseline.update(torch.tensor([2.0, 4.0]))
    assert baseline().item() == pytest.approx(3.0)
    baseline.update(5.0)
    assert baseline().item() == pytest.approx(0.9 * 3.0 + 0.1 * 5.0)
    with pytest.raises(ValueError, match="momentum"):
        MovingAverageBaseline(momentum=1.0)


def test_reinforce_loss_sums_steps_and_adds_the_entropy_bonus() -> None:
    log_prob = torch.randn(2, 3, requires_grad=True)
    probs = torch.softmax(torch.randn(2, 3, 5, requires_grad=True), dim=-1)
    reward = torch.tensor([1.0, -1.0])  # one reward per sequence of selections
    loss = reinforce_loss(log_prob, reward, baseline=0.5, probs=probs, entropy_weight=0.1)
    entropy = -(probs * probs.log()).sum(-1)
    expected = -((reward[:, None] - 0.5) * log_prob).sum(1).mean() - 0.1 * entropy.sum(1).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(categorical_entropy(probs), entropy)
    assert categorical_entropy(torch.tensor([1.0, 0.0, 0.0])).item() == 0


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda lp: reinforce_loss(lp, torch.ones(3)), ValueError, "reward"),
        (lambda lp: reinforce_loss(lp, torch.ones(2), torch.ones(5)), ValueError, "baseline"),
        (lambda lp: reinforce_loss(lp, 1.0, entropy_weight=0.1), ValueError, "probs"),
        (lambda lp: reinforce_loss(lp, 1.0, entropy_weight=-1.0), ValueError, "entropy_weight"),
        (lambda lp: reinforce_loss(lp.tolist(), 1.0), TypeError, "log_prob"),
    ],
)
def test_reinforce_loss_rejects_bad_arguments(call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call(torch.randn(2, 4))


def test_reinforce_trains_scores_only_through_log_prob() -> None:
    attn = HardAttention(3, 4, hidden_dim=6).train()
    keys, mask = _memory()
    keys.requires_grad_()
    out = attn(torch.randn(3, 3), keys, mask)
    assert not out.weights.requires_grad
    out.context.sum().backward()
    assert keys.grad.abs().sum() > 0  # the selected keys get the task gradient
    assert attn.score.v.grad is None  # a sample carries no gradient to the scores
    attn.reinforce_loss(out, torch.ones(3) * 2.0).backward()
    assert attn.score.v.grad.abs().sum() > 0


def test_gumbel_straight_through_has_gradients() -> None:
    attn = HardAttention(3, 4, hidden_dim=6, estimator="gumbel", tau=0.5).train()
    keys, mask = _memory()
    query = torch.randn(3, 3, requires_grad=True)
    out = attn(query, keys, mask)
    assert set(out.weights.detach().unique().tolist()) == {0.0, 1.0}
    (out.context * torch.randn(3, 4)).sum().backward()
    assert query.grad.abs().sum() > 0
    assert attn.score.v.grad.abs().sum() > 0
    assert attn.score.key_proj.weight.grad.abs().sum() > 0


def test_sparse_normalizer_defines_the_distribution() -> None:
    attn = HardAttention(3, 3, score="dot", normalizer="sparsemax").train()
    keys = 5 * torch.randn(1, 6, 3)
    query = 5 * torch.randn(1, 3)
    out = attn(query.expand(2000, -1), keys.expand(2000, -1, -1))
    support = out.probs[0] > 0
    assert not support.all()
    assert (out.weights.sum(0)[~support] == 0).all()
    assert torch.isfinite(out.log_prob).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
def test_low_precision(dtype: torch.dtype, estimator: str) -> None:
    attn = HardAttention(3, 4, estimator=estimator).to(dtype).train()
    keys, mask = _memory()
    out = attn(torch.randn(3, 2, 3, dtype=dtype), keys.to(dtype), mask)
    assert out.context.dtype == dtype and out.weights.dtype == dtype
    assert torch.isfinite(out.log_prob).all()


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: HardAttention(3, 4, estimator="straight"), "estimator"),
        (lambda: HardAttention(3, 4, tau=0.0), "tau"),
        (lambda: HardAttention(3, 4, score="cosine"), "score"),
        (lambda: HardAttention(3, 4, normalizer="nope"), "normalizer"),
        (lambda: HardAttention(3, 4, baseline_momentum=-0.1), "momentum"),
    ],
)
def test_bad_construction_is_rejected(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs_name_the_argument() -> None:
    attn = HardAttention(3, 4)
    keys, mask = _memory()
    with pytest.raises(TypeError, match="mask"):
        attn(torch.randn(3, 3), keys, mask.float())
    with pytest.raises(ValueError, match="query"):
        attn(torch.randn(3), keys, mask)
    with pytest.raises(ValueError, match="key_dim"):
        attn(torch.randn(3, 3), keys[..., :3], mask)


# --- Xu et al.'s expected context for a minibatch ----------------------------------------


def test_expected_context_prob_one_is_soft_attention_without_reinforce_term() -> None:
    attn = HardAttention(3, 4, hidden_dim=6, expected_context_prob=1.0).train()
    soft = BahdanauAttention(3, 4, 6)
    soft.score.load_state_dict(attn.score.state_dict())
    keys, mask = _memory()
    mask[0] = False  # a row with nothing to attend to
    query = torch.randn(3, 7, 3)
    out = attn(query, keys, mask)
    soft_context, soft_weights = soft(query, keys, mask)
    assert out.expected_context
    torch.testing.assert_close(out.context, soft_context, rtol=0, atol=0)
    torch.testing.assert_close(out.weights, soft_weights, rtol=0, atol=0)
    assert (out.log_prob == 0).all() and not out.log_prob.requires_grad
    assert out.index[0].eq(-1).all()
    torch.testing.assert_close(out.index[1:], out.probs[1:].argmax(-1))
    # No REINFORCE term, and the baseline keeps tracking sampled batches only.
    loss = attn.reinforce_loss(out, torch.tensor([5.0, 6.0, 7.0]))
    assert loss.item() == 0 and not loss.requires_grad
    assert attn.baseline().item() == 0 and not bool(attn.baseline.initialized)
    # The scores learn through the soft context instead.
    out.context.sum().backward()
    assert attn.score.v.grad.abs().sum() > 0


def test_expected_context_prob_zero_samples_exactly_as_before() -> None:
    torch.manual_seed(0)
    attn = HardAttention(3, 4, expected_context_prob=0.0).train()
    keys, mask = _memory()
    query = torch.randn(3, 9, 3)
    out = attn(query, keys, mask, generator=torch.Generator().manual_seed(7))
    assert not out.expected_context
    # The same stream as a plain multinomial draw: no extra random number is consumed.
    flat = out.probs.detach().reshape(-1, 5)
    expected = torch.multinomial(flat, 1, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out.index, expected.reshape(3, 9))
    default = HardAttention(3, 4).train()
    default.load_state_dict(attn.state_dict())
    again = default(query, keys, mask, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(again.index, out.index)


def test_expected_context_is_one_draw_per_minibatch() -> None:
    prob = 0.3
    attn = HardAttention(3, 4, expected_context_prob=prob).train()
    keys, mask = _memory()
    query = torch.randn(3, 4, 3)
    ours, replay = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    choices = []
    for _ in range(300):
        out = attn(query, keys, mask, generator=ours)
        # Replay the stream: one uniform for the choice, then (if sampling) the selection.
        expected = bool(torch.rand((), generator=replay) < prob)
        assert out.expected_context == expected
        if expected:  # the whole minibatch is soft
            torch.testing.assert_close(out.weights, out.probs, rtol=0, atol=0)
        else:  # the whole minibatch is sampled
            flat = out.probs.detach().reshape(-1, 5)
            index = torch.multinomial(flat, 1, generator=replay).reshape(3, 4)
            torch.testing.assert_close(out.index, index)
            assert set(out.weights.unique().tolist()) == {0.0, 1.0}
        choices.append(expected)
    rate = sum(choices) / len(choices)
    assert abs(rate - prob) < 4 * (prob * (1 - prob) / len(choices)) ** 0.5, rate


def test_expected_context_is_not_used_in_eval() -> None:
    attn = HardAttention(3, 4, expected_context_prob=1.0).eval()
    keys, mask = _memory()
    query = torch.randn(3, 5, 3)
    out = attn(query, keys, mask)
    assert not out.expected_context
    torch.testing.assert_close(out.index, out.probs.argmax(-1))
    assert set(out.weights.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"expected_context_prob": -0.1}, ValueError, r"expected_context_prob.*\[0, 1\].*-0.1"),
        ({"expected_context_prob": 1.5}, ValueError, r"expected_context_prob.*1.5"),
        ({"expected_context_prob": float("nan")}, ValueError, "expected_context_prob"),
        ({"expected_context_prob": "0.5"}, TypeError, "expected_context_prob"),
        ({"expected_context_prob": True}, TypeError, "expected_context_prob"),
        ({"expected_context_prob": 0.5, "estimator": "gumbel"}, ValueError, "reinforce"),
    ],
)
def test_bad_expected_context_prob_is_rejected(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        HardAttention(3, 4, **kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
class TestCuda:
    @pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
    def test_runs_on_cuda_and_respects_the_mask(self, estimator: str) -> None:
        attn = HardAttention(3, 4, estimator=estimator).cuda().train()
        keys, mask = _memory()
        n = 500
        out = attn(
            torch.randn(n, 3, device="cuda"),
            keys[2:].expand(n, -1, -1).cuda(),
            mask[2:].expand(n, -1).cuda(),
        )
        assert out.context.device.type == "cuda"
        assert (out.weights.sum(0)[~mask[2].cuda()] == 0).all()
        attn.reinforce_loss(out, torch.ones(n, device="cuda")).backward()
        attn.eval()
        half = attn.half()(torch.randn(2, 3, device="cuda").half(), keys[:2].cuda().half())
        assert torch.isfinite(half.context).all()

    def test_expected_context_draw_with_a_cuda_generator(self) -> None:
        attn = HardAttention(3, 4, expected_context_prob=0.5).cuda().train()
        keys, mask = _memory()
        query = torch.randn(3, 2, 3, device="cuda")
        generator = torch.Generator(device="cuda").manual_seed(0)
        outs = [attn(query, keys.cuda(), mask.cuda(), generator=generator) for _ in range(40)]
        assert {out.expected_context for out in outs} == {True, False}
        assert all(out.context.device.type == "cuda" for out in outs)
