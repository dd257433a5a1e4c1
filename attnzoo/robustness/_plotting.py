"""Lazy access to matplotlib, an optional extra (``pip install 'attnzoo[viz]'``)."""

from __future__ import annotations

from types import ModuleType


def pyplot(what: str) -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend, or an ImportError naming ``what`` needs it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(f"{what} needs matplotlib: pip install 'attnzoo[viz]'") from error
    return plt
