"""Argument checks shared by every kernel.

Each check raises ``TypeError`` or ``ValueError`` whose message names the argument,
what was expected and what came, so that bad input fails at the library's boundary
rather than deep inside PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_tensor(x: object, name: str) -> Tensor:
    """Return ``x`` if it is a tensor, else raise ``TypeError`` naming ``name``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_min_rank(x: Tensor, min_rank: int, name: str, layout: str) -> None:
    """Raise ``ValueError`` unless ``x.dim() >= min_rank``; ``layout`` is e.g. ``(..., n, d)``."""
    check_tensor(x, name)
    if x.dim() < min_rank:
        raise ValueError(
            f"`{name}` must have at least {min_rank} dimensions {layout}, "
            f"got shape {tuple(x.shape)}"
        )


def check_rank(x: Tensor, rank: int, name: str, layout: str) -> None:
    """Raise ``ValueError`` unless ``x.dim() == rank``; ``layout`` is e.g. ``(batch, seq, dim)``."""
    check_tensor(x, name)
    if x.dim() != rank:
        raise ValueError(
            f"`{name}` must have {rank} dimensions {layout}, got shape {tuple(x.shape)}"
        )


def check_size(x: Tensor, dim: int, expected: int, name: str, what: str) -> None:
    """Raise ``ValueError`` unless ``x.shape[dim] == expected``; ``what`` names that axis."""
    if x.shape[dim] != expected:
        raise ValueError(
            f"`{name}` must have {what} = {expected} (axis {dim}), got {x.shape[dim]} "
            f"in shape {tuple(x.shape)}"
        )


def check_bool_mask(mask: object, name: str = "mask") -> Tensor:
    """Return ``mask`` if it is a boolean tensor (``True`` = may attend), else raise.

    A float or integer mask is a ``TypeError``: additive ``-inf`` masks and 0/1 masks
    mean opposite things in different libraries, so the library never guesses.
    """
    check_tensor(mask, name)
    assert isinstance(mask, Tensor)
    if mask.dtype != torch.bool:
        raise TypeError(
            f"`{name}` must be a boolean tensor (True = may attend), got dtype {mask.dtype}; "
            f"convert a 0/1 mask with `{name}.bool()`"
        )
    return mask


def broadcasts_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` without growing it: at most
    as many axes, each of size 1 or of the target's size (aligned from the right).

    Plain Python: ``torch.broadcast_shapes`` costs about 15 us per call on a CPU, which a
    check run in every layer of every decoding step would feel.
    """
    if len(shape) > len(target):
        return False
    # The target's extra leading axes are not compared.
    pairs = zip(reversed(shape), reversed(target), strict=False)
    return all(a == 1 or a == b for a, b in pairs)


def check_broadcastable_to(x: Tensor, shape: Sequence[int], name: str, target: str) -> None:
    """Raise ``ValueError`` unless ``x`` broadcasts to ``shape`` without growing it."""
    shape = tuple(shape)
    if not broadcasts_to(tuple(x.shape), shape):
        raise ValueError(
            f"`{name}` of shape {tuple(x.shape)} does not broadcast to {target} {shape}"
        )


def check_positive(value: float, name: str) -> None:
    """Raise ``ValueError`` unless ``value > 0``."""
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value}")


def check_non_negative(value: float, name: str) -> None:
    """Raise ``ValueError`` unless ``value >= 0``."""
    if not value >= 0:
        raise ValueError(f"`{name}` must be >= 0, got {value}")


def check_probability(value: float, name: str) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1`` (dropout rates and the like)."""
    if not 0 <= value < 1:
        raise ValueError(f"`{name}` must be in [0, 1), got {value}")


def check_int(value: object, name: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int (not a bool) ``>= minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value}")
    return value


def check_token_ids(ids: object, size: int, name: str) -> Tensor:
    """Return ``ids`` if it is an integer tensor with values in ``[0, size)``, else raise.

    An out-of-range id would otherwise fail deep inside an embedding lookup (or, on CUDA,
    as a device-side assert that poisons the process).

    Args:
        ids: token (or position) ids, any shape.
        size: the table size (vocabulary size, number of positions, ...).
        name: the argument's name for the error message.

    Raises:
        TypeError: ``ids`` is not an integer tensor.
        ValueError: an id is negative or ``>= size``; the message gives the range and the
            offending value.
    """
    check_tensor(ids, name)
    assert isinstance(ids, Tensor)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"`{name}` must be an integer tensor of ids, got dtype {ids.dtype}")
    # Under torch.compile the range check would read values back to Python and split the
    # graph; the dtype check above still runs, and eager calls keep the full check.
    if ids.numel() and not torch.compiler.is_compiling():
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < 0 or high >= size:
            bad = low if low < 0 else high
            raise ValueError(f"`{name}` must hold ids in [0, {size}), got {bad}")
    return ids


def check_prefix_mask(mask: object, name: str) -> Tensor:
    """Return the lengths ``mask.sum(-1)`` after checking that ``mask`` is a prefix mask.

    A prefix mask is True on the first ``length`` positions of its last axis and False
    after them (real tokens, then padding): the layout packed recurrent encoders need.
    """
    check_bool_mask(mask, name)
    assert isinstance(mask, Tensor)
    lengths = mask.sum(-1)
    expected = torch.arange(mask.shape[-1], device=mask.device) < lengths[..., None]
    if not torch.equal(mask, expected):
        raise ValueError(
            f"`{name}` must be a prefix mask (True on the real tokens, then False on the "
            "padding after them), got a True after a False"
        )
    return lengths
