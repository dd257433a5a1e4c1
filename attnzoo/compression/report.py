"""What a compression really bought: parameters, non-zeros, bytes on disk, latency, metric.

Masking a weight with :mod:`torch.nn.utils.prune` leaves a dense tensor of the same size
(plus a mask and a copy of the original), so the model is neither smaller on disk nor faster;
only structural changes (fewer heads, fewer neurons, a low-rank factorisation, int8 storage)
change the bytes and the time. :func:`compression_report` measures the models as they are
rather than as the method promises, so a table shows both kinds honestly:

* ``parameters``: stored weight entries (a shared tensor counts once; the packed weight of a
  dynamically quantised linear layer counts as its ``out * in`` entries);
* ``nonzeros``: entries that are not zero in the weights the forward uses (for a pruned
  layer, ``weight_orig * weight_mask``);
* ``disk_bytes``: the size of a ``model.safetensors`` holding exactly those tensors (int8
  weights as int8 plus their scales and zero points, pruned weights dense);
* ``latency_ms``: median forward time on given inputs, in inference mode, on the CPU threads
  the process has;
* ``metric``: whatever ``evaluate(model)`` returns (accuracy, loss, ...).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.validation import check_int
from ..transformers_zoo.checkpoints import SAFETENSORS_NAME, write_hf_directory


def _is_dynamic_quantized_linear(module: nn.Module) -> bool:
    return isinstance(module, torch.ao.nn.quantized.dynamic.Linear)


def effective_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The weights ``model``'s forward uses, by name, each shared tensor once.

    Pruning re-parametrisations (``weight_orig`` and ``weight_mask``) are read as their
    product under the plain name (``weight``); dynamically quantised linear layers give
    their quantised ``weight`` and float ``bias``. Buffers are left out (masks, position
    ids): they are bookkeeping, not weights.

    Args:
        model: any module.

    Returns:
        ``{name: tensor}``; quantised tensors keep their quantised dtype.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}")
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if _is_dynamic_quantized_linear(module):
            weight, bias = module.weight(), module.bias()
            tensors[f"{dot}weight"] = weight
            if bias is not None:
                tensors[f"{dot}bias"] = bias
            continue
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            if name.endswith("_orig") and hasattr(module, f"{name[: -len('_orig')]}_mask"):
                name = name[: -len("_orig")]
                tensors[f"{dot}{name}"] = getattr(module, name).detach()
            else:
                tensors[f"{dot}{name}"] = param.detach()
    return tensors


def count_parameters(model: nn.Module) -> int:
    """Stored weight entries of ``model`` (see :func:`effective_tensors`)."""
    return sum(t.numel() for t in effective_tensors(model).values())


def count_nonzeros(model: nn.Module) -> int:
    """Non-zero entries of the weights ``model``'s forward uses (int8 weights: non-zero
    integer codes, i.e. entries not quantised to zero)."""
    total = 0
    for tensor in effective_tensors(model).values():
        if tensor.is_quantized:
            zero = _zero_points(tensor)
            total += int((tensor.int_repr().to(torch.int32) != zero).sum())
        else:
            total += int(torch.count_nonzero(tensor))
    return total


def _zero_points(tensor: Tensor) -> Tensor:
    """Zero points of a quantised tensor, broadcastable to its shape."""
    if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return torch.tensor(tensor.q_zero_point(), dtype=torch.int32)
    shape = [1] * tensor.dim()
    shape[tensor.q_per_channel_axis()] = -1
    return tensor.q_per_channel_zero_points().to(torch.int32).reshape(shape)


def storable_tensors(model: nn.Module) -> dict[str, Tensor]:
    """:func:`effective_tensors` in types safetensors stores: a quantised tensor becomes
    its integer codes (``name``) plus ``name.scale`` and ``name.zero_point`` (one per
    tensor, or one per channel)."""
    out: dict[str, Tensor] = {}
    for name, tensor in effective_tensors(model).items():
        if not tensor.is_quantized:
            out[name] = tensor
            continue
        out[name] = tensor.int_repr()
        if tensor.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            out[f"{name}.scale"] = torch.tensor([tensor.q_scale()], dtype=torch.float32)
            out[f"{name}.zero_point"] = torch.tensor([tensor.q_zero_point()], dtype=torch.int32)
        else:
            out[f"{name}.scale"] = tensor.q_per_channel_scales().float()
            out[f"{name}.zero_point"] = tensor.q_per_channel_zero_points().int()
    return out


def disk_bytes(model: nn.Module) -> int:
    """Size in bytes of a ``model.safetensors`` holding :func:`storable_tensors` (written
    to a temporary directory and measured)."""
    with tempfile.TemporaryDirectory() as directory:
        write_hf_directory(directory, {}, storable_tensors(model))
        return (Path(directory) / SAFETENSORS_NAME).stat().st_size


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def latency_ms(model: nn.Module, inputs: Any, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time in milliseconds of ``model(inputs)`` in inference mode.

    Args:
        model: called as ``model(*inputs)`` (tuple/list), ``model(**inputs)`` (dict) or
            ``model(inputs)``.
        inputs: the example batch.
        repeats: timed calls (the median is returned).
        warmup: untimed calls first.
    """
    check_int(repeats, "repeats")
    check_int(warmup, "warmup", minimum=0)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            _call(model, inputs)
        for _ in range(repeats):
            start = time.perf_counter()
            _call(model, inputs)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@dataclass
class ReportRow:
    """One model's measurements (see the module docstring)."""

    name: str
    parameters: int
    nonzeros: int
    disk_bytes: int
    latency_ms: float | None = None
    metric: float | None = None


@dataclass
class CompressionReport:
    """Rows of :func:`compression_report`; the first is the reference model.

    ``str(report)`` is a markdown table with each figure also as a ratio to the first row.
    """

    rows: list[ReportRow] = field(default_factory=list)
    metric_name: str = "metric"

    def row(self, name: str) -> ReportRow:
        """The row called ``name``."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    def __str__(self) -> str:
        base = self.rows[0]
        header = (
            f"| model | parameters | non-zeros | disk (KiB) | latency (ms) | {self.metric_name} |"
        )
        lines = [header, "|---|---:|---:|---:|---:|---:|"]
        for row in self.rows:
            latency = "-"
            if row.latency_ms is not None:
                latency = f"{row.latency_ms:.2f}"
                if base.latency_ms:
                    latency += f" ({row.latency_ms / base.latency_ms:.2f}x)"
            metric = "-" if row.metric is None else f"{row.metric:.4f}"
            lines.append(
                f"| {row.name} | {row.parameters:,} ({row.parameters / base.parameters:.2f}x) "
                f"| {row.nonzeros:,} ({row.nonzeros / max(base.nonzeros, 1):.2f}x) "
                f"| {row.disk_bytes / 1024:.1f} ({row.disk_bytes / base.disk_bytes:.2f}x) "
                f"| {latency} | {metric} |"
            )
        return "\n".join(lines)


def compression_report(
    before: nn.Module,
    after: nn.Module | Mapping[str, nn.Module] | Sequence[tuple[str, nn.Module]],
    evaluate: Callable[[nn.Module], float] | None = None,
    inputs: Any = None,
    repeats: int = 10,
    metric_name: str = "metric",
) -> CompressionReport:
    """Measure a model and its compressed versions side by side.

    Args:
        before: the reference model (first row, named ``"original"``).
        after: the compressed model (row ``"compressed"``), or named models
            (``{name: model}`` or ``[(name, model), ...]``), one row each.
        evaluate: ``model -> float``, e.g. accuracy on a held-out set; None = no metric.
        inputs: example batch for the latency column (see :func:`latency_ms`); None = no
            latency.
        repeats: timed calls per model.
        metric_name: the metric column's title.

    Returns:
        a :class:`CompressionReport`; ``print(report)`` shows the table.
    """
    if isinstance(after, nn.Module):
        named: list[tuple[str, nn.Module]] = [("compressed", after)]
    elif isinstance(after, Mapping):
        named = list(after.items())
    else:
        named = list(after)
    models = [("original", before), *named]
    for name, model in models:
        if not isinstance(model, nn.Module):
            raise TypeError(f"`after` must hold nn.Modules, got {type(model).__name__} ({name})")
    if evaluate is not None and not callable(evaluate):
        raise TypeError(f"`evaluate` must be callable, got {type(evaluate).__name__}")
    report = CompressionReport(metric_name=metric_name)
    for name, model in models:
        was_training = model.training
        model.eval()
        report.rows.append(
            ReportRow(
                name=name,
                parameters=count_parameters(model),
                nonzeros=count_nonzeros(model),
                disk_bytes=disk_bytes(model),
                latency_ms=None if inputs is None else latency_ms(model, inputs, repeats),
                metric=None if evaluate is None else float(evaluate(model)),
            )
        )
        model.train(was_training)
    return report


__all__ = [
    "CompressionReport",
    "ReportRow",
    "compression_report",
    "count_nonzeros",
    "count_parameters",
    "disk_bytes",
    "effective_tensors",
    "latency_ms",
    "storable_tensors",
]
