"""Data parallelism on PyTorch's own engine: DDP and FSDP around the :func:`fit` loop.

Nothing here starts processes: launch with ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and call :func:`init_distributed` once, or
call ``torch.distributed.init_process_group`` yourself. :func:`fit` then notices the process
group and

* wraps the model in ``DistributedDataParallel`` (``parallel="ddp"``: every rank keeps the
  whole model; gradients are averaged across ranks in the backward pass) or shards it with
  FSDP2's ``fully_shard`` (``parallel="fsdp"``: each encoder/decoder layer and the root are
  sharded; parameters are gathered layer by layer for the forward and backward);
* shows the progress bar and writes the shared checkpoint files on rank 0 only;
* reports the loss averaged over the ranks, the loss of the global batch.

Each rank must see its own part of the global batch: :func:`sharded_batches` draws it from a
``Dataset`` with a ``DistributedSampler``, :func:`local_shard` cuts a batch that every rank
built identically. With a mean-reduced loss and equal shards, the averaged gradient is the
gradient of the global batch, so N processes train the same model as one process on the
whole batch (up to float summation order).

Sparse gradients (``ProductKeyMemory(sparse=True)``, ``nn.Embedding(sparse=True)``): DDP
all-reduces them with the Gloo backend only (NCCL has no sparse all-reduce), FSDP not at all,
and :func:`fit`'s AdamW takes dense gradients only; :func:`check_sparse_gradients` turns each
unsupported combination into a ``ValueError`` naming the ``sparse`` option.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler, default_collate

from ..attention.validation import check_int
from .layers import DecoderLayer, EncoderLayer

PARALLEL_MODES = ("ddp", "fsdp")


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and in a run without a process group): the rank that logs and saves."""
    return rank_and_world_size()[0] == 0


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, else Gloo.
        timeout_s: collective timeout.

    Returns:
        this process's device: ``cuda:{LOCAL_RANK}`` (made current) with NCCL, else CPU.
        Without ``WORLD_SIZE`` in the environment (a plain ``python`` run) nothing is
        initialised and the device is ``cuda`` if available, else CPU.
    """
    if "WORLD_SIZE" not in os.environ:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"`backend` must be 'nccl' or 'gloo', got {backend!r}")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def sparse_gradient_modules(model: nn.Module) -> list[str]:
    """Names of the ``nn.Embedding``/``nn.EmbeddingBag`` modules of ``model`` built with
    ``sparse=True`` (their weights get sparse gradients)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse
    ]


def check_sparse_gradients(model: nn.Module, parallel: str, backend: str | None) -> None:
    """Raise ``ValueError`` if ``model``'s sparse gradients cannot be synchronised.

    DDP all-reduces sparse gradients with the Gloo backend only; FSDP shards dense
    parameters and has no sparse path.

    Args:
        model: the unwrapped model.
        parallel: ``"ddp"`` or ``"fsdp"``.
        backend: the process group's backend (``dist.get_backend()``).
    """
    sparse = sparse_gradient_modules(model)
    if not sparse:
        return
    if parallel == "fsdp":
        raise ValueError(
            f"`parallel='fsdp'` cannot shard sparse-gradient embeddings {sparse}: build them "
            "with `sparse=False` (e.g. ProductKeyMemory(sparse=False)) or use parallel='ddp' "
            "with the gloo backend"
        )
    if backend != "gloo":
        raise ValueError(
            f"DDP all-reduces sparse gradients only with the gloo backend, got {backend!r} "
            f"for the `sparse=True` embeddings {sparse}: build them with `sparse=False` "
            "(e.g. ProductKeyMemory(sparse=False)) or use backend='gloo'"
        )


class _DDP(DistributedDataParallel):
    """DDP that forwards unknown attributes to the wrapped model (``model.config`` etc.),
    so that a loss function written for the bare model runs unchanged on the wrapper."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def _fully_shard() -> Callable[..., Any]:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as error:  # PyTorch < 2.6 keeps FSDP2 under _composable
        raise ImportError(f"`parallel='fsdp'` needs FSDP2 (`fully_shard`): {error}") from error
    return fully_shard


def wrap_model(
    model: nn.Module, parallel: str = "ddp", find_unused_parameters: bool = False
) -> nn.Module:
    """Make ``model`` data-parallel over the default process group.

    Args:
        model: on this rank's device; identical initial weights on every rank (seed the
            same, or DDP broadcasts rank 0's weights at wrapping).
        parallel: ``"ddp"``: a ``DistributedDataParallel`` wrapper (attribute access falls
            through to ``model``); ``"fsdp"``: FSDP2 ``fully_shard`` applied in place to every
            :class:`EncoderLayer`/:class:`DecoderLayer` and then to the root, returning
            ``model`` itself (its parameters become sharded ``DTensor`` s).
        find_unused_parameters: DDP option for models that leave some parameters out of the
            loss (e.g. a pooler an MLM loss never reads).

    Returns:
        the module to call in the training loop; ``model`` unchanged without a process group
        of more than one rank.
    """
    if parallel not in PARALLEL_MODES:
        raise ValueError(f"`parallel` must be one of {PARALLEL_MODES}, got {parallel!r}")
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return model
    device = next(model.parameters()).device
    check_sparse_gradients(model, parallel, dist.get_backend())
    if parallel == "ddp":
        device_ids = [device.index] if device.type == "cuda" else None
        return _DDP(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
    fully_shard = _fully_shard()
    for module in model.modules():
        if isinstance(module, (EncoderLayer, DecoderLayer)):
            fully_shard(module)
    fully_shard(model)
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The whole model's and optimizer's state dicts, the same for 1 process, DDP and FSDP.

    Built with ``torch.distributed.checkpoint.state_dict.get_state_dict`` (full, on CPU):
    a DDP wrapper's ``module.`` prefix is dropped, FSDP shards are gathered (a collective:
    call it on every rank), and the optimizer state is keyed by parameter name instead of
    index, so a checkpoint written under one mode resumes under another.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    # A full state dict has its shards gathered: every model entry is a plain tensor.
    return cast(dict[str, Tensor], model_state), optimizer_state


def load_full_state_dicts(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, Tensor],
    optimizer_state: dict[str, Any],
) -> None:
    """Load what :func:`full_state_dicts` returned into a plain, DDP or FSDP model (every
    rank passes the full state; each keeps its shard). The parameters' gradients are
    cleared: they are no part of the state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    # torch lays out an empty optimizer state only for parameters without gradients.
    optimizer.zero_grad(set_to_none=True)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=dict(model_state),  # torch types the values wider than Tensor
        optim_state_dict=optimizer_state,
        options=StateDictOptions(full_state_dict=True),
    )


def mean_over_ranks(value: Tensor) -> Tensor:
    """``value`` averaged over the ranks (itself without a process group); a copy."""
    value = value.detach().clone()
    _, world_size = rank_and_world_size()
    if world_size > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= world_size
    return value


def local_shard(batch: Any) -> Any:
    """This rank's part of a global batch that every rank built identically.

    Every tensor (in nested tuples, lists and dicts; other values pass through) is cut
    along dim 0 into ``world_size`` equal chunks and chunk ``rank`` kept.

    Raises:
        ValueError: a batch size not divisible by the world size (unequal shards would
            weight the examples unequally in the averaged gradient).
    """
    rank, world_size = rank_and_world_size()
    if world_size == 1:
        return batch
    if isinstance(batch, Tensor):
        if batch.shape[0] % world_size:
            raise ValueError(
                f"`batch` size {batch.shape[0]} must be divisible by the world size {world_size}"
            )
        return batch.chunk(world_size)[rank]
    if isinstance(batch, dict):
        return {key: local_shard(value) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(local_shard(value) for value in batch)
    return batch


def sharded_batches(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
) -> Callable[[int], Any]:
    """A ``step -> batch`` function over ``dataset`` for :func:`fit`, one shard per rank.

    A ``DistributedSampler`` (``num_replicas``/``rank`` from the process group; one replica
    without) splits each epoch's permutation across the ranks; epoch ``e`` reshuffles with
    seed ``seed + e`` and the last incomplete batch of an epoch is dropped. Batches depend
    on ``step`` alone, so a run resumed from a checkpoint continues with the same batches.

    Args:
        dataset: a map-style dataset (``len`` and integer indexing).
        batch_size: examples per rank per step (the global batch is ``world_size`` times it).
        seed: shuffling seed, identical on every rank.
        shuffle: shuffle every epoch (else the dataset order).
        collate_fn: turns a list of examples into a batch.
    """
    check_int(batch_size, "batch_size")
    rank, world_size = rank_and_world_size()
    sampler: DistributedSampler[int] = DistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=True,
    )
    per_epoch = len(sampler) // batch_size
    if per_epoch == 0:
        raise ValueError(
            f"`batch_size` {batch_size} exceeds the {len(sampler)} examples each of the "
            f"{world_size} ranks gets per epoch"
        )
    cache: dict[int, Sequence[int]] = {}

    def batch(step: int) -> Any:
        epoch, index = divmod(step, per_epoch)
        if epoch not in cache:
            cache.clear()
            sampler.set_epoch(epoch)
            cache[epoch] = list(sampler)
        indices = cache[epoch][index * batch_size : (index + 1) * batch_size]
        return collate_fn([dataset[i] for i in indices])

    return batch


__all__ = [
    "PARALLEL_MODES",
    "check_sparse_gradients",
    "full_state_dicts",
    "init_distributed",
    "is_main_process",
    "load_full_state_dicts",
    "local_shard",
    "mean_over_ranks",
    "rank_and_world_size",
    "sharded_batches",
    "sparse_gradient_modules",
    "unwrap_model",
    "wrap_model",
]
