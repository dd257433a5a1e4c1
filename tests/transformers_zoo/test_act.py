"""Adaptive Computation Time: halting weights, ponder cost and the mean-field update."""

from __future__ import annotations

import math

import pytest
import torch

from attnzoo.transformers_zoo.act import (
    ACT,
    ACTConfig,
    halting_distribution,
    parity_task,
    run_act_demo,
)


def test_halting_distribution_hand_case() -> None:
    weights, n, remainder = halting_distribution(torch.tensor([[0.3, 0.5, 0.4, 0.2]]), 0.01)
    # 0.3 + 0.5 = 0.8 < 0.99 <= 0.8 + 0.4: N = 3, R = 1 - 0.8.
    assert n.tolist() == [3]
    assert torch.allclose(remainder, torch.tensor([0.2]))
    assert torch.allclose(weights, torch.tensor([[0.3, 0.5, 0.2, 0.0]]))
    assert torch.allclose(n + remainder, torch.tensor([3.2]))


def test_halting_distribution_first_step_and_forced_last_step() -> None:
    probs = torch.tensor([[0.995, 0.1, 0.1], [0.1, 0.1, 0.1], [0.2, 0.79, 0.5]])
    weights, n, remainder = halting_distribution(probs, 0.01)
    assert n.tolist() == [1, 3, 2]
    # Halting at once leaves remainder 1: the first state gets all the weight.
    assert torch.allclose(remainder, torch.tensor([1.0, 0.8, 0.8]))
    assert torch.allclose(weights.sum(-1), torch.ones(3))
    assert torch.allclose(weights[0], torch.tensor([1.0, 0.0, 0.0]))


def test_halting_distribution_gradient_flows_through_the_remainder_only() -> None:
    probs = torch.tensor([0.3, 0.5, 0.4], requires_grad=True)
    _, n, remainder = halting_distribution(probs, 0.01)
    (n + remainder).backward()
    assert torch.allclose(probs.grad, torch.tensor([-1.0, -1.0, 0.0]))


def _constant_halting(model: ACT, p: float) -> None:
    with torch.no_grad():
        model.halting.weight.zero_()
        model.halting.bias.fill_(math.log(p / (1 - p)))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_output_and_state_are_the_mean_field_combination(cell: str) -> None:
    model = ACT(ACTConfig(3, 5, cell=cell, output_size=2, max_steps=10))
    _constant_halting(model, 0.3)  # cumulative 0.3, 0.6, 0.9, 1.2: N = 4, R = 0.1
    x = torch.randn(2, 1, 3)
    out = model(x)
    assert out.n_updates.tolist() == [[4], [4]]
    assert torch.allclose(out.ponder_cost, torch.full((2, 1), 4.1))
    # By hand: four cell updates, the flag bit set on the first only.
    state = model.initial_state(2, x)
    hiddens, cells = [], []
    for n in range(4):
        flag = torch.full((2, 1), 1.0 if n == 0 else 0.0)
        state = model.cell(torch.cat([x[:, 0], flag], -1), state)
        h = state[0] if cell == "lstm" else state
        hiddens.append(h)
        if cell == "lstm":
            cells.append(state[1])
    p = [0.3, 0.3, 0.3, 0.1]
    hidden = sum(w * h for w, h in zip(p, hiddens, strict=True))
    output = sum(w * model.output(h) for w, h in zip(p, hiddens, strict=True))
    assert torch.allclose(out.outputs[:, 0], output, atol=1e-6)
    if cell == "lstm":
        assert torch.allclose(out.state[0], hidden, atol=1e-6)
        assert torch.allclose(out.state[1], sum(w * c for w, c in zip(p, cells, strict=True)))
    else:
        assert torch.allclose(out.state, hidden, atol=1e-6)


def test_max_steps_is_respected() -> None:
    model = ACT(ACTConfig(2, 4, max_steps=3))
    _constant_halting(model, 0.1)
    out = model(torch.randn(5, 4, 2))
    assert out.outputs.shape == (5, 4, 4)
    assert (out.n_updates == 3).all()
    assert torch.allclose(out.ponder_cost, torch.full((5, 4), 3.8))


def test_rows_halt_independently_and_cost_has_a_gradient() -> None:
    model = ACT(ACTConfig(3, 8, max_steps=6, halting_bias_init=0.0))
    out = model(torch.randn(16, 5, 3) * 3)
    assert ((out.n_updates >= 1) & (out.n_updates <= 6)).all()
    assert ((out.ponder_cost >= out.n_updates) & (out.ponder_cost <= out.n_updates + 1)).all()
    out.ponder_cost.sum().backward()
    assert model.halting.bias.grad.abs() > 0


def test_parity_task_targets() -> None:
    x, y = parity_task(64, 5, torch.Generator().manual_seed(0))
    assert x.shape == (64, 1, 5)
    assert set(x.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(y, ((x[:, 0] == 1).sum(-1) % 2).float())


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="cell"):
        ACTConfig(2, 4, cell="transformer")
    with pytest.raises(ValueError, match="max_steps"):
        ACTConfig(2, 4, max_steps=0)
    with pytest.raises(ValueError, match="epsilon"):
        ACTConfig(2, 4, epsilon=1.5)
    with pytest.raises(ValueError, match="epsilon"):
        halting_distribution(torch.rand(2, 3), 0.0)
    with pytest.raises(ValueError, match="inputs"):
        ACT(ACTConfig(2, 4))(torch.randn(3, 5, 3))


@pytest.mark.slow
def test_act_learns_parity_and_ponders_less_with_a_higher_time_penalty() -> None:
    metrics = run_act_demo(progress=False, seed=0)
    # Chance is 50%. Measured (seed 0): accuracy 1.0 with 6.6 ponder steps at tau = 1e-3,
    # 1.9 steps at tau = 0.1; a halting unit that ignored the penalty would give equal counts.
    assert metrics["accuracy_low_tau"] >= 0.9
    assert metrics["accuracy_high_tau"] >= 0.75
    assert metrics["ponder_steps_high_tau"] < 0.6 * metrics["ponder_steps_low_tau"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_act_runs_in_every_dtype_on_every_device(dtype: torch.dtype, device: torch.device) -> None:
    model = ACT(ACTConfig(3, 5, cell="lstm", output_size=2)).to(device=device, dtype=dtype)
    out = model(torch.randn(2, 3, 3, dtype=dtype, device=device))
    assert out.outputs.dtype == dtype and out.ponder_cost.dtype == dtype
    assert out.outputs.device.type == device.type and torch.isfinite(out.outputs).all()
