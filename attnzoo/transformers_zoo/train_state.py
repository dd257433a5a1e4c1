"""Training checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is a directory::

    model.safetensors        the model's state dict
    optimizer.safetensors    every tensor of the optimizer state (AdamW moments, step counts)
    train_state.json         step, optimizer hyper-parameters and tensor references, scheduler
                             state, whatever ``extra`` the caller adds (e.g. the loss history)
    rng-{rank}.safetensors   one per process: the torch CPU (and CUDA) generator states, Python's
                             and NumPy's Mersenne-Twister keys; their few scalars in the
                             file's metadata

Loading reads these with ``safetensors.torch.load_file``, ``safe_open(...).metadata()`` and
``json.load`` only: nothing is unpickled, so a checkpoint from an untrusted source can hold
wrong numbers but never run code (``torch.load`` of a pickle could).

Nested state (the optimizer's ``{"state": {0: {"exp_avg": tensor, ...}}, "param_groups":
[...]}``) is stored as a JSON tree in which every tensor is replaced by
``{"__tensor__": name}``, ``name`` being its path (``"state/0/exp_avg"``) in the safetensors
file; dicts are ``{"__dict__": [[key, value], ...]}`` so integer keys stay integers, and tuples
``{"__tuple__": [...]}``.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoints import _safetensors_torch
from .distributed import full_state_dicts, load_full_state_dicts, rank_and_world_size

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"
FORMAT_VERSION = 1


def rng_file(rank: int) -> str:
    """Name of process ``rank``'s generator-state file in a checkpoint directory."""
    return f"rng-{rank}.safetensors"


def state_to_json_tree(obj: Any, tensors: dict[str, Tensor], path: str = "") -> Any:
    """``obj`` (nested dicts, lists, tuples, scalars, strings, tensors) as a JSON-able tree.

    Every tensor is moved to ``tensors`` (detached, CPU, contiguous copy) under its path and
    replaced by ``{"__tensor__": path}``.

    Raises:
        TypeError: a value that is none of these (a function, an arbitrary object), naming
            its path: it could only be restored by unpickling.
    """
    if isinstance(obj, Tensor):
        name = path or "tensor"
        tensors[name] = obj.detach().cpu().clone().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"state key at `{path}` must be str or int, got {key!r}")
            items.append([key, state_to_json_tree(value, tensors, f"{path}/{key}".lstrip("/"))])
        return {"__dict__": items}
    if isinstance(obj, (list, tuple)):
        values = [
            state_to_json_tree(value, tensors, f"{path}/{i}".lstrip("/"))
            for i, value in enumerate(obj)
        ]
        return {"__tuple__": values} if isinstance(obj, tuple) else values
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"state value at `{path or '<root>'}` must be a tensor, number, string, None, dict, "
        f"list or tuple to be saved without pickle, got {type(obj).__name__}"
    )


def state_from_json_tree(tree: Any, tensors: dict[str, Tensor]) -> Any:
    """Inverse of :func:`state_to_json_tree`: rebuild the nested state, tensors included."""
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            name = tree["__tensor__"]
            if name not in tensors:
                raise ValueError(f"checkpoint refers to tensor {name!r}, missing from its file")
            return tensors[name]
        if "__tuple__" in tree:
            return tuple(state_from_json_tree(value, tensors) for value in tree["__tuple__"])
        if "__dict__" in tree:
            return {key: state_from_json_tree(value, tensors) for key, value in tree["__dict__"]}
        raise ValueError(f"checkpoint JSON has an unknown node with keys {sorted(tree)}")
    if isinstance(tree, list):
        return [state_from_json_tree(value, tensors) for value in tree]
    return tree


def capture_rng_state() -> tuple[dict[str, Tensor], dict[str, str]]:
    """This process's generator states as ``(tensors, string metadata)`` for safetensors.

    Tensors: ``torch_cpu`` (uint8), ``cuda_{i}`` per visible GPU once CUDA is initialised,
    ``python`` and ``numpy`` (the Mersenne-Twister keys, int64). Metadata: the remaining
    scalars of Python's and NumPy's states, as JSON strings.
    """
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    version, keys, gauss_next = random.getstate()
    tensors["python"] = torch.tensor(keys, dtype=torch.int64)
    name, np_keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    tensors["numpy"] = torch.from_numpy(np.asarray(np_keys, dtype=np.int64))
    metadata = {
        "python": json.dumps([version, gauss_next]),
        "numpy": json.dumps([name, int(pos), int(has_gauss), float(cached)]),
    }
    return tensors, metadata


def restore_rng_state(tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Set the torch, CUDA, Python and NumPy generators from :func:`capture_rng_state`."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, gauss_next = json.loads(metadata["python"])
    random.setstate((version, tuple(int(k) for k in tensors["python"].tolist()), gauss_next))
    name, pos, has_gauss, cached = json.loads(metadata["numpy"])
    np_keys = tensors["numpy"].numpy().astype(np.uint32)
    np.random.set_state((name, np_keys, pos, has_gauss, cached))


@dataclass
class TrainState:
    """A checkpoint read back by :func:`load_train_state`.

    Attributes:
        model_state: the model's state dict (CPU tensors).
        optimizer_state: the optimizer's state dict.
        scheduler_state: the learning-rate scheduler's state dict (None if not saved).
        step: optimiser steps done when it was saved.
        extra: the caller's JSON-able extras (e.g. ``{"losses": [...]}``).
    """

    model_state: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any] | None
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def save_train_state(
    directory: str | Path,
    *,
    model_state: dict[str, Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any] | None = None,
    step: int,
    extra: dict[str, Any] | None = None,
    rank: int = 0,
    write_shared: bool = True,
) -> Path:
    """Write a checkpoint directory (see the module docstring for its files).

    Args:
        directory: created if missing; existing checkpoint files are overwritten.
        model_state, optimizer_state, scheduler_state: state dicts (under DDP/FSDP the full,
            unwrapped ones; see :mod:`attnzoo.transformers_zoo.distributed`).
        step: optimiser steps done.
        extra: JSON-able extras stored in ``train_state.json``.
        rank: this process's rank: it writes ``rng-{rank}.safetensors``.
        write_shared: write the model, optimizer and JSON files (rank 0 only in a
            multi-process run; every rank writes its own generator state).

    Returns:
        the directory.
    """
    st = _safetensors_torch()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if write_shared:
        model_tensors = {
            name: tensor.detach().cpu().clone().contiguous() for name, tensor in model_state.items()
        }
        st.save_file(model_tensors, str(directory / MODEL_FILE))
        optimizer_tensors: dict[str, Tensor] = {}
        optimizer_tree = state_to_json_tree(optimizer_state, optimizer_tensors)
        scheduler_tensors: dict[str, Tensor] = {}
        scheduler_tree = state_to_json_tree(scheduler_state, scheduler_tensors)
        if scheduler_tensors:
            # Schedulers keep floats and ints; keep the format to two tensor files.
            raise TypeError("`scheduler_state` must not hold tensors")
        st.save_file(optimizer_tensors, str(directory / OPTIMIZER_FILE))
        payload = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "optimizer": optimizer_tree,
            "scheduler": scheduler_tree,
            "extra": state_to_json_tree(extra or {}, {}),
        }
        with open(directory / STATE_FILE, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
    rng_tensors, rng_metadata = capture_rng_state()
    st.save_file(rng_tensors, str(directory / rng_file(rank)), metadata=rng_metadata)
    return directory


def load_train_state(
    directory: str | Path, *, rank: int = 0, restore_rng: bool = True
) -> TrainState:
    """Read a checkpoint written by :func:`save_train_state`, without unpickling anything.

    Args:
        directory: the checkpoint directory.
        rank: this process's rank: its ``rng-{rank}.safetensors`` is restored.
        restore_rng: set the torch/CUDA/Python/NumPy generators to their saved states (a
            missing file for ``rank``, e.g. after a change of world size, gives a warning).

    Raises:
        FileNotFoundError: ``directory`` lacks a checkpoint file.
        ValueError: the JSON is not a checkpoint of this format.
    """
    st = _safetensors_torch()
    directory = Path(directory)
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"`directory` {str(directory)!r} has no checkpoint {name}")
    with open(directory / STATE_FILE, encoding="utf-8") as handle:
        payload = json.load(handle)
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{STATE_FILE} must have format_version {FORMAT_VERSION}, "
            f"got {payload.get('format_version') if isinstance(payload, dict) else payload!r}"
        )
    optimizer_tensors = st.load_file(str(directory / OPTIMIZER_FILE))
    state = TrainState(
        model_state=st.load_file(str(directory / MODEL_FILE)),
        optimizer_state=state_from_json_tree(payload["optimizer"], optimizer_tensors),
        scheduler_state=state_from_json_tree(payload["scheduler"], {}),
        step=int(payload["step"]),
        extra=state_from_json_tree(payload["extra"], {}),
    )
    if restore_rng:
        path = directory / rng_file(rank)
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            restore_rng_state(st.load_file(str(path)), metadata)
        else:
            warnings.warn(
                f"checkpoint {str(directory)!r} has no {rng_file(rank)}: the random generators "
                "of this process keep their current state",
                stacklevel=2,
            )
    return state


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
    *,
    step: int,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Checkpoint ``model`` (plain, DDP-wrapped or FSDP-sharded), ``optimizer``, ``scheduler``.

    The state dicts are the full ones of
    :func:`~attnzoo.transformers_zoo.distributed.full_state_dicts` (the optimizer keyed by
    parameter name), so the checkpoint resumes under any number of processes. In a
    multi-process run call it on every rank: rank 0 writes the shared files, each rank its
    generator state, then the ranks wait for each other.
    """
    model_state, optimizer_state = full_state_dicts(model, optimizer)
    rank, world_size = rank_and_world_size()
    path = save_train_state(
        directory,
        model_state=model_state,
        optimizer_state=optimizer_state,
        scheduler_state=scheduler.state_dict() if scheduler is not None else None,
        step=step,
        extra=extra,
        rank=rank,
        write_shared=rank == 0,
    )
    if world_size > 1:
        torch.distributed.barrier()
    return path


def load_checkpoint(
    directory: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None = None,
) -> TrainState:
    """Load a :func:`save_checkpoint` directory into ``model``, ``optimizer``, ``scheduler``.

    Restores this rank's generators too, so the next step draws the same dropout masks and
    batches as an uninterrupted run. Returns the :class:`TrainState` (``step``, ``extra``).
    """
    state = load_train_state(directory, rank=rank_and_world_size()[0])
    load_full_state_dicts(model, optimizer, state.model_state, state.optimizer_state)
    if scheduler is not None:
        if state.scheduler_state is None:
            raise ValueError(f"checkpoint {str(directory)!r} holds no scheduler state")
        scheduler.load_state_dict(state.scheduler_state)
    return state


__all__ = [
    "TrainState",
    "capture_rng_state",
    "load_checkpoint",
    "load_train_state",
    "restore_rng_state",
    "save_checkpoint",
    "save_train_state",
    "state_from_json_tree",
    "state_to_json_tree",
]
