"""Pointer network (Vinyals, Fortunato and Jaitly 2015).

An LSTM encoder reads input vectors ``(batch, n, input_dim)``; an LSTM decoder then
emits, at each step, a distribution over the ``n`` input positions. That attention
distribution *is* the output: the model answers by pointing at its inputs, so the output
vocabulary grows with the input (sorting, convex hulls, travelling salesman tours).

Decoding step ``i`` (the paper's eq. 3)::

    u_j^i = v^T tanh(W_1 e_j + W_2 d_i)          (additive score, AdditiveScore)
    p(C_i | C_1..C_{i-1}, P) = softmax(u^i)      (over allowed positions only)

Padded positions never receive probability. With ``mask_pointed=True`` (permutation
outputs such as sorting) a position already pointed at is masked out of later steps too,
so greedy decoding always returns a permutation. The decoder's input at step ``i`` is the
input vector at the position pointed at in step ``i - 1`` (the target's in training, i.e.
teacher forcing; the argmax in greedy decoding); step 0 gets a learned start vector.

Shapes: ``inputs`` ``(batch, n, input_dim)``, ``mask`` ``(batch, n)`` boolean (True = real
input, real inputs first), ``targets`` ``(batch, out_len)`` int64 positions in ``[0, n)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from ..attention.normalizers import masked_normalize
from ..attention.scores import AdditiveScore
from ..attention.validation import (
    check_bool_mask,
    check_positive,
    check_prefix_mask,
    check_rank,
    check_size,
)
from .tasks import sort_numbers_task
from .training import TrainConfig, fit


@dataclass
class PointerNetworkConfig:
    """Sizes of a :class:`PointerNetwork`.

    Attributes:
        input_dim: features per input position (1 for sorting numbers).
        hidden_size: LSTM width of encoder and decoder.
        attention_hidden: width of the additive score's tanh layer (None: ``hidden_size``).
        mask_pointed: mask positions already pointed at (permutation outputs).
    """

    input_dim: int = 1
    hidden_size: int = 128
    attention_hidden: int | None = None
    mask_pointed: bool = True

    def __post_init__(self) -> None:
        check_positive(self.input_dim, "input_dim")
        check_positive(self.hidden_size, "hidden_size")
        if self.attention_hidden is not None:
            check_positive(self.attention_hidden, "attention_hidden")


@dataclass
class PointerOutput:
    """What :meth:`PointerNetwork.forward` returns.

    Attributes:
        log_probs: ``(batch, out_len, n)`` log-probabilities over input positions;
            ``-inf`` at masked positions (a step with no allowed position is all ``-inf``).
        probs: ``(batch, out_len, n)`` the same as probabilities: each row sums to 1 over
            its allowed positions and is exactly 0 at masked ones (all 0 if none allowed).
        pointers: ``(batch, out_len)`` int64, the position fed to the next step: the target
            under teacher forcing, the argmax in greedy decoding; ``-1`` where no position
            was allowed (past the end of a shorter sequence).
    """

    log_probs: Tensor
    probs: Tensor
    pointers: Tensor


class PointerNetwork(nn.Module):
    """LSTM encoder, LSTM decoder and an additive pointer over the input positions.

    Args:
        config: a :class:`PointerNetworkConfig`.
    """

    def __init__(self, config: PointerNetworkConfig) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.encoder = nn.LSTM(config.input_dim, h, batch_first=True)
        self.decoder = nn.LSTMCell(config.input_dim, h)
        self.pointer = AdditiveScore(h, h, config.attention_hidden or h)
        # The decoder's first input: no position has been pointed at yet.
        self.decoder_start = nn.Parameter(torch.zeros(config.input_dim))

    def _check(self, inputs: Tensor, mask: Tensor | None) -> Tensor:
        """Validate ``inputs``/``mask``; return the lengths ``(batch,)``."""
        check_rank(inputs, 3, "inputs", "(batch, n, input_dim)")
        check_size(inputs, -1, self.config.input_dim, "inputs", "input_dim")
        batch, n, _ = inputs.shape
        if mask is None:
            return torch.full((batch,), n, dtype=torch.long, device=inputs.device)
        check_bool_mask(mask, "mask")
        if tuple(mask.shape) != (batch, n):
            raise ValueError(
                f"`mask` must have shape (batch, n) = {(batch, n)}, got {tuple(mask.shape)}"
            )
        # pack_padded_sequence needs the real inputs first.
        lengths = check_prefix_mask(mask, "mask")
        if (lengths == 0).any():
            raise ValueError("`mask`: every sequence needs at least one real input, got length 0")
        return lengths

    def encode(self, inputs: Tensor, lengths: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``(batch, n, input_dim)`` -> encoder states ``(batch, n, hidden)`` and the final
        ``(h, c)``, each ``(batch, hidden)``, taken at each sequence's last real input."""
        n = inputs.shape[1]
        if bool((lengths == n).all()):
            states, (h, c) = self.encoder(inputs)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(
                inputs, lengths.cpu(), batch_first=True, enforce_sorted=False
            )
            packed_states, (h, c) = self.encoder(packed)
            states, _ = nn.utils.rnn.pad_packed_sequence(
                packed_states, batch_first=True, total_length=n
            )
        return states, (h[0], c[0])

    def forward(
        self,
        inputs: Tensor,
        targets: Tensor | None = None,
        mask: Tensor | None = None,
        max_len: int | None = None,
    ) -> PointerOutput:
        """Point at input positions, with teacher forcing when ``targets`` are given.

        Args:
            inputs: ``(batch, n, input_dim)``.
            targets: ``(batch, out_len)`` int64 positions in ``[0, n)`` for teacher forcing;
                None decodes greedily. With ``mask_pointed`` a row must not repeat a
                position (it would have probability 0 at its second step).
            mask: ``(batch, n)`` boolean, True = real input (real inputs first).
            max_len: output steps when decoding greedily; default ``n``.

        Returns:
            a :class:`PointerOutput` with ``out_len`` (or ``max_len``) steps.
        """
        lengths = self._check(inputs, mask)
        batch, n, _ = inputs.shape
        if targets is not None:
            check_rank(targets, 2, "targets", "(batch, out_len)")
            check_size(targets, 0, batch, "targets", "batch")
            if targets.dtype != torch.long:
                raise TypeError(f"`targets` must be int64 positions, got dtype {targets.dtype}")
            bad = (targets < 0) | (targets >= lengths[:, None])
            if bad.any():
                value = int(targets[bad][0])
                raise ValueError(
                    f"`targets` must be positions in [0, length) of their row (n = {n}), "
                    f"got {value}"
                )
            steps = targets.shape[1]
        else:
            steps = n if max_len is None else max_len
            check_positive(steps, "max_len")

        states, (h, c) = self.encode(inputs, lengths)
        projected = self.pointer.project_keys(states)  # (batch, n, attn): once per source
        positions = torch.arange(n, device=inputs.device)
        allowed = positions[None, :] < lengths[:, None]  # (batch, n)
        step_input = self.decoder_start.expand(batch, -1)
        rows = torch.arange(batch, device=inputs.device)

        all_log_probs, all_probs, pointers = [], [], []
        for i in range(steps):
            h, c = self.decoder(step_input, (h, c))
            scores = self.pointer.score_projected(h[:, None, :], projected)[:, 0]  # (batch, n)
            log_probs = _masked_log_softmax(scores, allowed)
            probs = masked_normalize(scores, allowed, "softmax")
            any_allowed = allowed.any(dim=1)
            pointer = targets[:, i] if targets is not None else probs.argmax(dim=1)
            pointer = torch.where(any_allowed, pointer, torch.full_like(pointer, -1))
            all_log_probs.append(log_probs)
            all_probs.append(probs)
            pointers.append(pointer)
            # Feed the pointed input; a finished row keeps getting its last input (ignored).
            safe = pointer.clamp(min=0)
            step_input = inputs[rows, safe]
            if self.config.mask_pointed:
                allowed = allowed & ~(
                    (positions[None, :] == pointer[:, None]) & any_allowed[:, None]
                )
        return PointerOutput(
            torch.stack(all_log_probs, dim=1),
            torch.stack(all_probs, dim=1),
            torch.stack(pointers, 1),
        )

    def loss(self, inputs: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood of ``targets`` under teacher forcing (a scalar).

        Args:
            inputs: ``(batch, n, input_dim)``.
            targets: ``(batch, out_len)`` positions; with a ``mask``, steps past a row's
                length are ignored whatever they hold (use any valid position, e.g. 0).
            mask: ``(batch, n)`` boolean, True = real input.
        """
        lengths = self._check(inputs, mask)
        check_rank(targets, 2, "targets", "(batch, out_len)")
        steps = torch.arange(targets.shape[1], device=targets.device)
        real = steps[None, :] < lengths[:, None]  # (batch, out_len)
        out = self.forward(inputs, targets.masked_fill(~real, 0), mask)
        picked = out.log_probs.gather(2, targets.masked_fill(~real, 0)[..., None])[..., 0]
        return -(picked[real]).mean()


def _masked_log_softmax(scores: Tensor, allowed: Tensor) -> Tensor:
    """``log_softmax`` over allowed entries; ``-inf`` elsewhere, no NaN for empty rows.

    Args:
        scores: ``(batch, n)``.
        allowed: ``(batch, n)`` boolean.
    """
    empty = ~allowed.any(dim=-1, keepdim=True)
    # An empty row would be log(0/0); give it finite scores, then mask everything.
    z = scores.masked_fill(~allowed & ~empty, float("-inf")).masked_fill(empty, 0.0)
    return (
        torch.log_softmax(z.float(), dim=-1).to(scores.dtype).masked_fill(~allowed, float("-inf"))
    )


def sort_accuracy(pointers: Tensor, order: Tensor) -> tuple[float, float]:
    """Fraction of positions and of whole sequences pointed at correctly.

    Args:
        pointers: ``(batch, n)`` predicted positions.
        order: ``(batch, n)`` the correct positions.
    Returns:
        ``(position_accuracy, sequence_accuracy)``.
    """
    correct = pointers == order
    return float(correct.float().mean()), float(correct.all(dim=1).float().mean())


def run_pointer_demo(
    steps: int | None = None, progress: bool = True, seed: int = 0
) -> dict[str, float]:
    """Train a pointer network to sort 5 numbers in [0, 1) and measure greedy decoding.

    Returns:
        ``position_accuracy`` and ``sequence_accuracy`` of greedy decoding on 1000 fresh
        sequences, ``final_loss`` and ``is_permutation`` (1.0 if every output is one).
    """
    torch.manual_seed(seed)
    length, batch_size = 5, 128
    model = PointerNetwork(PointerNetworkConfig(input_dim=1, hidden_size=64))
    generator = torch.Generator().manual_seed(seed)

    def batches(step: int) -> tuple[Tensor, Tensor]:
        return sort_numbers_task(batch_size, length, generator)

    def loss_fn(_: nn.Module, batch: object) -> Tensor:
        values, order = cast(tuple[Tensor, Tensor], batch)
        return model.loss(values, order)

    config = TrainConfig(
        steps=steps or 1500, lr=3e-3, progress=progress, description="pointer network (sort)"
    )
    history = fit(model, loss_fn, batches, config)
    values, order = sort_numbers_task(1000, length, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        pointers = model(values).pointers
    position_accuracy, sequence_accuracy = sort_accuracy(pointers, order)
    is_permutation = bool((pointers.sort(dim=1).values == torch.arange(length)).all())
    return {
        "position_accuracy": position_accuracy,
        "sequence_accuracy": sequence_accuracy,
        "final_loss": history.mean_last(50),
        "is_permutation": float(is_permutation),
    }


__all__ = [
    "PointerNetwork",
    "PointerNetworkConfig",
    "PointerOutput",
    "run_pointer_demo",
    "sort_accuracy",
]
