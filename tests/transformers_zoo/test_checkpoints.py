"""Tests of the strict Hugging Face checkpoint helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from attnzoo.transformers_zoo.checkpoints import (
    PretrainedMixin,
    load_state_strict,
    read_hf_directory,
    rename_keys,
    write_hf_directory,
)


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"encoder.dense.weight": torch.randn(3, 4), "encoder.dense.bias": torch.randn(3)}


def test_read_safetensors_directory(tmp_path):
    state = _state()
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    save_file(state, str(tmp_path / "model.safetensors"))
    config, loaded = read_hf_directory(tmp_path)
    assert config == {"hidden_size": 4}
    assert loaded.keys() == state.keys()
    for key in state:
        torch.testing.assert_close(loaded[key], state[key], rtol=0, atol=0)


def test_read_pytorch_bin_directory(tmp_path):
    state = _state()
    (tmp_path / "config.json").write_text(json.dumps({"a": 1}))
    torch.save(state, tmp_path / "pytorch_model.bin")
    config, loaded = read_hf_directory(str(tmp_path))
    assert config == {"a": 1}
    torch.testing.assert_close(loaded["encoder.dense.weight"], state["encoder.dense.weight"])


def test_safetensors_preferred_over_bin(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    save_file({"x": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    torch.save({"x": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    _, loaded = read_hf_directory(tmp_path)
    assert loaded["x"].tolist() == [1.0, 1.0]


def test_bin_with_pickled_code_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    torch.save({"x": torch.ones(1), "obj": _Unsafe()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        read_hf_directory(tmp_path)


class _Unsafe:
    pass


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory"):
        read_hf_directory(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="config.json"):
        read_hf_directory(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors or pytorch_model\.bin"):
        read_hf_directory(tmp_path)


def test_rename_keys_first_match_wins_and_unmatched_kept():
    state = {"bert.encoder.x": torch.zeros(1), "bert.pooler.y": torch.zeros(1), "z": torch.ones(1)}
    rules = [(r"^bert\.pooler\.", "pool."), (r"^bert\.", ""), (r"pool", "never")]
    out = rename_keys(state, rules)
    assert list(out) == ["encoder.x", "pool.y", "z"]
    assert out["z"] is state["z"]


def test_rename_keys_groups_and_collision():
    out = rename_keys({"layer.3.w": torch.zeros(1)}, [(r"^layer\.(\d+)\.", r"layers.\1.")])
    assert list(out) == ["layers.3.w"]
    with pytest.raises(ValueError, match="same key"):
        rename_keys({"a.x": torch.zeros(1), "b.x": torch.zeros(1)}, [(r"^[ab]\.", "")])


def test_load_state_strict_lists_missing_unexpected_and_shapes():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = dict(model.state_dict())
    before = model[0].weight.detach().clone()
    del state["1.bias"]
    state["2.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 4)
    with pytest.raises(ValueError) as info:
        load_state_strict(model, state)
    message = str(info.value)
    assert "missing keys (1): 1.bias" in message
    assert "unexpected keys (1): 2.weight" in message
    assert "0.weight: checkpoint (5, 4), model (3, 4)" in message
    torch.testing.assert_close(model[0].weight, before, rtol=0, atol=0)


def test_load_state_strict_loads_exact_state():
    model, other = nn.Linear(4, 3), nn.Linear(4, 3)
    load_state_strict(other, model.state_dict())
    torch.testing.assert_close(other.weight, model.weight, rtol=0, atol=0)


def test_write_then_read_round_trip_with_shared_tensors(tmp_path):
    weight = torch.randn(5, 3)
    state = {"a.weight": weight, "b.weight": weight, "c": torch.arange(4.0)[::2]}
    write_hf_directory(tmp_path / "out", {"model_type": "x", "n": 2}, state)
    config, loaded = read_hf_directory(tmp_path / "out")
    assert config == {"model_type": "x", "n": 2}
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


@dataclass
class _TinyConfig:
    dim: int = 4
    out: int = 3
    dropout: float = 0.0


class _Tiny(PretrainedMixin, nn.Module):
    config_class = _TinyConfig
    hf_to_zoo_rules = ((r"^model\.dense\.", "proj."),)
    zoo_to_hf_rules = ((r"^proj\.", "model.dense."),)

    def __init__(self, config: _TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.dim, config.out)

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> _TinyConfig:
        return _TinyConfig(dim=hf["hidden_size"], out=hf["out_size"])

    @classmethod
    def config_to_hf(cls, config: _TinyConfig) -> dict[str, Any]:
        return {"hidden_size": config.dim, "out_size": config.out}


def test_mixin_round_trip_and_overrides(tmp_path):
    model = _Tiny(_TinyConfig())
    model.save_pretrained(tmp_path)
    _, raw = read_hf_directory(tmp_path)
    assert set(raw) == {"model.dense.weight", "model.dense.bias"}
    loaded = _Tiny.from_pretrained(tmp_path, dropout=0.5)
    assert not loaded.training
    assert loaded.config.dropout == 0.5
    torch.testing.assert_close(loaded.proj.weight, model.proj.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown config fields"):
        _Tiny.from_pretrained(tmp_path, width=3)


def test_mixin_unknown_key_is_an_error(tmp_path):
    state = {
        "model.dense.weight": torch.zeros(3, 4),
        "model.dense.bias": torch.zeros(3),
        "model.extra": torch.zeros(1),
    }
    write_hf_directory(tmp_path, {"hidden_size": 4, "out_size": 3}, state)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): model\.extra"):
        _Tiny.from_pretrained(tmp_path)
