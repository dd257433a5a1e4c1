"""Magnitude pruning: masks, scopes, N:M, schedules, the permanent form, the report."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from attnzoo.compression import (
    GradualMagnitudePruner,
    compression_report,
    count_nonzeros,
    count_parameters,
    disk_bytes,
    linear_weights,
    magnitude_masks,
    magnitude_prune,
    make_pruning_permanent,
    nm_mask,
    sparsity_schedule,
)


def test_local_masks_remove_the_smallest_of_each_tensor() -> None:
    a = torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 1.0]])
    b = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0])
    mask_a, mask_b = magnitude_masks([a, b], 0.5, "local")
    assert mask_a.tolist() == [[False, True, False], [True, False, True]]
    assert mask_b.tolist() == [False, False, True, True, True]  # floor(2.5) = 2 removed


def test_global_masks_use_one_threshold() -> None:
    small, large = torch.full((4,), 0.1), torch.arange(1.0, 5.0)
    masks = magnitude_masks([small, large], 0.5, "global")
    assert not masks[0].any() and masks[1].all()
    # Brute force: the kept entries are exactly the largest half of all magnitudes.
    weights = [torch.randn(5, 7), torch.randn(11)]
    kept = torch.cat(
        [w[m] for w, m in zip(weights, magnitude_masks(weights, 0.3, "global"), strict=True)]
    )
    every = torch.cat([w.flatten() for w in weights]).abs().sort(descending=True).values
    assert torch.equal(kept.abs().sort(descending=True).values, every[: kept.numel()])
    assert kept.numel() == 46 - int(0.3 * 46)


def test_nm_mask_keeps_the_two_largest_of_every_four() -> None:
    w = torch.randn(6, 12)
    mask = nm_mask(w, 2, 4)
    groups, kept = w.abs().reshape(-1, 4), mask.reshape(-1, 4)
    assert (kept.sum(1) == 2).all()
    assert (
        groups[kept].reshape(-1, 2).min(1).values >= groups[~kept].reshape(-1, 2).max(1).values
    ).all()


def test_pruning_a_zoo_bert_keeps_it_working_and_the_permanent_form_is_identical(
    tiny_bert: nn.Module, padded_batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    ids, mask = padded_batch
    stats = magnitude_prune(tiny_bert, 0.6, scope="global", exclude=["classifier"])
    assert stats["overall"] == pytest.approx(0.6, abs=1e-3)
    masked = tiny_bert(ids, attention_mask=mask).logits
    assert torch.isfinite(masked).all()
    assert hasattr(tiny_bert.bert.pooler.dense, "weight_mask")
    assert not hasattr(tiny_bert.classifier, "weight_mask")
    count = make_pruning_permanent(tiny_bert)
    assert count == len(linear_weights(tiny_bert)) - 1
    assert not any(name.endswith("_orig") for name, _ in tiny_bert.named_parameters())
    torch.testing.assert_close(tiny_bert(ids, attention_mask=mask).logits, masked)


def test_masked_weights_get_no_gradient_and_stay_zero_after_training(tiny_bert: nn.Module) -> None:
    magnitude_prune(tiny_bert, 0.5)
    optimizer = torch.optim.AdamW(tiny_bert.parameters(), lr=1e-2)
    ids = torch.randint(1, 53, (4, 6))
    for _ in range(3):
        loss = tiny_bert(ids, labels=torch.tensor([0, 1, 2, 0])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    layer = tiny_bert.bert.encoder.layers[0].ffn.intermediate
    assert (layer.weight[layer.weight_mask == 0] == 0).all()


def test_repeated_pruning_only_grows_the_pruned_set(tiny_bert: nn.Module) -> None:
    magnitude_prune(tiny_bert, 0.3)
    first = tiny_bert.bert.encoder.layers[1].attention.query.weight_mask.clone()
    magnitude_prune(tiny_bert, 0.7)
    second = tiny_bert.bert.encoder.layers[1].attention.query.weight_mask
    assert (second <= first).all() and second.mean() < first.mean()


def test_two_four_pruning_of_a_model() -> None:
    model = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    stats = magnitude_prune(model, 0.0, pattern="n:m", n=2, m=4)
    assert stats["overall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="divisible by m"):
        magnitude_prune(nn.Linear(6, 2), 0.0, pattern="n:m")


def test_schedules() -> None:
    kinds = {
        k: [sparsity_schedule(t, 0.8, 10, kind=k) for t in range(13)]
        for k in ("one-shot", "iterative", "cubic")
    }
    assert kinds["one-shot"] == [0.8] * 13
    assert kinds["iterative"][5] == pytest.approx(0.4) and kinds["iterative"][12] == pytest.approx(
        0.8
    )
    cubic = kinds["cubic"]
    assert cubic[0] == 0.0 and cubic[10] == pytest.approx(0.8) and cubic[12] == pytest.approx(0.8)
    # Zhu & Gupta: s_f + (s_i - s_f)(1 - t/T)^3, steeper than linear early on.
    assert cubic[3] == pytest.approx(0.8 - 0.8 * 0.7**3)
    assert all(b >= a for a, b in itertools.pairwise(cubic)) and cubic[3] > kinds["iterative"][3]
    assert sparsity_schedule(3, 0.5, 10, kind="cubic", begin_step=5) == 0.0
    stepped = [sparsity_schedule(t, 0.8, 10, kind="iterative", frequency=5) for t in range(11)]
    assert stepped[:5] == [0.0] * 5 and stepped[5] == stepped[9] == pytest.approx(0.4)


def test_gradual_pruner_follows_the_schedule() -> None:
    model = nn.Linear(20, 10)
    pruner = GradualMagnitudePruner(model, 0.9, total_steps=4, kind="cubic")
    reached = [pruner.step(t) for t in range(6)]
    assert reached == [pytest.approx(sparsity_schedule(t, 0.9, 4)) for t in range(6)]
    assert float((model.weight == 0).float().mean()) == pytest.approx(0.9)


def test_report_shows_pruning_buys_no_bytes_until_structure_changes(tiny_bert: nn.Module) -> None:
    dense_params, dense_bytes = count_parameters(tiny_bert), disk_bytes(tiny_bert)
    magnitude_prune(tiny_bert, 0.5)
    # Masked: same parameter count and file size, half the Linear non-zeros.
    assert count_parameters(tiny_bert) == dense_params
    assert disk_bytes(tiny_bert) == dense_bytes
    linear = sum(m.weight.numel() for m, _ in linear_weights(tiny_bert))
    assert count_nonzeros(tiny_bert) <= dense_params - linear // 2 + 1
    report = compression_report(tiny_bert, {"same": tiny_bert}, evaluate=lambda m: 1.0)
    assert [r.name for r in report.rows] == ["original", "same"]
    assert "| same |" in str(report) and report.row("same").metric == 1.0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: magnitude_masks([torch.ones(3)], 1.0), ValueError, "sparsity"),
        (lambda: magnitude_masks([torch.ones(3)], 0.5, "layer"), ValueError, "scope"),
        (lambda: magnitude_masks([], 0.5), ValueError, "weights"),
        (lambda: nm_mask(torch.ones(2, 4), 3, 2), ValueError, "`n`"),
        (lambda: magnitude_prune(nn.ReLU(), 0.5), ValueError, "target"),
        (lambda: magnitude_prune(nn.Linear(2, 2), 0.5, pattern="block"), ValueError, "pattern"),
        (lambda: sparsity_schedule(0, 0.5, 10, kind="linear"), ValueError, "kind"),
        (lambda: sparsity_schedule(0, "0.5", 10), TypeError, "final_sparsity"),  # type: ignore[arg-type]
        (lambda: compression_report(nn.Linear(2, 2), {"x": 3}), TypeError, "after"),  # type: ignore[dict-item]
    ],
)
def test_bad_arguments(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]
