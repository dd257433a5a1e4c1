"""The synthetic tasks and the training loop the demos share."""

from __future__ import annotations

import pytest
import torch

from attnzoo.transformers_zoo.tasks import (
    ADDITION_VOCAB,
    BOS,
    EOS,
    FIRST_SYMBOL,
    PAD,
    PLUS,
    addition_task,
    binary_copy_task,
    copy_task,
    reverse_task,
    shift_right,
    sort_numbers_task,
    sort_task,
)
from attnzoo.transformers_zoo.training import TrainConfig, fit


def _real(row: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return row[mask].tolist()


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (copy_task, lambda s: s),
        (reverse_task, lambda s: s[::-1]),
        (sort_task, sorted),
    ],
)
def test_sequence_tasks_targets_follow_their_sources(task, expected) -> None:
    batch = task(16, 1, 9, 5, torch.Generator().manual_seed(3))
    for i in range(16):
        src = _real(batch.src[i], batch.src_mask[i])
        tgt = _real(batch.tgt[i], batch.tgt_mask[i])
        assert 1 <= len(src) <= 9
        assert all(FIRST_SYMBOL <= t < FIRST_SYMBOL + 5 for t in src)
        assert tgt == [*expected(src), EOS]
    assert (batch.src[~batch.src_mask] == PAD).all()


def test_tasks_are_reproducible_from_the_seed() -> None:
    a = reverse_task(4, 2, 6, 7, torch.Generator().manual_seed(11))
    b = reverse_task(4, 2, 6, 7, torch.Generator().manual_seed(11))
    assert torch.equal(a.src, b.src) and torch.equal(a.tgt, b.tgt)


def test_decoder_input_is_the_target_shifted_right() -> None:
    tgt = torch.tensor([[5, 6, EOS], [7, EOS, PAD]])
    assert shift_right(tgt).tolist() == [[BOS, 5, 6], [BOS, 7, EOS]]


def test_addition_task_writes_the_sum() -> None:
    batch = addition_task(32, 3, torch.Generator().manual_seed(0))
    for i in range(32):
        src = _real(batch.src[i], batch.src_mask[i])
        cut = src.index(PLUS)
        a = int("".join(str(t - FIRST_SYMBOL) for t in src[:cut]))
        b = int("".join(str(t - FIRST_SYMBOL) for t in src[cut + 1 :]))
        tgt = _real(batch.tgt[i], batch.tgt_mask[i])
        assert tgt[-1] == EOS
        assert int("".join(str(t - FIRST_SYMBOL) for t in tgt[:-1])) == a + b
    assert int(batch.src.max()) < ADDITION_VOCAB


def test_pointer_and_ntm_tasks() -> None:
    values, order = sort_numbers_task(4, 6, torch.Generator().manual_seed(0))
    assert values.shape == (4, 6, 1)
    ordered = values.squeeze(-1).gather(1, order)
    assert (ordered[:, 1:] >= ordered[:, :-1]).all()
    inputs, targets = binary_copy_task(2, 5, 3, torch.Generator().manual_seed(0))
    assert inputs.shape == (2, 11, 4) and targets.shape == (2, 5, 3)
    assert torch.equal(inputs[:, :5, :3], targets)
    assert (inputs[:, 5, 3] == 1).all() and inputs[:, 6:].abs().sum() == 0


def test_bad_task_arguments_name_the_argument() -> None:
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="max_len"):
        copy_task(2, 5, 3, 4, g)
    with pytest.raises(ValueError, match="batch_size"):
        copy_task(0, 1, 3, 4, g)
    with pytest.raises(ValueError, match="n_symbols"):
        copy_task(2, 1, 3, 0, g)


def test_fit_minimises_the_loss_and_leaves_eval_mode() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    history = fit(
        model,
        lambda m, batch: ((m(batch[0]) - batch[1]) ** 2).mean(),
        lambda step: (x, y),
        TrainConfig(steps=300, lr=0.05, warmup=10, progress=False),
    )
    assert len(history.losses) == 300
    assert history.mean_last(10) < 1e-3 * history.losses[0]
    assert not model.training


def test_fit_rejects_bad_settings_and_non_scalar_losses() -> None:
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="loss_fn"):
        fit(
            model, lambda m, b: m(b), iter([torch.ones(1, 2)]), TrainConfig(steps=1, progress=False)
        )
