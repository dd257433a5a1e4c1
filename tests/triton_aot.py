"""Compile attnzoo's Triton kernels for an NVIDIA GPU on a machine without one.

``python -m tests.triton_aot`` compiles each kernel variant the library launches (for an
H100, ``sm_90``) with Triton's own ``ptxas`` and prints one JSON line per variant: its
name, shared memory in bytes, and the registers spilled to the stack per thread (from
``cuobjdump``, when the wheel ships it). Run in a fresh process: ``triton.jit`` builds
kernels for the interpreter instead when TRITON_INTERPRET is set at import, as the CPU
tests do.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import tempfile
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
# Pointer arguments by name; the rest of the upper-case ones are float32 buffers.
INPUT_POINTERS = {"Q", "K", "V", "OUT", "DO", "DQ", "DK", "DV", "X"}
OTHER_POINTERS = {"KPM": "*u8", "TILES": "*i32", "COUNTS": "*i32", "FLAGS": "*i8"}
FLOAT_SCALARS = {"scale"}
TRITON_TYPES = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32"}


def compile_kernel(fn: Any, dtype: str, constexprs: dict[str, Any], warps: int) -> dict:
    """Compile ``fn`` for :data:`TARGET` with ``constexprs``; its resource usage."""
    params = inspect.signature(fn.fn).parameters
    signature, constants = {}, {}
    for index, (name, param) in enumerate(params.items()):
        if "constexpr" in str(param.annotation):
            signature[name] = "constexpr"
            constants[(index,)] = constexprs[name]
        elif name in INPUT_POINTERS:
            signature[name] = TRITON_TYPES[dtype]
        elif name in OTHER_POINTERS:
            signature[name] = OTHER_POINTERS[name]
        elif name.isupper():
            signature[name] = "*fp32"
        else:
            signature[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    source = ASTSource(fn=fn, signature=signature, constexprs=constants)
    kernel = triton.compile(source, target=TARGET, options={"num_warps": warps})
    return {"shared": kernel.metadata.shared, "stack": _stack_bytes(kernel.asm["cubin"])}


def _stack_bytes(cubin: bytes) -> int | None:
    """Bytes of stack (spilled registers) per thread, read by ``cuobjdump``; None without."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        report = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True)
    found = re.search(r"STACK:(\d+)", report.stdout)
    return int(found.group(1)) if found else None


def variants() -> list[tuple[str, Any, str, dict[str, Any], int]]:
    """``(name, kernel, dtype, constexprs, warps)`` for the variants checked."""
    from attnzoo.attention import triton_entmax as te
    from attnzoo.attention import triton_rows as tr

    out = []
    for dtype, d, kind, alpha_grad in [
        ("float16", 64, te._ENTMAX15, False),
        ("float16", 64, te._GENERAL, True),
        ("bfloat16", 128, te._GENERAL, True),
        ("float32", 64, te._SPARSEMAX, False),
    ]:
        common = {
            "KIND": kind,
            "CAUSAL": True,
            "HAS_KPM": True,
            "BLOCK_M": te.BLOCK_M,
            "BLOCK_N": te.BLOCK_N,
            "HEAD_DIM": d,
            "PRECISION": "ieee" if dtype == "float32" else "tf32",
        }
        warps = 8 if d == 128 else 4
        forward = {
            **common,
            "NEED_S": True,
            "ALPHA_GRAD": alpha_grad,
            "CANDIDATE_STEPS": te.CANDIDATE_STEPS,
        }
        tag = f"{dtype} d={d} kind={kind}"
        label = "forward" + (" with alpha gradient" if alpha_grad else "")
        out.append((f"{label}, {tag}", te._entmax_fwd, dtype, forward, warps))
        if not alpha_grad:
            out.append((f"dQ, {tag}", te._entmax_bwd_dq, dtype, common, warps))
            out.append((f"dK/dV, {tag}", te._entmax_bwd_dkdv, dtype, common, warps))
    # The row kernel at its longest rows: 8192 entries, one row per program.
    rows = {"KIND": tr._GENERAL, "BLOCK_M": 1, "BLOCK_N": tr.MAX_ROW}
    out.append(("rows, 8192 entries", tr._entmax_rows, "float32", rows, 16))
    return out


def main() -> None:
    for name, fn, dtype, constexprs, warps in variants():
        print(json.dumps({"name": name, **compile_kernel(fn, dtype, constexprs, warps)}))


if __name__ == "__main__":
    main()
