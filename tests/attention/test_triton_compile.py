"""The Triton kernels compile for an H100 (sm_90) on a machine without a GPU.

CI has no GPU; this catches a kernel that Triton or ``ptxas`` rejects for the GPU (a type
error in a branch the interpreter never takes, shared memory beyond the device's) before a
user with a GPU meets it. Compiling takes about a minute, in a subprocess: the CPU tests
build the kernels for Triton's interpreter, which cannot be compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
# Shared memory one block may use on an H100 (227 KiB, opted in).
H100_SHARED = 227 * 1024


@pytest.mark.slow
def test_kernels_compile_for_an_h100() -> None:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.triton_aot"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    names = [report["name"] for report in reports]
    assert len(names) == 9, names  # 4 forward, 2 x 2 backward, 1 row kernel
    assert any("alpha gradient" in name for name in names)
    for report in reports:
        assert 0 < report["shared"] <= H100_SHARED, report
