"""Adaptive Computation Time for recurrent cells (Graves 2016).

At every input step ``t`` the wrapped cell is applied ``N(t)`` times ("ponder steps")
before the next input is read. Ponder step ``n`` sees ``x_t`` with one extra flag bit, set
on the first step only (so the cell can tell a new input from a repeated one), and emits a
halting probability ``h^n = sigmoid(W_h s^n + b_h)``. With ``epsilon`` small::

    N(t) = min( min{n : h^1 + ... + h^n >= 1 - epsilon},  max_steps )
    R(t) = 1 - (h^1 + ... + h^{N(t)-1})                       (the remainder)
    p^n  = h^n for n < N(t),  p^{N(t)} = R(t)                  (sums to 1)
    s_t  = sum_n p^n s^n,   y_t = sum_n p^n y^n                 (mean-field update)
    rho_t = N(t) + R(t)                                          (the ponder cost)

``N(t)`` is piecewise constant, so the gradient of the ponder cost flows through ``R(t)``
only. The task loss plus ``time_penalty * rho`` (summed or averaged over ``t``) trades
accuracy against computation: a larger ``time_penalty`` (the paper's tau) gives fewer
ponder steps.

Shapes: ``inputs`` ``(batch, seq, input_size)``; ``outputs`` ``(batch, seq, output_size)``
(``hidden_size`` without an output layer); ``ponder_cost`` and ``n_updates`` ``(batch, seq)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.validation import check_positive, check_rank, check_size
from .training import TrainConfig, fit

CELLS = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}


def halting_distribution(
    halting_probs: Tensor, epsilon: float = 0.01
) -> tuple[Tensor, Tensor, Tensor]:
    """The ACT weights ``p^n``, the step counts ``N`` and the remainders ``R``.

    The last column is always a halting step (it stands for ``max_steps``, or for the last
    step any row needed), whatever its cumulative sum.

    Args:
        halting_probs: ``(..., K)`` halting probabilities ``h^1..h^K`` in ``[0, 1]``.
        epsilon: halt once the cumulative sum reaches ``1 - epsilon``; in ``(0, 1)``.
    Returns:
        ``weights`` ``(..., K)`` (``p^n``, 0 after ``N``; each row sums to 1),
        ``n_updates`` ``(...)`` int64 in ``[1, K]`` and ``remainder`` ``(...)``.
    """
    if not 0 < epsilon < 1:
        raise ValueError(f"`epsilon` must be in (0, 1), got {epsilon}")
    k = halting_probs.shape[-1]
    cumulative = halting_probs.cumsum(dim=-1)
    halts = cumulative >= 1.0 - epsilon
    halts[..., -1] = True
    # Index of the first halting step (argmax of a bool returns the first True).
    last = halts.long().argmax(dim=-1)  # (...,) 0-based N - 1
    steps = torch.arange(k, device=halting_probs.device)
    before = steps < last[..., None]  # n < N
    # R = 1 - sum_{n < N} h^n, computed from the masked probabilities so it is differentiable.
    remainder = 1.0 - (halting_probs * before).sum(dim=-1)
    at_last = steps == last[..., None]
    weights = halting_probs * before + remainder[..., None] * at_last
    return weights, last + 1, remainder


@dataclass
class ACTConfig:
    """Settings of an :class:`ACT` wrapper.

    Attributes:
        input_size: features per input step (the flag bit is added inside).
        hidden_size: width of the cell.
        cell: ``"rnn"``, ``"gru"`` or ``"lstm"``.
        output_size: width of a linear output layer applied at every ponder step and
            mean-field combined; None returns the combined hidden state.
        max_steps: the most ponder steps per input step (the paper's ``M``).
        epsilon: halting threshold is ``1 - epsilon``.
        halting_bias_init: initial bias of the halting unit (higher: fewer initial steps).
    """

    input_size: int
    hidden_size: int
    cell: str = "gru"
    output_size: int | None = None
    max_steps: int = 10
    epsilon: float = 0.01
    halting_bias_init: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.input_size, "input_size")
        check_positive(self.hidden_size, "hidden_size")
        if self.output_size is not None:
            check_positive(self.output_size, "output_size")
        if self.cell not in CELLS:
            raise ValueError(f"`cell` must be one of {sorted(CELLS)}, got {self.cell!r}")
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"`max_steps` must be an int >= 1, got {self.max_steps!r}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"`epsilon` must be in (0, 1), got {self.epsilon}")


@dataclass
class ACTOutput:
    """What :meth:`ACT.forward` returns.

    Attributes:
        outputs: ``(batch, seq, output_size or hidden_size)`` mean-field outputs.
        ponder_cost: ``(batch, seq)`` ``N(t) + R(t)``; add ``time_penalty * ponder_cost``
            (summed over time, averaged over the batch) to the loss.
        n_updates: ``(batch, seq)`` int64 ponder steps ``N(t)``.
        state: final state: ``h`` ``(batch, hidden_size)``, or ``(h, c)`` for an LSTM.
    """

    outputs: Tensor
    ponder_cost: Tensor
    n_updates: Tensor
    state: Tensor | tuple[Tensor, Tensor]


class ACT(nn.Module):
    """A recurrent cell that decides how many times to update per input (ACT).

    Args:
        config: an :class:`ACTConfig`.
    """

    def __init__(self, config: ACTConfig) -> None:
        super().__init__()
        self.config = config
        self.cell = CELLS[config.cell](config.input_size + 1, config.hidden_size)
        self.halting = nn.Linear(config.hidden_size, 1)
        nn.init.constant_(self.halting.bias, config.halting_bias_init)
        self.output = (
            nn.Linear(config.hidden_size, config.output_size) if config.output_size else None
        )

    def _hidden(self, state: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        return state[0] if isinstance(state, tuple) else state

    def ponder(
        self, x: Tensor, state: Tensor | tuple[Tensor, Tensor]
    ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor], Tensor, Tensor]:
        """Ponder over one input step.

        Args:
            x: ``(batch, input_size)``.
            state: ``(batch, hidden)``, or ``(h, c)`` for an LSTM.
        Returns:
            ``output`` ``(batch, out)``, the mean-field ``state``, ``ponder_cost``
            ``(batch,)`` and ``n_updates`` ``(batch,)``.
        """
        cfg = self.config
        batch = x.shape[0]
        flag = x.new_zeros(batch, 1)
        first = torch.cat([x, flag + 1.0], dim=-1)
        later = torch.cat([x, flag], dim=-1)
        states, outputs, probs = [], [], []
        cumulative = x.new_zeros(batch)
        for n in range(cfg.max_steps):
            state = self.cell(first if n == 0 else later, state)
            hidden = self._hidden(state)
            h = torch.sigmoid(self.halting(hidden))[:, 0]
            states.append(state)
            outputs.append(self.output(hidden) if self.output is not None else hidden)
            probs.append(h)
            # Stop once every row has halted; later steps would all get weight 0.
            cumulative = cumulative + h.detach()
            if bool((cumulative >= 1.0 - cfg.epsilon).all()):
                break
        weights, n_updates, remainder = halting_distribution(torch.stack(probs, -1), cfg.epsilon)

        def mean_field(items: list[Tensor]) -> Tensor:
            return torch.einsum("bk,bkd->bd", weights, torch.stack(items, dim=1))

        if isinstance(state, tuple):
            new_state: Tensor | tuple[Tensor, Tensor] = (
                mean_field([s[0] for s in states]),  # type: ignore[index]
                mean_field([s[1] for s in states]),  # type: ignore[index]
            )
        else:
            new_state = mean_field(states)  # type: ignore[arg-type]
        return mean_field(outputs), new_state, n_updates + remainder, n_updates

    def initial_state(self, batch_size: int, like: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Zeros on ``like``'s device and dtype: ``(batch, hidden)`` or ``(h, c)``."""
        h = like.new_zeros(batch_size, self.config.hidden_size)
        return (h, h.clone()) if self.config.cell == "lstm" else h

    def forward(
        self, inputs: Tensor, state: Tensor | tuple[Tensor, Tensor] | None = None
    ) -> ACTOutput:
        """Run over a sequence, pondering at every step.

        Args:
            inputs: ``(batch, seq, input_size)``.
            state: initial state (zeros when None).
        Returns:
            an :class:`ACTOutput`.
        """
        check_rank(inputs, 3, "inputs", "(batch, seq, input_size)")
        check_size(inputs, -1, self.config.input_size, "inputs", "input_size")
        if state is None:
            state = self.initial_state(inputs.shape[0], inputs)
        outputs, costs, counts = [], [], []
        for t in range(inputs.shape[1]):
            out, state, cost, count = self.ponder(inputs[:, t], state)
            outputs.append(out)
            costs.append(cost)
            counts.append(count)
        return ACTOutput(
            torch.stack(outputs, 1), torch.stack(costs, 1), torch.stack(counts, 1), state
        )


def parity_task(batch_size: int, bits: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The parity task of the ACT paper, one vector per sequence.

    A random number of the first ``bits`` entries (1 to ``bits``) are set to ``+1`` or
    ``-1`` at random, the rest are 0; the target is 1 if the number of ``+1`` is odd.

    Returns:
        ``inputs`` ``(batch, 1, bits)`` and ``targets`` ``(batch,)`` float 0/1.
    """
    check_positive(batch_size, "batch_size")
    check_positive(bits, "bits")
    signs = torch.randint(0, 2, (batch_size, bits), generator=generator) * 2 - 1
    used = torch.randint(1, bits + 1, (batch_size, 1), generator=generator)
    x = signs * (torch.arange(bits) < used)
    targets = ((x == 1).sum(dim=1) % 2).float()
    return x.float()[:, None, :], targets


def train_parity(
    time_penalty: float,
    *,
    bits: int = 6,
    hidden_size: int = 64,
    steps: int = 1500,
    batch_size: int = 64,
    max_steps: int = 10,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Train an ACT GRU on :func:`parity_task` with time penalty ``time_penalty``.

    Returns:
        ``accuracy`` and ``mean_ponder_steps`` (mean ``N``) on 1000 fresh vectors, and
        ``mean_ponder_cost`` (mean ``N + R``).
    """
    if time_penalty < 0:
        raise ValueError(f"`time_penalty` must be >= 0, got {time_penalty}")
    torch.manual_seed(seed)
    model = ACT(ACTConfig(bits, hidden_size, cell="gru", output_size=1, max_steps=max_steps))
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(model: nn.Module, batch: object) -> Tensor:
        inputs, targets = cast(tuple[Tensor, Tensor], batch)
        out = model(inputs)
        task = F.binary_cross_entropy_with_logits(out.outputs[:, -1, 0], targets)
        return task + time_penalty * out.ponder_cost.sum(dim=1).mean()

    config = TrainConfig(
        steps=steps, lr=lr, progress=progress, description=f"ACT parity (tau={time_penalty})"
    )
    fit(model, loss_fn, lambda step: parity_task(batch_size, bits, generator), config)
    inputs, targets = parity_task(1000, bits, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        out = model(inputs)
    accuracy = ((out.outputs[:, -1, 0] > 0).float() == targets).float().mean()
    return {
        "accuracy": float(accuracy),
        "mean_ponder_steps": float(out.n_updates.float().mean()),
        "mean_ponder_cost": float(out.ponder_cost.mean()),
    }


def run_act_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Train ACT on parity with a low and a high time penalty and compare the pondering.

    Returns:
        ``accuracy_low_tau``, ``ponder_steps_low_tau``, ``accuracy_high_tau`` and
        ``ponder_steps_high_tau``.
    """
    results: dict[str, float] = {}
    for name, tau in (("low_tau", 1e-3), ("high_tau", 1e-1)):
        metrics = train_parity(tau, steps=steps or 1500, seed=seed, progress=progress)
        results[f"accuracy_{name}"] = metrics["accuracy"]
        results[f"ponder_steps_{name}"] = metrics["mean_ponder_steps"]
    return results


__all__ = [
    "ACT",
    "ACTConfig",
    "ACTOutput",
    "halting_distribution",
    "parity_task",
    "run_act_demo",
    "train_parity",
]
