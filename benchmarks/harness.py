"""Shared machinery of the benchmark suite: settings, cases, timing, memory, correctness.

A suite (``benchmarks/suites/<name>.py``) only describes *what* to compare: it yields
:class:`Case` objects whose ``build`` allocates the inputs and returns a :class:`Setup`
holding two zero-argument callables, ours and the baseline. Everything else -- warm-up,
timing with :mod:`torch.utils.benchmark`, peak memory, the forward and
forward+backward variants, the max-abs-diff check -- happens here, once, in
:func:`run_case`.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils import benchmark

Profile = Literal["tiny", "quick", "full"]
Mode = Literal["fwd", "fwd+bwd"]

# Bounds of one Timer.adaptive_autorange round, in seconds. It takes at least four
# samples, keeps sampling until the interquartile range is within 10% of the median once
# MIN_RUN_TIME has passed, and stops at MAX_RUN_TIME whatever the spread: a quiet machine
# costs little, a noisy one gets more samples, and a slow step is not repeated forever.
MIN_RUN_TIME: dict[str, float] = {"tiny": 0.002, "quick": 0.02, "full": 0.1}
MAX_RUN_TIME: dict[str, float] = {"tiny": 0.01, "quick": 0.1, "full": 0.4}
CONVERGED_IQR = 0.1
# Timing rounds per side, alternated: ours, baseline, ours, baseline. Each side keeps its
# fastest round. Load from other processes comes in bursts; alternating spreads a burst
# over both sides instead of one, and keeping the best round drops it. The quick profile
# takes one round: it is a first look in about a minute, the full profile the figures.
ROUNDS: dict[str, int] = {"tiny": 1, "quick": 1, "full": 2}
WARMUP_RUNS = 2
MIB = 2**20

# Max abs diff above which a row is flagged as suspect, by the dtype it ran in. The
# outputs and gradients compared are of order one; the bounds leave room for a different
# summation order over a few thousand terms at each precision (float32 eps ~1e-7,
# float16 ~1e-3, bfloat16 ~8e-3), and no room for a wrong result.
TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-8,
    torch.float32: 1e-3,
    torch.float16: 3e-2,
    torch.bfloat16: 1e-1,
}


@dataclass(frozen=True)
class Context:
    """Where and how a run happens; passed to every suite's ``cases``.

    Attributes:
        device: the device every tensor is created on.
        dtype: floating dtype of inputs and parameters (a suite may override it, and
            says so in its note).
        profile: ``"tiny"`` (smoke test), ``"quick"`` or ``"full"``; sizes follow it.
        memory: measure each side's peak memory (one more run of each, profiled on a
            CPU).
    """

    device: torch.device
    dtype: torch.dtype
    profile: Profile
    memory: bool = True

    @property
    def is_cuda(self) -> bool:
        """Whether the run is on a GPU (sizes, memory statistics)."""
        return self.device.type == "cuda"

    def pick(
        self,
        *,
        tiny: Any,
        quick: Any,
        full: Any,
        cuda_quick: Any = None,
        cuda_full: Any = None,
    ) -> Any:
        """The value for this profile; on CUDA the ``cuda_*`` value when one is given.

        Sizes differ by device because a GPU needs much larger problems before the
        kernels, not the launch overhead, dominate the time.
        """
        if self.profile == "tiny":
            return tiny
        if self.profile == "quick":
            return cuda_quick if self.is_cuda and cuda_quick is not None else quick
        return cuda_full if self.is_cuda and cuda_full is not None else full

    def module(self, factory: Callable[[], nn.Module]) -> Any:
        """``factory()`` built directly on the run's device, cast to the dtype, in eval mode.

        Building under ``torch.device`` allocates and initialises parameters on the GPU
        itself: a large memory table is never first filled on the CPU and copied over.
        Eval mode turns dropout off, so both sides of a comparison compute the same thing.
        """
        with self.device:
            module = factory()
        return module.to(dtype=self.dtype).eval()

    def randn(self, *shape: int, dtype: torch.dtype | None = None, grad: bool = False) -> Tensor:
        """Standard normal tensor on the run's device, optionally a leaf requiring grad."""
        x = torch.randn(*shape, device=self.device, dtype=dtype or self.dtype)
        return x.requires_grad_(grad)


@dataclass
class Setup:
    """The two sides of one comparison, built by a case on the run's device.

    Attributes:
        ours: zero-argument callable running the attnzoo kernel; returns its output.
        baseline: the same for the reference it is compared against; its output has the
            shape of ours (both backward passes are fed the same output gradient).
        inputs: leaf tensors shared by both sides (``requires_grad=True``); the
            forward+backward step differentiates with respect to them and their
            gradients are compared. Empty means no forward+backward measurement.
        ours_params: further leaves of our side only (module parameters): their
            gradients are computed in the timed backward, as training would, but not
            compared.
        baseline_params: the same for the baseline side.
        reference: callable whose output (and gradients with respect to ``inputs``)
            ours is checked against, when the baseline computes something else (a dense
            layer standing in for a memory); ``None`` means the baseline. It is only
            evaluated for the check, outside the timed region.
    """

    ours: Callable[[], Tensor]
    baseline: Callable[[], Tensor]
    inputs: Sequence[Tensor] = ()
    ours_params: Sequence[Tensor] = ()
    baseline_params: Sequence[Tensor] = ()
    reference: Callable[[], Tensor] | None = None


@dataclass
class Case:
    """One comparison at one size.

    Attributes:
        suite: suite name, e.g. ``"attend"``.
        name: what varies inside the suite at fixed ``n``, e.g. ``"key-padding mask"``.
        n: the sequence length (x axis of the plots).
        build: allocates inputs and modules; called once, when the case runs, so that
            listing cases costs nothing.
        params: the other sizes, reported in the JSON (batch, heads, head dim, ...).
        backward: whether to measure forward+backward too.
        dtype: the dtype the case runs in when it is not the run's (``--dtype``); it
            sets the tolerance of the correctness check.
    """

    suite: str
    name: str
    n: int
    build: Callable[[], Setup]
    params: dict[str, Any] = field(default_factory=dict)
    backward: bool = True
    dtype: torch.dtype | None = None


@dataclass
class Row:
    """One line of the report: a case in one mode (forward or forward+backward)."""

    suite: str
    case: str
    n: int
    mode: Mode
    ours_ms: float | None = None
    baseline_ms: float | None = None
    ours_iqr_ms: float | None = None
    baseline_iqr_ms: float | None = None
    max_abs_diff: float | None = None
    ours_peak_mib: float | None = None
    baseline_peak_mib: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    tolerance: float | None = None

    @property
    def suspect(self) -> bool:
        """The correctness check failed: diff above tolerance, or not computable."""
        if self.max_abs_diff is None:
            return self.ours_ms is not None and self.error is None
        return self.tolerance is not None and not self.max_abs_diff <= self.tolerance

    @property
    def ratio(self) -> float | None:
        """ours / baseline time: below 1 means attnzoo is faster."""
        if self.ours_ms is None or self.baseline_ms is None or self.baseline_ms == 0:
            return None
        return self.ours_ms / self.baseline_ms

    @property
    def memory_ratio(self) -> float | None:
        """ours / baseline peak memory: below 1 means attnzoo uses less."""
        if not self.ours_peak_mib or self.baseline_peak_mib is None:
            return None
        if self.baseline_peak_mib == 0:
            return None
        return self.ours_peak_mib / self.baseline_peak_mib

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "case": self.case,
            "n": self.n,
            "mode": self.mode,
            "ours_ms": self.ours_ms,
            "baseline_ms": self.baseline_ms,
            "ratio": self.ratio,
            "ours_iqr_ms": self.ours_iqr_ms,
            "baseline_iqr_ms": self.baseline_iqr_ms,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "suspect": self.suspect,
            "ours_peak_mib": self.ours_peak_mib,
            "baseline_peak_mib": self.baseline_peak_mib,
            "memory_ratio": self.memory_ratio,
            "params": self.params,
            "error": self.error,
        }


# --------------------------------------------------------------------------- steps


def forward_step(fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """Inference forward: no autograd graph is recorded, as at evaluation time."""

    def step() -> Tensor:
        with torch.no_grad():
            return fn()

    return step


def backward_step(
    fn: Callable[[], Tensor], leaves: Sequence[Tensor], grad_out: Tensor
) -> Callable[[], tuple[Tensor | None, ...]]:
    """Forward then backward with a fixed output gradient.

    ``torch.autograd.grad`` returns the gradients instead of accumulating them into
    ``.grad``, so repeated timed runs neither grow memory nor need zeroing, and the
    same fixed ``grad_out`` makes the work identical on both sides.
    """
    leaves = tuple(leaves)

    def step() -> tuple[Tensor | None, ...]:
        out = fn()
        return torch.autograd.grad(out, leaves, grad_out, allow_unused=True)

    return step


# --------------------------------------------------------------------------- measuring


def time_ms(step: Callable[[], Any], ctx: Context, warmup: bool = True) -> tuple[float, float]:
    """Median and interquartile range, in milliseconds, of ``step()``.

    Warm-up runs first (lazy initialisation, cuDNN/cuBLAS heuristics, allocator
    caching), then :meth:`torch.utils.benchmark.Timer.adaptive_autorange`, which
    synchronises CUDA around each block. The Timer pins ``num_threads`` (1 by default);
    it is given the process's thread count so that CPU figures are what a user sees.
    """
    for _ in range(WARMUP_RUNS if warmup else 0):
        step()
    timer = benchmark.Timer(
        stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads()
    )
    m = timer.adaptive_autorange(
        CONVERGED_IQR,
        min_run_time=MIN_RUN_TIME[ctx.profile],
        max_run_time=MAX_RUN_TIME[ctx.profile],
    )
    return m.median * 1e3, m.iqr * 1e3


def peak_mib(step: Callable[[], Any], ctx: Context) -> float | None:
    """Peak memory one ``step()`` allocates beyond what was live before it, in MiB.

    On CUDA from the allocator's statistics; on a CPU, which keeps none, from PyTorch's
    memory profiler (:func:`cpu_peak_mib`). Subtracting the memory already allocated
    (inputs, parameters) leaves the working set of the kernel itself: its intermediates,
    output and gradients.
    """
    if not ctx.is_cuda:
        return cpu_peak_mib(step)
    gc.collect()
    torch.cuda.synchronize(ctx.device)
    torch.cuda.reset_peak_memory_stats(ctx.device)
    before = torch.cuda.memory_allocated(ctx.device)
    result = step()
    torch.cuda.synchronize(ctx.device)
    peak = torch.cuda.max_memory_allocated(ctx.device)
    del result
    return (peak - before) / MIB


def cpu_peak_mib(step: Callable[[], Any]) -> float:
    """Peak CPU memory one ``step()`` allocates, in MiB.

    The step runs once under :mod:`torch.profiler` with ``profile_memory=True``, which
    records every allocation and free of PyTorch's CPU allocator (tensors, autograd's saved
    tensors, kernel workspaces) with its address. The figure is the peak of the running
    total of the blocks the step itself allocated: blocks that were live before it
    (inputs, parameters, or garbage a collection frees meanwhile) count neither way.
    PyTorch's CPU allocator keeps no cache, so this is the memory the step held.

    The raw allocation events are read rather than the profiler's memory timeline: the
    timeline needs shapes and Python stacks recorded (10-20x the cost of the step on
    op-heavy code), and it files every block no tensor owns, such as a kernel's
    workspace, under one shared key, so that freeing one of them forgets another.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    # Kineto logs each profiler start and stop on stderr; level 6 is above its highest.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = step()
        del result
    events = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        if event.tag == _EventType.Allocation:
            fields = event.extra_fields
            events.append((event.start_time_ns, fields.ptr, fields.alloc_size))
        pending.extend(event.children)
    held: dict[int, int] = {}  # address -> size of the blocks the step allocated
    live = peak = 0
    for _, address, size in sorted(events):
        if size > 0:
            held[address] = size
            live += size
            peak = max(peak, live)
        elif address in held:
            live -= held.pop(address)
    return peak / MIB


def max_abs_diff(a: Tensor | Sequence[Tensor | None], b: Tensor | Sequence[Tensor | None]) -> float:
    """Largest absolute elementwise difference, computed in float32 (or float64).

    Accepts two tensors or two equally long sequences of tensors (gradients); a shape
    mismatch or a NaN is reported as ``inf`` so that it can never look correct.
    """
    if isinstance(a, Tensor):
        a, b = (a,), (b,)  # type: ignore[assignment]
    worst = 0.0
    for x, y in zip(a, b, strict=True):  # type: ignore[arg-type]
        if x is None or y is None:
            if x is not y:
                return math.inf
            continue
        if x.shape != y.shape:
            return math.inf
        wide = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
        d = (x.detach().to(wide) - y.detach().to(wide)).abs()
        if d.numel() == 0:
            continue
        value = d.max().item()
        if math.isnan(value):
            return math.inf
        worst = max(worst, value)
    return worst


def _error_text(exc: BaseException) -> str:
    """One short line for the report: the exception type and its first line."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out of memory"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"[:200]


@dataclass
class Measured:
    """Time, spread and peak memory of one side, or why they are missing."""

    median_ms: float | None = None
    iqr_ms: float | None = None
    peak_mib: float | None = None
    error: str | None = None


def measure(steps: Sequence[Callable[[], Any]], ctx: Context) -> list[Measured]:
    """Time the steps in alternating rounds (see :data:`ROUNDS`), then their peak memory.

    A failing step is reported in its :class:`Measured` instead of stopping the run: a
    dense baseline running out of memory at large n (``torch.cuda.OutOfMemoryError``) is
    a result worth reporting. Any other failure is reported the same way, and the smoke
    tests fail on it.
    """
    results = [Measured() for _ in steps]
    for round_index in range(ROUNDS[ctx.profile]):
        for step, result in zip(steps, results, strict=True):
            if result.error is not None:
                continue
            try:
                median, iqr = time_ms(step, ctx, warmup=round_index == 0)
            except Exception as exc:
                result.error = _error_text(exc)
                _release(ctx)
                continue
            if result.median_ms is None or median < result.median_ms:
                result.median_ms, result.iqr_ms = median, iqr
    for step, result in zip(steps, results, strict=True):
        if result.error is None and ctx.memory:
            try:
                result.peak_mib = peak_mib(step, ctx)
            except Exception as exc:
                result.error = _error_text(exc)
                _release(ctx)
    return results


def _release(ctx: Context) -> None:
    """Hand cached blocks back after a failure, so the next measurement starts clean."""
    if ctx.is_cuda:
        torch.cuda.empty_cache()


def _row(case: Case, mode: Mode, ctx: Context) -> Row:
    dtype = case.dtype or ctx.dtype
    return Row(
        suite=case.suite,
        case=case.name,
        n=case.n,
        mode=mode,
        params={**case.params, "dtype": str(dtype).removeprefix("torch.")},
        tolerance=TOLERANCE.get(dtype),
    )


def run_case(case: Case, ctx: Context) -> list[Row]:
    """Measure one case: a forward row and, where meaningful, a forward+backward row."""
    torch.manual_seed(0)
    modes: list[Mode] = ["fwd", "fwd+bwd"] if case.backward else ["fwd"]
    rows = [_row(case, mode, ctx) for mode in modes]
    try:
        setup = case.build()
    except Exception as exc:
        for row in rows:
            row.error = _error_text(exc)
        return rows

    for row in rows:
        grad_out = None
        ours_step: Callable[[], Any]
        base_step: Callable[[], Any]
        if row.mode == "fwd":
            ours_step = forward_step(setup.ours)
            base_step = forward_step(setup.baseline)
        else:
            if not setup.inputs:
                row.error = "no differentiable inputs"
                continue
            try:
                # One fixed output gradient for both sides: the same backward work, and
                # input gradients that are comparable.
                with torch.no_grad():
                    grad_out = torch.randn_like(setup.ours())
            except Exception as exc:
                row.error = f"ours: {_error_text(exc)}"
                continue
            ours_step = backward_step(setup.ours, [*setup.inputs, *setup.ours_params], grad_out)
            base_step = backward_step(
                setup.baseline, [*setup.inputs, *setup.baseline_params], grad_out
            )

        ours, base = measure([ours_step, base_step], ctx)
        row.ours_ms, row.ours_iqr_ms, row.ours_peak_mib = ours.median_ms, ours.iqr_ms, ours.peak_mib
        row.baseline_ms, row.baseline_iqr_ms = base.median_ms, base.iqr_ms
        row.baseline_peak_mib = base.peak_mib
        errors = [
            f"{side}: {m.error}" for side, m in (("ours", ours), ("baseline", base)) if m.error
        ]
        checkable = setup.reference is not None or row.baseline_ms is not None
        if row.ours_ms is not None and checkable:
            row.max_abs_diff = _correctness(setup, row.mode, grad_out, ctx)
        row.error = "; ".join(errors) or None
    del setup
    _release(ctx)
    return rows


def _correctness(setup: Setup, mode: Mode, grad_out: Tensor | None, ctx: Context) -> float | None:
    """Max abs diff from the check (reference, else baseline) of outputs or input gradients.

    Forward rows compare outputs; forward+backward rows compare the gradients with respect
    to the shared inputs, both sides fed the same ``grad_out``. ``None`` when the check
    itself cannot run (e.g. out of memory); the smoke tests fail on that.
    """
    check = setup.reference or setup.baseline
    try:
        if mode == "fwd" or grad_out is None:
            with torch.no_grad():
                return max_abs_diff(setup.ours(), check())
        inputs = tuple(setup.inputs)
        ours = torch.autograd.grad(setup.ours(), inputs, grad_out, allow_unused=True)
        theirs = torch.autograd.grad(check(), inputs, grad_out, allow_unused=True)
        return max_abs_diff(ours, theirs)
    except Exception:
        _release(ctx)
        return None


def iter_rows(cases: Sequence[Case], ctx: Context, progress: bool = True) -> Iterator[Row]:
    """Run every case in order, yielding its rows; a tqdm bar counts cases."""
    from tqdm.auto import tqdm

    bar = tqdm(cases, desc="benchmarks", unit="case", disable=not progress, dynamic_ncols=True)
    for case in bar:
        bar.set_postfix_str(f"{case.suite}: {case.name}, n={case.n}", refresh=False)
        yield from run_case(case, ctx)
    bar.close()


@dataclass(frozen=True)
class Suite:
    """A registered suite: what it compares, against what, and its cases.

    Attributes:
        name: the ``--only`` name.
        title: one line naming ours and the baseline.
        note: what the comparison means and what it does not (printed under the table).
        cases: ``cases(ctx)`` lists the cases at the sizes of ``ctx.profile``.
    """

    name: str
    title: str
    note: str
    cases: Callable[[Context], list[Case]]
