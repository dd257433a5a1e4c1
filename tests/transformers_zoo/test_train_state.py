"""Pickle-free checkpoints: bit-identical resume of fit, the JSON tree codec, bad input."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from attnzoo.transformers_zoo.bert import BertConfig, BertForMaskedLM
from attnzoo.transformers_zoo.train_state import (
    load_checkpoint,
    load_train_state,
    save_checkpoint,
    state_from_json_tree,
    state_to_json_tree,
)
from attnzoo.transformers_zoo.training import TrainConfig, fit

VOCAB = 37


def tiny_bert(seed: int) -> BertForMaskedLM:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=16,
        hidden_dropout_prob=0.1,  # dropout on: the resumed run must replay the torch RNG
        attention_probs_dropout_prob=0.1,
    )
    return BertForMaskedLM(config)


def batch_from_global_generators(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws from torch's, NumPy's and Python's global generators, all three restored."""
    ids = torch.randint(1, VOCAB, (3, 9))
    labels = torch.full_like(ids, -100)
    rows = np.random.randint(0, 3, size=4)
    cols = [random.randrange(9) for _ in range(4)]
    labels[rows, cols] = ids[rows, cols]
    return ids, labels


def mlm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    ids, labels = batch
    return model(ids, labels=labels).loss


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def config(steps: int, **kwargs: object) -> TrainConfig:
    return TrainConfig(steps=steps, lr=3e-3, warmup=3, progress=False, **kwargs)  # type: ignore[arg-type]


def test_resumed_fit_is_bit_identical(tmp_path: Path) -> None:
    total, interrupted_at = 7, 3
    seed_everything(0)
    model = tiny_bert(0)
    seed_everything(1)
    reference = fit(model, mlm_loss, batch_from_global_generators, config(total))

    seed_everything(0)
    first = tiny_bert(0)
    seed_everything(1)
    fit(first, mlm_loss, batch_from_global_generators, config(interrupted_at, save_dir=tmp_path))
    # A fresh process state: other weights, other generator states, new optimizer.
    seed_everything(12345)
    resumed_model = tiny_bert(99)
    resumed = fit(
        resumed_model, mlm_loss, batch_from_global_generators, config(total), resume_from=tmp_path
    )

    assert resumed.losses == reference.losses
    for (name, p), q in zip(model.named_parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_periodic_saves_and_history(tmp_path: Path) -> None:
    seed_everything(0)
    model = tiny_bert(0)
    history = fit(
        model, mlm_loss, batch_from_global_generators, config(4, save_dir=tmp_path, save_every=2)
    )
    state = load_train_state(tmp_path, restore_rng=False)
    assert state.step == 4
    assert state.extra["losses"] == history.losses
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "rng-0.safetensors",
        "train_state.json",
    ]
    # Resuming into the trained model itself (its gradients still set) continues the run.
    longer = fit(model, mlm_loss, batch_from_global_generators, config(6), resume_from=tmp_path)
    assert longer.losses[:4] == history.losses and len(longer.losses) == 6


def test_load_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_everything(0)
    model = tiny_bert(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    ids = torch.randint(1, VOCAB, (2, 5))
    for _ in range(2):
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        scheduler.step()
    save_checkpoint(tmp_path, model, optimizer, scheduler, step=2, extra={"note": "x"})
    expected = torch.get_rng_state()
    torch.manual_seed(7)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checkpoint loader must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)

    other = tiny_bert(1)
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=1e-2)
    other_scheduler = torch.optim.lr_scheduler.StepLR(other_optimizer, step_size=2)
    state = load_checkpoint(tmp_path, other, other_optimizer, other_scheduler)
    assert state.step == 2 and state.extra == {"note": "x"}
    assert torch.equal(torch.get_rng_state(), expected)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)
    saved, loaded = optimizer.state_dict(), other_optimizer.state_dict()
    # torch's full optimizer state dict gives `betas` back as a list: same values.
    for group in loaded["param_groups"]:
        group["betas"] = tuple(group["betas"])
    assert saved["param_groups"] == loaded["param_groups"]
    for index, slots in saved["state"].items():
        for key, value in slots.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)
    assert other_scheduler.state_dict() == scheduler.state_dict()


def test_json_tree_round_trip_keeps_types() -> None:
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)}},
        "groups": [{"betas": (0.9, 0.999), "params": [0, 1], "eps": float("inf")}],
        "name": None,
    }
    tensors: dict[str, torch.Tensor] = {}
    tree = json.loads(json.dumps(state_to_json_tree(state, tensors)))
    assert sorted(tensors) == ["state/0/exp_avg", "state/0/step"]
    back = state_from_json_tree(tree, tensors)
    assert list(back["state"]) == [0]
    assert back["groups"] == state["groups"]
    assert torch.equal(back["state"][0]["exp_avg"], state["state"][0]["exp_avg"])
    assert back["name"] is None


def test_unsaveable_state_names_its_path() -> None:
    with pytest.raises(TypeError, match="state value at `groups/0/fn`.*function"):
        state_to_json_tree({"groups": [{"fn": lambda x: x}]}, {})


def test_missing_checkpoint_and_bad_format(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_train_state(tmp_path)
    seed_everything(0)
    model = tiny_bert(0)
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, model, optimizer, step=0)
    (tmp_path / "train_state.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(ValueError, match="format_version 1, got 99"):
        load_train_state(tmp_path)
