"""Seeded synthetic tasks the demos and the paper reproductions train on."""

from .sequences import (
    ADDITION_VOCAB,
    BOS,
    EOS,
    FIRST_SYMBOL,
    PAD,
    PLUS,
    SequenceBatch,
    addition_task,
    binary_copy_task,
    copy_task,
    exact_match,
    reverse_task,
    sequence_loss,
    shift_right,
    sort_numbers_task,
    sort_task,
)

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
