"""Seeded synthetic sequence tasks: copy, reverse, sort, addition, and their kin.

Each task draws a fresh batch from a ``torch.Generator``, so an experiment is exactly
reproducible from its seed and needs no data on disk. Token sequences share one small
vocabulary layout: ``PAD = 0``, ``BOS = 1``, ``EOS = 2``, then the task's symbols from
``FIRST_SYMBOL = 3`` on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...attention.validation import check_positive

PAD, BOS, EOS = 0, 1, 2
FIRST_SYMBOL = 3


@dataclass
class SequenceBatch:
    """A batch of a sequence-to-sequence task.

    Attributes:
        src: ``(batch, src_len)`` token ids, PAD after each sequence's end.
        tgt: ``(batch, tgt_len)`` target ids, each ending with EOS, then PAD.
        src_mask: ``(batch, src_len)`` boolean, True = real token.
        tgt_mask: ``(batch, tgt_len)`` boolean, True = real token (EOS included).
    """

    src: Tensor
    tgt: Tensor
    src_mask: Tensor
    tgt_mask: Tensor

    def decoder_input(self) -> Tensor:
        """Teacher-forcing input ``(batch, tgt_len)``: BOS followed by ``tgt`` shifted right."""
        return shift_right(self.tgt)

    def to(self, device: torch.device | str) -> SequenceBatch:
        """The same batch on ``device``."""
        return SequenceBatch(
            *(t.to(device) for t in (self.src, self.tgt, self.src_mask, self.tgt_mask))
        )


def shift_right(tgt: Tensor, bos: int = BOS) -> Tensor:
    """``(batch, n)`` -> ``(batch, n)``: prepend ``bos``, drop the last position."""
    start = torch.full_like(tgt[:, :1], bos)
    return torch.cat([start, tgt[:, :-1]], dim=1)


def _lengths(batch_size: int, min_len: int, max_len: int, generator: torch.Generator) -> Tensor:
    check_positive(batch_size, "batch_size")
    check_positive(min_len, "min_len")
    if max_len < min_len:
        raise ValueError(f"`max_len` must be >= min_len = {min_len}, got {max_len}")
    return torch.randint(min_len, max_len + 1, (batch_size,), generator=generator)


def _pad_rows(rows: list[Tensor], extra_eos: bool) -> tuple[Tensor, Tensor]:
    """Stack 1-D id tensors into ``(batch, max_len)`` with PAD, optionally ending each with EOS."""
    if extra_eos:
        rows = [torch.cat([row, torch.tensor([EOS])]) for row in rows]
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out, out != PAD


def _symbols(length: int, n_symbols: int, generator: torch.Generator) -> Tensor:
    return torch.randint(FIRST_SYMBOL, FIRST_SYMBOL + n_symbols, (length,), generator=generator)


def _seq2seq_task(
    transform: str,
    batch_size: int,
    min_len: int,
    max_len: int,
    n_symbols: int,
    generator: torch.Generator,
) -> SequenceBatch:
    check_positive(n_symbols, "n_symbols")
    lengths = _lengths(batch_size, min_len, max_len, generator)
    sources = [_symbols(int(n), n_symbols, generator) for n in lengths]
    if transform == "copy":
        targets = sources
    elif transform == "reverse":
        targets = [s.flip(0) for s in sources]
    else:  # sort
        targets = [s.sort().values for s in sources]
    src, src_mask = _pad_rows(sources, extra_eos=False)
    tgt, tgt_mask = _pad_rows(targets, extra_eos=True)
    return SequenceBatch(src, tgt, src_mask, tgt_mask)


def copy_task(
    batch_size: int, min_len: int, max_len: int, n_symbols: int, generator: torch.Generator
) -> SequenceBatch:
    """Target = source. Vocabulary size ``FIRST_SYMBOL + n_symbols``."""
    return _seq2seq_task("copy", batch_size, min_len, max_len, n_symbols, generator)


def reverse_task(
    batch_size: int, min_len: int, max_len: int, n_symbols: int, generator: torch.Generator
) -> SequenceBatch:
    """Target = source reversed: the alignment is the anti-diagonal."""
    return _seq2seq_task("reverse", batch_size, min_len, max_len, n_symbols, generator)


def sort_task(
    batch_size: int, min_len: int, max_len: int, n_symbols: int, generator: torch.Generator
) -> SequenceBatch:
    """Target = source symbols in increasing order."""
    return _seq2seq_task("sort", batch_size, min_len, max_len, n_symbols, generator)


PLUS = FIRST_SYMBOL + 10
"""Token of ``+`` in :func:`addition_task`; digits 0-9 are ``FIRST_SYMBOL + d``."""
ADDITION_VOCAB = PLUS + 1


def addition_task(batch_size: int, max_digits: int, generator: torch.Generator) -> SequenceBatch:
    """``a + b`` written in decimal digits (most significant first) -> the digits of the sum.

    Operands have 1 to ``max_digits`` digits. Vocabulary size :data:`ADDITION_VOCAB`.
    """
    check_positive(max_digits, "max_digits")
    sources, targets = [], []
    high = 10**max_digits
    operands = torch.randint(0, high, (batch_size, 2), generator=generator)
    for a, b in operands.tolist():
        sources.append([*_digits(a), PLUS, *_digits(b)])
        targets.append(_digits(a + b))
    src, src_mask = _pad_rows([torch.tensor(s) for s in sources], extra_eos=False)
    tgt, tgt_mask = _pad_rows([torch.tensor(t) for t in targets], extra_eos=True)
    return SequenceBatch(src, tgt, src_mask, tgt_mask)


def _digits(n: int) -> list[int]:
    return [FIRST_SYMBOL + int(c) for c in str(n)]


def sort_numbers_task(
    batch_size: int, length: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Real numbers to sort by pointing (Vinyals et al. 2015).

    Returns:
        ``values`` ``(batch, length, 1)`` uniform in [0, 1) and ``order``
        ``(batch, length)``: the input positions in increasing order of value.
    """
    check_positive(batch_size, "batch_size")
    check_positive(length, "length")
    values = torch.rand(batch_size, length, 1, generator=generator)
    return values, values.squeeze(-1).argsort(dim=-1)


def binary_copy_task(
    batch_size: int, length: int, width: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The copy task of the Neural Turing Machine (Graves et al. 2014).

    The input shows ``length`` random binary vectors of ``width`` bits, then a delimiter
    (an extra channel), then ``length`` blank steps during which the model must emit the
    vectors again.

    Returns:
        ``inputs`` ``(batch, 2 * length + 1, width + 1)`` and ``targets``
        ``(batch, length, width)`` (float 0/1), the outputs expected over the last
        ``length`` steps.
    """
    check_positive(batch_size, "batch_size")
    check_positive(length, "length")
    check_positive(width, "width")
    bits = torch.randint(0, 2, (batch_size, length, width), generator=generator).float()
    inputs = torch.zeros(batch_size, 2 * length + 1, width + 1)
    inputs[:, :length, :width] = bits
    inputs[:, length, width] = 1.0  # delimiter channel
    return inputs, bits


# Metrics of the sequence-to-sequence tasks, shared by every model trained on them.


def sequence_loss(
    logits: Tensor, tgt: Tensor, tgt_mask: Tensor, label_smoothing: float = 0.0
) -> Tensor:
    """Mean token cross-entropy over real target positions.

    Args:
        logits: ``(batch, n, vocab)``.
        tgt: ``(batch, n)`` target ids.
        tgt_mask: ``(batch, n)`` boolean, True = real target token.
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy` (the paper: 0.1).
    """
    return F.cross_entropy(logits[tgt_mask], tgt[tgt_mask], label_smoothing=label_smoothing)


def exact_match(predicted: Tensor, tgt: Tensor, tgt_mask: Tensor) -> float:
    """Fraction of sequences whose decoded tokens equal the target up to and including EOS.

    ``predicted`` ``(batch, n_pred)`` is padded/cut to the target width ``(batch, n)``;
    positions outside ``tgt_mask`` are ignored, so a prediction must end exactly at EOS
    where the target does (the token after EOS in ``predicted`` is PAD by construction).
    """
    n = tgt.shape[1]
    if predicted.shape[1] < n:
        predicted = F.pad(predicted, (0, n - predicted.shape[1]), value=PAD)
    predicted = predicted[:, :n]
    correct = ((predicted == tgt) | ~tgt_mask).all(dim=1)
    return float(correct.float().mean())


__all__ = [
    "ADDITION_VOCAB",
    "BOS",
    "EOS",
    "FIRST_SYMBOL",
    "PAD",
    "PLUS",
    "SequenceBatch",
    "addition_task",
    "binary_copy_task",
    "copy_task",
    "exact_match",
    "reverse_task",
    "sequence_loss",
    "shift_right",
    "sort_numbers_task",
    "sort_task",
]
