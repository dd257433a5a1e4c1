"""Smoke tests of the benchmark suite: every suite once at toy size, and the harness.

Timings are never asserted: they depend on the machine. What is asserted is that every
case runs, the reports are written, and ours agrees with its baseline (the correctness
column), so that a broken kernel or a broken comparison fails here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main, run
from benchmarks.harness import (
    Case,
    Context,
    Setup,
    Suite,
    cpu_peak_mib,
    max_abs_diff,
    run_case,
)
from benchmarks.report import suite_table, write_plots
from benchmarks.suites import SUITES, load

# float32 at toy sizes: every kernel agrees with its baseline to rounding error.
TOLERANCE = 1e-4
# Suites comparing whole models with Hugging Face: they list no case without transformers.
MODEL_SUITES = ("bert", "gpt2_generate")
HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
# Suites timing no backward pass (generation), so they have `fwd` rows only.
FORWARD_ONLY = {"gpt2_generate"}
RUNNING = [s for s in SUITES if HAVE_TRANSFORMERS or s not in MODEL_SUITES]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("bench")
    # Plots are left to their own test, on one suite: drawing all of them takes seconds.
    rows = run(device="cpu", profile="tiny", out=out, progress=False, plots=False, echo=False)
    return out, rows


def test_every_suite_runs_without_error(tiny_run: tuple[Path, list]) -> None:
    _, rows = tiny_run
    assert {r.suite for r in rows} == set(RUNNING)
    for r in rows:
        assert r.error is None, f"{r.suite}/{r.case}/{r.mode}: {r.error}"
        assert r.ours_ms is not None and r.ours_ms > 0
        assert r.baseline_ms is not None and r.baseline_ms > 0
        assert r.ratio == pytest.approx(r.ours_ms / r.baseline_ms)
        # Measured on the CPU too, by the memory profiler.
        assert r.ours_peak_mib is not None and r.ours_peak_mib >= 0
        assert r.baseline_peak_mib is not None and r.baseline_peak_mib >= 0
    for suite in RUNNING:
        modes = {r.mode for r in rows if r.suite == suite}
        assert modes == ({"fwd"} if suite in FORWARD_ONLY else {"fwd", "fwd+bwd"}), suite


def test_ours_matches_the_baseline(tiny_run: tuple[Path, list]) -> None:
    _, rows = tiny_run
    for r in rows:
        # Every row is checked against something (pkm: a brute-force read of the memory).
        assert r.max_abs_diff is not None, f"{r.suite}/{r.case}/{r.mode}"
        assert r.max_abs_diff < TOLERANCE, f"{r.suite}/{r.case}/{r.mode}: {r.max_abs_diff}"
        assert not r.suspect


def test_reports_are_written(tiny_run: tuple[Path, list]) -> None:
    out, rows = tiny_run
    data = json.loads((out / "results.json").read_text())
    machine = data["machine"]
    for key in ("platform", "cpu", "torch", "cuda_device", "dtype", "device"):
        assert key in machine
    assert machine["dtype"] == "float32" and machine["device"] == "cpu"
    assert set(data["suites"]) == set(SUITES)
    assert len(data["rows"]) == len(rows)
    first = data["rows"][0]
    for key in ("ours_ms", "baseline_ms", "ratio", "max_abs_diff", "n", "mode"):
        assert key in first

    text = (out / "results.md").read_text()
    assert "ours / baseline (lower is better)" in text
    for suite in SUITES:
        assert f"### `{suite}`" in text
    # One table line per row.
    assert sum(line.startswith("| ") and "| fwd" in line for line in text.splitlines()) == len(rows)


@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs transformers")
def test_model_suites_match_hugging_face(tiny_run: tuple[Path, list]) -> None:
    _, rows = tiny_run
    bert = [r for r in rows if r.suite == "bert"]
    assert [r.mode for r in bert] == ["fwd", "fwd+bwd"]
    # Hidden states of the real tokens, and the word-embedding gradient, to rounding error.
    for r in bert:
        assert r.max_abs_diff is not None and r.max_abs_diff < TOLERANCE, r
    generate = [r for r in rows if r.suite == "gpt2_generate"]
    assert generate and all(r.mode == "fwd" for r in generate)
    for r in generate:
        # The column is the fraction of generated tokens that differ: greedy decoding on
        # the same weights must give the same tokens.
        assert r.max_abs_diff == 0.0, r
        assert r.params["prompt"] == 16 and r.params["new_tokens"] == r.n


@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs transformers")
def test_bert_batch_is_padded_and_check_sees_a_wrong_weight() -> None:
    from benchmarks.suites import bert

    ctx = Context(device=torch.device("cpu"), dtype=torch.float32, profile="tiny")
    real = bert.real_tokens(ctx, 4, 16)
    assert real[0].all() and not real[-1].all() and real.sum(1).tolist() == [16, 13, 11, 8]
    shape = {"hidden": 16, "heads": 2, "layers": 1, "vocab": 50}
    setup = bert._build(ctx, shape, 2, 8)
    with torch.no_grad():
        ours, theirs = setup.ours(), setup.baseline()
        assert ours.shape == (8 + 4, 16)  # real tokens only
        assert max_abs_diff(ours, theirs) < TOLERANCE
        for p in setup.ours_params:
            p.add_(0.01 * torch.randn_like(p))
        assert max_abs_diff(setup.ours(), setup.baseline()) > TOLERANCE


@pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs transformers")
def test_generation_check_reads_the_fraction_of_differing_tokens() -> None:
    from benchmarks.suites import gpt2_generate

    a = torch.tensor([[1, 2, 3, 4]])
    assert gpt2_generate.fraction_differing(a, a.clone()) == 0.0
    assert gpt2_generate.fraction_differing(a, torch.tensor([[1, 2, 9, 9]])) == 0.5
    assert gpt2_generate.fraction_differing(a, a[:, :3]) == 1.0
    assert gpt2_generate.tokens_per_second(2, 50, 500.0) == pytest.approx(200.0)

    ctx = Context(device=torch.device("cpu"), dtype=torch.float32, profile="tiny")
    shape = {"hidden": 16, "heads": 2, "layers": 1, "vocab": 50}
    setup = gpt2_generate._build(ctx, shape, 1, 6)
    assert setup.reference is not None
    with torch.no_grad():
        assert setup.ours().shape == (1, gpt2_generate.PROMPT + 6)
    assert max_abs_diff(setup.ours(), setup.reference()) == 0.0


def test_model_suites_are_skipped_with_a_note_without_transformers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx = Context(device=torch.device("cpu"), dtype=torch.float32, profile="tiny")
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "transformers" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    try:
        for name in MODEL_SUITES:
            module = importlib.reload(importlib.import_module(f"benchmarks.suites.{name}"))
            assert module.SUITE.cases(ctx) == []
            assert module.SUITE.note.startswith("Skipped: `transformers` is not installed")
            table = suite_table(module.SUITE, [], with_memory=False)
            assert "Skipped" in table
    finally:
        monkeypatch.undo()
        for name in MODEL_SUITES:
            importlib.reload(importlib.import_module(f"benchmarks.suites.{name}"))


def test_plots_are_written_when_matplotlib_is_installed(
    tiny_run: tuple[Path, list], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    _, rows = tiny_run
    suite = load("sliding_window")
    written = write_plots(tmp_path, [suite], rows)
    names = ["sliding_window_time.png", "sliding_window_memory.png"]
    assert written == [tmp_path / name for name in names]
    assert all(path.stat().st_size > 0 for path in written)


def test_cpu_peak_memory_counts_what_the_step_holds() -> None:
    kept = torch.empty(2**20)  # live before the step: not counted, and freeing it is not
    mib = 2**18  # float32 entries in one MiB

    def step() -> torch.Tensor:
        nonlocal kept
        del kept
        a = torch.ones(3 * mib)
        b = torch.ones(2 * mib)  # 5 MiB held here: the peak
        del a
        return b + 1  # 2 + 2 MiB

    assert cpu_peak_mib(step) == pytest.approx(5.0)
    assert cpu_peak_mib(lambda: None) == 0.0


def test_cpu_peak_memory_tells_apart_blocks_no_tensor_owns() -> None:
    # Bare storages stand for a kernel's workspace: allocations with no tensor. Freeing
    # the smaller one must not leave the larger one counted after it is freed too.
    def step() -> torch.UntypedStorage:
        big = torch.UntypedStorage(3 * 2**20)
        small = torch.UntypedStorage(2**20)
        del small, big
        return torch.UntypedStorage(4 * 2**20)

    assert cpu_peak_mib(step) == pytest.approx(4.0)


def test_memory_columns_and_plot(tiny_run: tuple[Path, list], tmp_path: Path) -> None:
    """Memory columns and plot, fed with made-up peak memory so that the ratio is known."""
    _, rows = tiny_run
    suite = load("additive")
    fake = [dataclasses.replace(r, ours_peak_mib=1.0, baseline_peak_mib=4.0) for r in rows]
    fake = [r for r in fake if r.suite == "additive"]
    table = suite_table(suite, fake, with_memory=True)
    assert "baseline peak (MiB)" in table and "0.25×" in table
    if importlib.util.find_spec("matplotlib") is not None:
        written = write_plots(tmp_path, [suite], fake)
        assert written is not None and tmp_path / "additive_memory.png" in written


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--tiny", "--only", "entmax", "--device", "cpu", "--out", str(tmp_path)]
    code = main([*args, "--no-plots", "--no-progress", "--no-memory"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "### `entmax`" in printed and "### `attend`" not in printed
    assert "peak (MiB)" not in printed
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows and all(r["ours_peak_mib"] is None for r in rows)


def test_unknown_suite_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--only", "nonexistent"])
    assert "invalid choice" in capsys.readouterr().err


def test_a_wrong_kernel_shows_in_the_correctness_column() -> None:
    ctx = Context(device=torch.device("cpu"), dtype=torch.float32, profile="tiny")
    x = torch.randn(4, 8, requires_grad=True)

    def build() -> Setup:
        # "Ours" is off by 0.5 in value, and by 0.5 * grad_out in gradient (the added
        # term is zero in value but has gradient 0.5).
        return Setup(
            ours=lambda: torch.softmax(x, dim=-1) + 0.5 + 0.5 * (x - x.detach()),
            baseline=lambda: torch.softmax(x, dim=-1),
            inputs=(x,),
        )

    rows = run_case(Case(suite="test", name="wrong", n=8, build=build), ctx)
    fwd, bwd = rows
    assert fwd.max_abs_diff == pytest.approx(0.5)
    assert bwd.max_abs_diff is not None and bwd.max_abs_diff > 0.1
    assert fwd.suspect and bwd.suspect
    assert "⚠" in suite_table(Suite("test", "t", "n", lambda ctx: []), rows, with_memory=False)


def test_a_failing_side_is_reported_not_raised() -> None:
    ctx = Context(device=torch.device("cpu"), dtype=torch.float32, profile="tiny")
    x = torch.randn(4, 8, requires_grad=True)

    def broken() -> torch.Tensor:
        raise RuntimeError("out of something")

    def build() -> Setup:
        return Setup(ours=lambda: x * 2, baseline=broken, inputs=(x,))

    (row,) = run_case(Case(suite="test", name="broken", n=8, build=build, backward=False), ctx)
    assert row.ours_ms is not None and row.baseline_ms is None and row.ratio is None
    assert row.error is not None and "out of something" in row.error


def test_max_abs_diff_never_looks_correct_on_bad_output() -> None:
    a = torch.zeros(3)
    assert max_abs_diff(a, torch.full((3,), 0.25)) == pytest.approx(0.25)
    assert max_abs_diff(a, torch.zeros(4)) == math.inf
    assert max_abs_diff(a, torch.tensor([0.0, math.nan, 0.0])) == math.inf
    assert max_abs_diff([a, None], [a, None]) == 0.0
    assert max_abs_diff([a, None], [a, a]) == math.inf


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_suite_runs_on_cuda_with_memory(tmp_path: Path) -> None:
    rows = run(device="cuda", profile="tiny", out=tmp_path, progress=False, plots=False, echo=False)
    for r in rows:
        assert r.error is None, f"{r.suite}/{r.case}/{r.mode}: {r.error}"
        assert r.ours_peak_mib is not None and r.baseline_peak_mib is not None
        if r.max_abs_diff is not None:
            assert r.max_abs_diff < TOLERANCE, f"{r.suite}/{r.case}/{r.mode}: {r.max_abs_diff}"
