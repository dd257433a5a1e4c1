"""XLNet's permutation language modelling (Yang et al. 2019): targets, order and masks.

XLNet maximises the likelihood of a sequence under a random *factorisation order*: token
``z_t`` is predicted from the tokens ``z_1 .. z_{t-1}`` that come before it in the order,
whatever their positions. With *partial prediction* only the last tokens of the order are
predicted (the paper's ``K = 6``: about 1/6 of them) and the others are the *context*.
Everything XLNet needs follows from one ``order`` tensor, ``(batch, n)`` int64:

* ``-1`` on the context (non-targets, special tokens and padding): it comes first in the
  order, as a set, so every context token sees every other context token and no target
  (nothing leaks from a target into the context);
* ``0 .. k-1`` on the ``k`` targets of the row: the rank of each in the order.

From it, in Hugging Face's conventions (those :class:`~attnzoo.transformers_zoo.xlnet.XLNetModel`
takes):

* ``perm_mask`` ``(batch, n, n)``, True/1 where token ``i`` may **not** see token ``j``:
  ``j`` is a target and ``order[j] >= order[i]``. A target sees the context and the
  targets before it, never itself (the model's content stream adds the token itself, its
  query stream does not); a context token sees the context only.
* ``target_mapping`` ``(batch, n_predict, n)``: row ``k`` is one-hot on the row's ``k``-th
  target (targets in position order); rows past a row's last target are all zero.
* ``labels`` ``(batch, n_predict)``: the original id of each target, -100 on empty rows.

Targets are chosen as Hugging Face's ``DataCollatorForPermutationLanguageModeling`` chooses
them (the span scheme of the XLNet paper's implementation): walking along the row, draw a
span length ``L`` uniform in ``[1, max_span_length]``, reserve a window of
``int(L / probability)`` tokens, put the span at a uniform offset inside it, and move to the
next window; special tokens and padding are then dropped from the targets. With the same
seed (a :class:`torch.Generator` here, the global generator there) the targets are Hugging
Face's exactly; the order among the targets is a uniform random permutation.

Two deliberate differences from Hugging Face's collator, both about what the model is
allowed to see:

* special tokens are context: Hugging Face gives ``[SEP]`` / ``[CLS]`` a place in the order,
  so a special token placed after some targets sees them, and a target placed before them
  in the order sees that special token (every target sees every non-target) and so reads
  the later targets through it from the second layer on; here specials see the context
  only, so nothing leaks. On the rows of ordinary tokens the two ``perm_mask`` agree
  exactly for the same targets and order.
* inputs keep their tokens (the paper's point: no ``[MASK]`` symbol in pretraining); pass
  ``mask_token_id`` to replace the targets by it in ``input_ids``, as Hugging Face does.
  Hugging Face also samples the order within the two halves of the sequence (so that the
  second half can be read with the first as recurrence memory) and so requires an even
  length; here the order spans the whole sequence and any length works.

Random draws use the given CPU generator (a seed gives the same batch on every device);
results are moved to the input's device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..attention.validation import check_int, check_rank, check_tensor
from .checkpoints import hf_attention_mask

IGNORE_INDEX = -100
"""Label of an empty prediction slot (Hugging Face's ``ignore_index``)."""

CONTEXT = -1
"""The ``order`` value of the context (non-targets, special tokens, padding)."""


@dataclass
class PermutationLMBatch:
    """Inputs and labels of :class:`~attnzoo.transformers_zoo.xlnet.XLNetLMHeadModel`.

    Attributes:
        input_ids: ``(batch, n)`` int64, the original ids (targets replaced by
            ``mask_token_id`` when one was given).
        attention_mask: ``(batch, n)`` bool, True = real token.
        perm_mask: ``(batch, n, n)`` bool, True = ``i`` may not see ``j``.
        target_mapping: ``(batch, n_predict, n)`` float32, one-hot rows (zero rows pad).
        labels: ``(batch, n_predict)`` int64, the targets' original ids, -100 on zero rows.
        order: ``(batch, n)`` int64: -1 on the context, the target's rank in the
            factorisation order (0 = predicted first) on each target.
    """

    input_ids: Tensor
    attention_mask: Tensor
    perm_mask: Tensor
    target_mapping: Tensor
    labels: Tensor
    order: Tensor


def _check_ids(input_ids: Tensor) -> None:
    check_tensor(input_ids, "input_ids")
    check_rank(input_ids, 2, "input_ids", "(batch, n)")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"`input_ids` must be an integer tensor, got dtype {input_ids.dtype}")


def _check_targets(targets: Tensor, name: str) -> None:
    check_tensor(targets, name)
    check_rank(targets, 2, name, "(batch, n)")
    if targets.dtype != torch.bool:
        raise TypeError(f"`{name}` must be a boolean tensor, got dtype {targets.dtype}")


def _check_order(order: Tensor) -> None:
    check_tensor(order, "order")
    check_rank(order, 2, "order", "(batch, n)")
    if order.is_floating_point() or order.is_complex() or order.dtype == torch.bool:
        raise TypeError(f"`order` must be an integer tensor, got dtype {order.dtype}")
    order = order.detach().cpu()
    if order.numel() and int(order.min()) < CONTEXT:
        raise ValueError(f"`order` must hold -1 (context) or ranks >= 0, got {int(order.min())}")
    for row in range(order.shape[0]):
        ranks = order[row][order[row] >= 0].sort().values
        if not torch.equal(ranks, torch.arange(len(ranks))):
            raise ValueError(
                f"`order[{row}]` must rank its targets 0, 1, ..., k - 1 once each, "
                f"got {ranks.tolist()}"
            )


def sample_span_targets(
    candidates: Tensor,
    *,
    probability: float = 1 / 6,
    max_span_length: int = 5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose the targets of permutation LM: spans of about ``probability`` of each row.

    Per row, from position 0: draw ``L`` uniform in ``[1, max_span_length]``, reserve the
    next ``int(L / probability)`` positions, mark ``L`` consecutive ones at a uniform offset
    inside them, and continue after the reserved window (spans are cut at the row's end).
    Marked positions that are not candidates are dropped.

    Args:
        candidates: ``(batch, n)`` bool, True where a token may be predicted.
        probability: the fraction predicted (1/6: the paper's ``K = 6``), in (0, 1).
        max_span_length: the longest span.
        generator: a seeded CPU generator (None: the global one).

    Returns:
        ``(batch, n)`` bool on the CPU, True = target.
    """
    _check_targets(candidates, "candidates")
    if not 0 < probability < 1:
        raise ValueError(f"`probability` must be in (0, 1), got {probability}")
    check_int(max_span_length, "max_span_length")
    batch, n = candidates.shape
    targets = torch.zeros(batch, n, dtype=torch.bool)
    for row in range(batch):
        start = 0
        while start < n:
            span = int(torch.randint(1, max_span_length + 1, (1,), generator=generator))
            window = int(span / probability)
            offset = int(torch.randint(window - span + 1, (1,), generator=generator))
            targets[row, start + offset : start + offset + span] = True
            start += window
    return targets & candidates.cpu()


def random_order(targets: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A uniform random factorisation order of each row's targets.

    Args:
        targets: ``(batch, n)`` bool.
        generator: a seeded CPU generator.

    Returns:
        ``order`` ``(batch, n)`` int64 on the CPU: -1 off the targets, a random
        permutation of ``0 .. k-1`` over a row's ``k`` targets.
    """
    _check_targets(targets, "targets")
    targets = targets.cpu()
    order = torch.full(targets.shape, CONTEXT, dtype=torch.long)
    for row in range(targets.shape[0]):
        positions = torch.nonzero(targets[row]).flatten()
        order[row, positions] = torch.randperm(len(positions), generator=generator)
    return order


def permutation_masks(order: Tensor) -> tuple[Tensor, Tensor]:
    """``perm_mask`` and ``target_mapping`` of a factorisation order.

    Args:
        order: ``(batch, n)`` int: -1 on the context, ``0 .. k-1`` on a row's ``k``
            targets (their ranks in the order).

    Returns:
        ``perm_mask`` ``(batch, n, n)`` bool (True = ``i`` may not see ``j``: ``j`` is a
        target with ``order[j] >= order[i]``) and ``target_mapping``
        ``(batch, n_predict, n)`` float32 (row ``k`` one-hot on the row's ``k``-th target
        in position order, zero past its last; ``n_predict`` = the most targets in a row,
        at least 1), both on ``order``'s device.

    Raises:
        ValueError: a rank below -1, or a row whose ranks are not ``0 .. k-1``.
    """
    _check_order(order)
    target = order >= 0
    perm_mask = target[:, None, :] & (order[:, :, None] <= order[:, None, :])
    counts = target.sum(1)
    n_predict = max(1, int(counts.max())) if order.numel() else 1
    # The k-th target of a row (in position order) goes to slot k: its 0-based count.
    slot = torch.cumsum(target.long(), dim=1) - 1
    batch, n = order.shape
    target_mapping = torch.zeros(batch, n_predict, n, device=order.device)
    rows, positions = torch.nonzero(target, as_tuple=True)
    target_mapping[rows, slot[rows, positions], positions] = 1.0
    return perm_mask, target_mapping


def permutation_lm_batch(
    input_ids: Tensor,
    *,
    special_ids: Iterable[int],
    pad_id: int,
    attention_mask: Tensor | None = None,
    probability: float = 1 / 6,
    max_span_length: int = 5,
    mask_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> PermutationLMBatch:
    """XLNet permutation-LM inputs for a batch of token ids.

    Targets by :func:`sample_span_targets` (never a special, pad or attention-masked token),
    a uniform order of the targets by :func:`random_order`, masks by
    :func:`permutation_masks`.

    Args:
        input_ids: ``(batch, n)`` integer token ids.
        special_ids: ids never predicted ([CLS], [SEP], ...); they are context.
        pad_id: the padding id (never predicted).
        attention_mask: ``(batch, n)`` bool or 0/1 integer, 1 = real token (None: the
            tokens that are not ``pad_id``).
        probability: fraction of the tokens predicted (1/6).
        max_span_length: the longest span of targets.
        mask_token_id: replace the targets by this id in ``input_ids`` (Hugging Face's
            collator does; None, the paper's way, keeps the tokens).
        generator: a seeded CPU generator (None: the global one).

    Returns:
        a :class:`PermutationLMBatch` on ``input_ids``' device.
    """
    _check_ids(input_ids)
    check_int(pad_id, "pad_id", minimum=0)
    if mask_token_id is not None:
        check_int(mask_token_id, "mask_token_id", minimum=0)
    ids = input_ids.detach().to("cpu", torch.long)
    real = hf_attention_mask(attention_mask, ids.shape)
    real = (ids != pad_id) if real is None else real.cpu()
    excluded = torch.tensor(sorted({int(i) for i in special_ids} | {pad_id}), dtype=torch.long)
    candidates = real & ~torch.isin(ids, excluded)
    targets = sample_span_targets(
        candidates,
        probability=probability,
        max_span_length=max_span_length,
        generator=generator,
    )
    order = random_order(targets, generator)
    perm_mask, target_mapping = permutation_masks(order)
    labels = torch.full(target_mapping.shape[:2], IGNORE_INDEX, dtype=torch.long)
    rows, slots, positions = torch.nonzero(target_mapping, as_tuple=True)
    labels[rows, slots] = ids[rows, positions]
    inputs = ids if mask_token_id is None else ids.masked_fill(targets, mask_token_id)
    device = input_ids.device
    return PermutationLMBatch(
        input_ids=inputs.to(device),
        attention_mask=real.to(device),
        perm_mask=perm_mask.to(device),
        target_mapping=target_mapping.to(device),
        labels=labels.to(device),
        order=order.to(device),
    )


@dataclass
class PermutationLMCollator:
    """:func:`permutation_lm_batch` with its own seeded generator: fresh targets and a
    fresh order every call, reproducibly from ``seed``.

    Attributes:
        special_ids, pad_id, probability, max_span_length, mask_token_id: as
            :func:`permutation_lm_batch`.
        seed: seed of the collator's CPU generator.
    """

    special_ids: tuple[int, ...]
    pad_id: int
    probability: float = 1 / 6
    max_span_length: int = 5
    mask_token_id: int | None = None
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.probability < 1:
            raise ValueError(f"`probability` must be in (0, 1), got {self.probability}")
        check_int(self.max_span_length, "max_span_length")
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch["input_ids"]`` ``(batch, n)`` (and an optional ``attention_mask``) ->
        a new dict with every key of ``batch`` and ``input_ids``, ``attention_mask``,
        ``perm_mask``, ``target_mapping``, ``labels`` set (the keyword arguments of
        :meth:`~attnzoo.transformers_zoo.xlnet.XLNetLMHeadModel.forward`)."""
        if "input_ids" not in batch:
            raise ValueError(f"`batch` must hold 'input_ids', got keys {sorted(batch)}")
        out = permutation_lm_batch(
            batch["input_ids"],
            special_ids=self.special_ids,
            pad_id=self.pad_id,
            attention_mask=batch.get("attention_mask"),
            probability=self.probability,
            max_span_length=self.max_span_length,
            mask_token_id=self.mask_token_id,
            generator=self.generator,
        )
        return {
            **batch,
            "input_ids": out.input_ids,
            "attention_mask": out.attention_mask,
            "perm_mask": out.perm_mask,
            "target_mapping": out.target_mapping,
            "labels": out.labels,
        }


__all__ = [
    "CONTEXT",
    "IGNORE_INDEX",
    "PermutationLMBatch",
    "PermutationLMCollator",
    "permutation_lm_batch",
    "permutation_masks",
    "random_order",
    "sample_span_targets",
]
