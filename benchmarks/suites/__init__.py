"""The registry of suites: the one place a suite is added.

Each module here defines ``SUITE``, a :class:`benchmarks.harness.Suite`. Modules are
imported only when their suite is selected, so ``--only entmax`` does not import the
other kernels.
"""

from __future__ import annotations

import importlib

from ..harness import Suite

# Run order; each name is both the ``--only`` name and the module defining ``SUITE``.
SUITES: tuple[str, ...] = (
    "attend",
    "mha",
    "entmax",
    "sliding_window",
    "sparse_variants",
    "pkm",
    "additive",
    "bert",
    "gpt2_generate",
    "compression",
    "positional",
    "adaptive_softmax",
)


def load(name: str) -> Suite:
    """Import suite ``name`` and return its ``SUITE``."""
    if name not in SUITES:
        raise ValueError(f"`name` must be one of {sorted(SUITES)}, got {name!r}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.SUITE
