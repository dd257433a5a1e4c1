"""Linear projections at inference: one product for several modules, and a CPU route for
the few rows of a decoding step.

Decoding one token at a time multiplies each weight by one row per sequence. On a CPU,
``F.linear`` then runs a matrix-vector or small-``M`` product that reads the weight on
one thread, and that read is the whole cost of a step. The same product written the other
way round, ``(W @ x^T)^T``, is spread over every thread, and for a single row so is a
batched product over blocks of the weight's rows. Measured at GPT-2 small's widths
(float32, 2 threads, time against ``F.linear``): one row 0.29-0.59x, 2 rows 0.18-0.48x,
4 rows 0.29-0.72x, 16 rows 0.79-0.94x; above 16 rows the gain fades and at a few hundred
the two are equal. Weights small enough to stay in cache gain nothing, so they keep
``F.linear``.

Both routes sum in another order than ``F.linear``: results differ from it by float
rounding, up to about 1e-6 of the largest output in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Most rows sent to the CPU decoding route; above it F.linear's gain shrinks towards par.
MAX_DECODING_ROWS = 16
# Fewest weight entries (2 MiB of float32) for the CPU decoding route: a smaller weight
# stays in cache, and the extra kernels cost about what they save (256 x 1024: 1.09x
# F.linear's time for one row).
MIN_DECODING_WEIGHT = 2**19


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, by the CPU decoding route where it applies.

    The route (see the module docstring) is taken for float32 CPU tensors with at most
    :data:`MAX_DECODING_ROWS` rows, a contiguous weight of at least
    :data:`MIN_DECODING_WEIGHT` entries, and no autograd on any of them.

    Args:
        x: ``(..., in_features)``.
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)`` or None.

    Returns:
        ``(..., out_features)``.
    """
    if not _decoding_route(x, weight, bias):
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, weight.shape[1])
    out = _one_row(rows[0], weight) if rows.shape[0] == 1 else _few_rows(rows, weight)
    if bias is not None:
        out = out.add_(bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def _decoding_route(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether :func:`linear` may take the CPU decoding route for these tensors."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        x.device.type == "cpu"
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
        and x.dim() >= 1
        and weight.dim() == 2
        and x.shape[-1] == weight.shape[1]
        and x.numel() <= MAX_DECODING_ROWS * weight.shape[1]
        and x.numel() > 0
        and weight.is_contiguous()
        and weight.numel() >= MIN_DECODING_WEIGHT
        and torch.get_num_threads() > 1
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    )


def _one_row(x: Tensor, weight: Tensor) -> Tensor:
    """``weight @ x`` for one row ``x`` ``(in,)``: ``(out,)``.

    The weight's rows are cut into one block per thread and multiplied as one batched
    product with ``x`` broadcast over the blocks (stride 0, not copied), which runs the
    blocks on parallel threads; rows left over by the cut take a matrix-vector product.
    ``x`` goes in as a transposed row, strides ``(0, 1, in)``: with the strides of a
    column, ``(0, 1, 1)``, the same product takes a kernel 7 times slower on this route.
    """
    out_features, in_features = weight.shape
    blocks = min(torch.get_num_threads(), out_features)
    main = out_features - out_features % blocks
    out = x.new_empty(out_features)
    torch.bmm(
        weight[:main].view(blocks, main // blocks, in_features),
        x.view(1, 1, in_features).transpose(1, 2).expand(blocks, in_features, 1),
        out=out[:main].view(blocks, main // blocks, 1),
    )
    if main < out_features:
        torch.mv(weight[main:], x, out=out[main:])
    return out


def _few_rows(rows: Tensor, weight: Tensor) -> Tensor:
    """``rows @ weight^T`` for ``rows`` ``(m, in)``, m small, as ``(weight @ rows^T)^T``:
    ``(m, out)``, contiguous."""
    return torch.mm(weight, rows.t()).t().contiguous()


def project(x: Tensor, module: nn.Module) -> Tensor:
    """``module(x)``; a plain :class:`torch.nn.Linear` at inference goes through
    :func:`linear`, so that a decoding step on a CPU takes its faster route.

    The module is called as usual whenever anything could observe the difference: see
    :func:`project_jointly` for the conditions (here for one module).

    Args:
        x: ``(..., in_features)``.
        module: the projection.

    Returns:
        ``(..., out_features)``.
    """
    # The cheap tests first: on a GPU, and for the many rows of training or a prompt, this
    # runs once per projection and layer, and there the module is called anyway.
    if (
        x.device.type == "cpu"
        and x.dim() > 0
        and x.numel() <= MAX_DECODING_ROWS * x.shape[-1]
        and _plain_inference_linears((module,))
    ):
        plain = cast(nn.Linear, module)
        return linear(x, plain.weight, plain.bias)
    return module(x)


def project_jointly(x: Tensor, linears: Sequence[nn.Module]) -> list[Tensor]:
    """``[module(x) for module in linears]``, computed as one matrix product at inference.

    A self-attention layer projects the same input three times (queries, keys, values);
    while decoding one token at a time each product is tiny and its launch cost, not its
    arithmetic, is what counts, so one product over the stacked weights is faster (as in
    GPT-2's ``c_attn``). The modules and their parameters stay as they are: on the first
    call that may fuse, the weights (and biases) are moved, values unchanged, into one
    contiguous block that the parameters are views of (``param.data`` re-pointed; the same
    ``Parameter`` objects, state-dict keys and shapes, no memory held beside them); later
    calls read the block through the parameters. Anything that separates the parameters
    again (``.to()``, ``load_state_dict(..., assign=True)``, a new module) is seen by
    comparing storage addresses, and the block is rebuilt at the next fusing call. The
    joint product is :func:`linear`, with its CPU decoding route.

    The joint product is used only when it cannot change what the caller observes: autograd
    off (``torch.no_grad()`` or inference mode), not compiling or tracing, every module a
    plain :class:`torch.nn.Linear` with the same input width, all with or all without
    bias, distinct plain ``Parameter`` weights of one dtype and device, and no forward
    hooks on any of them (nor global module hooks). Otherwise each module is called.

    Args:
        x: ``(..., in_features)``.
        linears: the modules to apply to ``x``.

    Returns:
        one tensor ``(..., out_features_i)`` per module, in order (views of one joint
        output when fused).
    """
    if len(linears) < 2 or not _plain_inference_linears(linears):
        return [module(x) for module in linears]
    plain = [cast(nn.Linear, module) for module in linears]  # checked above
    weights = [module.weight for module in plain]
    biases = [module.bias for module in plain if module.bias is not None]  # all or none
    out = linear(x, _joint(weights), _joint(biases) if biases else None)
    return list(out.split([w.shape[0] for w in weights], dim=-1))


def _plain_inference_linears(linears: Sequence[nn.Module]) -> bool:
    """Whether calling ``linears`` may be replaced by products of their parameters: the
    conditions listed in :func:`project_jointly`."""
    if (
        torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or _global_module_hooks()
    ):
        return False
    first = linears[0]
    if type(first) is not nn.Linear or first.weight.device.type == "meta":
        return False
    seen: set[int] = set()
    for module in linears:
        if (
            type(module) is not nn.Linear
            or module._forward_hooks
            or module._forward_pre_hooks
            or module.in_features != first.in_features
            or (module.bias is None) != (first.bias is None)
        ):
            return False
        for param in (module.weight, module.bias):
            if param is None:
                continue
            if type(param) is not nn.Parameter or id(param) in seen:
                return False
            if param.dtype != first.weight.dtype or param.device != first.weight.device:
                return False
            seen.add(id(param))
    return True


def _global_module_hooks() -> bool:
    """Whether hooks registered for every module (``register_module_forward_hook``...) exist."""
    hooks = nn.modules.module
    return bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks)


def _joint(params: Sequence[Tensor]) -> Tensor:
    """The rows of ``params`` as one tensor whose storage they share, packing them first
    if they do not lie back to back in one storage yet."""
    joint = _stacked_rows(params)
    return joint if joint is not None else _pack(params)


def _stacked_rows(tensors: Sequence[Tensor]) -> Tensor | None:
    """The tensor whose rows are those of ``tensors`` in order, as a view of their shared
    storage, if they lie that way (contiguous, back to back, in one storage); else None."""
    first = tensors[0]
    storage = first.untyped_storage().data_ptr()
    end = first.data_ptr()
    rows = 0
    for t in tensors:
        if (
            t.shape[1:] != first.shape[1:]
            or not t.is_contiguous()
            or t.untyped_storage().data_ptr() != storage
            or t.data_ptr() != end
        ):
            return None
        end += t.numel() * t.element_size()
        rows += t.shape[0]
    return first.as_strided((rows, *first.shape[1:]), first.stride())


def _pack(params: Sequence[Tensor]) -> Tensor:
    """Copy ``params`` into one new contiguous block, make each a view of its rows, and
    return the block."""
    # Outside inference mode, so that the block is an ordinary tensor that training can
    # use later; without autograd, since only storage moves.
    with torch.inference_mode(False), torch.no_grad():
        block = torch.cat([p.detach() for p in params])
        for param, rows in zip(params, block.split([p.shape[0] for p in params]), strict=True):
            param.data = rows
    return block


__all__ = ["MAX_DECODING_ROWS", "MIN_DECODING_WEIGHT", "linear", "project", "project_jointly"]
