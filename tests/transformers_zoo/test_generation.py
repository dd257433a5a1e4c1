"""Greedy and beam search over a generic step function, and state reordering."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple

import pytest
import torch

from attnzoo.attention.multi_head import KVCache
from attnzoo.transformers_zoo.generation import (
    beam_search,
    greedy_search,
    length_penalty_factor,
    reorder_state,
)

PAD, BOS, EOS, A, B, C = 0, 1, 2, 3, 4, 5
VOCAB = 6


def table_step(table: dict[int, dict[int, float]]):
    """A step function whose next-token distribution depends only on the previous token.

    Tokens absent from a row get probability 0 (log-prob -inf).
    """
    log_table = torch.full((VOCAB, VOCAB), -math.inf, dtype=torch.float64)
    for prev, row in table.items():
        for token, p in row.items():
            log_table[prev, token] = math.log(p)

    def step(prev_tokens, state):
        return log_table[prev_tokens], state

    return step


# ---------------------------------------------------------------------------------------
# reorder_state
# ---------------------------------------------------------------------------------------


class Pair(NamedTuple):
    left: torch.Tensor
    right: torch.Tensor


@dataclass
class Carry:
    hidden: torch.Tensor
    extras: list
    step: int = 0


def test_reorder_state_nested_structures_and_dataclasses():
    rows = torch.arange(4.0)
    cache = KVCache(key=rows.view(4, 1, 1, 1).repeat(1, 2, 3, 5), value=None)
    state = {
        "tensor": rows[:, None].repeat(1, 3),
        "tuple": (rows, None, 7),
        "named": Pair(rows, rows * 10),
        "list": [rows, {"deep": rows + 100}],
        "cache": cache,
        "carry": Carry(hidden=rows[:, None], extras=[rows], step=3),
        "scalar": torch.tensor(5.0),
        "none": None,
    }
    index = torch.tensor([2, 2, 0])
    out = reorder_state(state, index)
    expected = torch.tensor([2.0, 2.0, 0.0])
    assert torch.equal(out["tensor"], expected[:, None].repeat(1, 3))
    assert isinstance(out["tuple"], tuple) and out["tuple"][1:] == (None, 7)
    assert torch.equal(out["tuple"][0], expected)
    assert isinstance(out["named"], Pair) and torch.equal(out["named"].right, expected * 10)
    assert isinstance(out["list"], list) and torch.equal(out["list"][1]["deep"], expected + 100)
    assert isinstance(out["cache"], KVCache) and out["cache"].value is None
    assert out["cache"].key.shape == (3, 2, 3, 5)
    assert torch.equal(out["cache"].key[:, 0, 0, 0], expected)
    assert isinstance(out["carry"], Carry) and out["carry"].step == 3
    assert torch.equal(out["carry"].extras[0], expected)
    assert torch.equal(out["scalar"], torch.tensor(5.0))
    assert out["none"] is None
    # The caller's objects are rebuilt, not mutated.
    assert out["cache"] is not cache and cache.key.shape == (4, 2, 3, 5)
    assert state["carry"].hidden.shape == (4, 1)


def test_reorder_state_rebuilds_other_mappings_as_their_own_type():
    rows = torch.arange(4.0)
    index = torch.tensor([3, 1])
    ordered = reorder_state(OrderedDict(b=rows, a=rows * 2), index)
    assert type(ordered) is OrderedDict and list(ordered) == ["b", "a"]
    assert torch.equal(ordered["a"], torch.tensor([6.0, 2.0]))
    frozen = reorder_state(MappingProxyType({"x": rows}), index)
    assert isinstance(frozen, MappingProxyType)
    assert torch.equal(frozen["x"], torch.tensor([3.0, 1.0]))


def test_reorder_state_rejects_bad_index():
    with pytest.raises(TypeError, match="index"):
        reorder_state(torch.zeros(3), [0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="index"):
        reorder_state(torch.zeros(3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="index"):
        reorder_state(torch.zeros(3), torch.tensor([[0, 1]]))


# ---------------------------------------------------------------------------------------
# greedy search
# ---------------------------------------------------------------------------------------


def test_greedy_stops_at_eos_and_pads_after_it():
    # Row 0 starts with A, row 1 with B (per-row bias in the state); A -> EOS, B -> C -> EOS.
    step_table = table_step(
        {BOS: {A: 0.5, B: 0.5}, A: {EOS: 0.9, C: 0.1}, B: {C: 0.8, EOS: 0.2}, C: {EOS: 1.0}}
    )
    calls = []

    def step(prev, state):
        calls.append(prev.clone())
        log_probs, _ = step_table(prev, state)
        return log_probs + state, state

    bias = torch.zeros(2, VOCAB, dtype=torch.float64)
    bias[0, A] = bias[1, B] = 0.1
    out = greedy_search(step, bias, batch_size=2, bos=BOS, eos=EOS, max_len=10)
    assert out.dtype == torch.long
    assert out.tolist() == [[A, EOS, PAD], [B, C, EOS]]
    assert len(calls) == 3  # stops once every row has emitted EOS
    assert calls[2].tolist() == [EOS, C]  # a finished row is fed its EOS, then PAD


def test_greedy_respects_max_len_without_eos():
    step = table_step({BOS: {A: 1.0}, A: {A: 0.9, EOS: 0.1}})
    out = greedy_search(step, None, batch_size=3, bos=BOS, eos=EOS, max_len=4)
    assert out.tolist() == [[A] * 4] * 3


def test_greedy_device_follows_state(device):
    step = table_step({BOS: {A: 1.0}, A: {EOS: 1.0}})

    def on_device(prev, state):
        assert prev.device == state.device
        log_probs, _ = step(prev.cpu(), state)
        return log_probs.to(state.device), state

    out = greedy_search(on_device, torch.zeros(2, 1, device=device), 2, BOS, EOS, 5)
    assert out.device.type == device.type and out.tolist() == [[A, EOS]] * 2


# ---------------------------------------------------------------------------------------
# beam search
# ---------------------------------------------------------------------------------------

# Greedy takes A (0.6) and then must end with probability 0.4: P(A EOS) = 0.24.
# B (0.4) is followed by EOS with 0.9: P(B EOS) = 0.36, the better sequence.
TRAP = {
    BOS: {A: 0.6, B: 0.4},
    A: {EOS: 0.4, A: 0.3, B: 0.3},
    B: {EOS: 0.9, A: 0.05, B: 0.05},
}


def test_hand_checked_beam_beats_greedy():
    step = table_step(TRAP)
    greedy = greedy_search(step, None, batch_size=1, bos=BOS, eos=EOS, max_len=10)
    assert greedy.tolist() == [[A, EOS]]
    tokens, scores = beam_search(step, None, 1, BOS, EOS, 10, beam_width=2, length_penalty=0.0)
    assert tokens.tolist() == [[B, EOS]]
    assert scores.item() == pytest.approx(math.log(0.36), abs=1e-6)
    # Width 1 is greedy: it follows A and finishes with A EOS.
    tokens, scores = beam_search(step, None, 1, BOS, EOS, 10, beam_width=1, length_penalty=0.0)
    assert tokens.tolist() == [[A, EOS]]
    assert scores.item() == pytest.approx(math.log(0.24), abs=1e-6)


def test_hand_checked_beam_score_with_length_penalty():
    step = table_step(TRAP)
    tokens, scores = beam_search(step, None, 1, BOS, EOS, 10, beam_width=2, length_penalty=1.0)
    assert tokens.tolist() == [[B, EOS]]
    # GNMT: log p / ((5 + L) / 6) ** lp with L = 2 generated tokens (EOS included).
    assert scores.item() == pytest.approx(math.log(0.36) / (7 / 6), abs=1e-6)
    assert length_penalty_factor(2, 1.0) == pytest.approx(7 / 6)
    assert length_penalty_factor(4, 0.0) == 1.0


def test_length_penalty_changes_the_winner():
    # Short: A EOS, p = 0.55 * 0.97; long: B C EOS, p = 0.45 * 0.99 * 0.99.
    table = {
        BOS: {A: 0.55, B: 0.45},
        A: {EOS: 0.97, A: 0.01, B: 0.01, C: 0.01},
        B: {C: 0.99, EOS: 0.01},
        C: {EOS: 0.99, C: 0.01},
    }
    step = table_step(table)
    short, long = math.log(0.55 * 0.97), math.log(0.45 * 0.99 * 0.99)
    tokens, scores = beam_search(step, None, 1, BOS, EOS, 8, beam_width=2, length_penalty=0.0)
    assert tokens.tolist() == [[A, EOS]]
    assert scores.item() == pytest.approx(short, abs=1e-6)
    tokens, scores = beam_search(step, None, 1, BOS, EOS, 8, beam_width=2, length_penalty=3.0)
    assert tokens.tolist() == [[B, C, EOS]]
    expected = long / ((5 + 3) / 6) ** 3
    assert expected > short / ((5 + 2) / 6) ** 3  # the check the search must make
    assert scores.item() == pytest.approx(expected, abs=1e-6)


def test_beam_pads_shorter_hypotheses_and_keeps_batch_items_apart():
    # Item 0 prefers the 2-token answer, item 1 the 3-token one (a per-item bias in the
    # state); the beams of the two items must not mix.
    step_table = table_step(
        {BOS: {A: 0.5, B: 0.5}, A: {EOS: 0.9, C: 0.1}, B: {C: 0.9, EOS: 0.1}, C: {EOS: 1.0}}
    )

    def step(prev, state):
        log_probs, _ = step_table(prev, state)
        return log_probs + state, state

    bias = torch.zeros(2, VOCAB, dtype=torch.float64)
    bias[0, A] = bias[1, B] = 1.0
    tokens, scores = beam_search(step, bias, 2, BOS, EOS, 6, beam_width=3, length_penalty=0.0)
    assert tokens.tolist() == [[A, EOS, PAD], [B, C, EOS]]
    assert scores.shape == (2,)


def test_beam_ends_open_hypotheses_at_max_len():
    step = table_step({BOS: {A: 0.9, EOS: 0.1}, A: {A: 0.9, EOS: 0.1}})
    tokens, scores = beam_search(step, None, 1, BOS, EOS, 3, beam_width=2, length_penalty=0.0)
    # A A A (0.729, no EOS within 3 tokens) beats EOS (0.1), A EOS (0.09), A A EOS (0.081).
    assert tokens.tolist() == [[A, A, A]]
    assert scores.item() == pytest.approx(math.log(0.729), abs=1e-6)


class History(NamedTuple):
    """A state holding every token fed so far, ``(N, t)``: the next-token distribution
    depends on the whole prefix, so a beam that got another beam's state scores wrongly."""

    tokens: torch.Tensor


def _history_model(seed: int):
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(VOCAB, VOCAB, generator=generator) * 2

    def step(prev, state: History):
        tokens = torch.cat([state.tokens, prev[:, None]], dim=1)
        mix = weights[prev] + 0.5 * weights[tokens].sum(dim=1)
        return torch.log_softmax(mix.double(), dim=-1), History(tokens)

    return step


def _replay_log_prob(step, sequence: list[int]) -> float:
    """Summed log-probability of one output sequence, fed alone from BOS."""
    state = History(torch.empty(1, 0, dtype=torch.long))
    prev, total = BOS, 0.0
    for token in sequence:
        log_probs, state = step(torch.tensor([prev]), state)
        total += float(log_probs[0, token])
        prev = token
        if token == EOS:
            break
    return total


def _strip(row: list[int]) -> list[int]:
    return row[: row.index(EOS) + 1] if EOS in row else row


def test_beam_width_one_equals_greedy():
    step = _history_model(0)
    start = History(torch.empty(5, 0, dtype=torch.long))
    greedy = greedy_search(step, start, 5, BOS, EOS, 12)
    beam, _ = beam_search(step, start, 5, BOS, EOS, 12, beam_width=1, length_penalty=0.0)
    assert torch.equal(beam, greedy)


def test_beam_scores_match_replay_so_beam_states_stay_aligned():
    step = _history_model(1)
    start = History(torch.empty(4, 0, dtype=torch.long))
    previous = None
    for width in (1, 2, 4, 8):
        tokens, scores = beam_search(step, start, 4, BOS, EOS, 8, width, length_penalty=0.0)
        assert tokens.shape[0] == 4 and torch.isfinite(scores).all()
        for row, score in zip(tokens.tolist(), scores.tolist(), strict=True):
            assert _replay_log_prob(step, _strip(row)) == pytest.approx(score, abs=1e-5)
        if previous is not None:  # a wider beam never finds a worse best hypothesis here
            assert (scores >= previous - 1e-6).all()
        previous = scores


def test_beam_search_errors_name_the_argument():
    step = table_step(TRAP)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(step, None, 1, BOS, EOS, 5, beam_width=0)
    with pytest.raises(TypeError, match="beam_width"):
        beam_search(step, None, 1, BOS, EOS, 5, beam_width=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_len"):
        greedy_search(step, None, 1, BOS, EOS, 0)
    with pytest.raises(ValueError, match="batch_size"):
        greedy_search(step, None, 0, BOS, EOS, 3)
    with pytest.raises(TypeError, match="bos"):
        greedy_search(step, None, 1, "bos", EOS, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(step, None, 1, BOS, EOS, 5, beam_width=2, length_penalty=math.nan)

    def wrong_rows(prev, state):
        return torch.zeros(prev.shape[0] + 1, VOCAB), state

    with pytest.raises(ValueError, match="rows"):
        greedy_search(wrong_rows, None, 2, BOS, EOS, 3)
