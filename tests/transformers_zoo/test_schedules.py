"""ULMFiT's schedules and parameter-group tools against the paper's formulas and PyTorch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnzoo.transformers_zoo.schedules import (
    GradualUnfreezing,
    OneCycleSchedule,
    SlantedTriangularLR,
    discriminative_param_groups,
    slanted_triangular,
)


def _paper_stlr(t: int, T: int, cut_frac: float, ratio: float, lr_max: float) -> float:
    cut = math.floor(T * cut_frac)
    p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
    return lr_max * (1 + p * (ratio - 1)) / ratio


def _rates(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    optimizer = scheduler.optimizer
    rates = []
    for _ in range(steps):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize(("total", "cut_frac", "ratio"), [(100, 0.1, 32.0), (37, 0.25, 8.0)])
def test_slanted_triangular_is_the_papers_formula(
    total: int, cut_frac: float, ratio: float
) -> None:
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))]
    optimizer = torch.optim.SGD(
        [{"params": params[:1], "lr": 0.01}, {"params": params[1:], "lr": 0.004}]
    )
    scheduler = SlantedTriangularLR(optimizer, total, cut_frac=cut_frac, ratio=ratio)
    for t, (top, low) in enumerate(_rates(scheduler, total)):
        assert top == pytest.approx(_paper_stlr(t, total, cut_frac, ratio, 0.01), rel=1e-12)
        # Discriminative rates keep their ratio through the schedule.
        assert low / top == pytest.approx(0.4, rel=1e-12)
    cut = math.floor(total * cut_frac)
    assert slanted_triangular(cut, total, cut_frac, ratio) == 1.0
    assert slanted_triangular(0, total, cut_frac, ratio) == pytest.approx(1 / ratio)
    assert slanted_triangular(total, total, cut_frac, ratio) == pytest.approx(1 / ratio)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_one_cycle_matches_torch_one_cycle_lr(strategy: str, optimizer_name: str) -> None:
    total, peaks = 53, [0.03, 0.01]

    def build() -> torch.optim.Optimizer:
        groups = [{"params": [nn.Parameter(torch.zeros(2))], "lr": lr} for lr in peaks]
        if optimizer_name == "sgd":
            return torch.optim.SGD(groups, momentum=0.9)
        return torch.optim.AdamW(groups)

    ours = OneCycleSchedule(build(), total, pct_start=0.27, anneal_strategy=strategy)
    reference_optimizer = build()
    reference = torch.optim.lr_scheduler.OneCycleLR(
        reference_optimizer,
        max_lr=peaks,
        total_steps=total,
        pct_start=0.27,
        anneal_strategy=strategy,
    )
    key = "momentum" if optimizer_name == "sgd" else "betas"
    for _ in range(total):
        for a, b in zip(ours.optimizer.param_groups, reference_optimizer.param_groups, strict=True):
            assert a["lr"] == pytest.approx(b["lr"], rel=1e-12, abs=1e-15)
            assert a[key] == pytest.approx(b[key], rel=1e-12)
        ours.optimizer.step()
        ours.step()
        reference_optimizer.step()
        reference.step()


def test_one_cycle_shape_and_inverse_momentum() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0, momentum=0.9)
    scheduler = OneCycleSchedule(optimizer, 100, pct_start=0.25)
    lrs, moms = [], []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        moms.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    peak = max(range(100), key=lambda i: lrs[i])
    assert lrs[0] == pytest.approx(1 / 25) and lrs[peak] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(1 / 25 / 1e4)
    assert moms[peak] == pytest.approx(0.85) and moms[0] == pytest.approx(0.95)
    assert moms[-1] == pytest.approx(0.95)
    # Momentum falls exactly while the rate rises.
    assert all((lrs[i + 1] - lrs[i]) * (moms[i + 1] - moms[i]) <= 0 for i in range(99))


def test_discriminative_groups_divide_by_factor_per_group() -> None:
    layers = [nn.Linear(2, 2) for _ in range(4)]
    groups = discriminative_param_groups(layers, lr=0.01, weight_decay=0.1)
    assert [g["lr"] for g in groups] == pytest.approx(
        [0.01 / 2.6**3, 0.01 / 2.6**2, 0.01 / 2.6, 0.01]
    )
    assert all(g["weight_decay"] == 0.1 for g in groups)
    assert groups[0]["params"] == list(layers[0].parameters())
    torch.optim.Adam(groups)  # any optimiser accepts them


def test_gradual_unfreezing_from_the_top() -> None:
    layers = [nn.Linear(3, 3) for _ in range(3)]
    optimizer = torch.optim.AdamW(discriminative_param_groups(layers, lr=0.1))
    unfreezing = GradualUnfreezing(layers)
    before = [layer.weight.detach().clone() for layer in layers]
    x = torch.randn(4, 3)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        layers[2](layers[1](layers[0](x))).sum().backward()
        optimizer.step()

    train_step()
    changed = [not torch.equal(b, layer.weight) for b, layer in zip(before, layers, strict=True)]
    assert changed == [False, False, True]
    assert unfreezing.step() == 2
    train_step()
    assert not torch.equal(before[1], layers[1].weight) and torch.equal(before[0], layers[0].weight)
    unfreezing.step()
    assert unfreezing.done and unfreezing.step() == 3
    assert all(p.requires_grad for layer in layers for p in layer.parameters())


def test_bad_arguments_are_rejected() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="cut_frac"):
        SlantedTriangularLR(optimizer, 100, cut_frac=1.5)
    with pytest.raises(ValueError, match="total_steps \\* cut_frac"):
        SlantedTriangularLR(optimizer, 5, cut_frac=0.1)
    with pytest.raises(ValueError, match="ratio"):
        slanted_triangular(0, 100, ratio=0.5)
    with pytest.raises(TypeError, match="optimizer"):
        SlantedTriangularLR("sgd", 100)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="momentum"):
        OneCycleSchedule(torch.optim.Adagrad([nn.Parameter(torch.zeros(1))]), 100)
    with pytest.raises(ValueError, match="anneal_strategy"):
        OneCycleSchedule(optimizer, 100, anneal_strategy="step")
    with pytest.raises(ValueError, match="pct_start"):
        OneCycleSchedule(optimizer, 100, pct_start=0.0)
    with pytest.raises(TypeError, match="groups"):
        discriminative_param_groups(nn.Linear(2, 2), lr=0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"groups\[1\]"):
        discriminative_param_groups([nn.Linear(2, 2), 3], lr=0.1)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="factor"):
        discriminative_param_groups([nn.Linear(2, 2)], lr=0.1, factor=0.5)
    with pytest.raises(ValueError, match="`n`"):
        GradualUnfreezing([nn.Linear(2, 2)], trainable=2)
