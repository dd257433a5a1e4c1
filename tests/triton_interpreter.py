"""Import attnzoo's Triton kernel modules built for Triton's interpreter when there is no GPU."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch


def load_kernels(name: str) -> ModuleType:
    """The kernel module ``name``, built for the interpreter when there is no GPU.

    ``triton.jit`` chooses between compiled and interpreted kernels when it decorates them,
    reading TRITON_INTERPRET at that moment (not when ``triton`` itself was imported). So
    setting the variable just around the import is enough even if ``triton`` was imported
    earlier in the test run; a module already imported with compiled kernels (by another
    test going through ``blockwise_attention``) is reloaded, which decorates its kernels
    again, now for the interpreter, after the attention kernels whose helpers it shares.
    The variable is restored afterwards so no other test sees it.
    """
    if torch.cuda.is_available():
        return importlib.import_module(name)
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for module_name in dict.fromkeys(("attnzoo.attention.triton_entmax", name)):
            module = importlib.import_module(module_name)
            if not module.INTERPRETED:
                module = importlib.reload(module)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
    assert module.INTERPRETED
    return module
