"""Command line of the benchmark suite, and :func:`run`, its programmatic form."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import report
from .harness import Context, Profile, Row, iter_rows
from .suites import SUITES, load

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def best_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    profile: Profile = "full",
    only: Sequence[str] | None = None,
    out: Path | str = "bench-results",
    progress: bool = True,
    plots: bool = True,
    echo: bool = True,
    memory: bool = True,
) -> list[Row]:
    """Run the selected suites and write ``results.md``, ``results.json`` and PNGs to ``out``.

    Args:
        device: where to run; the best device present by default.
        dtype: dtype of inputs and parameters (the entmax suite always uses float32).
        profile: ``"full"``, ``"quick"`` or ``"tiny"`` (a smoke test: seconds, not figures).
        only: suite names; all of :data:`benchmarks.suites.SUITES` by default.
        out: output folder, created if missing.
        progress: show the tqdm bar.
        plots: write PNGs (skipped, with a note, when matplotlib is missing).
        echo: print the markdown report to stdout.
        memory: measure peak memory (one more run of each side; on a CPU under the
            memory profiler).

    Returns:
        every row measured, in order.
    """
    device = torch.device(device) if device is not None else best_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` is cuda but torch.cuda.is_available() is False")
    ctx = Context(device=device, dtype=dtype, profile=profile, memory=memory)
    suites = [load(name) for name in (only or SUITES)]
    cases = [case for suite in suites for case in suite.cases(ctx)]

    start = time.perf_counter()
    rows = list(iter_rows(cases, ctx, progress=progress))
    elapsed = time.perf_counter() - start

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = report.machine_info(ctx)
    info["wall_time_s"] = round(elapsed, 1)
    with_memory = any(r.ours_peak_mib is not None for r in rows)
    text = report.markdown(info, suites, rows, with_memory=with_memory)
    (out / "results.md").write_text(text)
    report.write_json(out / "results.json", info, suites, rows)
    if echo:
        print(text)
    if plots:
        written = report.write_plots(out, suites, rows)
        if echo:
            if written is None:
                print("matplotlib is not installed: no plots (pip install matplotlib).")
            else:
                print(f"Wrote {len(written)} plot(s) to {out}/.")
    if echo:
        print(f"Wrote {out / 'results.md'} and {out / 'results.json'} in {elapsed:.0f} s.")
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Time attnzoo's attention kernels against baselines measured in the same run "
            "(SDPA, nn.MultiheadAttention, the entmax package, dense layers) and check "
            "that their outputs agree."
        ),
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="fewer, smaller sizes and one timing round (about a minute on 2 CPU cores)",
    )
    size.add_argument(
        "--tiny",
        action="store_true",
        help="smoke test: every case once at toy size; the times mean nothing",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cuda if available, else cpu",
    )
    parser.add_argument(
        "--only", nargs="+", choices=SUITES, metavar="SUITE", help=f"among {', '.join(SUITES)}"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        metavar="DIR",
        help="output folder (default: bench-results/)",
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="dtype of inputs and parameters (default: float32; the entmax suite is always "
        "float32)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory measurements"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this PyTorch")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile: Profile = "tiny" if args.tiny else "quick" if args.quick else "full"
    run(
        device=args.device,
        dtype=DTYPES[args.dtype],
        profile=profile,
        only=args.only,
        out=args.out,
        progress=not args.no_progress,
        plots=not args.no_plots,
        memory=not args.no_memory,
    )
    return 0
