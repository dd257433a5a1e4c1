"""attnzoo: attention and transformer building blocks for research code.

Subpackages, lowest layer first: ``attnzoo.attention`` (kernels),
``attnzoo.transformers_zoo`` (blocks and model families), and the siblings built on
them, ``attnzoo.compression``, ``attnzoo.robustness`` and ``attnzoo.gan``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
