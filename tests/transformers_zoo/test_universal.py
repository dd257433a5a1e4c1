"""Universal Transformer: the recurrence, the per-position ACT halting and its ponder cost.

Tolerances: float64 results within 1e-10 of the references written out below.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.transformers_zoo.embeddings import sinusoidal_table
from attnzoo.transformers_zoo.training import TrainConfig, fit
from attnzoo.transformers_zoo.universal import UniversalTransformerEncoder

TOL = 1e-10


def model(max_steps=4, **kwargs):
    torch.manual_seed(0)
    return UniversalTransformerEncoder(16, 2, max_steps, ffn_dim=32, **kwargs).double().eval()


def constant_halting(ut, p):
    with torch.no_grad():
        ut.halting.weight.zero_()
        ut.halting.bias.fill_(math.log(p / (1 - p)))


def padding_mask(batch, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, n, generator=g) > 0.3
    mask[:, 0] = True
    return mask


def reference_act(ut, x, mask):
    """The paper's ACT loop written step by step: running sums, remainders, and a halted
    position's state frozen at its accumulated output."""
    b, n, _ = x.shape
    real = mask if mask is not None else torch.ones(b, n, dtype=torch.bool)
    table = sinusoidal_table(max(ut.max_len, ut.max_steps + 1), ut.dim).to(x.dtype)
    state, out = x, torch.zeros_like(x)
    cumulative = torch.zeros(b, n, dtype=x.dtype)
    remainder = torch.zeros(b, n, dtype=x.dtype)
    steps = torch.zeros(b, n, dtype=torch.long)
    halted = torch.zeros(b, n, dtype=torch.bool)
    for t in range(1, ut.max_steps + 1):
        h = ut.layer(state + table[:n] + table[t], mask=mask)
        p = torch.sigmoid(ut.halting(h))[..., 0]
        running = ~halted
        stops = running & ((cumulative + p >= 1 - ut.epsilon) | (t == ut.max_steps))
        goes_on = running & ~stops
        weight = torch.where(goes_on, p, torch.where(stops, 1 - cumulative, 0.0))
        out = out + weight[..., None] * h
        remainder = torch.where(stops, 1 - cumulative, remainder)
        cumulative = cumulative + torch.where(goes_on, p, 0.0)
        steps = steps + running.long()
        halted = halted | stops
        if bool((halted | ~real).all()):
            break
        state = torch.where(halted[..., None], out, h)
    return out, (steps + remainder) * real, steps * real


class TestRecurrence:
    def test_without_act_or_coordinates_is_the_layer_applied_t_times(self):
        ut = model(max_steps=3, act=False, coordinates=False)
        x = torch.randn(2, 7, 16, dtype=torch.float64)
        mask = padding_mask(2, 7)
        expected = x
        for _ in range(3):
            expected = ut.layer(expected, mask=mask)
        out = ut(x, mask)
        assert (out.last_hidden_state - expected).abs().max() < TOL
        assert torch.equal(out.n_updates, 3 * mask.long())
        assert out.halting_weights is None

    def test_coordinates_are_position_plus_step_sinusoids(self):
        ut = model(max_steps=3, act=False)
        x = torch.randn(2, 7, 16, dtype=torch.float64)
        table = sinusoidal_table(512, 16).double()
        expected = x
        for t in (1, 2, 3):
            expected = ut.layer(expected + table[:7] + table[t])
        assert (ut(x).last_hidden_state - expected).abs().max() < TOL

    def test_pre_ln_layer_gets_a_final_norm(self):
        ut = model(max_steps=2, act=False, coordinates=False, norm_first=True)
        x = torch.randn(1, 5, 16, dtype=torch.float64)
        expected = ut.norm(ut.layer(ut.layer(x)))
        assert (ut(x).last_hidden_state - expected).abs().max() < TOL


class TestHalting:
    def test_constant_halting_is_the_mean_field_of_four_steps(self):
        ut = model(max_steps=6)
        constant_halting(ut, 0.3)  # 0.3, 0.6, 0.9, 1.2: N = 4, R = 0.1
        x = torch.randn(2, 5, 16, dtype=torch.float64)
        out = ut(x)
        states, state = [], x
        for t in range(1, 5):
            state = ut.layer(state + ut.coordinate_embedding(5, t))
            states.append(state)
        expected = sum(w * s for w, s in zip([0.3, 0.3, 0.3, 0.1], states, strict=True))
        assert (out.last_hidden_state - expected).abs().max() < TOL
        assert (out.n_updates == 4).all()
        assert (out.ponder_cost - 4.1).abs().max() < TOL
        assert out.halting_weights.shape == (2, 5, 4)

    # Halting settings under which the positions halt after 2 to 4 steps.
    @pytest.mark.parametrize("bias,spread", [(0.0, 1.0), (0.8, 1.0), (0.8, 2.0)])
    @pytest.mark.parametrize("masked", [False, True])
    def test_equals_the_step_by_step_algorithm(self, bias, spread, masked):
        ut = model(max_steps=5, halting_bias_init=bias)
        with torch.no_grad():
            ut.halting.weight.mul_(spread)
        x = torch.randn(3, 9, 16, dtype=torch.float64)
        mask = padding_mask(3, 9) if masked else None
        ours = ut(x, mask)
        out, ponder, steps = reference_act(ut, x, mask)
        real = mask if masked else torch.ones(3, 9, dtype=torch.bool)
        assert ((ours.last_hidden_state - out).abs().amax(-1)[real]).max() < TOL
        assert (ours.ponder_cost - ponder).abs().max() < TOL
        assert torch.equal(ours.n_updates, steps)
        assert len(set(steps[real].tolist())) > 1  # positions really halted at different steps

    def test_stops_once_every_position_has_halted(self):
        ut = model(max_steps=8)
        constant_halting(ut, 0.995)
        calls = []
        ut.layer.register_forward_hook(lambda *args: calls.append(1))
        out = ut(torch.randn(2, 4, 16, dtype=torch.float64))
        assert len(calls) == 1 and (out.n_updates == 1).all()
        assert (out.ponder_cost - 2.0).abs().max() < TOL  # N = 1, R = 1

    def test_max_steps_forces_the_last_step(self):
        ut = model(max_steps=3)
        constant_halting(ut, 0.1)
        out = ut(torch.randn(1, 4, 16, dtype=torch.float64))
        assert (out.n_updates == 3).all()
        assert (out.ponder_cost - 3.8).abs().max() < TOL  # R = 1 - 0.2
        assert torch.allclose(out.halting_weights.sum(-1), torch.ones(1, 4, dtype=torch.float64))

    def test_ponder_cost_gradient_reaches_the_halting_unit(self):
        ut = model(max_steps=4).train()
        x = torch.randn(2, 5, 16, dtype=torch.float64)
        ut(x).ponder_cost.sum().backward()
        assert ut.halting.weight.grad.abs().sum() > 0
        assert ut.halting.bias.grad < 0  # more halting probability, less ponder cost

    def test_padding_is_ignored(self):
        ut = model(max_steps=5, halting_bias_init=0.0)
        x = torch.randn(2, 8, 16, dtype=torch.float64)
        mask = padding_mask(2, 8, seed=1)
        out = ut(x, mask)
        changed = x.masked_fill(~mask[..., None], 7.0)
        again = ut(changed, mask)
        diff = (out.last_hidden_state - again.last_hidden_state).abs().amax(-1)
        assert diff[mask].max() < TOL
        assert (out.ponder_cost[~mask] == 0).all() and (out.n_updates[~mask] == 0).all()


class TestErrors:
    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="`epsilon`"):
            UniversalTransformerEncoder(8, 2, epsilon=1.0)
        with pytest.raises(ValueError, match="`max_steps`"):
            UniversalTransformerEncoder(8, 2, max_steps=0)
        with pytest.raises(TypeError, match="`act`"):
            UniversalTransformerEncoder(8, 2, act=1)
        ut = UniversalTransformerEncoder(8, 2, max_len=4)
        with pytest.raises(ValueError, match="at most max_len = 4"):
            ut(torch.randn(1, 5, 8))
        with pytest.raises(ValueError, match="`x` must have dim = 8"):
            ut(torch.randn(1, 3, 6))
        with pytest.raises(TypeError, match="`mask` must be a boolean"):
            ut(torch.randn(1, 3, 8), torch.ones(1, 3))


# --------------------------------------------------------------------------- the paper's effect

N_POSITIONS, N_VALUES = 8, 8


def pointer_task(batch, generator):
    """Each position holds a value and a pointer to a position, and a flag. An easy position
    must output the value its pointer points at (one attention hop); a hard one the value
    at its pointer's pointer (two hops, which one step of attention cannot do)."""
    values = torch.randint(0, N_VALUES, (batch, N_POSITIONS), generator=generator)
    pointers = torch.randint(0, N_POSITIONS, (batch, N_POSITIONS), generator=generator)
    hard = torch.rand(batch, N_POSITIONS, generator=generator) < 0.5
    one_hop = values.gather(1, pointers)
    two_hops = values.gather(1, pointers.gather(1, pointers))
    return values, pointers, hard, torch.where(hard, two_hops, one_hop)


class PointerModel(nn.Module):
    def __init__(self, dim=64, max_steps=4):
        super().__init__()
        self.values = nn.Embedding(N_VALUES, dim)
        self.pointers = nn.Embedding(N_POSITIONS, dim)
        self.kind = nn.Embedding(2, dim)
        # Halting starts low (every position runs all steps) so that the lookups are learned
        # before the ponder cost can cut the steps they need.
        self.encoder = UniversalTransformerEncoder(
            dim,
            4,
            max_steps,
            ffn_dim=2 * dim,
            norm_first=True,
            max_len=N_POSITIONS,
            halting_bias_init=-2.0,
        )
        self.head = nn.Linear(dim, N_VALUES)

    def forward(self, values, pointers, hard):
        x = self.values(values) + self.pointers(pointers) + self.kind(hard.long())
        out = self.encoder(x)
        return self.head(out.last_hidden_state), out


@pytest.mark.slow
def test_positions_that_need_more_hops_ponder_longer():
    """Dehghani et al. 2019 (ACT per position, Graves 2016): the number of steps adapts to
    each position's need. Here a two-hop lookup needs at least one more attention step than
    a one-hop one; after training, both are solved and the hard positions ponder about one
    step longer. The ponder cost (tau = 0.05) is switched on after 300 of 650 steps: with it
    from the start the halting collapses to one step before the two-hop lookup is learned.
    Seeds 0-4 all hold (gap 1.0 to 1.9 steps, accuracy >= 0.998 on both kinds)."""
    torch.manual_seed(0)
    net = PointerModel()
    generator = torch.Generator().manual_seed(0)

    def loss_fn(net, batch):
        step, (values, pointers, hard, target) = batch
        logits, out = net(values, pointers, hard)
        tau = 0.05 if step >= 300 else 0.0
        return (
            F.cross_entropy(logits.flatten(0, 1), target.flatten()) + tau * out.ponder_cost.mean()
        )

    config = TrainConfig(steps=650, lr=2e-3, clip_norm=None, progress=False)
    fit(net, loss_fn, lambda step: (step, pointer_task(32, generator)), config)

    values, pointers, hard, target = pointer_task(512, torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, out = net(values, pointers, hard)
    correct = logits.argmax(-1) == target
    assert correct[hard].float().mean() > 0.9 and correct[~hard].float().mean() > 0.9
    steps = out.n_updates.float()
    assert steps[hard].mean() > steps[~hard].mean() + 0.5, (steps[hard].mean(), steps[~hard].mean())
