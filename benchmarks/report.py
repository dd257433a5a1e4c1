"""Reporting: machine description, the markdown tables, the JSON file and the plots."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .harness import TOLERANCE, Context, Row, Suite

RATIO_HEADER = "ours / baseline (lower is better)"


# --------------------------------------------------------------------------- machine


def _cpu_name() -> str:
    """The CPU model: /proc/cpuinfo on Linux, platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(ctx: Context) -> dict[str, Any]:
    """What the figures were measured on; stored in the JSON and atop the markdown."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(ctx.device),
        "dtype": str(ctx.dtype).removeprefix("torch."),
        "profile": ctx.profile,
        "cuda_device": None,
        "cuda_version": torch.version.cuda,
    }
    if ctx.is_cuda:
        info["cuda_device"] = torch.cuda.get_device_name(ctx.device)
    try:
        import entmax

        info["entmax"] = getattr(entmax, "__version__", "unknown")
    except ImportError:
        info["entmax"] = None
    return info


# --------------------------------------------------------------------------- markdown


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _diff(row: Row) -> str:
    text = "n/a" if row.max_abs_diff is None else f"{row.max_abs_diff:.1e}"
    return f"{text} ⚠" if row.suspect else text


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def suite_table(suite: Suite, rows: Sequence[Row], with_memory: bool) -> str:
    """One suite's markdown section: heading, table, then its note."""
    header = [
        "case",
        "n",
        "pass",
        "ours (ms)",
        "baseline (ms)",
        RATIO_HEADER,
        "max abs diff",
    ]
    if with_memory:
        header += ["ours peak (MiB)", "baseline peak (MiB)", "memory ours / baseline"]
    lines = [
        f"### `{suite.name}`: {suite.title}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] * 2 + ["---"] + ["--:"] * (len(header) - 3)) + "|",
    ]
    for r in rows:
        cells = [
            r.case,
            str(r.n),
            r.mode,
            _ms(r.ours_ms),
            _ms(r.baseline_ms),
            _ratio(r.ratio),
            _diff(r),
        ]
        if with_memory:
            cells += [_mib(r.ours_peak_mib), _mib(r.baseline_peak_mib), _ratio(r.memory_ratio)]
        if r.error:
            # A pipe inside an error message would end the cell early.
            cells[0] += f" ({r.error.replace('|', '/')})"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", suite.note, ""]
    return "\n".join(lines)


COLUMN_NOTE = (
    "Times are medians of `torch.utils.benchmark.Timer.adaptive_autorange` after warm-up "
    "(each side's best round; rounds of ours and the baseline alternate); "
    "`fwd` runs under `torch.no_grad()`, `fwd+bwd` is forward plus "
    "`torch.autograd.grad` with a fixed output gradient. The ratio is ours / baseline "
    "from the same run: below 1 attnzoo is faster. *max abs diff* is the largest "
    "absolute difference from the baseline's output (`fwd` rows) or of the gradients "
    "with respect to the shared inputs (`fwd+bwd` rows); where the baseline computes a "
    "different function (`pkm`), from a reference implementation of ours instead. ⚠ marks "
    "a diff above the tolerance of the dtype ("
    + ", ".join(
        f"{str(dtype).removeprefix('torch.')} {tol:.0e}"
        for dtype, tol in TOLERANCE.items()
        if dtype != torch.float64
    )
    + ")."
)


def markdown(
    info: dict[str, Any], suites: Sequence[Suite], rows: Sequence[Row], with_memory: bool
) -> str:
    """The whole report: machine line, column note, one section per suite."""
    device = info["cuda_device"] or info["cpu"]
    parts = [
        "## attnzoo benchmarks",
        "",
        f"{device}; {info['platform']}; torch {info['torch']}, "
        f"{info['torch_threads']} thread(s); device `{info['device']}`, "
        f"dtype `{info['dtype']}`, profile `{info['profile']}`.",
        "",
        COLUMN_NOTE,
        "",
    ]
    for suite in suites:
        suite_rows = [r for r in rows if r.suite == suite.name]
        parts.append(suite_table(suite, suite_rows, with_memory))
    return "\n".join(parts)


def write_json(
    path: Path, info: dict[str, Any], suites: Sequence[Suite], rows: Sequence[Row]
) -> None:
    """Every figure, with the machine and each suite's description."""
    payload = {
        "machine": info,
        "suites": {s.name: {"title": s.title, "note": s.note} for s in suites},
        "rows": [r.to_dict() for r in rows],
    }
    path.write_text(json.dumps(payload, indent=2, allow_nan=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    """Fallback for the odd non-JSON value in ``params`` (a dtype, a device)."""
    return str(value)


# --------------------------------------------------------------------------- plots


def write_plots(out: Path, suites: Sequence[Suite], rows: Sequence[Row]) -> list[Path] | None:
    """Time (and, where measured, peak memory) against n, log-log, one PNG per suite.

    Returns the files written, or ``None`` when matplotlib is not installed (it is an
    optional dependency: the ``bench`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed, none opened
        import matplotlib.pyplot as plt
    except ImportError:
        return None

    written = []
    for suite in suites:
        suite_rows = [r for r in rows if r.suite == suite.name]
        for metric, label, ours_key, base_key in (
            ("time", "time (ms)", "ours_ms", "baseline_ms"),
            ("memory", "peak memory (MiB)", "ours_peak_mib", "baseline_peak_mib"),
        ):
            if not any(getattr(r, ours_key) for r in suite_rows):
                continue
            modes = [m for m in ("fwd", "fwd+bwd") if any(r.mode == m for r in suite_rows)]
            fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
            for ax, mode in zip(axes[0], modes, strict=True):
                _plot_mode(ax, [r for r in suite_rows if r.mode == mode], ours_key, base_key)
                ax.set_title(f"{suite.name}: {mode}")
                ax.set_xlabel("sequence length n")
                ax.set_ylabel(label)
            fig.suptitle(suite.title, fontsize=9)
            fig.tight_layout()
            path = out / f"{suite.name}_{metric}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def _plot_mode(ax: Any, rows: Sequence[Row], ours_key: str, base_key: str) -> None:
    """One line per case for ours (solid) and its baseline (dashed), same colour."""
    cases = list(dict.fromkeys(r.case for r in rows))
    colours = [f"C{i % 10}" for i in range(len(cases))]
    plotted = False
    for case, colour in zip(cases, colours, strict=True):
        case_rows = sorted((r for r in rows if r.case == case), key=lambda r: r.n)
        for key, style, side in ((ours_key, "-o", "ours"), (base_key, "--s", "baseline")):
            points = [(r.n, getattr(r, key)) for r in case_rows if getattr(r, key)]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, color=colour, label=f"{case} ({side})", markersize=4)
                plotted = True
    if plotted:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
