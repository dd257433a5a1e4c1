"""Reading and writing Hugging Face-format checkpoint directories, strictly.

A Hugging Face model directory holds ``config.json`` and the weights, either
``model.safetensors`` (preferred) or ``pytorch_model.bin``. This module reads and writes
such directories without touching the network, renames parameter keys between Hugging Face
names and the library's with ordered regex rules, and loads a state dict strictly: a
missing, unexpected or wrongly shaped key is a ``ValueError`` that lists them all, never a
silent partial load.

A model family plugs in through :class:`PretrainedMixin`: it names its config dataclass,
how to translate the config both ways, and the key-renaming rules both ways, and gets
``from_pretrained(path, **overrides)`` and ``save_pretrained(path)``::

    class BertModel(PretrainedMixin, nn.Module):
        config_class = BertConfig
        hf_to_zoo_rules = ((r"^bert\\.", ""), (r"\\.LayerNorm\\.", ".norm."))
        zoo_to_hf_rules = (...)

        @classmethod
        def config_from_hf(cls, hf): ...
        @classmethod
        def config_to_hf(cls, config): ...
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, overload

import torch
from torch import Tensor, nn

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"


def _safetensors_torch() -> Any:
    """``safetensors.torch``, imported when a checkpoint is read or written (extra ``hf``)."""
    try:
        import safetensors.torch
    except ImportError as error:
        raise ImportError(
            "reading and writing model.safetensors needs the safetensors package: "
            "pip install 'attnzoo[hf]'"
        ) from error
    return safetensors.torch


def read_hf_directory(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a Hugging Face model directory.

    Args:
        path: a directory with ``config.json`` and ``model.safetensors`` (preferred) or
            ``pytorch_model.bin`` (loaded with ``torch.load(..., weights_only=True)``, so no
            code in the file runs).

    Returns:
        ``(config, state)``: ``config.json`` as a dict and the state dict (CPU tensors).

    Raises:
        FileNotFoundError: naming the missing directory, ``config.json``, or both weight files.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"`path` must be a model directory, {str(directory)!r} is not one")
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        raise FileNotFoundError(f"{CONFIG_NAME} not found in {str(directory)!r}")
    with config_file.open(encoding="utf-8") as handle:
        config = json.load(handle)
    if not isinstance(config, dict):
        raise ValueError(
            f"{CONFIG_NAME} in {str(directory)!r} must hold a JSON object, "
            f"got {type(config).__name__}"
        )
    safetensors_file = directory / SAFETENSORS_NAME
    pytorch_file = directory / PYTORCH_NAME
    if safetensors_file.is_file():
        state = _safetensors_torch().load_file(str(safetensors_file), device="cpu")
    elif pytorch_file.is_file():
        state = torch.load(pytorch_file, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(
                f"{PYTORCH_NAME} in {str(directory)!r} must hold a state dict, "
                f"got {type(state).__name__}"
            )
        state = dict(state)
    else:
        raise FileNotFoundError(
            f"no weights in {str(directory)!r}: expected {SAFETENSORS_NAME} or {PYTORCH_NAME}"
        )
    return config, state


def rename_keys(state: Mapping[str, Tensor], rules: Sequence[tuple[str, str]]) -> dict[str, Tensor]:
    """Rename state-dict keys with regex rules.

    Each key is tried against the rules in order; the first rule whose pattern matches
    (``re.search``) rewrites the key with ``re.sub(pattern, replacement, key)`` and no later
    rule is tried. A key that matches no rule is kept as it is. Two keys renamed to the same
    name are a ``ValueError``.

    Args:
        state: ``{name: tensor}``.
        rules: ``[(pattern, replacement), ...]`` (Python ``re`` syntax; the replacement may
            use groups such as ``\\1``).

    Returns:
        A new dict with the renamed keys (the tensors are not copied).
    """
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        new_key = key
        for pattern, replacement in compiled:
            if pattern.search(key):
                new_key = pattern.sub(replacement, key)
                break
        if new_key in renamed:
            raise ValueError(
                f"`rules` map both {origin[new_key]!r} and {key!r} to the same key {new_key!r}"
            )
        renamed[new_key] = value
        origin[new_key] = key
    return renamed


def load_state_strict(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load ``state`` into ``model``, requiring the keys and shapes to match exactly.

    Args:
        model: the module to fill (its parameters and persistent buffers).
        state: ``{name: tensor}`` in the module's own key names.

    Raises:
        ValueError: listing every missing key, every unexpected key and every shape
            mismatch, before anything is copied (so a failed load leaves ``model`` as it was).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(expected) & set(state)
        if tuple(state[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
        raise ValueError(f"state dict does not fit {type(model).__name__}: " + " | ".join(problems))
    model.load_state_dict(dict(state), strict=True)


def write_hf_directory(
    path: str | os.PathLike[str], config: Mapping[str, Any], state: Mapping[str, Tensor]
) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``path`` (created if needed).

    The tensors are made contiguous and moved to the CPU; tensors that share memory (tied
    weights) are written as separate copies, which ``transformers``' ``from_pretrained``
    reads back and re-ties itself. The safetensors header carries ``{"format": "pt"}`` as
    ``transformers`` expects.

    Args:
        path: the output directory.
        config: the Hugging Face config (JSON-serialisable).
        state: ``{name: tensor}`` in Hugging Face key names.
    """
    save_file = _safetensors_torch().save_file
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / CONFIG_NAME).open("w", encoding="utf-8") as handle:
        json.dump(dict(config), handle, indent=2, sort_keys=True)
        handle.write("\n")
    # safetensors refuses shared storage; a clone per tensor makes tied weights independent.
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    save_file(tensors, str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})


HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}
"""Hugging Face activation names -> the blocks' (``gelu_new`` is tanh-approximated GELU)."""


def hf_activation(name: str, field: str) -> str:
    """The block activation of Hugging Face's activation ``name`` (read from the config
    field ``field``); a ``ValueError`` naming the field for an unsupported one."""
    if name not in HF_ACTIVATIONS:
        raise ValueError(f"`{field}` must be one of {sorted(HF_ACTIVATIONS)}, got {name!r}")
    return HF_ACTIVATIONS[name]


def init_hf_weights(model: nn.Module, std: float = 0.02) -> None:
    """Hugging Face's initialisation: normal(0, ``std``) weights for linear and embedding
    layers, zero biases (and padding rows), LayerNorm weight 1 and bias 0.

    PyTorch's default embedding init (unit normal) with an output layer tied to the
    embeddings gives initial logits of size ~sqrt(hidden) and a first loss far above
    ``log(vocab_size)``; the small init starts the runs at that chance level.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@overload
def hf_attention_mask(attention_mask: None, shape: Sequence[int]) -> None: ...
@overload
def hf_attention_mask(attention_mask: Tensor, shape: Sequence[int]) -> Tensor: ...
def hf_attention_mask(attention_mask: Tensor | None, shape: Sequence[int]) -> Tensor | None:
    """Hugging Face's ``attention_mask`` as the library's boolean key-padding mask.

    The model families take ``attention_mask`` as ``transformers`` documents it: a boolean
    or an integer 0/1 tensor, 1/True = real token. This is the one place the library
    accepts a 0/1 mask; a float mask is still a ``TypeError`` (an additive ``-inf`` mask
    would be silently misread), and integer values other than 0 and 1 a ``ValueError``.

    Args:
        attention_mask: ``(batch, n)``, or None (every token real).
        shape: the expected ``(batch, n)``.

    Returns:
        boolean ``(batch, n)``, True = real token, or None.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise TypeError(
            f"`attention_mask` must be a torch.Tensor, got {type(attention_mask).__name__}"
        )
    if attention_mask.is_floating_point() or attention_mask.is_complex():
        raise TypeError(
            "`attention_mask` must be a boolean or integer 0/1 tensor (1 = real token), "
            f"got dtype {attention_mask.dtype}"
        )
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(
            f"`attention_mask` must have shape (batch, n) = {tuple(shape)}, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype == torch.bool:
        return attention_mask
    bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
    if bad.numel():
        raise ValueError(f"`attention_mask` must hold 0 or 1 (1 = real token), got {int(bad[0])}")
    return attention_mask == 1


class PretrainedMixin:
    """``from_pretrained`` / ``save_pretrained`` for a model built from a config dataclass.

    A subclass (which is also an :class:`torch.nn.Module` whose ``__init__`` takes the
    config as its only positional argument and stores it as ``self.config``) defines:

    * ``config_class``: its config dataclass;
    * ``config_from_hf(cls, hf)`` (classmethod): Hugging Face ``config.json`` dict -> config;
    * ``config_to_hf(cls, config)`` (classmethod): config -> ``config.json`` dict;
    * ``hf_to_zoo_rules`` / ``zoo_to_hf_rules``: regex rules for :func:`rename_keys`;
    * optionally ``transform_from_hf(cls, state)`` / ``transform_to_hf(cls, state)``
      (classmethods) for changes beyond renaming (e.g. transposing GPT-2's Conv1D weights,
      dropping tied copies); applied after renaming on load and before renaming on save.
    """

    config_class: ClassVar[type]
    hf_to_zoo_rules: ClassVar[Sequence[tuple[str, str]]] = ()
    zoo_to_hf_rules: ClassVar[Sequence[tuple[str, str]]] = ()

    @classmethod
    def config_from_hf(cls, hf: dict[str, Any]) -> Any:
        raise TypeError(f"{cls.__name__} must define `config_from_hf`")

    @classmethod
    def config_to_hf(cls, config: Any) -> dict[str, Any]:
        raise TypeError(f"{cls.__name__} must define `config_to_hf`")

    @classmethod
    def transform_from_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hook: adjust a renamed Hugging Face state dict to this model (default: as is)."""
        return state

    @classmethod
    def transform_to_hf(cls, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hook: adjust this model's state dict before renaming it to Hugging Face names."""
        return state

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], **overrides: Any) -> Any:
        """Build the model from a Hugging Face directory and load its weights strictly.

        Args:
            path: directory with ``config.json`` and weights (see :func:`read_hf_directory`).
            **overrides: config fields to replace after reading (e.g. ``dropout=0.0``);
                an unknown field name is a ``ValueError``.

        Returns:
            The model, in eval mode (as ``transformers`` returns it).
        """
        hf_config, hf_state = read_hf_directory(path)
        config = cls.config_from_hf(hf_config)
        if overrides:
            if not is_dataclass(config):
                raise TypeError(f"{cls.__name__}.config_from_hf must return a dataclass")
            known = {f.name for f in fields(config)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ValueError(
                    f"unknown config fields {unknown} for {type(config).__name__}; "
                    f"known: {sorted(known)}"
                )
            config = replace(config, **overrides)  # type: ignore[type-var]
        model = cls(config)  # type: ignore[call-arg]
        state = cls.transform_from_hf(rename_keys(hf_state, cls.hf_to_zoo_rules))
        load_state_strict(model, state)  # type: ignore[arg-type]
        model.eval()  # type: ignore[attr-defined]
        return model

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` in Hugging Face names to ``path``."""
        state = type(self).transform_to_hf(dict(self.state_dict()))  # type: ignore[attr-defined]
        state = rename_keys(state, type(self).zoo_to_hf_rules)
        config = type(self).config_to_hf(self.config)  # type: ignore[attr-defined]
        write_hf_directory(path, config, state)


__all__ = [
    "CONFIG_NAME",
    "HF_ACTIVATIONS",
    "PYTORCH_NAME",
    "SAFETENSORS_NAME",
    "PretrainedMixin",
    "hf_activation",
    "hf_attention_mask",
    "init_hf_weights",
    "load_state_strict",
    "read_hf_directory",
    "rename_keys",
    "write_hf_directory",
]
